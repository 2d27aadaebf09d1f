"""Chunk identity and encoding: BLAKE3 ids, per-chunk zstd, verification.

The ingest rule (measured in docs/performance.md): zstd costs ~3 ms per MiB of
float data that shrinks by only ~8%, which would halve ingest throughput. So a
chunk is compressed on ingest only when a test-compression of its first
``sample`` bytes shows it is clearly worth it (``max_ratio``): zero-heavy
optimizer state, masks, padding, text. Everything else is stored raw; harder
compression happens later, off the write path (when packs are tiered).

Packs of complete runs going to warm or cold are re-encoded (``repack_encoding``,
``compress``; maintenance/reencode.py): zstd, and for float tensors byte planes first
(``Compression.ZSTD_PLANES2/4``), which stores bf16 weights in ~10% and fp32 in ~8% fewer
bytes than zstd alone at the same level (docs/tiers.md, "Re-encoding").

There, a chunk can also be stored as a **delta** (``ChunkKind.DELTA``, ``encode_delta``):
its XOR with a *base* chunk of the same length — the same tensor region of the next
checkpoint of the run — in the same encodings. Consecutive checkpoints share the high
bytes of most elements, so the XOR's byte planes are mostly zeros (bf16 weights a few
steps apart: a third of what they take alone). Stored bytes: the base's id (32) then the
zstd frame; the chunk's id stays the BLAKE3 of its raw bytes, so dedup is unchanged, and
decoding one needs its base decoded first (``decode``'s ``base``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import blake3
import numpy as np
import zstandard

from chunkfs.config import CompressionSettings
from chunkfs.errors import CorruptData
from chunkfs.types import (
    CHUNK_ID_LEN,
    ChunkId,
    ChunkKind,
    Compression,
    chunk_flags,
    flags_compression,
    flags_kind,
)

try:
    from chunkfs import _planes  # native/planes.c, built at install when a C compiler is there
except ImportError:
    _planes = None

PLANE_WIDTH = {Compression.ZSTD_PLANES2: 2, Compression.ZSTD_PLANES4: 4}
"""Element width in bytes of each byte-plane encoding (bf16/fp16: 2, fp32: 4)."""

MAX_DELTA_DEPTH = 64
"""A chain of deltas longer than this is damage (a cycle): ``lifecycle.delta_chain`` is far below."""

DELTA_LEVEL = 1
"""zstd level of every delta, whatever the tier's: on the byte planes of an XOR, level 1 stored
smaller than 3 or 9 (bf16: 0.342 of raw against 0.352 and 0.358) and decodes ~30% faster, as
fast as a whole chunk's planes (tools/bench_planes.py; docs/performance.md, "Delta chunks")."""

REPACK_MAX_RATIO = 0.97
"""A chunk is re-encoded only if its sample shrinks by at least 3% (random bytes, already
compressed data: not worth the CPU on every later read)."""

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


def to_planes(data: bytes, width: int) -> bytes:
    """``data`` with each element's byte i moved into plane i; a tail shorter than ``width`` last.

    ``chunkfs._planes`` (native/planes.c) when it was built, else ``numpy_to_planes``."""
    return _planes.to_planes(data, width) if _planes is not None else numpy_to_planes(data, width)


def from_planes(data: bytes, width: int) -> bytes:
    """The inverse of ``to_planes`` (on every read of a cold float chunk)."""
    return _planes.from_planes(data, width) if _planes is not None else numpy_from_planes(data, width)


def numpy_to_planes(data: bytes, width: int) -> bytes:
    """``to_planes`` in NumPy: the reference the native code is tested against, and the fallback.

    One plane at a time (a strided copy each), so that the inverse, on every cold read, runs as
    fast: 3.4 GB/s a core both ways, where the one-liner ``reshape(-1, w).T.tobytes()`` does
    4.0 but its inverse only 0.85 (width 2) to 1.5 GB/s (width 4) (tools/bench_micro.py); the
    native code, 5–10× that (tools/bench_planes.py).
    """
    whole = len(data) // width * width
    elements = np.frombuffer(data, np.uint8, count=whole).reshape(-1, width)
    planes = np.empty((width, len(elements)), np.uint8)
    for i in range(width):
        planes[i] = elements[:, i]
    return planes.tobytes() + data[whole:]


def numpy_from_planes(data: bytes, width: int) -> bytes:
    """``from_planes`` in NumPy."""
    whole = len(data) // width * width
    planes = np.frombuffer(data, np.uint8, count=whole).reshape(width, -1)
    elements = np.empty((planes.shape[1], width), np.uint8)
    for i in range(width):
        elements[:, i] = planes[i]
    return elements.tobytes() + data[whole:]


