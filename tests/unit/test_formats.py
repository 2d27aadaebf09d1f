"""The format parsers, through the chunker, on real files and on broken ones.

What must hold for every input: the chunks put back together are the input, the
parser keeps its contract (boundaries ascending and append-only, no boundary
below a watermark it already published, watermark and needed_from moving
forward), and the result does not depend on how the bytes were split into
writes. For real files also: the parser finds every tensor, a tensor of at least
min_chunk bytes starts a chunk and is cut at chunk_size steps from its start,
and re-saving a checkpoint with K changed tensors produces new chunks only for
those K tensors (plus, for torch, a small chunk per changed tensor holding its
data descriptor, and the zip trailer).
"""

from __future__ import annotations

import copy
import functools
import io
import itertools
import json
import math
import struct
import zipfile
from collections.abc import Callable, Sequence

import blake3
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.engine.chunker import Chunker, Piece
from chunkfs.engine.formats import detect
from chunkfs.engine.formats.base import INFINITE, MAX_LOOKAHEAD, BoundaryParser
from chunkfs.engine.formats.torchzip import storage_sizes

CS, MIN = 64 * 1024, 4 * 1024
Region = tuple[str, int, int]

# -- driving the chunker --------------------------------------------------------------------------


def chunk(
    data: bytes, splits: Sequence[int] = (), cs: int = CS, mn: int = MIN
) -> tuple[list[Piece], BoundaryParser]:
    """Feed ``data`` in pieces of the sizes in ``splits`` (the rest in one), checking the parser contract."""
    chunker = Chunker(cs, mn)
    pieces: list[Piece] = []
    seen: list[int] = []
    watermark = needed_from = 0

    def check() -> None:
        nonlocal seen, watermark, needed_from
        parser = chunker.parser
        if parser is None:
            return
        bounds = parser.boundaries
        assert bounds[: len(seen)] == seen, "boundaries are append-only"
        assert all(a < b for a, b in itertools.pairwise(bounds)), "boundaries strictly ascend"
        assert all(b >= watermark for b in bounds[len(seen) :]), "no boundary below a published watermark"
        assert parser.watermark >= watermark and parser.needed_from >= needed_from, "both only move forward"
        seen, watermark, needed_from = list(bounds), parser.watermark, parser.needed_from

    pos = 0
    for size in splits:
        pieces += chunker.feed(data[pos : pos + size])
        check()
        pos += size
    pieces += chunker.feed(data[pos:])
    check()
    pieces += chunker.finish()
    check()
    assert b"".join(p.data for p in pieces) == data
    ends = list(itertools.accumulate((len(p.data) for p in pieces), initial=0))
    assert [p.offset for p in pieces] + [len(data)] == ends
    assert all(p.data for p in pieces)
    parser = chunker.parser
    assert parser is not None
    return pieces, parser


def ids(pieces: list[Piece]) -> list[tuple[int, bytes]]:
    return [(p.offset, blake3.blake3(p.data).digest()) for p in pieces]


def assert_tensor_cuts(
    pieces: list[Piece], regions: list[Region], size: int, cs: int = CS, mn: int = MIN
) -> None:
    """The cut rule, seen from each tensor of at least ``mn`` bytes at [b, e): it starts
    a chunk and is cut exactly at ``cs`` multiples from its start."""
    starts = {p.offset for p in pieces}
    for name, b, e in regions:
        e = min(e, size)
        if e - b >= mn:
            assert b in starts, name
            assert sorted(s for s in starts if b < s < e) == list(range(b + cs, e, cs)), name


splits_strategy = st.lists(
    st.one_of(st.integers(1, 64), st.integers(1, 1 << 16), st.integers(1, 4 << 20)), max_size=30
)

# -- real files and where their tensors are ---------------------------------------------------------


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def zip_regions(data: bytes) -> list[Region]:
    """Each entry's data span, from the central directory (independent of the parser)."""
    out = []
    for info in zipfile.ZipFile(io.BytesIO(data)).infolist():
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        begin = info.header_offset + 30 + name_len + extra_len
        out.append((info.filename, begin, begin + info.compress_size))
    return out


