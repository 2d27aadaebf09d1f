"""``chunkfs mount`` / ``chunkfs umount`` and the ``mount.chunkfs`` helper for mount(8).

``chunkfs mount`` without ``--foreground`` starts the daemon as a child process
in its own session (output to ``REPO/mount.log``) and returns once the child
reports, over a pipe, that the filesystem is mounted — or prints the child's
one-line reason why not.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from chunkfs import errors, mounts
from chunkfs.cli import output
from chunkfs.errors import BackendUnavailable, ChunkfsError, Conflict, NotFound
from chunkfs.fs import mount as fsmount
from chunkfs.repo import LOCK_NAME

READY_TIMEOUT = 60
UMOUNT_TIMEOUT = 600


def register(sub, repo_argument) -> None:
    p = sub.add_parser(
        "mount",
        help="mount a repository as a filesystem",
        description="Mount REPO at MOUNTPOINT. Returns once the filesystem is ready; the daemon "
        "keeps serving in the background (logging to REPO/mount.log) until `chunkfs umount`.",
    )
    p.add_argument("repo_dir", metavar="REPO", help="repository directory")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory (see -o nonempty)")
    p.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPTS",
        help="comma-separated mount options: allow_other, ro, nonempty, … (docs/mount.md)",
    )  # fmt: skip
    p.add_argument("-f", "--foreground", action="store_true", help="serve in this process (systemd, debugging)")
    p.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there while mounted (e.g. 127.0.0.1:9464)"
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_mount)

    p = sub.add_parser(
        "umount",
        help="flush, commit and unmount",
        description="Unmount MOUNTPOINT: every open file is committed and the daemon exits.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(handler=cmd_umount)


def cmd_mount(args) -> int:
    repo, mountpoint = Path(args.repo_dir).resolve(), Path(args.mountpoint)
    if args.foreground or args.ready_fd is not None:
        return _serve(repo, mountpoint, args.options, args.ready_fd, args.metrics)
    fsmount.check_mountpoint(mountpoint.resolve(), args.options)
    if not repo.is_dir():
        raise NotFound(f"{repo}: not a chunkfs repository; create one with `chunkfs init`")
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "chunkfs"] + (["-v"] if args.verbose else [])
    cmd += ["mount", str(repo), str(mountpoint), "--ready-fd", str(write_fd)]
    cmd += [f"-o{o}" for o in args.options]
    if args.metrics:
        cmd += ["--metrics", args.metrics]
    with open(repo / "mount.log", "ab") as log:
        child = subprocess.Popen(
            cmd, pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        message = ready.readline().strip()
    if message != "ok":
        child.wait(timeout=READY_TIMEOUT)
        kind, _, text = message.partition(" ")
        if not text:
            raise ChunkfsError(f"the mount daemon exited ({child.returncode}); see {repo}/mount.log")
        raise errors.by_name(kind, text)  # the daemon's error, of its kind (its exit code)
    output.out.print(f"mounted {repo} at {mountpoint.resolve()} (daemon pid {child.pid})")
    return 0


def _serve(repo: Path, mountpoint: Path, options: list[str], ready_fd: int | None, metrics: str | None) -> int:
    logging.getLogger().setLevel(logging.INFO)

    def ready(problem: Exception | None) -> None:
        """Tell the waiting ``chunkfs mount``: ``ok``, or ``KIND message`` on one line."""
        if ready_fd is None:
            return
        if problem is None:
            line = "ok"
        else:
            kind = type(problem).__name__ if isinstance(problem, ChunkfsError) else "ChunkfsError"
            line = f"{kind} {' '.join(str(problem).split())}"
        os.write(ready_fd, line.encode() + b"\n")
        os.close(ready_fd)

    fsmount.serve(repo, mountpoint, options, ready, metrics)
    return 0


def cmd_umount(args) -> int:
    mountpoint = Path(args.mountpoint).resolve()
    mounted = mounts.at(mountpoint)
    if mounted is None or mounted.fstype != mounts.FSTYPE:
        raise NotFound(f"{mountpoint}: no chunkfs filesystem is mounted here")
    repo, read_only = mounted.source, mounted.read_only
    pid = None if read_only else _daemon_pid(repo)  # a read-only daemon has nothing to commit (and no lock)
    done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "fusermount3 failed"
        if "busy" in reason.lower():
            users = "; ".join(holders(mountpoint)[:8]) or "a process this user cannot see"
            raise Conflict(f"{mountpoint}: filesystem is busy, held by {users}; close them and retry")
        raise BackendUnavailable(f"{mountpoint}: cannot unmount: {reason}")
    deadline = time.monotonic() + UMOUNT_TIMEOUT
    while pid is not None and _alive(pid):  # the daemon commits and seals before it exits
        if time.monotonic() > deadline:
            raise ChunkfsError(f"{mountpoint}: unmounted, but daemon {pid} is still committing; see {repo}/mount.log")
        time.sleep(0.05)
    output.out.print(f"unmounted {mountpoint}")
    return 0


def holders(mountpoint: Path) -> list[str]:
    """The processes that hold ``mountpoint`` busy, as ``fuser -m`` finds them: "pid N (COMMAND:
    how)" for a working or root directory, an open file or a mapped file under it. Only links in
    /proc are read — nothing on the mount itself, which could hang."""
    inside = str(mountpoint)

    def under(target: str) -> bool:
        return target == inside or target.startswith(inside + "/")

    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        uses = []
        for what in ("cwd", "root"):
            with contextlib.suppress(OSError):
                if under(os.readlink(f"/proc/{entry.name}/{what}")):
                    uses.append("working directory" if what == "cwd" else "root directory")
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{entry.name}/fd/{fd}")
                    if under(target):
                        uses.append(f"open {target}")
        with contextlib.suppress(OSError), open(f"/proc/{entry.name}/maps") as maps:
            mapped = {parts[5].strip() for line in maps if len(parts := line.split(maxsplit=5)) == 6}
            uses += [f"mapped {m}" for m in sorted(mapped) if under(m)]
        if uses:
            comm = "?"
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
            found.append(f"pid {entry.name} ({comm}: {', '.join(dict.fromkeys(uses))})")
    return found


def _daemon_pid(repo: Path) -> int | None:
    try:
        text = (repo / LOCK_NAME).read_text().split()
        return int(text[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def mount_helper() -> None:
    """``mount.chunkfs REPO MOUNTPOINT [-o OPTS]``: the interface mount(8) and fstab use."""
    from chunkfs.cli.main import main

    parser = argparse.ArgumentParser(prog="mount.chunkfs", description="mount(8) helper for chunkfs")
    parser.add_argument("repo")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    for flag in ("-n", "-s", "-f", "-v"):  # mount(8) passes these; they change nothing here
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args()
    argv = ["mount", args.repo, args.mountpoint] + [f"-o{o}" for o in args.options]
    sys.exit(main(argv))
