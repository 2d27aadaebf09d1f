"""The one place that opens the LMDB environment.

Durability settings: ``sync=True, metasync=False`` — every write transaction's
commit fdatasyncs the data pages (so a committed manifest survives power loss
once ``commit`` returns) but skips the separate meta-page flush; LMDB documents
that this keeps the database consistent and can at worst undo the very last
transaction on a system crash. Callers that have just acknowledged an fsync to
a user call ``Index.sync()`` to flush that too.

The map is sized generously up front (it is virtual address space; the file
grows only as pages are used): ``INITIAL_MAP_SIZE``, or twice the file's size when
that is more. It is never resized while open: LMDB remaps the file then, under the
feet of every read transaction of other threads. A full map is reported (NoSpace);
the next open doubles it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb

from chunkfs.errors import Conflict, CorruptData, FormatVersionError, NoSpace
from chunkfs.index import check, keys
from chunkfs.index.txn import Txn
from chunkfs.types import ROOT_INODE

DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.PanicError, lmdb.BadDbiError)
"""LMDB's errors for a damaged file (``chunkfs index rebuild`` is the way out)."""

INITIAL_MAP_SIZE = 64 << 30
MAX_READERS = 512


class Index:
    """A repository's LMDB environment and its named databases."""

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = Path(path)
        self._local = threading.local()  # this thread's open write transactions (``batch``)
        if not create:
            check.check_file(self.path)  # a truncated file would be a SIGBUS inside LMDB
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.path / "data.mdb"
        map_size = max(INITIAL_MAP_SIZE, 2 * data.stat().st_size if data.exists() else 0)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(keys.DATABASES) + 8,
                max_readers=MAX_READERS,
                sync=True,
                metasync=False,
                readahead=False,
                readonly=readonly,
                lock=True,
            )
        except lmdb.Error as e:
            if "already open in this process" in str(e):  # LMDB allows one handle per process
                raise Conflict(
                    f"{self.path}: the index is already open in this process; reuse that handle"
                ) from None
            raise CorruptData(f"{self.path}: cannot open the LMDB index: {e}; {check.hint(self.path)}") from None
        try:
            self._dbs = {name: self.env.open_db(name.encode(), create=not readonly) for name in keys.DATABASES}
        except DAMAGE as e:
            self.env.close()
            raise CorruptData(f"{self.path}: damaged ({e}); {check.hint(self.path)}") from None
        if create:
            self._initialise()
        self._check_format()

    def _initialise(self) -> None:
        with self.write() as t:
            if t.meta_get(keys.META_FORMAT) is None:
                t.meta_put(keys.META_FORMAT, keys.u32(keys.FORMAT_VERSION))
                t.meta_put(keys.META_REPO_ID, secrets.token_bytes(16))
                t.meta_put(keys.META_NEXT_INODE, keys.u64(ROOT_INODE + 1))
                t.meta_put(keys.META_NEXT_MANIFEST, keys.u64(1))
                t.meta_put(keys.META_NEXT_COMMIT, keys.u64(1))

    @functools.cached_property
    def repo_id(self) -> bytes:
        """The repository's random id (``meta/repo_id``, set at init): pack ids and locations carry it."""
        with self.read() as t:
            return bytes(t.meta_get(keys.META_REPO_ID) or b"")

    def _check_format(self) -> None:
        with self.read() as t:
            raw = t.meta_get(keys.META_FORMAT)
        if raw is None:
            raise CorruptData(f"{self.path}: index has no format record; not a chunkfs index")
        version = keys.decode_u32(raw)
        if version != keys.FORMAT_VERSION:
            raise FormatVersionError(
                f"{self.path}: index format {version}, this chunkfs reads format "
                f"{keys.FORMAT_VERSION}; use a matching chunkfs version"
            )

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A read-only snapshot; cheap, may run on any thread (including trio's). Inside this
        thread's ``batch`` it is the batch's transaction, which sees the batch's changes."""
        batch = self._batch()
        if batch:
            yield Txn(batch[-1], self._dbs)
            return
        try:
            with self.env.begin(buffers=False) as txn:
                yield Txn(txn, self._dbs)
        except DAMAGE as e:
            raise CorruptData(f"{self.path}: damaged ({e}); {check.hint(self.path)}") from None

    @contextlib.contextmanager
    def write(self) -> Iterator[Txn]:
        """A write transaction, committed (and synced) when the block ends.

        LMDB allows one writer at a time per environment; a second thread
        blocks here until the first commits. The commit is an fdatasync, so
        callers on the trio thread should batch or move to a worker thread.
        Inside this thread's ``batch`` it is a transaction nested in the batch's: a block
        that raises is undone alone, the rest is committed with the batch.
        """
        batch = self._batch()
        parent = batch[-1] if batch else None
        with self._errors(), self.env.begin(write=True, buffers=False, parent=parent) as txn:
            if batch is None:
                yield Txn(txn, self._dbs)
                return
            batch.append(txn)
            try:
                yield Txn(txn, self._dbs)
            finally:
                batch.pop()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One write transaction for every ``write`` (and ``read``) of this thread inside the
        block, committed at its end: other processes see all of it at once, a crash leaves
        all or none of it, and it costs one fdatasync (the replay of a log entry of a shared
        repository, cluster/replay.py). Other threads' writes wait for it: keep it short and
        do no I/O but the index's inside."""
        if self._batch() is not None:  # already inside one: the outer block commits
            yield
            return
        self._local.txns = []
        try:
            with self.write():
                yield
        finally:
            self._local.txns = None

    def _batch(self) -> list | None:
        """This thread's open write transactions in its ``batch``, outermost first (None: no batch)."""
        return getattr(self._local, "txns", None)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except lmdb.MapFullError:
            size = self.env.info()["map_size"]
            raise NoSpace(
                f"{self.path}: the index filled its map ({size >> 20} MiB); unmount and mount again "
                f"(or rerun the command): the next open doubles it"
            ) from None
        except lmdb.DiskError as e:
            raise NoSpace(f"{self.path}: cannot write the index: {e}") from None
        except DAMAGE as e:
            raise CorruptData(f"{self.path}: damaged ({e}); {check.hint(self.path)}") from None
        except lmdb.Error as e:
            if "No space left" in str(e):
                raise NoSpace(f"{self.path}: disk full while writing the index") from None
            raise

    def salvage_from(self, damaged: Path, scratch: Path) -> dict[str, int]:
        """Copy every record that can still be read out of the damaged index in directory
        ``damaged`` into this one (``check.salvage``: child processes, a crash loses only the rest
        of one database); return the records copied per database."""
        counts: dict[str, int] = {}
        batch: list[tuple[str, bytes, bytes]] = []

        def flush() -> None:
            with self.write() as t:
                for db, key, value in batch:
                    t.restore_record(db, key, value)
            batch.clear()

        for db, key, value in check.salvage(damaged, keys.DATABASES, scratch):
            counts.setdefault(db, 0)
            if value is not None:
                batch.append((db, key, value))
                counts[db] += 1
                if len(batch) >= 10_000:
                    flush()
        flush()
        with self.write() as t:
            t.fix_sequences()
        return counts

    def sync(self) -> None:
        """Flush everything committed so far (including the meta page) to disk."""
        self.env.sync(True)

    def used_bytes(self) -> int:
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def copy_to(self, dest: Path) -> None:
        """A consistent copy of the whole index (compacted) into directory ``dest``."""
        os.makedirs(dest, exist_ok=True)
        self.env.copy(str(dest), compact=True)

    def close(self) -> None:
        self.env.close()
