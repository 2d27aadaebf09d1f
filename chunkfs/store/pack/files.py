"""Pack files on disk: naming, the open-pack writer, the whole-pack builder, and reading a pack's entries.

An open pack is appended to by one ``PackWriter`` (thread-safe: appends are
serialised by its lock). Appends are plain ``pwrite`` calls; nothing is durable
until ``sync`` has fsync'd the file — the chunk store calls it before it commits
any index entry that points into the pack. ``seal`` writes the footer and makes
the pack immutable. A ``PackBuilder`` writes a new pack front to back in one go
(the pack rewrites of maintenance/).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import blake3

from chunkfs.errors import Conflict, CorruptData
from chunkfs.store.backends.base import Backend, os_error
from chunkfs.store.pack import format as packfmt
from chunkfs.types import CHUNK_ID_LEN, ChunkId, ChunkKind, PackId


def pack_name(pack: PackId) -> str:
    """The object name of a pack on every backend: ``packs/ab/abcdef….pack``."""
    h = pack.hex()
    return f"packs/{h[:2]}/{h}.pack"


def pack_id_from_name(name: str) -> PackId | None:
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(".pack"):
        return None
    try:
        pack = bytes.fromhex(base[:-5])
    except ValueError:
        return None
    return pack if len(pack) == 16 else None


def claim(path: Path) -> int | None:
    """A descriptor of the pack file ``path`` holding its ``flock`` (the caller closes it), or
    None if there is no such file; ``Conflict`` while a live process writes it (``PackWriter``)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"pack {path.name}: still open in a live writer process") from None
    return fd


