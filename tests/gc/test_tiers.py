"""gc on every tier: packs that moved to warm and cold (local-directory tiers; the same Backend
calls as S3) are deleted and repacked there."""

from __future__ import annotations

from pathlib import Path

from gc_helpers import checkpoints_on_tiers, content, drop_checkpoints, read, tiered_settings

from chunkfs import config
from chunkfs.ops import gc, retention
from chunkfs.repo import Repository


def pack_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.pack")}


def test_gc_deletes_and_repacks_on_warm_and_cold(tmp_path):
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    tiers = config.TierSettings(warm=str(warm), cold=str(cold))
    repo = Repository.create(tmp_path / "repo", settings=tiered_settings(tiers, repack_below=0.99))
    try:
        files = checkpoints_on_tiers(repo, 2000)
        assert pack_files(warm) and pack_files(cold)
        drop_checkpoints(repo, files)
        before = {"warm": pack_files(warm), "cold": pack_files(cold)}
        result = gc.run(repo, retention.rules_for(repo.settings, keep_last=2))
        assert result.packs_deleted + result.packs_repacked > 0
        assert set(result.by_tier) & {"warm", "cold"}
        assert pack_files(warm) != before["warm"] and pack_files(cold) != before["cold"]
        for path, data in files.items():
            assert read(repo, path) == data
        assert not repo.tiers.audit()
        roots = (warm, cold, tmp_path / "repo" / "hot")
        stored = b"".join(p.read_bytes() for root in roots for p in root.rglob("*.pack"))
        assert content(2000)[:4096] not in stored and content(2319)[:4096] not in stored
    finally:
        repo.close()
