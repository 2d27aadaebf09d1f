"""One file's content while it is open: streaming writes, random writes, reads, commits.

A file's content is a list of extents (``types.Extent``: length + chunk id),
contiguous from offset 0. ``FileContent`` keeps that list plus the bytes not
stored yet:

* the **stream**: bytes are cut into chunks in file order by a ``Chunker``, so
  that the cuts depend on the bytes alone (tensor starts, fixed sizes inside big
  tensors), never on how the writer split or ordered its writes; each chunk it
  cuts is stored at once and appended as an extent, and only the uncut tail stays
  in memory (at most one chunk). This is the path of every checkpoint writer
  (torch.save, safetensors, numpy, cp).
* **held** bytes (engine/ahead.py): a write beyond the stream's end waits until
  the stream reaches it — the kernel's writeback cache reorders a sequential
  writer's pages; safetensors ``ftruncate``s the file to its final size and then
  fills it; threads ``pwrite`` their own regions; ``mmap`` pages come back in any
  order. A file extended by ``truncate`` has a *sparse tail* past the stream that
  reads as zeros and costs nothing until written.
* **patches**: a write inside stored content (numpy memmap, a zip writer
  going back to fix a header) copies only the extents it touches into memory,
  patches them, and stores them again with the same boundaries when the file is
  committed — the rest of the file is not rewritten. At most ``MAX_PATCHED``
  extents are held; beyond that the oldest are stored early.

``commit`` (fsync) makes the current content durable and returns its extents
without disturbing the stream or the held bytes: the uncut tail and the held
bytes are stored as provisional chunks, so an fsync in the middle of a write
does not shift later chunk boundaries. ``finish`` (close) runs the stream to
the end of the file: held bytes in order, gaps between them as zeros — up to
``HOLE_MIN``; a larger gap stays a hole, one extent of any length that stores
nothing — so a sparse file of any size costs memory and time in proportion to
what was written, never to its size.

Not thread-safe: the caller serialises calls for one file (the FUSE layer holds
a lock per open inode). A read needs that lock only to be planned (``spans``);
the chunks it names are fetched after (``assemble``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

import blake3

from chunkfs.config import ChunkingSettings
from chunkfs.engine.ahead import BLOCK, Held
from chunkfs.engine.chunker import Chunker, Piece
from chunkfs.engine.chunks import ChunkIO
from chunkfs.engine.formats.base import FixedParser
from chunkfs.errors import FileTooLarge
from chunkfs.types import HOLE, MAX_FILE_SIZE, ChunkId, Extent

MAX_PATCHED = 32
"""Extents held in memory for random writes before the oldest are stored."""

HELD_MEMORY = 16 << 20
"""Bytes written ahead of the stream kept in memory per file; more go to the spool file."""

HOLE_MIN = 64 << 20
"""A gap in a file larger than this is stored as a hole; a smaller one goes through the
stream as zeros, as if it had been written (the cuts stay those of the bytes)."""

HASH_ZEROS_MAX = 1 << 30
"""The whole-file BLAKE3 of a file with more zeros than this in holes is not computed (a
sparse file of terabytes would take hours to hash); its versions record none."""

_ZEROS = bytes(BLOCK)


class Span(NamedTuple):
    """Part of a read: ``n`` bytes from ``lo`` of a stored extent, or ``data`` taken from memory."""

    lo: int
    n: int
    extent: Extent | None = None
    data: bytes = b""


def assemble(spans: list[Span], get: Callable[[ChunkId, int], bytes]) -> bytes:
    """The bytes of a read planned by ``FileContent.spans``; ``get`` fetches a verified chunk."""
    out = []
    for s in spans:
        if s.extent is None:
            out.append(s.data)
        elif s.extent.chunk == HOLE:
            out.append(bytes(s.n))  # never the whole hole: it may be terabytes
        else:
            out.append(bytes(memoryview(get(s.extent.chunk, s.extent.length))[s.lo : s.lo + s.n]))
    return b"".join(out)


def check_size(size: int) -> None:
    """Refuse (``FileTooLarge``, EFBIG) a file size over the largest chunkfs stores."""
    if size > MAX_FILE_SIZE:
        raise FileTooLarge(f"{size} bytes: over the largest file size, {MAX_FILE_SIZE} bytes (256 TiB)")


class FileContent:
    """The mutable content of one file, backed by the chunk store."""

    def __init__(
        self,
        chunks: ChunkIO,
        extents: list[Extent],
        group: str,
        chunking: ChunkingSettings,
        spool_dir: Path | None = None,
    ):
        """``spool_dir``: where bytes written far ahead of the stream are spooled (the hot disk)."""
        self.chunks = chunks
        self.group = group
        self.chunking = chunking
        self._extents = list(extents)
        self._starts = [0, *accumulate(e.length for e in self._extents)]
        self._stream: Chunker | None = None
        self._patched: dict[int, bytearray] = {}  # extent index → its bytes, patched
        self._held = Held(spool_dir, HELD_MEMORY)
        self._size = self._starts[-1]
        # BLAKE3 of the stream so far, kept up to date while every byte of it went through
        # the stream in order from offset 0 (the usual case); None otherwise.
        self._hasher: blake3.blake3 | None = None if self._extents else blake3.blake3()
        self.modified = False
        # from its first stored chunk until ``Repository.commit_file(final=True)`` (or until it
        # goes away) the content holds a gc write window (docs/gc.md, "The protocol")
        self.gc_window: int | None = None

    # -- shape ------------------------------------------------------------------

    def _end(self) -> int:
        """Where the stored extents and the stream end (held bytes and the sparse tail not counted)."""
        return self._starts[-1] + (self._stream.pending_size if self._stream is not None else 0)

    @property
    def size(self) -> int:
        return self._size

    @property
    def format(self) -> str | None:
        return self._stream.format if self._stream else None

    def _in_window(self) -> None:
        """Open this content's gc write window, if not yet: every chunk it stores or references
        from now on is protected from gc until the commit (docs/gc.md)."""
        if self.gc_window is None:
            self.gc_window = self.chunks.open_window(self)

    def _put(self, data, group: str) -> bytes:
        """Store a chunk (or find it by dedup) inside this content's gc write window."""
        self._in_window()
        return self.chunks.put(data, group)

    def _append_extent(self, length: int, chunk: bytes) -> None:
        self._extents.append(Extent(length, chunk))
        self._starts.append(self._starts[-1] + length)

    def _store_pieces(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            self._append_extent(len(piece.data), self._put(piece.data, self.group))

    # -- writing ------------------------------------------------------------------

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        check_size(offset + len(data))
        self.modified = True
        self._size = max(self._size, offset + len(data))
        end = self._end()
        if offset > end:
            self._held.put(offset, data)
            return
        self._held.discard(offset, offset + len(data))  # this write is newer than what was held there
        view = memoryview(data)
        if offset < end:
            inside = min(len(data), end - offset)
            if not self._repeats(offset, view[:inside]):
                self._end_stream()
                self._patch(offset, view[:inside])
            view = view[inside:]
            if not view:
                return
        self._stream_write(data if len(view) == len(data) else view)
        self._pull()

    def splice(self, offset: int, data, extents: list[Extent]) -> bool:
        """Write ``data`` at ``offset`` as the already stored ``extents`` (an unchanged tensor of an
        incremental save: its chunks are referenced, never hashed, copied or stored again);
        False, with nothing written, unless that gives exactly the chunks ``write`` would: the
        stream at ``offset`` with a tensor starting there (``Chunker.skip``), ``extents`` whole
        chunk-size chunks of ``data`` — and every one of them still in the store. The caller
        vouches that ``extents`` hold ``data``'s bytes; the whole-file hash still reads ``data``."""
        n = memoryview(data).nbytes
        if (self._stream is None or offset != self._end() or self._held or self._patched
                or sum(e.length for e in extents) != n):  # fmt: skip
            return False
        headers = self._stream.cut_before_skip(n)  # the tensor's zip headers, still pending
        if headers is None:
            return False
        self._in_window()
        self._store_pieces(headers)  # what the bytes would give too, if the splice is refused below
        if not self.chunks.reuse(extents):
            return False
        self._stream.skip(n)
        if self._hasher is not None:
            self._hasher.update(data)
        for e in extents:
            self._append_extent(e.length, e.chunk)
        self.modified = True
        self._size = max(self._size, offset + n)
        return True

    def _repeats(self, offset: int, data: memoryview) -> bool:
        """Whether ``data`` at ``offset`` only repeats the bytes already there: the kernel writes a
        page back again when its writer appended to it after the first write-back, and that must
        not end the stream (its cuts would then depend on the timing of the write-back)."""
        return assemble(self.spans(offset, len(data)), self.chunks.get) == data

    def _pull(self) -> None:
        """Stream the held bytes that now continue the stream."""
        while (data := self._held.take(self._end())) is not None:
            self._stream_write(data)

    def _stream_write(self, data) -> None:
        if self._stream is None:
            first = self._starts[-1] == 0 and not self._patched
            parser = None if first else FixedParser()
            self._stream = Chunker(self.chunking.chunk_size, self.chunking.min_chunk, parser)
            if not first:
                self._reopen_tail()
        if self._hasher is not None:
            self._hasher.update(data)
        self._store_pieces(self._stream.feed(data))

    def _fill(self, upto: int) -> None:
        """Run the stream up to ``upto``: held bytes as they are, the gaps as zeros — or, for a
        gap over ``HOLE_MIN``, as a hole after which a new stream starts."""
        while (end := self._end()) < upto:
            nxt = self._held.first
            stop = upto if nxt is None else min(nxt, upto)
            if stop - end > HOLE_MIN:
                self._end_stream()
                self._hash_zeros(stop - end)
                self._add_hole(stop - end)
            else:
                for pos in range(end, stop, BLOCK):
                    self._stream_write(_ZEROS if stop - pos >= BLOCK else _ZEROS[: stop - pos])
            self._pull()

    def _reopen_tail(self) -> None:
        """Appending to a file: take a short last chunk back into the new stream.

        Otherwise every open-append-close of a log would leave one tiny chunk
        behind (2,000 appends: 2,000 chunks of ~20 bytes); this way the tail
        keeps growing up to a full chunk.
        """
        i = len(self._extents) - 1
        if i < 0 or self._extents[i].chunk == HOLE or self._extents[i].length >= self.chunking.chunk_size:
            return
        tail = bytes(self._extent_bytes(i))
        self._patched.pop(i, None)
        del self._extents[i]
        del self._starts[-1]
        self._store_pieces(self._stream.feed(tail))

    def _end_stream(self) -> None:
        """Cut the stream's tail into final chunks; later writes start a new stream."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._store_pieces(stream.finish())

    def _hash_zeros(self, n: int) -> None:
        """A hole continues the file: the whole-file hash takes its zeros, up to ``HASH_ZEROS_MAX``."""
        if self._hasher is not None and n <= HASH_ZEROS_MAX:
            for pos in range(0, n, BLOCK):
                self._hasher.update(_ZEROS[: min(BLOCK, n - pos)])
        else:
            self._hasher = None

    def _add_hole(self, length: int) -> None:
        """Append a hole: one extent of any length (merged with a hole before it)."""
        if self._extents and self._extents[-1].chunk == HOLE:
            length += self._extents.pop().length
            self._starts.pop()
        self._append_extent(length, HOLE)

    def _extent_bytes(self, i: int) -> bytes | bytearray:
        patched = self._patched.get(i)
        if patched is not None:
            return patched
        e = self._extents[i]
        return self.chunks.get(e.chunk, e.length)

    def _patch(self, offset: int, data: memoryview) -> None:
        self._hasher = None
        pos = 0
        i = bisect.bisect_right(self._starts, offset) - 1
        while pos < len(data):
            if self._extents[i].chunk == HOLE and self._extents[i].length > self.chunking.chunk_size:
                i = self._split_hole(i, offset + pos)
            buf = self._patched.get(i)
            if buf is None:
                buf = self._patched[i] = bytearray(self._extent_bytes(i))
            lo = offset + pos - self._starts[i]
            n = min(len(data) - pos, len(buf) - lo)
            buf[lo : lo + n] = data[pos : pos + n]
            pos += n
            i += 1
        while len(self._patched) > MAX_PATCHED:
            self._store_patch(next(iter(self._patched)))

    def _split_hole(self, i: int, offset: int) -> int:
        """Cut a chunk-sized piece holding ``offset`` out of the big hole extent ``i`` (a write
        into it patches that piece only); return the piece's index."""
        start, length = self._starts[i], self._extents[i].length
        size = self.chunking.chunk_size
        lo = start + (offset - start) // size * size
        hi = min(lo + size, start + length)
        parts = [(lo - start, HOLE), (hi - lo, HOLE), (start + length - hi, HOLE)]
        new = [Extent(n, c) for n, c in parts if n]
        shift = {k + (len(new) - 1 if k > i else 0): v for k, v in self._patched.items()}
        self._extents[i : i + 1] = new
        self._starts = [0, *accumulate(e.length for e in self._extents)]
        self._patched = shift
        return i + (1 if lo > start else 0)

    def _store_patch(self, i: int) -> None:
        data = bytes(self._patched.pop(i))
        self._extents[i] = Extent(len(data), self._put(data, self.group))

    def truncate(self, size: int) -> None:
        check_size(size)
        if size == self._size:
            return
        self.modified = True
        self._held.discard(size, MAX_FILE_SIZE + 1)
        if size >= self._end():  # the sparse tail grows or shrinks: nothing to cut
            self._size = size
            return
        self._held.clear()
        self._end_stream()
        self._hasher = blake3.blake3() if size == 0 else None
        self._size = size
        i = bisect.bisect_right(self._starts, size) - 1  # the extent that holds byte `size`
        if i < len(self._extents) and size > self._starts[i]:
            keep, chunk = size - self._starts[i], self._extents[i].chunk
            if chunk == HOLE and i not in self._patched:
                self._extents[i] = Extent(keep, HOLE)
            else:  # a written-to hole is patched like data: its bytes are cut with it
                self._patched[i] = bytearray(self._extent_bytes(i))[:keep]
                self._extents[i] = Extent(keep, chunk)
            i += 1
        for j in range(i, len(self._extents)):
            self._patched.pop(j, None)
        del self._extents[i:]
        self._starts = [0, *accumulate(e.length for e in self._extents)]

    # -- reading ------------------------------------------------------------------

    def spans(self, offset: int, size: int) -> list[Span]:
        """What a read of ``[offset, offset + size)`` returns, as of now: stored chunks by id,
        bytes held in memory (patches, the stream's uncut tail, held writes) copied.

        Chunks never change, so the caller may fetch them after releasing the file's lock
        (``assemble``): the read still returns exactly this moment's content. Reading
        disturbs nothing: the stream and the held bytes stay as they are.
        """
        end = min(offset + size, self._size)
        if offset >= end:
            return []
        out = []
        pos = offset
        stored_end = self._starts[-1]
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < min(end, stored_end):
            lo = pos - self._starts[i]
            n = min(end - pos, self._extents[i].length - lo)
            patched = self._patched.get(i)
            if patched is None:
                out.append(Span(lo, n, self._extents[i]))
            else:
                out.append(Span(lo, n, data=bytes(memoryview(patched)[lo : lo + n])))
            pos += n
            i += 1
        stream_end = min(end, self._end())
        if pos < stream_end:  # the stream's uncut tail: it starts where the stored extents end
            out.append(Span(0, stream_end - pos, data=self._stream.pending_slice(pos - stored_end, stream_end - stored_end)))
            pos = stream_end
        for at, data in self._held.read(pos, end):  # held writes; zeros around them
            if at > pos:
                out.append(Span(0, at - pos, Extent(at - pos, HOLE)))
            out.append(Span(0, len(data), data=data))
            pos = at + len(data)
        if pos < end:
            out.append(Span(0, end - pos, Extent(end - pos, HOLE)))
        return out

    def read(self, offset: int, size: int) -> bytes:
        data = assemble(self.spans(offset, size), self.chunks.get)
        self.chunks.note_read(len(data))
        return data

    def following(self, offset: int, count: int) -> list[tuple[int, ChunkId, int]]:
        """The ``count`` stored chunks after the extent that holds byte ``offset``, as
        (file offset, chunk, length): what a sequential reader at ``offset`` reads next."""
        i = bisect.bisect_right(self._starts, offset) - 1
        return [
            (self._starts[j], self._extents[j].chunk, self._extents[j].length)
            for j in range(i + 1, min(i + 1 + count, len(self._extents)))
            if j not in self._patched
        ]

    # -- committing ---------------------------------------------------------------

    def commit(self) -> list[Extent]:
        """Store everything written so far durably; return the file's extents. The stream and the
        held bytes carry on untouched: what is not cut yet is stored as provisional chunks."""
        for i in list(self._patched):
            self._store_patch(i)
        extents = list(self._extents)
        pos = self._starts[-1]
        if self._stream is not None:
            _, tail = self._stream.pending()
            if tail:
                extents.append(Extent(len(tail), self._put(tail, self.group)))
                pos += len(tail)
        step = self.chunking.chunk_size
        for at, data in self._held.read(pos, self._size):
            if at > pos:
                extents.append(Extent(at - pos, HOLE))
            for k in range(0, len(data), step):
                piece = data[k : k + step]
                extents.append(Extent(len(piece), self._put(piece, self.group)))
            pos = at + len(data)
        if self._size > pos:
            extents.append(Extent(self._size - pos, HOLE))
        self.chunks.flush()
        self.modified = False
        return extents

    def finish(self) -> list[Extent]:
        """Commit after the writer is done: the stream runs to the end of the file (held bytes,
        the gaps, the sparse tail) and its tail becomes final chunks."""
        self._fill(self._size)
        self._end_stream()
        self._held.close()
        return self.commit()

    def end_window(self) -> None:
        """The committed content is referenced by a version now: end its gc write window."""
        self.chunks.end_window(self)

    def close(self) -> None:
        """Nothing more will be written: give back the spool file of held bytes, if any."""
        self._held.close()

    def digest(self) -> bytes | None:
        """BLAKE3-256 of the whole current content: from the stream's hasher when every byte went
        through it in order, else read back; None for a file with more than ``HASH_ZEROS_MAX``
        bytes of holes (not worth reading back)."""
        tail = self._size - self._end()
        if self._hasher is not None and not self._held and tail <= HASH_ZEROS_MAX:
            hasher = self._hasher.copy()
            for pos in range(0, tail, BLOCK):
                hasher.update(_ZEROS[: min(BLOCK, tail - pos)])
            return hasher.digest()
        holes = tail + sum(e.length for e in self._extents if e.chunk == HOLE)
        if holes > HASH_ZEROS_MAX:
            return None
        hasher = blake3.blake3()
        for offset in range(0, self._size, BLOCK):
            hasher.update(assemble(self.spans(offset, BLOCK), self.chunks.get))  # not a user's read
        if tail == 0 and not self._held:
            self._hasher = hasher.copy()  # the stream (if any) continues from here
        return hasher.digest()
