#!/usr/bin/env python3
"""What bounds a Python FUSE filesystem on this machine: tools/nullfs.py under each setting.

The mount benchmark (tools/bench_mount.py) compares chunkfs with tools/nullfs.py, a pyfuse3
filesystem that stores nothing: the most a Python FUSE daemon can move. This measures what
bounds that ceiling itself, one setting at a time against the defaults chunkfs uses
(writeback cache on, read-ahead 4096 KiB, the kernel's 12 background requests, 1 MiB
writes, requests answered on trio's thread):

* ``max_background`` — background requests in flight (written-back pages, read-ahead),
  and with it the congestion threshold (3/4 of it): 12 (kernel default), 32, 64, 128;
* request size — the application's write()/read() size: 128 KiB, 1 MiB, 4 MiB (the kernel
  cuts requests at 1 MiB, its ``max_pages``);
* the writeback cache off — every write() one synchronous WRITE request;
* the thread hop — every request answered through ``trio.to_thread`` (as chunkfs does for
  the calls that may block).

Each case writes ``--size`` bytes from memory to a new file and closes it (the close waits
for the kernel to write back its pages), then reads it back cold, ``--repeat`` times
(medians), with the daemon's CPU seconds per GB beside. Root is needed (FUSE, drop_caches,
the fusectl files). splice is not a setting here: pyfuse3 receives requests with
``fuse_session_receive_buf`` and libfuse uses splice only when the filesystem asks for
``FUSE_CAP_SPLICE_*`` in its INIT, which pyfuse3 does not expose.

    python tools/bench_fuse_ceiling.py [--size 1G] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
from bench_mount import NullMount, cpu_seconds

MiB = bl.MiB

CASES: list[tuple[str, list[str], bool, int]] = [
    # (name, nullfs.py arguments, to_thread, block)
    ("defaults (max_background 12, 1 MiB)", [], False, MiB),
    ("max_background 32", ["--max-background", "32"], False, MiB),
    ("max_background 64", ["--max-background", "64"], False, MiB),
    ("max_background 128", ["--max-background", "128"], False, MiB),
    ("128 KiB requests", [], False, 128 << 10),
    ("4 MiB requests", [], False, 4 * MiB),
    ("writeback cache off", ["--no-writeback-cache"], False, MiB),
    ("through trio.to_thread", [], True, MiB),
    ("to_thread + max_background 64", ["--max-background", "64"], True, MiB),
]


def write_from_memory(path: Path, size: int, block: int) -> float:
    buf = memoryview(os.urandom(block))
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // block):
            os.write(fd, buf)
    finally:
        os.close(fd)  # FLUSH: the kernel writes its dirty pages back first
    return time.perf_counter() - t0


def read_cold(path: Path, block: int) -> float:
    if not bl.drop_caches():
        raise SystemExit("cannot drop the page cache: run as root")
    return bl.timed(bl.read_file, path, block)[0]


def measure(work: Path, size: int, repeat: int) -> list[dict]:
    out = []
    for name, extra, to_thread, block in CASES:
        runs = []
        for i in range(repeat):
            m = NullMount(work / f"null-{len(out)}-{i}", to_thread, extra)
            m.mount()
            try:
                pid = m.proc.pid
                c0 = cpu_seconds(pid)
                w = write_from_memory(m.mnt / "f", size, block)
                c1 = cpu_seconds(pid)
                r = read_cold(m.mnt / "f", block)
                c2 = cpu_seconds(pid)
            finally:
                m.umount()
            runs.append({"write_s": w, "read_s": r, "write_cpu_s": c1 - c0, "read_cpu_s": c2 - c1})
        gb = size / 1e9
        row = {
            "case": name, "args": extra, "to_thread": to_thread, "block": block,
            "write_mb_s": bl.median(size / 1e6 / x["write_s"] for x in runs),
            "read_mb_s": bl.median(size / 1e6 / x["read_s"] for x in runs),
            "write_cpu_s_per_gb": bl.median(x["write_cpu_s"] / gb for x in runs),
            "read_cpu_s_per_gb": bl.median(x["read_cpu_s"] / gb for x in runs),
            "runs": runs,
        }  # fmt: skip
        bl.log(f"{name}: write {row['write_mb_s']:,.0f} MB/s, read {row['read_mb_s']:,.0f} MB/s")
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--size", default="1G", help="bytes written and read per case (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; medians are reported (default 3)")
    p.add_argument("--workdir", default="/var/tmp", help="where the mountpoints go (default /var/tmp)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("must run as root (FUSE mounts, drop_caches, fusectl)")
    work = Path(tempfile.mkdtemp(prefix="chunkfs-fuse-ceiling-", dir=args.workdir))
    try:
        rows = measure(work, bl.parse_size(args.size), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # empty mountpoints, once unmounted
    if args.json:
        json.dump({"args": vars(args), "code": bl.code_version(), "cases": rows}, sys.stdout, indent=2)
        print()
        return 0
    base = rows[0]
    bl.print_table(
        f"FUSE ceiling: tools/nullfs.py, {args.size} per case (median of {args.repeat})",
        ["case", "write MB/s", "vs defaults", "CPU s/GB", "cold read MB/s", "vs defaults", "CPU s/GB"],
        [[r["case"], r["write_mb_s"], f"{r['write_mb_s'] / base['write_mb_s']:.2f}×", r["write_cpu_s_per_gb"],
          r["read_mb_s"], f"{r['read_mb_s'] / base['read_mb_s']:.2f}×", r["read_cpu_s_per_gb"]] for r in rows],
        note="write: from memory, then close (which waits for the written-back pages); read: after drop_caches",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
