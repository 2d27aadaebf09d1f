"""``namespace.history`` through the library: points in time, the tree as of a commit, logs of
removed paths, tags, in-place restore of trees, diff, and what a historic lookup costs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from chunkfs.errors import AlreadyExists, InvalidArgument, NotFound
from chunkfs.index import Txn
from chunkfs.namespace.views import CommitView
from chunkfs.ops import diff as diffop
from chunkfs.ops import restore as restoreop
from chunkfs.ops import transfer
from chunkfs.repo import Repository


def put(repo: Repository, tmp_path: Path, path: str, data: bytes) -> int:
    """Write ``data`` as repository file ``path`` (a new version if it exists); its commit."""
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    transfer.import_tree(repo, src, path)
    return repo.history.last_commit()


def read(repo: Repository, path: str, commit: int | None = None) -> bytes:
    view = CommitView(repo.history, commit if commit is not None else repo.history.last_commit())
    ino = view.resolve(path)
    content = repo.content_of(view.extents(ino))
    return content.read(0, content.size)


def test_points_in_time(repo, tmp_path):
    c1 = put(repo, tmp_path, "/f", b"one")
    time.sleep(0.02)
    middle = datetime.now(UTC)
    time.sleep(0.02)
    c2 = put(repo, tmp_path, "/f", b"two")
    h = repo.history
    assert h.resolve_point(str(c1)) == h.resolve_point(f"@{c1}") == c1
    assert h.resolve_point("@" + middle.isoformat()) == c1
    assert h.resolve_point("@" + middle.isoformat().replace("+00:00", "Z")) == c1
    assert h.resolve_point(middle.astimezone().replace(tzinfo=None).isoformat()) == c1  # local time
    assert h.resolve_point("@2999-01-01T00:00Z") == h.last_commit() >= c2
    h.tag("t", c1)
    assert h.resolve_point("t") == c1
    for bad in ("@0", "0", str(h.last_commit() + 1), "@1970-01-02T00:00Z", "nope", "@t"):
        with pytest.raises(NotFound):
            h.resolve_point(bad)
    assert read(repo, "/f", c1) == b"one" and read(repo, "/f", c2) == b"two"


def test_tags(repo, tmp_path):
    c = put(repo, tmp_path, "/f", b"x")
    h = repo.history
    assert h.tag("before-rotation", path="/f") == c
    with pytest.raises(AlreadyExists):
        h.tag("before-rotation")
    for bad in ("@x", "", "a/b", ".hidden", "x" * 200):
        with pytest.raises(InvalidArgument):
            h.tag(bad)
    with pytest.raises(NotFound):
        h.tag("future", c + 5)
    with pytest.raises(InvalidArgument):
        h.tag("500")  # a number names a commit
    h.tag("2026-11-30", c)  # a tag that looks like a date is still a tag
    assert h.resolve_point("2026-11-30") == c
    assert [(n, cc, p) for n, cc, _, p in h.tags()] == [("2026-11-30", c, ""), ("before-rotation", c, "/f")]
    h.delete_tag("before-rotation")
    with pytest.raises(NotFound):
        h.delete_tag("before-rotation")


def test_tree_as_of_each_commit_after_rename_and_remove(repo, tmp_path):
    repo.ns.mkdir(1, b"run", 0o755, 0, 0)
    c_a = put(repo, tmp_path, "/run/a", b"A1")
    c_a2 = put(repo, tmp_path, "/run/a", b"A2")
    run = repo.ns.resolve("/run")
    repo.ns.rename(run, b"a", run, b"b")
    c_mv = repo.history.last_commit()
    repo.ns.unlink(run, b"b")
    c_rm = repo.history.last_commit()
    h = repo.history
    names = lambda c: [n for n, _ in h.readdir_at(run, c)]
    assert names(c_a) == [b"a"] and names(c_mv) == [b"b"] and names(c_rm) == []
    assert read(repo, "/run/a", c_a) == b"A1" and read(repo, "/run/a", c_a2) == b"A2"
    assert read(repo, "/run/b", c_mv) == b"A2"
    with pytest.raises(NotFound):
        h.resolve_at("/run/a", c_mv)
    with pytest.raises(NotFound):
        h.resolve_at("/run/b", c_rm)

    log_a = h.log("/run/a")
    assert [e.event for e in log_a] == ["removed", "written", "written", "created"]
    assert log_a[0].commit == c_mv and [e.size for e in log_a[1:3]] == [2, 2]
    assert all(len(e.blake3) == 64 for e in log_a[1:3]) and log_a[1].blake3 != log_a[2].blake3
    log_b = h.log("/run/b")
    assert [(e.event, e.commit, e.size) for e in log_b] == [("removed", c_rm, 0), ("renamed", c_mv, 2)]
    assert log_b[1].blake3 == log_a[1].blake3, "the content the rename brought"
    with pytest.raises(InvalidArgument):
        h.log("/")
    with pytest.raises(NotFound):
        h.log("/run/never")


def test_log_and_restore_a_removed_tree(repo, tmp_path):
    repo.ns.mkdir(1, b"r1", 0o755, 0, 0)
    r1 = repo.ns.resolve("/r1")
    repo.ns.mkdir(r1, b"checkpoint-500", 0o755, 0, 0)
    put(repo, tmp_path, "/r1/checkpoint-500/model.bin", b"m" * 1000)
    put(repo, tmp_path, "/r1/checkpoint-500/state.json", b"{}")
    tag = repo.history.tag("before")
    ck = repo.ns.resolve("/r1/checkpoint-500")
    for name in (b"model.bin", b"state.json"):
        repo.ns.unlink(ck, name)
    repo.ns.rmdir(r1, b"checkpoint-500")
    repo.ns.mkdir(r1, b"checkpoint-1000", 0o755, 0, 0)

    entries = repo.history.log("/r1/checkpoint-500")
    assert entries[0].event == "removed" and entries[0].path == "/r1/checkpoint-500"
    assert {(e.event, e.path) for e in entries} >= {
        ("created", "/r1/checkpoint-500/model.bin"),
        ("removed", "/r1/checkpoint-500/model.bin"),
        ("created", "/r1/checkpoint-500"),
    }
    # a file below a removed directory has a log of its own
    file_log = repo.history.log("/r1/checkpoint-500/model.bin")
    assert file_log[0].event == "removed" and any(e.size == 1000 for e in file_log)

    result = restoreop.restore_in_place(repo, "/r1/checkpoint-500", tag)
    assert result.restored == 3 and result.bytes == 1002  # the directory and its two files
    assert result.rewritten == [], "new inodes: nothing cached anywhere"
    assert read(repo, "/r1/checkpoint-500/model.bin") == b"m" * 1000
    assert [n for n, _, _ in repo.ns.readdir(r1)] == [b"checkpoint-1000", b"checkpoint-500"]
    again = restoreop.restore_in_place(repo, "/r1/checkpoint-500", tag)
    assert again.restored == 0 and again.unchanged == 2

    out = tmp_path / "copy"
    restoreop.restore_copy(repo, "/r1/checkpoint-500", tag, out, lambda n: None)
    assert (out / "model.bin").read_bytes() == b"m" * 1000


def test_restore_in_place_is_a_new_version_sharing_chunks(repo, tmp_path):
    c1 = put(repo, tmp_path, "/latest.pt", bytes(range(256)) * 4096)
    put(repo, tmp_path, "/latest.pt", b"z" * 100)
    before = len(repo.history.log("/latest.pt"))
    result = restoreop.restore_in_place(repo, "/latest.pt", c1)
    assert result.rewritten == [("/latest.pt", 256 * 4096)], "same inode, new size: the CLI tells the mount"
    log = repo.history.log("/latest.pt")
    assert len(log) == before + 1 and log[0].commit > c1
    assert log[0].blake3 == next(e.blake3 for e in log if e.commit == c1)
    assert repo.ns.extents(repo.ns.resolve("/latest.pt")) == CommitView(repo.history, c1).extents(
        repo.ns.resolve("/latest.pt")
    ), "no bytes copied: the same chunks"
    with pytest.raises(NotFound):
        restoreop.restore_in_place(repo, "/", c1)


def test_historic_lookup_is_bounded(repo, tmp_path, monkeypatch):
    """A path as of any commit costs one entry seek per component and one version seek per
    inode, however many versions and removals came since."""
    parts = ["a", "b", "c", "d", "e"]
    path = ""
    for p in parts:
        repo.ns.mkdir(repo.ns.resolve(path or "/"), p.encode(), 0o755, 0, 0)
        path += "/" + p
    first = put(repo, tmp_path, path + "/f", b"0")
    for k in range(1, 60):
        put(repo, tmp_path, path + "/f", str(k).encode())
        if k % 10 == 0:  # churn in every directory on the way
            for depth in range(len(parts)):
                d = repo.ns.resolve("/" + "/".join(parts[:depth]) or "/")
                repo.ns.mkdir(d, f"x{k}".encode(), 0o755, 0, 0)
                repo.ns.rmdir(d, f"x{k}".encode())

    calls = {"dirent_at": 0, "version_at": 0}
    for name in calls:
        original = getattr(Txn, name)

        def counting(self, *a, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *a)

        monkeypatch.setattr(Txn, name, counting)

    for commit in (first, repo.history.last_commit()):
        for k in calls:
            calls[k] = 0
        repo.history.resolve_at(path + "/f", commit)
        assert calls == {"dirent_at": len(parts) + 1, "version_at": len(parts) + 2}, (commit, calls)
    assert read(repo, path + "/f", first) == b"0"


def test_diff_names_changed_tensors(repo, tmp_path):
    rng = np.random.default_rng(1)
    a = {f"t{i}": rng.standard_normal((128, 512)).astype(np.float32) for i in range(4)}
    b = {k: v.copy() for k, v in a.items()}
    b["t1"][5, 7] = 42.0
    b["t9"] = np.ones(16, np.float32)
    del b["t3"]
    for name, tensors in (("a", a), ("b", b)):
        save_file(tensors, tmp_path / f"{name}.safetensors")
        transfer.import_tree(repo, tmp_path / f"{name}.safetensors", f"/{name}.safetensors")
    (change,) = diffop.diff(repo, diffop.Side("/a.safetensors", None), diffop.Side("/b.safetensors", None))
    got = {t.name: (t.status, t.bytes_changed) for t in change.tensors}
    diff_t1 = int(np.count_nonzero(a["t1"].view(np.uint8) != b["t1"].view(np.uint8)))
    assert got == {"t1": ("changed", diff_t1), "t3": ("removed", 128 * 512 * 4), "t9": ("added", 64)}
    assert change.tensors_unchanged == 2 and change.format == "safetensors"
    assert diffop.diff(repo, diffop.Side("/a.safetensors", None), diffop.Side("/a.safetensors", None)) == []
