"""What a crash and a full disk leave behind: the durability contract of docs/durability.md."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time

import pytest
from helpers import crashwriter
from helpers.crashwriter import checkpoint_bytes
from helpers.mount import is_mounted

MiB = 1 << 20


def run_until_crash(mnt, first: int, complete_before_kill: int, delay: float) -> list[str]:
    """Start the writer; after it reported ``complete_before_kill`` files (+ ``delay``), kill -9 the daemon."""
    writer = subprocess.Popen(
        [sys.executable, crashwriter.__file__, str(mnt / "ckpts"), str(first)],
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
    assert os.stat(mnt / f"f{len(committed)}").st_size == 0
    mnt.remount()
    for name, digest in committed.items():
        assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, f"{name} lost at remount"


def test_a_failed_write_leaves_what_chunkfs_holds_visible(make_tmpfs, make_mount):
    """On a full disk the writer gets ENOSPC; the file must then show what was committed — not the
    size and bytes the kernel's page cache took from the writer and chunkfs never stored."""
    mnt = make_mount(hot=make_tmpfs("40m") / "hot")
    mnt.expect_log(r"no space left|failed")
    old = random.Random(1).randbytes(MiB)
    (mnt / "old.bin").write_bytes(old)  # committed; its rewrite will fail
    with pytest.raises(OSError) as e, open(mnt / "new.bin", "wb") as f:
        f.writelines(random.randbytes(MiB) for _ in range(100))  # 100 MiB cannot fit in 40 MiB
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e, open(mnt / "old.bin", "wb") as f:
        f.writelines(random.randbytes(MiB) for _ in range(100))
    assert e.value.errno == errno.ENOSPC
    for name, held in (("new.bin", b""), ("old.bin", old)):
        assert os.stat(mnt / name).st_size == len(held), f"{name}: the size of writes that were never stored"
        assert (mnt / name).read_bytes() == held, f"{name}: bytes of writes that were never stored"
    mnt.remount()
    assert (mnt / "new.bin").read_bytes() == b"" and (mnt / "old.bin").read_bytes() == old
