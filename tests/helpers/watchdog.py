"""What happens to a test that runs past its timeout (pytest-timeout; the limit is in
pyproject.toml): a hang must not eat the whole CI run and leave nothing to read.

``arm``/``disarm`` implement pytest-timeout's timer hooks (tests/conftest.py). At the
timeout, every daemon the test mounted (and its engine workers) is sent SIGUSR1, which
makes it write each thread's stack into its mount.log (docs/operations.md), the end of each
log goes to the test's stderr, and the daemons are killed and their mounts detached: a test
stuck on a FUSE request then fails with ENOTCONN, its report carries the logs, and the
suite goes on. If the test is still stuck ``GRACE`` seconds later, pytest-timeout's own
handler prints the test process's stacks and ends the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GRACE = 60.0
LOG_TAIL = 400
"""Lines of each mount.log printed (the stacks are the last of them)."""


def arm(item, settings) -> bool:
    import pytest_timeout  # only ever called by it

    timers = [
        threading.Timer(settings.timeout, _unstick, (item, settings.timeout)),
        threading.Timer(settings.timeout + GRACE, pytest_timeout.timeout_timer, (item, settings)),
    ]
    for timer in timers:
        timer.daemon = True
        timer.start()
    item._chunkfs_timers = timers
    return True


def disarm(item) -> bool:
    for timer in getattr(item, "_chunkfs_timers", ()):
        timer.cancel()
    return True


def _unstick(item, timeout: float) -> None:
    item._chunkfs_timed_out = True
    mounts = getattr(item, "_chunkfs_mounts", [])
    pids = with_descendants([pid for m in mounts if (pid := m.daemon_pid()) is not None])
    _signal(pids, signal.SIGUSR1)
    time.sleep(2)  # faulthandler writes at once; give the log a moment anyway
    print(f"\n=== {item.nodeid} ran past {timeout:.0f} s: killing its mount daemons {pids}", file=sys.stderr)
    for m in mounts:
        lines = m.log().splitlines()[-LOG_TAIL:]
        print(f"=== the end of {m.log_path}:\n" + "\n".join(lines), file=sys.stderr)
    _signal(pids, signal.SIGKILL)
    for m in mounts:
        subprocess.run(["fusermount3", "-uz", str(m.path)], capture_output=True, check=False)


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them (a daemon's engine workers)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, ppid in parent.items() if ppid == pid]
    return found
