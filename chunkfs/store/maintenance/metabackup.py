"""Metadata backups: the LMDB index, consistent, to the warm tier and every replica.

A backup (``MetaBackup.run``) is one object per location,
``meta/index-<generation:012d>-<time ns>-<repository tag>.tar.zst`` (the tag: the first
bytes of the repository id, store/backends/ownership.py; older backups have none): a
zstd-compressed tar of

    index/data.mdb   ``Index.copy_to``: LMDB's own consistent, compacted copy (a read
                     transaction's snapshot; writers go on meanwhile)
    chunkfs.toml     the repository's settings
    backup.json      generation, time, newest commit, repository id, format

uploaded with ``put_file`` (atomic on every backend) and verified (size and
BLAKE3) before older backups beyond ``backup.keep`` are deleted, so a location
always holds at least one complete backup. Generations only grow: the next one
is above both the index's record (``meta/backup``) and every name listed.

A mount runs it every ``backup.interval`` seconds (``Backupper``; skipped while
nothing changed), ``chunkfs sync`` once at its end. ``chunkfs recover`` (ops/recover.py)
takes the newest backup plus the footers of packs written after it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import zstandard

from chunkfs import clock, config
from chunkfs.errors import ChunkfsError, CorruptData, NotFound
from chunkfs.index import Index
from chunkfs.store.backends import ownership
from chunkfs.store.backends.base import Backend
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import Tier

log = logging.getLogger(__name__)

PREFIX = "meta/"
NAME_RE = re.compile(r"^meta/index-(\d{12})-(\d+)(?:-([0-9a-f]+))?\.tar\.zst$")
FORMAT = 1


def backup_name(generation: int, time_ns: int, repo_id: bytes) -> str:
    return f"{PREFIX}index-{generation:012d}-{time_ns}-{ownership.tag(repo_id)}.tar.zst"


def list_backups(backend: Backend, repo_id: bytes | None = None, *, untagged: bool = False) -> list[tuple[int, int, str]]:
    """(generation, time ns, name) of every backup on ``backend``, oldest first; with ``repo_id``
    only those tagged with it (and, with ``untagged``, those older ones that carry no tag)."""
    out = []
    for name in backend.list(PREFIX):
        m = NAME_RE.match(name)
        if m and (repo_id is None or m.group(3) == ownership.tag(repo_id) or (untagged and m.group(3) is None)):
            out.append((int(m.group(1)), int(m.group(2)), name))
    return sorted(out)


@dataclass
class BackupResult:
    generation: int
    time_ns: int
    name: str
    bytes: int
    locations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class MetaBackup:
    """Backs up one repository's index to its warm tier and replicas."""

    def __init__(self, repo_path: Path, settings: config.Settings, index: Index, tiers: Tiers, replicas=None) -> None:
        self.repo_path = repo_path
        self.settings = settings
        self.index = index
        self.tiers = tiers
        self.replicas = replicas
        self._lock = threading.Lock()
        self._after_txnid: int | None = None  # LMDB txn id right after our last backup

    def locations(self) -> list[tuple[str, Backend]]:
        out = []
        if self.tiers.configured(Tier.WARM):
            out.append((self.tiers.url(Tier.WARM), self.tiers.backend(Tier.WARM)))
        if self.replicas is not None:
            out += [(url, self.replicas.backend(url)) for url in self.replicas.urls]
        return out

    @property
    def configured(self) -> bool:
        return bool(self.locations())

    def changed(self) -> bool:
        return self._after_txnid is None or self.index.env.info()["last_txnid"] != self._after_txnid

    def run(self, *, force: bool = True) -> BackupResult | None:
        """Make a backup now (unless not ``force`` and nothing changed); None if there is nowhere to put it."""
        with self._lock:
            locations = self.locations()
            if not locations or (not force and not self.changed()):
                return None
            tmpdir = self.repo_path / "tmp"
            tmpdir.mkdir(exist_ok=True)
            with tempfile.TemporaryDirectory(dir=tmpdir, prefix="metabackup-") as d:
                d = Path(d)
                txnid = self.index.env.info()["last_txnid"]
                self.index.copy_to(d / "index")
                start = _join_position(d / "index")
                with self.index.read() as t:
                    last = t.backup_get()
                    newest_commit = t.last_commit()
                    repo_id = (t.meta_get(b"repo_id") or b"").hex()
                generation = (last[0] if last else 0) + 1
                for _url, b in locations:
                    try:
                        listed = list_backups(b)
                    except ChunkfsError:
                        listed = []
                    if listed:
                        generation = max(generation, listed[-1][0] + 1)
                now = clock.now_ns()
                info = {"format": FORMAT, "generation": generation, "time_ns": now, "last_commit": newest_commit,
                        "repo_id": repo_id, "txnid": txnid}  # fmt: skip
                archive = d / "backup.tar.zst"
                _write_archive(archive, d / "index" / "data.mdb", self.repo_path / config.CONFIG_NAME, info)
                size = archive.stat().st_size
                digest = _hash_file(archive)
                name = backup_name(generation, now, self.index.repo_id)
                result = BackupResult(generation, now, name, size)
                for url, b in locations:
                    try:
                        b.put_file(name, archive, blake3_digest=digest)
                        b.verify(name, digest, size)
                        result.locations.append(url)
                        self._prune(b)
                    except ChunkfsError as e:
                        result.errors.append(f"{url}: {e}")
                        log.warning("metadata backup to %s failed: %s", url, e)
            if result.locations:
                with self.index.write() as t:
                    t.backup_put(generation, now, txnid)
                    if start is not None:  # where a join from the warm tier's copy starts
                        on_warm = self.tiers.configured(Tier.WARM) and self.tiers.url(Tier.WARM) in result.locations
                        t.cluster_backup_put(start if on_warm else 0)
                self._after_txnid = self.index.env.info()["last_txnid"]
            return result

    def _prune(self, backend: Backend) -> None:
        listed = list_backups(backend, self.index.repo_id)  # never another repository's (nor untagged ones)
        for _gen, _ns, name in listed[: max(0, len(listed) - self.settings.backup.keep)]:
            backend.delete(name)


