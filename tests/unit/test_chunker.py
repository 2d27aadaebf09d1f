"""The chunker's cut rule, with stand-in parsers whose boundaries the test chooses.

Real formats are covered in test_formats.py; here the boundaries are arbitrary,
so the rule itself is exercised: every chunk at most ``chunk_size``, a chunk
starts at a boundary or ``chunk_size`` after the previous start, a chunk shorter
than ``min_chunk`` ends at a boundary or at the end of the file, no boundary is
crossed unless the piece before it was small, a piece of at least ``min_chunk``
always starts a chunk (small pieces never glue themselves to a tensor) — and
none of it depends on how the bytes were split into writes, for a parser that
knows every boundary up front as for one that reports each as late as it may.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.engine.chunker import Chunker, Piece, chunk_bytes
from chunkfs.engine.formats.base import INFINITE, MAX_LOOKAHEAD, BoundaryParser


class Static(BoundaryParser):
    """Knows every boundary before the first byte."""

    def __init__(self, bounds: Sequence[int]) -> None:
        super().__init__()
        self.boundaries = sorted({b for b in bounds if b > 0})


class Revealing(BoundaryParser):
    """Reports a boundary only once the stream has passed it: the latest a parser may."""

    def __init__(self, bounds: Sequence[int]) -> None:
        super().__init__()
        self._all = sorted({b for b in bounds if b > 0})
        self.watermark = self.needed_from = 0

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        end = INFINITE if eof else start + len(view)
        known = bisect.bisect_left(self._all, end)
        self.boundaries.extend(self._all[len(self.boundaries) : known])
        self.watermark = self.needed_from = end


def run(
    data: bytes, parser: BoundaryParser, splits: Sequence[int] = (), cs: int = 1000, mn: int = 100
) -> list[Piece]:
    chunker = Chunker(cs, mn, parser)
    out, pos = [], 0
    for size in splits:
        out += chunker.feed(data[pos : pos + size])
        pos += size
        assert len(chunker.pending()[1]) <= cs, "holds at most one chunk, not the file"
    out += chunker.feed(data[pos:]) + chunker.finish()
    assert b"".join(p.data for p in out) == data
    return out


def assert_rule(pieces: list[Piece], bounds: Sequence[int], size: int, cs: int = 1000, mn: int = 100) -> None:
    bounds = sorted({b for b in bounds if 0 < b < size})
    starts = [p.offset for p in pieces]
    for prev, piece in zip([None, *pieces], pieces):
        assert 0 < len(piece.data) <= cs
        end = piece.offset + len(piece.data)
        if prev is not None:
            assert piece.offset in bounds or piece.offset == prev.offset + cs
        if len(piece.data) < mn:
            assert end in bounds or end == size
        crossed = bounds[bisect.bisect_right(bounds, piece.offset) : bisect.bisect_left(bounds, end)]
        assert all(b - piece.offset < mn for b in crossed), "only small pieces are merged forward"
    for b, following in zip(bounds, [*bounds[1:], size]):
        assert b in starts or (following - b < mn and any(0 < b - s < mn for s in starts))


def test_sizes_are_checked() -> None:
    for cs, mn in [(100, 0), (100, 101), (0, 0)]:
        with pytest.raises(ValueError):
            Chunker(cs, mn)


def test_no_feed_after_finish() -> None:
    chunker = Chunker(100, 10)
    chunker.finish()
    with pytest.raises(ValueError):
        chunker.feed(b"x")


def test_unknown_format_is_cut_at_fixed_sizes() -> None:
    data = bytes(range(256)) * 10
    pieces = chunk_bytes(data, 1000, 100)
    assert [(p.offset, len(p.data)) for p in pieces] == [(0, 1000), (1000, 1000), (2000, 560)]
    assert chunk_bytes(b"", 1000, 100) == []
    assert chunk_bytes(b"abc", 1000, 100) == [Piece(0, b"abc")]


def test_pending_holds_what_is_not_cut_yet() -> None:
    chunker = Chunker(1000, 100)
    assert chunker.feed(bytes(1500)) == [Piece(0, bytes(1000))]
    assert chunker.pending() == (1000, bytes(500)) and chunker.offset == 1500
    assert chunker.finish() == [Piece(1000, bytes(500))]


def test_boundaries_start_chunks_and_big_regions_are_cut_from_their_start() -> None:
    bounds = [50, 120, 130, 2600, 2650, 9000]
    pieces = run(bytes(3000), Static(bounds))
    assert [(p.offset, len(p.data)) for p in pieces] == [
        (0, 120),  # 0..50 and 50..120 are small: merged
        (120, 10),  # small, but 130..2600 is not: never merged into
        (130, 1000),  # 130..2600 cut at chunk_size steps from 130
        (1130, 1000),
        (2130, 470),
        (2600, 50),  # small, and 2650..3000 is not
        (2650, 350),  # 9000 lies past the end: dropped
    ]


@given(
    bounds=st.lists(st.integers(0, 6000), max_size=40),
    size=st.integers(0, 5000),
    splits=st.lists(st.integers(1, 1500), max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_rule_holds_and_does_not_depend_on_write_sizes(
    bounds: list[int], size: int, splits: list[int]
) -> None:
    data = bytes(i % 251 for i in range(size))
    for parser in (Static, Revealing):
        expected = run(data, parser(bounds))
        assert_rule(expected, bounds, size)
        assert run(data, parser(bounds), splits) == expected


def test_one_big_write_is_parsed_like_small_ones() -> None:
    header = b'{"a":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (MAX_LOOKAHEAD, MAX_LOOKAHEAD)
    data = struct.pack("<Q", len(header)) + header + bytes(MAX_LOOKAHEAD)
    small = Chunker(1 << 20, 1 << 16)
    for i in range(0, len(data), 1 << 20):
        small.feed(data[i : i + (1 << 20)])
    small.finish()
    assert small.parser is not None and small.parser.gave_up is None
    big = Chunker(1 << 20, 1 << 16)
    big.feed(data)
    big.finish()
    assert big.parser is not None and big.parser.gave_up is None


def test_many_tiny_pieces_merge_up_to_min_chunk() -> None:
    bounds = list(range(10, 5000, 10))
    pieces = run(bytes(5000), Static(bounds), cs=4000, mn=1000)
    assert all(len(p.data) >= 1000 for p in pieces[:-1])
