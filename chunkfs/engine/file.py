"""One file's content while it is open: streaming writes, random writes, reads, commits.

A file's content is a list of extents (``types.Extent``: length + chunk id),
contiguous from offset 0. ``FileContent`` keeps that list plus two kinds of
not-yet-stored bytes:

* the **stream**: bytes written at the end of the file go through a
  ``Chunker``; each chunk it cuts is stored at once and appended as an extent,
  and only the uncut tail stays in memory (at most one chunk). This is the
  path of every checkpoint writer (torch.save, safetensors, cp).
* **patches**: a write inside existing content (numpy memmap, a zip writer
  going back to fix a header) copies only the extents it touches into memory,
  patches them, and stores them again with the same boundaries when the file is
  committed — the rest of the file is not rewritten. At most ``MAX_PATCHED``
  extents are held; beyond that the oldest are stored early.

``commit`` makes the current content durable and returns its extents, without
disturbing the stream: the uncut tail is stored as a provisional last chunk and
the chunker keeps going, so an fsync in the middle of a write does not shift
later chunk boundaries.

Not thread-safe: the caller serialises calls for one file (the FUSE layer holds
a lock per open inode). A read needs that lock only to be planned (``spans``);
the chunks it names are fetched after (``assemble``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from itertools import accumulate
from typing import NamedTuple

import blake3

from chunkfs.config import ChunkingSettings
from chunkfs.engine.chunker import Chunker, Piece
from chunkfs.engine.chunks import ChunkIO
from chunkfs.engine.formats.base import FixedParser
from chunkfs.types import HOLE, ChunkId, Extent

MAX_PATCHED = 32
"""Extents held in memory for random writes before the oldest are stored."""

REORDER_BYTES = 64 << 20
"""Writes arriving ahead of the file's end are held back up to this many bytes.

