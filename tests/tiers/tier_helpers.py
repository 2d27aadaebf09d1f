"""Helpers of the tier tests: tiered repositories, runs of checkpoints, request counting, the CLI."""

from __future__ import annotations

import dataclasses
import filecmp
import itertools
import subprocess
import sys
from pathlib import Path

from component_helpers import base_model, save, small_settings, step
from s3_servers import BUCKET

from chunkfs import config
from chunkfs.ops import transfer
from chunkfs.repo import Repository
from chunkfs.types import PackState, Tier

_prefixes = itertools.count()


def s3_url(tag: str) -> str:
    """A prefix in the test bucket that no other repository uses."""
    return f"s3://{BUCKET}/tiers-{tag}-{next(_prefixes)}"


def tiered_settings(endpoint: str | None, *, warm: str | None = None, cold: str = "", **sections) -> config.Settings:
    """Small chunks and 1 MiB packs (component_helpers), a warm tier, explicit lifecycle."""
    tiers = config.TierSettings(
        warm=warm if warm is not None else s3_url("warm"), cold=cold, endpoint_url=endpoint or "",
        **sections.pop("tiers", {}),
    )  # fmt: skip
    lifecycle = sections.pop(
        "lifecycle", config.LifecycleSettings(run_idle=0, cold_after_days=30, cold_idle_days=7, hot_min_free=0)
    )  # no evictions for a full test disk: tests/tiers/test_pressure.py has its own
    return small_settings(tiers=tiers, lifecycle=lifecycle, **sections)


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


def import_run(repo: Repository, src_run: Path, dest: str) -> None:
    transfer.import_tree(repo, src_run, dest)


def same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only or cmp.funny_files), cmp.report()
    for sub in cmp.common_dirs:
        same_tree(a / sub, b / sub)
    for name in cmp.common_files:
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{b / name} differs"


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


def chunkfs(*args: str, env: dict | None = None, ok: bool | None = None, timeout: float = 120):
    """Run the CLI; ``ok=True`` asserts exit 0, ``ok=False`` a one-line error and no traceback."""
    done = subprocess.run([sys.executable, "-m", "chunkfs", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if ok is True:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    if ok is False:
        assert done.returncode == 1, f"{args}: exit {done.returncode}, expected 1\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, f"not one line:\n{done.stderr}"
        assert done.stderr.startswith("chunkfs: error: "), done.stderr
    return done


def write_config(repo_path: Path, settings: config.Settings) -> None:
    (repo_path / config.CONFIG_NAME).write_text(config.render(settings))


def with_tiers(settings: config.Settings, **changes) -> config.Settings:
    return dataclasses.replace(settings, tiers=dataclasses.replace(settings.tiers, **changes))

