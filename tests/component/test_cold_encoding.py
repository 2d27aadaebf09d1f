"""Cold recompression of single chunks (``ChunkIO.recompress``, what a repack to cold applies):
float tensors get byte planes and come out smaller than zstd alone, noise stays raw, damage is
never repacked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chunkfs.engine import codec
from chunkfs.errors import CorruptData
from chunkfs.types import Compression, chunk_flags, flags_compression

LEVEL = 9  # lifecycle.cold_level's default
RAW = chunk_flags(Compression.NONE)


def _recompress(repo, data: bytes, stored: bytes | None = None, flags: int = RAW) -> tuple[bytes, int]:
    stored = data if stored is None else stored
    return repo.chunks.recompress(codec.chunk_id(data), stored, len(data), flags, LEVEL)


def _back(data: bytes, stored: bytes, flags: int) -> bytes:
    return codec.decode(codec.chunk_id(data), stored, len(data), flags, "test")


@pytest.mark.parametrize(
    ("dtype", "planes", "margin"),
    # measured: bf16 70% vs 78% of raw with zstd alone, fp32 85% vs 92% (docs/tiers.md)
    [
        (torch.bfloat16, {Compression.ZSTD_PLANES2, Compression.ZSTD_PLANES4}, 0.93),
        (torch.float32, {Compression.ZSTD_PLANES4}, 0.95),
    ],
)
def test_float_weights_get_byte_planes_and_beat_zstd_alone(repo, dtype, planes, margin):
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(1 << 19, generator=g) * 0.02).to(dtype).view(torch.uint8).numpy().tobytes()
    stored, flags = _recompress(repo, data)
    assert flags_compression(flags) in planes
    zstd_alone = codec.compress(data, Compression.ZSTD, LEVEL)
    assert len(stored) <= margin * len(zstd_alone), (len(stored), len(zstd_alone))
    assert _back(data, stored, flags) == data


def test_a_tail_that_is_not_a_whole_element_survives(repo):
    floats = np.random.default_rng(1).standard_normal(1 << 16, dtype=np.float32) * 0.02
    data = floats.tobytes() + b"\x01\x02\x03"
    stored, flags = _recompress(repo, data)
    assert flags_compression(flags) == Compression.ZSTD_PLANES4
    assert _back(data, stored, flags) == data


def test_random_bytes_stay_raw_and_a_useless_zstd_frame_is_unwrapped(repo):
    data = np.random.default_rng(0).bytes(1 << 20)
    assert _recompress(repo, data) == (data, RAW)
    frame = codec.compress(data, Compression.ZSTD, 1)  # larger than the raw bytes
    assert _recompress(repo, data, frame, chunk_flags(Compression.ZSTD)) == (data, RAW)


def test_a_damaged_chunk_is_refused_not_repacked(repo):
    data = (torch.randn(1 << 16) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
    damaged = bytearray(data)
    damaged[100] ^= 1
    match = f"chunk {codec.chunk_id(data).hex()} in repack: content does not match"
    with pytest.raises(CorruptData, match=match):
        _recompress(repo, data, bytes(damaged))
