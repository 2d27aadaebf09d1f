"""The tier commands as users run them (``python -m chunkfs …``): init with a warm tier, sync,
run complete, tier (dry run, JSON summary), status, du, stats, prefetch/unpin, tier move, tier
--check; and one-line errors for a wrong bucket and wrong credentials. Plus the metrics endpoint."""

from __future__ import annotations

import os
import urllib.request

import pytest
from helpers.cli import chunkfs, cli_json
from helpers.repos import same_tree, small_settings
from helpers.s3servers import BUCKET
from helpers.tiers import import_run, s3_url, tiered_settings, write_run

from chunkfs import config
from chunkfs.errors import AlreadyExists, BackendUnavailable, Conflict, NotFound
from chunkfs.metrics import start_metrics_server
from chunkfs.ops import transfer
from chunkfs.repo import Repository

WRONG_SECRET = "wrong-secret-Xy7-never-print-me"


def test_tier_commands_end_to_end(moto_server, tmp_path):
    repo = tmp_path / "repo"
    warm = s3_url("cli")
    created = cli_json("init", str(repo), "--warm", warm, "--endpoint-url", moto_server.endpoint)
    assert created["warm"] == warm
    text = (repo / "chunkfs.toml").read_text()
    assert f'warm = "{warm}"' in text and f'endpoint_url = "{moto_server.endpoint}"' in text
    small = small_settings(tiers=config.load(repo / "chunkfs.toml").tiers)  # small chunks and packs
    (repo / "chunkfs.toml").write_text(config.render(small))
    src = write_run(tmp_path / "src", steps=1)
    chunkfs("import", "--repo", str(repo), str(src), "/llama/run1")
    R = ("--repo", str(repo))

    status = cli_json("status", *R)
    assert status["upload_backlog"]["packs"] > 0 and status["writer"] is None
    synced = cli_json("sync", *R)
    assert synced["uploaded_bytes"] == status["upload_backlog"]["bytes"]

    chunkfs("run", "complete", "/llama/run1", *R)
    plan = cli_json("tier", *R, "--dry-run")["actions"]
    assert [(a["run"], a["from"], a["to"]) for a in plan] == [("/llama/run1", "hot", "warm")]
    done = cli_json("tier", *R)
    assert done["moved"]["hot→warm"]["packs"] == plan[0]["packs"] and done["errors"] == []
    assert "every pack is where the index says" in chunkfs("tier", *R, "--check").stdout

    status = cli_json("status", *R)
    assert status["upload_backlog"]["packs"] == 0
    assert status["tiers"]["hot"]["packs"] == 0 and status["tiers"]["warm"]["packs"] == plan[0]["packs"]
    assert status["activity"]["moved_packs_hot_warm"] == plan[0]["packs"]
    assert status["activity"]["written_bytes"] > 0
    (du,) = cli_json("du", *R, "/llama")
    assert du["run"] == "/llama/run1" and du["files"] == 3 and set(du["stored"]) == {"warm"}
    assert du["logical_bytes"] > du["stored_bytes"] > 0, "dedup: the torch file shares the tensors"
    stats = cli_json("stats", *R)
    assert stats["bytes_by_tier"]["warm"] == status["tiers"]["warm"]["bytes"]

    pre = cli_json("prefetch", "/llama/run1/checkpoint-100", *R, "--pin")
    assert pre["fetched_bytes"] > 0 and pre["pinned"]
    chunkfs("unpin", "/llama/run1/checkpoint-100", *R)

    moved = cli_json("tier", "move", "/llama/run1", "--to", "hot", *R)
    assert moved["moved"]["warm→hot"]["packs"] == plan[0]["packs"]
    bad = chunkfs("tier", "move", "/llama/nothing", "--to", "warm", *R, expect=NotFound)
    assert "/llama/nothing" in bad.stderr


def test_wrong_bucket_and_wrong_credentials_are_one_line_errors(moto_server, own_rclone, tmp_path):
    missing = chunkfs("init", str(tmp_path / "r1"), "--warm", "s3://no-such-bucket-here/x",
                      "--endpoint-url", moto_server.endpoint, expect=NotFound)  # fmt: skip
    assert "no-such-bucket-here: bucket does not exist" in missing.stderr
    assert not (tmp_path / "r1").exists(), "nothing created"

    wrong = {"AWS_SECRET_ACCESS_KEY": WRONG_SECRET}
    denied = chunkfs("init", str(tmp_path / "r2"), "--warm", f"s3://{BUCKET}/x",
                     "--endpoint-url", own_rclone.endpoint, env=wrong, expect=BackendUnavailable)  # fmt: skip
    assert "access denied" in denied.stderr and WRONG_SECRET not in denied.stderr

    # an existing repository whose credentials went wrong: sync and tier say so in one line
    repo = tmp_path / "r3"
    with Repository.create(repo, settings=tiered_settings(own_rclone.endpoint)) as r:
        import_run(r, write_run(tmp_path / "src", steps=1), "/m/run1")
    denied = chunkfs("sync", "--repo", str(repo), env=wrong, expect=BackendUnavailable)
    assert "access denied" in denied.stderr and WRONG_SECRET not in denied.stderr
    chunkfs("run", "complete", "/m/run1", "--repo", str(repo), env=wrong)  # the index only
    denied = chunkfs("tier", "--repo", str(repo), env=wrong, expect=BackendUnavailable)
    assert "access denied" in denied.stderr


