"""The mount command line: one-line errors, the mount(8) helper, the ways a daemon is stopped."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import CHUNKFS, chunkfs
from helpers.mount import Mount, is_mounted, wait_dead
from helpers.watchdog import with_descendants

from chunkfs.errors import Conflict, NotADirectory, NotFound, UsageError


def assert_error_says(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """The one line of a failed command (``chunkfs(..., expect=...)`` checked it is one) says each fragment."""
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def test_missing_mountpoint(mnt, tmp_path):
    done = chunkfs("mount", mnt.repo, tmp_path / "nowhere", expect=NotFound)
    assert_error_says(done, "does not exist")


def test_mountpoint_is_a_file(mnt, tmp_path):
    (tmp_path / "file").touch()
    done = chunkfs("mount", mnt.repo, tmp_path / "file", expect=NotADirectory)
    assert_error_says(done, "not a directory")


def test_missing_repository(mnt, tmp_path):
    (tmp_path / "empty-mnt").mkdir()
    done = chunkfs("mount", tmp_path / "no-repo", tmp_path / "empty-mnt", expect=NotFound)
    assert_error_says(done, "not a chunkfs repository")
    assert not is_mounted(tmp_path / "empty-mnt")


def test_mountpoint_already_mounted(make_mount, tmp_path):
    first = make_mount()
    chunkfs("init", tmp_path / "other")
    done = chunkfs("mount", tmp_path / "other", first.path, expect=Conflict)
    assert_error_says(done, "already mounted")
    assert (first / ".").is_dir() and is_mounted(first.path)


def test_repository_already_mounted(mnt, mount_root):
    mnt.expect_log(r"chunkfs: error: .* in use by pid")  # the second daemon says why it exits
    (mount_root / "second").mkdir()
    done = chunkfs("mount", mnt.repo, mount_root / "second", expect=Conflict)
    assert_error_says(done, "in use by pid")
    assert not is_mounted(mount_root / "second")
    (mnt / "still-works").write_bytes(b"yes")  # the first daemon is unharmed
    assert (mnt / "still-works").read_bytes() == b"yes"


def test_umount_errors(mnt, tmp_path):
    assert_error_says(chunkfs("umount", tmp_path, expect=NotFound), "no chunkfs filesystem is mounted")
    (mnt / "sub").mkdir()
    shell = subprocess.Popen(["sleep", "60"], cwd=mnt / "sub")  # a shell left inside the mount
    try:
        with open(mnt / "busy", "wb"):
            done = chunkfs("umount", mnt.path, expect=Conflict)
            assert_error_says(done, "busy", f"pid {os.getpid()} (", f"open {mnt / 'busy'}",
                                  f"pid {shell.pid} (sleep: working directory)")  # fmt: skip
    finally:
        shell.kill()
        shell.wait()
    assert is_mounted(mnt.path)


def test_mountpoint_not_empty_is_refused_unless_nonempty(mnt, mount_root):
    """Mounting over files hides them: refused (the help says "an existing, empty directory")."""
    busy = mount_root / "full"
    busy.mkdir()
    (busy / "precious.txt").write_text("mine")
    mnt.umount()
    done = chunkfs("mount", mnt.repo, busy, expect=Conflict)
    assert_error_says(done, "not empty", "-o nonempty")
    assert not is_mounted(busy)
    chunkfs("mount", mnt.repo, busy, "-o", "nonempty")
    try:
        assert is_mounted(busy) and not (busy / "precious.txt").exists()
    finally:
        chunkfs("umount", busy)
    assert (busy / "precious.txt").read_text() == "mine"


def test_daemon_stops_on_signal(mnt):
    """SIGTERM (systemd stop): commit open files, unmount, exit."""
    f = open(mnt / "open-at-stop", "wb")  # noqa: SIM115 — open across the daemon's stop
    f.write(b"committed by the daemon at shutdown")
    f.flush()
    pid = mnt.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_dead(pid, 60)
    with contextlib.suppress(OSError):  # the connection is gone: close may say so
        f.close()
    assert not is_mounted(mnt.path)
    mnt.mount()
    assert (mnt / "open-at-stop").read_bytes() == b"committed by the daemon at shutdown"


def test_sigusr1_writes_every_process_stacks_to_the_log_and_the_mount_serves_on(mnt):
    """docs/operations.md, "A mount that seems stuck": the daemon and each engine worker."""
    (mnt / "f").write_bytes(b"x" * 100_000)
    pids = with_descendants([mnt.daemon_pid()])
    assert len(pids) >= 2, f"no engine worker below the daemon: {pids}"
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    # the daemon's notifier thread and a worker's main thread: shallow stacks, never cut at 100 frames
    while not ("chunkfs/fs/notify.py" in mnt.log() and "chunkfs/writers/worker.py" in mnt.log()):
        assert time.monotonic() < deadline, f"not every process's stack: {mnt.log()[-3000:]}"
        time.sleep(0.2)  # each process writes its own, whenever it gets the signal
    (mnt / "g").write_bytes(b"y" * 100_000)
    assert (mnt / "f").read_bytes() == b"x" * 100_000 and (mnt / "g").read_bytes() == b"y" * 100_000


def test_plain_umount(mnt):
    """umount(8) without chunkfs: the kernel tells the daemon, which exits."""
    (mnt / "f").write_bytes(b"x")
    pid = mnt.daemon_pid()
    subprocess.run(["umount", str(mnt.path)], check=True)
    assert wait_dead(pid, 60), "the daemon must exit when its filesystem is unmounted"
    assert "unmounted" in mnt.log()


MOUNT_HELPER = Path("/sbin/mount.fuse.chunkfs")


@pytest.fixture
def mount_helper_installed():
    """/sbin/mount.fuse.chunkfs → this venv's mount.chunkfs, as docs/mount.md says to install it."""
    helper = Path(sys.executable).parent / "mount.chunkfs"
    if not helper.exists():
        pytest.fail(f"{helper} is missing: chunkfs is not installed in this venv (pip install -e .)")
    if os.geteuid() != 0:
        pytest.skip("installing a mount(8) helper in /sbin needs root")
    try:
        MOUNT_HELPER.symlink_to(helper)
    except FileExistsError:  # installed for real, or by a test run in parallel: not ours to replace
        pytest.skip(f"{MOUNT_HELPER} already exists; not replacing it")
    yield
    MOUNT_HELPER.unlink()


