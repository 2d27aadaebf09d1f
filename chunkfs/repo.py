"""The library API: create and open repositories, wire the layers together.

A repository on disk::

    REPO/chunkfs.toml     settings (config.py)
    REPO/index/           the LMDB index (index/)
    REPO/hot/             the hot tier: packs/ab/<pack id>.pack (store/); spool/: unnamed spool files of open files
    REPO/cache/           the disk read cache of warm/cold chunks (store/tiering/readcache.py)
    REPO/lock             flock'd by the one process that may write
    REPO/tiers.lock       flock'd by whoever creates or deletes pack objects on a tier (store/tiering/lock.py)
    REPO/tmp/             scratch files of tier moves and repacks

Background work (``start_background``, called by the mount daemon and by long
writing commands): the uploader drains the write-back queue to the warm tier,
and every ``lifecycle.interval`` the policies run (idle runs' open packs are
sealed, packs move between tiers, re-encoded: in the tier mover's thread, at the
lowest CPU priority), and at once whenever the hot disk is short of
``lifecycle.hot_min_free``; activity counters are saved every few seconds. With
``replication.replicas`` configured the replicator copies sealed packs to them
(store/maintenance/replicas.py), and with a warm tier or replicas the index is backed up
there every ``backup.interval`` and once more when it stops (store/maintenance/metabackup.py).
Only a writable repository runs it (docs/tiers.md, "Who does what").

The CLI, the FUSE daemon and the admin operations all go through
``Repository``. One process at a time opens a repository as its *maintainer*
(``writable``: the lock) — it recovers what dead processes left, runs the
background work above and drops nameless inodes. Others may write beside it
(``shared``: the mount daemon's engine worker processes, ``chunkfs import`` while
mounted): each appends to packs of its own, dedups against every chunk the index
holds, commits in short LMDB transactions (LMDB serialises them across
processes), takes its own gc writer lease and answers gc's seal requests; its
open packs carry a ``flock`` so that the maintainer never seals them under it.
Any number may open it read-only alongside (LMDB readers never block).
docs/concurrency.md says who may do what.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

from chunkfs import clock, config
from chunkfs.cluster import log as cluster_log
from chunkfs.cluster import mover
from chunkfs.cluster.node import NO_COLD, Cluster
from chunkfs.engine.chunks import ChunkIO
from chunkfs.engine.file import FileContent
from chunkfs.engine.memory import tame_malloc
from chunkfs.errors import (
    AlreadyExists,
    ChunkfsError,
    ConfigError,
    Conflict,
    CorruptData,
    NotFound,
)
from chunkfs.index import Index
from chunkfs.namespace import Namespace, deltas
from chunkfs.namespace.history import History
from chunkfs.namespace.registry import MAX_SIDECAR, Registry
from chunkfs.namespace.snapshots import Snapshots
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.maintenance.metabackup import Backupper, MetaBackup
from chunkfs.store.maintenance.replicas import Replicas, Replicator
from chunkfs.store.pack.store import PackStore
from chunkfs.store.tiering import lifecycle
from chunkfs.store.tiering.fetch import RemoteReader
from chunkfs.store.tiering.readcache import ReadCache
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.store.tiering.uploads import Uploader
from chunkfs.types import Extent, Tier, tier_name

log = logging.getLogger(__name__)

COUNTERS_EVERY = 10.0
"""Seconds between rounds of the background thread: counters saved, complete runs' open packs sealed."""

SEAL_POLL = 1.0
"""Seconds between looks for a gc's request to seal the open packs (``PackStore.answer_seal_request``)."""

LOCK_NAME = "lock"


