"""The chunker keeps received blocks as they came: what that must and must not change.

It holds on to the caller's ``bytes`` without copying them, so it must copy a
buffer the caller may reuse; it hands a parser the file's bytes pieced together
from several blocks, so those must be the right bytes at the right offsets; and a
chunk that is exactly one received block is that block, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.engine.chunker import Chunker, Piece
from chunkfs.engine.formats.base import INFINITE, BoundaryParser


class Checking(BoundaryParser):
    """Asks for the bytes from a few before the end on, like a parser scanning for a signature,
    and checks that every view it is shown is the file's bytes at the offset it is told."""

    def __init__(self, data: bytes, lag: int) -> None:
        super().__init__()
        self.data, self.lag = data, lag
        self.watermark = self.needed_from = 0
        self.seen = 0

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        assert start <= self.needed_from or len(view) == 0
        assert bytes(view) == self.data[start : start + len(view)]
        end = start + len(view)
        self.seen = max(self.seen, end)
        self.watermark = self.needed_from = max(self.needed_from, end - self.lag)


def feed_all(chunker: Chunker, blocks: Sequence[bytes | bytearray | memoryview]) -> list[Piece]:
    out = []
    for block in blocks:
        out += chunker.feed(block)
    return out + chunker.finish()


@given(
    size=st.integers(0, 6000),
    splits=st.lists(st.integers(1, 1500), max_size=30),
    lag=st.integers(0, 700),
)
@settings(max_examples=200, deadline=None)
def test_a_parser_sees_the_files_bytes_across_blocks(size: int, splits: list[int], lag: int) -> None:
    data = bytes(i % 251 for i in range(size))
    blocks, pos = [], 0
    for n in splits:
        blocks.append(data[pos : pos + n])
        pos += n
    blocks.append(data[pos:])
    parser = Checking(data, lag)
    pieces = feed_all(Chunker(1000, 100, parser), blocks)
    assert b"".join(p.data for p in pieces) == data
    assert parser.seen == size


def test_a_buffer_the_caller_reuses_is_copied() -> None:
    buf = bytearray(b"a" * 300)
    chunker = Chunker(1000, 100, BoundaryParser())
    chunker.feed(buf)
    buf[:] = b"b" * 300
    chunker.feed(memoryview(buf))
    buf[:] = b"c" * 300
    assert chunker.pending() == (0, b"a" * 300 + b"b" * 300)
    assert chunker.finish() == [Piece(0, b"a" * 300 + b"b" * 300)]


def test_a_chunk_that_is_one_received_block_is_not_copied() -> None:
    blocks = [bytes([i]) * 1000 for i in range(3)]
    pieces = feed_all(Chunker(1000, 100, BoundaryParser()), blocks)
    assert [p.data for p in pieces] == blocks
    assert all(p.data is b for p, b in zip(pieces, blocks))


def test_blocks_are_let_go_once_cut() -> None:
    """Memory stays bounded by one chunk (plus the block it ends in), however long the stream."""
    chunker = Chunker(1000, 100, BoundaryParser())
    for _ in range(100):
        chunker.feed(bytes(300))
        assert chunker.pending_size < 1000
        assert sum(len(b) for b in chunker._blocks) < 1300


def test_chunks_inside_a_borrowed_buffer_are_views_and_only_the_tail_is_copied() -> None:
    """A tensor's memory handed over by torch.save: its whole chunks are not copied (they are
    stored before ``feed`` returns), the uncut tail is — the caller may reuse the buffer."""
    buf = bytearray(b"x" * 2500)
    chunker = Chunker(1000, 100, BoundaryParser())
    pieces = chunker.feed(memoryview(buf))
    assert [len(p.data) for p in pieces] == [1000, 1000]
    assert all(isinstance(p.data, memoryview) and p.data.obj is buf for p in pieces)
    buf[:] = b"y" * 2500  # the writer reuses its buffer
    assert chunker.pending() == (2000, b"x" * 500)
    assert chunker.finish() == [Piece(2000, b"x" * 500)]