def _join_position(index_dir: Path) -> int | None:
    """In a shared repository, the log position a joining node can start from with this copy of
    the index: its applied position, or 0 when it holds changes not yet published (ops/cluster.py,
    ``join``); None when the repository is not shared."""
    copy = Index(index_dir, readonly=True)
    try:
        with copy.read() as t:
            if t.cluster_get() is None:
                return None
            return t.applied_get() if t.outbox_count() == 0 else 0
    finally:
        copy.close()


def _hash_file(path: Path) -> bytes:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.digest()


def _write_archive(dest: Path, data_mdb: Path, config_file: Path, info: dict) -> None:
    cctx = zstandard.ZstdCompressor(level=3)
    with open(dest, "wb") as raw, cctx.stream_writer(raw) as zf, tarfile.open(fileobj=zf, mode="w|") as tar:
        tar.add(data_mdb, arcname="index/data.mdb")
        if config_file.exists():
            tar.add(config_file, arcname=config.CONFIG_NAME)
        body = json.dumps(info, sort_keys=True).encode()
        ti = tarfile.TarInfo("backup.json")
        ti.size = len(body)
        tar.addfile(ti, io.BytesIO(body))


def fetch_latest(backend: Backend, dest: Path) -> dict:
    """Download and unpack the newest backup on ``backend`` into ``dest`` (index/data.mdb,
    chunkfs.toml); return its backup.json."""
    marker = ownership.owner(backend)  # the location's repository: never another one's backup
    try:
        owner_id = bytes.fromhex(marker["repo_id"]) if marker else None
    except (KeyError, ValueError, TypeError):
        owner_id = None
    listed = list_backups(backend, owner_id, untagged=True)
    if not listed:
        raise NotFound(f"{backend.url}: no metadata backup (meta/index-*.tar.zst) here")
    errors = []
    for _gen, _ns, name in reversed(listed):  # newest first; a damaged one falls back to the previous
        try:
            data = backend.get(name)
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(io.BytesIO(data)) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
                tar.extractall(dest, filter="data")
            info = json.loads((dest / "backup.json").read_text())
            if not (dest / "index" / "data.mdb").exists():
                raise CorruptData(f"{name}: no index in the backup")
            info["name"] = name
            return info
        except (ChunkfsError, zstandard.ZstdError, tarfile.TarError, ValueError, OSError) as e:
            errors.append(f"{name}: {e}")
            log.warning("metadata backup %s is not usable (%s); trying the previous one", name, e)
            for p in (dest / "index" / "data.mdb", dest / "backup.json", dest / config.CONFIG_NAME):
                if p.exists():
                    os.unlink(p)
    raise CorruptData(f"{backend.url}: no usable metadata backup ({'; '.join(errors)})")


class Backupper:
    """The background thread of a mount: a backup every ``backup.interval`` seconds when something changed."""

    def __init__(self, backup: MetaBackup, interval: float) -> None:
        self.backup = backup
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or not self.interval or not self.backup.configured:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chunkfs-metabackup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread, then take a last backup if anything changed (a clean unmount loses nothing)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
            try:
                self.backup.run(force=False)
            except ChunkfsError as e:
                log.warning("metadata backup at stop: %s", e)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.backup.run(force=False)
            except ChunkfsError as e:
                log.warning("metadata backup: %s", e)
            except Exception:  # a bug: keep running and say so
                log.exception("metadata backup: unexpected error")
