"""The README's first command: a real checkpoint series written through a chunkfs mount.

Creates a repository in ./demo/repo, mounts it at ./models, and fine-tunes a
small transformer-shaped model with PyTorch for a few steps, saving each
checkpoint the way Hugging Face Trainer lays it out (``checkpoint-N/`` with
model.safetensors, optimizer.pt, trainer_state.json) — with plain safetensors
and torch.save calls, exactly as training code does. Most layers are frozen, as
in adapter / last-layers fine-tuning, so most tensors repeat from checkpoint to
checkpoint. Prints what each checkpoint cost in new storage and the
repository's totals, and leaves the mount up for you to explore.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from chunkfs.cli.output import human_bytes, out, print_table

ROOT = Path(__file__).resolve().parent.parent


def chunkfs(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "chunkfs", *args]
    done = subprocess.run(cmd, check=True, text=True, capture_output=capture)
    return done.stdout if capture else ""


def stats(repo: Path) -> dict:
    return json.loads(chunkfs("stats", "--repo", str(repo), "--json", capture=True))


def make_model(width: int, layers: int) -> torch.nn.Module:
    blocks = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)]
    model = torch.nn.Sequential(torch.nn.Embedding(8192, width), *blocks, torch.nn.Linear(width, 8192))
    for p in model.parameters():  # freeze everything but the last block
        p.requires_grad = False
    for module in list(model)[-4:-1]:
        for p in module.parameters():
            p.requires_grad = True
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="checkpoints to write (default 5)")
    parser.add_argument("--width", type=int, default=512, help="model width (default 512: ~60 MB fp32)")
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    demo = ROOT / "demo"
    repo, mnt = demo / "repo", ROOT / "models"
    if os.path.ismount(mnt):
        chunkfs("umount", str(mnt))
    shutil.rmtree(repo, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    chunkfs("init", str(repo))
    chunkfs("mount", str(repo), str(mnt))

    torch.manual_seed(0)
    model = make_model(args.width, args.layers)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    run = mnt / "demo-llm" / "base-v1" / "last-layers" / "run-1"
    rows = []
    before = stats(repo)
    for step in range(1, args.steps + 1):
        tokens = torch.randint(0, 8192, (8, 32))
        loss = model(tokens).logsumexp(-1).mean()
        loss.backward()
        optim.step()
        optim.zero_grad()
        ckpt = run / f"checkpoint-{step * 100}"
        ckpt.mkdir(parents=True)
        t0 = time.perf_counter()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors")
        torch.save(optim.state_dict(), ckpt / "optimizer.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step * 100, "loss": loss.item()}))
        seconds = time.perf_counter() - t0
        after = stats(repo)
        logical = after["logical_bytes"] - before["logical_bytes"]
        stored = after["stored_bytes"] - before["stored_bytes"]
        rows.append((ckpt.name, logical, stored, seconds))
        before = after

    out.print("\n[bold]Checkpoints written through the mount[/bold]")
    for name, logical, stored, seconds in rows:
        out.print(
            f"  {name}: {human_bytes(logical)} in {seconds:.2f} s, "
            f"{human_bytes(stored)} new ({stored / logical:.1%})"
        )
    s = stats(repo)
    print_table(
        "\nRepository totals",
        [
            ("logical bytes (current tree)", human_bytes(s["logical_bytes"])),
            ("every version as plain copies", human_bytes(s["versions_bytes"])),
            ("pack bytes", human_bytes(s["pack_bytes"])),
            ("dedup ratio", f"{s['dedup_ratio']:.2f}x"),
            ("pack bytes / every version", f"{s['stored_fraction']:.1%}"),
            ("chunks", str(s["chunks"])),
        ],
    )
    rel = os.path.relpath(mnt)
    out.print(f"\nThe repository is mounted at ./{rel}; try: ls -R {rel} | head")
    out.print(f"Unmount with: .venv/bin/chunkfs umount {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
