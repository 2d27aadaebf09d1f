"""File content through the mount: sizes around the chunk size, holes, overwrites, truncation, sharing."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time

import pytest

MiB = 1 << 20


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def same_ops(mnt_path, plain_path, ops) -> None:
    """Apply ``ops(path)`` to a file on the mount and on a plain dir; both must read the same."""
    ops(mnt_path)
    ops(plain_path)
    assert os.stat(mnt_path).st_size == os.stat(plain_path).st_size
    assert mnt_path.read_bytes() == plain_path.read_bytes()


def test_large_file_round_trip(mnt):
    data = rand(20 * MiB + 12345, seed=1)
    (mnt / "big.bin").write_bytes(data)
    assert os.stat(mnt / "big.bin").st_size == len(data)
    assert (mnt / "big.bin").read_bytes() == data
    mnt.remount()  # read from the store, not the page cache or the open file
    assert (mnt / "big.bin").read_bytes() == data
    stats = mnt.stats()
    assert stats["logical_bytes"] == len(data)


def test_empty_file(mnt):
    (mnt / "empty").write_bytes(b"")
    os.mknod(mnt / "node")  # mknod path, not create
    mnt.remount()
    for name in ("empty", "node"):
        assert os.stat(mnt / name).st_size == 0
        assert (mnt / name).read_bytes() == b""


def test_sparse_files(mnt, plain):
    def ops(p):
        with open(p, "wb") as f:
            f.write(b"head")
            f.seek(9 * MiB + 7)  # a hole bigger than two chunks
            f.write(b"tail")
        with open(p, "r+b") as f:
            f.truncate(12 * MiB)  # truncate up: another hole at the end
        with open(p, "r+b") as f:
            f.seek(10 * MiB)
            f.write(b"in the trailing hole")

    same_ops(mnt / "sparse", plain / "sparse", ops)
    mnt.remount()
    assert (mnt / "sparse").read_bytes() == (plain / "sparse").read_bytes()
    assert mnt.stats()["stored_bytes"] < MiB, "holes must cost (next to) nothing"


def test_write_past_eof_and_overwrites(mnt, plain):
    base = rand(9 * MiB + 100, seed=2)

    def ops(p):
        p.write_bytes(base)
        with open(p, "r+b") as f:
            f.seek(len(base) + 5000)  # past EOF: a gap of zeros
            f.write(b"after the gap")
            f.seek(4 * MiB - 10)  # across a chunk boundary, in the middle
            f.write(b"X" * 100)
            f.seek(7)
            f.write(b"near the start")
            f.seek(len(base) + 5000 - 3)  # straddles the old end and the gap
            f.write(b"STRADDLE")

    same_ops(mnt / "f", plain / "f", ops)
    mnt.remount()
    assert (mnt / "f").read_bytes() == (plain / "f").read_bytes()


def test_truncate_down_and_up(mnt, plain):
    data = rand(10 * MiB, seed=3)

    def ops(p):
        p.write_bytes(data)
        os.truncate(p, 5 * MiB + 3)  # by path, file not open
        with open(p, "r+b") as f:
            f.truncate(4 * MiB)  # exactly on a chunk boundary, through an open handle
            f.seek(0, os.SEEK_END)
            f.write(b"appended")
        os.truncate(p, 6 * MiB)  # up again: zeros, not the old bytes
        with open(p, "r+b") as f:
            f.truncate(100)
            f.write(b"w")  # the file offset is still 0: overwrite the first byte

    same_ops(mnt / "t", plain / "t", ops)
    mnt.remount()
    assert (mnt / "t").read_bytes() == (plain / "t").read_bytes()


def test_o_trunc_replaces_content(mnt):
    (mnt / "f").write_bytes(rand(5 * MiB, seed=4))
    (mnt / "f").write_bytes(b"short")
    assert (mnt / "f").read_bytes() == b"short"
    with open(mnt / "f", "ab") as f:
        f.write(b" and appended")
    assert (mnt / "f").read_bytes() == b"short and appended"
    mnt.remount()
    assert (mnt / "f").read_bytes() == b"short and appended"


def test_size_and_mtime_while_writing(mnt):
    """stat() of a file that another descriptor is writing shows its current size."""
    with open(mnt / "f", "wb") as f:
        f.write(b"a" * 1000)
        f.flush()
        assert os.stat(mnt / "f").st_size == 1000
        assert os.fstat(f.fileno()).st_size == 1000
    st = os.stat(mnt / "f")
    os.utime(mnt / "f", ns=(1_000_000_000, 2_000_000_000))
    with open(mnt / "f", "r+b") as f:
        f.write(b"b")
    after = os.stat(mnt / "f")
    assert after.st_size == 1000
    assert after.st_mtime_ns > 2_000_000_000, "a write must update mtime"
    assert after.st_mtime_ns >= st.st_mtime_ns


READER = """
import sys
with open(sys.argv[1], "rb") as f:
    sys.stdout.buffer.write(f.read())
