"""The open-file table: what a mounted filesystem does between open and release.

All handles of one inode share one ``FileContent``, so bytes written through
one descriptor are readable through every other at once, before any commit.
Commit points are the durability contract (docs/durability.md):

* ``flush`` (every close): the writer's stream is finished and the content is
  committed — durable and current once close() returns (one exception: a file
  emptied by O_TRUNC or truncate(0) with nothing written since waits for the next
  write's flush, an fsync or the last release, so ``echo x > f`` is one version);
* ``fsync``: committed too, but the stream keeps going (a provisional last
  chunk), so a mid-write fsync does not shift later chunk boundaries;
* ``release`` of the last handle: anything written after the last flush (mmap
  write-back) is committed.

A write or commit that fails (disk full, broken pack) poisons the inode's open
state: its later writes and its flush report the same error and nothing of it is
committed, so the last committed content stays intact — and it is what readers see
from then on: the open content goes back to the committed one, and ``on_failed``
tells the FUSE layer to make the kernel drop the pages and size it cached for the
writes that never got stored.

Plain synchronous code, safe to call from many threads: calls for one inode are
serialised by that inode's lock, different inodes proceed in parallel. The FUSE
layer calls it from worker threads.

A read holds the lock only to take its snapshot of the content
(``FileContent.spans``: chunk ids, and copies of bytes held in memory); the
chunks themselves — a ``pread`` and a BLAKE3 check each on a miss — are fetched
after releasing it, so writers and other readers of the file do not queue
behind the disk. Chunks never change once named, so the read returns exactly
the content as it was when the snapshot was taken, whatever is written or
truncated meanwhile: never bytes of a state that was never visible. A handle
that reads sequentially has the chunks after its position fetched ahead
(engine/readahead.py).

With engine worker processes (``processes``; the mount's ``writers.processes``), a
file opened for writing is handed to one of them (writers/pool.py): its content is a
``RemoteContent`` that the calls below drive the same way, and a write costs this
process one copy into shared memory — ``try_write`` does it on the caller's thread
when nothing would block. Files opened only for reading keep an in-process
``FileContent``; the first open for writing hands an unmodified one over.
"""

from __future__ import annotations

import itertools
import logging
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.engine.file import FileContent
from chunkfs.engine.readahead import ReadAhead, ReadStream
from chunkfs.errors import ChunkfsError, FileTooLarge, IsADirectory, ReadOnly
from chunkfs.repo import Repository
from chunkfs.types import Extent, InodeRecord
from chunkfs.writers.pool import RemoteContent, WriterPool

log = logging.getLogger(__name__)


@dataclass
class _Open:
    ino: int
    content: FileContent
    handles: int = 0
    error: ChunkfsError | None = None
    mtime_ns: int | None = None  # recorded at the next commit: the last write's time, or a later utime
    writer_uid: int | None = None  # who opened it for writing last: recorded in its versions
    manifest: int | None = None  # the manifest ``content`` was last committed as or loaded from
    emptied: bool = False  # truncated to nothing and not written since: ``flush`` leaves it to ``release``
    unversioned: bool = False  # created open and never committed: the next commit records it even if empty
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Handle:
    entry: _Open
    stream: ReadStream = field(default_factory=ReadStream)  # guarded by ``entry.lock``


@dataclass
class _Version:
    """A handle of a file as it was at a past commit (``.snapshots``): read-only, and
    shared with nobody, so it has its own content and lock and nothing to commit."""

    content: FileContent
    stream: ReadStream = field(default_factory=ReadStream)  # guarded by ``lock``
    lock: threading.Lock = field(default_factory=threading.Lock)