def _still_linked(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class PackWriter:
    """Appends chunk records to one open pack file on the hot tier.

    The writer holds an exclusive ``flock`` on the file from creating it until it is closed —
    after the index says it is sealed: several processes write one repository
    (docs/concurrency.md), and the one that seals the packs a dead process left open
    (``PackStore.recover``) must tell them from the packs of a live one. The kernel drops
    the lock when the process dies, however it dies.
    """

    def __init__(
        self, pack: PackId, path: Path, group: str, *, resume_size: int | None = None, fd: int | None = None
    ):
        """A new pack file (``FileExistsError`` if there is one), or (``resume_size``) the open
        pack a dead process left, cut to its indexed size; ``fd``: that file already opened and
        locked (``claim``)."""
        self.pack = pack
        self.path = path
        self.group = group
        self.entries: list[packfmt.Entry] = []
        self._lock = threading.Lock()
        self._dirty = False
        self.sealed = False  # appends stop at the footer, though the file stays open and locked
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_size is None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # a new file: only gc's orphan check may hold it
            if not _still_linked(self._fd, path):  # gc took it for an orphan before we locked it
                os.close(self._fd)
                raise FileExistsError(errno.EEXIST, "pack file reclaimed before it was locked", str(path))
            self._write(0, packfmt.encode_header(pack))
            self.size = packfmt.HEADER.size
        else:
            self._fd = fd if fd is not None else claim(path)
            if self._fd is None:
                raise FileNotFoundError(errno.ENOENT, "no such pack file", str(path))
            os.ftruncate(self._fd, resume_size)
            data = memoryview(os.pread(self._fd, resume_size, 0))
            packfmt.decode_header(bytes(data[: packfmt.HEADER.size]), path.name)
            self.entries = list(packfmt.iter_records(data, packfmt.HEADER.size, resume_size))
            self.size = self.entries[-1].offset + self.entries[-1].stored_len if self.entries else packfmt.HEADER.size
            os.ftruncate(self._fd, self.size)
            self._dirty = True

    def _write(self, offset: int, *parts: bytes) -> None:
        """Write ``parts`` back to back at ``offset`` with one ``pwritev``: a record's header
        and its chunk go out without first being copied into one buffer."""
        views, pos = [memoryview(p) for p in parts if p], offset
        try:
            while views:  # a nearly full disk writes short: write the rest, which then fails with ENOSPC
                n = os.pwritev(self._fd, views, pos)
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                pos += n
                while n:
                    if n >= len(views[0]):
                        n -= len(views.pop(0))
                    else:
                        views[0], n = views[0][n:], 0
        except OSError as e:
            os.ftruncate(self._fd, offset)  # never leave a torn record behind a good one
            raise os_error(e, f"pack {self.path}") from None

    def append(self, chunk: ChunkId, stored: bytes, raw_len: int, flags: int) -> packfmt.Entry | None:
        """Append one chunk; return where its stored bytes are (None: sealed meanwhile, use another)."""
        record = packfmt.encode_record(chunk, flags, raw_len, len(stored))
        with self._lock:
            if self.sealed or self._fd < 0:
                return None
            offset = self.size
            self._write(offset, record, stored)
            entry = packfmt.Entry(chunk, offset + len(record), len(stored), raw_len, flags)
            self.size = entry.offset + entry.stored_len
            self.entries.append(entry)
            self._dirty = True
        return entry

    def sync(self) -> None:
        """Make every appended record durable."""
        with self._lock:
            if self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def seal(self) -> int:
        """Write the footer and fsync; return the final size. The caller closes the writer once
        the index says the pack is sealed (until then its lock says a live writer has it)."""
        with self._lock:
            footer = packfmt.encode_footer(self.entries, self.size)
            self._write(self.size, footer)
            self.sealed = True  # a thread that looked this writer up before the seal appends elsewhere
            self.size += len(footer)
            os.fsync(self._fd)
            return self.size

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class PackBuilder:
    """Writes a new sealed pack to a local file front to back, hashing it on the way."""

    def __init__(self, pack: PackId, path: Path) -> None:
        self.pack = pack
        self.path = path
        self.entries: list[packfmt.Entry] = []
        self._hasher = blake3.blake3()
        try:
            self._f = open(path, "wb")  # noqa: SIM115 — closed by seal() or discard()
        except OSError as e:
            raise os_error(e, str(path)) from None
        self.size = 0
        self._write(packfmt.encode_header(pack))

    def _write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise os_error(e, str(self.path)) from None
        self._hasher.update(data)
        self.size += len(data)

    def add(self, chunk: ChunkId, stored: bytes, raw_len: int, flags: int) -> packfmt.Entry:
        self._write(packfmt.encode_record(chunk, flags, raw_len, len(stored)))
        entry = packfmt.Entry(chunk, self.size, len(stored), raw_len, flags)
        self._write(stored)
        self.entries.append(entry)
        return entry

    def seal(self) -> tuple[int, bytes]:
        """Write the footer, flush it to disk and close; return (size, BLAKE3 of the whole pack)."""
        self._write(packfmt.encode_footer(self.entries, self.size))
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            raise os_error(e, str(self.path)) from None
        return self.size, self._hasher.digest()

    def discard(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def read_entries(backend: Backend, name: str) -> tuple[list[packfmt.Entry], bool]:
    """Every chunk entry of a pack, from its footer if sealed, else by walking records.

    Returns (entries, sealed). Raises ``CorruptData`` for a pack that is not a
    pack or whose footer is damaged.
    """
    size = backend.size(name)
    head = backend.get_range(name, 0, min(size, packfmt.HEADER.size))
    packfmt.decode_header(head, name)
    tail = backend.get_range(name, max(0, size - packfmt.TRAILER.size), min(size, packfmt.TRAILER.size))
    try:
        located = packfmt.decode_trailer(tail, size, name)
    except CorruptData:
        located = None
    if located is not None:
        offset, _count = located
        footer = backend.get_range(name, offset, size - offset)
        return packfmt.decode_footer(footer, name), True
    return walk_records(backend, name), False


def walk_records(backend: Backend, name: str) -> list[packfmt.Entry]:
    """A pack's entries found by walking its record headers, ignoring any footer.

    For a pack without a footer, or whose footer is damaged: the walk stops at
    the first torn or invalid record header, which is also where a footer
    starts. Stored bytes are not verified. ``CorruptData`` if the header is not
    a pack's.
    """
    data = memoryview(backend.get(name))
    packfmt.decode_header(bytes(data[: packfmt.HEADER.size]), name)
    return list(packfmt.iter_records(data, packfmt.HEADER.size, len(data)))


def delta_bases(backend: Backend, name: str, entries: list[packfmt.Entry]) -> dict[ChunkId, ChunkId]:
    """The base of every delta record among ``entries`` of a pack (the first 32 stored bytes of
    each: the index's ``deltas``, rebuilt from the packs by ``index rebuild`` and ``recover``)."""
    return {
        e.chunk: packfmt.delta_base(backend.get_range(name, e.offset, CHUNK_ID_LEN), e.flags)
        for e in entries
        if e.flags >> 4 == ChunkKind.DELTA
    }
