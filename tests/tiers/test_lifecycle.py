"""A run's life through the tiers against a real S3 server: write-back, completion, hot→warm,
reads from S3, warm→cold by age, cold archive and thaw — through the library API."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiers import (
    RequestCounter,
    export_and_compare,
    hot_pack_files,
    import_run,
    packs_by_tier,
    sealed_hot,
    tiered_settings,
    write_run,
)

from chunkfs import clock, config
from chunkfs.errors import BackendUnavailable
from chunkfs.ops import status as statusop
from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.store.tiering import lifecycle
from chunkfs.types import PackState, Tier

DAY = 86400


def test_run_written_completed_tiered_to_warm_and_read_back_from_s3(moto_server, tmp_path):
    src = write_run(tmp_path / "src")
    repo = Repository.create(tmp_path / "repo", settings=tiered_settings(moto_server.endpoint))
    try:
        import_run(repo, src, "/llama/run1")
        queued = statusop.status(repo).upload_backlog
        assert queued["packs"] == len(sealed_hot(repo)) > 2, "every sealed pack is queued for write-back"

        assert repo.uploader.drain() > 0
        assert statusop.status(repo).upload_backlog["packs"] == 0
        usage = statusop.tier_usage(repo)
        assert usage["warm"].copies == queued["packs"] and usage["hot"].packs == queued["packs"]
        assert tierop.plan(repo) == [], "uploaded but not complete: the hot copies stay"
        assert hot_pack_files(repo)

        assert tierop.complete(repo, "/llama/run1/checkpoint-100") == ["/llama/run1"]
        actions = tierop.plan(repo)
        assert [(a.run, a.src, a.dst, a.reason) for a in actions] == [("/llama/run1", Tier.HOT, Tier.WARM, "marked complete")]
        warm = RequestCounter(repo.tiers.backend(Tier.WARM))
        outcome = tierop.apply(repo, actions)
        assert outcome.moved == {"hot→warm": {"packs": queued["packs"], "bytes": queued["bytes"]}}
        written = outcome.written["warm"]
        assert warm.count("PutObject") + warm.count("CreateMultipartUpload") == written["packs"], "re-encoded packs"
        assert warm.count("DeleteObject") == queued["packs"], "the write-back's copies deleted"
        assert hot_pack_files(repo) == [], "hot copies evicted"
        assert packs_by_tier(repo)[Tier.WARM] == written["packs"] and written["bytes"] < queued["bytes"]
        assert repo.tiers.audit() == []

        repo.drop_caches()
        warm.reset()
        export_and_compare(repo, src, "/llama/run1", tmp_path / "out")
        assert warm.count("GetObject") > 0, "read back from S3"
        assert repo.readcache.usage()[0] > 0, "and kept in the disk read cache"
        warm.reset()
        repo.chunks.cache.clear()
        export_and_compare(repo, src, "/llama/run1", tmp_path / "out2")
        assert warm.count() == 0, "the second read comes from the disk cache"
    finally:
        repo.close()


def test_warm_to_cold_by_age_repacks_one_run_per_pack(moto_server, tmp_path):
    settings = tiered_settings(moto_server.endpoint, cold=str(tmp_path / "cold"))
    repo = Repository.create(tmp_path / "repo", settings=settings)
    try:
        src = write_run(tmp_path / "src", "run1", steps=1, seed=1)
        src2 = write_run(tmp_path / "src", "run2", steps=1, seed=2)
        import_run(repo, src, "/m/run1")
        import_run(repo, src2, "/m/run2")
        for run in ("/m/run1", "/m/run2"):
            tierop.complete(repo, run)
        tierop.apply(repo, tierop.plan(repo))  # both to warm, uploaded on the way
        assert packs_by_tier(repo)[Tier.WARM] > 2 and not hot_pack_files(repo)

        clock.advance(10 * DAY)
        assert tierop.plan(repo) == [], "not old enough"
        clock.advance(25 * DAY)
        tierop.thaw(repo, "/m/run2")  # counts as a read of run2 (nothing of it is cold)
        actions = tierop.plan(repo)
        assert [(a.run, a.src, a.dst) for a in actions] == [("/m/run1", Tier.WARM, Tier.COLD)], "run2 was read lately"
        assert "older than 30 days" in actions[0].reason
        outcome = tierop.apply(repo, actions)
        assert outcome.moved["warm→cold"]["packs"] == len(actions[0].packs)
        with repo.index.read() as t:
            cold = [(p, i) for p, i in t.packs() if i.tier == Tier.COLD]
            for _, loc in t.chunks():
                assert t.pack_get(loc.pack) is not None, "every chunk points at an existing pack"
        assert cold and {i.group for _, i in cold} == {"/m/run1"}, "cold packs hold one run's chunks only"
        assert all(i.state == PackState.SEALED for _, i in cold)
        assert repo.tiers.audit() == []

        repo.drop_caches()
        export_and_compare(repo, src, "/m/run1", tmp_path / "out")
        export_and_compare(repo, src2, "/m/run2", tmp_path / "out")
    finally:
        repo.close()


def test_cold_recompression_shrinks_what_compresses(moto_server, tmp_path):
    settings = tiered_settings(None, warm=str(tmp_path / "warm"), cold=str(tmp_path / "cold"))
    repo = Repository.create(tmp_path / "repo", settings=settings)
    try:
        src = tmp_path / "src" / "run1" / "checkpoint-1"
        src.mkdir(parents=True)
        # small integers as float32 (quantised weights: compressible) and random bytes (never shrink)
        rng = np.random.default_rng(0)
        (src / "quantised.bin").write_bytes(rng.integers(0, 16, 1 << 20, dtype=np.uint8).astype(np.float32).tobytes())
        (src / "random.bin").write_bytes(rng.bytes(1 << 20))
        import_run(repo, src.parent, "/m/run1")
        with repo.index.read() as t:
            before = sum(i.size for _, i in t.packs())
        tierop.move(repo, "/m/run1", Tier.COLD)
        with repo.index.read() as t:
            after = sum(i.size for _, i in t.packs())
            assert {i.tier for _, i in t.packs()} == {Tier.COLD}
        assert after < before
        repo.drop_caches()
        export_and_compare(repo, src.parent, "/m/run1", tmp_path / "out")
    finally:
        repo.close()


def test_cold_archive_read_names_thaw_then_thaw_restores(tmp_path):
    settings = tiered_settings(
        None, warm=str(tmp_path / "warm"), cold=str(tmp_path / "cold"), tiers={"cold_archive": True}
    )
    repo = Repository.create(tmp_path / "repo", settings=settings)
    try:
        src = write_run(tmp_path / "src", steps=1)
        import_run(repo, src, "/m/run1")
        tierop.move(repo, "/m/run1", Tier.COLD)
        repo.drop_caches()
        with pytest.raises(BackendUnavailable, match=r"/m/run1: .*archive.*run `chunkfs thaw /m/run1 --repo "):
            export_and_compare(repo, src, "/m/run1", tmp_path / "out")
        result = tierop.thaw(repo, "/m/run1/checkpoint-100")
        assert result.packs > 0 and result.to == "warm"
        export_and_compare(repo, src, "/m/run1", tmp_path / "out2")
        clock.advance(40 * 86400)
        assert [a.dst for a in tierop.plan(repo)] == [Tier.COLD], "thawed data goes cold again by age"
    finally:
        repo.close()


def test_idle_run_is_complete_and_held_run_stays_hot(tmp_path):
    lc = config.LifecycleSettings(run_idle=3600)
    settings = tiered_settings(None, warm=str(tmp_path / "warm"), lifecycle=lc)
    repo = Repository.create(tmp_path / "repo", settings=settings)
    try:
        import_run(repo, write_run(tmp_path / "src", steps=1), "/m/run1")
        assert tierop.plan(repo) == []
        clock.advance(3700)
        (action,) = tierop.plan(repo)
        assert action.reason.startswith("no new data for")
        tierop.move(repo, "/m/run1", Tier.HOT)  # by hand: held on hot
        assert tierop.plan(repo) == []
        tierop.move(repo, "/m/run1", Tier.WARM)
        tierop.move(repo, "/m/run1", Tier.HOT)  # back: the warm object stays as a copy
        usage = statusop.tier_usage(repo)
        assert usage["hot"].packs and usage["warm"].copies == usage["hot"].packs
        tierop.complete(repo, "/m/run1")
        outcome = repo.run_policies()
        assert outcome.moved["hot→warm"]["packs"] == usage["hot"].packs
        assert not hot_pack_files(repo)
        assert repo.tiers.audit() == []
    finally:
        repo.close()


def test_open_packs_of_complete_runs_are_sealed_by_the_background_policy(tmp_path):
    settings = tiered_settings(None, warm=str(tmp_path / "warm"))
    repo = Repository.create(tmp_path / "repo", settings=settings)
    try:
        ino, _ = repo.ns.mkdir(1, b"runA", 0o755, 0, 0)
        f, _ = repo.ns.mknod(ino, b"x", 0o100644, 0, 0)
        content = repo.file_content(f)
        content.write(0, bytes(range(256)) * 1024)
        repo.commit_file(f, content)  # its pack stays open
        with repo.index.read() as t:
            assert [i.state for _, i in t.packs()] == [PackState.OPEN]
        assert tierop.complete(repo, "/runA") == ["/runA"]
        assert lifecycle.complete_runs(repo.index, repo.settings.lifecycle) == {"/runA"}
        assert repo.seal_complete() == 0, "written just now: the writer may not be done"
        clock.advance(61)
        repo.run_policies()
        assert packs_by_tier(repo) == {Tier.HOT: 0, Tier.WARM: 1, Tier.COLD: 0}
    finally:
        repo.close()
