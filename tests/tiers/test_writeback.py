"""Write-back when the S3 endpoint goes away and comes back (``rclone serve s3``, stopped and
restarted on the same port): writes keep landing on hot, the failure is logged once and shown by
status, the persistent queue drains once the endpoint is back, and nothing is lost."""

from __future__ import annotations

import logging
import time

import pytest
from helpers.tiers import (
    export_and_compare,
    hot_pack_files,
    import_run,
    sealed_hot,
    tiered_settings,
    write_run,
)

from chunkfs.ops import status as statusop
from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.store.tiering import uploads
from chunkfs.types import Tier


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(uploads, "FIRST_DELAY", 0.2)
    monkeypatch.setattr(uploads, "MAX_DELAY", 0.5)


def test_s3_down_during_write_back_then_back(own_rclone, tmp_path, quick_retries, caplog):
    caplog.set_level(logging.WARNING, logger="chunkfs")
    repo_path = tmp_path / "repo"
    run1 = write_run(tmp_path / "src", "run1", steps=1, seed=1)
    run2 = write_run(tmp_path / "src", "run2", steps=2, seed=2)
    repo = Repository.create(repo_path, settings=tiered_settings(own_rclone.endpoint))
    try:
        repo.tiers.backend(Tier.WARM).retry_window = 0.5  # a dead endpoint fails fast
        repo.start_background(policies=False)
        import_run(repo, run1, "/m/run1")
        _wait(lambda: statusop.status(repo).upload_backlog["packs"] == 0, 30, "the first run's uploads")

        own_rclone.stop()
        import_run(repo, run2, "/m/run2")  # never waits for S3
        queued = statusop.status(repo).upload_backlog
        assert queued["packs"] > 0
        _wait(lambda: statusop.status(repo).upload_error is not None, 30, "the uploader to notice")
        time.sleep(1.5)  # several failed retries
        s = statusop.status(repo)
        assert s.upload_backlog["packs"] == queued["packs"], "nothing uploaded, nothing lost"
        assert "unreachable" in s.upload_error or "unavailable" in s.upload_error
        failures = [r for r in caplog.records if "warm tier unavailable" in r.getMessage()]
        assert len(failures) == 1, "logged once, not at every retry"

        own_rclone.start()  # same port, same directory
        _wait(lambda: statusop.status(repo).upload_backlog["packs"] == 0, 30, "the queue to drain")
        assert statusop.status(repo).upload_error is None
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        repo.stop_background()

        for run in ("/m/run1", "/m/run2"):
            tierop.complete(repo, run)
        tierop.apply(repo, tierop.plan(repo))
        assert hot_pack_files(repo) == []
        assert repo.tiers.audit() == []
        repo.drop_caches()
        export_and_compare(repo, run1, "/m/run1", tmp_path / "out")
        export_and_compare(repo, run2, "/m/run2", tmp_path / "out")
    finally:
        repo.close()


def test_queue_survives_a_restart(own_rclone, tmp_path):
    """Packs sealed while the endpoint is down stay queued in the index across close and reopen."""
    repo_path = tmp_path / "repo"
    with Repository.create(repo_path, settings=tiered_settings(own_rclone.endpoint)) as repo:
        own_rclone.stop()
        import_run(repo, write_run(tmp_path / "src", steps=1), "/m/run1")
        queued = statusop.status(repo).upload_backlog["packs"]
    assert queued > 0
    own_rclone.start()
    with Repository(repo_path) as repo:
        assert statusop.status(repo).upload_backlog["packs"] == queued
    result = tierop.sync(repo_path)  # nothing mounted: sync uploads itself
    assert result.uploaded_bytes > 0 and not result.by_daemon
    with Repository(repo_path, writable=False) as repo:
        s = statusop.status(repo)
        assert s.upload_backlog["packs"] == 0
        assert s.tiers["warm"].copies == queued


def test_a_damaged_pack_does_not_hold_back_the_others(moto_server, tmp_path, caplog):
    """The uploader sends packs a few at a time (uploads.BATCH); one that fails its size check
    is set aside and logged, the others of its batch and of later batches go up."""
    with Repository.create(tmp_path / "repo", settings=tiered_settings(moto_server.endpoint)) as repo:
        import_run(repo, write_run(tmp_path / "src", steps=2), "/m/run1")
        packs = sealed_hot(repo)
        assert len(packs) > uploads.BATCH, "more than one batch"
        damaged = packs[1]
        with open(repo.hot.path(pack_name(damaged)), "r+b") as f:
            f.truncate(100)
        with caplog.at_level(logging.ERROR, logger="chunkfs.store.tiering.uploads"):
            assert repo.uploader.drain() > 0
        s = statusop.status(repo)
        assert s.upload_backlog["packs"] == 1 and s.tiers["warm"].copies == len(packs) - 1
        (logged,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert f"cannot upload pack {damaged.hex()}" in logged and "run `chunkfs fsck`" in logged
