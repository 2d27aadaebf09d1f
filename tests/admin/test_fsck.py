"""fsck finds a flipped byte, a truncated pack and a deleted pack on the warm tier (moto), names the
affected files and versions; --repair takes the chunks from the replica (rclone) and everything reads
back bit-identical; a read with the primary corrupted is served from the replica."""

from __future__ import annotations

import json

import pytest
from helpers.admin import (
    admin_settings,
    first_chunk_offset,
    flip_byte,
    make_runs,
    packs_with_files,
    s3_delete,
    s3_get,
    s3_put,
    to_tier,
)
from helpers.cli import chunkfs
from helpers.tiers import export_and_compare

from chunkfs.errors import CorruptData
from chunkfs.ops import fsck as fsckop
from chunkfs.ops import rebuild
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import Tier


@pytest.fixture
def replicated(moto_server, rclone_server, tmp_path):
    """Three runs on the warm tier (moto), every pack replicated (rclone)."""
    settings = admin_settings(moto_server, rclone_server)
    repo = Repository.create(tmp_path / "repo", settings=settings)
    srcs = make_runs(repo, tmp_path / "src")
    to_tier(repo, srcs, Tier.WARM)
    assert repo.replicas.run_once() > 0
    assert repo.replicas.lag().packs == 0
    yield repo, srcs
    repo.close()


def _three_packs(repo):
    by_pack = packs_with_files(repo)
    with repo.index.read() as t:
        warm = [p for p, i in t.packs() if i.tier == Tier.WARM and p in by_pack]
    # one pack of each run, so each damage names its own files
    chosen = []
    for run in ("runA", "runB", "runC"):
        chosen.append(next(p for p in sorted(warm) if all(f.startswith(f"/m/{run}/") for f in by_pack[p])))
    return chosen, by_pack


def test_fsck_clean_repository(replicated):
    repo, _ = replicated
    report = fsckop.fsck(repo)
    assert report.ok and not report.problems, report.problems
    assert report.chunks_checked == report.chunks_referenced > 0
    assert report.versions > 0


