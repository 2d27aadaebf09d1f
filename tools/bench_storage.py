#!/usr/bin/env python3
"""Storage efficiency: how many bytes checkpoint series take once stored and tiered to warm.

Checkpoint series are generated with torch as real files (``--checkpoints`` each, default 6):

* ``finetune-fp32-sN`` (N = 3, 20, 100): a small LM-shaped model (embedding, 4 × (LayerNorm + 4×
  MLP), head; 7.4 M parameters, 29 MB fp32 at ``--scale 1``), pretrained a little (AdamW, lr 1e-3),
  then fine-tuned with AdamW at lr 1e-4, weight decay 0.01 on another task; every N steps
  ``torch.save({"model", "optimizer"})`` (AdamW moments included) and ``model.safetensors``. One
  training run, saved at the three spacings (checkpoints at steps N, 2N, …);
* ``finetune-bf16-s20``: the same in pure bf16 (``model.to(torch.bfloat16)``: weights and AdamW moments
  are bf16, no fp32 master; the gradients are computed on an fp32 copy and rounded to bf16, for
  speed), saved as above every 20 steps;
* ``frozen-backbone-s20``: backbone ``requires_grad=False``, only the head trained; full model (and the
  head's optimizer state) saved every 20 steps;
* ``lora-s20``: rank-8 adapters on every MLP matrix, base frozen; adapter-only safetensors every 20 steps;
* ``dcp4-fp32-adamw-s20`` (4-rank DCP, fp32 + AdamW): the fp32 model fine-tuned as above (AdamW, lr 1e-4)
  from the pretrained weights; every 20 steps 4 gloo ranks (CPU processes, ``torch.multiprocessing``) each
  hold a row shard (DTensor ``Shard(0)``) of every weight and of its AdamW ``exp_avg`` and ``exp_avg_sq``
  (the per-parameter ``step`` and the param groups replicated) and save them with ``dcp.save`` and DCP's
  plain ``FileSystemWriter``: ``__0_0.distcp`` … ``__3_0.distcp`` and ``.metadata`` per checkpoint. (The
  training runs in this process, which hands each checkpoint's full state to the ranks through a staging
  file; the ranks shard and save it after the training, so the bytes are those of a sharded run's saves);
* ``big-bf16-10pct``: one bf16 safetensors file (``--big-mib``, default 256 MiB, random-normal) written
  once and then rewritten with 10% of its tensors (by bytes) changed each time.

(``tools/bench_dcp.py`` measures the speed of DCP saves; here only what they take once stored.)

Each series is imported (``ops.transfer.import_tree``, one step directory at a time, as ``chunkfs
import`` does) into a fresh repository whose warm tier is a local directory, under
``/bench/<series>/run/step-K`` (one run); the run is marked complete and the policies applied (``chunkfs
tier``), which moves its packs to warm. Stored bytes = the pack objects under ``WARM/packs/``. Three times
per series, in one run: with ``lifecycle.warm_level = 0`` in chunkfs.toml (packs moved as they are: exact
dedup alone), with the default ``warm_level`` and ``delta_chain = 0`` (a complete run's packs re-encoded on
their way to warm, byte planes + zstd, no deltas; ``--warm-level N`` sets the level) and with the defaults
(re-encoded, older checkpoints stored as deltas of the newer: namespace/deltas.py). The newest and the
oldest checkpoint are then read back cold from warm (caches emptied), compared and timed (median of 3).

Printed per series, as a fraction of the logical bytes (all checkpoint files): zstd alone (each file
compressed whole, zstd level 3, no dedup), exact dedup (warm_level 0), planes (no deltas), chunkfs
(the defaults), the cold read speeds of the newest and the oldest checkpoint against planes, and a
per-tensor "ideal" computed here: per tensor per checkpoint, 0 if the same bytes were seen before in the
series (exact dedup), else the smallest of zstd-3 of its bytes, of its byte planes (the i-th byte of every
element together) and of the byte planes of its XOR with the same tensor of the previous checkpoint; plus
the files' non-tensor bytes (headers, pickles) as they are. A DCP checkpoint's tensors are found through
its ``.metadata`` (each item's file, offset and length), each item loaded from its byte range. Also the time ``chunkfs tier`` took for each
setting (the re-encoding cost) and the MB/s of hot packs it re-encoded.

    python tools/bench_storage.py            # defaults: a few minutes on 2 cores
    python tools/bench_storage.py --quick    # tiny sizes, a smoke run (< 1 minute)
    python tools/bench_storage.py --scale 2 --big-mib 1024 --json
    python tools/bench_storage.py --only dcp4-fp32-adamw-s20   # generates and measures that series alone
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib as bl
import numpy as np
import torch
import zstandard
from blake3 import blake3
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from chunkfs import config
from chunkfs.engine import codec
from chunkfs.ops import tier as tierop
from chunkfs.ops.transfer import import_tree
from chunkfs.repo import Repository

SPACINGS = (3, 20, 100)
OTHER_SPACING = 20
DCP_RANKS = 4
DCP_SERIES = f"dcp{DCP_RANKS}-fp32-adamw-s{OTHER_SPACING}"
SERIES = (*(f"finetune-fp32-s{s}" for s in SPACINGS), "finetune-bf16-s20", "frozen-backbone-s20", "lora-s20",
          "big-bf16-10pct", DCP_SERIES)  # fmt: skip

# -- the model and its training --------------------------------------------------------------------


class Net(nn.Module):
    """Embedding, ``layers`` × residual MLP (LayerNorm, d → 4d, GELU, 4d → d), LayerNorm, head."""

    def __init__(self, d: int, vocab: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = x + b(x)
        return self.head(self.norm(x))


class LoRA(nn.Module):
    """``base(x) + x Aᵀ Bᵀ · 2``: A random, B zero at the start (as peft does)."""

    def __init__(self, base: nn.Linear, r: int = 8):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T * 2.0


class Task:
    """Token → token mapping ``(a·t + b) mod vocab`` on random tokens, half the targets random: something
    to learn that no model predicts with certainty (no vanishing gradients: their squares would be
    denormals in AdamW's moments, which x86 computes several times slower)."""

    def __init__(self, vocab: int, a: int, b: int, seed: int, batch: int = 4, seq: int = 16):
        self.vocab, self.a, self.b, self.shape = vocab, a, b, (batch, seq)
        self.gen = torch.Generator().manual_seed(seed)

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, shadow: nn.Module | None = None) -> None:
        """One AdamW step. With ``shadow`` (an fp32 copy of a bf16 model) the gradients are computed on
        it (bf16 matmuls are 10-30× slower on this CPU) and rounded to bf16 for the bf16 optimizer."""
        tokens = torch.randint(self.vocab, self.shape, generator=self.gen)
        noise = torch.randint(self.vocab, self.shape, generator=self.gen)
        keep = torch.rand(self.shape, generator=self.gen) < 0.5
        target = torch.where(keep, (tokens * self.a + self.b) % self.vocab, noise)
        pairs = [] if shadow is None else list(zip(shadow.parameters(), model.parameters(), strict=True))
        with torch.no_grad():
            for s, p in pairs:
                s.copy_(p)
        net = model if shadow is None else shadow
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(tokens).flatten(0, 1).float(), target.flatten()).backward()
        for s, p in pairs:
            p.grad = s.grad.to(p.dtype)
        opt.step()