def safetensors_regions(data: bytes) -> list[Region]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    return [(k, 8 + n + b, 8 + n + e) for b, e, k in spans]


def model() -> torch.nn.Module:
    """Tensor sizes: tiny biases and norms, 16 KiB, 75 KiB, 250 KiB, 586 KiB (tails of >= 4 KiB)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(1000, 64),
        torch.nn.Linear(64, 64),
        torch.nn.Linear(64, 300),
        torch.nn.LayerNorm(300),
        torch.nn.Linear(300, 500),
    )


@functools.cache
def checkpoint() -> dict:
    """A model's state dict and its Adam state after one step (exp_avg, exp_avg_sq, step)."""
    net = model()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randint(0, 1000, (4,))).sum().backward()
    opt.step()
    return {"model": net.state_dict(), "optim": opt.state_dict()}


def changed(ckpt: dict, names: list[str]) -> dict:
    state = copy.copy(ckpt["model"])  # keeps the state dict's _metadata, so the pickle keeps its size
    for name in names:
        state[name] = state[name] + 1
    return {"model": state, "optim": ckpt["optim"]}


def many_small() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 300, (400,), generator=gen).tolist()
    return {f"t{i}": torch.randn(n, generator=gen) for i, n in enumerate(sizes)}


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


GGUF_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gval(kind: int, value: object) -> bytes:
    if kind == 8:
        return gstr(value)
    if kind == 9:
        element, items = value
        return struct.pack("<IQ", element, len(items)) + b"".join(gval(element, x) for x in items)
    if kind not in GGUF_FORMATS:
        return b""  # an unknown type, for the malformed-file tests
    return struct.pack("<" + GGUF_FORMATS[kind], value)


