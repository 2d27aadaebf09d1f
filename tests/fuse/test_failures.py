"""What a crash and a full disk leave behind: the durability contract of docs/durability.md."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusetest import is_mounted

MiB = 1 << 20


def checkpoint_bytes(i: int) -> bytes:
    """The content of checkpoint i: 3-8 MiB, a shared part (dedup) and a part of its own."""
    rng = random.Random(i)
    return random.Random(-1).randbytes(2 * MiB) + rng.randbytes(MiB + rng.randrange(5 * MiB))


WRITER = """
import os, sys
sys.path.insert(0, {tests!r})
from test_failures import checkpoint_bytes
out = sys.argv[1]
for i in range(int(sys.argv[2]), 10**6):
    tmp, final = os.path.join(out, f".ckpt-{{i}}.tmp"), os.path.join(out, f"ckpt-{{i}}.bin")
    with open(tmp, "wb") as f:
        data = checkpoint_bytes(i)
        for lo in range(0, len(data), 1 << 20):  # in pieces, like torch.save
            f.write(data[lo : lo + (1 << 20)])
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    print(f"ckpt-{{i}}.bin", flush=True)
"""


def run_until_crash(mnt, first: int, complete_before_kill: int, delay: float) -> list[str]:
    """Start the writer; after it reported ``complete_before_kill`` files (+ ``delay``), kill -9 the daemon."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent)), str(mnt / "ckpts"), str(first)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    done = []
    try:
        while len(done) < complete_before_kill:
            line = writer.stdout.readline()
            assert line, "the writer stopped before the crash"
            done.append(line.strip())
        time.sleep(delay)
        mnt.kill()
    finally:
        writer.kill()
        done += [line.strip() for line in writer.stdout if line.strip()]  # completed just before the kill
        writer.wait()
    return done


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_kill_9_during_checkpoint_series(mnt, delay):
    os.mkdir(mnt / "ckpts")
    reported: list[str] = []
    for crash in range(2):
        reported += run_until_crash(mnt, len(reported), 3, delay + 0.1 * crash)
        assert not is_mounted(mnt.path)
        mnt.mount()  # no repair step
        names = sorted(os.listdir(mnt / "ckpts"))
        for name in reported:
            assert name in names, f"{name} was reported complete before the crash but is gone"
        for name in names:
            if name.startswith("ckpt-"):  # whatever sits under a final name is whole
                i = int(name[5:-4])
                assert (mnt / "ckpts" / name).read_bytes() == checkpoint_bytes(i), f"{name} is not intact"
            else:
                assert name.startswith(".ckpt-") and name.endswith(".tmp"), name
    (mnt / "after-crashes").write_bytes(b"the mount works normally")
    mnt.remount()
    assert (mnt / "after-crashes").read_bytes() == b"the mount works normally"


def test_disk_full_is_enospc(make_tmpfs, make_mount):
    mnt = make_mount(hot=make_tmpfs("48m") / "hot")
    mnt.expect_log(r"no space left")
    committed: dict[str, str] = {}
    failure = None
    rng = random.Random(3)
    for i in range(100):  # 48 MiB cannot hold 100 × 2 MiB of random data
        data = rng.randbytes(2 * MiB)
        name = f"f{i}"
        try:
            with open(mnt / name, "wb") as f:
                f.write(data)
        except OSError as e:
            failure = e
            break
        committed[name] = hashlib.sha256(data).hexdigest()
    assert failure is not None, "the hot tier never filled up"
    assert failure.errno == errno.ENOSPC, f"expected ENOSPC, got {failure!r}"
    assert len(committed) >= 5
    for name, digest in committed.items():
        assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, f"{name} damaged by the full disk"
    # metadata still works, and the failed file kept its last committed content (none)
    os.mkdir(mnt / "still-usable")
    assert os.stat(mnt / f"f{len(committed)}").st_size in (0, 2 * MiB)
    mnt.remount()
    for name, digest in committed.items():
        assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, f"{name} lost at remount"
