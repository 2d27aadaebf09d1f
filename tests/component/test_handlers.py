"""The FUSE handlers (``ChunkfsOperations``) driven directly, without a kernel.

Each test calls the handlers the way the kernel would — lookup before open, a reference
per entry reply, FORGET for what it drops, readdirplus taking entries one by one — and
the ``ops`` fixture runs fsck on the repository after every test (as S3QL's handler tests
run theirs), so a handler that leaves the tree inconsistent fails even when its own
replies looked right.
"""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
from helpers.repos import small_settings

from chunkfs.fs.operations import READDIR_BATCH, ChunkfsOperations
from chunkfs.ops import fsck as fsckop
from chunkfs.repo import Repository
from chunkfs.types import ROOT_INODE

CTX = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


def run(fn, *args):
    return trio.run(fn, *args)


@pytest.fixture
def ops(tmp_path):
    repo = Repository.create(tmp_path / "repo", settings=small_settings())
    handlers = ChunkfsOperations(repo)
    yield handlers
    handlers.close()
    report = fsckop.fsck(repo)
    repo.close()
    assert report.ok, [p.message for p in report.problems]


@pytest.fixture
def replies(monkeypatch):
    """What readdir hands the kernel: (name, inode, next position) of each entry; ``limit``
    entries per request, like a kernel buffer that fills up."""
    got = SimpleNamespace(entries=[], limit=None)

    def reply(token, name, attrs, next_id):
        if got.limit is not None and token.taken >= got.limit:
            return False
        token.taken += 1
        got.entries.append((name, attrs.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return got


def request():
    """A readdir request's token: how many entries its reply holds so far."""
    return SimpleNamespace(taken=0)


def create(ops, parent, name: bytes, data: bytes = b"") -> int:
    info, attrs = run(ops.create, parent, name, stat.S_IFREG | 0o644, os.O_WRONLY, CTX)
    if data:
        run(ops.write, info.fh, 0, data)
    run(ops.flush, info.fh)
    run(ops.release, info.fh)
    run(ops.forget, [(attrs.st_ino, 1)])
    return attrs.st_ino


def listing(ops, ino: int, limit: int | None, replies) -> list[bytes]:
    """Every name of directory ``ino``, read in requests of ``limit`` entries."""
    fh = run(ops.opendir, ino, CTX)
    names, pos = [], 0
    while True:
        replies.entries.clear()
        replies.limit = limit
        run(ops.readdir, fh, pos, request())
        if not replies.entries:
            break
        names += [name for name, _, _ in replies.entries]
        pos = replies.entries[-1][2]
    run(ops.releasedir, fh)
    return names


def test_readdir_takes_one_reference_per_entry_the_kernel_took(ops, replies):
    """readdirplus makes every entry the kernel accepted a lookup: exactly one reference each,
    none for an entry it refused; FORGET of those references leaves nothing held."""
    d = run(ops.mkdir, ROOT_INODE, b"d", 0o755, CTX).st_ino
    inos = {create(ops, d, f"f{i:03}".encode()): f"f{i:03}".encode() for i in range(READDIR_BATCH + 10)}
    names = listing(ops, d, 7, replies)
    assert names == sorted(inos.values()), "every name once, in order, across requests of 7"
    refs = ops.ns._refs
    assert {ino: refs[ino] for ino in inos} == dict.fromkeys(inos, 1), "one reference per entry taken"
    run(ops.forget, [(ino, 1) for ino in inos])
    assert not any(refs[ino] for ino in inos)


def test_readdir_is_live_across_requests(ops, replies):
    """A name unlinked between two requests of one listing is not handed out afterwards, and a
    name renamed over another is listed under its new name only (the listing reads the tree
    as it is at each request, not a copy from opendir)."""
    for name in (b"a", b"b", b"c", b"latest", b"tmp"):
        create(ops, ROOT_INODE, name, name)
    fh = run(ops.opendir, ROOT_INODE, CTX)
    replies.limit = 2
    run(ops.readdir, fh, 0, request())
    assert [n for n, _, _ in replies.entries] == [b"a", b"b"]
    run(ops.unlink, ROOT_INODE, b"c", CTX)
    run(ops.rename, ROOT_INODE, b"tmp", ROOT_INODE, b"latest", 0, CTX)
    pos = replies.entries[-1][2]
    replies.entries.clear()
    replies.limit = None
    run(ops.readdir, fh, pos, request())
    run(ops.releasedir, fh)
    assert [n for n, _, _ in replies.entries] == [b"latest"]
    run(ops.forget, [(ino, 1) for _, ino, _ in replies.entries])


def test_write_read_and_versions_through_the_handlers(ops):
    ino = create(ops, ROOT_INODE, b"f", b"hello")
    info = run(ops.open, ino, os.O_RDWR, CTX)
    assert run(ops.read, info.fh, 0, 100) == b"hello"
    run(ops.write, info.fh, 5, b" world")
    run(ops.fsync, info.fh, False)
    run(ops.release, info.fh)
    assert run(ops.getattr, ino, CTX).st_size == 11
    assert [e.size for e in ops.repo.history.log("/f")][:2] == [11, 5], "close and fsync each commit a version"


def test_snapshot_files_read_through_open_files(ops):
    """A file in ``.snapshots/@COMMIT`` opens as a read-only version handle of ``OpenFiles``:
    it reads the old bytes, refuses writes, and releasing it commits nothing."""
    ino = create(ops, ROOT_INODE, b"f", b"old")
    commit = ops.repo.history.last_commit()
    info = run(ops.open, ino, os.O_WRONLY | os.O_TRUNC, CTX)
    run(ops.write, info.fh, 0, b"new!")
    run(ops.release, info.fh)
    snaps = run(ops.lookup, ROOT_INODE, b".snapshots", CTX).st_ino
    point = run(ops.lookup, snaps, f"@{commit}".encode(), CTX).st_ino
    old = run(ops.lookup, point, b"f", CTX).st_ino
    with pytest.raises(pyfuse3.FUSEError) as refused:
        run(ops.open, old, os.O_RDWR, CTX)
    assert refused.value.errno == errno.EROFS
    fh = run(ops.open, old, os.O_RDONLY, CTX).fh
    assert run(ops.read, fh, 0, 100) == b"old"
    with pytest.raises(pyfuse3.FUSEError) as refused:
        run(ops.write, fh, 0, b"x")
    assert refused.value.errno == errno.EROFS
    head = ops.repo.history.last_commit()
    run(ops.flush, fh)
    run(ops.release, fh)
    assert ops.repo.history.last_commit() == head, "releasing a version handle commits nothing"
    run(ops.forget, [(snaps, 1), (point, 1), (old, 1)])
    assert ops.virtual.size() == 0


def test_hard_links_rename_and_unlink_keep_the_tree_whole(ops):
    """Link counts, ``parents`` and the names agree after links, renames over files and
    directories, and unlinks of open files (the fixture's fsck checks the invariants)."""
    a = run(ops.mkdir, ROOT_INODE, b"a", 0o755, CTX).st_ino
    b = run(ops.mkdir, ROOT_INODE, b"b", 0o755, CTX).st_ino
    f = create(ops, a, b"f", b"data")
    run(ops.link, f, b, b"g", CTX)
    assert run(ops.getattr, f, CTX).st_nlink == 2
    run(ops.rename, a, b"f", b, b"g", 0, CTX)  # the same inode: nothing changes (POSIX)
    create(ops, b, b"h", b"other")
    open_fh = run(ops.open, f, os.O_RDONLY, CTX).fh
    run(ops.rename, a, b"f", b, b"h", 0, CTX)  # replaces h
    run(ops.unlink, b, b"g", CTX)
    assert run(ops.getattr, f, CTX).st_nlink == 1
    run(ops.unlink, b, b"h", CTX)
    assert run(ops.read, open_fh, 0, 10) == b"data", "an unlinked open file stays readable"
    run(ops.release, open_fh)
    run(ops.rename, ROOT_INODE, b"a", b, b"a", 0, CTX)
    assert run(ops.getattr, b, CTX).st_nlink == 3
    with pytest.raises(pyfuse3.FUSEError) as e:
        run(ops.rmdir, ROOT_INODE, b"b", CTX)
    assert e.value.errno == errno.ENOTEMPTY
    run(ops.rmdir, b, b"a", CTX)
    run(ops.forget, [(a, 1), (b, 1), (f, 1)])
