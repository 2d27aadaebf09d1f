"""Fixtures every test gets."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import watchdog

from chunkfs import clock


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: pytest-timeout is a test extra
def pytest_timeout_set_timer(item, settings):
    """A test past its timeout: its mounts' stacks and logs, then the suite goes on (helpers/watchdog.py)."""
    return watchdog.arm(item, settings)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item):
    return watchdog.disarm(item)


@pytest.fixture(autouse=True)
def restore_clock(monkeypatch):
    """Tests move chunkfs's clock forward (``clock.advance``); put it back afterwards.

    Left moved, it would date the next tests' versions in the future, which a
    gc in another process (on the real clock) sees as too new to drop.
    """
    monkeypatch.setattr(clock, "_offset_ns", clock._offset_ns)


@pytest.fixture
def make_tmpfs(tmp_path):
    """``make_tmpfs("12m")`` → a directory on a tmpfs of that size: a small disk to fill (ENOSPC,
    hot-tier pressure). Unmounted after the test; skipped without root, which mounting needs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def make(size: str):
        path = tmp_path / f"tmpfs-{len(mounted)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)
