"""fsck checks the tree's invariants (index/keys.py) and mends those with one right answer.

Each test breaks the index the way a bug or a bad sector would — a ``parents`` record
lost, a link count off, an inode with no name, a registry index entry gone — and checks
that ``chunkfs fsck`` names it and exits 6 (``CorruptData.exit_code``), that ``--repair``
mends it, and that nothing the user stored is lost on the way.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers.cli import chunkfs
from helpers.repos import small_settings

from chunkfs.errors import CorruptData
from chunkfs.index import keys
from chunkfs.ops import treecheck
from chunkfs.repo import Repository
from chunkfs.types import ROOT_INODE


def read_file(repo: Repository, path: str) -> bytes:
    content = repo.file_content(repo.ns.resolve(path))
    return content.read(0, content.size)


def fsck(repo_path, *args):
    """(exit code, report) of ``chunkfs fsck --json``: 0, or ``CorruptData.exit_code`` for damage left."""
    out = chunkfs("fsck", "--repo", repo_path, "--json", *args, expect=None)
    return out.returncode, json.loads(out.stdout)


@pytest.fixture
def tree(tmp_path):
    """A repository with a hard-linked file and a checkpoint directory; closed for the CLI."""
    path = tmp_path / "repo"
    repo = Repository.create(path, settings=small_settings())
    ns = repo.ns
    run = ROOT_INODE
    for name in (b"llama", b"8b", b"base", b"r1"):
        run = ns.mkdir(run, name, 0o755, 0, 0)[0]
    ckpt = ns.mkdir(run, b"checkpoint-100", 0o755, 0, 0)[0]
    f = ns.mknod(ckpt, b"model.bin", 0o644, 0, 0)[0]
    content = repo.file_content(f)
    content.write(0, os.urandom(200_000))
    repo.commit_file(f, content)
    ns.link(f, run, b"model-copy.bin")
    inodes = {"run": run, "ckpt": ckpt, "file": f}
    data = read_file(repo, "/llama/8b/base/r1/checkpoint-100/model.bin")
    assert treecheck.check(repo) == []
    repo.close()
    return path, inodes, data


def damage(path, fn):
    with Repository(path) as repo, repo.index.write() as t:
        fn(t)


def kinds(report):
    return sorted({p["kind"] for p in report["problems"]})


def repaired_and_clean(path, data):
    rc, report = fsck(path, "--repair")
    assert rc == 0 and all(p["repaired"] for p in report["problems"]), report
    rc, report = fsck(path)
    assert rc == 0 and report["problems"] == [], report
    with Repository(path, writable=False) as repo:
        assert read_file(repo, "/llama/8b/base/r1/checkpoint-100/model.bin") == data
        assert [c.path for c in repo.registry.find(model="llama")] == ["/llama/8b/base/r1/checkpoint-100"]


def test_lost_parents_record_and_wrong_link_count(tree):
    path, ino, data = tree

    def fn(t):
        t.parent_delete(ino["file"], ino["run"], b"model-copy.bin")
        rec = t.inode_get(ino["file"])
        rec.nlink = 5
        t.inode_put(ino["file"], rec)

    damage(path, fn)
    rc, report = fsck(path)
    assert rc == CorruptData.exit_code and kinds(report) == ["link_count", "parent_record"], report
    assert any("model-copy.bin" in p["message"] for p in report["problems"])
    repaired_and_clean(path, data)
    with Repository(path, writable=False) as repo:
        assert repo.ns.getattr(ino["file"]).nlink == 2
        assert sorted(repo.ns.names_of(ino["file"])) == [(ino["run"], b"model-copy.bin"), (ino["ckpt"], b"model.bin")]


def test_nameless_inode_goes_to_lost_and_found(tree):
    """An inode that still counts links but that no entry names is linked into /lost+found
    under its number, never dropped: its bytes stay readable."""
    path, ino, data = tree
    damage(path, lambda t: t.link_delete(ino["run"], b"model-copy.bin", ino["file"]) or
           t.link_delete(ino["ckpt"], b"model.bin", ino["file"]))  # fmt: skip
    rc, report = fsck(path)
    assert rc == CorruptData.exit_code and kinds(report) == ["unreachable"], report
    rc, report = fsck(path, "--repair")
    assert rc == 0, report
    with Repository(path, writable=False) as repo:
        assert read_file(repo, f"/lost+found/{ino['file']}") == data
        assert repo.ns.getattr(ino["file"]).nlink == 1
    rc, report = fsck(path)
    assert rc == 0 and report["problems"] == []


def test_dangling_entry_is_dropped(tree):
    path, ino, data = tree
    damage(path, lambda t: t.dirent_put(ino["run"], b"ghost", 999_999))
    rc, report = fsck(path)
    assert rc == CorruptData.exit_code and "dangling_entry" in kinds(report), report
    repaired_and_clean(path, data)


def test_registry_index_entry_lost(tree):
    """One ``ckpt_ino`` entry per record: a record nothing points to is found and re-keyed."""
    path, ino, data = tree
    damage(path, lambda t: t._delete("ckpt_ino", keys.u64(ino["ckpt"])))
    rc, report = fsck(path)
    assert rc == CorruptData.exit_code and kinds(report) == ["registry"], report
    repaired_and_clean(path, data)


def test_directory_with_two_names_is_reported_not_guessed(tree):
    path, ino, _data = tree
    damage(path, lambda t: t.dirent_put(ROOT_INODE, b"again", ino["ckpt"]))
    rc, report = fsck(path, "--repair")
    assert rc == CorruptData.exit_code
    left = [p for p in report["problems"] if not p["repaired"]]
    assert [p["kind"] for p in left] == ["directory_links"], report
