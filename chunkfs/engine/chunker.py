"""Streaming, tensor-aligned chunking.

Bytes arrive in order (``feed``), exactly as a writer writes a file; complete
chunks come out as soon as their end is decided. A format parser (picked by
``formats.detect`` from the first bytes) reports *boundaries* — offsets where a
tensor, header or archive entry starts — and the cut rule is:

* every boundary starts a new chunk, so an unchanged tensor produces the same
  chunks whatever changed around it;
* a region longer than ``chunk_size`` is cut into ``chunk_size`` pieces counted
  from the boundary that opened it (fixed-size from the tensor's start);
* a piece shorter than ``min_chunk`` (a bias, a zip header) is merged with the
  following tiny pieces until the run reaches ``min_chunk`` — never over the
  start of a big piece — so thousands of tiny tensors do not become thousands
  of tiny chunks, and no big tensor loses its alignment.

The rule depends only on the boundaries, never on how the writer split its
writes, so the same bytes always give the same chunks. Memory is bounded: the
chunker holds at most one chunk plus what the parser still needs to look at
(itself bounded by ``formats.base.MAX_LOOKAHEAD``).

The received blocks are kept as they came, in a list; a chunk that lies inside one
block is a view into it (no copy: the big tensors of a checkpoint writer), one
that spans blocks is built with one join. Appending them to one growing buffer instead
cost a copy on the way in, a reallocation as it grew and a memmove each time the
cut bytes were dropped from its front (docs/performance.md, "The write path").
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from chunkfs.engine.formats import detect
from chunkfs.engine.formats.base import INFINITE, MAX_LOOKAHEAD, BoundaryParser

DETECT_BYTES = 16
"""How many leading bytes ``detect`` needs to recognise every format we know."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One cut chunk: its offset in the file and its bytes."""

    offset: int
    data: bytes | memoryview


