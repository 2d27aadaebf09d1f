"""Random operation sequences on one file, applied to the mount and to a plain directory.

Two descriptors share the file (what one writes the other must read), with
writes inside, across and past the end, truncates both ways, fsyncs and
reopens. After the last close, the *committed* content — read back by
``chunkfs export``, which sees only what survives a crash — must equal the
plain file, as must what the mount shows.
"""

from __future__ import annotations

import errno
import os
import random
import stat

import pytest
from helpers.cli import chunkfs
from helpers.mount import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 4 * MiB

# offsets cluster around chunk boundaries, where the engine's bookkeeping is subtle
offsets = st.one_of(
    st.integers(0, 12 * MiB),
    st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 7, 2 * CHUNK]).flatmap(
        lambda b: st.integers(max(0, b - 5000), b + 5000)
    ),
)
lengths = st.one_of(st.integers(1, 300 * KiB), st.sampled_from([1, 4096, CHUNK, CHUNK + 3]))
ops = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1), offsets, lengths, st.integers(0, 1 << 30)),
    st.tuples(st.just("append"), st.integers(0, 1), lengths, st.integers(0, 1 << 30)),
    st.tuples(st.just("truncate"), st.integers(0, 1), offsets),
    st.tuples(st.just("read"), st.integers(0, 1), offsets, lengths),
    st.tuples(st.just("fsync"), st.integers(0, 1)),
    st.tuples(st.just("reopen"), st.integers(0, 1)),
)


def apply(path, sequence) -> list[bytes]:
    """Run ``sequence`` on ``path``; return what every read returned."""
    fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o644) for _ in range(2)]
    reads = []
    try:
        for op in sequence:
            kind, i = op[0], op[1]
            if kind == "write":
                os.pwrite(fds[i], random.Random(op[4]).randbytes(op[3]), op[2])
            elif kind == "append":
                os.pwrite(fds[i], random.Random(op[3]).randbytes(op[2]), os.fstat(fds[i]).st_size)
            elif kind == "truncate":
                os.ftruncate(fds[i], op[2])
            elif kind == "read":
                reads.append(os.pread(fds[i], op[3], op[2]))
            elif kind == "fsync":
                os.fsync(fds[i])
            elif kind == "reopen":
                os.close(fds[i])
                fds[i] = os.open(path, os.O_RDWR)
        reads.append(os.pread(fds[0], 30 * MiB, 0))
    finally:
        for fd in fds:
            os.close(fd)
    return reads


@pytest.fixture(params=["4MiB-chunks", "64KiB-chunks"])
def diff_mount(request, make_mount):
    """Default chunks, and chunks so small that a 12 MiB file has hundreds: many boundaries,
    and more patched extents than FileContent keeps in memory."""
    if request.param == "4MiB-chunks":
        return make_mount()
    return make_mount(settings={"chunking": {"chunk_size": 64 * KiB, "min_chunk": 4 * KiB}})


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(ops, min_size=1, max_size=25))
def test_random_operations_match_plain_file(diff_mount, plain, sequence):
    mnt = diff_mount
    n = len(os.listdir(plain))
    ours, theirs = mnt / f"f{n}", plain / f"f{n}"
    assert apply(ours, sequence) == apply(theirs, sequence)
    expected = theirs.read_bytes()
    assert ours.read_bytes() == expected
    exported = plain.parent / f"exported{n}"
    chunkfs("export", "--repo", mnt.repo, f"/f{n}", exported)
    assert exported.read_bytes() == expected, "the committed content differs from what was written"


NAMES = ["a", "b", "d1", "d2", "d1/a", "d1/x", "d2/y", "d1/sub", "d1/sub/z", "d2/d1"]
paths = st.sampled_from(NAMES)
tree_ops = st.one_of(
    st.tuples(st.just("create"), paths, st.binary(max_size=20)),
    st.tuples(st.just("mkdir"), paths),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("rename"), paths, paths),
    st.tuples(st.just("noreplace"), paths, paths),
    st.tuples(st.just("exchange"), paths, paths),
    st.tuples(st.just("link"), paths, paths),
    # targets never resolve outside the test's directories (creating through a link must not escape)
    st.tuples(st.just("symlink"), st.sampled_from(["tgt", "../b", "/nonexistent-chunkfs-test/x"]), paths),
)
SAME_ERRORS = {errno.EEXIST: errno.ENOTEMPTY}  # POSIX allows either for a non-empty target directory


def apply_tree(root, sequence) -> list[int]:
    outcomes = []
    for op in sequence:
        kind, p = op[0], [root / x if isinstance(x, str) and x in NAMES else x for x in op[1:]]
        try:
            if kind == "create":
                with open(p[0], "wb") as f:
                    f.write(p[1])
            elif kind == "mkdir":
                os.mkdir(p[0])
            elif kind == "rmdir":
                os.rmdir(p[0])
            elif kind == "unlink":
                os.unlink(p[0])
            elif kind == "rename":
                os.rename(p[0], p[1])
            elif kind == "noreplace":
                renameat2(p[0], p[1], RENAME_NOREPLACE)
            elif kind == "exchange":
                renameat2(p[0], p[1], RENAME_EXCHANGE)
            elif kind == "link":
                os.link(p[0], p[1], follow_symlinks=False)
            elif kind == "symlink":
                os.symlink(p[0], p[1])
            outcomes.append(0)
        except OSError as e:
            outcomes.append(SAME_ERRORS.get(e.errno, e.errno))
    return outcomes


def snapshot(root) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", st_.st_nlink)
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("file", st_.st_nlink, fh.read())
    return out


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(tree_ops, min_size=1, max_size=30))
def test_random_tree_operations_match_plain_dir(mnt, plain, sequence):
    n = len(os.listdir(plain))
    ours, theirs = mnt / f"t{n}", plain / f"t{n}"
    os.mkdir(ours)
    os.mkdir(theirs)
    assert apply_tree(ours, sequence) == apply_tree(theirs, sequence)
    assert snapshot(ours) == snapshot(theirs)
