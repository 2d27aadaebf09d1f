"""Metadata backups: the LMDB index, consistent, to the warm tier and every replica.

A backup (``MetaBackup.run``) is one object per location,
``meta/index-<generation:012d>-<time ns>-<repository tag>[-j<position>].tar.zst`` (the
tag: the first bytes of the repository id, store/backends/ownership.py; older backups have
none; the position: in a shared repository, the log position a joining node can start
from with this index, when it has one): a zstd-compressed tar of

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

In a shared repository (docs/multinode.md) any member backs up, under the cluster's
maintenance lease (one at a time), and a mount's periodic backup is skipped while another
member's is younger than ``backup.interval``, or while this node has changes not yet
published (``recover`` refuses a shared location, so a backup that no join could start
from serves nobody). Those backups serve joins: a new member
starts from the one that holds the most of the log (``join_point``), pruning never deletes that
one, and a gc truncates the log only below its position (ops/shared_gc.py).
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
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import blake3
import zstandard

from chunkfs import clock, config
from chunkfs.background import BackgroundThread
from chunkfs.errors import ChunkfsError, Conflict, CorruptData, NotFound
from chunkfs.index import Index
from chunkfs.store.backends import ownership
from chunkfs.store.backends.base import Backend
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import Tier

log = logging.getLogger(__name__)

PREFIX = "meta/"
NAME_RE = re.compile(r"^meta/index-(\d{12})-(\d+)(?:-([0-9a-f]+))?(?:-j(\d+))?\.tar\.zst$")
FORMAT = 1
_UNPUBLISHED = (
    "{repo}: this node has changes not yet published to the shared log (or has applied none of it): a "
    "backup of its index could not start a join; `chunkfs sync`, then back up"
)


def backup_name(generation: int, time_ns: int, repo_id: bytes, join: int = 0) -> str:
    """The object name of a backup; ``join``: the log position a joining node starts from with it (0: none)."""
    suffix = f"-j{join}" if join else ""
    return f"{PREFIX}index-{generation:012d}-{time_ns}-{ownership.tag(repo_id)}{suffix}.tar.zst"


def list_backups(backend: Backend, repo_id: bytes | None = None, *, untagged: bool = False) -> list[tuple[int, int, str]]:
    """(generation, time ns, name) of every backup on ``backend``, oldest first; with ``repo_id``
    only those tagged with it (and, with ``untagged``, those older ones that carry no tag)."""
    out = []
    for name in backend.list(PREFIX):
        m = NAME_RE.match(name)
        if m and (repo_id is None or m.group(3) == ownership.tag(repo_id) or (untagged and m.group(3) is None)):
            out.append((int(m.group(1)), int(m.group(2)), name))
    return sorted(out)


class JoinPoint(NamedTuple):
    position: int  # the log position its index applied: a join replays the entries after it
    name: str
    time_ns: int


def join_point(backend: Backend, repo_id: bytes | None) -> JoinPoint | None:
    """The backup a joining node starts from: the one whose index holds the most of the shared
    log (the newest of equals); None when no backup here has a position."""
    return _best_join(list_backups(backend, repo_id))


def _best_join(listed: list[tuple[int, int, str]]) -> JoinPoint | None:
    best = max(listed, key=_join_order, default=None)
    position = _join_order(best)[0] if best else 0
    return JoinPoint(position, best[2], best[1]) if position else None


def _join_order(backup: tuple[int, int, str]) -> tuple[int, int, int]:
    """(join position, generation, time) of a ``list_backups`` row: the order of usefulness to a join."""
    generation, time_ns, name = backup
    return int(NAME_RE.match(name).group(4) or 0), generation, time_ns


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
        self.lease: Callable[..., AbstractContextManager] | None = None
        """In a shared repository (set by ``Repository``): takes the cluster's maintenance lease
        (``SharedLog.lease`` for a metadata backup; ``wait=False``: at once or ``Conflict``)."""
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
        """Make a backup now; None if there is nowhere to put it, or (unless ``force``) nothing
        changed, or in a shared repository another member's backup is younger than
        ``backup.interval``, the maintenance lease is held or this node has changes not yet
        published. Forced, those last two are ``Conflict``."""
        with self._lock:
            locations = self.locations()
            if not locations or (not force and not self.changed()):
                return None
            if self.lease is None:
                return self._run(locations)
            if not force and self._recent_on_warm():
                return None
            with self.index.read() as t:  # before copying the whole index only to refuse it (``_run``)
                unpublished = t.outbox_count() > 0
            if unpublished:
                if force:
                    raise Conflict(_UNPUBLISHED.format(repo=self.repo_path))
                return None
            try:
                with self.lease(wait=force) as lease:
                    return self._run(locations, lease)
            except Conflict as e:
                if force:
                    raise
                log.info("metadata backup skipped: %s", e)
                return None

    def _recent_on_warm(self) -> bool:
        """Whether another member of the shared repository backed it up less than ``backup.interval`` ago."""
        listed = list_backups(self.tiers.backend(Tier.WARM), self.index.repo_id)
        return bool(listed) and clock.now_ns() - listed[-1][1] < self.settings.backup.interval * 1e9

    def _run(self, locations: list[tuple[str, Backend]], lease=None) -> BackupResult:
        tmpdir = self.repo_path / "tmp"
        tmpdir.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmpdir, prefix="metabackup-") as d:
            d = Path(d)
            txnid = self.index.env.info()["last_txnid"]
            self.index.copy_to(d / "index")
            start = _join_position(d / "index")
            if self.lease is not None and not start:  # only joins use a shared repository's backups
                raise Conflict(_UNPUBLISHED.format(repo=self.repo_path))
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
            name = backup_name(generation, now, self.index.repo_id, start or 0)
            result = BackupResult(generation, now, name, size)
            for url, b in locations:
                try:
                    if lease is not None:  # a big index takes a while to upload: still ours
                        lease.renew()
                    b.put_file(name, archive, blake3_digest=digest)
                    b.verify(name, digest, size)
                    result.locations.append(url)
                    self.prune(b)
                except ChunkfsError as e:
                    result.errors.append(f"{url}: {e}")
                    log.warning("metadata backup to %s failed: %s", url, e)
        if result.locations:
            with self.index.write() as t:
                t.backup_put(generation, now, txnid)
            self._after_txnid = self.index.env.info()["last_txnid"]
        return result

    def prune(self, backend: Backend) -> None:
        """Delete all but the ``backup.keep`` newest backups, and the one a join starts from."""
        listed = list_backups(backend, self.index.repo_id)  # never another repository's (nor untagged ones)
        joins = _best_join(listed)
        for _gen, _ns, name in listed[: max(0, len(listed) - self.settings.backup.keep)]:
            if joins is None or name != joins.name:
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


def fetch_latest(backend: Backend, dest: Path, *, joining: bool = False) -> dict:
    """Download and unpack the newest backup on ``backend`` into ``dest`` (index/data.mdb,
    chunkfs.toml); return its backup.json. ``joining`` (a new member of a shared repository):
    those that hold the most of the log first, then those that do not say."""
    marker = ownership.owner(backend)  # the location's repository: never another one's backup
    try:
        owner_id = bytes.fromhex(marker["repo_id"]) if marker else None
    except (KeyError, ValueError, TypeError):
        owner_id = None
    listed = list_backups(backend, owner_id, untagged=True)
    if not listed:
        raise NotFound(f"{backend.url}: no metadata backup (meta/index-*.tar.zst) here")
    if joining:
        listed.sort(key=_join_order)
    errors = []
    for _gen, _ns, name in reversed(listed):  # the best first; a damaged one falls back to the next
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


class Backupper(BackgroundThread):
    """The background thread of a mount: a backup every ``backup.interval`` seconds when something changed."""

    thread_name = "chunkfs-metabackup"

    def __init__(self, backup: MetaBackup, interval: float) -> None:
        super().__init__()
        self.backup = backup
        self.interval = interval

    def start(self) -> None:
        if self.interval and self.backup.configured:
            super().start()

    def stop(self, timeout: float = 30.0) -> bool | None:
        """Stop the thread, then take a last backup if anything changed (a clean unmount loses nothing)."""
        ended = super().stop(timeout)
        if ended is not None:
            try:
                self.backup.run(force=False)
            except ChunkfsError as e:
                log.warning("metadata backup at stop: %s", e)
        return ended

    def _loop(self) -> None:
        while self.pause(self.interval):
            try:
                self.backup.run(force=False)
            except ChunkfsError as e:
                log.warning("metadata backup: %s", e)
            except Exception:  # a bug: keep running and say so
                log.exception("metadata backup: unexpected error")
