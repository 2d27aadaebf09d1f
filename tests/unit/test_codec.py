"""Chunk encodings (engine/codec.py): the byte-plane transform and its zstd encodings, what a
reader does with damaged or unknown encodings, and which encoding the cold trial picks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chunkfs.engine import codec
from chunkfs.errors import CorruptData
from chunkfs.types import ChunkKind, Compression, chunk_flags

PLANES = [Compression.ZSTD_PLANES2, Compression.ZSTD_PLANES4]


def _bf16(n: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()


def _fp32(n: int, seed: int = 0) -> bytes:
    return (np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * 0.02).tobytes()


def test_planes_put_each_element_byte_in_its_plane_and_keep_the_tail():
    assert codec.to_planes(b"abcdefg", 2) == b"acebdf" + b"g"
    assert codec.to_planes(b"0123456789", 4) == b"04152637" + b"89"
    assert codec.to_planes(b"abc", 4) == b"abc", "shorter than one element: all tail"
    assert codec.to_planes(b"", 2) == b""


@given(st.binary(max_size=300), st.sampled_from([2, 4]))
def test_planes_invert_for_any_length(data, width):
    planes = codec.to_planes(data, width)
    assert len(planes) == len(data)
    assert codec.from_planes(planes, width) == data


@given(st.binary(max_size=2000), st.integers(1, 9))
def test_the_native_planes_agree_with_numpy_bit_for_bit(data, width):
    """native/planes.c against the NumPy reference, both ways, every width it takes."""
    native = _native_planes()
    planes = codec.numpy_to_planes(data, width)
    assert native.to_planes(data, width) == planes
    assert native.from_planes(planes, width) == codec.numpy_from_planes(planes, width) == data


def test_the_native_planes_take_any_buffer_and_refuse_a_bad_width():
    native = _native_planes()
    data = np.arange(4099, dtype=np.uint8)
    assert native.to_planes(memoryview(data), 4) == codec.numpy_to_planes(data.tobytes(), 4)
    assert native.to_planes(bytearray(b"abcd"), 2) == b"acbd"
    with pytest.raises(ValueError, match="width must be 1 to 16"):
        native.to_planes(b"abcd", 0)


def _native_planes():
    """chunkfs._planes: built by every install where a C compiler is (CI's is such a machine)."""
    try:
        from chunkfs import _planes
    except ImportError:
        if shutil.which("cc") or shutil.which("gcc"):
            raise AssertionError("chunkfs._planes was not built though a C compiler is here: see pip's output")
        pytest.skip("no C compiler when chunkfs was installed: the NumPy byte planes serve (native/README.md)")
    assert codec._planes is _planes, "engine/codec.py uses it"
    return _planes


@pytest.mark.parametrize("how", PLANES)
@pytest.mark.parametrize("length", [0, 1, 3, 4097, (1 << 16) + 3])
def test_plane_encodings_decode_to_the_verified_raw_bytes(how, length):
    data = _bf16(length)[:length]  # odd lengths: half an element of tail
    stored = codec.compress(data, how, 9)
    assert codec.decode(codec.chunk_id(data), stored, len(data), chunk_flags(how), "pack p") == data


@pytest.mark.parametrize("how", PLANES)
def test_wrong_planes_are_corrupt_data_naming_the_chunk(how):
    data = _fp32(4096)
    cid = codec.chunk_id(data)
    # the same bytes, planes of the other width: a valid zstd frame that unshuffles wrongly
    other = codec.compress(data, PLANES[1 - PLANES.index(how)], 9)
    with pytest.raises(CorruptData, match=f"chunk {cid.hex()} in pack p: content does not match its hash"):
        codec.decode(cid, other, len(data), chunk_flags(how), "pack p")
    stored = bytearray(codec.compress(data, how, 9))
    stored[len(stored) // 2] ^= 0xFF
    with pytest.raises(CorruptData, match=f"chunk {cid.hex()} in pack p: "):
        codec.decode(cid, bytes(stored), len(data), chunk_flags(how), "pack p")
    with pytest.raises(CorruptData, match=f"chunk {cid.hex()} in pack p: cannot decode"):
        codec.decode(cid, bytes(stored[:20]), len(data), chunk_flags(how), "pack p")


def test_unknown_compression_or_kind_names_the_chunk_and_a_newer_chunkfs():
    data = b"x" * 100
    cid = codec.chunk_id(data)
    for flags in (0x07, 0x0F, 0x20):
        match = f"chunk {cid.hex()} in pack p: flags {flags:#04x} .*newer chunkfs"
        with pytest.raises(CorruptData, match=match):
            codec.decode(cid, data, len(data), flags, "pack p")
    with pytest.raises(CorruptData, match=f"chunk {cid.hex()} in pack p: a delta without its base"):
        codec.decode(cid, data, len(data), chunk_flags(Compression.ZSTD, ChunkKind.DELTA), "pack p")


def _neighbours(n: int, seed: int = 0) -> tuple[bytes, bytes]:
    """bf16 weights and the same weights a few small optimizer steps later."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    later = w + rng.standard_normal(n).astype(np.float32) * 1e-3
    bf16 = lambda a: (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return bf16(w), bf16(later)


def test_a_delta_decodes_through_its_base_and_stores_less_than_the_chunk_alone():
    older, newer = _neighbours(1 << 20)
    base = codec.chunk_id(newer)
    stored, flags = codec.encode_delta(older, base, newer, 64 << 10)
    assert flags >> 4 == ChunkKind.DELTA and stored[:32] == base
    alone = codec.compress(older, codec.repack_encoding(older[: 64 << 10], 3), 3)
    assert len(stored) < 0.5 * len(alone)  # the high byte planes of the XOR are nearly all zero
    asked = []

    def get(chunk):
        asked.append(chunk)
        return newer

    assert codec.decode(codec.chunk_id(older), stored, len(older), flags, "pack p", get) == older
    assert asked == [base]


def test_a_delta_whose_base_is_wrong_or_unreadable_is_an_error_naming_both():
    older, newer = _neighbours(1 << 16)
    cid, base = codec.chunk_id(older), codec.chunk_id(newer)
    stored, flags = codec.encode_delta(older, base, newer, 64 << 10)
    other = bytearray(newer)
    other[100] ^= 1
    with pytest.raises(CorruptData, match=f"chunk {cid.hex()} in pack p: content does not match its hash"):
        codec.decode(cid, stored, len(older), flags, "pack p", lambda c: bytes(other))

    def damaged(chunk):
        raise CorruptData(f"chunk {chunk.hex()} in pack q: content does not match its hash")

    with pytest.raises(CorruptData, match=f"chunk {cid.hex()} in pack p is a delta of chunk {base.hex()}") as e:
        codec.decode(cid, stored, len(older), flags, "pack p", damaged)
    assert e.value.detail.startswith(f"its base {base.hex()}")
    with pytest.raises(CorruptData, match="delta of 100-byte base"):
        codec.decode(cid, stored, len(older), flags, "pack p", lambda c: bytes(100))


def test_nothing_in_common_is_no_delta_and_xor_is_exact():
    rng = np.random.default_rng(1)
    a, b = rng.bytes(1 << 16), rng.bytes(1 << 16)
    assert codec.encode_delta(a, codec.chunk_id(b), b, 64 << 10) is None
    for n in (0, 1, 7, 8, 4097):
        x, y = rng.bytes(n), rng.bytes(n)
        assert codec.xor(x, y) == bytes(p ^ q for p, q in zip(x, y, strict=True))


def test_cold_trial_picks_planes_for_floats_and_none_for_random_bytes():
    assert codec.repack_encoding(_bf16(32 << 10), 9) in PLANES
    assert codec.repack_encoding(_fp32(16 << 10), 9) == Compression.ZSTD_PLANES4
    assert codec.repack_encoding(np.random.default_rng(0).bytes(64 << 10), 9) == Compression.NONE
    assert codec.repack_encoding(b'{"global_step": 100, "epoch": 1.0}' * 50, 9) == Compression.ZSTD
    assert codec.repack_encoding(b"", 9) == Compression.NONE