def test_metrics_endpoint_serves_the_status_figures(tmp_path):
    settings = tiered_settings(None, warm=str(tmp_path / "warm"))
    with Repository.create(tmp_path / "repo", settings=settings) as repo:
        import_run(repo, write_run(tmp_path / "src", steps=1), "/m/run1")
        server = start_metrics_server("127.0.0.1:0", repo)
        try:
            with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as response:
                text = response.read().decode()
        finally:
            server.stop()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert lines["chunkfs_upload_backlog_packs"] > 0
    assert lines["chunkfs_upload_backlog_bytes"] > 0
    assert lines["chunkfs_written_bytes_total"] > 0
    assert lines['chunkfs_chunks_total{kind="new"}'] > 0
    assert lines['chunkfs_tier_bytes{tier="hot"}'] > 0
    assert 'chunkfs_tier_bytes{tier="warm"}' in lines
    assert "chunkfs_read_cache_requests_total{result=\"hit\"}" in lines


def test_admin_commands_while_another_process_holds_the_repository(moto_server, tmp_path):
    """What a mount's daemon does (the repository lock, the uploader) played by this process;
    sync, run complete, tier and status run beside it as separate processes."""
    src = write_run(tmp_path / "src", steps=1)
    repo_path = tmp_path / "repo"
    R = ("--repo", str(repo_path))
    with Repository.create(repo_path, settings=tiered_settings(moto_server.endpoint)) as daemon:
        daemon.start_background()
        import_run(daemon, src, "/m/run1")
        synced = cli_json("sync", *R)
        assert synced["by_daemon"] is True, "the daemon's uploader did the work; sync waited"
        chunkfs("run", "complete", "/m/run1", *R)
        done = cli_json("tier", *R)
        assert done["moved"]["hot→warm"]["packs"] > 0
        status = cli_json("status", *R)
        assert status["writer"] == f"pid {os.getpid()}" and status["tiers"]["hot"]["packs"] == 0
        daemon.chunks.cache.clear()  # the daemon reads the moved run from S3
        out = tmp_path / "out"
        out.mkdir()
        transfer.export_tree(daemon, "/m/run1", out)
        same_tree(src, out / "run1")


def test_one_location_one_repository(moto_server, tmp_path):
    """A second repository on the first one's S3 prefix: init refuses it; forced there anyway (its
    chunkfs.toml edited), its gc deletes nothing of the first one's."""
    warm = s3_url("shared")
    a, b = tmp_path / "a", tmp_path / "b"
    chunkfs("init", str(a), "--warm", warm, "--endpoint-url", moto_server.endpoint)
    src = write_run(tmp_path / "src", steps=1)
    chunkfs("import", "--repo", str(a), str(src), "/llama/run1")
    chunkfs("sync", "--repo", str(a))
    chunkfs("backup", "--repo", str(a))
    refused = chunkfs("init", str(b), "--warm", warm, "--endpoint-url", moto_server.endpoint, expect=AlreadyExists)
    assert "already holds chunkfs repository" in refused.stderr and "chunkfs recover --from" in refused.stderr
    assert not b.exists(), "nothing created"

    chunkfs("init", str(b), "--warm", s3_url("elsewhere"), "--endpoint-url", moto_server.endpoint)
    settings = config.load(b / "chunkfs.toml")
    forced = config.Settings(**{**vars(settings), "tiers": config.TierSettings(**{**vars(settings.tiers), "warm": warm}),
                                "gc": config.GcSettings(orphan_age=0, grace=0)})  # fmt: skip
    (b / "chunkfs.toml").write_text(config.render(forced))
    with Repository(a, writable=False) as ra:
        from chunkfs.types import Tier

        before = sorted(ra.tiers.backend(Tier.WARM).list(""))
    assert any(n.startswith("packs/") for n in before) and any(n.startswith("meta/") for n in before)
    chunkfs("gc", "--repo", str(b), "--json", expect=None)  # may fail (the location is a's), never deletes
    chunkfs("backup", "--repo", str(b), expect=None)  # would prune a's backups if it could
    with Repository(a, writable=False) as ra:
        after = set(ra.tiers.backend(Tier.WARM).list(""))
    assert set(before) <= after, f"a's objects deleted by b: {sorted(set(before) - after)}"
    done = cli_json("gc", "--repo", str(b))
    assert done["orphans"] == 0 and done["orphans_foreign"] >= 1, "a's packs: not provably b's"
    # any delete at all there is refused: the location names a
    with Repository(b) as rb, pytest.raises(Conflict, match="belongs to chunkfs repository"):
        rb.tiers.backend(Tier.WARM).delete("packs/00/" + "00" * 16 + ".pack")
