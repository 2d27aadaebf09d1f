"""Tiered repositories: their settings, runs of checkpoints imported and exported, where packs
are, request counting."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

from chunkfs import config
from chunkfs.ops import transfer
from chunkfs.repo import Repository
from chunkfs.types import PackState, Tier
from helpers.checkpoints import base_model, save, step
from helpers.repos import same_tree, small_settings
from helpers.s3servers import BUCKET

_prefixes = itertools.count()


def s3_url(tag: str) -> str:
    """A prefix in the test bucket that no other repository uses."""
    return f"s3://{BUCKET}/tiers-{tag}-{next(_prefixes)}"


def tiered_settings(
    endpoint: str | None = None, *, warm: str | None = None, cold: str = "", **sections
) -> config.Settings:
    """Small chunks and 1 MiB packs (``repos.small_settings``) and tiers: ``warm`` (a prefix of the
    test bucket no other repository uses, if not given), ``cold`` (none if not given), S3 at
    ``endpoint`` (None: the tiers are directories), ``tiers={...}``: more tier settings.

    The lifecycle moves nothing by itself: runs complete only when marked, no evictions for a
    full test disk (tests/tiers/test_pressure.py passes its own ``lifecycle``). ``sections``:
    the other sections, like ``gc=helpers.gc.gc_settings(...)``."""
    tiers = config.TierSettings(
        warm=warm if warm is not None else s3_url("warm"), cold=cold, endpoint_url=endpoint or "",
        **sections.pop("tiers", {}),
    )  # fmt: skip
    lifecycle = sections.pop(
        "lifecycle", config.LifecycleSettings(run_idle=0, cold_after_days=30, cold_idle_days=7, hot_min_free=0)
    )
    return small_settings(tiers=tiers, lifecycle=lifecycle, **sections)


def repo_on_dirs(tmp_path: Path, gc: config.GcSettings | None = None, **lifecycle) -> Repository:
    """A new repository at ``tmp_path/repo`` whose warm and cold tiers are the directories
    ``tmp_path/warm`` and ``tmp_path/cold``; ``lifecycle``: settings changed from
    ``tiered_settings``'s; ``gc``: its gc settings."""
    settings = tiered_settings(None, warm=str(tmp_path / "warm"), cold=str(tmp_path / "cold"),
                               **({"gc": gc} if gc is not None else {}))  # fmt: skip
    settings = dataclasses.replace(settings, lifecycle=dataclasses.replace(settings.lifecycle, **lifecycle))
    return Repository.create(tmp_path / "repo", settings=settings)


def write_run(src: Path, run: str = "run1", steps: int = 2, seed: int = 0) -> Path:
    """A local run directory: ``steps`` checkpoints (safetensors + torch) of a small model; each
    step changes every tensor a little (a full fine-tune: little dedup)."""
    sd = base_model(seed)
    root = src / run
    for i in range(steps):
        d = root / f"checkpoint-{(i + 1) * 100}"
        save(sd, d / "model.safetensors", "safetensors")
        save(sd, d / "training_state.pt", "torch")
        (d / "trainer_state.json").write_text(f'{{"global_step": {(i + 1) * 100}}}')
        sd = step(sd, None, seed=i)
    return root


def bf16_checkpoint(path: Path, seed: int, step: int = 0) -> None:
    """A 16 MiB safetensors file of bf16 weights, as a trainer saves them (re-encoding shrinks it);
    ``step`` > 0: the same weights (same ``seed``) after that many small optimizer steps, so that
    the checkpoints of one seed are stored as deltas of each other."""
    import safetensors.torch
    import torch

    g = torch.Generator().manual_seed(seed)
    weights = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=g) * 0.02 for i in range(8)}
    if step:
        g = torch.Generator().manual_seed(seed + 1000 * step)
        weights = {name: w + torch.randn(w.shape, generator=g) * 1e-5 * step for name, w in weights.items()}
    weights = {name: w.to(torch.bfloat16) for name, w in weights.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(weights, str(path))


def import_run(repo: Repository, src_run: Path, dest: str) -> None:
    transfer.import_tree(repo, src_run, dest)


def export_and_compare(repo: Repository, src_run: Path, dest: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    transfer.export_tree(repo, dest, out)
    same_tree(src_run, out / dest.rstrip("/").rsplit("/", 1)[-1])


def packs_by_tier(repo: Repository) -> dict[Tier, int]:
    counts = {t: 0 for t in Tier}
    with repo.index.read() as t:
        for _, info in t.packs():
            counts[info.tier] += 1
    return counts


def hot_pack_files(repo: Repository) -> list[str]:
    return sorted(n for n in repo.hot.list("packs/") if n.endswith(".pack"))


def sealed_hot(repo: Repository) -> list[bytes]:
    with repo.index.read() as t:
        return [p for p, i in t.packs() if i.tier == Tier.HOT and i.state == PackState.SEALED]


class RequestCounter:
    """Counts the S3 requests one backend's client sends (botocore's before-call event)."""

    def __init__(self, backend) -> None:
        self.calls: list[str] = []
        backend._client.meta.events.register("before-call.s3", self._seen)

    def _seen(self, model, **kwargs) -> None:
        self.calls.append(model.name)

    def count(self, operation: str | None = None) -> int:
        return sum(1 for c in self.calls if operation is None or c == operation)

    def reset(self) -> None:
        self.calls.clear()


def write_config(repo_path: Path, settings: config.Settings) -> None:
    (repo_path / config.CONFIG_NAME).write_text(config.render(settings))


def with_tiers(settings: config.Settings, **changes) -> config.Settings:
    return dataclasses.replace(settings, tiers=dataclasses.replace(settings.tiers, **changes))



def deleted_packs_held_open() -> list[str]:
    """Pack files (or local copies of packs) this process still holds open although they were
    deleted: their disk space is not given back until it exits."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(" (deleted)") and ".pack" in target:
            held.append(target)
    return held
