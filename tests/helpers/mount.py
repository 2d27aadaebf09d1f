"""Real mounts for the FUSE acceptance tests: mount state, a mounted repository, its teardown.

Every mount is made by the real command line (``helpers.cli.chunkfs``); ``Mount.cleanup``
unmounts however possible; ``Mount.log_problems`` lists the daemon log's ERROR and Traceback
lines that no ``Mount.expect_log`` pattern covers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from chunkfs import config, mounts
from helpers.cli import chunkfs

PROBLEM_RE = re.compile(r"\bERROR\b|Traceback|CRITICAL|chunkfs: error:")  # the last: a daemon that exited on an error
UMOUNT_TIMEOUT = 120


def mount_device(path: Path) -> str | None:
    """'major:minor' of what is mounted at ``path`` (from mountinfo: a stat could hang)."""
    m = mounts.at(Path(path))
    return m.device if m is not None else None


def is_mounted(path: Path) -> bool:
    return mount_device(path) is not None


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Mount:
    """One repository and where it is mounted."""

    def __init__(self, repo: Path, path: Path, options: list[str], args: list[str] | None = None) -> None:
        self.repo = repo
        self.path = path
        self.options = options
        self.args = list(args or [])  # more arguments of `chunkfs mount` (--metrics HOST:PORT)
        self.expected: list[re.Pattern] = []

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def log_path(self) -> Path:
        return self.repo / "mount.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def expect_log(self, pattern: str) -> None:
        """Declare log lines matching ``pattern`` expected (an ERROR the test provokes)."""
        self.expected.append(re.compile(pattern))

    def log_problems(self) -> list[str]:
        """ERROR/Traceback lines of the log that no ``expect_log`` pattern covers."""
        problems = []
        for line in self.log().splitlines():
            if PROBLEM_RE.search(line) and not any(p.search(line) for p in self.expected):
                problems.append(line)
        return problems

    def daemon_pid(self) -> int | None:
        """The mount daemon's pid, from REPO/lock ("pid N"), which it holds while mounted (a
        read-only daemon holds no lock: None, whoever writes the repository)."""
        if "ro" in self.options:
            return None
        try:
            return int((self.repo / "lock").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def mount(self) -> subprocess.CompletedProcess:
        done = chunkfs("mount", self.repo, self.path, *[f"-o{o}" for o in self.options], *self.args, timeout=90)
        assert is_mounted(self.path), f"chunkfs mount returned 0 but {self.path} is not mounted"
        return done

    def umount(self) -> None:
        """Unmount the way users do, and wait until the daemon has exited."""
        pid = self.daemon_pid()
        chunkfs("umount", self.path, timeout=UMOUNT_TIMEOUT)
        assert not is_mounted(self.path)
        if pid is not None:
            assert wait_dead(pid, 30), f"daemon {pid} still running after chunkfs umount"

    def remount(self) -> None:
        self.umount()
        self.mount()

    def kill(self) -> None:
        """What a crash leaves: the daemon killed with SIGKILL, the mount forced away."""
        pid = self.daemon_pid()
        assert pid is not None and pid_alive(pid), "no daemon to kill"
        os.kill(pid, signal.SIGKILL)
        assert wait_dead(pid, 30)
        subprocess.run(["fusermount3", "-uz", str(self.path)], check=True, capture_output=True)
        assert not is_mounted(self.path)

    def stats(self) -> dict:
        return json.loads(chunkfs("stats", "--repo", self.repo, "--json").stdout)

    def run_usage(self, run: str) -> dict:
        """`chunkfs du RUN --json`'s row of ``run`` (a repository path: files, logical, stored per tier, …)."""
        rows = json.loads(chunkfs("du", run, "--repo", self.repo, "--json").stdout)
        return next(r for r in rows if r["run"] == run)

    def remount_cold(self) -> None:
        """Forget every cached byte: unmount (the daemon's memory, the kernel's page cache), empty the
        disk read cache, mount again — what is read next comes from the tiers."""
        status = json.loads(chunkfs("status", "--repo", self.repo, "--json").stdout)
        self.umount()
        shutil.rmtree(status["read_cache"]["dir"], ignore_errors=True)
        self.mount()

    def cleanup(self) -> list[str]:
        """Unmount however possible; return what went wrong (empty if ``chunkfs umount`` worked)."""
        if not is_mounted(self.path):
            return []
        pid = self.daemon_pid()
        try:
            done = chunkfs("umount", self.path, timeout=UMOUNT_TIMEOUT, expect=None)
            if done.returncode == 0 and (pid is None or wait_dead(pid, 30)):
                return []
            why = f"exited {done.returncode}: {done.stderr.strip()}"
        except subprocess.TimeoutExpired:
            why = f"still running after {UMOUNT_TIMEOUT} s"
        device = mount_device(self.path)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid, 10)
        if device is not None:  # fail whatever still waits on the dead daemon (if fusectl is mounted)
            abort = Path(f"/sys/fs/fuse/connections/{device.split(':')[1]}/abort")
            if abort.exists():
                abort.write_text("1")
        subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True, check=False)
        return [f"chunkfs umount {self.path} {why}"]


def configure(repo: Path, settings: dict) -> None:
    """Change chunkfs.toml of an unmounted repository: ``{section: {key: value}}``."""
    current = config.load(repo / config.CONFIG_NAME)
    for section, values in settings.items():
        changed = dataclasses.replace(getattr(current, section), **values)
        current = dataclasses.replace(current, **{section: changed})
    (repo / config.CONFIG_NAME).write_text(config.render(current))


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(src, dst, flags: int) -> None:
    """rename with flags (os.rename has none): RENAME_NOREPLACE, RENAME_EXCHANGE."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))
