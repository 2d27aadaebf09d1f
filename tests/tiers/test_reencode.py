"""Re-encoding on the way down the tiers: a bf16 run is stored raw on hot, re-encoded (byte
planes + zstd ``warm_level``) into new packs when it moves to warm — the hot packs and their
write-back copies on warm deleted — and again at ``cold_level`` when it goes cold; it reads
back bit-identical and fsck finds every chunk intact at each step. ``warm_level = 0`` moves
packs as they are; a mount re-encodes in a thread of the lowest CPU priority and stops
between batches."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
import safetensors.torch
import torch
from helpers.cli import chunkfs, cli_json
from helpers.tiers import (
    deleted_packs_held_open,
    export_and_compare,
    import_run,
    packs_by_tier,
    repo_on_dirs,
)

from chunkfs import clock
from chunkfs import repo as repo_module
from chunkfs.background import LOWEST_PRIORITY
from chunkfs.ops import fsck as fsckop
from chunkfs.ops import status as statusop
from chunkfs.ops import tier as tierop
from chunkfs.store.pack.files import pack_name
from chunkfs.store.tiering import lifecycle
from chunkfs.store.tiering.uploads import upload_copies
from chunkfs.types import Compression, Tier, flags_compression

DAY = 86400
PLANES = {Compression.ZSTD_PLANES2, Compression.ZSTD_PLANES4}


def _bf16_run(root):
    g = torch.Generator().manual_seed(0)
    for step in (100, 200):
        d = root / "run1" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        weights = {f"layers.{i}.weight": torch.randn(512, 1024, generator=g) * 0.02 for i in range(3)}
        weights = {name: w.to(torch.bfloat16) for name, w in weights.items()}
        safetensors.torch.save_file(weights, str(d / "model.safetensors"))
    return root / "run1"


def _stored(repo) -> tuple[int, list[Compression]]:
    with repo.index.read() as t:
        size = sum(i.size for _, i in t.packs())
        return size, [flags_compression(loc.flags) for _, loc in t.chunks()]


def _pack_ids(repo) -> set[bytes]:
    with repo.index.read() as t:
        return {p for p, _ in t.packs()}


def _objects(repo, tier: Tier) -> set[str]:
    return set(repo.tiers.backend(tier).list("packs/"))


def _check(repo, src, tmp_path, name: str, chunks: int) -> None:
    repo.drop_caches()
    export_and_compare(repo, src, "/m/run1", tmp_path / name)
    report = fsckop.fsck(repo)
    assert report.problems == [] and report.chunks_checked == chunks


def _complete_run(repo, tmp_path):
    """The bf16 run imported as ``/m/run1`` and marked complete; its source directory."""
    src = _bf16_run(tmp_path / "src")
    import_run(repo, src, "/m/run1")
    tierop.complete(repo, "/m/run1")
    return src


def test_a_bf16_run_is_re_encoded_on_its_way_to_warm_and_again_to_cold(tmp_path):
    repo = repo_on_dirs(tmp_path)
    try:
        src = _complete_run(repo, tmp_path)
        hot_bytes, kinds = _stored(repo)
        assert set(kinds) == {Compression.NONE}, "ingest leaves bf16 weights raw (zstd saves too little)"
        upload_copies(repo.tiers, sorted(_pack_ids(repo)))  # the write-back's copies, as a mount makes them
        hot_packs = _pack_ids(repo)
        assert _objects(repo, Tier.WARM) and len(_objects(repo, Tier.HOT)) == len(hot_packs)

        actions = tierop.plan(repo)
        assert [(a.src, a.dst, a.level) for a in actions] == [(Tier.HOT, Tier.WARM, 3)]
        outcome = tierop.apply(repo, actions)
        assert outcome.written["warm"]["packs"] == packs_by_tier(repo)[Tier.WARM] > 0
        assert packs_by_tier(repo)[Tier.HOT] == 0
        assert not _pack_ids(repo) & hot_packs, "new packs, the old ones retired"
        assert _objects(repo, Tier.HOT) == set(), "the hot packs are deleted"
        assert len(_objects(repo, Tier.WARM)) == len(_pack_ids(repo)), "and so are their write-back copies"
        assert deleted_packs_held_open() == [], "and their disk space is given back"
        warm_bytes, kinds = _stored(repo)
        assert sum(k in PLANES for k in kinds) >= len(kinds) - 2, f"every chunk but the headers is byte planes: {kinds}"
        # measured on these 64 KiB chunks (seeded): 0.76 of hot at zstd level 3, 0.74 at cold_level 9
        assert warm_bytes < 0.8 * hot_bytes, (warm_bytes, hot_bytes)
        _check(repo, src, tmp_path, "warm", len(kinds))

        clock.advance(40 * DAY)
        actions = tierop.plan(repo)
        assert [(a.run, a.src, a.dst, a.level) for a in actions] == [("/m/run1", Tier.WARM, Tier.COLD, 9)]
        tierop.apply(repo, actions)
        assert packs_by_tier(repo)[Tier.WARM] == 0 and _objects(repo, Tier.WARM) == set()
        assert deleted_packs_held_open() == []
        cold_bytes, kinds = _stored(repo)
        assert sum(k in PLANES for k in kinds) >= len(kinds) - 2
        assert cold_bytes <= warm_bytes, (cold_bytes, warm_bytes)
        _check(repo, src, tmp_path, "cold", len(kinds))
    finally:
        repo.close()


def test_du_and_stats_show_what_the_byte_planes_saved_per_encoding(tmp_path):
    repo = repo_on_dirs(tmp_path)
    try:
        _complete_run(repo, tmp_path)
        (raw,) = statusop.du(repo, "/m/run1")
        assert set(raw.encodings) == {"none"} and raw.encodings["none"]["stored"] == raw.raw_bytes
        tierop.apply(repo, tierop.plan(repo))
    finally:
        repo.close()
    (run,) = cli_json("du", "/m/run1", "--repo", tmp_path / "repo")
    planes = run["encodings"]["zstd_planes2"]  # bf16: 2-byte elements
    assert planes["chunks"] >= 6 and planes["stored"] < 0.8 * planes["raw"], run["encodings"]
    assert run["raw_bytes"] == raw.raw_bytes, "the same chunks, re-encoded"
    text = chunkfs("du", "/m/run1", "--repo", tmp_path / "repo", "--encodings").stdout
    assert re.search(r"/m/run1\s+zstd_planes2\s+\d+", text), text
    assert cli_json("stats", "--repo", tmp_path / "repo")["encodings"] == run["encodings"], "one run: the same figures"


def test_warm_level_0_moves_the_packs_as_they_are(tmp_path):
    repo = repo_on_dirs(tmp_path, warm_level=0)
    try:
        import_run(repo, _bf16_run(tmp_path / "src"), "/m/run1")
        tierop.complete(repo, "/m/run1")
        before, (hot_bytes, _) = _pack_ids(repo), _stored(repo)
        actions = tierop.plan(repo)
        assert [(a.src, a.dst, a.level) for a in actions] == [(Tier.HOT, Tier.WARM, 0)]
        outcome = tierop.apply(repo, actions)
        assert outcome.written == {} and _pack_ids(repo) == before and _stored(repo)[0] == hot_bytes
        assert packs_by_tier(repo)[Tier.HOT] == 0
    finally:
        repo.close()


def test_a_stopped_round_keeps_what_it_re_encoded_and_the_next_round_does_the_rest(tmp_path):
    repo = repo_on_dirs(tmp_path)
    try:
        src = _complete_run(repo, tmp_path)
        packs = packs_by_tier(repo)[Tier.HOT]
        assert packs >= 3, "small packs: one batch each (a batch is about one pack's size)"
        asked = []

        def stop() -> bool:
            asked.append(1)
            return len(asked) > 2  # the mount stops after the first batch

        outcome = repo.run_policies(stop)
        assert outcome.moved["hot→warm"]["packs"] == 1
        assert packs_by_tier(repo)[Tier.HOT] == packs - 1
        _check(repo, src, tmp_path, "half", len(_stored(repo)[1]))
        outcome = repo.run_policies()
        assert outcome.moved["hot→warm"]["packs"] == packs - 1 and packs_by_tier(repo)[Tier.HOT] == 0
        _check(repo, src, tmp_path, "whole", len(_stored(repo)[1]))
    finally:
        repo.close()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice values are Linux's")
def test_a_mounts_tier_mover_runs_at_the_lowest_cpu_priority():
    seen = threading.Event()
    priority = []

    def round_(stop):
        priority.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        seen.set()
        return lifecycle.Outcome()

    mover = lifecycle.Mover(round_)
    mover.start()
    mover.request()
    assert seen.wait(10)
    assert priority == [LOWEST_PRIORITY] and os.getpriority(os.PRIO_PROCESS, 0) < LOWEST_PRIORITY
    assert mover.stop() is True


def test_a_damaged_chunk_stops_its_runs_re_encoding_and_nothing_is_lost(tmp_path):
    repo = repo_on_dirs(tmp_path)
    try:
        _complete_run(repo, tmp_path)
        with repo.index.read() as t:
            oldest = min(t.packs(), key=lambda kv: kv[1].created_ns)
        path = repo.hot.path(pack_name(oldest[0]))
        with open(path, "r+b") as f:  # a flipped byte in the middle of a chunk's stored bytes
            f.seek(oldest[1].size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        before = _pack_ids(repo)
        outcome = tierop.apply(repo, tierop.plan(repo))
        assert len(outcome.errors) == 1 and "/m/run1" in outcome.errors[0] and "chunk" in outcome.errors[0]
        assert _pack_ids(repo) == before, "the damaged batch was the first: nothing moved, nothing half-done"
        with repo.tiers.lock.hold():  # the next holder of the tier lock undoes what the batch began
            pass
        assert repo.tiers.audit() == [] and _objects(repo, Tier.WARM) == set()
        assert {(p.kind, p.pack) for p in fsckop.fsck(repo).problems} == {("bad_chunk", oldest[0].hex())}, "fsck names it"
    finally:
        repo.close()


def test_a_writers_background_work_re_encodes_a_complete_run_through_its_tier_mover(tmp_path, monkeypatch):
    monkeypatch.setattr(repo_module, "COUNTERS_EVERY", 0.2)  # background rounds every 0.2 s, not 10
    repo = repo_on_dirs(tmp_path, interval=1)
    try:
        src = _complete_run(repo, tmp_path)
        before, (hot_bytes, _) = _pack_ids(repo), _stored(repo)
        repo.start_background()
        deadline = time.monotonic() + 30
        while packs_by_tier(repo)[Tier.HOT] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert repo.mover is not None and repo.mover.running
        repo.stop_background()
        assert repo.mover is None
        assert packs_by_tier(repo)[Tier.HOT] == 0 and not _pack_ids(repo) & before
        assert _stored(repo)[0] < 0.8 * hot_bytes
        _check(repo, src, tmp_path, "out", len(_stored(repo)[1]))
    finally:
        repo.close()
