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

A write that fails (disk full, broken pack) poisons the inode's open state: its
later writes and its flush report the same error and nothing of it is
committed, so the last committed content stays intact.

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
"""

from __future__ import annotations

import itertools
import logging
import stat
import threading
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.engine.file import FileContent
from chunkfs.engine.readahead import ReadAhead, ReadStream
from chunkfs.errors import ChunkfsError, IsADirectory
from chunkfs.repo import Repository
from chunkfs.types import InodeRecord

log = logging.getLogger(__name__)


@dataclass
class _Open:
    ino: int
    content: FileContent
    handles: int = 0
    error: ChunkfsError | None = None
    mtime_ns: int | None = None  # recorded at the next commit: the last write's time, or a later utime
    writer_uid: int | None = None  # who opened it for writing last: recorded in its versions
    emptied: bool = False  # truncated to nothing and not written since: ``flush`` leaves it to ``release``
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Handle:
    entry: _Open
    stream: ReadStream = field(default_factory=ReadStream)  # guarded by ``entry.lock``


class OpenFiles:
    """Open handles of a mounted repository, keyed by file handle number."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._by_ino: dict[int, _Open] = {}
        self._by_fh: dict[int, _Handle] = {}
        self._fhs = itertools.count(1)
        self._lock = threading.Lock()
        self.read_ahead = ReadAhead(repo.chunks)

    def open(self, ino: int, *, truncate: bool = False, writer_uid: int | None = None) -> int:
        """A new handle of ``ino``; ``truncate`` (O_TRUNC) empties the file and commits that at once.

        ``writer_uid``: the user opening it for writing (recorded in the versions it commits).
        """
        rec = self.repo.ns.getattr(ino)
        if stat.S_ISDIR(rec.mode):
            raise IsADirectory(f"inode {ino}: is a directory")
        with self._lock:
            entry = self._by_ino.get(ino)
        if entry is None:
            content = self.repo.file_content(ino)  # reads the index: outside the table lock
            with self._lock:
                entry = self._by_ino.setdefault(ino, _Open(ino, content))
        with self._lock:
            entry.handles += 1
            if writer_uid is not None:
                entry.writer_uid = writer_uid
            fh = next(self._fhs)
            self._by_fh[fh] = _Handle(entry)
        self.repo.ns.hold(ino)
        if truncate:
            try:
                self.truncate(ino, 0)
            except BaseException:
                self.release(fh)
                raise
        return fh

    def _entry(self, fh: int) -> _Open:
        return self._by_fh[fh].entry

    def size(self, ino: int) -> int | None:
        """The current size of an open file (None if not open): includes uncommitted writes."""
        entry = self._by_ino.get(ino)
        return entry.content.size if entry is not None else None

    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._by_fh[fh]
        return self.read_ahead.read(handle.entry.content, handle.stream, offset, size, handle.entry.lock)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        entry = self._entry(fh)
        with entry.lock:
            if entry.error is not None:
                raise entry.error
            try:
                entry.content.write(offset, data)
                entry.emptied = False
            except ChunkfsError as e:
                log.error("write to %s failed: %s", self.repo.ns.path_of(entry.ino), e)
                entry.error = e
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
            self.repo.commit_file(ino, content)
            return
        with entry.lock:
            if entry.error is not None:
                raise entry.error
            entry.content.truncate(size)
            entry.emptied = entry.content.size == 0
            entry.mtime_ns = clock.now_ns()

    def _commit(self, entry: _Open, *, final: bool) -> None:
        if entry.error is not None:
            raise entry.error
        entry.emptied = False
        if entry.content.modified:
            self.repo.commit_file(
                entry.ino, entry.content, final=final, mtime_ns=entry.mtime_ns, writer_uid=entry.writer_uid
            )

    def flush(self, fh: int) -> None:
        """Commit at close(). Not a file emptied (``O_TRUNC``, ``truncate(0)``) with nothing
        written since: a shell's ``echo x > f`` opens with O_TRUNC, dup2()s the descriptor
        and closes the original — a FLUSH — before it writes, and committing then would make
        every rewrite two versions, an empty one first. Such a file is committed by the
        next flush that follows a write, by fsync, or by the last ``release``."""
        entry = self._entry(fh)
        with entry.lock:
            if entry.emptied and entry.error is None:
                return
            self._commit(entry, final=True)

    def fsync(self, fh: int) -> None:
        entry = self._entry(fh)
        with entry.lock:
            self._commit(entry, final=False)
        self.repo.flush()

    def release(self, fh: int) -> int:
        """Close handle ``fh`` (the last one commits what is left); return its inode.

        The entry leaves the table only after that commit: a process opening
        the file meanwhile shares it instead of loading the not-yet-committed
        state from the index — whose own later commit the old one would then
        overwrite (RELEASE reaches us asynchronously, after close() returned).
        """
        with self._lock:
            handle = self._by_fh.pop(fh)
            entry = handle.entry
            entry.handles -= 1
            last = entry.handles == 0
        self.read_ahead.cancel(handle.stream)  # out of the table: no read of this handle can come any more
        try:
            if last:
                with entry.lock:
                    if entry.error is None:
                        self._commit(entry, final=True)
                with self._lock:
                    if entry.handles == 0 and self._by_ino.get(entry.ino) is entry:
                        del self._by_ino[entry.ino]
        finally:
            self.repo.ns.release(entry.ino)
        return entry.ino

    def close_all(self) -> None:
        """Stop reading ahead and commit every open file (unmount)."""
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