class OpenFiles:
    """Open handles of a mounted repository, keyed by file handle number."""

    def __init__(self, repo: Repository, *, processes: int = 0) -> None:
        """``processes``: engine worker processes for files being written (0: none, all in here)."""
        self.repo = repo
        self._pool = (
            WriterPool(repo.path, processes, repo.settings.writers.handoff, on_replaced=repo.packs.recover)
            if processes
            else None
        )
        self._by_ino: dict[int, _Open] = {}
        self._by_fh: dict[int, _Handle | _Version] = {}
        self._committed: dict[int, int] = {}  # inode → manifest of this mount's last commit of it
        self._fhs = itertools.count(1)
        self._lock = threading.Lock()
        self.read_ahead = ReadAhead(repo.chunks)
        self.on_failed: Callable[[int], None] | None = None  # called with the inode of a poisoned file

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[int, int, InodeRecord]:
        """Create a regular file and open it for writing by ``uid``: (handle, inode, record).

        The file gets no version until its content is committed (``Namespace.mknod``
        ``versioned=False``): a writer that renames its file before closing it (safetensors)
        must not leave an empty version under the new name. Like a file emptied by O_TRUNC,
        it is committed by the first flush after a write, by fsync, or by the last release.
        """
        ino, rec = self.repo.ns.mknod(parent, name, mode, uid, gid, versioned=False)
        fh = self.open(ino, writer_uid=uid)
        entry = self._entry(fh)
        with entry.lock:
            entry.unversioned = entry.emptied = True
        return fh, ino, rec

    def open(self, ino: int, *, truncate: bool = False, writer_uid: int | None = None) -> int:
        """A new handle of ``ino``; ``truncate`` (O_TRUNC) empties the file and commits that at once.

        ``writer_uid``: the user opening it for writing (recorded in the versions it commits).
        """
        rec = self.repo.ns.getattr(ino)
        if stat.S_ISDIR(rec.mode):
            raise IsADirectory(f"inode {ino}: is a directory")
        # The entry is found (or added) and its handle counted in one hold of the table lock: a
        # last ``release`` may drop an entry with no handles from the table at any moment between.
        writing = writer_uid is not None
        with self._lock:
            entry = self._by_ino.get(ino)
            if entry is not None:
                fh = self._add_handle(entry, writer_uid)
        if entry is None:
            content = self._load(ino, writing)  # reads the index: outside the table lock
            with self._lock:
                entry = self._by_ino.setdefault(ino, _Open(ino, content, manifest=rec.manifest))
                fh = self._add_handle(entry, writer_uid)
            if entry.content is not content:  # another open got there first
                content.close()
        elif entry.manifest != rec.manifest:
            self._refresh(entry, rec.manifest)
        if writing:
            self._hand_over(entry)
        self.repo.ns.hold(ino)
        if truncate:
            try:
                self.truncate(ino, 0)
            except BaseException:
                self.release(fh)
                raise
        return fh

    def _load(self, ino: int, writing: bool) -> FileContent | RemoteContent:
        """The committed content of ``ino``: in a worker process if it is to be written and
        there are any, else in this one."""
        if writing and self._pool is not None:
            extents = self.repo.ns.extents(ino)
            return self._pool.open(extents, self.repo.ns.group_of(ino), sum(e.length for e in extents))
        return self.repo.file_content(ino)

    def _refresh(self, entry: _Open, manifest: int) -> None:
        """Another process committed new content since ``entry`` was loaded (``chunkfs import``
        while mounted): an unmodified content held here is reloaded, so this open — and the
        handles already open, as on a local filesystem — read what the index holds (the
        kernel's pages are dropped too: ``ChunkfsOperations._file_info``). A content with
        writes of this mount's own is kept: its commit will be the newer version."""
        with entry.lock:
            content = entry.content
            if entry.manifest == manifest or entry.error is not None or content.modified:
                return
            if isinstance(content, FileContent):
                entry.content = self.repo.file_content(entry.ino)
            else:
                entry.content = self._load(entry.ino, True)
            entry.manifest = manifest
            content.close()

    def _hand_over(self, entry: _Open) -> None:
        """A file open for reading is now opened for writing too: move its content to a worker
        (if its content here is unmodified; a truncated one stays and commits from here)."""
        if self._pool is None or not isinstance(entry.content, FileContent):
            return
        with entry.lock:
            if isinstance(entry.content, FileContent) and not entry.content.modified and entry.error is None:
                entry.content = self._load(entry.ino, True)

    def _add_handle(self, entry: _Open, writer_uid: int | None) -> int:
        """A new handle of ``entry`` (the caller holds the table lock)."""
        entry.handles += 1
        if writer_uid is not None:
            entry.writer_uid = writer_uid
        fh = next(self._fhs)
        self._by_fh[fh] = _Handle(entry)
        return fh

    def open_version(self, extents: list[Extent]) -> int:
        """A read-only handle of content that is not the live file (a version in ``.snapshots``)."""
        version = _Version(self.repo.content_of(extents))
        with self._lock:
            fh = next(self._fhs)
            self._by_fh[fh] = version
        return fh

    def _entry(self, fh: int) -> _Open | None:
        """The open file behind ``fh``; None for a version handle, which commits nothing."""
        handle = self._by_fh[fh]
        return handle.entry if isinstance(handle, _Handle) else None

    def changed_elsewhere(self, ino: int, manifest: int) -> bool | None:
        """Whether another process committed ``ino`` (its index ``manifest`` is not the one this
        mount loaded or committed last); None if the file is not open here. A file with writes
        of this mount not yet committed is not: its commit will be the newer version."""
        entry = self._by_ino.get(ino)
        if entry is None:
            return None
        return not entry.content.modified and entry.manifest != manifest

    def committed_here(self, ino: int) -> int | None:
        """The manifest of this mount's last commit of ``ino`` (None: none since ``forget``). Set
        before the file leaves the table, so a reply racing a close never takes the mount's own
        commit for another process's."""
        return self._committed.get(ino)

    def forget(self, ino: int) -> None:
        """The kernel forgot ``ino``: nothing of this mount's commits of it matters any more."""
        self._committed.pop(ino, None)

    def size(self, ino: int) -> int | None:
        """The current size of an open file with writes of this mount not yet committed
        (None otherwise: the index's size is the file's, whoever committed it last)."""
        entry = self._by_ino.get(ino)
        return entry.content.size if entry is not None and entry.content.modified else None

    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._by_fh[fh]
        holder = handle.entry if isinstance(handle, _Handle) else handle
        if isinstance(holder.content, RemoteContent):
            with holder.lock:  # the content may be swapped for the committed one (``_fail``)
                return holder.content.read(offset, size)
        return self.read_ahead.read(holder.content, handle.stream, offset, size, holder.lock)

    def try_write(self, fh: int, offset: int, data: bytes) -> int | None:
        """``write``, if it can be done now without waiting: a file in a worker process, its
        lock free, room in the hand-off. None otherwise (and nothing done): call ``write``
        from a thread that may wait. For the FUSE loop's own thread."""
        handle = self._by_fh.get(fh)
        if not isinstance(handle, _Handle):
            return None
        entry = handle.entry
        if not isinstance(entry.content, RemoteContent) or not entry.lock.acquire(blocking=False):
            return None
        try:
            content = entry.content
            if entry.error is not None or content.error is not None or not isinstance(content, RemoteContent):
                return None  # ``write`` reports it (and poisons the file)
            try:
                if not content.write(offset, data, wait=False):
                    return None
            except ChunkfsError:
                return None  # the same: ``write`` raises it again, with the bookkeeping
            entry.emptied = False
            entry.mtime_ns = clock.now_ns()
            return len(data)
        finally:
            entry.lock.release()

    def write(self, fh: int, offset: int, data: bytes) -> int:
        entry = self._entry(fh)
        if entry is None:
            raise ReadOnly("snapshots are read-only")
        with entry.lock:
            if entry.error is not None:
                raise entry.error
            try:
                entry.content.write(offset, data)
                entry.emptied = False
            except FileTooLarge:
                raise  # refused before anything changed (EFBIG)
            except ChunkfsError as e:
                self._fail(entry, e, "write to")
                raise
            entry.mtime_ns = clock.now_ns()
        return len(data)

    def setattr(self, ino: int, **changes) -> InodeRecord:
        """Change attributes (``Namespace.setattr``); an explicit mtime on an open file also
        holds for its next commit. With the kernel's writeback cache, data reaches us only
        at flush, after a utime the writer made before close (``cp -a`` does), and the
        kernel sends its own mtime after the data it covers: both must win over commit time."""
        with self._lock:
            entry = self._by_ino.get(ino)
        if entry is None or changes.get("mtime_ns") is None:
            return self.repo.ns.setattr(ino, **changes)
        with entry.lock:
            entry.mtime_ns = changes["mtime_ns"]
            return self.repo.ns.setattr(ino, **changes)

    def truncate(self, ino: int, size: int) -> None:
        """Set the size of ``ino``. A file nobody has open is committed at once; an open
        one when it is closed or fsync'd, like its writes — so ``open(O_TRUNC)``
        followed by a rewrite is one new version, not an empty one and then the data."""
        with self._lock:
            entry = self._by_ino.get(ino)
        if entry is None:
            content = self.repo.file_content(ino)
            if content.size == size:
                return  # nothing changes: no version (``chunkfs restore`` truncates to tell the kernel a size)
            content.truncate(size)
            self._committed[ino] = self.repo.commit_file(ino, content).manifest
            return
        with entry.lock:
            if entry.error is not None:
                raise entry.error
            entry.content.truncate(size)
            entry.emptied = entry.content.size == 0
            entry.mtime_ns = clock.now_ns()

    def _fail(self, entry: _Open, error: ChunkfsError, what: str) -> None:
        """Poison ``entry`` (the caller holds its lock): readers get the committed content back."""
        log.error("%s %s failed: %s", what, self.repo.ns.path_of(entry.ino), error)
        entry.error = error
        entry.content.close()
        try:
            entry.content = self.repo.file_content(entry.ino)
        except ChunkfsError as e:  # the inode is gone: nobody can open it again anyway
            log.debug("cannot reload %s: %s", entry.ino, e)
        if self.on_failed is not None:
            self.on_failed(entry.ino)

    def _commit(self, entry: _Open, *, final: bool) -> None:
        if entry.error is not None:
            raise entry.error
        entry.emptied = False
        if entry.content.modified or entry.unversioned:
            try:
                rec = self.repo.commit_file(
                    entry.ino, entry.content, final=final, mtime_ns=entry.mtime_ns, writer_uid=entry.writer_uid
                )
                entry.manifest = self._committed[entry.ino] = rec.manifest
            except ChunkfsError as e:
                self._fail(entry, e, "commit of")
                raise
            entry.unversioned = False

    def flush(self, fh: int) -> None:
        """Commit at close(). Not a file emptied (``O_TRUNC``, ``truncate(0)``) with nothing
        written since: a shell's ``echo x > f`` opens with O_TRUNC, dup2()s the descriptor
        and closes the original — a FLUSH — before it writes, and committing then would make
        every rewrite two versions, an empty one first. Such a file is committed by the
        next flush that follows a write, by fsync, or by the last ``release``."""
        entry = self._entry(fh)
        if entry is None:
            return
        with entry.lock:
            if entry.emptied and entry.error is None:
                return
            self._commit(entry, final=True)

    def fsync(self, fh: int) -> None:
        entry = self._entry(fh)
        if entry is None:
            return
        with entry.lock:
            self._commit(entry, final=False)
        self.repo.flush()

    def release(self, fh: int) -> int | None:
        """Close handle ``fh`` (the last one commits what is left); return its inode (None for
        a version handle).

        The entry leaves the table only after that commit: a process opening
        the file meanwhile shares it instead of loading the not-yet-committed
        state from the index — whose own later commit the old one would then
        overwrite (RELEASE reaches us asynchronously, after close() returned).
        """
        with self._lock:
            handle = self._by_fh.pop(fh)
            if isinstance(handle, _Handle):
                entry = handle.entry
                entry.handles -= 1
                last = entry.handles == 0
        self.read_ahead.cancel(handle.stream)  # out of the table: no read of this handle can come any more
        if isinstance(handle, _Version):
            return None
        try:
            if last:
                with entry.lock:
                    if entry.error is None:
                        self._commit(entry, final=True)
                with self._lock:
                    gone = entry.handles == 0 and self._by_ino.get(entry.ino) is entry
                    if gone:
                        del self._by_ino[entry.ino]
                if gone:
                    entry.content.close()
        finally:
            self.repo.ns.release(entry.ino)
        return entry.ino

    def close_all(self) -> None:
        """Stop reading ahead, commit every open file, stop the worker processes (unmount)."""
        self.read_ahead.close()
        with self._lock:
            entries = list(self._by_ino.values())
        for entry in entries:
            with entry.lock:
                if entry.error is None:
                    try:
                        self._commit(entry, final=True)
                    except ChunkfsError as e:
                        log.error("cannot commit %s at unmount: %s", self.repo.ns.path_of(entry.ino), e)
        if self._pool is not None:
            self._pool.stop()
