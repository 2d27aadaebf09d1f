"""Hot-tier pressure: when the hot disk (a small tmpfs here) has less than ``lifecycle.hot_min_free``
free, hot packs that already have a verified warm copy leave it early — complete runs first,
then the oldest packs of the others — until it has that much again; packs without a warm copy
stay (they would be lost), and every file reads back bit-identical from wherever it went."""

from __future__ import annotations

import shutil

from helpers.tiers import export_and_compare, import_run, tiered_settings, write_run

from chunkfs import config
from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.store.tiering import lifecycle
from chunkfs.types import Tier

MIN_FREE = 50  # percent


def _free_percent(path) -> float:
    disk = shutil.disk_usage(path)
    return 100 * disk.free / disk.total


def test_hot_pressure_evicts_packs_with_warm_copies_oldest_first(make_tmpfs, tmp_path):
    small_hot = make_tmpfs("12m")
    settings = tiered_settings(
        None, warm=str(tmp_path / "warm"),
        lifecycle=config.LifecycleSettings(run_idle=0, hot_min_free=MIN_FREE, cold_after_days=0),
    )  # fmt: skip
    repo = Repository.create(tmp_path / "repo", hot=small_hot / "hot", settings=settings)
    try:
        srcs = {}
        for n, (run, steps) in enumerate((("runA", 1), ("runB", 3))):  # 2.3 + 6.9 MB: 12 MiB, 25% free
            srcs[run] = write_run(tmp_path / "src", run, steps=steps, seed=n)
            import_run(repo, srcs[run], f"/m/{run}")
        repo.packs.seal_all()
        assert _free_percent(small_hot) < MIN_FREE
        assert lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle) == [], (
            "packs without a warm copy must stay hot, however full the disk"
        )

        assert repo.uploader.drain() > 0
        tierop.complete(repo, "/m/runA")
        actions = lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle)
        assert [(a.run, a.reason.startswith("hot disk")) for a in actions] == [("/m/runA", False), ("/m/runB", True)]
        with repo.index.read() as t:
            created = {p: i.created_ns for p, i in t.packs() if i.group == "/m/runB" and i.tier == Tier.HOT}
        runb_hot = list(created)
        assert 0 < len(actions[1].packs) < len(runb_hot), "only as much of the active run as needed leaves"
        newest_evicted = max(created[p] for p in actions[1].packs)
        assert all(created[p] > newest_evicted for p in runb_hot if p not in actions[1].packs), "oldest first"

        tierop.apply(repo, actions)
        assert _free_percent(small_hot) >= MIN_FREE
        assert lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle) == []
        repo.drop_caches()
        for run, src in srcs.items():
            export_and_compare(repo, src, f"/m/{run}", tmp_path / "out")
    finally:
        repo.close()
