"""The pack file format, byte by byte (pure: no I/O).

A pack is written front to back and never modified once sealed::

    header   32 bytes   magic "CHUNKFSP" | format u16 | flags u16 | reserved u32 | pack id (16)
    record*             one per chunk, back to back:
             44 bytes   magic "CR" | flags u8 | reserved u8 | raw length u32 | stored length u32 | chunk id (32)
             n bytes    the stored bytes, as the flags say
    footer              only in a sealed pack:
             49 bytes × N   chunk id (32) | offset u64 | stored length u32 | raw length u32 | flags u8
             56 bytes   footer offset u64 | entry count u32 | reserved u32 | BLAKE3 of the entries (32) | magic "CHUNKFSF"

All integers little-endian. ``offset`` in the footer points at a record's stored
bytes. Chunk flags: low nibble the compression (``types.Compression``: 0 raw, 1 one
zstd frame, 2/3 byte planes of 2-/4-byte elements then one zstd frame, written only
by re-encoding repacks (warm, cold); 4-15 unknown, refused by name), high nibble the kind (0 full,
1 delta: the stored bytes begin with the 32-byte id of the base chunk, ``delta_base``); the
encodings themselves are in ``engine/codec.py``.

The footer makes a pack self-describing: the chunk index can be rebuilt
from the packs alone. A pack whose writer died before sealing has no footer; its
records can still be recovered by walking the record headers from offset 32
(``iter_records``), stopping at the first torn or invalid one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import blake3

from chunkfs.errors import CorruptData, FormatVersionError
from chunkfs.types import CHUNK_ID_LEN, PACK_ID_LEN, ChunkId, ChunkKind, ChunkLocation, PackId

PACK_FORMAT = 1
MAGIC = b"CHUNKFSP"
FOOTER_MAGIC = b"CHUNKFSF"
RECORD_MAGIC = b"CR"

HEADER = struct.Struct(f"<8sHHI{PACK_ID_LEN}s")
RECORD = struct.Struct(f"<2sBBII{CHUNK_ID_LEN}s")
ENTRY = struct.Struct(f"<{CHUNK_ID_LEN}sQIIB")
TRAILER = struct.Struct("<QII32s8s")

MAX_RECORD = 1 << 31
"""No chunk is anywhere near 2 GiB; a record header claiming more is torn or corrupt."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One chunk in a pack, as the footer lists it."""

    chunk: ChunkId
    offset: int
    stored_len: int
    raw_len: int
    flags: int

    def location(self, pack: PackId) -> ChunkLocation:
        """Where this record is, as the chunk index says it (``chunks``)."""
        return ChunkLocation(pack, self.offset, self.stored_len, self.raw_len, self.flags)


def delta_base(stored: bytes | memoryview, flags: int) -> ChunkId | None:
    """The base chunk a delta record needs (its stored bytes' first 32), None for a full chunk."""
    if flags >> 4 != ChunkKind.DELTA:
        return None
    return bytes(stored[:CHUNK_ID_LEN])


def encode_header(pack_id: bytes) -> bytes:
    return HEADER.pack(MAGIC, PACK_FORMAT, 0, 0, pack_id)


def decode_header(data: bytes, name: str) -> bytes:
    """Check a pack header; return its pack id."""
    if len(data) < HEADER.size:
        raise CorruptData(f"pack {name}: truncated header ({len(data)} bytes)")
    magic, version, _flags, _, pack_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptData(f"pack {name}: not a chunkfs pack (bad magic)")
    if version != PACK_FORMAT:
        raise FormatVersionError(
            f"pack {name}: format {version}, this chunkfs reads {PACK_FORMAT}; upgrade chunkfs"
        )
    return pack_id


def encode_record(chunk: ChunkId, flags: int, raw_len: int, stored_len: int) -> bytes:
    return RECORD.pack(RECORD_MAGIC, flags, 0, raw_len, stored_len, chunk)


def encode_footer(entries: list[Entry], footer_offset: int) -> bytes:
    body = b"".join(ENTRY.pack(e.chunk, e.offset, e.stored_len, e.raw_len, e.flags) for e in entries)
    digest = blake3.blake3(body).digest()
    return body + TRAILER.pack(footer_offset, len(entries), 0, digest, FOOTER_MAGIC)


def decode_trailer(tail: bytes, pack_size: int, name: str) -> tuple[int, int] | None:
    """From the last ``TRAILER.size`` bytes: (footer offset, entry count), or None if unsealed."""
    if len(tail) < TRAILER.size:
        return None
    offset, count, _, _digest, magic = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)
    if magic != FOOTER_MAGIC:
        return None
    if offset + count * ENTRY.size + TRAILER.size != pack_size:
        raise CorruptData(f"pack {name}: footer size does not match the file size")
    return offset, count


def decode_footer(footer: bytes, name: str) -> list[Entry]:
    """Parse the footer (entries + trailer), verifying its BLAKE3."""
    body, trailer = footer[: -TRAILER.size], footer[-TRAILER.size :]
    _, count, _, digest, magic = TRAILER.unpack(trailer)
    if magic != FOOTER_MAGIC or len(body) != count * ENTRY.size:
        raise CorruptData(f"pack {name}: malformed footer")
    if blake3.blake3(body).digest() != digest:
        raise CorruptData(f"pack {name}: footer checksum mismatch")
    return [Entry(*fields) for fields in ENTRY.iter_unpack(body)]


def iter_records(data: memoryview, start: int, end: int) -> Iterator[Entry]:
    """Walk record headers in ``data[start:end]`` (a pack without a usable footer).

    Stops silently at the first header that is torn or not a record: that is
    where a crashed writer stopped. Stored bytes are not verified here.
    """
    pos = start
    while pos + RECORD.size <= end:
        magic, flags, _, raw_len, stored_len, chunk = RECORD.unpack_from(data, pos)
        body = pos + RECORD.size
        if magic != RECORD_MAGIC or stored_len > MAX_RECORD or body + stored_len > end:
            return
        yield Entry(chunk, body, stored_len, raw_len, flags)
        pos = body + stored_len
