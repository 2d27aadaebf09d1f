"""gc on every tier: packs that moved to warm and cold (local-directory tiers; the same Backend
calls as S3) are deleted and repacked there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers.gc import checkpoints_on_tiers, content, drop_checkpoints, gc_settings, read
from helpers.tiers import deleted_packs_held_open, tiered_settings

from chunkfs import config
from chunkfs.ops import gc, retention
from chunkfs.repo import Repository
from chunkfs.store.backends import ownership
from chunkfs.store.maintenance import reencode
from chunkfs.store.pack.files import pack_name


def pack_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.pack")}


def test_gc_deletes_and_repacks_on_warm_and_cold(tmp_path):
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    settings = tiered_settings(warm=str(warm), cold=str(cold), gc=gc_settings(repack_below=0.99))
    repo = Repository.create(tmp_path / "repo", settings=settings)
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
        assert deleted_packs_held_open() == [], "a repack gives back the space of the packs it deletes"
        roots = (warm, cold, tmp_path / "repo" / "hot")
        stored = b"".join(p.read_bytes() for root in roots for p in root.rglob("*.pack"))
        assert content(2000)[:4096] not in stored and content(2319)[:4096] not in stored
    finally:
        repo.close()


def test_gc_deletes_the_replica_copies_of_the_packs_it_deletes(tmp_path):
    warm, cold, replica = tmp_path / "warm", tmp_path / "cold", tmp_path / "replica"
    s = tiered_settings(warm=str(warm), cold=str(cold), gc=gc_settings(repack_below=0.99))
    replication = config.ReplicationSettings(replicas=(str(replica),), cold=True, interval=0)
    s = dataclasses.replace(s, replication=replication)
    repo = Repository.create(tmp_path / "repo", settings=s)
    try:
        files = checkpoints_on_tiers(repo, 3000)
        assert repo.replicas.run_once() > 0
        replicated = pack_files(replica)
        stray = replica / pack_name(ownership.new_pack_id(repo.index.repo_id))  # a copy never recorded
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


def test_a_condemned_chunk_survives_a_cold_repack_and_its_resurrection(tmp_path):
    """gc condemned a chunk that a writer had already found by dedup; a cold repack of its pack
    runs; then the writer commits, which resurrects the chunk. Every rewrite of a pack (gc, tier,
    fsck) counts condemned chunks as live (store/maintenance/rewrite.py), so the bytes moved with the pack."""
    from helpers.gc import write

    from chunkfs.types import PackState, Tier

    warm, cold = tmp_path / "warm", tmp_path / "cold"
    repo = Repository.create(tmp_path / "repo", settings=tiered_settings(warm=str(warm), cold=str(cold), gc=gc_settings()))
    try:
        data = content(*range(7000, 7008))
        write(repo, "/m/run/checkpoint-1/model.bin", data)
        # a writer saving the same bytes again finds every chunk by dedup: its write window is open
        parent = repo.ns.resolve("/m/run/checkpoint-1")
        other, _ = repo.ns.mknod(parent, b"copy.bin", 0o100644, 0, 0)
        writer = repo.file_content(other)
        writer.write(0, data)
        before = repo.chunks.new_chunks
        repo.packs.seal_all()
        with repo.index.read() as t:
            packs = [p for p, i in t.packs() if i.state == PackState.SEALED]
        repo.ns.unlink(parent, b"model.bin")  # the only file that references them goes
        gc.run(repo, retention.rules_for(repo.settings, keep_within="0s"))  # condemns them (not swept: a lease)
        with repo.index.read() as t:
            assert len(list(t.condemned())) == 8, "the chunks are condemned"
        for pack in packs:
            repo.tiers.move_pack(pack, Tier.WARM)
        reencode.repack(repo.tiers, "/m/run", packs, Tier.COLD, 9)  # the cold repack rewrites the pack
        with repo.index.read() as t:
            assert all(t.pack_get(p) is None for p in packs), "the old packs are gone"
        repo.commit_file(other, writer)  # resurrects every condemned chunk it names
        assert repo.chunks.new_chunks == before, "nothing was stored again: dedup found them"
        with repo.index.read() as t:
            assert not list(t.condemned())
        repo.drop_caches()
        assert read(repo, "/m/run/checkpoint-1/copy.bin") == data
        assert not repo.tiers.audit()
    finally:
        repo.close()
