"""``chunkfs drill``: prove that a version can be restored, bit-identical, from one place.

A drill restores PATH as of a version (``--at``: commit, tag or time; default
the newest commit) into a scratch directory, reading every chunk **only** from
the named source — ``hot``, ``warm``, ``cold`` or ``replica``; by default warm,
else cold, else hot, whichever is configured first — with reads straight from
that backend: no in-memory cache, no disk read cache, no other tier. A chunk
that is not on that source fails the drill (that is what a drill is for). Each
chunk is verified against its hash, and each file against the whole-file BLAKE3
recorded in its version when it was committed (``Version.blake3``); a version
recorded without one (zeros) is reported as *unverified*. A drill from ``hot``
proves what the local disk holds (every chunk read back, verified, restored).
``--check-cmd`` then runs a command on the restored checkpoint (a script that
loads the model and compares its outputs, say): the restored directory (or file)
itself is its last argument and ``$CHUNKFS_DRILL_DIR``; a non-zero exit fails
the drill.

The result — the restore's time and MB/s, the check's time apart, files,
verdict, problems — is stored in the ``drills`` database (keys.py) and listed
by ``chunkfs drill --history``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3

from chunkfs import clock
from chunkfs.engine import codec
from chunkfs.errors import ChunkfsError, CorruptData, UsageError
from chunkfs.namespace.views import CommitView
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import HOLE, ChunkId, Tier, tier_name

SOURCES = ("hot", "warm", "cold", "replica")
ZERO = bytes(32)


@dataclass
class DrillResult:
    path: str
    commit: int
    source: str
    started_ns: int = 0
    files: int = 0
    verified: int = 0
    unverified: list[str] = field(default_factory=list)  # files whose version has no recorded BLAKE3
    bytes: int = 0
    seconds: float = 0.0  # end to end
    restore_seconds: float = 0.0
    mb_per_s: float = 0.0  # of the restore
    check_seconds: float = 0.0
    check_cmd: str = ""
    check_exit: int | None = None
    problems: list[str] = field(default_factory=list)
    verdict: str = "fail"
    scratch: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class _SourceReader:
    """Stored chunk bytes from one source only."""

    def __init__(self, repo: Repository, source: str) -> None:
        self.repo = repo
        self.source = source
        if source == "replica":
            if not repo.replicas.configured:
                raise UsageError("no replicas configured (replication.replicas in chunkfs.toml)")
            self.backends = [(url, repo.replicas.backend(url)) for url in repo.replicas.urls]
        else:
            tier = Tier[source.upper()]
            if not repo.tiers.configured(tier):
                raise UsageError(f"no {source} tier configured (tiers.{source} in chunkfs.toml)")
            self.tier = tier
            self.backends = [(repo.tiers.url(tier), repo.tiers.backend(tier))]

    def read(self, chunk: ChunkId) -> bytes:
        with self.repo.index.read() as t:
            loc = t.chunk_get(chunk)
            info = t.pack_get(loc.pack) if loc is not None else None
            copies = {tier for tier, _, _ in t.copies_of(loc.pack)} if loc is not None else set()
        if loc is None:
            raise CorruptData(f"chunk {chunk.hex()}: not in the index")
        if self.source != "replica" and (info is None or (info.tier != self.tier and self.tier not in copies)):
            where = tier_name(info.tier) if info is not None else "no"
            raise CorruptData(f"chunk {chunk.hex()}: pack {loc.pack.hex()} is on the {where} tier, not on {self.source}")
        errors = []
        for url, backend in self.backends:
            try:
                stored = backend.get_range(pack_name(loc.pack), loc.offset, loc.stored_len)
                if len(stored) != loc.stored_len:
                    raise CorruptData(f"pack {loc.pack.hex()} is truncated")
                where = f"{url}/{pack_name(loc.pack)}"
                return codec.decode(chunk, stored, loc.raw_len, loc.flags, where, self.read)  # a base from here too
            except ChunkfsError as e:
                errors.append(str(e))
        raise CorruptData("; ".join(errors))


def default_source(repo: Repository) -> str:
    """Warm, else cold, else hot: the first tier configured (a hot-only repository drills from disk)."""
    return next((tier_name(t) for t in (Tier.WARM, Tier.COLD) if repo.tiers.configured(t)), "hot")


def drill(
    repo: Repository,
    path: str,
    *,
    at: str | None = None,
    source: str | None = None,
    check_cmd: str | None = None,
    scratch: Path | None = None,
    keep: bool = False,
    record: bool = True,
) -> DrillResult:
    source = source or default_source(repo)
    if source not in SOURCES:
        raise UsageError(f"--from {source}: use one of {', '.join(SOURCES)}")
    commit = repo.history.resolve_point(at) if at else repo.history.last_commit()
    result = DrillResult(path, commit, source, started_ns=clock.now_ns(), check_cmd=check_cmd or "")
    reader = _SourceReader(repo, source)
    view = CommitView(repo.history, commit)
    started = time.monotonic()
    own_scratch = scratch is None
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="chunkfs-drill-"))
    else:
        scratch = Path(scratch)
        scratch.mkdir(parents=True, exist_ok=True)
    result.scratch = str(scratch)
    try:
        try:
            ino = view.resolve(path)
        except ChunkfsError as e:
            raise UsageError(f"{path}: {e}") from None
        name = path.rstrip("/").rsplit("/", 1)[-1] or "root"
        _restore(repo, view, reader, ino, scratch / name, path.rstrip("/") or "/", commit, result)
        result.restore_seconds = time.monotonic() - started
        if check_cmd and not result.problems:
            restored = scratch / name  # the checkpoint itself, not the scratch directory around it
            env = dict(os.environ, CHUNKFS_DRILL_DIR=str(restored))
            checking = time.monotonic()
            done = subprocess.run(f"{check_cmd} {_quote(str(restored))}", shell=True, env=env, check=False)
            result.check_seconds = time.monotonic() - checking
            result.check_exit = done.returncode
            if done.returncode != 0:
                result.problems.append(f"check command exited with {done.returncode}: {check_cmd}")
    finally:
        result.seconds = time.monotonic() - started
        result.restore_seconds = result.restore_seconds or result.seconds
        result.mb_per_s = result.bytes / 1e6 / result.restore_seconds if result.restore_seconds > 0 else 0.0
        result.verdict = "pass" if not result.problems else "fail"
        if not keep:
            if own_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                shutil.rmtree(scratch / (path.rstrip("/").rsplit("/", 1)[-1] or "root"), ignore_errors=True)
        if record:
            with repo.index.write() as t:
                t.drill_put(result.started_ns, result.as_dict())
    return result


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _restore(repo, view: CommitView, reader: _SourceReader, ino: int, dest: Path, rpath: str, commit: int, result: DrillResult) -> None:
    rec = view.attrs(ino)
    if stat.S_ISDIR(rec.mode):
        dest.mkdir(exist_ok=True)
        for name, child, _ in view.entries(ino):
            _restore(repo, view, reader, child, dest / os.fsdecode(name), f"{rpath.rstrip('/')}/{os.fsdecode(name)}", commit, result)
        return
    if stat.S_ISLNK(rec.mode):
        os.symlink(os.fsdecode(rec.target), dest)
        return
    if not stat.S_ISREG(rec.mode):
        return
    version = repo.history.getattr_at(ino, commit)
    hasher = blake3.blake3() if version.blake3 != ZERO else None
    result.files += 1
    try:
        with open(dest, "wb") as f:
            for extent in view.extents(ino):
                if extent.chunk == HOLE:
                    f.seek(extent.length, os.SEEK_CUR)  # sparse, whatever its size
                    for pos in range(0, extent.length if hasher else 0, 8 << 20):
                        hasher.update(bytes(min(8 << 20, extent.length - pos)))
                else:
                    data = reader.read(extent.chunk)
                    if len(data) != extent.length:
                        raise CorruptData(f"chunk {extent.chunk.hex()}: {len(data)} bytes, the manifest says {extent.length}")
                    f.write(data)
                    if hasher:
                        hasher.update(data)
                result.bytes += extent.length
            f.truncate(f.tell())
    except ChunkfsError as e:
        result.problems.append(f"{rpath} (commit {version.commit}): {e}")
        return
    if hasher is None:
        result.unverified.append(rpath)
    elif hasher.digest() != version.blake3:
        result.problems.append(f"{rpath} (commit {version.commit}): restored content does not match the BLAKE3 recorded at commit")
    else:
        result.verified += 1


def history(repo: Repository) -> list[dict]:
    """Every recorded drill, oldest first."""
    with repo.index.read() as t:
        return [doc for _, doc in t.drills()]
