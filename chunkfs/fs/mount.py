"""Running a mount: FUSE session setup, the trio main loop, clean shutdown.

``serve`` runs in the daemon process (``chunkfs mount --foreground``, or the
background child that plain ``chunkfs mount`` starts). It reports readiness
(or the one-line reason it could not mount) through ``ready``, serves until
the filesystem is unmounted or the process gets SIGTERM/SIGINT, then commits
every open file, seals the open packs and releases the repository.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from chunkfs import mounts
from chunkfs.errors import ChunkfsError, Conflict, NotADirectory, NotFound, UsageError
from chunkfs.fs.operations import ChunkfsOperations
from chunkfs.metrics import start_metrics_server
from chunkfs.repo import Repository

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)

READ_AHEAD_KB = 4096
"""Kernel read-ahead for the mount: makes the kernel read in 1 MiB requests
(DESIGN.md measured 0.6–1.0 GB/s at the default, 2.3–2.7 GB/s with this)."""

MAX_BACKGROUND = 64
"""Background requests the kernel keeps in flight to the daemon (written-back pages,
read-ahead); the kernel's default is 12, with a congestion threshold of 9 that throttles
writers early. docs/performance.md ("The FUSE ceiling") has the measurements behind it."""

SYNC_TIMEOUT = 300
"""Seconds a signalled daemon waits for the kernel to write back cached data before unmounting."""

IGNORED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "dev", "suid", "exec",
                   "nonempty"}  # fmt: skip
"""mount(8)/fstab options that mean nothing to a FUSE filesystem (``nonempty`` is chunkfs's own:
``check_mountpoint``; libfuse 3 has none)."""


def fuse_options(repo: Path, extra: list[str]) -> set[str]:
    opts = set(pyfuse3.default_options) | {f"fsname={repo}", f"subtype={mounts.FSTYPE.removeprefix('fuse.')}"}
    for item in extra:
        for opt in filter(None, item.split(",")):
            if opt in IGNORED_OPTIONS or opt.startswith(("x-systemd.", "comment=")):
                continue
            opts.add(opt)
    return opts


def check_mountpoint(mountpoint: Path, options: list[str] = ()) -> None:
    """Refuse a mountpoint that is missing, not a directory, mounted on, or not empty — the mount
    would hide its files — unless the options say ``nonempty``."""
    if not mountpoint.exists():
        raise NotFound(f"{mountpoint}: mountpoint does not exist; create it with mkdir")
    if not mountpoint.is_dir():
        raise NotADirectory(f"{mountpoint}: mountpoint is not a directory")
    if os.path.ismount(mountpoint):
        raise Conflict(f"{mountpoint}: something is already mounted here; unmount it first")
    nonempty = any("nonempty" in item.split(",") for item in options)
    if not nonempty and next(os.scandir(mountpoint), None) is not None:
        raise Conflict(
            f"{mountpoint}: not empty; mounting would hide its files. Use an empty directory, or pass "
            "-o nonempty to mount over them anyway"
        )


def _device_of(mountpoint: Path) -> str | None:
    """'major:minor' of the filesystem mounted at ``mountpoint`` (not from stat(): before the
    FUSE main loop runs, a stat of our own mountpoint would wait for an answer forever)."""
    m = mounts.at(mountpoint)
    return m.device if m is not None else None


async def _ready_after_init(
    ops: ChunkfsOperations, mountpoint: Path, ready: Callable[[Exception | None], None]
) -> None:
    """Report the mount ready once the kernel's FUSE INIT is answered and read-ahead raised.

    The INIT reply resets read-ahead to 128 KiB (set before, it never held), and a file
    takes the read-ahead of the moment it is opened: raised any later than this, the
    first files opened through the mount — a benchmark's, a loader's started right
    after ``chunkfs mount`` — read in 128 KiB requests (docs/performance.md).
    """
    await ops.initialized.wait()  # set while the INIT request is handled; its reply is out once we run
    await trio.to_thread.run_sync(_tune_connection, mountpoint)
    ready(None)
    log.info("serving %s at %s", ops.repo.path, mountpoint)


def _tune_connection(mountpoint: Path) -> None:
    """Raise the kernel's read-ahead and background request limit for this mount (root only:
    without them reads and write-back are slower, nothing worse)."""
    dev = _device_of(mountpoint)
    if dev is None:
        return
    path = Path(f"/sys/class/bdi/{dev}/read_ahead_kb")
    try:
        path.write_text(str(READ_AHEAD_KB))
    except OSError as e:
        log.info("cannot raise read-ahead (%s): %s", path, e)
    conn = Path(f"/sys/fs/fuse/connections/{dev.split(':')[1]}")
    try:  # the limit first: the kernel refuses a congestion threshold above it
        (conn / "max_background").write_text(str(MAX_BACKGROUND))
        (conn / "congestion_threshold").write_text(str(MAX_BACKGROUND * 3 // 4))
    except OSError as e:  # fusectl not mounted, or not root
        log.info("cannot raise the background request limit (%s): %s", conn, e)


def serve(
    repo_path: Path,
    mountpoint: Path,
    options: list[str],
    ready: Callable[[Exception | None], None],
    metrics: str | None = None,
) -> None:
    """Mount and serve until unmounted. ``ready(None)`` once mounted and the kernel's FUSE INIT
    answered, ``ready(error)`` on failure.

    ``metrics`` (``HOST:PORT``) serves Prometheus metrics while mounted. The
    repository's background work (write-back uploads to the warm tier, sealing
    idle packs) runs as long as the mount does. A read-only mount (``-o ro``)
    opens the repository without its write lock and runs no background work:
    it serves beside the one writer (another mount, an import), like the CLI's
    read commands.
    """
    mountpoint = mountpoint.resolve()
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # docs/operations.md
    read_only = "ro" in fuse_options(repo_path, options)
    try:
        check_mountpoint(mountpoint, options)
        repo = Repository(repo_path, writable=not read_only)
    except Exception as e:
        ready(e)
        raise
    try:
        metrics_server = start_metrics_server(metrics, repo) if metrics else None
    except ChunkfsError as e:
        repo.close()
        ready(e)
        raise
    try:  # the engine worker processes start here: they open the repository beside us
        ops = ChunkfsOperations(repo, writers=repo.settings.writers.count(os.cpu_count()) if repo.writable else 0)
    except ChunkfsError as e:
        repo.close()
        ready(e)
        raise
    try:
        pyfuse3.init(ops, str(mountpoint), fuse_options(repo.path, options))
    except RuntimeError as e:
        ops.close()
        repo.close()
        error = UsageError(f"{mountpoint}: cannot mount ({e}); is /dev/fuse available and fuse3 installed?")
        ready(error)
        raise error from None
    ops.notifier.start()
    if repo.writable:
        repo.start_background()
    repo.tune_allocator()
    signalled: list[int] = []
    try:
        trio.run(_main, ops, mountpoint, ready, signalled)
    finally:
        ops.close()
        # main() returns by itself only when the kernel unmounted us; after a
        # signal (or an error) the mount is still there and we take it down.
        pyfuse3.close(unmount=bool(signalled) or not _unmounted(mountpoint))
        repo.stop_background()
        if metrics_server is not None:
            metrics_server.stop()
        try:
            repo.close()
        except ChunkfsError as e:  # committed data is safe; open packs get sealed at the next mount
            log.error("cannot seal the open packs: %s", e)
        log.info("unmounted %s", mountpoint)


def _unmounted(mountpoint: Path) -> bool:
    # Not os.path.ismount: once the main loop has stopped, a stat of our own
    # mountpoint would wait forever for an answer.
    return _device_of(mountpoint) is None


def _syncfs(mountpoint: Path) -> None:
    """syncfs(2) without the GIL (``pyfuse3.syncfs`` holds it, and we must serve the writes it causes)."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            log.error("syncfs %s before unmounting: %s", mountpoint, os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)


async def _main(
    ops: ChunkfsOperations, mountpoint: Path, ready: Callable[[Exception | None], None], signalled: list[int]
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, mountpoint, signalled)
        nursery.start_soon(_ready_after_init, ops, mountpoint, ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(mountpoint: Path, signalled: list[int]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got signal %d: unmounting", signum)
            signalled.append(signum)
            # Files may still be open with data in the kernel's writeback cache,
            # which we have never seen: have the kernel write it to us (we keep
            # serving meanwhile) so that shutdown commits it.
            with trio.move_on_after(SYNC_TIMEOUT):
                await trio.to_thread.run_sync(_syncfs, mountpoint, abandon_on_cancel=True)
            pyfuse3.terminate()
            return
