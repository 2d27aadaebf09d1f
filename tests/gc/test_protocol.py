"""The index side of the gc protocol: encodings, resurrection at commit, leases, one gc at a time."""

from __future__ import annotations

import os

import pytest
from helpers.gc import content, read, rmtree, write

from chunkfs.engine import codec
from chunkfs.errors import Conflict
from chunkfs.index import keys
from chunkfs.ops import gc, retention
from chunkfs.store.pack.store import NO_WINDOW
from chunkfs.types import ChunkLocation, Extent


def test_encodings_round_trip():
    loc = ChunkLocation(b"p" * 16, 123, 456, 789, 1)
    assert keys.decode_condemned(keys.encode_condemned(7, 99, loc)) == (7, 99, loc)
    assert keys.decode_lease(keys.encode_lease(42, NO_WINDOW, 5, "host")) == (42, NO_WINDOW, 5, "host")
    assert {"condemned", "gc_leases"} <= set(keys.DATABASES)


def test_commit_resurrects_a_condemned_chunk(make_repo):
    repo = make_repo()
    x = content(9)
    write(repo, "/d/f", x)
    rmtree(repo, "/d/f")
    cid = codec.chunk_id(x)
    with repo.index.write() as t:
        loc = t.chunk_get(cid)
        t.condemn(cid, loc, t.gc_epoch_bump(), 0)
    with repo.index.read() as t:
        assert t.chunk_get(cid) is None and t.condemned_get(cid) is not None
    with repo.index.write() as t:
        t.manifest_put([Extent(len(x), cid)])  # a commit naming it
    with repo.index.read() as t:
        assert t.chunk_get(cid) == loc and t.condemned_get(cid) is None


def test_dead_writer_lease_is_dropped_and_live_one_reported(make_repo):
    repo = make_repo()
    write(repo, "/d/f", content(1))  # takes this process's lease
    with repo.index.write() as t:
        t.lease_put(b"d" * 16, 2**31 - 5, 0, 0, os.uname().nodename)  # a pid that does not exist
    result = gc.run(repo, None)
    pids = {lease["pid"]: lease["alive"] for lease in result.leases}
    assert pids[os.getpid()] is True and pids[2**31 - 5] is False
    with repo.index.read() as t:
        assert {pid for _, pid, _, _, _ in t.leases()} == {os.getpid()}


def test_open_writer_window_blocks_sweeping_until_it_commits(make_repo):
    repo = make_repo()
    write(repo, "/d/old", content(5))
    rmtree(repo, "/d/old")
    import stat

    ino, _ = repo.ns.mknod(repo.ns.resolve("/d"), b"new", stat.S_IFREG | 0o644, 0, 0)
    fc = repo.file_content(ino)
    fc.write(0, content(6))  # a window opens (epoch 0) and stays open
    rules = retention.rules_for(repo.settings, keep_within="0s")
    first = gc.run(repo, rules, grace_s=0)
    assert first.chunks_condemned >= 1 and first.chunks_swept == 0
    repo.commit_file(ino, fc)  # the window ends; the lease says so at once
    second = gc.run(repo, rules, grace_s=0)
    assert second.chunks_swept >= 1
    assert read(repo, "/d/new") == content(6)


def test_only_one_gc_at_a_time(make_repo):
    repo = make_repo()
    with gc._gc_lock(repo), pytest.raises(Conflict, match="another"):
        gc.run(repo, None)


def test_a_window_opened_after_the_condemnation_does_not_hold_its_chunks(make_repo):
    """A file opened for writing after gc condemned a chunk cannot have found it by dedup (it was
    out of ``chunks`` already): only windows older than the condemnation keep its bytes. Otherwise
    a training run that always has some file open would hold every condemned byte forever."""
    import stat

    repo = make_repo()
    write(repo, "/d/old", content(5))
    rmtree(repo, "/d/old")
    parent = repo.ns.resolve("/d")
    a, _ = repo.ns.mknod(parent, b"a", stat.S_IFREG | 0o644, 0, 0)
    b, _ = repo.ns.mknod(parent, b"b", stat.S_IFREG | 0o644, 0, 0)
    fa = repo.file_content(a)
    fa.write(0, content(6))  # opened before the condemnation: it holds the bytes
    rules = retention.rules_for(repo.settings, keep_within="0s")
    first = gc.run(repo, rules, grace_s=0)
    assert first.chunks_condemned >= 1 and first.chunks_swept == 0
    fb = repo.file_content(b)
    fb.write(0, content(7))  # opened after it, and still open
    repo.commit_file(a, fa)  # the older window ends
    second = gc.run(repo, rules, grace_s=0)
    assert second.chunks_swept >= 1, "what the closed window held is swept; the open newer one holds nothing"
    repo.commit_file(b, fb)
    assert read(repo, "/d/a") == content(6) and read(repo, "/d/b") == content(7)