"""


def test_visible_to_other_processes_before_close(mnt):
    data = rand(6 * MiB + 17, seed=5)
    with open(mnt / "shared", "wb") as w:
        w.write(data)
        w.flush()  # out of Python's buffer into the kernel; the file stays open
        with open(mnt / "shared", "rb") as r:
            assert r.read() == data
        out = subprocess.run([sys.executable, "-c", READER, str(mnt / "shared")], capture_output=True, check=True)
        assert out.stdout == data
        w.write(b"more")
        w.flush()
        out = subprocess.run([sys.executable, "-c", READER, str(mnt / "shared")], capture_output=True, check=True)
        assert out.stdout == data + b"more"


def test_unlink_while_open(mnt):
    data = rand(5 * MiB, seed=6)
    (mnt / "doomed").write_bytes(data)
    with open(mnt / "doomed", "rb") as r, open(mnt / "doomed", "r+b") as w:
        os.unlink(mnt / "doomed")
        assert not (mnt / "doomed").exists()
        assert "doomed" not in os.listdir(mnt.path)
        assert os.fstat(r.fileno()).st_nlink == 0
        w.seek(0)
        w.write(b"still writable")
        w.flush()
        assert r.read() == b"still writable" + data[14:]
        (mnt / "doomed").write_bytes(b"a new file under the old name")
        r.seek(0)
        assert r.read(14) == b"still writable"
    assert (mnt / "doomed").read_bytes() == b"a new file under the old name"
    mnt.remount()
    assert os.listdir(mnt.path) == ["doomed"]
    assert mnt.stats()["logical_bytes"] == len(b"a new file under the old name")


@pytest.mark.parametrize("size", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 8 * MiB])
def test_sizes_around_chunk_size(mnt, size):
    data = rand(size, seed=size)
    (mnt / "f").write_bytes(data)
    mnt.remount()
    assert (mnt / "f").read_bytes() == data


def test_parallel_writers(mnt):
    """Sharded checkpoints are written by several processes at once; each file stays its own."""
    script = (
        "import random, sys\n"
        "rank = int(sys.argv[2])\n"
        "data = random.Random(rank).randbytes(6 * (1 << 20) + rank)\n"
        "with open(sys.argv[1], 'wb') as f:\n"
        "    for lo in range(0, len(data), 100_000):\n"
        "        f.write(data[lo : lo + 100_000])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(mnt / f"shard-{r}.bin"), str(r)]) for r in range(4)]
    assert [p.wait() for p in procs] == [0] * 4
    mnt.remount()
    for r in range(4):
        assert (mnt / f"shard-{r}.bin").read_bytes() == random.Random(r).randbytes(6 * MiB + r)


def test_absurd_sizes_are_efbig_and_huge_holes_cost_nothing(mnt):
    """``truncate -s 999999999999999`` once grew the daemon by 75 MB/s until the machine ran out of
    memory. Past the largest file size: EFBIG at once; any legal sparse size: O(1)."""
    f = mnt / "sparse"
    f.write_bytes(b"head")
    done = subprocess.run(["truncate", "-s", "999999999999999", str(f)],
                          capture_output=True, check=False, text=True, timeout=30)  # fmt: skip
    assert done.returncode != 0 and "too large" in done.stderr.lower(), done.stderr  # EFBIG: "File too large"
    assert os.stat(f).st_size == 4
    started = time.monotonic()
    os.truncate(f, 200 << 40)  # 200 TiB
    with open(f, "r+b") as fh:
        fh.seek((200 << 40) - 4)
        fh.write(b"tail")
    assert time.monotonic() - started < 10
    assert os.stat(f).st_size == 200 << 40
    with open(f, "rb") as fh:
        assert fh.read(4) == b"head"
        fh.seek(123 << 40)
        assert fh.read(1 << 20) == bytes(1 << 20)
        fh.seek((200 << 40) - 4)
        assert fh.read() == b"tail"
    pid = mnt.daemon_pid()
    with open(f"/proc/{pid}/status") as status:
        rss_kb = int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
    assert rss_kb < 512 * 1024, f"daemon RSS {rss_kb} KiB after a 200 TiB sparse file"
    with pytest.raises(OSError) as e:
        os.truncate(f, 1 << 60)
    assert e.value.errno == errno.EFBIG
    mnt.remount()
    assert os.stat(f).st_size == 200 << 40
    with open(f, "rb") as fh:
        fh.seek((200 << 40) - 4)
        assert fh.read() == b"tail"