class Chunker:
    """Cut one file's byte stream into chunks. Not thread-safe: one writer at a time."""

    def __init__(self, chunk_size: int, min_chunk: int, parser: BoundaryParser | None = None) -> None:
        """``parser`` skips detection (a stream that does not start at offset 0 of a file)."""
        if not 0 < min_chunk <= chunk_size:
            raise ValueError("need 0 < min_chunk <= chunk_size")
        self.chunk_size = chunk_size
        self.min_chunk = min_chunk
        self._blocks: list[bytes | memoryview] = []  # the bytes from _base on, as received
        self._base = 0  # file offset of the first byte of _blocks
        self._held = 0  # bytes in _blocks
        self._start = 0  # file offset where the next chunk starts
        self._dropped = 0  # blocks let go of so far (a borrowed block's index stays known)
        self._parser = parser
        self._next_bound = 0  # index of the first parser boundary not yet passed
        self._eof = False

    # -- the stream ---------------------------------------------------------

    @property
    def offset(self) -> int:
        """How many bytes have been fed so far (the stream's current end)."""
        return self._base + self._held

    @property
    def format(self) -> str | None:
        """Name of the detected format, once known."""
        return self._parser.name if self._parser else None

    @property
    def parser(self) -> BoundaryParser | None:
        return self._parser

    def feed(self, data: bytes | memoryview) -> list[Piece]:
        """Append ``data`` to the stream; return the chunks it completed.

        Nothing is copied on the way in: ``bytes`` are kept as they are, and the chunks
        cut from anything else (a buffer the caller may reuse: a tensor's memory that
        torch.save hands over) are views into it, **valid only until the caller
        reuses its buffer** — store them before. Only the part of such a buffer that
        the chunker keeps past this call (the uncut tail) is copied.
        """
        if self._eof:
            raise ValueError("feed after finish")
        borrowed = None
        if data:
            block = data if type(data) is bytes else _byte_view(data)
            borrowed = None if type(data) is bytes else self._dropped + len(self._blocks)
            self._blocks.append(block)
            self._held += len(block)
        pieces = self._advance()
        if borrowed is not None and (i := borrowed - self._dropped) >= 0:
            self._blocks[i] = bytes(self._blocks[i])  # what stays past this call is ours
        return pieces

    def finish(self) -> list[Piece]:
        """End of stream: return every remaining chunk."""
        self._eof = True
        return self._advance()

    def can_skip(self, n: int) -> bool:
        """Whether the next ``n`` bytes are exactly the next whole ``chunk_size`` chunks the cut
        rule would make here, so that ``skip`` may pass over them: nothing pending, a parser
        boundary here (a tensor starts), none inside, and the parser neither gave up nor needs
        these bytes (it skips tensor data anyway)."""
        start, parser = self._start, self._parser
        end = start + n
        if (n <= 0 or n % self.chunk_size or self._eof or start != self.offset or parser is None
                or parser.gave_up is not None or parser.needed_from < end or parser.watermark < end):  # fmt: skip
            return False
        i = bisect.bisect_left(parser.boundaries, start)
        if i == len(parser.boundaries) or parser.boundaries[i] != start:
            return False
        return i + 1 == len(parser.boundaries) or parser.boundaries[i + 1] >= end

    def cut_before_skip(self, n: int) -> list[Piece] | None:
        """Cut the pending bytes that end where a tensor of ``n`` bytes starts, so that ``skip``
        may pass over it: the chunks these bytes (a tensor's zip headers, just written) become,
        or None, with nothing changed, where the skip would still not be possible.

        ``feed`` keeps them pending because only the bytes after them say whether the piece
        they end at is big; the caller vouches that ``n`` bytes follow, and the cut rule looks
        at the boundaries and at how far the stream reaches, never at the bytes: so these are
        the chunks feeding the tensor would give."""
        start, next_bound, end_of_stream = self._start, self._next_bound, self.offset
        out = []
        while self._start < end_of_stream:
            end = self._next_end(end_of_stream + n)
            if end is None or end > end_of_stream:
                break
            out.append(Piece(self._start, self._slice(self._start, end)))
            self._start = end
        if not self.can_skip(n):
            self._start, self._next_bound = start, next_bound
            return None
        self._trim()
        return out

    def skip(self, n: int) -> None:
        """Pass over ``n`` bytes whose chunks the caller already has, without seeing them (an
        incremental save splices an unchanged tensor's chunks); only where ``can_skip``."""
        if not self.can_skip(n):
            raise ValueError(f"cannot skip {n} bytes at offset {self._start}")
        self._dropped += len(self._blocks)
        self._blocks = []
        self._base = self._start = self._start + n
        self._held = 0

    @property
    def pending_size(self) -> int:
        """How many fed bytes are not yet cut into a chunk (no copy, unlike ``pending``)."""
        return self.offset - self._start

    def pending(self) -> tuple[int, bytes]:
        """The bytes fed but not yet cut into a chunk, with their file offset.

        Used to store a provisional tail at fsync without disturbing later boundaries.
        """
        return self._start, self._join(self._start, self.offset)

    def pending_slice(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` of the pending ones (0 is the first byte not yet cut): one copy
        of just that range, for a read of a file still being written."""
        return self._join(self._start + lo, self._start + hi)

    # -- cutting ------------------------------------------------------------

    def _advance(self) -> list[Piece]:
        if self._parser is None:
            if self._held < DETECT_BYTES and not self._eof:
                return []
            self._parser = detect(self._join(self._base, min(self.offset, self._base + DETECT_BYTES)))
        self._feed_parser()
        out = []
        while (end := self._next_end()) is not None:
            out.append(Piece(self._start, self._slice(self._start, end)))
            self._start = end
        self._trim()
        return out

    def _join(self, lo: int, hi: int) -> bytes:
        """The held bytes of file offsets ``[lo, hi)`` as one ``bytes``: one copy (none for a
        range that is exactly one received block)."""
        parts = []
        pos = self._base
        for block in self._blocks:
            end = pos + len(block)
            if end > lo:
                a, b = max(lo, pos) - pos, min(hi, end) - pos
                parts.append(block if a == 0 and b == len(block) else memoryview(block)[a:b])
            if end >= hi:
                break
            pos = end
        return b"".join(parts)

    def _slice(self, lo: int, hi: int) -> bytes | memoryview:
        """``[lo, hi)`` without a copy when one received block holds it (a view into that
        block), else joined (``_join``)."""
        pos = self._base
        for block in self._blocks:
            end = pos + len(block)
            if end > lo:
                if end >= hi:
                    return block if (lo, hi) == (pos, end) else memoryview(block)[lo - pos : hi - pos]
                break
            pos = end
        return self._join(lo, hi)

    def _feed_parser(self) -> None:
        """Show the parser what it has not seen, at most MAX_LOOKAHEAD past its need at a time.

        A single huge write is handed over in windows, so it is parsed exactly
        like the same bytes written in small pieces. The window starts at
        ``needed_from``: a parser looks at nothing before it, and it is usually a
        few bytes behind the end (a header being read), so joining it costs little.
        """
        parser = self._parser
        assert parser is not None
        while parser.needed_from < INFINITE:
            need = parser.needed_from
            lo = min(need, self.offset)
            window_end = min(self.offset, need + MAX_LOOKAHEAD)
            last = window_end == self.offset
            parser.feed(memoryview(self._join(lo, window_end)), lo, self._eof and last)
            if last or parser.needed_from >= INFINITE:
                break
            if parser.needed_from == need:
                parser.give_up("parser needed more than the lookahead limit")

    def _next_end(self, avail: int | None = None) -> int | None:
        """Where the chunk starting at ``_start`` ends, or None if not yet known (``avail``: as if
        the stream reached that far)."""
        parser = self._parser
        assert parser is not None
        start, avail = self._start, self.offset if avail is None else avail
        if start >= avail:
            return None
        limit = start + self.chunk_size
        bounds = parser.boundaries
        i = self._next_bound
        while i < len(bounds) and bounds[i] <= start:
            i += 1
        self._next_bound = i
        hi = bisect.bisect_right(bounds, limit, lo=i)
        candidates = bounds[i:hi]
        beyond_known = hi < len(bounds)  # a reported boundary lies past these
        if self._eof:
            candidates = [b for b in candidates if b < avail]
            if avail <= limit:
                candidates.append(avail)
            beyond_known = True
        elif parser.watermark > limit:
            beyond_known = True
        end = None
        for k, b in enumerate(candidates):
            if b - start >= self.min_chunk:
                end = b
                break
            # [start, b) is a run of tiny pieces: extend it over the next piece
            # only if that one is tiny too, never over the start of a big one.
            if k + 1 < len(candidates):
                if candidates[k + 1] - b >= self.min_chunk:
                    end = b
                    break
            elif beyond_known:
                if not self._eof and avail < min(b + self.min_chunk, limit):
                    return None  # is the piece after b big? the file might end first
                end = b
                break
            else:
                return None  # the next boundary is not known yet
        else:
            if not beyond_known:
                return None
            end = limit
        return end if end <= avail else None

    def _trim(self) -> None:
        """Let go of the received blocks that neither the next chunk nor the parser needs."""
        keep_from = min(self._start, self._parser.needed_from if self._parser else 0)
        blocks = self._blocks
        while blocks and self._base + len(blocks[0]) <= keep_from:
            self._base += len(blocks[0])
            self._held -= len(blocks[0])
            del blocks[0]
            self._dropped += 1
        if blocks and self._base < keep_from:  # a block cut in two: keep its second part, uncopied
            drop = keep_from - self._base
            blocks[0] = memoryview(blocks[0])[drop:]
            self._base, self._held = keep_from, self._held - drop


def _byte_view(data) -> memoryview:
    """``data`` as a flat view of unsigned bytes (copied only if it is not contiguous)."""
    view = memoryview(data)
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B") if view.c_contiguous else memoryview(bytes(view))


def chunk_bytes(data: bytes, chunk_size: int, min_chunk: int) -> list[Piece]:
    """Chunk a complete byte string (tests, imports of small files)."""
    chunker = Chunker(chunk_size, min_chunk)
    return chunker.feed(data) + chunker.finish()
