"""Snapshot entries' inode numbers live only while the kernel (or an open listing) refers to them.

The FUSE adapter is driven here without a mount, the way the kernel would: LOOKUPs hand out
references, FORGETs give them back. (The entries' contents are tested through real mounts
in test_versions.py.)"""

from __future__ import annotations

import trio
from helpers.gc import write

from chunkfs.fs.operations import ChunkfsOperations
from chunkfs.fs.virtual import SNAPSHOTS, SNAPSHOTS_INO
from chunkfs.repo import Repository
from chunkfs.types import ROOT_INODE


def test_forgotten_snapshot_entries_are_dropped_and_found_again(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    try:
        for i in range(20):
            write(repo, f"/run/f{i}", f"file {i}".encode())
        repo.history.tag("t1")
        ops = ChunkfsOperations(repo)

        async def browse() -> list[int]:
            snapshots = await ops.lookup(ROOT_INODE, SNAPSHOTS)
            assert snapshots.st_ino == SNAPSHOTS_INO
            root = (await ops.lookup(SNAPSHOTS_INO, b"t1")).st_ino
            run = (await ops.lookup(root, b"run")).st_ino
            files = [(await ops.lookup(run, f"f{i}".encode())).st_ino for i in range(20)]
            return [root, run, *files]

        async def scenario() -> None:
            first = await browse()
            assert ops.virtual.size() == 22
            again = await browse()  # looked up twice: two references each
            assert again == first
            await ops.forget([(ino, 1) for ino in first])
            assert ops.virtual.size() == 22, "one reference each is left"
            await ops.forget([(ino, 1) for ino in first])
            assert ops.virtual.size() == 0, "forgotten entries stay in the table"

            third = await browse()  # found again under new numbers, with the same content
            assert set(third).isdisjoint(first)
            attrs = await ops.getattr(third[-1])
            assert attrs.st_size == len(b"file 19")
            await ops.forget([(ino, 1) for ino in third])
            assert ops.virtual.size() == 0

            root = (await ops.lookup(SNAPSHOTS_INO, b"t1")).st_ino
            run = (await ops.lookup(root, b"run")).st_ino
            listing = await ops.opendir(run, None)
            assert ops.virtual.size() == 22, "an open listing keeps its entries' numbers"
            await ops.forget([(root, 1)])
            assert ops.virtual.size() == 21
            await ops.releasedir(listing)
            assert ops.virtual.size() == 1, "the listed entries go with the listing"
            await ops.forget([(run, 1)])
            assert ops.virtual.size() == 0

        trio.run(scenario)
        ops.close()
    finally:
        repo.close()
