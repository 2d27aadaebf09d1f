#!/usr/bin/env python3
"""DCP checkpoints three ways, as ratios in one run: chunkfs.torch.Writer against DCP's own writer.

    python tools/bench_dcp.py [--size 2G] [--ranks 4] [--repeat 3] [--work DIR] [--json FILE]

RANKS processes (gloo, CPU) each hold a shard of a model and its AdamW moments (DTensors
split by rows, as FSDP2 holds them; SIZE bytes in all) and save it, each pass, to

  (a) DCP's ``FileSystemWriter`` on a plain directory of the same disk,
  (b) ``FileSystemWriter`` into a chunkfs mount (the bytes cross FUSE),
  (c) ``chunkfs.torch.Writer`` into another repository, mounted too (the ranks write it
      themselves, as shared writers beside the daemon).

Per pass and way: a **fresh** save (new random weights: nothing to dedup), then a save after
only the last 10% of the layers trained (weights and both moments changed, the rest
frozen: the new bytes stored are measured), then the same as ``dcp.async_save``: the time
the training loop is blocked (until ``async_save`` returns) and until the save is done.
Time is from a barrier before the save to a barrier after it, so the slowest rank counts;
the order of the ways rotates from pass to pass (the first async save of a process pays
DCP's one-time setup).
Ratios are of medians over the passes. Figures and verdicts go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
from bench_mount import Mount

WAYS = ("plain", "mount", "chunkfs")
TRAINED = 0.10


# -- one rank -----------------------------------------------------------------------------------


def rank_main(args) -> None:
    import warnings

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh

    import chunkfs.torch

    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world, timeout=datetime.timedelta(minutes=30))  # fmt: skip
    mesh = init_device_mesh("cpu", (args.world,))
    work = Path(args.work)
    layers, rows, cols = args.layers, args.rows, args.cols
    g = torch.Generator()

    def fresh_state(seed: int) -> dict:
        g.manual_seed(seed * 1000 + args.rank)
        state: dict = {}
        for i in range(layers):
            for kind in ("weight", "exp_avg", "exp_avg_sq"):
                local = torch.randn(rows, cols, generator=g)
                state[f"{kind}.{i}"] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
        state["step"] = seed
        return state

    def train_last_layers(state: dict) -> None:
        for i in range(layers - max(1, round(layers * TRAINED)), layers):
            for kind in ("weight", "exp_avg", "exp_avg_sq"):
                state[f"{kind}.{i}"].to_local().add_(1e-3)

    def writer(way: str, name: str):
        if way == "plain":
            return dcp.FileSystemWriter(work / "plain" / name)
        if way == "mount":
            return dcp.FileSystemWriter(work / "mnt-b" / name)
        return chunkfs.torch.Writer(work / "mnt-c" / name)

    def unique_bytes(way: str) -> int | None:
        if way == "plain" or args.rank != 0:
            return None
        repo = work / ("repo-b" if way == "mount" else "repo-c")
        out = subprocess.run([sys.executable, "-m", "chunkfs", "stats", "--repo", str(repo), "--json"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return json.loads(out)["unique_bytes"]

    results = []
    for p in range(args.repeat):
        for way in WAYS[p % len(WAYS):] + WAYS[: p % len(WAYS)]:  # the order rotates from pass to pass
            state = fresh_state(p)
            row = {"pass": p, "way": way}
            for phase in ("fresh", "trained", "async"):
                if phase != "fresh":
                    train_last_layers(state)
                before = unique_bytes(way)
                dist.barrier()
                t0 = time.perf_counter()
                if phase == "async":
                    fut = dcp.async_save(state, storage_writer=writer(way, f"p{p}-{phase}"))
                    row["async_blocked_s"] = time.perf_counter() - t0
                    fut.result()
                else:
                    dcp.save(state, storage_writer=writer(way, f"p{p}-{phase}"))
                dist.barrier()
                row[f"{phase}_s"] = time.perf_counter() - t0
                after = unique_bytes(way)
                if before is not None:
                    row[f"{phase}_new_bytes"] = after - before
            if way == "plain" and args.rank == 0:
                shutil.rmtree(work / "plain", ignore_errors=True)
            dist.barrier()
            results.append(row)
            if args.rank == 0:
                bl.log(f"pass {p} {way}: " + ", ".join(f"{k} {bl.fmt(v)}" for k, v in row.items() if k.endswith("_s")))
    if args.rank == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


# -- the launcher -------------------------------------------------------------------------------


def shape(size: int, world: int) -> tuple[int, int, int]:
    """(layers, rows per rank, cols) of float32 tensors, three per layer, ``size`` bytes in all."""
    layers, cols = 20, 1024
    rows = max(1, size // (layers * 3 * cols * 4 * world))
    return layers, rows, cols


def summarise(rows: list[dict], size: int) -> dict:
    med = {w: {k: bl.median(r[k] for r in rows if r["way"] == w and k in r)
               for k in ("fresh_s", "trained_s", "async_s", "async_blocked_s", "trained_new_bytes", "fresh_new_bytes")}
           for w in WAYS}  # fmt: skip
    a, b, c = med["plain"], med["mount"], med["chunkfs"]
    return {
        "medians": med,
        "fresh_MBps": {w: bl.mb_s(size, med[w]["fresh_s"]) for w in WAYS},
        "c_fresh_vs_a": a["fresh_s"] / c["fresh_s"],
        "c_fresh_vs_b": b["fresh_s"] / c["fresh_s"],
        "c_trained_speedup": c["fresh_s"] / c["trained_s"],
        "b_trained_speedup": b["fresh_s"] / b["trained_s"],
        "c_trained_new_fraction": c["trained_new_bytes"] / size,
        "b_trained_new_fraction": b["trained_new_bytes"] / size,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G", help="bytes of the whole state (model + AdamW moments), all ranks")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="passes (medians are taken over them)")
    ap.add_argument("--work", help="scratch directory (default: a new one under /var/tmp); removed after")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, help=argparse.SUPPRESS)
    for hidden in ("--port", "--out", "--layers", "--rows", "--cols"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank is not None:
        args.layers, args.rows, args.cols = int(args.layers), int(args.rows), int(args.cols)
        rank_main(args)
        return 0

    size = bl.parse_size(args.size)
    layers, rows, cols = shape(size, args.ranks)
    size = layers * 3 * rows * cols * 4 * args.ranks
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-dcp-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    chunkfs_cmd = [sys.executable, "-m", "chunkfs"]
    src = Path(__file__).resolve().parent.parent
    mounts = [Mount(chunkfs_cmd, work / f"repo-{x}", work / f"mnt-{x}", cwd=src) for x in "bc"]
    for m in mounts:
        m.init()
        m.mount()
        atexit.register(m.umount)
    out = work / "results.json"
    port = str(free_port())
    bl.log(f"{args.ranks} ranks, {size / bl.GiB:.2f} GiB of state ({layers} layers × 3 tensors), {args.repeat} passes")
    env = dict(os.environ, PYTHONPATH=str(src))
    procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--world", str(args.ranks), "--port", port,
                               "--out", str(out), "--work", str(work), "--repeat", str(args.repeat),
                               "--layers", str(layers), "--rows", str(rows), "--cols", str(cols)], env=env)
             for r in range(args.ranks)]  # fmt: skip
    codes = [p.wait() for p in procs]
    for m in mounts:
        m.umount()
    if any(codes):
        bl.log(f"a rank failed: exit codes {codes}")
        return 1
    rows_ = json.loads(out.read_text())
    s = summarise(rows_, size)
    s.update(size=size, ranks=args.ranks, repeat=args.repeat, code=bl.code_version())
    med = s["medians"]
    bl.print_table(
        f"DCP saves of {size / bl.GiB:.2f} GiB by {args.ranks} ranks (medians of {args.repeat})",
        ["way", "fresh s", "fresh MB/s", "10% trained s", "new bytes", "async blocked s", "async total s"],
        [[w, med[w]["fresh_s"], s["fresh_MBps"][w], med[w]["trained_s"],
          None if w == "plain" else f"{med[w]['trained_new_bytes'] / size:.1%}",
          med[w]["async_blocked_s"], med[w]["async_s"]] for w in WAYS],
        note=(f"(c) fresh vs (a) {s['c_fresh_vs_a']:.2f}× (target ≥ 0.8), vs (b) {s['c_fresh_vs_b']:.2f}× (target ≥ 2); "
              f"(c) 10%-trained {s['c_trained_speedup']:.2f}× faster than its fresh save (target ≥ 3)"),
    )  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
