"""Races in the store and the open-file table, each forced at its bad moment.

These were found by reading every lock of the code for docs/concurrency.md; each test puts
the second party exactly into the window the first one leaves open, so it fails (or hangs,
bounded by a timeout) on the code before the fix instead of once in a million runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from helpers.repos import small_settings

from chunkfs.engine import codec
from chunkfs.errors import NoSpace
from chunkfs.index import env as index_env
from chunkfs.index.env import Index
from chunkfs.openfiles import OpenFiles
from chunkfs.repo import Repository
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.pack.files import PackWriter
from chunkfs.types import ROOT_INODE, PackState


@pytest.fixture
def repo(tmp_path):
    r = Repository.create(tmp_path / "repo", settings=small_settings())
    yield r
    r.close()


def test_a_chunk_appended_just_before_a_seal_is_indexed_by_the_seal(repo, monkeypatch):
    """``append`` writes the record, then registers the chunk as pending. A seal in between
    (gc's seal request, a run completing) must index it anyway: a sealed pack with a chunk the
    index does not know is dead space to gc, which would repack it away — and the late index
    entry would then point into a deleted pack."""
    data = os.urandom(10_000)
    chunk = codec.chunk_id(data)
    at_seal = {}
    append = PackWriter.append

    def append_then_seal(writer, *args):
        entry = append(writer, *args)
        if not at_seal:
            repo.packs.seal_all()  # what another thread may do right here
            with repo.index.read() as t:
                at_seal["loc"] = t.chunk_get(chunk)
                at_seal["state"] = t.pack_get(writer.pack).state
        return entry

    monkeypatch.setattr(PackWriter, "append", append_then_seal)
    loc = repo.packs.append(chunk, data, len(data), 0, "/m/run")
    assert at_seal["state"] == PackState.SEALED
    assert at_seal["loc"] is not None, "the seal left a chunk of its pack out of the index"
    assert at_seal["loc"].pack == loc.pack
    repo.packs.flush()
    assert repo.chunks.get(chunk, len(data)) == data


def test_a_read_never_uses_a_descriptor_closed_under_it(tmp_path, monkeypatch):
    """A pack deleted (or its descriptor evicted) while a ``pread`` on it is about to run: the
    descriptor must stay open until that read is done — a closed number can be reused at once
    by another open, and the read would return another file's bytes."""
    backend = LocalBackend(tmp_path)
    backend.put("packs/a.pack", b"A" * 100)
    backend.put("packs/b.pack", b"B" * 100)
    assert backend.get_range("packs/a.pack", 0, 4) == b"AAAA"
    pread = os.pread
    raced = []

    def pread_after_a_delete(fd, n, off):
        if not raced:
            raced.append(True)
            backend.forget("packs/a.pack")  # another thread deletes the pack (a tier move finished)
            backend.get_range("packs/b.pack", 0, 1)  # and opens another: the freed number comes back
        return pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread_after_a_delete)
    assert backend.get_range("packs/a.pack", 10, 4) == b"AAAA"
    monkeypatch.setattr(os, "pread", pread)
    assert backend.get_range("packs/b.pack", 0, 4) == b"BBBB"
    backend.close()


COLLECT_UNDER_THE_LOCK = '''
import gc, sys
from chunkfs.repo import Repository
from chunkfs.store.pack.store import NO_WINDOW
repo = Repository(sys.argv[1])
class Owner:
    pass
owner = Owner()
repo.chunks.open_window(owner)
assert repo.packs._floor() != NO_WINDOW
with repo.packs._lock:  # what any allocation inside such a block may do: collect the owner
    owner = None
    gc.collect()
assert repo.packs._floor() == NO_WINDOW, "the collected window is gone"
repo.close()
'''


