"""``engine.file.FileContent``: random writes, overwrites, truncates, holes and past-EOF writes
against a bytearray model, and what an overwrite re-stores.

The model is the truth: after every operation the size and the bytes read back
must match it, and so must the content committed to the index and read again
after the repository is closed and reopened.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
from helpers.repos import data_chunks, extents_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.config import ChunkingSettings
from chunkfs.engine.file import MAX_PATCHED, FileContent
from chunkfs.ops import transfer
from chunkfs.repo import Repository
from chunkfs.types import HOLE

CS, MIN = 512, 64  # tiny chunks: a few KiB of writes cross many chunk boundaries
SMALL = ChunkingSettings(chunk_size=CS, min_chunk=MIN)
_names = itertools.count()


def _bytes(seed: int, n: int, zeros: bool) -> bytes:
    return bytes(n) if zeros else random.Random(seed).randbytes(n)


write = st.tuples(
    st.just("write"), st.integers(0, 6 * CS), st.integers(1, 3 * CS), st.integers(0, 2**32), st.booleans()
)
truncate = st.tuples(st.just("truncate"), st.integers(0, 6 * CS))
read = st.tuples(st.just("read"), st.integers(0, 7 * CS), st.integers(0, 4 * CS))
commit = st.tuples(st.just("commit"))
reload = st.tuples(st.just("reload"))  # commit, then carry on with a fresh FileContent from the index
operations = st.lists(st.one_of(write, write, truncate, read, commit, reload), min_size=1, max_size=25)


def _apply_model(model: bytearray, op) -> None:
    if op[0] == "write":
        _, offset, n, seed, zeros = op
        data = _bytes(seed, n, zeros)
        if offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset : offset + n] = data
    elif op[0] == "truncate":
        size = op[1]
        if size < len(model):
            del model[size:]
        else:
            model.extend(bytes(size - len(model)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, start=st.integers(0, 5 * CS), seed=st.integers(0, 2**32))
def test_random_operations_match_a_bytearray_model(repo_path, ops, start, seed):
    """Random op sequences on a file that may start with content; checked after each op and
    after closing and reopening the repository."""
    repo = Repository(repo_path) if repo_path.exists() else Repository.create(repo_path)
    try:
        name = f"f{next(_names)}".encode()
        ino, _ = repo.ns.mknod(1, name, 0o100644, 0, 0)
        model = bytearray(_bytes(seed, start, False))
        content = FileContent(repo.chunks, [], "/", SMALL)
        content.write(0, bytes(model))
        repo.ns.set_content(ino, content.finish())
        content = FileContent(repo.chunks, repo.ns.extents(ino), "/", SMALL)

        for op in ops:
            if op[0] in ("write", "truncate"):
                if op[0] == "write":
                    _, offset, n, s, zeros = op
                    content.write(offset, _bytes(s, n, zeros))
                else:
                    content.truncate(op[1])
                _apply_model(model, op)
            elif op[0] == "read":
                _, offset, n = op
                assert content.read(offset, n) == bytes(model[offset : offset + n]), op
            elif op[0] == "commit":  # fsync in the middle of writing: the stream goes on
                extents = content.commit()
                assert sum(e.length for e in extents) == len(model)
                repo.ns.set_content(ino, extents)
            elif op[0] == "reload":
                repo.ns.set_content(ino, content.finish())
                content = FileContent(repo.chunks, repo.ns.extents(ino), "/", SMALL)
            assert content.size == len(model), op
        assert content.read(0, len(model) + 10) == bytes(model)
        extents = content.finish()
        assert all(0 < e.length for e in extents)
        assert sum(e.length for e in extents) == len(model)
        repo.ns.set_content(ino, extents)
    finally:
        repo.close()

    with Repository(repo_path, writable=False) as again:
        ino = again.ns.resolve("/" + name.decode())
        assert again.ns.getattr(ino).size == len(model)
        stored = FileContent(again.chunks, again.ns.extents(ino), "/", SMALL)
        assert stored.read(0, len(model)) == bytes(model)


def test_overwrite_in_the_middle_restores_only_the_chunks_it_covers(tmp_path, repo):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 << 20))
    transfer.import_tree(repo, src, "/big.bin")
    ino = repo.ns.resolve("/big.bin")
    before = extents_of(repo, "/big.bin")
    assert len(before) == 64 and all(e.length == 64 << 10 for e in before)

    content = repo.file_content(ino)
    offset, patch = (16 << 20 >> 4) + 1000, os.urandom(100_000)  # inside extents 16 and 17
    new_chunks = repo.chunks.new_chunks
    content.write(offset, patch)
    assert repo.chunks.new_chunks == new_chunks, "patches are held until commit"
    repo.commit_file(ino, content)
    assert repo.chunks.new_chunks - new_chunks == 2

    after = extents_of(repo, "/big.bin")
    assert [e.length for e in after] == [e.length for e in before], "boundaries never move"
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a.chunk != b.chunk]
    assert changed == [16, 17]
    expected = bytearray(src.read_bytes())
    expected[offset : offset + len(patch)] = patch
    assert repo.file_content(ino).read(0, 4 << 20) == bytes(expected)


def test_many_scattered_writes_hold_a_bounded_number_of_patched_chunks(tmp_path, repo):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 << 20))
    transfer.import_tree(repo, src, "/big.bin")
    ino = repo.ns.resolve("/big.bin")
    content = repo.file_content(ino)
    expected = bytearray(src.read_bytes())
    for i in range(0, 128, 2):  # one byte in every other extent
        content.write(i * (64 << 10) + 7, b"\xff")
        expected[i * (64 << 10) + 7] = 0xFF
        assert len(content._patched) <= MAX_PATCHED
    repo.commit_file(ino, content)
    assert repo.file_content(ino).read(0, 8 << 20) == bytes(expected)


def test_append_to_committed_file_and_read_the_uncut_tail(tmp_path, repo):
    """A stream that starts in the middle of a file: its uncut tail reads back at the right offset."""
    ino, _ = repo.ns.mknod(1, b"log", 0o100644, 0, 0)
    content = repo.file_content(ino)
    first = os.urandom(100_000)
    content.write(0, first)
    repo.commit_file(ino, content)
    content = repo.file_content(ino)
    more = os.urandom(1000)  # far less than a chunk: stays in the stream's tail
    content.write(len(first), more)
    assert content.read(len(first) - 10, 1010) == first[-10:] + more
    assert content.read(0, 200_000) == first + more


def test_write_past_eof_leaves_a_hole_that_stores_nothing(tmp_path, repo):
    ino, _ = repo.ns.mknod(1, b"sparse", 0o100644, 0, 0)
    content = repo.file_content(ino)
    content.write(5 << 20, b"end")
    assert content.read((5 << 20) - 2, 10) == b"\0\0end"
    repo.commit_file(ino, content)
    extents = extents_of(repo, "/sparse")
    assert sum(e.length for e in extents if e.chunk == HOLE) == 5 << 20
    assert len(data_chunks(extents)) == 1


def test_truncate_into_a_written_hole_then_fsync_keeps_the_new_size(tmp_path, repo):
    """A hole written into, then cut by a truncate inside it, then fsync'd: the file kept its old
    length with stale bytes (the hole's patched buffer outlived the cut). Found by the model test."""
    cs = repo.settings.chunking.chunk_size
    ino, _ = repo.ns.mknod(1, b"cut", 0o100644, 0, 0)
    content = repo.file_content(ino)
    content.write(0, b"a")
    content.write(2 * cs, b"z")  # past the end: the zero chunk before it is stored as a hole
    repo.commit_file(ino, content)
    content = repo.file_content(ino)
    content.write(0, b"b" * (cs + 1))  # into the first chunk and one byte of the hole after it
    content.truncate(cs + 1)  # inside that patched hole
    extents = content.commit()  # fsync
    assert sum(e.length for e in extents) == cs + 1
    repo.commit_file(ino, content)
    assert repo.file_content(ino).read(0, 4 * cs) == b"b" * (cs + 1)


def test_read_bytes_counts_what_readers_got_not_the_chunks_behind_it(tmp_path, repo):
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(1 << 20))
    transfer.import_tree(repo, src, "/model.bin")
    content = repo.file_content(repo.ns.resolve("/model.bin"))
    before = repo.chunks.read_bytes
    data = b"".join(content.read(off, 4096) for off in range(0, 1 << 20, 4096))  # 256 reads of 16 chunks
    assert data == src.read_bytes()
    assert repo.chunks.read_bytes - before == 1 << 20
    assert content.read(1 << 20, 4096) == b""
    assert repo.chunks.read_bytes - before == 1 << 20, "a read at the end returned nothing"


