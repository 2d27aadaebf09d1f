"""Real mounts for the acceptance tests: a repository, a daemon started by the CLI, a clean teardown.

Every mount is made by the real command line (``python -m chunkfs mount``), so
the tests exercise what users run. Teardown always unmounts — ``chunkfs umount``
first, then ``fusermount3 -uz`` and SIGKILL of the daemon if that fails — so a
broken test never leaves a mount behind for the next one. After unmounting, the
daemon's ``REPO/mount.log`` must hold no ERROR or Traceback line except those a
test declared it expects (``Mount.expect_log``), like S3QL's log checks; the log
is attached to the report of any failing test.

Mountpoints live in a world-traversable directory under /tmp (pytest's own
tmp_path is 0700), so the permission test can let another user reach them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHUNKFS = [sys.executable, "-m", "chunkfs"]
PROBLEM_RE = re.compile(r"\bERROR\b|Traceback|CRITICAL")
UMOUNT_TIMEOUT = 120


def cli(*args: str | os.PathLike, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``chunkfs ARGS`` as a user would; fail the test with its output if ``check`` and it fails."""
    done = subprocess.run([*CHUNKFS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"chunkfs {' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


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

    def __init__(self, repo: Path, path: Path, options: list[str]) -> None:
        self.repo = repo
        self.path = path
        self.options = options
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
        """Declare log lines matching ``pattern`` (and a traceback's lines after them) expected."""
        self.expected.append(re.compile(pattern))

    def log_problems(self) -> list[str]:
        """ERROR/Traceback lines of the log that no ``expect_log`` pattern covers."""
        problems = []
        for line in self.log().splitlines():
            if PROBLEM_RE.search(line) and not any(p.search(line) for p in self.expected):
                problems.append(line)
        return problems

    def daemon_pid(self) -> int | None:
        """The mount daemon's pid, from REPO/lock ("pid N"), which it holds while mounted."""
        try:
            return int((self.repo / "lock").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def mount(self) -> subprocess.CompletedProcess:
        done = cli("mount", self.repo, self.path, *[f"-o{o}" for o in self.options], timeout=90)
        assert is_mounted(self.path), f"chunkfs mount returned 0 but {self.path} is not mounted"
        return done

    def umount(self) -> None:
        """Unmount the way users do, and wait until the daemon has exited."""
        pid = self.daemon_pid()
        cli("umount", self.path, timeout=UMOUNT_TIMEOUT)
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
        return json.loads(cli("stats", "--repo", self.repo, "--json").stdout)

    def cleanup(self) -> list[str]:
        """Unmount however possible; return what went wrong (empty if ``chunkfs umount`` worked)."""
        if not is_mounted(self.path):
            return []
        pid = self.daemon_pid()
        done = subprocess.run(
            [*CHUNKFS, "umount", str(self.path)], capture_output=True, text=True, timeout=UMOUNT_TIMEOUT
        )
        if done.returncode == 0 and (pid is None or wait_dead(pid, 30)):
            return []
        subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid, 10)
        return [f"chunkfs umount {self.path} failed ({done.returncode}): {done.stderr.strip()}"]


def _require_fuse() -> None:
    missing = [what for what, ok in (
        ("/dev/fuse", os.path.exists("/dev/fuse")),
        ("fusermount3", shutil.which("fusermount3") is not None),
    ) if not ok]  # fmt: skip
    if missing:
        reason = f"FUSE mount tests need {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (running in CI, where these tests must not skip)")
        pytest.skip(reason)


@pytest.fixture
def mount_root():
    """A directory every user can traverse, for mountpoints."""
    root = Path(tempfile.mkdtemp(prefix="chunkfs-mnt-"))
    root.chmod(0o755)
    yield root
    for child in root.iterdir():
        if not is_mounted(child):
            shutil.rmtree(child, ignore_errors=True)
    if not any(root.iterdir()):
        root.rmdir()


@pytest.fixture
def make_mount(request, tmp_path, mount_root):
    """``make_mount(options=[], hot=None, name="repo")`` → a new repository, mounted by the CLI."""
    _require_fuse()
    mounts: list[Mount] = []
    request.node._chunkfs_mounts = mounts

    def make(*, options: list[str] | None = None, hot: Path | None = None, name: str = "repo") -> Mount:
        repo = tmp_path / name
        cli("init", repo, *(["--hot", hot] if hot is not None else []))
        path = mount_root / name
        path.mkdir()
        m = Mount(repo, path, list(options or []))
        mounts.append(m)
        m.mount()
        return m

    yield make

    problems = []
    for m in mounts:
        problems += m.cleanup()
    for m in mounts:
        problems += [f"{m.log_path}: {line}" for line in m.log_problems()]
    if problems and not getattr(request.node, "_chunkfs_failed", False):
        pytest.fail("after the test:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def mnt(make_mount) -> Mount:
    """A fresh repository mounted with default options."""
    return make_mount()


@pytest.fixture
def plain(tmp_path) -> Path:
    """A plain directory to compare against (same disk as the repository)."""
    path = tmp_path / "plain"
    path.mkdir()
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach each mount's log to the report of a failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call":
        item._chunkfs_failed = True
        for m in getattr(item, "_chunkfs_mounts", []):
            report.sections.append((f"mount log {m.log_path}", m.log()[-20000:]))