def test_fsck_finds_damage_names_files_and_repairs_from_replica(replicated, moto_server, tmp_path):
    repo, srcs = replicated
    url = repo.tiers.url(Tier.WARM)
    (flipped, truncated, deleted), by_pack = _three_packs(repo)
    flip_byte(moto_server, url, flipped, first_chunk_offset(repo, flipped) + 7)
    data = s3_get(moto_server, url, pack_name(truncated))
    s3_put(moto_server, url, pack_name(truncated), data[: len(data) // 2])
    s3_delete(moto_server, url, pack_name(deleted))

    report = fsckop.fsck(repo)
    assert not report.ok
    kinds = {(p.kind, p.pack) for p in report.problems}
    assert ("bad_chunk", flipped.hex()) in kinds
    assert ("truncated_pack", truncated.hex()) in kinds
    assert ("missing_pack", deleted.hex()) in kinds
    named = {a.path for a in report.affected}
    for pack in (flipped, truncated, deleted):
        assert by_pack[pack] & named, (pack.hex(), by_pack[pack], named)
    assert named <= by_pack[flipped] | by_pack[truncated] | by_pack[deleted]
    assert all(a.current and a.commits for a in report.affected)
    repo.close()

    # the CLI says the same, as JSON, and fails
    done = chunkfs("fsck", "--repo", str(repo.path), "--json", expect=None)  # the report on stdout, nothing on stderr
    assert done.returncode == CorruptData.exit_code
    doc = json.loads(done.stdout)
    assert not doc["ok"] and {a["path"] for a in doc["affected"]} == named

    done = chunkfs("fsck", "--repo", str(repo.path), "--repair")
    assert "REPAIRED" in done.stdout
    with Repository(repo.path) as again:
        report = fsckop.fsck(again)
        assert report.ok and not report.problems, report.problems
        for i, (dest, src) in enumerate(srcs.items()):
            again.drop_caches()
            export_and_compare(again, src, dest, tmp_path / f"out{i}")


def test_read_with_primary_corrupted_is_served_from_replica(replicated, moto_server, tmp_path, caplog):
    repo, srcs = replicated
    url = repo.tiers.url(Tier.WARM)
    (flipped, _, deleted), _ = _three_packs(repo)
    flip_byte(moto_server, url, flipped, first_chunk_offset(repo, flipped) + 3)
    s3_delete(moto_server, url, pack_name(deleted))
    repo.drop_caches()
    for i, (dest, src) in enumerate(srcs.items()):
        export_and_compare(repo, src, dest, tmp_path / f"out{i}")
    assert repo.replicas.served >= 2
    assert "served from a replica" in caplog.text


def test_fsck_repairs_index_from_footers_and_sample(replicated):
    repo, _ = replicated
    with repo.index.read() as t:
        victims = [c for c, _ in t.chunks()][:5]
    with repo.index.write() as t:
        for c in victims:
            t.chunk_delete(c)
    report = fsckop.fsck(repo, sample=0.3, seed=1)
    assert {p.kind for p in report.problems} == {"missing_chunk"} and report.affected
    assert report.chunks_checked < report.chunks_referenced
    report = fsckop.fsck(repo, repair=True)
    assert report.ok and report.reindexed_chunks == 5
    assert not fsckop.fsck(repo).problems


def test_index_rebuild_keeps_warm_packs(replicated, tmp_path):
    repo, srcs = replicated
    result = rebuild.rebuild(repo)
    assert result.missing_chunks == 0 and not result.damaged
    with repo.index.read() as t:
        assert any(i.tier == Tier.WARM for _, i in t.packs())
    for i, (dest, src) in enumerate(srcs.items()):
        export_and_compare(repo, src, dest, tmp_path / f"out{i}")


def test_background_replication_and_metadata_backup(moto_server, rclone_server, tmp_path):
    """A writable repository's background threads upload, replicate and back up on their own."""
    import time

    from helpers.admin import admin_settings, make_runs

    from chunkfs import config
    from chunkfs.store.maintenance.metabackup import list_backups

    settings = admin_settings(moto_server, rclone_server)
    settings = config.Settings(**{**vars(settings),
                                  "replication": config.ReplicationSettings(replicas=settings.replication.replicas,
                                                                            endpoint_url=rclone_server.endpoint, interval=1),
                                  "backup": config.BackupSettings(interval=1)})  # fmt: skip
    with Repository.create(tmp_path / "repo", settings=settings) as repo:
        make_runs(repo, tmp_path / "src", runs=("runA",), steps=1)
        repo.start_background()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lag = repo.replicas.lag()
            if lag.replicated_packs and not lag.packs and list_backups(repo.replicas.backend(repo.replicas.urls[0])):
                break
            time.sleep(0.5)
        repo.stop_background()
        assert lag.packs == 0 and lag.replicated_packs > 0
        assert list_backups(repo.tiers.backend(Tier.WARM))


def test_hot_damage_repaired_from_warm_copy_and_deleted_files_named(moto_server, tmp_path):
    """No replica: a flipped byte in a hot pack is repaired from its write-back copy on warm; damage in a
    file that was deleted since is still reported, under the path it had."""
    from helpers.admin import admin_settings, make_runs

    from chunkfs.ops import transfer

    repo = Repository.create(tmp_path / "repo", settings=admin_settings(moto_server))
    try:
        srcs = make_runs(repo, tmp_path / "src", runs=("runA",), steps=1)
        repo.uploader.drain()
        victim_file = "/m/runA/checkpoint-100/training_state.pt"
        others = {e.chunk for f in ("model.safetensors", "trainer_state.json")
                  for e in repo.ns.extents(repo.ns.resolve(f"/m/runA/checkpoint-100/{f}"))}  # fmt: skip
        chunk = next(e.chunk for e in repo.ns.extents(repo.ns.resolve(victim_file)) if e.chunk not in others)
        loc = repo.packs.locate(chunk)
        path = repo.hot.path(pack_name(loc.pack))
        data = bytearray(path.read_bytes())
        data[loc.offset + 5] ^= 0x01
        path.write_bytes(bytes(data))
        repo.hot.forget(pack_name(loc.pack))
        parent = repo.ns.resolve("/m/runA/checkpoint-100")
        repo.ns.unlink(parent, b"training_state.pt")

        report = fsckop.fsck(repo)
        assert [a.path for a in report.affected] == [victim_file]
        assert report.affected[0].commits and not report.affected[0].current
        report = fsckop.fsck(repo, repair=True)
        assert report.ok and report.repaired_chunks >= 1
        assert not fsckop.fsck(repo).problems
        repo.drop_caches()
        commit = report.affected[0].commits[-1]
        out = tmp_path / "out"
        out.mkdir()
        from chunkfs.namespace.views import CommitView

        transfer.export_tree(repo, victim_file, out, view=CommitView(repo.history, commit))
        assert (out / "training_state.pt").read_bytes() == (srcs["/m/runA"] / "checkpoint-100" / "training_state.pt").read_bytes()
    finally:
        repo.close()
