"""Several processes writing one repository (repo.py: one maintainer, any number of ``shared``
writers beside it): dedup across them, packs of their own that nobody else seals or resumes,
and a maintainer that starts while a writer is mid-file and leaves its pack alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import blake3
import pytest
from helpers.cli import chunkfs
from helpers.repos import pack_path, stored_bytes

from chunkfs.errors import Conflict
from chunkfs.repo import Repository
from chunkfs.store.pack.files import PackWriter
from chunkfs.store.pack.store import PackStore
from chunkfs.types import ROOT_INODE, PackState

MiB = 1 << 20


def test_a_chunk_stored_by_one_writer_is_found_by_another(make_repo, repo_path, tmp_path):
    """Two ``chunkfs import`` processes write beside the maintainer (this process) the same bytes
    under two names: the second stores no chunk again, and both files read back."""
    data = os.urandom(3 * MiB)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(data)
    with make_repo() as maintainer:
        chunkfs("import", "--repo", repo_path, tmp_path / "a", "/a")
        once = stored_bytes(maintainer)
        assert once >= len(data)
        chunkfs("import", "--repo", repo_path, tmp_path / "b", "/b")
        assert stored_bytes(maintainer) - once < 64 * 1024, "the second writer stored the same chunks again"
        for name in ("a", "b"):
            content = maintainer.file_content(maintainer.ns.resolve(f"/{name}/model.bin"))
            assert content.read(0, len(data)) == data


HOLDER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from chunkfs.repo import Repository
    repo = Repository(Path(sys.argv[1]), shared=True)
    ino, _ = repo.ns.mknod(1, b"busy.bin", 0o100644, 0, 0)
    content = repo.file_content(ino)
    content.write(0, bytes(range(256)) * 8192)   # 2 MiB: chunks in an open pack of this process
    repo.chunks.packs.flush()
    print(ino, flush=True)
    sys.stdin.readline()                          # the test opens the maintainer meanwhile
    content.write(2 << 20, b"tail" * 1024)
    repo.commit_file(ino, content)
    repo.close()
    print("committed", flush=True)
""")


def test_a_maintainer_opening_mid_file_leaves_the_writers_open_pack_alone(make_repo, repo_path):
    """A maintainer (a mount starting) recovers the open packs of dead processes; a live writer's
    open pack carries its ``flock``, so the maintainer neither seals it nor resumes it, and the
    writer finishes its file into it."""
    make_repo().close()
    path = repo_path
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ino = int(holder.stdout.readline())
        with Repository(path) as maintainer:  # recover() runs here
            with maintainer.index.read() as t:
                open_packs = [(p, i) for p, i in t.packs() if i.state == PackState.OPEN]
            assert open_packs, "the writer's pack was sealed under it"
            pack, info = open_packs[0]
            with pytest.raises(Conflict):  # nor can anyone else take it over
                PackWriter(pack, pack_path(maintainer, pack), info.group, resume_size=info.size)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "committed"
        assert holder.wait(30) == 0
    finally:
        holder.kill()
    with Repository(path, writable=False) as repo:
        content = repo.file_content(ino)
        assert content.read(0, 2 << 20) == bytes(range(256)) * 8192
        assert content.read(2 << 20, 4096) == b"tail" * 1024


def test_a_shared_writer_keeps_an_inode_that_loses_its_last_name(make_repo, repo_path):
    """A shared writer cannot know whether the mount holds an inode open, so unlinking its last
    name keeps the inode; the maintainer drops it at its next open."""
    make_repo().close()
    with Repository(repo_path, shared=True) as writer:
        ino, _ = writer.ns.mknod(ROOT_INODE, b"gone.bin", 0o100644, 0, 0)
        writer.ns.unlink(ROOT_INODE, b"gone.bin")
        with writer.index.read() as t:
            assert t.inode_get(ino) is not None
    with Repository(repo_path) as maintainer, maintainer.index.read() as t:
        assert t.inode_get(ino) is None


def test_recover_never_undoes_a_pack_its_live_writer_is_sealing(make_repo, monkeypatch):
    """A writer seals its pack (footer written, fsync'd) and only then records it sealed in the
    index; a maintainer's ``recover`` that looks in between must not take the pack for a dead
    writer's and cut it back to its last indexed size (the chunks appended since would be lost):
    the writer keeps its file locked until the index says sealed."""
    repo = make_repo()
    other = PackStore(repo.index, repo.hot, repo.settings.packs)  # another process's view of the packs
    first, later = os.urandom(100_000), os.urandom(100_000)
    repo.packs.append(blake3.blake3(first).digest(), first, len(first), 0, "/g")
    repo.packs.flush()  # indexed: the pack's size in the index covers `first` only
    repo.packs.append(blake3.blake3(later).digest(), later, len(later), 0, "/g")
    looked: list = []
    real_seal = PackWriter.seal

    def seal_then_look(writer: PackWriter) -> int:
        size = real_seal(writer)
        if not looked:  # between the footer and the index transaction (once: recover seals too)
            looked.append(None)
            looked[0] = other.recover()
        return size

    monkeypatch.setattr(PackWriter, "seal", seal_then_look)
    repo.packs.seal_all()
    monkeypatch.undo()
    assert looked == [[]], "recover took a live writer's pack"
    for data in (first, later):
        stored, _ = repo.packs.read_stored(blake3.blake3(data).digest())
        assert stored == data
