"""One contract, every backend: the same tests against a local directory, moto and rclone serve s3.

What the rest of chunkfs may rely on from any ``Backend``: exact ranges with a
short read at the end like ``pread``, ``NotFound`` for what is missing, silent
deletion of what is missing, listings that are complete however many objects
there are, and whole files uploaded intact whatever their size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.s3servers import PART_SIZE

from chunkfs.errors import NotFound

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable


def test_put_get_size_exists(backend):
    assert not backend.exists("packs/ab/x.pack")
    backend.put("packs/ab/x.pack", DATA)
    assert backend.get("packs/ab/x.pack") == DATA
    assert backend.size("packs/ab/x.pack") == len(DATA)
    assert backend.exists("packs/ab/x.pack")


def test_put_replaces(backend):
    backend.put("obj", b"old content")
    backend.put("obj", b"new")
    assert backend.get("obj") == b"new"
    assert backend.size("obj") == 3


def test_empty_object(backend):
    backend.put("empty", b"")
    assert backend.get("empty") == b""
    assert backend.size("empty") == 0
    assert backend.get_range("empty", 0, 0) == b""


@pytest.mark.parametrize(
    "offset, length",
    [(0, 1), (5000, 1000), (len(DATA) - 1, 1), (0, len(DATA)), (100, 0)],
    ids=["first-byte", "middle", "last-byte", "whole", "empty"],
)
def test_get_range(backend, offset, length):
    backend.put("obj", DATA)
    assert backend.get_range("obj", offset, length) == DATA[offset : offset + length]


def test_get_range_past_the_end_is_short(backend):
    backend.put("obj", DATA)
    assert backend.get_range("obj", len(DATA) - 4, 100) == b"tail"
    assert backend.get_range("obj", len(DATA), 10) == b""


@pytest.mark.parametrize("call", ["get", "get_range", "size"])
def test_missing_object_is_not_found(backend, call):
    args = {"get": (), "get_range": (0, 10), "size": ()}[call]
    with pytest.raises(NotFound, match="nothing-here"):
        getattr(backend, call)("packs/nothing-here", *args)


def test_delete(backend):
    backend.put("a/1", b"1")
    backend.put("a/2", b"2")
    backend.delete("a/1")
    assert not backend.exists("a/1")
    assert sorted(backend.list()) == ["a/2"]
    backend.delete("a/1")  # again: missing is not an error
    backend.delete("never/was")


def test_list_prefix(backend):
    names = ["meta/backup", "packs/aa/1.pack", "packs/aa/2.pack", "packs/ab/3.pack", "packsx"]
    for name in names:
        backend.put(name, b"x")
    assert sorted(backend.list()) == names
    assert sorted(backend.list("packs/")) == ["packs/aa/1.pack", "packs/aa/2.pack", "packs/ab/3.pack"]
    assert sorted(backend.list("packs/aa/")) == ["packs/aa/1.pack", "packs/aa/2.pack"]
    assert sorted(backend.list("nothing/")) == []


def test_list_more_than_a_page(backend):
    """S3 lists at most 1000 keys a page: the backend must follow continuation tokens."""
    names = [f"many/{i // 100:02d}/{i:04d}" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:  # also exercises one backend shared by threads
        list(pool.map(lambda n: backend.put(n, n.encode()), names))
    backend.put("other", b"x")
    assert sorted(backend.list("many/")) == names


def test_put_file_multipart(backend, tmp_path):
    """Bigger than the part size: uploaded in parts (S3), and read back intact."""
    path = tmp_path / "big.pack"
    data = os.urandom(2 * PART_SIZE + 12345)
    path.write_bytes(data)
    backend.put_file("packs/big.pack", path)
    assert backend.size("packs/big.pack") == len(data)
    assert backend.get("packs/big.pack") == data
    assert backend.get_range("packs/big.pack", PART_SIZE - 10, 20) == data[PART_SIZE - 10 : PART_SIZE + 10]


def test_put_file_small(backend, tmp_path):
    path = tmp_path / "small"
    path.write_bytes(DATA)
    backend.put_file("small", path)
    assert backend.get("small") == DATA


def test_put_file_missing_source(backend, tmp_path):
    with pytest.raises(NotFound):
        backend.put_file("x", tmp_path / "absent")
    assert not backend.exists("x")