def compress(data: bytes, how: Compression, level: int) -> bytes:
    """The stored bytes of ``data`` encoded as ``how`` (ZSTD or a byte-plane encoding)."""
    width = PLANE_WIDTH.get(how)
    return _compressor(level).compress(data if width is None else to_planes(data, width))


def repack_encoding(sample: bytes, level: int) -> Compression:
    """The encoding that stores ``sample`` smallest at zstd ``level``: zstd alone or after byte
    planes of width 2 or 4 (the data says which: no dtype is known at this layer), NONE if
    none of them shrinks it to ``REPACK_MAX_RATIO``. A trial on the sample, not the chunk,
    keeps the choice at ~5% of compressing a 4 MiB chunk once."""
    sizes = {how: len(compress(sample, how, level)) for how in (Compression.ZSTD, *PLANE_WIDTH)}
    best = min(sizes, key=sizes.__getitem__)
    return best if sizes[best] <= len(sample) * REPACK_MAX_RATIO else Compression.NONE


def xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    """``a`` XOR ``b`` (equal lengths): NumPy, 7.6 GB/s a core (tools/bench_micro.py), memory speed."""
    n = len(a)
    if n % 8:
        return np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()
    return np.bitwise_xor(np.frombuffer(a, np.uint64), np.frombuffer(b, np.uint64)).tobytes()


def encode_delta(raw: bytes, base: ChunkId, base_raw: bytes, sample: int) -> tuple[bytes, int] | None:
    """(stored bytes, flags) of ``raw`` as a delta against the chunk ``base`` whose bytes are
    ``base_raw`` (same length), in the encoding ``repack_encoding`` picks for the XOR, at
    ``DELTA_LEVEL``; None when the XOR does not compress (nothing in common)."""
    diff = xor(raw, base_raw)
    how = repack_encoding(diff[:sample], DELTA_LEVEL)
    if how == Compression.NONE:
        return None
    return base + compress(diff, how, DELTA_LEVEL), chunk_flags(how, ChunkKind.DELTA)


def decode(
    chunk: ChunkId, stored: bytes, raw_len: int, flags: int, where: str,
    base: Callable[[ChunkId], bytes] | None = None,
) -> bytes:  # fmt: skip
    """The verified raw bytes of a chunk; ``CorruptData`` (naming ``where``) if they are wrong.
    A delta chunk needs ``base``: the verified raw bytes of a chunk by id (its errors pass through,
    prefixed with the delta that needed it)."""
    try:
        kind, how = flags_kind(flags), flags_compression(flags)
    except ValueError:
        raise CorruptData(
            f"chunk {chunk.hex()} in {where}: flags {flags:#04x} name an encoding this chunkfs does not "
            "know; read it with a newer chunkfs (docs/format.md)"
        ) from None
    base_raw = None
    if kind == ChunkKind.DELTA:
        if base is None or len(stored) < CHUNK_ID_LEN:
            raise CorruptData(f"chunk {chunk.hex()} in {where}: a delta without its base")
        base_id, stored = bytes(stored[:CHUNK_ID_LEN]), stored[CHUNK_ID_LEN:]
        try:
            base_raw = base(base_id)
        except CorruptData as e:
            raise CorruptData(
                f"chunk {chunk.hex()} in {where} is a delta of chunk {base_id.hex()}, which cannot be read: {e}",
                detail=f"its base {base_id.hex()}: {e.detail}",
            ) from None
        if len(base_raw) != raw_len or how == Compression.NONE:
            detail = f"delta of {len(base_raw)}-byte base {base_id.hex()} ({how.name})"
            raise CorruptData(f"chunk {chunk.hex()} in {where}: {detail}; run `chunkfs fsck`", detail=detail)
    try:
        if how == Compression.NONE:
            raw = stored
        else:
            raw = _decompressor().decompress(stored, max_output_size=raw_len)
            if how in PLANE_WIDTH:
                raw = from_planes(raw, PLANE_WIDTH[how])
    except zstandard.ZstdError as e:
        detail = f"cannot decode ({e})"
        raise CorruptData(f"chunk {chunk.hex()} in {where}: {detail}; run `chunkfs fsck`", detail=detail) from None
    if base_raw is not None and len(raw) == raw_len:
        raw = xor(raw, base_raw)
    if len(raw) != raw_len or chunk_id(raw) != chunk:
        detail = "content does not match its hash"
        raise CorruptData(f"chunk {chunk.hex()} in {where}: {detail}; run `chunkfs fsck`", detail=detail)
    return raw
