"""The pack byte layout (store/pack/format.py): header, records, footer and its checksum, and the
record walk that recovers a pack whose writer died (it must stop at a torn record)."""

from __future__ import annotations

import os
import struct

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.errors import CorruptData, FormatVersionError
from chunkfs.store.pack import format as packfmt
from chunkfs.types import Compression, chunk_flags

PACK_ID = bytes(range(16))


def build_pack(chunks: list[bytes], *, sealed: bool) -> tuple[bytes, list[packfmt.Entry]]:
    """A pack as PackWriter lays it out: header, records, and the footer if sealed."""
    out = bytearray(packfmt.encode_header(PACK_ID))
    entries = []
    for i, data in enumerate(chunks):
        cid = blake3.blake3(data).digest()
        flags = chunk_flags(Compression.NONE if i % 2 == 0 else Compression.ZSTD)
        out += packfmt.encode_record(cid, flags, len(data) + i, len(data))
        entries.append(packfmt.Entry(cid, len(out), len(data), len(data) + i, flags))
        out += data
    if sealed:
        out += packfmt.encode_footer(entries, len(out))
    return bytes(out), entries


def test_layout_sizes_match_the_documentation():
    sizes = (packfmt.HEADER.size, packfmt.RECORD.size, packfmt.ENTRY.size, packfmt.TRAILER.size)
    assert sizes == (32, 44, 49, 56)


def test_header_round_trip_and_checks():
    header = packfmt.encode_header(PACK_ID)
    assert header[:8] == b"CHUNKFSP" and struct.unpack_from("<H", header, 8)[0] == packfmt.PACK_FORMAT
    assert packfmt.decode_header(header, "p") == PACK_ID
    with pytest.raises(CorruptData, match="truncated header"):
        packfmt.decode_header(header[:31], "p")
    with pytest.raises(CorruptData, match="bad magic"):
        packfmt.decode_header(b"X" + header[1:], "p")
    newer = header[:8] + struct.pack("<H", packfmt.PACK_FORMAT + 1) + header[10:]
    with pytest.raises(FormatVersionError, match="format 2"):
        packfmt.decode_header(newer, "p")


def test_record_header_layout():
    cid = os.urandom(32)
    rec = packfmt.encode_record(cid, 0x01, 1000, 700)
    assert rec[:2] == b"CR" and rec[2] == 0x01 and rec[3] == 0
    assert struct.unpack_from("<II", rec, 4) == (1000, 700) and rec[12:] == cid


def test_sealed_pack_footer_round_trip():
    pack, entries = build_pack([os.urandom(n) for n in (10, 0, 5000, 1)], sealed=True)
    located = packfmt.decode_trailer(pack[-packfmt.TRAILER.size :], len(pack), "p")
    assert located is not None
    offset, count = located
    assert count == 4 and offset == entries[-1].offset + entries[-1].stored_len
    assert packfmt.decode_footer(pack[offset:], "p") == entries
    assert pack.endswith(b"CHUNKFSF")


def test_empty_sealed_pack():
    pack, _ = build_pack([], sealed=True)
    offset, count = packfmt.decode_trailer(pack[-packfmt.TRAILER.size :], len(pack), "p")
    assert (offset, count) == (32, 0) and packfmt.decode_footer(pack[offset:], "p") == []


def test_unsealed_pack_has_no_trailer():
    pack, _ = build_pack([os.urandom(100)], sealed=False)
    assert packfmt.decode_trailer(pack[-packfmt.TRAILER.size :], len(pack), "p") is None
    assert packfmt.decode_trailer(b"short", 5, "p") is None


def test_trailer_that_disagrees_with_the_file_size():
    pack, _ = build_pack([os.urandom(100)], sealed=True)
    with pytest.raises(CorruptData, match="footer size"):
        packfmt.decode_trailer(pack[-packfmt.TRAILER.size :], len(pack) + 1, "p")


@settings(deadline=None)
@given(st.data())
def test_any_flipped_bit_in_the_footer_entries_fails_the_checksum(data):
    pack, entries = build_pack([b"a" * 10, b"b" * 20, b"c" * 30], sealed=True)
    offset = entries[-1].offset + entries[-1].stored_len
    body_len = len(entries) * packfmt.ENTRY.size
    i = data.draw(st.integers(offset, offset + body_len - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(pack)
    bad[i] ^= 1 << bit
    with pytest.raises(CorruptData, match="footer checksum mismatch"):
        packfmt.decode_footer(bytes(bad[offset:]), "p")


def test_footer_with_a_wrong_count_is_malformed():
    pack, entries = build_pack([b"a" * 10, b"b" * 20], sealed=True)
    offset = entries[-1].offset + entries[-1].stored_len
    footer = bytearray(pack[offset:])
    struct.pack_into("<I", footer, len(footer) - packfmt.TRAILER.size + 8, 3)
    with pytest.raises(CorruptData, match="malformed footer"):
        packfmt.decode_footer(bytes(footer), "p")


def test_iter_records_walks_an_unsealed_pack():
    pack, entries = build_pack([os.urandom(n) for n in (1, 300, 0, 77)], sealed=False)
    assert list(packfmt.iter_records(memoryview(pack), 32, len(pack))) == entries


def test_iter_records_stops_at_the_footer_of_a_sealed_pack():
    pack, entries = build_pack([b"x" * 100, b"y" * 200], sealed=True)
    assert entries[0].chunk[:2] != packfmt.RECORD_MAGIC  # a footer entry is never a record
    assert list(packfmt.iter_records(memoryview(pack), 32, len(pack))) == entries


def test_iter_records_rejects_an_absurd_length():
    pack, entries = build_pack([os.urandom(10)], sealed=False)
    bogus = packfmt.encode_record(os.urandom(32), 0, 10, packfmt.MAX_RECORD + 1)
    data = pack + bogus + bytes(100)
    assert list(packfmt.iter_records(memoryview(data), 32, len(data))) == entries


chunk_lists = st.lists(st.binary(min_size=0, max_size=200), min_size=0, max_size=8)


@settings(deadline=None)
@given(chunk_lists, st.data())
def test_iter_records_stops_at_a_torn_record_wherever_the_pack_is_cut(chunks, data):
    """A writer killed after any byte: the walk yields exactly the records that are complete."""
    pack, entries = build_pack(chunks, sealed=False)
    cut = data.draw(st.integers(32, len(pack)))
    walked = list(packfmt.iter_records(memoryview(pack), 32, cut))
    assert walked == [e for e in entries if e.offset + e.stored_len <= cut]


def test_iter_records_at_every_cut_of_one_pack():
    pack, entries = build_pack([os.urandom(n) for n in (0, 1, 45, 3)], sealed=False)
    for cut in range(32, len(pack) + 1):
        walked = list(packfmt.iter_records(memoryview(pack), 32, cut))
        assert walked == [e for e in entries if e.offset + e.stored_len <= cut], cut


@settings(deadline=None)
@given(chunk_lists, st.binary(min_size=1, max_size=60))
def test_iter_records_stops_at_garbage_after_the_last_record(chunks, garbage):
    pack, entries = build_pack(chunks, sealed=False)
    if garbage[:2] == b"CR":
        garbage = b"XX" + garbage[2:]
    data = pack + garbage
    assert list(packfmt.iter_records(memoryview(data), 32, len(data))) == entries
