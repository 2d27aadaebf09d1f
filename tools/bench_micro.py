#!/usr/bin/env python3
"""Per-step costs of the write and read paths, in CPU seconds per GB, on this machine.

Each step of what the mount daemon does with a checkpoint's bytes, measured
alone on bf16 random-normal data (what weights look like), in this process's
CPU time (``time.thread_time``: less sensitive to other load than wall time):

* copies: ``bytes(bytearray[a:b])`` (the chunker's cut), ``bytearray +=`` (its
  feed), ``a + b`` of a record header and a chunk (the pack append), ``bytes(memoryview[a:b])``;
* BLAKE3 (one thread, and ``max_threads``), zstd levels 1 and 3 (cost and ratio),
  the ingest test-compression of a 64 KiB sample per chunk;
* ``os.pwrite`` of 4 MiB chunks into the page cache, ``fsync`` excluded;
* an LMDB lookup per chunk (the dedup check), a ``trio.to_thread.run_sync`` hop.

    python tools/bench_micro.py [--json] [--mb 256]

These are what the profile's percentages are made of (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import numpy as np  # noqa: E402

CHUNK = 4 << 20


FAULTS: dict[int, float] = {}
"""Minor page faults per GB of the last ``cpu_per_gb`` measurement (fresh memory being touched)."""


def cpu_per_gb(fn, nbytes: int, repeat: int = 3) -> float:
    """Median CPU seconds (this thread) per 10^9 bytes of ``fn()`` processing ``nbytes``."""
    runs, faults = [], []
    for _ in range(repeat):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.thread_time()
        fn()
        runs.append((time.thread_time() - t0) / (nbytes / 1e9))
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (nbytes / 1e9))
    FAULTS[0] = bl.median(faults)
    return bl.median(runs)


def wall_per_gb(fn, nbytes: int, repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) / (nbytes / 1e9))
    return bl.median(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--mb", type=int, default=256, help="MiB of data per measurement (default 256)")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import blake3
    import lmdb
    import trio
    import zstandard

    n = args.mb << 20
    rng = np.random.default_rng(0)
    data = bl.bf16_normal(rng, n // 2).tobytes()
    fp32 = (rng.standard_normal(CHUNK // 4, dtype=np.float32) * 0.02).tobytes()
    chunks = [data[i : i + CHUNK] for i in range(0, n, CHUNK)]
    mib = [data[i : i + (1 << 20)] for i in range(0, n, 1 << 20)]
    results: dict[str, dict] = {}

    def add(name: str, cpu: float, note: str = "") -> None:
        results[name] = {"cpu_s_per_gb": cpu, "gb_s_one_core": 1 / cpu if cpu else float("inf"),
                         "minor_faults_per_gb": FAULTS.get(0), "note": note}

    # -- copies ---------------------------------------------------------------------------
    buf = bytearray(data)

    def cut_bytes_of_slice():
        for i in range(0, n, CHUNK):
            bytes(buf[i : i + CHUNK])

    def cut_memoryview():
        with memoryview(buf) as mv:
            for i in range(0, n, CHUNK):
                bytes(mv[i : i + CHUNK])

    def feed_append():
        b = bytearray()
        for m in mib:
            b += m
            if len(b) >= CHUNK:
                del b[:CHUNK]

    header = bytes(44)

    def concat_record():
        for c in chunks:
            header + c

    add("copy: bytes(bytearray[a:b]) (chunker cut)", cpu_per_gb(cut_bytes_of_slice, n), "2 copies")
    add("copy: bytes(memoryview[a:b])", cpu_per_gb(cut_memoryview, n), "1 copy")
    add("copy: bytearray += 1 MiB; del [:4 MiB] (chunker feed)", cpu_per_gb(feed_append, n))
    add("copy: header + chunk (pack append)", cpu_per_gb(concat_record, n))

    # -- hashing and compression -------------------------------------------------------------
    add("BLAKE3, 4 MiB chunks, 1 thread", cpu_per_gb(lambda: [blake3.blake3(c).digest() for c in chunks], n))
    wall = wall_per_gb(lambda: [blake3.blake3(c, max_threads=blake3.blake3.AUTO).digest() for c in chunks], n)
    results["BLAKE3, 4 MiB chunks, max_threads (wall)"] = {"cpu_s_per_gb": None, "gb_s_one_core": 1 / wall,
                                                           "note": "wall time, all cores"}  # fmt: skip
    sub = chunks[: max(1, len(chunks) // 4)]
    sub_n = sum(map(len, sub))
    for level in (1, 3):
        z = zstandard.ZstdCompressor(level=level)
        ratio = sum(len(z.compress(c)) for c in sub[:4]) / sum(map(len, sub[:4]))
        add(f"zstd level {level}, bf16 chunks", cpu_per_gb(lambda z=z: [z.compress(c) for c in sub], sub_n, 1),
            f"output {ratio:.0%} of input")
    z3 = zstandard.ZstdCompressor(level=3)
    add("zstd level 3, fp32 chunk", cpu_per_gb(lambda: [z3.compress(fp32) for _ in range(8)], 8 * len(fp32), 1),
        f"output {len(z3.compress(fp32)) / len(fp32):.0%} of input")
    add("ingest test-compression (64 KiB sample per 4 MiB chunk, level 3)",
        cpu_per_gb(lambda: [z3.compress(c[: 64 << 10]) for c in chunks], n))  # fmt: skip

    # -- the disk and the index ------------------------------------------------------------------
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        fd = os.open(os.path.join(d, "pack"), os.O_RDWR | os.O_CREAT)

        def pwrite_all():
            off = 0
            for c in chunks:
                os.pwrite(fd, c, off)
                off += len(c)

        add("os.pwrite 4 MiB into the page cache (no fsync)", cpu_per_gb(pwrite_all, n))
        os.close(fd)
        env = lmdb.open(os.path.join(d, "idx"), map_size=1 << 30, sync=False, max_dbs=2)
        db = env.open_db(b"chunks")
        keys = [os.urandom(32) for _ in range(20000)]
        with env.begin(write=True) as t:
            for k in keys:
                t.put(k, bytes(33), db=db)

        def lookups():
            for k in keys:
                with env.begin(buffers=False) as t:
                    t.get(k, db=db)

        t0 = time.thread_time()
        lookups()
        per = (time.thread_time() - t0) / len(keys)
        results["LMDB lookup, one read txn per chunk"] = {
            "cpu_s_per_gb": per * (1e9 / CHUNK), "gb_s_one_core": None, "note": f"{per * 1e6:.1f} µs per lookup"}
        env.close()

    # -- the thread hop ----------------------------------------------------------------------------
    async def hops(count: int):
        for _ in range(count):
            await trio.to_thread.run_sync(int)

    count = 5000
    t0, c0 = time.perf_counter(), time.process_time()
    trio.run(hops, count)
    wall, cpu = (time.perf_counter() - t0) / count, (time.process_time() - c0) / count
    results["trio.to_thread.run_sync hop (per request)"] = {
        "cpu_s_per_gb": cpu * 1024, "gb_s_one_core": None,
        "note": f"{wall * 1e6:.0f} µs wall, {cpu * 1e6:.0f} µs CPU per hop; CPU per GB at 1 MiB requests"}  # fmt: skip

    if args.json:
        json.dump({"code": bl.code_version(), "mb": args.mb, "results": results}, sys.stdout, indent=2)
        print()
        return 0
    rows = [[k, v["cpu_s_per_gb"], v["gb_s_one_core"],
             f"{v['minor_faults_per_gb'] / 1e3:.0f}k" if v.get("minor_faults_per_gb") is not None else "—", v["note"]]
            for k, v in results.items()]  # fmt: skip
    bl.print_table(f"per-step costs ({args.mb} MiB of bf16 weights)",
                   ["step", "CPU s/GB", "GB/s (one core)", "page faults/GB", ""], rows)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