def test_mount_t_fuse_chunkfs(mount_helper_installed, make_mount):
    m = make_mount()  # for the repository, the cleanup and the log checks; mounted again below by mount(8)
    m.umount()
    done = subprocess.run(["mount", "-t", "fuse.chunkfs", "-o", "rw,allow_other,noauto", str(m.repo), str(m.path)],
                          capture_output=True, check=False, text=True, timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert is_mounted(m.path)
    mountinfo = Path("/proc/self/mountinfo").read_text()
    line = next(ln for ln in mountinfo.splitlines() if ln.split()[4] == str(m.path))
    assert " - fuse.chunkfs " in line and "allow_other" in line
    (m / "via-mount-t").write_bytes(b"ok")
    m.remount()  # chunkfs umount works on it too
    assert (m / "via-mount-t").read_bytes() == b"ok"


def test_mount_helper_error_is_one_line(mount_helper_installed, tmp_path):
    (tmp_path / "mnt").mkdir()
    done = subprocess.run(["mount", "-t", "fuse.chunkfs", str(tmp_path / "no-repo"), str(tmp_path / "mnt")],
                          capture_output=True, check=False, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "not a chunkfs repository" in done.stderr


def test_foreground_mount(make_mount):
    """--foreground serves in the calling process and returns when unmounted."""
    m = make_mount()
    m.umount()
    proc = subprocess.Popen([*CHUNKFS, "mount", str(m.repo), str(m.path), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        for _ in range(200):
            if is_mounted(m.path):
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        assert is_mounted(m.path)
        (m / "fg").write_bytes(b"foreground")
        chunkfs("umount", m.path)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read()
    assert "Traceback" not in out and "ERROR" not in out, out
    m.mount()
    assert (m / "fg").read_bytes() == b"foreground"


def test_read_only_mount_serves_beside_the_writer(make_mount, mount_root, request):
    writer = make_mount()
    (writer / "before").write_bytes(b"committed before")
    reader = Mount(writer.repo, mount_root / "reader", ["ro"])
    reader.path.mkdir()
    request.node._chunkfs_mounts.append(reader)  # unmounted (and its log checked) at teardown
    reader.mount()
    assert (reader / "before").read_bytes() == b"committed before"
    (writer / "after").write_bytes(b"committed while both are mounted")
    assert (reader / "after").read_bytes() == b"committed while both are mounted"
    with pytest.raises(OSError) as e:
        (reader / "g").write_bytes(b"x")
    assert e.value.errno == errno.EROFS

    reader.umount()  # returns at once: the writer's daemon keeps running
    assert writer.daemon_pid() is not None and is_mounted(writer.path)
    assert (writer / "after").read_bytes() == b"committed while both are mounted"


def test_read_only_mount(make_mount):
    m = make_mount()
    (m / "f").write_bytes(b"written before")
    m.umount()
    m.options = ["ro"]
    m.mount()
    assert (m / "f").read_bytes() == b"written before"
    with pytest.raises(OSError) as e:
        (m / "g").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.unlink(m / "f")
    assert e.value.errno == errno.EROFS


def test_every_command_finds_the_repository_from_inside_a_mount(mnt):
    """From a directory of a mount, every command that takes a repository works on the mounted one
    (stats, status, fsck, sync and backup used to say "no repository given")."""
    run = mnt / "llama" / "run1" / "checkpoint-1"
    run.mkdir(parents=True)
    (run / "model.bin").write_bytes(os.urandom(100_000))
    inside = mnt / "llama"
    for args in (["stats"], ["status"], ["fsck"], ["du"], ["gc", "--dry-run"], ["tag", "--list"], ["find"],
                 ["unpin", "--list"], ["tier", "--dry-run"], ["log", "run1"], ["drill", "run1"],
                 ["index", "rebuild"]):  # fmt: skip
        if args == ["index", "rebuild"]:  # needs the repository unmounted: says so, about the right one
            done = chunkfs(*args, cwd=inside, expect=Conflict)
            assert "in use by" in done.stderr and str(mnt.repo) in done.stderr, done.stderr
            continue
        chunkfs(*args, cwd=inside)
    for args in (["sync"], ["backup"]):  # a hot-only repository: found, and the error is about that
        done = chunkfs(*args, cwd=inside, expect=UsageError)
        assert "no repository" not in done.stderr and "warm tier" in done.stderr, done.stderr


def test_a_path_in_a_mount_is_a_mount_path_whatever_chunkfs_repo_says(mnt, tmp_path):
    other = tmp_path / "other"
    chunkfs("init", other)
    (mnt / "x").write_bytes(b"x")
    from_env = {"CHUNKFS_REPO": str(other)}  # systemd units export CHUNKFS_REPO
    done = chunkfs("log", mnt / "x", "--json", cwd=tmp_path, env=from_env)
    assert "/x" in done.stdout
    done = chunkfs("log", "/llama/x", cwd=tmp_path, env=from_env, expect=NotFound)
    assert f"read as a path inside repository {other} (from $CHUNKFS_REPO)" in done.stderr, done.stderr
    done = chunkfs("log", mnt / "x", "--repo", other, cwd=tmp_path, expect=UsageError)
    assert "inside the mount of" in done.stderr, done.stderr