def gguf(
    tensors: list[tuple[str, int]],
    kvs: list[tuple[str, int, object]] = (),
    alignment: int | None = None,
    version: int = 3,
    offsets: list[int] | None = None,
) -> tuple[bytes, list[Region]]:
    """A GGUF file with byte tensors of the given sizes (1-d, type I8), and their spans."""
    align = alignment or 32
    kvs = list(kvs) + ([("general.alignment", 4, alignment)] if alignment else [])
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    head += b"".join(gstr(k) + struct.pack("<I", kind) + gval(kind, v) for k, kind, v in kvs)
    if offsets is None:
        offsets, pos = [], 0
        for _, size in tensors:
            offsets.append(pos)
            pos = -(-(pos + size) // align) * align
    for (name, size), offset in zip(tensors, offsets):
        head += gstr(name) + struct.pack("<IQIQ", 1, size, 24, offset)
    data_start = -(-len(head) // align) * align
    body = bytearray(head.ljust(data_start, b"\0"))
    rng = np.random.default_rng(len(tensors))
    for (_, size), offset in zip(tensors, offsets):
        body[data_start + offset : data_start + offset + size] = rng.bytes(size)
    spans = [(name, data_start + off, data_start + off + size) for (name, size), off in zip(tensors, offsets)]
    return bytes(body), spans


GGUF_KVS = [
    ("general.architecture", 8, "llama"),
    *[(f"k.scalar{kind}", kind, 1) for kind in GGUF_FORMATS],
    ("tokenizer.ggml.tokens", 9, (8, [f"tok{i}" for i in range(3000)])),
    ("k.scores", 9, (6, [0.5] * 3000)),
    ("k.nested", 9, (9, [(4, [1, 2, 3]), (8, ["a", "bc"]), (9, [(0, [7])])])),
    ("k.empty", 9, (8, [])),
]


def npy(arr: np.ndarray, version: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    return buf.getvalue()


def npy_regions(data: bytes) -> list[Region]:
    buf = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(buf)
    (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(buf)
    return [("array", buf.tell(), INFINITE)]


@functools.cache
def sample(name: str) -> tuple[bytes, list[Region]]:
    """A real file of each kind and its tensors' spans, computed without the parser."""
    if name == "torch-checkpoint":
        data = torch_bytes(checkpoint())
        return data, zip_regions(data)
    if name == "torch-many-small":
        data = torch_bytes(many_small())
        return data, zip_regions(data)
    if name == "safetensors-torch":
        data = safetensors.torch.save(checkpoint()["model"])
        return data, safetensors_regions(data)
    if name == "safetensors-numpy-many-small":
        data = safetensors.numpy.save({k: v.numpy() for k, v in many_small().items()}, metadata={"step": "7"})
        return data, safetensors_regions(data)
    if name.startswith("npy-v"):
        data = npy(np.arange(200_000, dtype=np.float32).reshape(400, 500), (int(name[-1]), 0))
        return data, npy_regions(data)
    if name == "gguf-v3":
        sizes = [("tok_embd", 300_000), ("norm", 100), ("w", 20_000), ("x", 1), ("out", 200_000)]
        return gguf(sizes, GGUF_KVS, 64)
    if name == "gguf-v2":
        return gguf([(f"blk.{i}", 5000 * i + 3) for i in range(1, 30)], GGUF_KVS[:3], version=2)
    raise KeyError(name)


SAMPLES = [
    "torch-checkpoint",
    "torch-many-small",
    "safetensors-torch",
    "safetensors-numpy-many-small",
    "npy-v1",
    "npy-v2",
    "npy-v3",
    "gguf-v3",
    "gguf-v2",
]
FORMAT = {"torch": "torchzip", "safetensors": "safetensors", "npy": "npy", "gguf": "gguf"}

# -- real files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_parser_finds_every_tensor(name: str) -> None:
    data, truth = sample(name)
    pieces, parser = chunk(data)
    assert parser.name == FORMAT[name.split("-")[0]] and parser.gave_up is None
    regions = parser.regions
    if name.startswith("gguf"):  # a GGUF region runs to the next tensor (padding included) or to the end
        assert [r[:2] for r in regions] == [r[:2] for r in sorted(truth, key=lambda r: r[1])]
        assert all(e >= t[2] for (_, _, e), t in zip(regions, sorted(truth, key=lambda r: r[1])))
        assert [e for _, _, e in regions] == [b for _, b, _ in regions[1:]] + [INFINITE]
    else:
        assert regions == truth
    assert set(parser.boundaries) >= {b for _, b, _ in truth}
    assert_tensor_cuts(pieces, truth, len(data))


def test_torch_boundaries_are_entry_headers_data_starts_and_ends() -> None:
    data, truth = sample("torch-checkpoint")
    _, parser = chunk(data)
    archive = zipfile.ZipFile(io.BytesIO(data))
    headers = [i.header_offset for i in archive.infolist()]
    spans = [x for _, b, e in truth for x in (b, e)]
    assert parser.boundaries == sorted(headers[1:] + spans + [archive.start_dir])
    assert any(e - b > CS for _, b, e in truth), "the sample must hold tensors bigger than a chunk"


@pytest.mark.parametrize("name", SAMPLES)
@given(splits=splits_strategy)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_chunks_do_not_depend_on_write_sizes(name: str, splits: list[int]) -> None:
    data, _ = sample(name)
    whole, parser = chunk(data)
    pieces, split_parser = chunk(data, splits)
    assert ids(pieces) == ids(whole)
    assert split_parser.boundaries == parser.boundaries and split_parser.regions == parser.regions


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_fed_in_small_writes(name: str) -> None:
    data, _ = sample(name)
    assert ids(chunk(data, [997] * (len(data) // 997))[0]) == ids(chunk(data)[0])


@pytest.mark.parametrize("name", ["torch", "safetensors", "npy", "gguf"])
@given(splits=st.lists(st.integers(1, 40), max_size=300))
@settings(max_examples=40, deadline=None)
def test_small_files_in_tiny_writes(name: str, splits: list[int]) -> None:
    data = small(name)
    assert ids(chunk(data, splits, cs=256, mn=64)[0]) == ids(chunk(data, cs=256, mn=64)[0])


def test_byte_identical_rewrite_gives_no_new_chunks() -> None:
    for name in SAMPLES:
        data, _ = sample(name)
        first = {h for _, h in ids(chunk(data)[0])}
        assert {h for _, h in ids(chunk(data, [1000, 7, 1 << 20])[0])} == first
    assert torch_bytes(checkpoint()) == sample("torch-checkpoint")[0], "torch.save is deterministic"


def touches(piece: Piece, regions: list[Region]) -> bool:
    return any(piece.offset < e and b < piece.offset + len(piece.data) for _, b, e in regions)


def new_chunks_by_region(
    old: bytes, new: bytes, changed: set[str]
) -> tuple[list[Piece], list[Piece], list[Region]]:
    """Chunk both versions; return the new version's new chunks that touch a changed region,
    those that touch none, and the changed regions. No new chunk may touch an unchanged
    tensor of ``MIN`` bytes or more."""
    old_pieces, _ = chunk(old)
    new_pieces, parser = chunk(new)
    assert [p.offset for p in new_pieces] == [p.offset for p in old_pieces], "same shapes, same cuts"
    known = {h for _, h in ids(old_pieces)}
    fresh = [p for p, (_, h) in zip(new_pieces, ids(new_pieces)) if h not in known]
    hot = [(n, b, e) for n, b, e in parser.regions if n in changed]
    cold = [(n, b, e) for n, b, e in parser.regions if n not in changed and e - b >= MIN]
    assert not any(touches(p, cold) for p in fresh), "a new chunk holds bytes of an unchanged tensor"
    return [p for p in fresh if touches(p, hot)], [p for p in fresh if not touches(p, hot)], hot


CHANGED = ["0.weight", "1.weight", "2.weight", "4.weight"]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_safetensors_resave_with_k_changed_tensors(k: int) -> None:
    """New chunks: only those of the K tensors, at most ceil(size / CS) each; the header is unchanged."""
    base = checkpoint()
    old = safetensors.torch.save(base["model"])
    new = safetensors.torch.save(changed(base, CHANGED[:k])["model"])
    touching, meta, hot = new_chunks_by_region(old, new, set(CHANGED[:k]))
    assert len(hot) == k and meta == []
    assert 0 < len(touching) <= sum(math.ceil((e - b) / CS) for _, b, e in hot)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_torch_resave_with_k_changed_tensors(k: int) -> None:
    """New chunks: those of the K tensors, plus one per changed tensor for its descriptor (whose
    CRC changed; it shares a small chunk with the next local header), plus at most 2 for the zip
    trailer (the serialization id and the central directory, both derived from every entry's CRC,
    here smaller than one chunk)."""
    old, truth = sample("torch-checkpoint")
    new = torch_bytes(changed(checkpoint(), CHANGED[:k]))
    differs = {n for n, b, e in truth if old[b:e] != new[b:e]}
    tensors = {n for n in differs if "/data/" in n}
    assert len(tensors) == k and differs - tensors == {"archive/.data/serialization_id"}
    touching, meta, hot = new_chunks_by_region(old, new, tensors)
    trailer = next(b for n, b, _ in truth if n.endswith(".data/serialization_id"))
    assert len(new) - trailer < CS and len(meta) <= k + 2
    assert all(p.offset in {e for _, _, e in hot} or p.offset + len(p.data) > trailer for p in meta)
    assert 0 < len(touching) <= sum(math.ceil((e - b) / CS) for _, b, e in hot)


def test_same_tensor_gives_the_same_chunks_in_torch_and_safetensors() -> None:
    """A tensor's data is a run of chunks of its own, whatever file holds it (tails of >= MIN here)."""
    torch_data, torch_truth = sample("torch-checkpoint")
    st_data, st_truth = sample("safetensors-torch")
    torch_pieces, st_pieces = chunk(torch_data)[0], chunk(st_data)[0]

    def chunks_of(pieces: list[Piece], b: int, e: int) -> list[bytes]:
        return [blake3.blake3(p.data).digest() for p in pieces if b <= p.offset < e]

    by_bytes = {torch_data[b:e]: (b, e) for _, b, e in torch_truth if e - b >= MIN}
    for name, b, e in st_truth:
        if e - b >= MIN:
            assert chunks_of(st_pieces, b, e) == chunks_of(torch_pieces, *by_bytes[st_data[b:e]]), name


def test_changed_small_tensor_dirties_one_chunk() -> None:
    """A tensor below MIN shares a chunk with its neighbours: changing it costs that one chunk."""
    base = checkpoint()
    old = safetensors.torch.save(base["model"])
    new = safetensors.torch.save(changed(base, ["3.bias"])["model"])
    old_ids = {h for _, h in ids(chunk(old)[0])}
    assert len([h for _, h in ids(chunk(new)[0]) if h not in old_ids]) == 1


# -- broken input -----------------------------------------------------------------------------------


def small(name: str) -> bytes:
    """Small real files, for cutting at every offset."""
    if name == "torch":
        return torch_bytes({"a": torch.arange(10.0), "b": torch.ones(3, dtype=torch.int8)})
    if name == "safetensors":
        return safetensors.numpy.save({"a": np.arange(10.0), "b": np.ones(3, np.int8)}, metadata={"m": "x"})
    if name == "npy":
        return npy(np.arange(40, dtype=np.int16), (1, 0))
    return gguf([("a", 40), ("b", 3)], [("s", 8, "x"), ("n", 9, (9, [(8, ["y"])]))], 32)[0]


@pytest.mark.parametrize("name", ["torch", "safetensors", "npy", "gguf"])
def test_truncated_at_every_offset(name: str) -> None:
    data = small(name)
    assert chunk(data, cs=256, mn=64)[1].gave_up is None
    for cut in range(len(data)):
        chunk(data[:cut], cs=256, mn=64)
        chunk(data[:cut], [cut // 2, 1], cs=256, mn=64)


@pytest.mark.parametrize("name", ["torch", "safetensors", "npy", "gguf"])
@given(st.data())
@settings(max_examples=100, deadline=None)
def test_corrupted_bytes_never_crash(name: str, data: st.DataObject) -> None:
    raw = bytearray(small(name))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    chunk(bytes(raw), data.draw(splits_strategy), cs=256, mn=64)


SIGNATURES = [
    b"\x10" + bytes(7) + b"{",
    b"PK\x03\x04",
    b"GGUF\x03\0\0\0",
    b"GGUF",
    b"\x93NUMPY\x01\0",
    b"\x93NUMPY",
]


@pytest.mark.parametrize("signature", SIGNATURES)
@given(tail=st.binary(max_size=3000), splits=splits_strategy)
@settings(max_examples=60, deadline=None)
def test_random_bytes_after_a_signature(signature: bytes, tail: bytes, splits: list[int]) -> None:
    pieces, _ = chunk(signature + tail, splits, cs=256, mn=64)
    assert ids(pieces) == ids(chunk(signature + tail, cs=256, mn=64)[0])


@pytest.mark.parametrize(
    "data", [b"", b"x", b"PK\x03", b"GGUF", b"\x93NUMPY\x01\x00\x76", b"\x02" + bytes(7) + b"{}"]
)
def test_empty_and_shorter_than_detection(data: bytes) -> None:
    pieces, _ = chunk(data)
    assert len(pieces) == (1 if data else 0)


def safetensors_with(header: object, data_len: int = 64, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(data_len)


@pytest.mark.parametrize(
    "header",
    [
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"data_offsets": [8, 24]}},
        {"a": {"data_offsets": [16, 8]}},
        {"a": {"data_offsets": [-1, 8]}},
        {"a": {"data_offsets": [0, 8.0]}},
        {"a": {"data_offsets": [False, True]}},
        {"a": {"data_offsets": [0]}},
        {"a": {"data_offsets": "0,8"}},
        {"a": {"data_offsets": [0, 1 << 70]}},
        {"a": [0, 8]},
    ],
)
def test_safetensors_bad_offsets_give_up(header: object) -> None:
    _, parser = chunk(safetensors_with(header), cs=256, mn=16)
    assert parser.name == "safetensors" and parser.gave_up and parser.boundaries == []


@pytest.mark.parametrize(
    "raw", [b"{not json", b"{\xff\xfe}", b"{" + b"[" * 100_000, b'{"a": 1' + b" " * 10, b"{}" + b"x"]
)
def test_safetensors_garbage_header_gives_up(raw: bytes) -> None:
    _, parser = chunk(safetensors_with(None, raw=raw))
    assert parser.gave_up


def test_safetensors_offsets_out_of_order_or_beyond_the_end() -> None:
    header = {
        "__metadata__": {"k": "v"},
        "b": {"data_offsets": [5000, 9000]},
        "a": {"data_offsets": [0, 5000]},
        "z": {"data_offsets": [9000, 9000]},
        "far": {"data_offsets": [9000, 90_000]},
    }
    data = safetensors_with(header, data_len=20_000)
    pieces, parser = chunk(data, cs=4096, mn=512)
    base = 8 + int.from_bytes(data[:8], "little")
    assert parser.gave_up is None
    assert parser.boundaries == [base, base + 5000, base + 9000, base + 90_000]
    assert [n for n, _, _ in parser.regions] == ["a", "b", "z", "far"]
    assert {base, base + 5000, base + 9000} <= {p.offset for p in pieces}


def test_safetensors_huge_header_length() -> None:
    not_safetensors = struct.pack("<Q", 1 << 40) + b"{" + bytes(100)
    assert detect(not_safetensors[:16]).name == "fixed"
    too_long = struct.pack("<Q", MAX_LOOKAHEAD) + b"{" + bytes(100)
    pieces, parser = chunk(too_long, cs=64, mn=16)
    assert parser.name == "safetensors" and parser.gave_up and len(pieces) == 2


def zip_entry(name: bytes, payload: bytes, *, descriptor: bool, zip64: bool = False) -> bytes:
    """One local entry as a streaming writer makes it (sizes in a descriptor) or with sizes up front."""
    extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
    size = 0 if descriptor else len(payload)
    flags = 8 if descriptor else 0
    fields = (45, flags, 0, 0, 0, 0, size, size, len(name), len(extra))  # version ... extra length
    head = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", *fields)
    tail = b""
    if descriptor:
        tail = struct.pack("<4sIQQ" if zip64 else "<4sIII", b"PK\x07\x08", 0, len(payload), len(payload))
    return head + name + extra + payload + tail


def test_zip64_descriptors_and_decoy_signatures() -> None:
    decoy = b"PK\x07\x08" + bytes(20)  # a signature inside the data whose sizes do not match
    first = zip_entry(b"a/data/0", b"x" + decoy * 300, descriptor=True, zip64=True)
    second = zip_entry(b"a/data/1", b"PK\x07\x08" * 5000, descriptor=True)
    third = zip_entry(b"a/data/2", b"", descriptor=True)
    fourth = zip_entry(b"a/version", b"3\n", descriptor=False)
    data = first + second + third + fourth + b"PK\x01\x02" + bytes(60)
    _, parser = chunk(data, cs=1024, mn=128)
    assert parser.gave_up is None
    sizes = [("a/data/0", 7201), ("a/data/1", 20000), ("a/data/2", 0), ("a/version", 2)]
    assert [(n, e - b) for n, b, e in parser.regions] == sizes
    assert parser.boundaries[-1] == len(data) - 64
    for splits in ([1] * 3000, [5, 23, 24, 25, 4096] * 10):
        assert chunk(data, splits, cs=1024, mn=128)[1].regions == parser.regions


def test_legacy_torch_format_is_fixed_size() -> None:
    buf = io.BytesIO()
    torch.save(checkpoint(), buf, _use_new_zipfile_serialization=False)
    assert chunk(buf.getvalue())[1].name == "fixed"


def test_zip_with_sizes_up_front_and_compressed_entries() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # seekable: sizes in the local headers
        zf.writestr("stored", bytes(10_000))
        zf.writestr("deflated", bytes(10_000), compress_type=zipfile.ZIP_DEFLATED)
    data = buf.getvalue()
    _, parser = chunk(data, cs=1024, mn=128)
    assert parser.gave_up is None and parser.regions == zip_regions(data)


def test_zip_streamed_compressed_entry_gives_up() -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.out = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:
            self.out += b
            return len(b)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("first", bytes(1000), compress_type=zipfile.ZIP_STORED)
        with zf.open("second", "w") as f:
            f.write(bytes(10_000))
    data = bytes(sink.out)
    _, parser = chunk(data, cs=1024, mn=128)
    assert "compressed" in parser.gave_up and [n for n, _, _ in parser.regions] == ["first"]


def test_zip_without_descriptor_gives_up_at_the_end() -> None:
    data = sample("torch-checkpoint")[0].replace(b"PK\x07\x08", b"XX\x07\x08")
    _, parser = chunk(data)
    assert "descriptor" in parser.gave_up and parser.regions == []
    wrong_size = bytearray(sample("torch-checkpoint")[0])
    first = wrong_size.index(b"PK\x07\x08")
    wrong_size[first + 8] ^= 1
    _, parser = chunk(bytes(wrong_size))
    assert "descriptor" in parser.gave_up


def test_zip_garbage_instead_of_a_header() -> None:
    entry = zip_entry(b"x", b"abc", descriptor=False)
    _, parser = chunk(entry + b"garbage" * 10)
    assert parser.gave_up and parser.boundaries[-1] == len(entry)
    _, parser = chunk(entry)
    assert "central directory" in parser.gave_up


def nested(depth: int) -> tuple[int, list]:
    """An array value nested ``depth`` arrays deep (counting itself)."""
    return (0, [1, 2]) if depth == 1 else (9, [nested(depth - 1)])


def test_gguf_nesting_within_the_bound_parses() -> None:
    _, parser = chunk(gguf([("a", 10)], [("k", 9, nested(8))])[0])
    assert parser.gave_up is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: gguf([("a", 10)], version=1),
        lambda: gguf([("a", 10)], alignment=24),
        lambda: gguf([("a", 10)], [("general.alignment", 10, 64)]),
        lambda: gguf([("a", 10)], [("k", 13, 0)]),
        lambda: gguf([("a", 10)], [("k", 9, (13, []))]),
        lambda: gguf([("a", 100), ("b", 100)], offsets=[0, 0]),
        lambda: gguf([("a", 100), ("b", 100)], offsets=[0, 33]),
        lambda: gguf([("a", 10)], [("k", 9, nested(9))]),
    ],
)
def test_gguf_malformed_gives_up(build: Callable[[], tuple[bytes, list[Region]]]) -> None:
    data, _ = build()
    _, parser = chunk(data, cs=256, mn=64)
    assert parser.name == "gguf" and parser.gave_up and parser.boundaries == []


@pytest.mark.parametrize("field", [16, 8, "string", "array"])
def test_gguf_huge_counts_give_up(field: object) -> None:
    data = bytearray(gguf([("a", 10)], [("k", 8, "v"), ("arr", 9, (8, ["x"]))])[0])
    if field == "string":
        data[24 + 9 + 4 : 24 + 9 + 4 + 8] = struct.pack("<Q", MAX_LOOKAHEAD + 1)  # the value of "k"
    elif field == "array":
        at = data.index(b"arr") + 3 + 4 + 4
        data[at : at + 8] = struct.pack("<Q", 1 << 60)
    else:
        data[field : field + 8] = struct.pack("<Q", 1 << 60)
    _, parser = chunk(bytes(data))
    assert parser.gave_up and "exceeds" in parser.gave_up


def test_gguf_zero_size_tensors_may_share_an_offset() -> None:
    data, truth = gguf([("empty", 0), ("a", 64)], offsets=[0, 0])
    _, parser = chunk(data)
    assert parser.gave_up is None
    assert parser.regions == [("empty", truth[0][1], truth[0][1]), ("a", truth[1][1], INFINITE)]


@pytest.mark.parametrize(
    "data",
    [
        b"\x93NUMPY\x04\x00" + bytes(200),
        b"\x93NUMPY\x01\x01" + bytes(200),
        b"\x93NUMPY\x01\x00\x75\x00{" + bytes(200),
        b"\x93NUMPY\x01\x00\x76\x00[" + bytes(200),
        b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + bytes(200),
        npy(np.arange(3), (1, 0)).replace(b"\n", b" "),
    ],
)
def test_npy_malformed_gives_up(data: bytes) -> None:
    _, parser = chunk(data)
    assert parser.name == "npy" and parser.gave_up and parser.boundaries == []


def test_archives_back_to_back_as_dcp_writes_them() -> None:
    """torch.distributed.checkpoint writes each item of a rank as one torch.save archive, one after
    the other in a .distcp file: every archive's tensor data gets chunks of its own."""
    buf = io.BytesIO()
    tensors = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (5000, 70000, 300)]
    for t in tensors:
        torch.save(t, buf)
    data = buf.getvalue() + b"trailing bytes of something else"
    _, parser = chunk(data, cs=64 << 10, mn=4 << 10)
    assert parser.gave_up is None
    storages = [(lo, hi) for name, lo, hi in parser.regions if name.endswith("/data/0")]
    assert [data[lo:hi] for lo, hi in storages] == [t.numpy().tobytes() for t in tensors]
    assert all(lo in parser.boundaries for lo, _ in storages)


def test_storage_sizes_come_from_data_pkl_without_running_it() -> None:
    obj = {"a": torch.ones(10, dtype=torch.bfloat16), "b": torch.arange(5), "nested": [torch.zeros(3, 3),
           {"d": torch.ones(7, dtype=torch.float64)}], "big": torch.ones(300_000), "view": torch.ones(8)[2:5]}  # fmt: skip
    archive = zipfile.ZipFile(io.BytesIO(torch_bytes(obj)))
    truth = {i.filename: i.file_size for i in archive.infolist() if "/data/" in i.filename}
    assert storage_sizes(archive.read("archive/data.pkl"), "archive/") == truth
    assert storage_sizes(b"not a pickle", "archive/") == {}


def test_a_storage_s_bytes_are_never_scanned_nor_kept() -> None:
    """With its size from data.pkl, the parser waits for the descriptor at the storage's end:
    the chunker need not keep the tensor's bytes for it (needed_from jumps past them)."""
    data = torch_bytes({"w": torch.randn(1 << 20)})  # a 4 MiB storage
    chunker, jumped = Chunker(CS, MIN), False
    for pos in range(0, len(data), 64 << 10):
        chunker.feed(data[pos : pos + (64 << 10)])
        parser = chunker.parser
        jumped |= parser is not None and parser.needed_from < INFINITE and parser.needed_from > pos + (64 << 10)
    chunker.finish()
    assert jumped
    assert chunker.parser.regions == zip_regions(data)


def test_a_size_data_pkl_gets_wrong_gives_up_and_loses_nothing() -> None:
    data = bytearray(torch_bytes({"w": torch.ones(1000)}))
    pid = data.index(b"X\x03\x00\x00\x00cpuq")  # the storage's location, then its element count
    at = data.index(b"M\xe8\x03", pid)  # BININT2 1000
    data[at : at + 3] = b"M\xe9\x03"  # 1001: 4 bytes beyond the real end
    _, parser = chunk(bytes(data))
    assert parser.gave_up and "where data.pkl says its 4004 bytes end" in parser.gave_up
