"""Inputs the parsers must survive: malformed headers, huge files, empty and all-zero files.

Whatever the bytes, an import followed by an export gives them back exactly;
zero runs become holes that store nothing.
"""

from __future__ import annotations

import io
import json
import os
import struct

import pytest
from helpers.checkpoints import base_model, save
from helpers.repos import assert_same_file, data_chunks, extents_of, roundtrip

from chunkfs.ops import stats, transfer
from chunkfs.types import HOLE


def _safetensors_with_header(header: dict | bytes, body: bytes, claimed_len: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if claimed_len is None else claimed_len
    return struct.pack("<Q", n) + text + body


def _torch_bytes(seed: int = 0) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(base_model(seed), buf)
    return buf.getvalue()


BODY = os.urandom(300_000)

MALFORMED = {
    # claims a 80 MB header (over the 64 MiB lookahead) in a small file
    "safetensors-huge-header-length": lambda: _safetensors_with_header(
        b'{"a":1}', BODY, claimed_len=80_000_000
    ),
    # claims a 1 MB header but the file ends first
    "safetensors-header-past-eof": lambda: _safetensors_with_header(
        b'{"a":1}', BODY[:5000], claimed_len=1_000_000
    ),
    "safetensors-overlapping-offsets": lambda: _safetensors_with_header(
        {
            "a": {"dtype": "F32", "shape": [50000], "data_offsets": [0, 200_000]},
            "b": {"dtype": "F32", "shape": [50000], "data_offsets": [100_000, 300_000]},
        },
        BODY,
    ),
    "safetensors-offsets-past-eof": lambda: _safetensors_with_header(
        {"a": {"dtype": "F32", "shape": [10**8], "data_offsets": [0, 4 * 10**8]}}, BODY
    ),
    "safetensors-bad-json": lambda: _safetensors_with_header(b'{"a": [1, 2', BODY),
    "safetensors-not-utf8": lambda: _safetensors_with_header(b'{"\xff\xfe": 1}', BODY),
    "safetensors-negative-and-bool-offsets": lambda: _safetensors_with_header(
        {"a": {"data_offsets": [-4, 8]}, "b": {"data_offsets": [True, 9]}}, BODY
    ),
    "torch-zip-truncated-in-a-tensor": lambda: _torch_bytes()[: len(_torch_bytes()) // 2],
    "torch-zip-truncated-in-central-directory": lambda: _torch_bytes()[:-30],
    "torch-zip-garbage-after-local-header": lambda: _torch_bytes()[:200] + os.urandom(200_000),
    "random-garbage": lambda: os.urandom(700_000),
    "zip-magic-then-garbage": lambda: b"PK\x03\x04" + os.urandom(200_000),
    "tiny-file": lambda: b"{",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_imports_and_exports_bit_identical(tmp_path, repo, name):
    src = tmp_path / name
    src.write_bytes(MALFORMED[name]())
    roundtrip(repo, src, f"/bad/{name}", tmp_path / "out")
    extents = extents_of(repo, f"/bad/{name}")
    assert sum(e.length for e in extents) == src.stat().st_size
    assert all(e.length <= 64 << 10 for e in extents), "malformed input still gets bounded chunks"


def test_file_far_larger_than_chunk_size(tmp_path, make_repo):
    """100 MiB with 1 MiB chunks: streamed in bounded chunks, exported identical."""
    repo = make_repo(chunk_size=1 << 20, min_chunk=64 << 10)
    src = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        # distinct 1 MiB blocks without generating 100 MiB of randomness
        f.writelines(struct.pack("<Q", i) + block[8:] for i in range(100))
    roundtrip(repo, src, "/big.bin", tmp_path / "big.out")
    extents = extents_of(repo, "/big.bin")
    assert len(extents) == 100 and all(e.length == 1 << 20 for e in extents)
    assert len(set(data_chunks(extents))) == 100
    s = stats.collect(repo)
    assert s.logical_bytes == s.unique_bytes == 100 << 20
    assert s.stored_bytes == 100 << 20  # random data is stored raw
    assert s.pack_bytes >= s.stored_bytes + s.packs * 32


def test_empty_file(tmp_path, repo):
    src = tmp_path / "empty"
    src.write_bytes(b"")
    roundtrip(repo, src, "/empty", tmp_path / "empty.out")
    assert extents_of(repo, "/empty") == []
    ino = repo.ns.resolve("/empty")
    assert repo.ns.getattr(ino).size == 0 and repo.ns.getattr(ino).manifest == 0
    assert stats.collect(repo).chunks == 0


def test_zero_file_is_all_holes_and_stores_nothing(tmp_path, repo):
    src = tmp_path / "zeros"
    with open(src, "wb") as f:
        f.truncate(3 << 20)  # a sparse 3 MiB file
    roundtrip(repo, src, "/zeros", tmp_path / "zeros.out")
    extents = extents_of(repo, "/zeros")
    assert sum(e.length for e in extents) == 3 << 20
    assert {e.chunk for e in extents} == {HOLE}
    s = stats.collect(repo)
    assert (s.chunks, s.stored_bytes, s.packs) == (0, 0, 0)
    assert s.logical_bytes == 3 << 20


def test_sparse_file_stores_only_its_data(tmp_path, repo):
    src = tmp_path / "sparse"
    data = os.urandom(100_000)
    with open(src, "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(data)
    roundtrip(repo, src, "/sparse", tmp_path / "sparse.out")
    extents = extents_of(repo, "/sparse")
    holes = sum(e.length for e in extents if e.chunk == HOLE)
    assert holes >= (4 << 20) - 100_000 - 2 * (64 << 10)
    s = stats.collect(repo)
    assert s.unique_bytes <= 100_000 + 2 * (64 << 10)
    assert s.logical_bytes == 4 << 20


def test_tree_with_symlink_and_modes(tmp_path, repo):
    src = tmp_path / "tree"
    (src / "run" / "checkpoint-1").mkdir(parents=True)
    save(base_model(), src / "run" / "checkpoint-1" / "model.safetensors", "safetensors")
    (src / "run" / "notes.txt").write_text("best so far\n")
    os.chmod(src / "run" / "notes.txt", 0o600)
    os.symlink("checkpoint-1", src / "run" / "latest")
    r = transfer.import_tree(repo, src, "/")
    assert (r.files, r.directories, r.symlinks) == (2, 3, 1)
    out = tmp_path / "out"
    out.mkdir()
    transfer.export_tree(repo, "/tree", out)
    model = "run/checkpoint-1/model.safetensors"
    assert_same_file(src / model, out / "tree" / model)
    assert os.readlink(out / "tree/run/latest") == "checkpoint-1"
    assert (out / "tree/run/notes.txt").stat().st_mode & 0o777 == 0o600


def _fs(path, *parts: bytes):
    return os.fsdecode(os.path.join(os.fsencode(path), *parts))


def test_file_names_that_are_not_utf8_round_trip(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    with open(_fs(src, b"caf\xe9.bin"), "wb") as f:
        f.write(b"latin-1 name")
    os.symlink(_fs(b"caf\xe9.bin"), _fs(src, b"link\xff"))
    transfer.import_tree(repo, src, "/names")
    names = [n for n, _, _ in repo.ns.readdir(repo.ns.resolve("/names"))]
    assert names == [b"caf\xe9.bin", b"link\xff"]
    out = tmp_path / "out"
    out.mkdir()
    transfer.export_tree(repo, "/names", out)
    with open(_fs(out, b"names", b"caf\xe9.bin"), "rb") as f:
        assert f.read() == b"latin-1 name"
    assert os.readlink(os.fsencode(_fs(out, b"names", b"link\xff"))) == b"caf\xe9.bin"


def _round_trip_tree(tmp_path, repo, *parts: bytes):
    src = tmp_path / "src"
    os.makedirs(_fs(src, *parts[:-1]))
    data = os.urandom(100_000)
    with open(_fs(src, *parts), "wb") as f:
        f.write(data)
    transfer.import_tree(repo, src, "/d")
    out = tmp_path / "out"
    out.mkdir()
    transfer.export_tree(repo, "/d", out)
    with open(_fs(out, b"d", *parts), "rb") as f:
        assert f.read() == data


def test_run_directory_name_that_is_not_utf8_round_trips(tmp_path, repo):
    """The pack group (the run directory's path) is stored in the packs db: any bytes go."""
    _round_trip_tree(tmp_path, repo, b"run\xff", b"checkpoint-1", b"model.bin")
    with repo.index.read() as t:
        assert "/d/run\udcff" in {info.group for _, info in t.packs()}


def test_directory_name_that_is_not_utf8_round_trips(tmp_path, repo):
    _round_trip_tree(tmp_path, repo, b"dir\xff", b"model.bin")
