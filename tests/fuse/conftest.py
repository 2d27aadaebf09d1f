"""Real mounts for the acceptance tests: a repository, a daemon started by the CLI, a clean teardown.

Every mount is made by the real command line (``python -m chunkfs mount``), so
the tests exercise what users run. Teardown always unmounts — ``chunkfs umount``
first; if that fails, SIGKILL of the daemon, an abort of its FUSE connection and
``fusermount3 -uz`` — so a broken test never leaves a mount behind for the next one. After unmounting, the
daemon's ``REPO/mount.log`` must hold no ERROR or Traceback line except those a
test declared it expects (``Mount.expect_log``), like S3QL's log checks; the log
is attached to the report of any failing test.

Mountpoints live in a world-traversable directory under /tmp (pytest's own
tmp_path is 0700), so the permission test can let another user reach them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers.cli import chunkfs
from helpers.mount import Mount, configure, is_mounted


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
    """``make_mount(options=[], hot=None, name="repo", settings=None, args=[], create=None)`` → a new
    repository, mounted by the CLI (``args``: more arguments of ``chunkfs mount``; ``create``: the
    command that makes it instead of a plain ``init``, e.g. ``["join", URL, "--endpoint-url", E]``,
    run as ``chunkfs CMD REPO ARGS…``)."""
    _require_fuse()
    mounts: list[Mount] = []
    request.node._chunkfs_mounts = mounts

    def make(
        *,
        options: list[str] | None = None,
        hot: Path | None = None,
        name: str = "repo",
        settings: dict | None = None,
        args: list[str] | None = None,
        create: list[str] | None = None,
    ) -> Mount:
        """``settings``: {section: {key: value}} written to chunkfs.toml before mounting."""
        repo = tmp_path / name
        command, *more = create or ["init"]
        chunkfs(command, repo, *more, *(["--hot", hot] if hot is not None else []))
        if settings:
            configure(repo, settings)
        path = mount_root / name
        path.mkdir()
        m = Mount(repo, path, list(options or []), args)
        mounts.append(m)
        m.mount()
        return m

    yield make

    problems = []
    for m in mounts:
        problems += m.cleanup()
    logs = []
    for m in mounts:
        if found := m.log_problems():
            problems += [f"{m.log_path}: {line}" for line in found]
            logs.append(f"--- the end of {m.log_path}:\n{m.log()[-6000:]}")  # the traceback's lines too
    if getattr(request.node, "_chunkfs_timed_out", False):
        problems.append("the test ran past its timeout: its daemons were killed (helpers/watchdog.py)")
    if problems and not getattr(request.node, "_chunkfs_failed", False):
        pytest.fail("after the test:\n" + "\n".join(problems + logs), pytrace=False)


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