def test_a_non_byte_buffer_is_cut_by_its_bytes() -> None:
    words = memoryview(bytearray(range(200)) * 10).cast("I")  # 500 four-byte items
    pieces = feed_all(Chunker(1000, 100, BoundaryParser()), [words])
    assert b"".join(p.data for p in pieces) == bytes(range(200)) * 10


class Tensors(BoundaryParser):
    """Reports a tensor at ``header`` whose 3000 bytes it needs not see, as the torch-zip parser does."""

    def __init__(self, header: int = 100) -> None:
        super().__init__()
        self.end = header + 3000
        self.boundaries = [header, self.end]
        self.watermark = self.needed_from = self.end

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        if start + len(view) > self.end:
            self.watermark = self.needed_from = INFINITE


def test_skip_passes_over_whole_chunks_of_a_tensor_and_nothing_else() -> None:
    """``skip`` is allowed only where the chunks it stands for are the ones feeding the bytes
    would cut: at a tensor's start, with nothing pending, whole chunks, no boundary inside."""
    tensor = bytes(range(256)) * 12
    fed = Chunker(1000, 100, Tensors())
    fed_pieces = fed.feed(b"h" * 100) + fed.feed(tensor[:3000]) + fed.feed(b"t" * 50) + fed.finish()

    chunker = Chunker(1000, 100, Tensors())
    assert not chunker.can_skip(1000), "not at the tensor's start: the header is still to come"
    pieces = chunker.feed(b"h" * 100)
    assert not chunker.can_skip(1500) and not chunker.can_skip(4000), "only whole chunks, only inside the tensor"
    assert chunker.can_skip(2000)
    chunker.skip(2000)
    pieces += [Piece(100, tensor[:1000]), Piece(1100, tensor[1000:2000])]  # what the caller splices
    pieces += chunker.feed(tensor[2000:3000]) + chunker.feed(b"t" * 50) + chunker.finish()
    assert pieces == fed_pieces, "the same cuts as feeding every byte"


def test_a_header_shorter_than_min_chunk_is_cut_before_the_skip_as_the_bytes_would_cut_it() -> None:
    """A tensor's zip headers (tens of bytes) stay pending after ``feed``: only what follows says
    whether the piece they end at is big. ``cut_before_skip`` cuts them as feeding the tensor
    would; where the skip is impossible it changes nothing."""
    tensor = bytes(range(256)) * 12
    fed = Chunker(1000, 100, Tensors(header=40))
    fed_pieces = fed.feed(b"h" * 40) + fed.feed(tensor[:3000]) + fed.feed(b"t" * 50) + fed.finish()

    chunker = Chunker(1000, 100, Tensors(header=40))
    pieces = chunker.feed(b"h" * 40)
    assert pieces == [] and not chunker.can_skip(2000), "the header is pending"
    assert chunker.cut_before_skip(1500) is None and chunker.pending() == (0, b"h" * 40), "not whole chunks"
    pieces += chunker.cut_before_skip(2000)
    assert pieces == [Piece(0, b"h" * 40)]
    chunker.skip(2000)
    pieces += [Piece(40, tensor[:1000]), Piece(1040, tensor[1000:2000])]  # what the caller splices
    pieces += chunker.feed(tensor[2000:3000]) + chunker.feed(b"t" * 50) + chunker.finish()
    assert pieces == fed_pieces, "the same cuts as feeding every byte"


def test_skip_is_refused_with_bytes_pending_or_a_parser_that_gave_up() -> None:
    chunker = Chunker(1000, 100, Tensors())
    chunker.feed(b"h" * 150)  # 50 bytes of the tensor are pending
    assert not chunker.can_skip(1000)
    gave_up = Chunker(1000, 100, Tensors())
    gave_up.feed(b"h" * 100)
    gave_up.parser.give_up("test")
    assert not gave_up.can_skip(1000)
    with pytest.raises(ValueError, match="cannot skip"):
        gave_up.skip(1000)