The kernel's writeback cache sends a sequential writer's pages as several
concurrent requests, and they reach us in any order. Applied as they come, a
request beyond the end would leave a hole that the next one patches: the
stream — and with it tensor-aligned chunking and dedup — would break. Held
back until the gap before them is filled, they stream in order."""


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
        else:
            out.append(bytes(memoryview(get(s.extent.chunk, s.extent.length))[s.lo : s.lo + s.n]))
    return b"".join(out)


class FileContent:
    """The mutable content of one file, backed by the chunk store."""

    def __init__(self, chunks: ChunkIO, extents: list[Extent], group: str, chunking: ChunkingSettings):
        self.chunks = chunks
        self.group = group
        self.chunking = chunking
        self._extents = list(extents)
        self._starts = [0, *accumulate(e.length for e in self._extents)]
        self._stream: Chunker | None = None
        self._patched: dict[int, bytearray] = {}  # extent index → its bytes, patched
        self._ahead: dict[int, bytes] = {}  # offset → a write beyond the end, held back
        self._ahead_bytes = 0
        # BLAKE3 of the whole file, kept up to date while every byte so far was
        # written in order from offset 0 (the usual case); None otherwise.
        self._hasher: blake3.blake3 | None = None if self._extents else blake3.blake3()
        self.modified = False
        # from its first stored chunk until ``Repository.commit_file(final=True)`` (or until it
        # goes away) the content holds a gc write window (docs/gc.md, "The protocol")
        self.gc_window: int | None = None

    # -- shape ------------------------------------------------------------------

    def _end(self) -> int:
        """Where the stored extents and the stream end (writes held back not counted)."""
        return self._starts[-1] + (self._stream.pending_size if self._stream is not None else 0)

    @property
    def size(self) -> int:
        return max([self._end()] + [o + len(d) for o, d in self._ahead.items()])

    @property
    def format(self) -> str | None:
        return self._stream.format if self._stream else None

    def _put(self, data, group: str) -> bytes:
        """Store a chunk (or find it by dedup) inside this content's gc write window."""
        if self.gc_window is None:
            self.gc_window = self.chunks.open_window(self)
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
        self.modified = True
        overlaps = any(o < offset + len(data) and offset < o + len(d) for o, d in self._ahead.items())
        if offset > self._end() and not overlaps and self._ahead_bytes + len(data) <= REORDER_BYTES:
            self._ahead[offset] = bytes(data)
            self._ahead_bytes += len(data)
            return
        if overlaps or offset > self._end():
            self._drain()
        self._apply(offset, data)
        while self._ahead and (held := self._ahead.pop(self._end(), None)) is not None:
            self._ahead_bytes -= len(held)
            self._apply(self._end(), held)

    def _drain(self) -> None:
        """Apply every held-back write, in offset order (gaps become holes)."""
        ahead, self._ahead, self._ahead_bytes = self._ahead, {}, 0
        for offset in sorted(ahead):
            self._apply(offset, ahead[offset])

    def _apply(self, offset: int, data: bytes) -> None:
        end = self._end()
        if offset > end:
            self._end_stream()
            self._add_hole(offset - end)
            end = offset
        if offset == end:
            self._stream_write(data)
            return
        self._end_stream()
        inside = min(len(data), end - offset)
        self._patch(offset, memoryview(data)[:inside])
        if inside < len(data):
            self._stream_write(data[inside:])

    def _stream_write(self, data: bytes) -> None:
        if self._stream is None:
            first = self._starts[-1] == 0 and not self._patched
            parser = None if first else FixedParser()
            self._stream = Chunker(self.chunking.chunk_size, self.chunking.min_chunk, parser)
            if not first:
                self._reopen_tail()
        if self._hasher is not None:
            self._hasher.update(data)
        self._store_pieces(self._stream.feed(data))

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

    def _add_hole(self, length: int) -> None:
        self._hasher = None
        step = self.chunking.chunk_size
        for _ in range(length // step):
            self._append_extent(step, HOLE)
        if length % step:
            self._append_extent(length % step, HOLE)

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

    def _store_patch(self, i: int) -> None:
        data = bytes(self._patched.pop(i))
        self._extents[i] = Extent(len(data), self._put(data, self.group))

    def truncate(self, size: int) -> None:
        self._drain()
        if size == self.size:
            return
        self.modified = True
        self._end_stream()
        self._hasher = blake3.blake3() if size == 0 else None
        if size > self._starts[-1]:
            self._add_hole(size - self._starts[-1])
            return
        i = bisect.bisect_right(self._starts, size) - 1  # the extent that holds byte `size`
        if i < len(self._extents) and size > self._starts[i]:
            buf = bytearray(self._extent_bytes(i))[: size - self._starts[i]]
            self._patched[i] = buf
            self._extents[i] = Extent(len(buf), self._extents[i].chunk)
            i += 1
        for j in range(i, len(self._extents)):
            self._patched.pop(j, None)
        del self._extents[i:]
        self._starts = [0, *accumulate(e.length for e in self._extents)]

    # -- reading ------------------------------------------------------------------

    def spans(self, offset: int, size: int) -> list[Span]:
        """What a read of ``[offset, offset + size)`` returns, as of now: stored chunks by id,
        bytes held in memory (patches, the stream's uncut tail) copied.

        Chunks never change, so the caller may fetch them after releasing the file's lock
        (``assemble``): the read still returns exactly this moment's content.
        """
        self._drain()
        end = min(offset + size, self.size)
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
        if pos < end:  # the stream's uncut tail: it starts where the stored extents end
            # (pending()'s offset counts from the stream's start, not the file's)
            _, tail = self._stream.pending()
            out.append(Span(0, end - pos, data=bytes(tail[pos - stored_end : end - stored_end])))
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
        """Store everything written so far durably; return the file's extents."""
        self._drain()
        for i in list(self._patched):
            self._store_patch(i)
        extents = list(self._extents)
        if self._stream is not None:
            _, tail = self._stream.pending()
            if tail:
                extents.append(Extent(len(tail), self._put(tail, self.group)))
        self.chunks.flush()
        self.modified = False
        return extents

    def digest(self) -> bytes:
        """BLAKE3-256 of the whole current content (read back only if it was not written in order)."""
        if self._hasher is None:
            hasher = blake3.blake3()
            for offset in range(0, self.size, 8 << 20):
                hasher.update(assemble(self.spans(offset, 8 << 20), self.chunks.get))  # not a user's read
            self._hasher = hasher
        return self._hasher.copy().digest()

    def finish(self) -> list[Extent]:
        """Commit after the writer is done: the stream's tail becomes final chunks."""
        self._end_stream()
        return self.commit()
