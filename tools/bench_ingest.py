#!/usr/bin/env python3
"""Ingest benchmark: a checkpoint series through the library, beside a plain copy of the same bytes.

A real checkpoint series is generated with torch (a llama-like transformer of
``--size-mb``, bf16 or fp32, saved with safetensors or torch.save), then each
checkpoint is

* imported with ``chunkfs.ops.transfer.import_tree`` into a fresh repository
  (the path ``chunkfs import`` takes; same chunking as a write through the mount),
* copied with ``shutil.copyfile`` + ``fsync`` into a plain directory on the same disk,

interleaved (the order alternates from run to run), ``--repeat`` times; the
figures are medians. Sources are read from the page cache in both cases, so
what is compared is the write side.

Modes (how checkpoint N+1 differs from checkpoint N):

* ``full``   — every weight changes a little (a full fine-tune: exact dedup cannot help);
* ``frozen`` — only the last transformer layers change (``--changed`` of the bytes, whole layers);
* ``rows``   — in every matrix a contiguous block of ``--changed`` of its rows changes
  (sparse updates inside tensors: what chunk size decides).

``--chunk-size 1M,2M,4M,8M`` runs the whole series once per chunk size and adds
a comparison table (dedup of the changed checkpoints, throughput, index size).

Examples::

    python tools/bench_ingest.py --size-mb 256 --mode frozen
    python tools/bench_ingest.py --size-mb 256 --mode rows --chunk-size 1M,2M,4M,8M --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib as bl

from chunkfs import config
from chunkfs.ops.transfer import import_tree
from chunkfs.repo import Repository

# -- the checkpoint series ------------------------------------------------------------------------


def build_model(size: int, dtype, seed: int, hidden: int | None = None):
    """A llama-like decoder (embedding, N × (attention + gated MLP + 2 RMSNorm), norm, lm_head)."""
    import torch
    from torch import nn

    bpp = torch.finfo(dtype).bits // 8
    vocab, hidden, inter, layers = bl.model_dims(size, bpp, hidden)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = nn.RMSNorm(hidden)
            self.self_attn = nn.ModuleDict(
                {k: nn.Linear(hidden, hidden, bias=False) for k in ("q_proj", "k_proj", "v_proj", "o_proj")}
            )
            self.post_attention_layernorm = nn.RMSNorm(hidden)
            self.mlp = nn.ModuleDict(
                {
                    "gate_proj": nn.Linear(hidden, inter, bias=False),
                    "up_proj": nn.Linear(hidden, inter, bias=False),
                    "down_proj": nn.Linear(inter, hidden, bias=False),
                }
            )

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.RMSNorm(hidden)
            self.lm_head = nn.Linear(hidden, vocab, bias=False)

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Model()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
                p.add_(torch.randn_like(p) * 0.01)
            else:
                p.normal_(0.0, 0.02)
    model = model.to(dtype)
    info = {"vocab": vocab, "hidden": hidden, "intermediate": inter, "layers": layers}
    return model, info


def step(model, mode: str, changed: float, gen) -> float:
    """Change the weights as one training step of ``mode`` would; return the fraction of bytes touched."""
    import torch

    params = dict(model.named_parameters())
    total = sum(p.numel() * p.element_size() for p in params.values())
    touched = 0
    with torch.no_grad():
        if mode == "full":
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 1e-3)
            touched = total
        elif mode == "frozen":
            layers = model.layers
            names = ["norm.weight"]
            acc = 0
            for i in reversed(range(len(layers))):
                if acc >= changed * total:
                    break
                prefix = f"layers.{i}."
                names += [n for n in params if n.startswith(prefix)]
                acc += sum(params[n].numel() * params[n].element_size() for n in params if n.startswith(prefix))
            for n in names:
                p = params[n]
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 1e-3)
                touched += p.numel() * p.element_size()
        elif mode == "rows":
            for p in params.values():
                if p.dim() < 2:
                    continue
                rows = max(1, round(changed * p.shape[0]))
                start = int(torch.randint(0, p.shape[0] - rows + 1, (1,), generator=gen))
                block = p[start : start + rows]
                block.add_(torch.randn(block.shape, generator=gen).to(p.dtype) * 1e-3)
                touched += block.numel() * block.element_size()
        else:
            raise ValueError(mode)
    return touched / total


def save(model, path: Path, fmt: str) -> None:
    import torch

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, str(path))


def generate_series(args, src: Path) -> list[dict]:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model, info = build_model(args.size_mb << 20, dtype, args.seed, args.hidden)
    bl.log(f"model: {info} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {args.dtype})")
    gen = torch.Generator().manual_seed(args.seed + 1)
    ext = "safetensors" if args.format == "safetensors" else "pt"
    series = []
    for i in range(args.steps):
        touched = 0.0 if i == 0 else step(model, args.mode, args.changed, gen)
        d = src / f"step-{i:04d}"
        d.mkdir(parents=True)
        save(model, d / f"model.{ext}", args.format)
        series.append({"step": i, "dir": d, "bytes": bl.tree_bytes(d), "touched": touched})
        bl.log(f"generated {d} ({series[-1]['bytes'] / 1e6:.0f} MB, {touched:.1%} of the weights changed)")
    series[0]["model"] = info
    return series


# -- one run --------------------------------------------------------------------------------------


@dataclass
class Sample:
    step: int
    bytes: int
    chunkfs_s: float
    plain_s: float
    chunkfs_cpu_s: float  # CPU time of this process during the import (all threads)
    stored: int  # pack bytes added by this checkpoint
    chunks: int  # chunks cut (new + reused)
    new_chunks: int


@dataclass
class RunResult:
    chunk_size: int
    samples: list[Sample] = field(default_factory=list)
    index_bytes: int = 0
    chunk_count: int = 0


def plain_copy(src_dir: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True)
    for f in sorted(src_dir.iterdir()):
        shutil.copyfile(f, dst_dir / f.name)
        fd = os.open(dst_dir / f.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(dst_dir, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def run_once(series: list[dict], work: Path, chunk_size: int, plain_first: bool) -> RunResult:
    repo_dir, plain = work / "repo", work / "plain"
    plain.mkdir()
    settings = config.Settings(chunking=config.ChunkingSettings(chunk_size=chunk_size))
    repo = Repository.create(repo_dir, settings=settings)
    result = RunResult(chunk_size)
    try:
        for ck in series:
            for f in ck["dir"].iterdir():
                bl.warm(f)
            c = repo.chunks
            before = (c.new_chunks + c.reused_chunks, c.new_chunks, bl.tree_bytes(repo.hot_path))

            cpu = {}

            def chunkfs_import(ck=ck, cpu=cpu):
                c0 = time.process_time()
                t = bl.timed(import_tree, repo, ck["dir"], f"/run/step-{ck['step']:04d}")[0]
                cpu["s"] = time.process_time() - c0
                return t

            def plain_import(ck=ck):
                return bl.timed(plain_copy, ck["dir"], plain / ck["dir"].name)[0]

            if plain_first:
                t_plain = plain_import()
                t_cfs = chunkfs_import()
            else:
                t_cfs = chunkfs_import()
                t_plain = plain_import()
            after = (c.new_chunks + c.reused_chunks, c.new_chunks, bl.tree_bytes(repo.hot_path))
            result.samples.append(
                Sample(ck["step"], ck["bytes"], t_cfs, t_plain, cpu["s"], after[2] - before[2], after[0] - before[0],
                       after[1] - before[1])
            )
        with repo.index.read() as t:
            result.chunk_count = sum(1 for _ in t.chunks())
        result.index_bytes = repo.index.used_bytes()
    finally:
        repo.close()
    return result


# -- reporting ------------------------------------------------------------------------------------


def summarise(runs: list[RunResult], series: list[dict]) -> dict:
    """Medians over repeats, per checkpoint and in total."""
    rows = []
    n = len(series)
    for i in range(n):
        ss = [r.samples[i] for r in runs]
        b = ss[0].bytes
        rows.append(
            {
                "step": ss[0].step,
                "bytes": b,
                "touched": series[i]["touched"],
                "chunkfs_mb_s": bl.median(bl.mb_s(b, s.chunkfs_s) for s in ss),
                "plain_mb_s": bl.median(bl.mb_s(b, s.plain_s) for s in ss),
                "ratio": bl.median(s.plain_s / s.chunkfs_s for s in ss),
                "cpu_s_per_gb": bl.median(s.chunkfs_cpu_s / (b / 1e9) for s in ss),
                "stored_ratio": bl.median(s.stored / b for s in ss),
                "chunks_s": bl.median(s.chunks / s.chunkfs_s for s in ss),
                "chunks": ss[0].chunks,
                "new_chunks": ss[0].new_chunks,
            }
        )
    total_b = sum(s.bytes for s in runs[0].samples)
    total = {
        "bytes": total_b,
        "chunkfs_mb_s": bl.median(bl.mb_s(total_b, sum(s.chunkfs_s for s in r.samples)) for r in runs),
        "plain_mb_s": bl.median(bl.mb_s(total_b, sum(s.plain_s for s in r.samples)) for r in runs),
        "ratio": bl.median(sum(s.plain_s for s in r.samples) / sum(s.chunkfs_s for s in r.samples) for r in runs),
        "cpu_s_per_gb": bl.median(sum(s.chunkfs_cpu_s for s in r.samples) / (total_b / 1e9) for r in runs),
        "stored_ratio": bl.median(sum(s.stored for s in r.samples) / total_b for r in runs),
        "chunks_s": bl.median(sum(s.chunks for s in r.samples) / sum(s.chunkfs_s for s in r.samples) for r in runs),
        "chunks": sum(s.chunks for s in runs[0].samples),
        "new_chunks": sum(s.new_chunks for s in runs[0].samples),
        "index_bytes": runs[0].index_bytes,
        "distinct_chunks": runs[0].chunk_count,
    }
    changed = rows[1:]
    total["changed_stored_ratio"] = (
        sum(r["stored_ratio"] * r["bytes"] for r in changed) / sum(r["bytes"] for r in changed) if changed else None
    )
    total["changed_mb_s"] = bl.median(
        bl.mb_s(sum(s.bytes for s in r.samples[1:]), sum(s.chunkfs_s for s in r.samples[1:])) for r in runs
    ) if changed else None
    total["changed_cpu_s_per_gb"] = bl.median(
        sum(s.chunkfs_cpu_s for s in r.samples[1:]) / (sum(s.bytes for s in r.samples[1:]) / 1e9) for r in runs
    ) if changed else None
    total["fresh_cpu_s_per_gb"] = rows[0]["cpu_s_per_gb"]
    total["changed_ratio"] = bl.median(
        sum(s.plain_s for s in r.samples[1:]) / sum(s.chunkfs_s for s in r.samples[1:]) for r in runs
    ) if changed else None
    return {"checkpoints": rows, "total": total}


def print_report(args, per_size: dict[int, dict]) -> None:
    for cs, summ in per_size.items():
        rows = []
        for r in summ["checkpoints"]:
            rows.append([
                f"step {r['step']}", f"{r['bytes'] / 1e6:,.0f}", f"{r['touched']:.0%}",
                r["chunkfs_mb_s"], r["plain_mb_s"], f"{r['ratio']:.2f}×", r["cpu_s_per_gb"],
                f"{r['stored_ratio']:.3f}", r["chunks_s"], r["chunks"], r["new_chunks"],
            ])  # fmt: skip
        t = summ["total"]
        rows.append([
            "total", f"{t['bytes'] / 1e6:,.0f}", "", t["chunkfs_mb_s"], t["plain_mb_s"], f"{t['ratio']:.2f}×",
            t["cpu_s_per_gb"], f"{t['stored_ratio']:.3f}", t["chunks_s"], t["chunks"], t["new_chunks"],
        ])  # fmt: skip
        bl.print_table(
            f"ingest: {args.mode} series, {args.format}, {args.dtype}, chunk size {cs >> 20} MiB "
            f"(median of {args.repeat})",
            ["checkpoint", "MB", "changed", "chunkfs MB/s", "plain MB/s", "ratio", "CPU s/GB", "stored/logical",
             "chunks/s", "chunks", "new chunks"],
            rows,
            note="ratio = chunkfs throughput / plain copy (shutil.copyfile + fsync) of the same bytes, same run",
        )  # fmt: skip
    if len(per_size) > 1:
        rows = []
        for cs, summ in per_size.items():
            t = summ["total"]
            rows.append([
                f"{cs >> 20} MiB", f"{t['changed_stored_ratio']:.3f}" if t["changed_stored_ratio"] is not None else "—",
                t["changed_mb_s"], t["changed_ratio"], t["fresh_cpu_s_per_gb"], t["changed_cpu_s_per_gb"],
                t["chunkfs_mb_s"], f"{t['ratio']:.2f}×",
                t["chunks_s"], t["distinct_chunks"], f"{t['index_bytes'] / 1e6:.2f}",
                f"{t['index_bytes'] / max(1, t['distinct_chunks']):.0f}",
                f"{t['index_bytes'] / (t['bytes'] / 1e9) / 1e6:.2f}",
            ])  # fmt: skip
        bl.print_table(
            f"chunk size: {args.mode} series, {args.changed:.0%} changed per step",
            ["chunk size", "changed ckpt stored/logical", "changed MB/s", "changed ratio", "fresh CPU s/GB",
             "changed CPU s/GB", "all MB/s",
             "all ratio", "chunks/s", "distinct chunks", "index MB", "index B/chunk", "index MB per GB"],
            rows,
        )  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--size-mb", type=int, default=256, help="model size in MB of weights (default 256)")
    p.add_argument("--steps", type=int, default=3, help="checkpoints in the series (default 3)")
    p.add_argument("--mode", choices=["full", "frozen", "rows"], default="frozen", help="what changes between checkpoints")
    p.add_argument("--changed", type=float, default=0.10, help="fraction changed per step for frozen/rows (default 0.10)")
    p.add_argument("--format", choices=["safetensors", "torch"], default="safetensors")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--hidden", type=int, default=None,
                   help="hidden size (default: the widest giving ≥ 8 layers); 2048+ gives LLM-sized tensors of 8–22 MiB")
    p.add_argument("--chunk-size", default="4M", help="chunk size, or a comma list to compare (1M,2M,4M,8M)")
    p.add_argument("--repeat", type=int, default=3, help="runs per chunk size; medians are reported (default 3)")
    p.add_argument("--workdir", default="/var/tmp", help="where to put sources, repositories and the plain directory "
                   "(must be the disk under test; default /var/tmp)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    sizes = [bl.parse_size(s) for s in args.chunk_size.split(",")]

    work = Path(tempfile.mkdtemp(prefix="chunkfs-bench-ingest-", dir=args.workdir))
    try:
        series = generate_series(args, work / "src")
        runs: dict[int, list[RunResult]] = {cs: [] for cs in sizes}
        for rep in range(args.repeat):
            for k, cs in enumerate(sizes):
                run_dir = work / f"run-{rep}-{cs}"
                run_dir.mkdir()
                plain_first = (rep + k) % 2 == 0
                t0 = time.perf_counter()
                runs[cs].append(run_once(series, run_dir, cs, plain_first))
                bl.log(f"repeat {rep + 1}/{args.repeat}, chunk size {cs >> 20} MiB: {time.perf_counter() - t0:.1f}s")
                shutil.rmtree(run_dir)
        per_size = {cs: summarise(rs, series) for cs, rs in runs.items()}
        if args.json:
            doc = {
                "args": vars(args),
                "code": bl.code_version(),
                "model": series[0]["model"],
                "results": {str(cs): s for cs, s in per_size.items()},
                "raw": {str(cs): [asdict(r) for r in rs] for cs, rs in runs.items()},
            }
            json.dump(doc, sys.stdout, indent=2)
            print()
        else:
            print_report(args, per_size)
            code = bl.code_version()
            bl.log(f"chunkfs at {code['head']}{' + uncommitted changes' if code['dirty'] else ''}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
