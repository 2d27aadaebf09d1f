"""Reads through the mount with read-ahead (engine/readahead.py) and reads that do not hold the
file's lock while they fetch chunks (openfiles.py): the bytes are the same whatever the access
pattern, a read racing an overwrite sees only written content, and a damaged chunk fails only
the reader that reaches it."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import chunkfs
from helpers.mount import mount_device

from chunkfs.fs.mount import READ_AHEAD_KB
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import HOLE

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 256 * KiB
SMALL_CHUNKS = {"chunking": {"chunk_size": CHUNK, "min_chunk": 16 * KiB}}


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def stored_chunks(mnt, name: str) -> list[tuple[int, bytes, int]]:
    """(file offset, chunk, length) of each stored extent of ``name``; the mount must be unmounted."""
    with Repository(mnt.repo, writable=False) as repo:
        extents = repo.ns.extents(repo.ns.resolve("/" + name))
    out, pos = [], 0
    for e in extents:
        if e.chunk != HOLE:
            out.append((pos, e.chunk, e.length))
        pos += e.length
    return out


def damage(mnt, chunk: bytes) -> str:
    """Flip one byte of ``chunk`` in its pack (unmounted); return the pack's name."""
    with Repository(mnt.repo, writable=False) as repo:
        with repo.index.read() as t:
            loc = t.chunk_get(chunk)
        path = repo.hot_path / pack_name(loc.pack)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    return loc.pack.hex()