def lock_holder(path: Path) -> str | None:
    """Who holds the repository lock at ``path`` (its "pid N" line), or None when nobody does."""
    try:
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def take_lock(path: Path) -> int:
    """Take the repository's write lock (``REPO/lock``); the fd holds it until closed."""
    fd = os.open(Path(path) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Conflict(
            f"{path}: repository is in use by {holder} (mounted or importing); "
            "unmount it or wait for that command to finish"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


class Repository:
    """An open chunkfs repository."""

    def __init__(self, path: Path, *, writable: bool = True, shared: bool = False) -> None:
        """``writable``: as the maintainer (takes the lock); ``shared``: writing beside the
        maintainer (no lock; see the module docstring); neither: read-only."""
        self.path = Path(path).resolve()
        if not (self.path / config.CONFIG_NAME).exists():
            raise NotFound(f"{self.path}: not a chunkfs repository (no {config.CONFIG_NAME}); create one with `chunkfs init`")
        self.settings = config.load(self.path / config.CONFIG_NAME)
        self.writable = writable or shared
        self.shared = shared
        self._closed = False
        self._lock_fd = take_lock(self.path) if writable and not shared else None
        try:
            self.index = Index(self.path / "index", readonly=False)
        except BaseException:  # a failed open must not keep the repository locked
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise
        try:
            self._wire()
        except BaseException:
            self.index.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise
        self.registry = Registry(self.index, self.settings.registry)
        self.ns = Namespace(self.index, self.registry, keep_nameless=shared)
        self.tiers.delta_plan = functools.partial(deltas.plan, self.ns, chain=self.settings.lifecycle.delta_chain)
        self.history = History(self.index, self.ns.journal)
        self.snapshots = Snapshots(self.history, self.registry)
        self.cluster = None
        try:
            self.cluster = self._join_cluster()
        except BaseException:  # a shared repository this node cannot take part in: let go of it
            self.close()
            raise
        if self.cluster is not None:  # any member backs up, one at a time (docs/multinode.md)
            self.metabackup.lease = functools.partial(self.cluster.shared.lease, self.cluster.node, cluster_log.BACKUP)
        if self.writable and not shared:
            self.registry.ensure_built()
            self.packs.recover()
            self.ns.forget_orphans()
            if self.uploader is not None:
                self.uploader.requeue()

    def _wire(self) -> None:
        s = self.settings
        self.hot = LocalBackend(self.hot_path)
        self.tiers = Tiers(self.path, s, self.index, self.hot)
        self.readcache = ReadCache(self.cache_path, s.cache.disk, self.pinned_chunks)
        self.tiers.readcache = self.readcache
        self.remote = (
            RemoteReader(self.index, self.tiers, self.readcache, window=s.cache.prefetch, threads=s.cache.fetch_threads)
            if self.tiers.remote
            else None
        )
        warm = self.tiers.configured(Tier.WARM)
        self.packs = PackStore(self.index, self.hot, s.packs, tiers=self.tiers, remote=self.remote, write_back=warm)
        self.chunks = ChunkIO(self.packs, s.compression, s.cache.memory)
        self.tiers.transform = self.chunks.recompress
        self.uploader = Uploader(self.index, self.tiers) if warm else None
        if self.uploader is not None:
            self.packs.on_sealed = self.uploader.wake
        self.replicas = Replicas(self.path, s, self.index, self.tiers)
        self.replicas.verifier = self._verify_stored
        if self.replicas.configured:
            self.packs.replicas = self.replicas
        self.replicator = Replicator(self.replicas, s.replication.interval) if self.replicas.configured else None
        self.metabackup = MetaBackup(self.path, s, self.index, self.tiers, self.replicas)
        self.backupper = Backupper(self.metabackup, s.backup.interval)
        self._background: threading.Thread | None = None
        self.mover: lifecycle.Mover | None = None  # the maintainer's, while its background runs
        self._stop = threading.Event()
        self._saved: dict[str, int] = {}
        self._complete_seen = 0  # the newest `run complete` mark whose open packs were sealed
        self._counters_lock = threading.Lock()

    def _join_cluster(self) -> Cluster | None:
        """A shared repository (docs/multinode.md): every change is journaled, in every process
        (``Namespace.journal``); the maintainer publishes and applies them (``start_background``)."""
        with self.index.read() as t:
            doc = t.cluster_get()
        if doc is None:
            return None
        if not self.tiers.configured(Tier.WARM):
            raise ConfigError(
                f"{self.path}: a shared repository without a warm tier in {config.CONFIG_NAME}; "
                f"set tiers.warm to {doc.get('url')}"
            )
        if self.tiers.configured(Tier.COLD):
            raise ConfigError(f"{self.path}: {NO_COLD}; remove tiers.cold from {config.CONFIG_NAME}")
        self.tiers.shared = True
        if self.shared:  # a writer beside the maintainer only journals (Namespace.journal)
            return None
        wake = self.uploader.wake if self.uploader is not None else lambda: None
        return Cluster(doc, self.tiers, self.ns, wake, self._sidecar)

    def _sidecar(self, name: bytes, extents: list[Extent]) -> bytes | None:
        """The content of a file named ``name`` if the registry reads it at commit (trainer_state.json, …)."""
        size = sum(e.length for e in extents)
        if size > MAX_SIDECAR or not self.registry.wants(name):
            return None
        return self.content_of(extents).read(0, size)

    def wait_published(self) -> None:
        """With ``cluster.publish_on_fsync`` in a shared repository, wait until every change made
        so far is in the shared log (the mount's ``fsync``); else return at once."""
        if self.cluster is not None and self.settings.cluster.publish_on_fsync:
            self.cluster.wait_published(clock.now_ns(), self.settings.cluster.publish_timeout)

    def _verify_stored(self, chunk: bytes, stored: bytes, raw_len: int, flags: int) -> bytes | None:
        """The raw bytes of a stored chunk if they match its id, else None (replication, replica reads)."""
        try:
            return self.chunks.verify(chunk, stored, raw_len, flags, "check")
        except CorruptData:
            return None

    @property
    def hot_path(self) -> Path:
        return self.path / self.settings.tiers.hot

    @property
    def spool_path(self) -> Path:
        """Where open files spool bytes written far out of order (on the hot disk; engine/ahead.py)."""
        return self.hot_path / "spool"

    @property
    def cache_path(self) -> Path:
        return self.path / self.settings.cache.dir

    def pinned_chunks(self) -> set[bytes]:
        """Every chunk named by a pin (``chunkfs prefetch --pin``)."""
        with self.index.read() as t:
            return {c for _, _, chunks in t.pins() for c in chunks}

    def drop_caches(self, *, keep_pinned: bool = False) -> None:
        """Empty the in-memory chunk cache and the disk read cache (all of it, or all but pinned chunks)."""
        self.chunks.cache.clear()
        self.readcache.clear(keep_pinned=keep_pinned)
        if self.remote is not None:
            self.remote.drop_staged()

    # -- background work --------------------------------------------------------------------

    def start_background(self, *, policies: bool = True) -> None:
        """Start the uploader and the periodic work (lifecycle policies if ``policies``, counters).

        The maintainer runs all of it; a ``shared`` writer only its own part (answering gc's
        seal requests, sealing its open packs of complete runs, saving its counters).
        ``stop_background`` (or ``close``) ends it.
        """
        if not self.writable:
            raise Conflict(f"{self.path}: background work needs the repository opened for writing")
        if self._background is not None:
            return
        if self.shared:
            policies = False
        else:
            if self.uploader is not None:
                self.uploader.start()
            if self.replicator is not None:
                self.replicator.start()
            self.backupper.start()
            if self.cluster is not None:
                self.cluster.start()
        if policies:
            self.mover = lifecycle.Mover(self.run_policies)
            self.mover.start()
        self._stop.clear()
        self._background = threading.Thread(target=self._periodic, name="chunkfs-lifecycle", daemon=True)
        self._background.start()

    def stop_background(self, timeout: float = 10.0) -> None:
        """Stop the background threads (an upload in progress is redone later) and save the counters."""
        thread, self._background = self._background, None
        mover, self.mover = self.mover, None
        if mover is not None:
            mover.stop(timeout)
        if self.cluster is not None:
            self.cluster.stop(timeout)
        if self.uploader is not None:
            self.uploader.stop(timeout)
        if self.replicator is not None:
            self.replicator.stop(timeout)
        self.backupper.stop(timeout)
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
        self.save_counters()

    def _periodic(self) -> None:
        interval = self.settings.lifecycle.interval
        next_policy = time.monotonic() + interval
        next_round = time.monotonic() + COUNTERS_EVERY
        while not self._stop.wait(SEAL_POLL):
            try:
                if self.packs.answer_seal_request():  # a gc waits for it: within a second
                    log.info("sealed the open packs: a gc asked for them")
                self.seal_newly_completed()  # `chunkfs run complete` waits for it too
                if time.monotonic() < next_round:
                    continue
                next_round = time.monotonic() + COUNTERS_EVERY
                self.save_counters()
                self.seal_complete()
                due = interval and time.monotonic() >= next_policy
                if self.mover is not None and (due or lifecycle.hot_shortfall(self.tiers, self.settings.lifecycle)[0]):
                    next_policy = time.monotonic() + interval
                    self.mover.request()
            except ChunkfsError as e:
                log.warning("background tier work: %s", e)
            except Exception:  # a bug: keep running and say so
                log.exception("background tier work: unexpected error")

    def seal_newly_completed(self) -> int:
        """Seal at once the open packs of the runs marked complete (`chunkfs run complete`) since the
        last look: the user said the run is done, its data can move now."""
        with self.index.read() as t:
            marked = {g: rec.completed_ns for g, rec in t.runs() if rec.completed_ns > self._complete_seen}
        if not marked:
            return 0
        self._complete_seen = max(marked.values())
        return self.packs.seal_groups(set(marked), clock.now_ns() + 1)

    def seal_complete(self) -> int:
        """Seal the open packs of complete runs (marked, or idle for ``lifecycle.run_idle``) that no
        write touched for ``lifecycle.seal_quiet`` seconds, so that all their data can move (a run
        marked complete while its trainer still writes gets one pack per quiet time, not one per round)."""
        if not self.packs.open_groups():
            return 0
        now = clock.now_ns()
        complete = lifecycle.complete_runs(self.index, self.settings.lifecycle, now)
        return self.packs.seal_groups(complete, now - self.settings.lifecycle.seal_quiet * 1_000_000_000)

    def run_policies(self, stop: Callable[[], bool] = lambda: False) -> lifecycle.Outcome:
        """Seal the open packs of complete runs, then apply the lifecycle policies (in a shared
        repository, also repack what a gc sweep left sparse) — unless the tier lock is busy: a
        `chunkfs tier` running elsewhere does it. Each move and each batch of a
        repack takes the lock on its own, so that uploads and evictions go on in between;
        ``stop()`` ends the round between two of them."""
        self.seal_complete()
        with self.tiers.lock.hold(blocking=False) as got:
            if not got:
                return lifecycle.Outcome()
        plan = lifecycle.plan(self.index, self.tiers, self.settings.lifecycle)
        started = time.monotonic()
        outcome = self.apply_tier_actions(plan, stop=stop, background=True)
        if not stop():
            self.repack_after_sweep(background=True)
        if outcome.moved:
            log.info("tier policy: %s (%.1f s)", outcome.summary(), time.monotonic() - started)
        for problem in outcome.errors:
            log.error("tier policy: %s", problem)
        return outcome

    def apply_tier_actions(
        self, actions: list[lifecycle.Action], progress: Callable[[int], None] = lambda n: None,
        stop: Callable[[], bool] = lambda: False, *, background: bool = False,
    ) -> lifecycle.Outcome:  # fmt: skip
        """``lifecycle.apply`` of ``actions``; in a shared repository its re-encodings run on one node
        at a time (cluster/mover.py: ``Conflict`` naming the node that holds the lease, or for a
        mount's ``background`` round, a later round)."""
        if self.cluster is None:
            return lifecycle.apply(self.tiers, actions, progress, stop)
        return mover.apply(self.cluster, self.tiers, actions, progress, stop, background=background)

    def repack_after_sweep(self, *, background: bool = False) -> bool:
        """In a shared repository, once a gc sweep was applied here, repack this node's packs it left
        sparse (cluster/mover.py); whether it ran."""
        if self.cluster is None:
            return False
        repack_below = self.settings.gc.repack_below
        return mover.repack_after_sweep(self.cluster, self.tiers, repack_below, self.packs.write_back, background=background)

    # -- activity counters --------------------------------------------------------------------

    def activity(self) -> dict[str, int]:
        """This process's activity since it opened the repository (cumulative figures)."""
        c = self.chunks
        with c._stats_lock:
            figures = {
                "written_bytes": c.new_bytes + c.reused_bytes,
                "new_bytes": c.new_bytes,
                "dedup_bytes": c.reused_bytes,
                "stored_bytes": c.stored_bytes,
                "new_chunks": c.new_chunks,
                "reused_chunks": c.reused_chunks,
                "read_bytes": c.read_bytes,
            }
        figures["read_cache_hits"] = self.readcache.hits
        figures["read_cache_misses"] = self.readcache.misses
        if self.remote is not None:
            figures["remote_requests"] = self.remote.requests
            figures["readahead_bytes"] = self.remote.readahead_bytes
            for tier, n in self.remote.bytes_by_tier.items():
                figures[f"remote_read_bytes_{tier_name(tier)}"] = n
        figures.update(self.tiers.counts())
        return figures

    def save_counters(self) -> None:
        """Add this process's activity since the last save to the index's ``counters``."""
        with self._counters_lock:
            now = self.activity()
            deltas = {k: v - self._saved.get(k, 0) for k, v in now.items() if v != self._saved.get(k, 0)}
            if not deltas:
                return
            try:
                with self.index.write() as t:
                    t.counters_add(deltas)
            except ChunkfsError as e:
                log.warning("cannot save activity counters: %s", e)
                return
            self._saved = now

    def counters(self) -> dict[str, int]:
        """Cumulative activity of every process, including this one's unsaved part."""
        with self.index.read() as t:
            total = t.counters()
        with self._counters_lock:
            for k, v in self.activity().items():
                total[k] = total.get(k, 0) + v - self._saved.get(k, 0)
        return total

    @staticmethod
    @contextlib.contextmanager
    def metadata(path: Path) -> Iterator[Registry]:
        """The checkpoint registry of the repository at ``path``, writable without the repository
        lock: ``chunkfs meta set`` must work while the repository is mounted. LMDB serialises write
        transactions across processes, and the registry writes nothing but index records, so it
        needs neither the lock nor the chunk store."""
        path = Path(path).resolve()
        if not (path / config.CONFIG_NAME).exists():
            raise NotFound(f"{path}: not a chunkfs repository (no {config.CONFIG_NAME})")
        index = Index(path / "index")
        try:
            yield Registry(index, config.load(path / config.CONFIG_NAME).registry)
        finally:
            index.close()

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        hot: Path | None = None,
        settings: config.Settings | None = None,
        repo_id: bytes | None = None,
        cluster: dict | None = None,
    ) -> Repository:
        """Make a new repository at ``path`` (which must not be one already).

        ``repo_id`` and ``cluster``: a node joining a shared repository — the id is the
        shared one (its tier locations are claimed by it already), ``cluster`` this node's
        ``meta/cluster`` record (``chunkfs.cluster``), set before anything is written."""
        path = Path(path)
        if (path / config.CONFIG_NAME).exists() or (path / "index").exists():
            raise AlreadyExists(f"{path}: a chunkfs repository already exists here; refusing to overwrite it")
        if path.exists() and any(path.iterdir()):
            raise AlreadyExists(f"{path}: directory is not empty; choose a new or empty directory")
        settings = settings or config.Settings()
        if hot is not None:
            tiers = dataclasses.replace(settings.tiers, hot=str(Path(hot).resolve()))
            settings = dataclasses.replace(settings, tiers=tiers)
        text = config.render(settings)
        config.parse_text(text)  # settings the next open would refuse: fail before creating anything
        tiers = Tiers(path, settings, None, LocalBackend(path / settings.tiers.hot))
        if settings.tiers.warm or settings.tiers.cold:  # a wrong bucket or credentials: fail before creating
            tiers.check_reachable()
            if repo_id is None:
                tiers.check_unclaimed()  # a location belongs to one repository (store/backends/ownership.py)
        path.mkdir(parents=True, exist_ok=True)
        index = Index(path / "index", create=True)
        (path / settings.tiers.hot).mkdir(parents=True, exist_ok=True)
        try:
            if repo_id is not None or cluster is not None:
                with index.write() as t:
                    if repo_id is not None:
                        t.repo_id_put(repo_id)
                    if cluster is not None:
                        t.cluster_put(cluster)
            if repo_id is None:
                tiers.claim(index.repo_id)
        finally:
            index.close()
            tiers.close()
        tmp = path / (config.CONFIG_NAME + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path / config.CONFIG_NAME)
        return cls(path)

    @classmethod
    def for_writing(cls, path: Path) -> Repository:
        """Open to write: as the maintainer when nothing holds the repository, else (a mount
        does) as a ``shared`` writer beside it."""
        try:
            return cls(path)
        except Conflict:
            return cls(path, shared=True)

    @staticmethod
    def tune_allocator() -> None:
        """Set this process's allocator up for moving chunks (engine/memory.py): for the
        mount daemon and ``chunkfs import``, which move every byte through chunk buffers."""
        tame_malloc()

    # -- files ----------------------------------------------------------------------

    def file_content(self, ino: int) -> FileContent:
        """The content of file ``ino``, ready to read and modify."""
        return FileContent(
            self.chunks, self.ns.extents(ino), self.ns.group_of(ino), self.settings.chunking, self.spool_path
        )

    def content_of(self, extents: list[Extent]) -> FileContent:
        """Read access to any content (a historic version, say) by its extents."""
        return FileContent(self.chunks, extents, "", self.settings.chunking)

    def commit_file(
        self,
        ino: int,
        content: FileContent,
        *,
        final: bool = True,
        mtime_ns: int | None = None,
        writer_uid: int | None = None,
    ):
        """Make ``content`` durable and the current content of ``ino``: a new version,
        with its whole-file BLAKE3 and who wrote it; sidecar files (trainer_state.json,
        …) also update their checkpoint's record."""
        extents = content.finish() if final else content.commit()
        sidecar = None
        if content.size <= MAX_SIDECAR and self.ns.sidecar_name(ino) is not None:
            sidecar = content.read(0, content.size)
        rec = self.ns.set_content(
            ino, extents, mtime_ns, blake3=content.digest(), writer_uid=writer_uid, sidecar=sidecar
        )
        if final:
            content.end_window()  # gc protocol (docs/gc.md): its chunks are committed now
        self.index.sync()  # metasync is off: without this a power cut could undo the commit
        return rec

    def flush(self) -> None:
        """Make everything written so far durable (packs, then index)."""
        self.chunks.flush()
        self.index.sync()

    def close(self) -> None:
        """Seal open packs (if writable), close the index, release the lock; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop_background()
            if self.remote is not None:
                self.remote.close()
            if self.writable:
                self.packs.close()
            self.save_counters()
            self.replicas.close()
            self.tiers.close()
        finally:  # whatever failed above: no descriptor outlives the handle (read-only ones too)
            self.hot.close()
            self.index.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
