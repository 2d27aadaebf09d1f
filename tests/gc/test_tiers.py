"""gc on every tier: packs that moved to warm and cold (local-directory tiers; the same Backend
calls as S3) are deleted and repacked there."""

from __future__ import annotations

import dataclasses
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


def test_gc_deletes_the_replica_copies_of_the_packs_it_deletes(tmp_path):
    warm, cold, replica = tmp_path / "warm", tmp_path / "cold", tmp_path / "replica"
    s = tiered_settings(config.TierSettings(warm=str(warm), cold=str(cold)), repack_below=0.99)
    replication = config.ReplicationSettings(replicas=(str(replica),), cold=True, interval=0)
    s = dataclasses.replace(s, replication=replication)
    repo = Repository.create(tmp_path / "repo", settings=s)
    try:
        files = checkpoints_on_tiers(repo, 3000)
        assert repo.replicas.run_once() > 0
        replicated = pack_files(replica)
        stray = replica / "packs" / "ee" / ("ee" * 16 + ".pack")  # a copy whose entry was never recorded
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"left by a killed replication")
        drop_checkpoints(repo, files)

        result = gc.run(repo, retention.rules_for(repo.settings, keep_last=2))
        assert result.packs_deleted + result.packs_repacked > 0
        with repo.index.read() as t:
            indexed = {f"{p.hex()}.pack" for p, _ in t.packs()}
            entries = {p for p, *_ in t.replicas()}
        left = pack_files(replica)
        assert left <= indexed, f"replica copies of deleted packs remain: {sorted(left - indexed)}"
        assert replicated - left, "gc deleted no replica copy"
        assert all(f"{p.hex()}.pack" in indexed for p in entries)
        repo.replicas.run_once()  # the repacked packs get their copies
        assert pack_files(replica) == {n for n in indexed if n in pack_files(warm) | pack_files(cold)}
        for path, data in files.items():
            assert read(repo, path) == data
    finally:
        repo.close()
