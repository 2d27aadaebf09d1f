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
    data: bytes


class Chunker:
    """Cut one file's byte stream into chunks. Not thread-safe: one writer at a time."""

    def __init__(self, chunk_size: int, min_chunk: int, parser: BoundaryParser | None = None) -> None:
        """``parser`` skips detection (a stream that does not start at offset 0 of a file)."""
        if not 0 < min_chunk <= chunk_size:
            raise ValueError("need 0 < min_chunk <= chunk_size")
        self.chunk_size = chunk_size
        self.min_chunk = min_chunk
        self._buf = bytearray()
        self._base = 0  # file offset of _buf[0]
        self._start = 0  # file offset where the next chunk starts
        self._parser = parser
        self._next_bound = 0  # index of the first parser boundary not yet passed
        self._eof = False

    # -- the stream ---------------------------------------------------------

    @property
    def offset(self) -> int:
        """How many bytes have been fed so far (the stream's current end)."""
        return self._base + len(self._buf)

    @property
    def format(self) -> str | None:
        """Name of the detected format, once known."""
        return self._parser.name if self._parser else None

    @property
    def parser(self) -> BoundaryParser | None:
        return self._parser

    def feed(self, data: bytes | memoryview) -> list[Piece]:
        """Append ``data`` to the stream; return the chunks it completed."""
        if self._eof:
            raise ValueError("feed after finish")
        self._buf += data
        return self._advance()

    def finish(self) -> list[Piece]:
        """End of stream: return every remaining chunk."""
        self._eof = True
        return self._advance()

    @property
    def pending_size(self) -> int:
        """How many fed bytes are not yet cut into a chunk (no copy, unlike ``pending``)."""
        return self.offset - self._start

    def pending(self) -> tuple[int, bytes]:
        """The bytes fed but not yet cut into a chunk, with their file offset.

        Used to serve reads of a file that is still being written and to store
        a provisional tail at fsync without disturbing later boundaries.
        """
        lo = self._start - self._base
        return self._start, bytes(self._buf[lo:])

    # -- cutting ------------------------------------------------------------

    def _advance(self) -> list[Piece]:
        if self._parser is None:
            if len(self._buf) < DETECT_BYTES and not self._eof:
                return []
            self._parser = detect(bytes(self._buf[:DETECT_BYTES]))
        self._feed_parser()
        out = []
        with memoryview(self._buf) as view:  # one copy per chunk (a bytearray slice would make two)
            while (end := self._next_end()) is not None:
                lo, hi = self._start - self._base, end - self._base
                out.append(Piece(self._start, bytes(view[lo:hi])))
                self._start = end
        self._trim()
        return out

    def _feed_parser(self) -> None:
        """Show the parser what it has not seen, at most MAX_LOOKAHEAD past its need at a time.

        A single huge write is handed over in windows, so it is parsed exactly
        like the same bytes written in small pieces.
        """
        parser = self._parser
        assert parser is not None
        view = memoryview(self._buf)
        while parser.needed_from < INFINITE:
            need = parser.needed_from
            window_end = min(self.offset, need + MAX_LOOKAHEAD)
            last = window_end == self.offset
            parser.feed(view[: window_end - self._base], self._base, self._eof and last)
            if last or parser.needed_from >= INFINITE:
                break
            if parser.needed_from == need:
                parser.give_up("parser needed more than the lookahead limit")

    def _next_end(self) -> int | None:
        """Where the chunk starting at ``_start`` ends, or None if not yet known."""
        parser = self._parser
        assert parser is not None
        start, avail = self._start, self.offset
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
        keep_from = min(self._start, self._parser.needed_from if self._parser else 0)
        drop = keep_from - self._base
        if drop > 0:
            del self._buf[:drop]
            self._base = keep_from


def chunk_bytes(data: bytes, chunk_size: int, min_chunk: int) -> list[Piece]:
    """Chunk a complete byte string (tests, imports of small files)."""
    chunker = Chunker(chunk_size, min_chunk)
    return chunker.feed(data) + chunker.finish()