def read_without_kernel_read_ahead(path, ranges) -> bytes:
    """The bytes of each (offset, size) in ``ranges``, each read with one pread, on a descriptor the
    kernel does not read ahead on (POSIX_FADV_RANDOM): the daemon sees exactly these reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return b"".join(os.pread(fd, size, offset) for offset, size in ranges)
    finally:
        os.close(fd)


def test_read_ahead_is_raised_before_the_mount_reports_ready(mnt):  # checked as soon as mount returned
    """A file takes the mount's read-ahead when it is opened: a reader started the moment
    ``chunkfs mount`` returns must already get 4 MiB, not the 128 KiB of the FUSE handshake."""
    if os.geteuid() != 0:
        pytest.skip("raising read-ahead needs root")
    bdi = Path(f"/sys/class/bdi/{mount_device(mnt.path)}/read_ahead_kb")
    assert int(bdi.read_text()) == READ_AHEAD_KB


def test_sequential_and_random_reads_return_the_same_bytes(make_mount):
    mnt = make_mount(settings=SMALL_CHUNKS)
    data = rand(40 * CHUNK + 12345, seed=1)
    (mnt / "f").write_bytes(data)
    mnt.remount()  # from the packs, not from the page cache or the open file
    assert (mnt / "f").read_bytes() == data  # the kernel's read-ahead: big sequential requests
    mnt.remount()
    step = 64 * KiB
    seq = [(o, step) for o in range(0, len(data), step)]
    assert read_without_kernel_read_ahead(mnt / "f", seq) == data  # small sequential requests
    mnt.remount()
    rng = random.Random(2)
    jumps = [(rng.randrange(len(data)), rng.randrange(1, 3 * CHUNK)) for _ in range(200)]
    got = read_without_kernel_read_ahead(mnt / "f", jumps)
    assert got == b"".join(data[o : o + n] for o, n in jumps)
    mnt.remount()
    # sequential runs broken by jumps back and forth: read-ahead starts, is cancelled, starts again
    runs = []
    for start in (30 * CHUNK, 2 * CHUNK, 17 * CHUNK + 5, 0, 39 * CHUNK):
        runs += [(o, 48 * KiB) for o in range(start, min(start + 6 * CHUNK, len(data)), 48 * KiB)]
    got = read_without_kernel_read_ahead(mnt / "f", runs)
    assert got == b"".join(data[o : o + n] for o, n in runs)


def version_bytes(version: int, words: int) -> bytes:
    """A file whose 8-byte word i is ``version << 32 | i``: any word read back says which
    version it comes from and whether it sits where it belongs."""
    return ((np.uint64(version) << np.uint64(32)) | np.arange(words, dtype=np.uint64)).astype("<u8").tobytes()


def test_read_racing_an_overwrite_sees_only_written_content(make_mount):
    mnt = make_mount(settings=SMALL_CHUNKS)
    words = 12 * CHUNK // 8
    versions = 12
    (mnt / "f").write_bytes(version_bytes(0, words))
    mnt.remount()
    done = threading.Event()
    failures: list[str] = []

    def overwrite() -> None:
        try:
            with open(mnt / "f", "r+b") as f:
                for v in range(1, versions + 1):
                    data = version_bytes(v, words)
                    for lo in range(0, len(data), MiB):  # in place, in pieces: the daemon patches chunks
                        os.pwrite(f.fileno(), data[lo : lo + MiB], lo)
                    os.fsync(f.fileno())
        except OSError as e:
            failures.append(f"writer: {e!r}")
        finally:
            done.set()

    writer = threading.Thread(target=overwrite)
    writer.start()
    passes = 0
    try:
        while not done.is_set() or passes < 3:
            fd = os.open(mnt / "f", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages go: reads reach the daemon
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                got = b"".join(os.pread(fd, 96 * KiB, o) for o in range(0, words * 8, 96 * KiB))
            finally:
                os.close(fd)
            assert len(got) == words * 8, f"pass {passes}: {len(got)} bytes of {words * 8}"
            w = np.frombuffer(got, dtype="<u8")
            index, version = w & np.uint64(0xFFFFFFFF), w >> np.uint64(32)
            wrong = np.flatnonzero((index != np.arange(words, dtype=np.uint64)) | (version > versions))
            assert wrong.size == 0, (
                f"pass {passes}: word {wrong[0]} reads {int(w[wrong[0]]):#x}: never written there"
            )
            passes += 1
    finally:
        writer.join()
    assert not failures, failures
    mnt.remount()
    assert (mnt / "f").read_bytes() == version_bytes(versions, words)


def test_damaged_chunk_fails_only_the_reader_that_reaches_it(make_mount):
    mnt = make_mount(settings=SMALL_CHUNKS)
    data = rand(8 * CHUNK, seed=3)
    (mnt / "f").write_bytes(data)
    mnt.umount()
    chunks = stored_chunks(mnt, "f")
    start, bad, length = chunks[3]
    pack = damage(mnt, bad)
    mnt.mount()
    mnt.expect_log(bad.hex())  # the reader's EIO, below

    # read up to the damaged chunk: the daemon reads it ahead, and fails, but that is no
    # concern of this reader
    step = 32 * KiB
    assert (
        read_without_kernel_read_ahead(mnt / "f", [(o, step) for o in range(0, start, step)]) == data[:start]
    )
    deadline = time.monotonic() + 30
    while f"read-ahead of chunk {bad.hex()} failed" not in mnt.log():
        assert time.monotonic() < deadline, "the damaged chunk was never read ahead"
        time.sleep(0.05)
    assert not [line for line in mnt.log().splitlines() if "ERROR" in line], (
        "a failed read-ahead is not an error"
    )

    # the reader that reaches it gets EIO, and the log names the chunk and its pack
    with pytest.raises(OSError) as e:
        read_without_kernel_read_ahead(mnt / "f", [(start, step)])
    assert e.value.errno == errno.EIO
    assert any("ERROR" in line and bad.hex() in line and pack in line for line in mnt.log().splitlines())
    # the chunks after it still read
    rest = [(o, step) for o in range(start + length, len(data), step)]
    assert read_without_kernel_read_ahead(mnt / "f", rest) == data[start + length :]


def test_snapshot_reads_are_read_ahead_too(make_mount):
    mnt = make_mount(settings=SMALL_CHUNKS)
    data = rand(8 * CHUNK, seed=4)
    (mnt / "f").write_bytes(data)
    mnt.umount()
    chunkfs("tag", "v1", "--repo", mnt.repo)
    chunks = stored_chunks(mnt, "f")
    start, bad, _ = chunks[3]
    damage(mnt, bad)
    mnt.mount()
    mnt.expect_log(bad.hex())

    step = 32 * KiB
    snapshot = mnt / ".snapshots" / "v1" / "f"
    assert read_without_kernel_read_ahead(snapshot, [(o, step) for o in range(0, start, step)]) == data[:start]
    deadline = time.monotonic() + 30
    while f"read-ahead of chunk {bad.hex()} failed" not in mnt.log():
        assert time.monotonic() < deadline, "a sequential read of a snapshot file read nothing ahead"
        time.sleep(0.05)