def test_a_collected_window_does_not_deadlock_its_own_thread(repo):
    """An open file's gc write window ends when its content object is collected. The collector
    can run inside any ``with PackStore._lock`` block of the same thread, and that lock is not
    reentrant: the finalizer must not take it. (In a child process: a deadlock there is a
    timeout here, not a hung suite.)"""
    path = repo.path
    repo.close()
    try:
        done = subprocess.run([sys.executable, "-c", COLLECT_UNDER_THE_LOCK, str(path)],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the finalizer deadlocked on PackStore._lock")
    assert done.returncode == 0, done.stderr


class _HookedLock:
    """``OpenFiles._lock`` that runs ``hook`` once, when the test's thread first releases it."""

    def __init__(self, inner, hook) -> None:
        self.inner, self.hook, self.thread = inner, hook, threading.current_thread()

    def __enter__(self):
        return self.inner.__enter__()

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)
        if self.hook is not None and threading.current_thread() is self.thread:
            hook, self.hook = self.hook, None
            hook()


def test_an_open_during_the_last_release_joins_the_table_entry(repo, monkeypatch):
    """The last ``release`` commits with the entry still in the table (no handles), then drops
    it. An ``open`` arriving meanwhile must count its handle on the entry in the same hold of
    the table lock that finds it: otherwise the release drops the entry in between, the new
    handle writes into a content nobody else sees, and the next open loads a second one."""
    files = OpenFiles(repo)
    fh, ino, _ = files.create(ROOT_INODE, b"f", 0o644, 0, 0)
    files.write(fh, 0, b"x")
    committing, resume = threading.Event(), threading.Event()
    commit = repo.commit_file

    def slow_commit(*args, **kwargs):
        committing.set()
        resume.wait(10)
        return commit(*args, **kwargs)

    monkeypatch.setattr(repo, "commit_file", slow_commit)
    releaser = threading.Thread(target=files.release, args=(fh,))
    releaser.start()
    assert committing.wait(10)
    entry = files._by_ino[ino]

    def let_the_release_finish():
        resume.set()
        for _ in range(200):  # until it drops the entry (it must not, once we hold a handle)
            if files._by_ino.get(ino) is not entry:
                return
            time.sleep(0.01)

    files._lock = _HookedLock(files._lock, let_the_release_finish)
    handle = files.open(ino, writer_uid=0)
    files._lock = files._lock.inner
    releaser.join(10)
    assert files._by_ino.get(ino) is files._entry(handle), "the new handle's entry left the table"
    files.release(handle)


def test_a_full_index_map_is_reported_and_grown_at_the_next_open(tmp_path, monkeypatch):
    """The map is never resized under other threads' read transactions: a full map is a
    NoSpace that says what to do, and the next open doubles it."""
    monkeypatch.setattr(index_env, "INITIAL_MAP_SIZE", 1 << 20)
    index = Index(tmp_path / "index", create=True)
    with pytest.raises(NoSpace) as full:
        for i in range(10_000):
            with index.write() as t:
                t.restore_record("xattrs", i.to_bytes(8, "big") + b"x", os.urandom(1000))
    assert "unmount and mount again" in str(full.value)
    index.close()
    index = Index(tmp_path / "index")
    assert index.env.info()["map_size"] > 1 << 20
    with index.write() as t:
        t.restore_record("xattrs", b"after-growth", os.urandom(1000))
    index.close()


def test_a_closed_handle_keeps_no_pack_descriptor_open(make_repo, repo_path):
    """Pack descriptors cached for reads were closed only by a writable handle: every read-only
    open (each CLI command, each export in a long-lived process) left one per pack it read."""
    repo = make_repo()
    ino, _ = repo.ns.mknod(ROOT_INODE, b"f", 0o100644, 0, 0)
    content = repo.file_content(ino)
    content.write(0, os.urandom(3 << 20))
    repo.commit_file(ino, content)
    repo.close()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _ in range(3):
        with Repository(repo_path, writable=False) as reader:
            assert len(reader.file_content(ino).read(0, 3 << 20)) == 3 << 20
    assert open_fds() == before
