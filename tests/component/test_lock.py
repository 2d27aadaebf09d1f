"""The repository lock: one writer at a time, any number of readers alongside."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers.cli import chunkfs
from helpers.repos import assert_same_file

from chunkfs.errors import Conflict
from chunkfs.ops import transfer
from chunkfs.repo import Repository

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from chunkfs.repo import Repository

    with Repository(Path(sys.argv[1])):
        print("ready", flush=True)
        sys.stdin.readline()  # hold the lock until the parent says so
    """
)


@pytest.fixture
def held_by_another_process(repo_path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=60)


@pytest.fixture
def with_file(tmp_path, repo):
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(200_000))
    transfer.import_tree(repo, src, "/data.bin")
    repo.close()
    return src


def test_second_writer_in_another_process_gets_a_one_line_conflict(
    repo_path, with_file, held_by_another_process
):
    with pytest.raises(Conflict) as e:
        Repository(repo_path)
    message = str(e.value)
    assert "\n" not in message and "in use" in message
    assert f"pid {held_by_another_process.pid}" in message


def test_readers_work_alongside_the_writer(tmp_path, repo_path, with_file, held_by_another_process):
    with Repository(repo_path, writable=False) as r:
        out = tmp_path / "out"
        transfer.export_tree(r, "/data.bin", out)
        assert_same_file(with_file, out)
    chunkfs("export", "--repo", repo_path, "/data.bin", tmp_path / "cli")  # and a reader in a third process
    assert_same_file(with_file, tmp_path / "cli")


def test_second_open_in_the_same_process_is_a_conflict_not_corruption(repo_path, with_file):
    with Repository(repo_path, writable=False):
        with pytest.raises(Conflict, match="already open in this process"):
            Repository(repo_path, writable=False)
        with pytest.raises(Conflict, match="already open in this process"):
            Repository(repo_path)  # takes the lock, then fails to open the index...
    with Repository(repo_path) as r:  # ...and gave the lock back
        assert r.writable


def test_second_writer_in_the_same_process_conflicts_and_the_lock_is_released_on_close(repo_path, repo):
    with pytest.raises(Conflict):
        Repository(repo_path)
    repo.close()
    with Repository(repo_path) as again:  # the lock died with the first handle
        assert again.writable
