"""A file larger than 50 GB through the mount: offsets past 2³², manifests of thousands of extents,
memory that does not grow with the file. Built from one repeated block, so it stores small."""

from __future__ import annotations

import os
import random
import time

import blake3
import pytest

MiB = 1 << 20
BLOCK = 64 * MiB
BLOCKS = int(os.environ.get("CHUNKFS_HUGE_BLOCKS", "800"))  # 800 × 64 MiB = 53.7 GB


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_file_over_50gb(mnt):
    block = random.Random(50).randbytes(BLOCK)
    digest = blake3.blake3(block).digest()
    path = mnt / "huge.bin"
    pid = mnt.daemon_pid()

    start = time.monotonic()
    peak_rss = 0.0
    with open(path, "wb", buffering=0) as f:
        for i in range(BLOCKS):
            assert f.write(block) == BLOCK
            if i % 50 == 0:
                peak_rss = max(peak_rss, rss_mib(pid))
    write_s = time.monotonic() - start
    size = BLOCKS * BLOCK
    assert os.stat(path).st_size == size

    mnt.remount()  # read from the store, not from what the daemon or the kernel kept
    start = time.monotonic()
    buf = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as f:
        for i in range(BLOCKS):
            view = memoryview(buf)
            got = 0
            while got < BLOCK:
                n = f.readinto(view[got:])
                assert n, f"short file: block {i} ends at {got}"
                got += n
            assert blake3.blake3(buf).digest() == digest, f"block {i} (offset {i * BLOCK}) differs"
        assert f.read(1) == b""
    read_s = time.monotonic() - start

    stats = mnt.stats()
    assert stats["logical_bytes"] == size
    assert stats["stored_bytes"] < 2 * BLOCK, stats  # one block's chunks, stored once
    print(
        f"\n{size / 1e9:.1f} GB: write {write_s:.0f} s ({size / write_s / 1e9:.2f} GB/s), "
        f"read {read_s:.0f} s ({size / read_s / 1e9:.2f} GB/s), daemon peak RSS {peak_rss:.0f} MiB, "
        f"stored {stats['stored_bytes'] / MiB:.0f} MiB"
    )
    assert peak_rss < 2048, f"daemon memory grew with the file: {peak_rss:.0f} MiB"
