"""A damaged index: every tool says so and what to run; ``chunkfs index rebuild`` mends it.

A truncated ``data.mdb`` used to crash every tool with SIGBUS (a mount daemon exited
with -7 and an empty log); a deleted one made ``mount`` suggest ``chunkfs init``.
Now the index file is checked before LMDB maps it (index/check.py), and the rebuild
keeps the damaged copy, salvages what can still be read, and indexes every pack again.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from helpers.cli import chunkfs, cli_json

from chunkfs.errors import CorruptData, NotFound
from chunkfs.index import check
from chunkfs.repo import Repository

MiB = 1 << 20

KIND = {"truncated": CorruptData, "meta pages": CorruptData, "missing": NotFound}
"""What each damage is to the tools that open the index (index/check.py)."""


@pytest.fixture
def filled(tmp_path) -> tuple[Path, Path]:
    """A repository with a tree of files imported, and the source tree."""
    repo, src = tmp_path / "repo", tmp_path / "src"
    Repository.create(repo).close()
    rng = random.Random(5)
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}" / f"f{f}.bin").write_bytes(rng.randbytes(rng.randrange(1, 300_000)))
    chunkfs("import", "--repo", repo, src, "/src")
    return repo, src


def damage(index: Path, how: str) -> None:
    data = index / "data.mdb"
    if how == "truncated":
        os.truncate(data, data.stat().st_size // 2)
    elif how == "meta pages":
        with open(data, "r+b") as f:
            f.write(random.Random(1).randbytes(8192))
    elif how == "missing":
        data.unlink()
    elif how == "garbage pages":  # every page but the two meta pages
        size = data.stat().st_size
        with open(data, "r+b") as f:
            f.seek(8192)
            f.write(random.Random(2).randbytes(size - 8192))


@pytest.mark.parametrize("how", ["truncated", "meta pages", "missing"])
def test_every_tool_names_the_damage_and_rebuild_mends_it(filled, tmp_path, how):
    repo, src = filled
    with Repository(repo, writable=False) as r:
        repo_id = r.index.repo_id
    damage(repo / "index", how)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for args in (("mount", repo, mnt), ("fsck", "--repo", repo), ("stats", "--repo", repo),
                 ("log", "--repo", repo, "/src/d0/f0.bin"), ("export", "--repo", repo, "/src", tmp_path / "out"),
                 ("gc", "--repo", repo, "--dry-run")):  # fmt: skip
        done = chunkfs(*args, expect=KIND[how])  # the mount daemon's error keeps its kind; a signal would be negative
        assert "index rebuild" in done.stderr and "chunkfs init" not in done.stderr, done.stderr
        assert {"truncated": "truncated", "meta pages": "not an LMDB index", "missing": "missing"}[how] in done.stderr
    assert not os.path.ismount(mnt)

    result = cli_json("index", "rebuild", "--repo", repo)
    assert result["index_damaged"] and result["chunks"] > 0 and result["missing_chunks"] == 0
    with Repository(repo, writable=False) as r:  # the id its packs and locations carry (store/backends/ownership.py)
        assert r.index.repo_id == repo_id
    if how != "missing":
        assert Path(result["moved_to"]).is_dir(), "the damaged index is kept"
    # usable again: the chunks are indexed, so importing the same tree stores nothing new
    stats = cli_json("stats", "--repo", repo)
    chunkfs("import", "--repo", repo, src, "/again")
    assert cli_json("stats", "--repo", repo)["unique_bytes"] == stats["unique_bytes"]
    chunkfs("fsck", "--repo", repo)
    chunkfs("mount", repo, mnt)
    try:
        assert (mnt / "again" / "d1" / "f3.bin").read_bytes() == (src / "d1" / "f3.bin").read_bytes()
    finally:
        chunkfs("umount", mnt)


def test_garbage_in_the_pages_is_found_by_fsck_and_rebuild_salvages_nothing_wrong(filled):
    repo, src = filled
    damage(repo / "index", "garbage pages")
    done = chunkfs("fsck", "--repo", repo, expect=CorruptData)
    assert "index rebuild" in done.stderr, done.stderr
    assert cli_json("index", "rebuild", "--repo", repo)["index_damaged"]
    done = chunkfs("fsck", "--repo", repo, expect=None)
    assert done.returncode in (0, CorruptData.exit_code), done.stderr  # runs: what it finds lost is reported
    chunkfs("import", "--repo", repo, src, "/again")


def test_rebuild_salvages_a_readable_index_record_for_record(filled, tmp_path):
    """The salvage path itself, on an index that is still readable: nothing is lost on the way."""
    from chunkfs.index import Index

    repo, _ = filled
    with Repository(repo, writable=False) as r:
        files = sorted(r.ns.readdir(r.ns.resolve("/src/d2")))
        last = r.history.last_commit()
    fresh = Index(tmp_path / "fresh", create=True)
    try:
        counts = fresh.salvage_from(repo / "index", tmp_path / "scratch")
    finally:
        fresh.close()
    assert counts["inodes"] == 1 + 3 + 60 + 1 and counts["manifests"] == 60
    os.rename(repo / "index", tmp_path / "old-index")
    os.rename(tmp_path / "fresh", repo / "index")
    with Repository(repo, writable=False) as r:
        assert sorted(r.ns.readdir(r.ns.resolve("/src/d2"))) == files
        assert r.history.last_commit() == last


def test_an_index_growing_under_the_check_is_not_taken_for_a_truncated_one(tmp_path, monkeypatch):
    """Another process commits between the check's look at the size and at the meta pages (a DCP
    rank opening the repository while the mount daemon writes): the check used to take the size
    first and call the grown index truncated; it must take the meta pages first."""
    repo = Repository.create(tmp_path / "repo")
    data = tmp_path / "repo" / "index" / "data.mdb"
    real_open = open

    def open_after_a_commit(path, *args, **kwargs):
        if Path(path) == data:
            for i in range(100):  # the other writer's commits, just as the file is opened
                repo.ns.mkdir(1, f"d{i}-{'x' * 200}".encode(), 0o755, 0, 0)
        return real_open(path, *args, **kwargs)

    try:
        before = data.stat().st_size
        monkeypatch.setattr(check, "open", open_after_a_commit, raising=False)
        check.check_file(data.parent)
        assert data.stat().st_size > before, "the commits grew the index meanwhile"
    finally:
        monkeypatch.undo()
        repo.close()
