"""One rank of a torch.distributed.checkpoint job (gloo, CPU): ``python dcpranks.py ACTION WORLD RANK PORT PATH [REPO]``.

The tests start WORLD of these at once, as torchrun would. Every rank builds the same
model state from a seed (``global_state``) and holds its shard of it: each weight a
DTensor split by rows over the ranks (``Shard(0)``, as FSDP2 does), one replicated
tensor and a plain value. So a load by another number of ranks reads parts of files
(resharding), and any rank can check every byte it loaded.

ACTION (``PATH``: the checkpoint directory; with ``REPO``, a path inside that repository):

* ``save STEP``, ``async_save STEP``: ``dcp.save`` / ``dcp.async_save`` of step STEP's state
  with ``chunkfs.torch.Writer``; ``plain_save STEP`` with DCP's ``FileSystemWriter``.
* ``load STEP``, ``plain_load STEP``: load into zeroed tensors (``Reader`` /
  ``FileSystemReader``) and check every value against step STEP's state.
* ``save_twice STEP``: ``save`` of step STEP - 1 into ``PATH-prev``, then of STEP into PATH, in
  one process: the second save must splice the unchanged tensors that span whole chunks
  (incremental.py): neither ``torch.save`` them nor write their bytes.
* ``die STEP``, ``async_die STEP``: ``save`` / ``async_save``, but rank 1 kills itself (SIGKILL)
  half-way through writing its file (in ``async_save``, DCP's background writer thread).

Prints ``ok`` and exits 0, or exits non-zero with the reason.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh

import chunkfs.torch
from chunkfs.torch import files as chunkfs_files

LAYERS = 6
ROWS, COLS = 512, 384  # 768 KiB a weight: with LAYERS, ~4.5 MiB a step plus the AdamW-like moments


BIG_FROM, BIG_ROWS = 100, 4096
"""Steps from BIG_FROM on also hold a frozen 16 MiB tensor: 4 MiB a rank with 4 ranks, whole
chunks for an incremental save to splice (the other tensors are smaller than a chunk)."""


def global_state(step: int) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state of training step ``step``: the first layers are frozen
    (the same at every step), the last two change."""
    out = {}
    for i in range(LAYERS):
        g = torch.Generator().manual_seed(1000 * i + (step if i >= LAYERS - 2 else 0))
        out[f"layers.{i}.weight"] = torch.randn(ROWS, COLS, generator=g)
        out[f"optim.{i}.exp_avg"] = torch.randn(ROWS, COLS, generator=g) * 0.01
    out["embed"] = torch.arange(4096, dtype=torch.float32) + step
    if step >= BIG_FROM:
        out["frozen.big"] = torch.randn(BIG_ROWS, 1024, generator=torch.Generator().manual_seed(99))
    return out


def sharded(step: int, mesh) -> dict:
    state = {}
    for name, full in global_state(step).items():
        state[name] = full.clone() if name == "embed" else distribute_tensor(full, mesh, [Shard(0)])
    state["step"] = step
    return state


def zeros_like(state: dict) -> dict:
    out = {}
    for name, value in state.items():
        if isinstance(value, DTensor):
            out[name] = distribute_tensor(torch.zeros(value.shape), value.device_mesh, value.placements)
        elif isinstance(value, torch.Tensor):
            out[name] = torch.zeros_like(value)
        else:
            out[name] = -1
    return out


def check(loaded: dict, step: int) -> None:
    want = global_state(step)
    for name, full in want.items():
        got = loaded[name].full_tensor() if isinstance(loaded[name], DTensor) else loaded[name]
        if not torch.equal(got, full):
            raise SystemExit(f"{name}: loaded values differ from step {step}'s")
    if loaded["step"] != step:
        raise SystemExit(f"step: loaded {loaded['step']}, saved {step}")


def kill_half_way() -> None:
    """Rank 1 dies by SIGKILL once half its file is written (nothing of it is committed)."""
    write = chunkfs_files.WriteStream.write

    def dying(self, b):
        if self.path.endswith(".distcp") and self.tell() > 2 << 20:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(self, b)

    chunkfs_files.WriteStream.write = dying


def count_big_saves() -> list:
    """From now on, the shapes of tensors of a whole chunk or more that go through torch.save."""
    saved, real = [], torch.save

    def counting(obj, f, *args, **kwargs):
        if isinstance(obj, torch.Tensor) and obj.untyped_storage().nbytes() >= 4 << 20:
            saved.append(tuple(obj.shape))
        return real(obj, f, *args, **kwargs)

    torch.save = counting
    return saved


def count_splices() -> list:
    """From now on, one True for each splice of stored chunks that succeeded (False: refused)."""
    from chunkfs.engine.file import FileContent

    done, real = [], FileContent.splice

    def counting(self, *args):
        done.append(real(self, *args))
        return done[-1]

    FileContent.splice = counting
    return done


def main(argv: list[str]) -> None:
    action, world, rank, port, path, step = argv[0], int(argv[1]), int(argv[2]), argv[3], argv[4], int(argv[5])
    repo = argv[6] if len(argv) > 6 else None
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    mesh = init_device_mesh("cpu", (world,))
    if action in ("save", "async_save", "die", "async_die"):
        if action.endswith("die") and rank == 1:
            kill_half_way()
        writer = chunkfs.torch.Writer(path, repo=repo)
        if action.startswith("async"):
            dcp.async_save(sharded(step, mesh), storage_writer=writer).result()
        else:
            dcp.save(sharded(step, mesh), storage_writer=writer)
    elif action == "save_twice":
        dcp.save(sharded(step - 1, mesh), storage_writer=chunkfs.torch.Writer(f"{path}-prev", repo=repo))
        saved, spliced = count_big_saves(), count_splices()
        dcp.save(sharded(step, mesh), storage_writer=chunkfs.torch.Writer(path, repo=repo))
        if saved:
            raise SystemExit(f"unchanged tensors of whole chunks went through torch.save again: {saved}")
        if not spliced or not all(spliced):
            raise SystemExit(f"unchanged tensors of whole chunks were not spliced: {spliced}")
    elif action == "plain_save":
        dcp.save(sharded(step, mesh), storage_writer=dcp.FileSystemWriter(path))
    elif action in ("load", "plain_load"):
        loaded = zeros_like(sharded(step, mesh))
        reader = chunkfs.torch.Reader(path, repo=repo) if action == "load" else dcp.FileSystemReader(path)
        dcp.load(loaded, storage_reader=reader)
        check(loaded, step)
    else:
        raise SystemExit(f"unknown action {action}")
    dist.barrier()
    dist.destroy_process_group()
    print("ok", flush=True)
    sys.stderr.flush()
    # Every check is done. Skip the interpreter's teardown: gloo's C++ threads sometimes abort it
    # ("terminate called without an active exception", SIGABRT after "ok": a torch issue, not
    # ours — pytorch/pytorch#179291 discusses it), which failed a CI run by chance.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
