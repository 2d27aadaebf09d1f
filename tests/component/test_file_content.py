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

from component_helpers import data_chunks, extents_of
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