# -- the cuts depend only on the bytes, whatever the write pattern (engine/ahead.py) -----------------


def _safetensors_bytes(seed: int) -> bytes:
    """A small safetensors file: a header naming tensors of assorted sizes, then their bytes."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6 * CS, size=int(rng.integers(2, 9)))
    return save({f"t{i}": rng.integers(0, 255, size=int(n), dtype=np.uint8) for i, n in enumerate(sizes)})


def _pieces(data: bytes, rng: random.Random) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, 3 * CS)
        out.append((pos, data[pos : pos + n]))
        pos += n
    return out


def _threads(pieces, k: int):
    """k writers, each writing its own contiguous region in order, interleaved round-robin."""
    regions = [pieces[i * len(pieces) // k : (i + 1) * len(pieces) // k] for i in range(k)]
    out = []
    while any(regions):
        for r in regions:
            if r:
                out.append(r.pop(0))
    return out


PATTERNS = {
    "in order": lambda p, rng: p,
    "reversed": lambda p, rng: p[::-1],
    "shuffled": lambda p, rng: rng.sample(p, len(p)),
    "4 threads": lambda p, rng: _threads(p, 4),
    "pages twice": lambda p, rng: [x for piece in p for x in (piece, piece)],  # write-back resends a page
    "window": lambda p, rng: [p[i ^ 1] for i in range(len(p) - len(p) % 2)] + p[len(p) - len(p) % 2 :],
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), pattern=st.sampled_from(sorted(PATTERNS)), extend_first=st.booleans(),
       memory=st.sampled_from([0, 4 * CS, 1 << 20]))  # fmt: skip
def test_cuts_depend_only_on_the_bytes_whatever_the_write_pattern(tmp_path, repo, monkeypatch, seed, pattern,
                                                                     extend_first, memory):  # fmt: skip
    """extend with ftruncate then fill (safetensors), pwrite out of order, several writers, a page
    written back twice; held bytes in memory or spooled to disk: the same chunks as one in-order write."""
    from chunkfs.engine import file as file_mod

    monkeypatch.setattr(file_mod, "HELD_MEMORY", memory)
    data = _safetensors_bytes(seed)
    reference = FileContent(repo.chunks, [], "/", SMALL)
    reference.write(0, data)
    expected = reference.finish()
    assert len(expected) > 2

    content = FileContent(repo.chunks, [], "/", SMALL, tmp_path / "spool")
    if extend_first:
        content.truncate(len(data))
    rng = random.Random(seed)
    for offset, piece in PATTERNS[pattern](_pieces(data, rng), rng):
        content.write(offset, piece)
        assert content.read(offset, len(piece)) == piece
    assert content.size == len(data)
    assert content.read(0, len(data)) == data
    assert content.finish() == expected
    assert content.digest() == reference.digest()


def test_fsync_in_the_middle_of_out_of_order_writes_keeps_the_cuts(tmp_path, repo, monkeypatch):
    from chunkfs.engine import file as file_mod

    monkeypatch.setattr(file_mod, "HELD_MEMORY", CS)
    data = _safetensors_bytes(7)
    reference = FileContent(repo.chunks, [], "/", SMALL)
    reference.write(0, data)
    expected = reference.finish()
    content = FileContent(repo.chunks, [], "/", SMALL, tmp_path / "spool")
    content.truncate(len(data))
    half = len(data) // 2
    content.write(half, data[half:])  # the second half first: held (spooled)
    extents = content.commit()  # fsync: provisional chunks, stream untouched
    assert sum(e.length for e in extents) == len(data)
    assert FileContent(repo.chunks, extents, "/", SMALL).read(0, len(data)) == bytes(half) + data[half:]
    content.write(0, data[:half])
    assert content.finish() == expected


def test_huge_sparse_extension_costs_nothing(tmp_path, repo):
    """truncate to 200 TiB and write at both ends: O(1) memory and time, reads of zeros in between."""
    import time

    from chunkfs.errors import FileTooLarge
    from chunkfs.types import MAX_FILE_SIZE

    ino, _ = repo.ns.mknod(1, b"huge", 0o100644, 0, 0)
    content = repo.file_content(ino)
    started = time.monotonic()
    content.write(0, b"head")
    content.truncate(200 << 40)
    content.write((200 << 40) - 4, b"tail")
    assert content.read((100 << 40), 8) == bytes(8)
    assert content.read((200 << 40) - 6, 100) == b"\0\0tail"
    repo.commit_file(ino, content)
    assert time.monotonic() - started < 5, "a hole is one extent, not 50 million"
    extents = extents_of(repo, "/huge")
    assert len(extents) <= 3 and sum(e.length for e in extents) == 200 << 40
    assert repo.ns.getattr(ino).size == 200 << 40
    again = repo.file_content(ino)
    assert again.read((200 << 40) - 4, 4) == b"tail" and again.read(0, 4) == b"head"
    again.write(150 << 40, b"middle")  # a write into the hole patches one chunk-sized piece of it
    repo.commit_file(ino, again)
    assert repo.file_content(ino).read((150 << 40) - 1, 8) == b"\0middle\0"
    with pytest.raises(FileTooLarge):
        repo.file_content(ino).truncate(MAX_FILE_SIZE + 1)
    with pytest.raises(FileTooLarge):
        repo.file_content(ino).write(MAX_FILE_SIZE, b"x")
