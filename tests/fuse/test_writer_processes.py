"""The mount's engine worker processes (chunkfs/writers/): the chunk work runs outside the
daemon, and the durability contract holds whoever dies — the daemon or a worker."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers.cli import chunkfs

from chunkfs.repo import Repository
from chunkfs.types import PackState

MiB = 1 << 20


def worker_pids(mnt) -> list[int]:
    """The daemon's engine worker processes."""
    daemon = mnt.daemon_pid()
    kids = []
    for task in Path(f"/proc/{daemon}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [k for k in kids if b"chunkfs.writers.worker" in Path(f"/proc/{k}/cmdline").read_bytes()]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def checkpoint_bytes(i: int) -> bytes:
    """Checkpoint i: 3-8 MiB, a part shared by all (dedup) and a part of its own."""
    rng = random.Random(i)
    return random.Random(-1).randbytes(2 * MiB) + rng.randbytes(MiB + rng.randrange(5 * MiB))


WRITER = """
import os, random, sys
MiB = 1 << 20
def checkpoint_bytes(i):
    rng = random.Random(i)
    return random.Random(-1).randbytes(2 * MiB) + rng.randbytes(MiB + rng.randrange(5 * MiB))
out = sys.argv[1]
for i in range(int(sys.argv[2]), 10**6):
    tmp, final = os.path.join(out, f".ckpt-{i}.tmp"), os.path.join(out, f"ckpt-{i}.bin")
    try:
        with open(tmp, "wb") as f:
            data = checkpoint_bytes(i)
            for lo in range(0, len(data), MiB):  # in pieces, like torch.save
                f.write(data[lo : lo + MiB])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a worker died under this file: its unsaved bytes are gone, say so, go on
        print(f"failed {i} {e.errno}", flush=True)
        continue
    os.rename(tmp, final)
    print(f"ckpt-{i}.bin", flush=True)
"""


def test_the_daemon_hands_the_chunk_work_to_worker_processes(mnt):
    """The bytes are chunked, hashed and stored by the workers: their CPU time grows with what is
    written, and what was written reads back."""
    workers = worker_pids(mnt)
    assert len(workers) == min(os.cpu_count(), 8), workers
    before = sum(cpu_seconds(p) for p in workers)
    data = random.Random(1).randbytes(96 * MiB)
    with open(mnt / "big.bin", "wb") as f:
        f.writelines(data[lo : lo + MiB] for lo in range(0, len(data), MiB))
    assert sum(cpu_seconds(p) for p in workers) - before > 0.05, "the workers did none of the work"
    assert hashlib.sha256((mnt / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    mnt.remount()
    assert (mnt / "big.bin").read_bytes() == data


def test_no_worker_processes_keeps_the_chunk_work_in_the_daemon(make_mount):
    mnt = make_mount(settings={"writers": {"processes": 0}})
    assert worker_pids(mnt) == []
    (mnt / "f").write_bytes(b"x" * (3 * MiB + 5))
    mnt.remount()
    assert (mnt / "f").read_bytes() == b"x" * (3 * MiB + 5)


def test_a_file_read_while_its_bytes_are_still_being_chunked(mnt):
    """Reads of a file open for writing return what was written, whether the worker has cut it
    into chunks yet or not (O_DIRECT: past the kernel's page cache, to the daemon)."""
    data = random.Random(2).randbytes(24 * MiB)
    fd = os.open(mnt / "growing.bin", os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    reader = os.open(mnt / "growing.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        for lo in range(0, len(data), MiB):
            assert os.pwrite(fd, data[lo : lo + MiB], lo) == MiB
            assert os.pread(reader, MiB, lo) == data[lo : lo + MiB], f"read at {lo} while being written"
        assert os.pread(reader, 4 * MiB, 2 * MiB + 7) == data[2 * MiB + 7 : 6 * MiB + 7]
    finally:
        os.close(reader)
        os.close(fd)
    assert (mnt / "growing.bin").read_bytes() == data


def test_a_small_handoff_slows_writers_down_and_fails_none(make_mount):
    """The shared memory between the daemon and a worker bounds what is written but not yet
    taken: with 4 MiB of it, writers wait for the worker instead of failing."""
    mnt = make_mount(settings={"writers": {"processes": 1, "handoff": "4MiB"}})
    datas = [random.Random(10 + i).randbytes(40 * MiB) for i in range(3)]

    def write(i: int) -> None:
        with open(mnt / f"w{i}.bin", "wb") as f:
            f.writelines(datas[i][lo : lo + MiB] for lo in range(0, len(datas[i]), MiB))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mnt.remount()
    for i in range(3):
        assert (mnt / f"w{i}.bin").read_bytes() == datas[i]


def test_kill_9_of_a_worker_during_a_checkpoint_series(mnt):
    """A worker killed while files are being written: the file it held in flight fails (its
    writer gets an error, never a partial file under the final name), every file that was
    fsync'd before stays intact, and the mount goes on with a new worker."""
    os.mkdir(mnt / "ckpts")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "ckpts"), "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    try:
        for _ in range(2):  # kill every worker twice, a few checkpoints apart
            target = len(lines) + 3
            while len(lines) < target:
                line = writer.stdout.readline()
                assert line, f"the writer stopped: {writer.stderr.read()}"
                lines.append(line.strip())
            for pid in worker_pids(mnt):
                os.kill(pid, signal.SIGKILL)
        target = len(lines) + 3  # and the mount keeps working
        while len(lines) < target:
            line = writer.stdout.readline()
            assert line, f"the writer stopped: {writer.stderr.read()}"
            lines.append(line.strip())
    finally:
        writer.kill()
        writer.wait()
    done = [name for name in lines if name.startswith("ckpt-")]
    assert len(done) >= 6
    with Repository(mnt.repo, writable=False) as repo, repo.index.read() as t:
        still_open = [p for p, info in t.packs() if info.state == PackState.OPEN]
    assert len(still_open) <= len(worker_pids(mnt)), "the dead workers' packs were not sealed by the mount"
    mnt.remount()
    names = os.listdir(mnt / "ckpts")
    for name in done:
        assert name in names, f"{name} was fsync'd and renamed, then lost"
    for name in names:
        if name.startswith("ckpt-"):
            assert (mnt / "ckpts" / name).read_bytes() == checkpoint_bytes(int(name[5:-4])), f"{name} is not intact"
    mnt.expect_log(r"engine worker \d+ \(pid \d+\) exited")


def test_import_into_a_mounted_repository_is_seen_through_the_mount(mnt, tmp_path):
    """``chunkfs import`` writes beside the mount (a second writer process): the mount shows the
    imported tree within a second, and both processes' data survive a remount and fsck."""
    src = tmp_path / "src" / "run1"
    src.mkdir(parents=True)
    for i in range(3):
        (src / f"shard-{i}.bin").write_bytes(checkpoint_bytes(100 + i))
    (mnt / "mine.bin").write_bytes(checkpoint_bytes(1))
    chunkfs("import", "--repo", mnt.repo, src, "/imported")
    deadline = time.monotonic() + 1.5
    while not (mnt / "imported" / "shard-2.bin").exists():
        assert time.monotonic() < deadline, "the mount did not show the import within a second"
        time.sleep(0.05)
    for i in range(3):
        assert (mnt / "imported" / f"shard-{i}.bin").read_bytes() == checkpoint_bytes(100 + i)
    mnt.remount()
    assert (mnt / "mine.bin").read_bytes() == checkpoint_bytes(1)
    fsck = chunkfs("fsck", "--repo", mnt.repo, "--json", expect=None)
    assert fsck.returncode == 0, fsck.stdout


def test_a_file_replaced_by_another_process_shows_its_new_size_and_bytes(mnt, tmp_path):
    """The kernel (writeback cache) trusts its own size and pages of a file over the daemon's:
    a file the mount had read, then replaced by ``chunkfs import``, kept its old size for good,
    and reads returned the new bytes cut to it. The mount notices the other process's commit
    and has the kernel forget the file: once the kernel asks again (its 1 s attribute timeout),
    stat and read show the new content."""
    (mnt / "model.bin").write_bytes(checkpoint_bytes(1))
    assert (mnt / "model.bin").read_bytes() == checkpoint_bytes(1)  # size and pages cached now
    new = checkpoint_bytes(2) + checkpoint_bytes(3)  # larger than the old one
    (tmp_path / "model.bin").write_bytes(new)
    chunkfs("import", "--repo", mnt.repo, tmp_path / "model.bin", "/model.bin")
    deadline = time.monotonic() + 2.5
    while os.stat(mnt / "model.bin").st_size != len(new):
        assert time.monotonic() < deadline, "the mount kept the old size"
        time.sleep(0.05)
    assert (mnt / "model.bin").read_bytes() == new


WRITE_AND_RENAME = """
import os, sys
from chunkfs.repo import Repository
repo_dir, phase, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Repository.for_writing(repo_dir) as r:
    d = r.ns.resolve("/d")
    if phase == "create":  # an empty file, as DCP's rank 0 creates .metadata.tmp
        r.ns.mknod(d, b"x.tmp", 0o644, os.getuid(), os.getgid(), versioned=False)
    else:  # its content, committed; then renamed over the final name
        ino, _ = r.ns.lookup(d, b"x.tmp")
        content = r.file_content(ino)
        content.write(0, bytes(range(256)) * (size // 256))
        r.commit_file(ino, content)
        r.ns.rename(d, b"x.tmp", d, b"x")
"""


def test_a_file_seen_empty_then_filled_and_renamed_by_another_process_reads_whole(mnt):
    """A lister through the mount stats ``x.tmp`` while another process has just created it
    (empty); that process then writes it and renames it to ``x`` (DCP's ``.metadata``, any
    write-then-rename writer). The kernel still holds the inode under the old name with size 0
    (writeback cache: it trusts its own size) — the first reader of ``x`` got an empty file
    (DCP: "Ran out of input"). The mount hands the changed inode out with a new generation,
    so the kernel replaces its copy while it takes that very lookup."""
    os.mkdir(mnt / "d")
    size = 1 << 20
    for phase in ("create", "fill"):
        subprocess.run([sys.executable, "-c", WRITE_AND_RENAME, str(mnt.repo), phase, str(size)], check=True)
        if phase == "create":
            deadline = time.monotonic() + 2
            while not os.path.exists(mnt / "d" / "x.tmp"):
                assert time.monotonic() < deadline, "the mount did not show x.tmp"
                time.sleep(0.05)
            assert os.stat(mnt / "d" / "x.tmp").st_size == 0  # the kernel caches the inode, empty
    assert (mnt / "d" / "x").read_bytes() == bytes(range(256)) * (size // 256), "read at once, whole"
    assert os.stat(mnt / "d" / "x").st_size == size


GC_LOOP = """
import subprocess, sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    subprocess.run([sys.executable, "-m", "chunkfs", "gc", "--repo", sys.argv[1], "--grace", "0s"],
                   capture_output=True, check=False)
"""


def test_gc_racing_writers_in_three_processes(mnt, tmp_path):
    """The mount's workers write and delete checkpoints, ``chunkfs import`` writes beside them,
    and gc runs over and over meanwhile: every file that remains reads back whole, and fsck
    finds nothing."""
    os.mkdir(mnt / "ckpts")
    src = tmp_path / "src"
    src.mkdir()
    gc_loop = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(mnt.repo), "25"])
    try:
        for i in range(12):
            (mnt / "ckpts" / f"ckpt-{i}.bin").write_bytes(checkpoint_bytes(i))
            if i >= 3:
                os.unlink(mnt / "ckpts" / f"ckpt-{i - 3}.bin")
            if i % 4 == 0:
                (src / f"imp-{i}.bin").write_bytes(checkpoint_bytes(200 + i))
                chunkfs("import", "--repo", mnt.repo, src / f"imp-{i}.bin", f"/imp-{i}.bin")
    finally:
        gc_loop.wait(60)
    chunkfs("gc", "--repo", mnt.repo, "--grace", "0s")
    for i in range(9, 12):
        assert (mnt / "ckpts" / f"ckpt-{i}.bin").read_bytes() == checkpoint_bytes(i)
    mnt.remount()
    for i in range(9, 12):
        assert (mnt / "ckpts" / f"ckpt-{i}.bin").read_bytes() == checkpoint_bytes(i)
    for i in range(0, 12, 4):
        assert (mnt / f"imp-{i}.bin").read_bytes() == checkpoint_bytes(200 + i)
    mnt.umount()
    fsck = chunkfs("fsck", "--repo", mnt.repo, "--json", expect=None)
    assert fsck.returncode == 0, fsck.stdout
    mnt.mount()
