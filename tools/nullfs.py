#!/usr/bin/env python3
"""The FUSE ceiling: a pyfuse3 filesystem that stores nothing, for calibrating the mount benchmark.

Files can be created, written (the bytes are dropped, only the size is kept)
and read back (zeros). It runs with the same pyfuse3 + trio stack and the same
options as chunkfs (``enable_writeback_cache``, ``default_permissions``, read-ahead
raised to 4096 KiB once the kernel has finished FUSE INIT), so its throughput is
the most any Python FUSE filesystem can reach on this machine: what is left
between it and chunkfs is chunkfs's own work.

    python tools/nullfs.py MOUNTPOINT [--ready-file PATH] [--read-ahead-kb 4096] [--to-thread]
                           [--max-background N] [--no-writeback-cache]

Serves in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or
SIGTERM. ``--to-thread`` answers every read/write through
``trio.to_thread.run_sync`` like chunkfs does (to measure the cost of that hop).
``--max-background N`` sets the kernel's limit of background requests in flight
(written-back pages, read-ahead; the kernel's default is 12) and its congestion
threshold (3/4 of it) through the fusectl files of the connection;
``--no-writeback-cache`` makes every write() a synchronous WRITE request
(tools/bench_fuse_ceiling.py compares them).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
ZEROS = bytes(16 << 20)


class NullFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, to_thread: bool, writeback_cache: bool = True) -> None:
        super().__init__()
        self.to_thread = to_thread
        self.enable_writeback_cache = writeback_cache
        self.names: dict[tuple[int, bytes], int] = {}
        self.kind: dict[int, int] = {ROOT: stat.S_IFDIR | 0o755}
        self.sizes: dict[int, int] = {ROOT: 0}
        self.next_ino = ROOT + 1

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = self.kind[ino]
        a.st_nlink = 2 if stat.S_ISDIR(self.kind[ino]) else 1
        a.st_size = self.sizes[ino]
        a.st_blksize = 1 << 20
        a.st_blocks = (a.st_size + 511) // 512
        a.entry_timeout = a.attr_timeout = 1.0
        return a

    async def lookup(self, parent, name, ctx=None):
        ino = ROOT if name in (b".", b"..") and parent == ROOT else self.names.get((parent, name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            self.sizes[inode] = attr.st_size
        return self._attr(inode)

    def _new(self, parent: int, name: bytes, mode: int) -> int:
        if (parent, name) in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        self.names[(parent, name)] = ino
        self.kind[ino], self.sizes[ino] = mode, 0
        return ino

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777)))

    async def create(self, parent_inode, name, mode, flags, ctx):
        ino = self.names.get((parent_inode, name)) or self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        return pyfuse3.FileInfo(fh=ino, keep_cache=True), self._attr(ino)

    async def open(self, inode, flags, ctx):
        if flags & os.O_TRUNC:
            self.sizes[inode] = 0
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        entries = [(n, i) for (p, n), i in self.names.items() if p == fh]
        for k in range(start_id, len(entries)):
            name, ino = entries[k]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), k + 1):
                return

    async def unlink(self, parent_inode, name, ctx):
        self.names.pop((parent_inode, name), None)

    def _write(self, fh: int, off: int, buf: bytes) -> int:
        self.sizes[fh] = max(self.sizes[fh], off + len(buf))
        return len(buf)

    def _read(self, fh: int, off: int, size: int) -> bytes:
        n = max(0, min(size, self.sizes[fh] - off))
        return ZEROS[:n]

    async def write(self, fh, off, buf):
        if self.to_thread:
            return await trio.to_thread.run_sync(self._write, fh, off, buf)
        return self._write(fh, off, buf)

    async def read(self, fh, off, size):
        if self.to_thread:
            return await trio.to_thread.run_sync(self._read, fh, off, size)
        return self._read(fh, off, size)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        pass

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_namemax = 255
        return s


def _bdi(mountpoint: Path) -> Path | None:
    with open("/proc/self/mountinfo") as f:
        dev = [ln.split()[2] for ln in f if ln.split()[4] == str(mountpoint)]
    return Path(f"/sys/class/bdi/{dev[-1]}") if dev else None


def connection(bdi: Path) -> Path:
    """The fusectl directory of the FUSE connection behind ``bdi`` (``/sys/class/bdi/0:N``)."""
    return Path(f"/sys/fs/fuse/connections/{bdi.name.split(':')[1]}")


def set_max_background(bdi: Path, n: int) -> None:
    """Raise the connection's background request limit (congestion threshold first lowered or
    raised with it: the kernel refuses a threshold above the limit)."""
    conn = connection(bdi)
    if not conn.exists():
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"], check=False)
    threshold = max(1, n * 3 // 4)
    if n >= int((conn / "max_background").read_text()):
        (conn / "max_background").write_text(str(n))
        (conn / "congestion_threshold").write_text(str(threshold))
    else:
        (conn / "congestion_threshold").write_text(str(threshold))
        (conn / "max_background").write_text(str(n))


async def _main(mountpoint: Path, read_ahead_kb: int, ready_file: str | None, max_background: int | None) -> None:
    async def tune():
        await trio.sleep(0.2)  # after FUSE INIT, which would reset it
        bdi = _bdi(mountpoint)
        if bdi and read_ahead_kb:
            (bdi / "read_ahead_kb").write_text(str(read_ahead_kb))
        if bdi and max_background:
            set_max_background(bdi, max_background)
        if ready_file:
            Path(ready_file).write_text(f"pid {os.getpid()}\n")

    async def on_signal():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as n:
        n.start_soon(tune)
        n.start_soon(on_signal)
        await pyfuse3.main()
        n.cancel_scope.cancel()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--ready-file", help="written (pid N) once mounted and tuned")
    p.add_argument("--read-ahead-kb", type=int, default=4096)
    p.add_argument("--to-thread", action="store_true", help="answer reads/writes via trio.to_thread like chunkfs")
    p.add_argument("--max-background", type=int, default=None, help="background requests in flight (kernel default 12)")
    p.add_argument("--no-writeback-cache", action="store_true", help="every write() a synchronous WRITE request")
    args = p.parse_args(argv)
    mp = args.mountpoint.resolve()
    fs = NullFS(args.to_thread, not args.no_writeback_cache)
    pyfuse3.init(fs, str(mp), set(pyfuse3.default_options) | {"fsname=nullfs", "subtype=nullfs"})
    try:
        trio.run(_main, mp, args.read_ahead_kb, args.ready_file, args.max_background)
    finally:
        pyfuse3.close(unmount=os.path.ismount(mp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