def save_full(where: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    where.mkdir(parents=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": sd, "optimizer": opt.state_dict()}, where / "checkpoint.pt")
    save_file(sd, str(where / "model.safetensors"))


def stage_state(where: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """The full state a DCP rank shards: weights and AdamW state by parameter name (as DCP's
    ``get_state_dict`` names them), the param groups with names for the parameters."""
    where.parent.mkdir(parents=True, exist_ok=True)
    names = {p: n for n, p in model.named_parameters()}
    state = {n: {k: v.detach().clone() for k, v in opt.state[p].items()} for p, n in names.items() if p in opt.state}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
              for g in opt.param_groups]  # fmt: skip
    model_sd = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    torch.save({"model": model_sd, "optim": {"state": state, "param_groups": groups}}, where)


def dcp_rank(rank: int, world: int, port: int, stage: str, dest: str) -> None:
    """One of ``world`` gloo ranks: for each staged checkpoint (oldest first), its row shard (DTensor,
    ``Shard(0)``, torch.chunk's split) of every weight, ``exp_avg`` and ``exp_avg_sq``, the scalar ``step``
    tensors and the param groups replicated, saved by ``dcp.save`` with DCP's plain FileSystemWriter."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30))  # fmt: skip
    try:
        mesh = init_device_mesh("cpu", (world,))

        def shard(t: torch.Tensor) -> torch.Tensor | DTensor:
            if t.dim() == 0:
                return t
            pieces = t.chunk(world)
            local = pieces[rank] if rank < len(pieces) else t[:0]
            return DTensor.from_local(local.clone(), mesh, [Shard(0)], shape=t.shape, stride=t.stride())

        for staged in sorted(Path(stage).glob("step-*.pt")):
            full = torch.load(staged, map_location="cpu", weights_only=True, mmap=True)
            state = {
                "model": {k: shard(v) for k, v in full["model"].items()},
                "optim": {"state": {n: {k: shard(v) for k, v in st.items()} for n, st in full["optim"]["state"].items()},
                          "param_groups": full["optim"]["param_groups"]},
            }  # fmt: skip
            dcp.save(state, storage_writer=dcp.FileSystemWriter(Path(dest) / staged.stem))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(src: Path, args: argparse.Namespace) -> dict[str, str]:
    """Write every series (those of ``--only``) under ``src/<series>/step-K/``; return {series: what it is}."""
    wanted = set(args.only.split(",")) if args.only else set(SERIES)
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    d, vocab, layers, n = args.hidden, args.vocab, args.layers, args.checkpoints
    model = Net(d, vocab, layers)
    params = sum(p.numel() for p in model.parameters())
    bl.log(f"model: hidden {d}, vocab {vocab}, {layers} blocks, {params / 1e6:.1f} M parameters "
           f"({params * 4 / 1e6:.0f} MB fp32)")  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    pretrain = Task(vocab, 7, 3, seed=1)
    for _ in range(args.pretrain_steps):
        pretrain.step(model, opt)
    base = copy.deepcopy(model.state_dict())
    kinds: dict[str, str] = {}

    spacings = [s for s in SPACINGS if f"finetune-fp32-s{s}" in wanted]
    if spacings:
        t0 = time.perf_counter()
        last = n * max(spacings)
        bl.log(f"fine-tuning fp32 for {last} steps, saving every {', '.join(map(str, spacings))}")
        task = Task(vocab, 11, 5, seed=2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
        for step in range(1, last + 1):
            task.step(model, opt)
            for s in spacings:
                if step % s == 0 and step // s <= n:
                    save_full(src / f"finetune-fp32-s{s}" / f"step-{step:04d}", model, opt)
        for s in spacings:
            kinds[f"finetune-fp32-s{s}"] = f"full fine-tune fp32, AdamW lr 1e-4, every {s} steps: .pt (+optimizer) + safetensors"
        bl.log(f"  {time.perf_counter() - t0:.0f} s")

    def run(name: str, model: nn.Module, what: str, save, shadow: nn.Module | None = None) -> None:
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.01, fused=True)
        task = Task(vocab, 11, 5, seed=3)
        bl.log(f"{name}: {n * OTHER_SPACING} steps, {sum(p.numel() for p in trained) / 1e6:.2f} M trained")
        for step in range(1, n * OTHER_SPACING + 1):
            task.step(model, opt, shadow)
            if step % OTHER_SPACING == 0:
                save(src / name / f"step-{step:04d}", model, opt)
        kinds[name] = what

    def fresh() -> Net:
        m = Net(d, vocab, layers)
        m.load_state_dict(base)
        return m

    if "finetune-bf16-s20" in wanted:
        run("finetune-bf16-s20", fresh().to(torch.bfloat16),
            "full fine-tune, pure bf16 (weights and AdamW moments bf16), every 20 steps: .pt + safetensors", save_full,
            shadow=fresh())  # fmt: skip
    if "frozen-backbone-s20" in wanted:
        frozen = fresh()
        for name, p in frozen.named_parameters():
            p.requires_grad_(name.startswith("head."))
        run("frozen-backbone-s20", frozen, "fp32, backbone frozen, head trained, full model every 20 steps", save_full)
    if "lora-s20" in wanted:
        lora = fresh()
        lora.requires_grad_(False)
        for b in lora.blocks:
            b[1], b[3] = LoRA(b[1]), LoRA(b[3])

        def save_adapter(where: Path, model: nn.Module, _opt) -> None:
            where.mkdir(parents=True)
            adapter = {k: p.detach().contiguous() for k, p in model.named_parameters() if p.requires_grad}
            save_file(adapter, str(where / "adapter_model.safetensors"))

        run("lora-s20", lora, "rank-8 LoRA on the MLPs, fp32, adapter-only safetensors every 20 steps", save_adapter)

    name = "big-bf16-10pct"
    if name in wanted:
        bl.log(f"{name}: {args.big_mib} MiB × {n}")
        shapes = bl.transformer_layout(args.big_mib * bl.MiB)
        _, spans = bl.safetensors_header(shapes)
        prev = None
        for k in range(1, n + 1):
            (src / name / f"step-{k:04d}").mkdir(parents=True)
            path = src / name / f"step-{k:04d}" / "model.safetensors"
            change = bl.pick_fraction(spans, 0.10, seed=100 + k) if prev else frozenset()
            bl.write_safetensors(path, shapes, seed=k, base=prev, change=change)
            prev = path
        kinds[name] = f"one bf16 safetensors file of {args.big_mib} MiB, 10% of its tensors new in each version"

    if DCP_SERIES in wanted:
        # Trained here (the fine-tune code of the other series), each checkpoint's full state staged to a
        # file; then DCP_RANKS gloo processes shard and save every checkpoint with DCP, as a sharded run would.
        stage = src.parent / "dcp-stage"
        run(DCP_SERIES, fresh(), "", lambda where, model, opt: stage_state(stage / f"{where.name}.pt", model, opt))
        t0 = time.perf_counter()
        torch.multiprocessing.spawn(dcp_rank, args=(DCP_RANKS, free_port(), str(stage), str(src / DCP_SERIES)),
                                    nprocs=DCP_RANKS, join=True)  # fmt: skip
        shutil.rmtree(stage)
        bl.log(f"{DCP_SERIES}: {DCP_RANKS} ranks saved {n} DCP checkpoints in {time.perf_counter() - t0:.0f} s")
        kinds[DCP_SERIES] = (f"{DCP_RANKS}-rank DCP (fp32 + AdamW), s{OTHER_SPACING}: full fine-tune fp32, AdamW lr 1e-4, "
                             f"{DCP_RANKS} gloo ranks each saving a row shard of the weights and moments "
                             f"(DTensor Shard(0), dcp.save, FileSystemWriter) every {OTHER_SPACING} steps")  # fmt: skip
    return kinds


# -- what the series would take: zstd alone, the per-tensor ideal ------------------------------------


def zstd_alone(files: list[Path], cctx: zstandard.ZstdCompressor) -> int:
    total = 0
    for f in files:
        with open(f, "rb") as fi, open(os.devnull, "wb") as null:
            total += cctx.copy_stream(fi, null)[1]
    return total


def _flatten(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        _flatten(v, f"{prefix}.{k}", out)


def tensors_of(path: Path) -> dict[str, tuple[np.ndarray, int]]:
    """{file name:tensor key: (its bytes as uint8, element width)} of a safetensors or torch.save file."""
    flat: dict[str, torch.Tensor] = {}
    if path.suffix == ".safetensors":
        flat = {f".{k}": v for k, v in load_file(str(path)).items()}
    else:
        _flatten(torch.load(path, map_location="cpu", weights_only=True), "", flat)
    return {f"{path.name}:{k[1:]}": (t.contiguous().reshape(-1).view(torch.uint8).numpy(), t.element_size())
            for k, t in flat.items()}  # fmt: skip


def dcp_tensors_of(step: Path) -> dict[str, tuple[np.ndarray, int]]:
    """{fqn@chunk offset: (its bytes as uint8, element width)} of the tensors of a DCP checkpoint directory.

    Parsed with DCP's own index rather than by torch.load of the files (a ``.distcp`` file is one
    ``torch.save`` archive per item, back to back, which torch.load cannot read whole, and ``.metadata`` is
    a plain pickle): ``.metadata`` gives every item's file, offset and length, and each tensor item is
    loaded from its byte range. The keys leave out the rank file, so a shard meets its predecessor
    wherever DCP put it; the archives' zip headers and pickles count as non-tensor bytes."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(step)).read_metadata()
    files: dict[str, bytes] = {}
    out: dict[str, tuple[np.ndarray, int]] = {}
    for index, info in md.storage_data.items():
        if not isinstance(md.state_dict_metadata[index.fqn], TensorStorageMetadata):
            continue
        if info.relative_path not in files:
            files[info.relative_path] = (step / info.relative_path).read_bytes()
        blob = memoryview(files[info.relative_path])[info.offset : info.offset + info.length]
        t = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        out[f"{index.fqn}@{','.join(map(str, index.offset))}"] = (
            t.contiguous().reshape(-1).view(torch.uint8).numpy(), t.element_size())
    return out


def planes(raw: np.ndarray, width: int) -> bytes | np.ndarray:
    """The tensor's bytes as byte planes, by chunkfs's own transform (engine/codec.py)."""
    return raw if width == 1 else codec.to_planes(raw.tobytes(), width)


def ideal(steps: list[Path], cctx: zstandard.ZstdCompressor) -> int:
    seen: set[bytes] = set()
    prev: dict[str, tuple[np.ndarray, int]] = {}
    total = 0
    for step in steps:
        files = sorted(p for p in step.rglob("*") if p.is_file())
        cur: dict[str, tuple[np.ndarray, int]] = {}
        if (step / ".metadata").is_file():  # a DCP checkpoint
            cur = dcp_tensors_of(step)
        else:
            for f in files:
                cur.update(tensors_of(f))
        total += sum(f.stat().st_size for f in files) - sum(raw.size for raw, _ in cur.values())  # headers, pickles
        for key, (raw, w) in cur.items():
            digest = blake3(raw).digest()
            if digest in seen:
                continue
            seen.add(digest)
            best = min(len(cctx.compress(raw)), len(cctx.compress(planes(raw, w))))
            old = prev.get(key)
            if old is not None and old[0].size == raw.size and old[1] == w:
                best = min(best, len(cctx.compress(planes(np.bitwise_xor(raw, old[0]), w))))
            total += best
        prev = cur
    return total


# -- chunkfs ---------------------------------------------------------------------------------------------


READS = 3
"""Cold reads of each of the two checkpoints read back; the median time counts."""


def read_back(repo: Repository, step: Path, dest: str) -> tuple[bool, float]:
    """Whether every file of the step directory reads back from the repository with the same bytes,
    and the seconds the reads took, caches emptied first (a cold read from warm)."""
    repo.drop_caches()
    ok, took = True, 0.0
    for f in (p for p in step.rglob("*") if p.is_file()):
        content = repo.content_of(repo.ns.extents(repo.ns.resolve(f"{dest}/{f.relative_to(step).as_posix()}")))
        h, n = blake3(), 0
        t0 = time.perf_counter()
        while block := content.read(n, 8 * bl.MiB):
            h.update(block)
            n += len(block)
        took += time.perf_counter() - t0
        ok = ok and h.digest() == blake3(f.read_bytes()).digest()
    return ok, took


def store(series: Path, work: Path, label: str, lifecycle: config.LifecycleSettings) -> dict:
    """Import the series into a fresh repository (warm tier: a directory), complete the run, tier it;
    read its newest and its oldest checkpoint back, cold."""
    repo_dir, warm = work / f"repo-{series.name}-{label}", work / f"warm-{series.name}-{label}"
    warm.mkdir()
    settings = config.Settings(tiers=config.TierSettings(warm=str(warm)), lifecycle=lifecycle)
    Repository.create(repo_dir, settings=settings).close()
    run = f"/bench/{series.name}/run"  # not /bench/<series>: "…-s20/step-0020" reads as a DeepSpeed step pair
    steps = sorted(p for p in series.iterdir() if p.is_dir())
    try:
        with Repository(repo_dir) as repo:
            t0 = time.perf_counter()
            for step in steps:
                import_tree(repo, step, f"{run}/{step.name}")
            t_import = time.perf_counter() - t0
            with repo.index.read() as t:
                hot = sum(i.size for _, i in t.packs())
            tierop.complete(repo, run)
            t_tier, outcome = bl.timed(lambda: tierop.apply(repo, tierop.plan(repo)))
            newest = [read_back(repo, steps[-1], f"{run}/{steps[-1].name}") for _ in range(READS)]
            oldest = [read_back(repo, steps[0], f"{run}/{steps[0].name}") for _ in range(READS)]
            ok = all(ok for ok, _ in newest + oldest)
            read_newest_s, read_oldest_s = (bl.median([s for _, s in reads]) for reads in (newest, oldest))
            with repo.index.read() as t:
                deltas = sum(1 for _ in t.deltas())
        return {
            "warm_level": lifecycle.warm_level, "delta_chain": lifecycle.delta_chain,
            "stored_bytes": bl.tree_bytes(warm / "packs"), "delta_chunks": deltas,
            "hot_bytes_before": hot, "hot_bytes_after": bl.tree_bytes(repo_dir / "hot" / "packs"),
            "import_s": t_import, "tier_s": t_tier, "tier_mb_s": bl.mb_s(hot, t_tier),
            "read_newest_s": read_newest_s, "read_oldest_s": read_oldest_s,
            "moved": outcome.moved, "written": outcome.written, "errors": outcome.errors,
            "read_back_ok": ok,
        }  # fmt: skip
    finally:
        shutil.rmtree(repo_dir, ignore_errors=True)
        shutil.rmtree(warm, ignore_errors=True)


# -- main ----------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in under a minute")
    ap.add_argument("--scale", type=float, default=1.0, help="hidden size × this (parameters ~ scale²; default 1)")
    ap.add_argument("--big-mib", type=int, help="size of the big-bf16 file (default 256, --quick 8)")
    ap.add_argument("--checkpoints", type=int, default=6, help="checkpoints per series (default 6)")
    ap.add_argument("--warm-level", type=int, help="warm_level of the chunkfs setting (default: chunkfs's default)")
    ap.add_argument("--only", help=f"comma-separated series names, only these generated and measured (default: all: "
                                   f"{', '.join(SERIES)})")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.only and (unknown := set(args.only.split(",")) - set(SERIES)):
        ap.error(f"unknown series: {', '.join(sorted(unknown))} (known: {', '.join(SERIES)})")
    args.hidden = max(16, int((64 if args.quick else 448) * args.scale) // 16 * 16)
    args.vocab, args.layers = (512, 2) if args.quick else (1024, 4)
    args.pretrain_steps = 10 if args.quick else 50
    args.big_mib = args.big_mib or (8 if args.quick else 256)
    started = time.perf_counter()

    default = config.LifecycleSettings()
    level = default.warm_level if args.warm_level is None else args.warm_level
    settings = [
        ("exact", dataclasses.replace(default, warm_level=0)),  # packs moved as they are
        ("planes", dataclasses.replace(default, warm_level=level, delta_chain=0)),  # re-encoded, no deltas
        ("chunkfs", dataclasses.replace(default, warm_level=level)),
    ]

    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    try:
        t_gen, kinds = bl.timed(generate, work / "src", args)
        bl.log(f"generated in {t_gen:.0f} s")
        if args.only:
            kinds = {k: v for k, v in kinds.items() if k in args.only.split(",")}
        cctx = zstandard.ZstdCompressor(level=3)
        results = []
        for i, (name, what) in enumerate(kinds.items()):
            series = work / "src" / name
            steps = sorted(p for p in series.iterdir() if p.is_dir())
            files = sorted(p for p in series.rglob("*") if p.is_file())
            row = {"series": name, "what": what, "checkpoints": len(steps),
                   "logical_bytes": sum(f.stat().st_size for f in files)}  # fmt: skip
            bl.log(f"{name}: {row['logical_bytes'] / 1e6:.0f} MB in {len(files)} files; zstd, ideal")
            row["zstd_bytes"] = zstd_alone(files, cctx)
            row["ideal_s"], row["ideal_bytes"] = bl.timed(ideal, steps, cctx)
            for label, lifecycle in settings[:: 1 if i % 2 == 0 else -1]:  # alternate which goes first
                bl.log(f"{name}: import + tier, {label} (warm_level {lifecycle.warm_level}, "
                       f"delta_chain {lifecycle.delta_chain})")  # fmt: skip
                row[label] = store(series, work, label, lifecycle)
                if row[label]["errors"] or not row[label]["read_back_ok"] or row[label]["hot_bytes_after"]:
                    bl.log(f"  ODD: {json.dumps({k: row[label][k] for k in ('errors', 'read_back_ok', 'hot_bytes_after')})}")
            results.append(row)
            shutil.rmtree(series)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    total = {"series": "total", **{k: sum(r[k] for r in results) for k in ("logical_bytes", "zstd_bytes", "ideal_bytes")}}
    for label, _ in settings:
        total[label] = {k: sum(r[label][k] for r in results)
                        for k in ("stored_bytes", "hot_bytes_before", "tier_s", "read_newest_s", "read_oldest_s")}  # fmt: skip
    elapsed = time.perf_counter() - started
    out = {"code": bl.code_version(), "elapsed_s": elapsed,
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "series": results, "total": total}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for r in [*results, total]:
        n, pl, cf = r["logical_bytes"], r["planes"], r["chunkfs"]
        rows.append([r["series"], r.get("checkpoints", ""), n / 1e6, r["zstd_bytes"] / n, r["exact"]["stored_bytes"] / n,
                     pl["stored_bytes"] / n, cf["stored_bytes"] / n, r["ideal_bytes"] / n,
                     cf["stored_bytes"] / r["ideal_bytes"], r["exact"]["tier_s"], cf["tier_s"],
                     bl.mb_s(cf["hot_bytes_before"], cf["tier_s"]), pl["read_newest_s"] / cf["read_newest_s"],
                     pl["read_oldest_s"] / cf["read_oldest_s"]])
    bl.print_table(
        "stored / logical bytes of checkpoint series tiered to warm (sN: a checkpoint every N optimizer steps)",
        ["series", "ckpts", "logical MB", "zstd-3 alone", "exact dedup", f"planes (warm_level {level})",
         "chunkfs (+ deltas)", "ideal", "chunkfs / ideal", "tier s, exact", "tier s, chunkfs", "chunkfs tier MB/s",
         "read newest, vs planes", "read oldest, vs planes"],
        rows,
        note=f"exact dedup: warm_level 0; planes: re-encoded without deltas (delta_chain 0); MB/s: hot pack bytes "
             f"re-encoded per second; read: cold from warm, speed relative to planes (> 1: faster); ran {elapsed:.0f} s",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
