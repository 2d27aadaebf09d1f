"""Hot-tier pressure: when the hot disk (a small tmpfs here) has less than ``lifecycle.hot_min_free``
free, hot packs that already have a verified warm copy leave it early — complete runs first,
then the oldest packs of the others — until it has that much again; packs without a warm copy
stay (they would be lost), and every file reads back bit-identical from wherever it went."""

from __future__ import annotations

import shutil

import pytest
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


def _repo_on(small_hot, tmp_path, **sections) -> Repository:
    """A repository whose hot tier is on ``small_hot`` (a small tmpfs), its warm tier a directory,
    evicting for ``MIN_FREE`` percent free; runs complete only when marked."""
    settings = tiered_settings(
        None, warm=str(tmp_path / "warm"),
        lifecycle=config.LifecycleSettings(run_idle=0, hot_min_free=MIN_FREE, cold_after_days=0), **sections,
    )  # fmt: skip
    return Repository.create(tmp_path / "repo", hot=small_hot / "hot", settings=settings)


def test_hot_pressure_evicts_packs_with_warm_copies_oldest_first(make_tmpfs, tmp_path):
    small_hot = make_tmpfs("12m")
    repo = _repo_on(small_hot, tmp_path)
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


@pytest.mark.parametrize("how", ["complete", "tier move --to warm"])
def test_packs_evicted_before_their_run_completes_are_re_encoded_on_warm_when_it_does(make_tmpfs, tmp_path, how):
    """An eviction is a plain move (no CPU while the disk is full); the packs it sends to warm are
    noted ``unencoded`` — and a gc repack of them on warm keeps the note — until their run
    completes (or is moved to warm by hand): then they are re-encoded on warm like the run's hot
    packs, deltas included."""
    from helpers.gc import gc_settings

    from chunkfs.ops import gc, retention

    repo = _repo_on(make_tmpfs("12m"), tmp_path, gc=gc_settings())
    try:
        src = write_run(tmp_path / "src", "run", steps=4)
        import_run(repo, src, "/m/run")
        repo.packs.seal_all()
        assert repo.uploader.drain() > 0
        (evict,) = lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle)
        assert (evict.src, evict.dst, evict.level) == (Tier.HOT, Tier.WARM, 0)
        tierop.apply(repo, [evict])
        with repo.index.read() as t:
            assert all(t.is_unencoded(p) and t.pack_get(p).tier == Tier.WARM for p in evict.packs)

        # the oldest checkpoint's files go, and gc repacks the evicted packs they leave sparse
        shutil.rmtree(src / "checkpoint-100")
        for name in (b"model.safetensors", b"training_state.pt", b"trainer_state.json"):
            repo.ns.unlink(repo.ns.resolve("/m/run/checkpoint-100"), name)
        repo.ns.rmdir(repo.ns.resolve("/m/run"), b"checkpoint-100")
        rules = retention.rules_for(repo.settings, keep_within="0s")
        result = gc.run(repo, rules, grace_s=0, repack_below=0.99)
        assert result.packs_repacked > 0
        with repo.index.read() as t:
            raw = [p for p, i in t.packs() if i.tier == Tier.WARM and t.is_unencoded(p)]
            assert set(raw) - set(evict.packs), "the packs gc wrote from evicted ones keep the note"
            evicted_chunks = {c: loc.stored_len for c, loc in t.chunks() if loc.pack in raw}

        if how == "complete":
            tierop.complete(repo, "/m/run")
            actions = lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle)
            moves = {(a.src, a.dst): a for a in actions}
            assert set(moves) == {(Tier.HOT, Tier.WARM), (Tier.WARM, Tier.WARM)}
            assert sorted(moves[Tier.WARM, Tier.WARM].packs) == sorted(raw) and moves[Tier.WARM, Tier.WARM].level
            outcome = tierop.apply(repo, actions)
        else:
            outcome = tierop.move(repo, "/m/run", Tier.WARM)
        assert not outcome.errors and outcome.written["warm"]["deltas"]
        with repo.index.read() as t:
            assert all(t.pack_get(p) is None for p in raw), "every evicted pack was rewritten"
            assert not any(t.is_unencoded(p) for p, _ in t.packs())
            assert not any(i.tier == Tier.HOT for _, i in t.packs())
            now = {c: t.chunk_get(c) for c in evicted_chunks}
            deltas = dict(t.deltas())
        assert sum(loc.stored_len for loc in now.values()) < 0.8 * sum(evicted_chunks.values())
        assert set(deltas) & set(evicted_chunks), "the evicted checkpoints are stored as deltas of the next ones"
        assert lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle) == []
        repo.drop_caches()
        export_and_compare(repo, src, "/m/run", tmp_path / "out")
    finally:
        repo.close()
