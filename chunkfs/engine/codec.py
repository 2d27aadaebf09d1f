"""Chunk identity and encoding: BLAKE3 ids, per-chunk zstd, verification.

The ingest rule (measured in docs/performance.md): zstd costs ~3 ms per MiB of
float data that shrinks by only ~8%, which would halve ingest throughput. So a
chunk is compressed on ingest only when a test-compression of its first
``sample`` bytes shows it is clearly worth it (``max_ratio``): zero-heavy
optimizer state, masks, padding, text. Everything else is stored raw; harder
compression happens later, off the write path (when packs are tiered).
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from chunkfs.config import CompressionSettings
from chunkfs.errors import CorruptData
from chunkfs.types import ChunkId, ChunkKind, Compression, chunk_flags, flags_compression, flags_kind

_local = threading.local()


def chunk_id(data: bytes | memoryview) -> ChunkId:
    """BLAKE3-256 of the uncompressed bytes."""
    return blake3.blake3(data).digest()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes, settings: CompressionSettings) -> tuple[bytes, int]:
    """(stored bytes, flags) for a chunk on the ingest path."""
    if len(data) >= 512:
        sample = data[: settings.sample]
        compressor = _compressor(settings.level)
        if len(compressor.compress(sample)) <= len(sample) * settings.max_ratio:
            packed = compressor.compress(data)
            if len(packed) <= len(data) * settings.max_ratio:
                return packed, chunk_flags(Compression.ZSTD)
    return data, chunk_flags(Compression.NONE)


def decode(chunk: ChunkId, stored: bytes, raw_len: int, flags: int, where: str) -> bytes:
    """The verified raw bytes of a chunk; ``CorruptData`` (naming ``where``) if they are wrong."""
    try:
        if flags_kind(flags) != ChunkKind.FULL:
            raise CorruptData(f"chunk {chunk.hex()} in {where}: delta chunks need a newer chunkfs")
        if flags_compression(flags) == Compression.ZSTD:
            raw = _decompressor().decompress(stored, max_output_size=raw_len)
        else:
            raw = stored
    except (zstandard.ZstdError, ValueError) as e:
        raise CorruptData(f"chunk {chunk.hex()} in {where}: cannot decode ({e}); run `chunkfs fsck`") from None
    if len(raw) != raw_len or chunk_id(raw) != chunk:
        raise CorruptData(f"chunk {chunk.hex()} in {where}: content does not match its hash; run `chunkfs fsck`")
    return raw
