"""The tier commands as users run them (``python -m chunkfs …``): init with a warm tier, sync,
run complete, tier (dry run, JSON summary), status, du, stats, prefetch/unpin, tier move, tier
--check; and one-line errors for a wrong bucket and wrong credentials. Plus the metrics endpoint."""

from __future__ import annotations

import json
import os
import urllib.request

from s3_servers import BUCKET
from tier_helpers import chunkfs, import_run, s3_url, same_tree, tiered_settings, write_run

from component_helpers import small_settings

from chunkfs import config
from chunkfs.metrics import start_metrics_server
from chunkfs.ops import transfer
from chunkfs.repo import Repository

WRONG_SECRET = "wrong-secret-Xy7-never-print-me"


def test_tier_commands_end_to_end(moto_server, tmp_path, cli_env):
    repo = tmp_path / "repo"
    warm = s3_url("cli")
    created = chunkfs("init", str(repo), "--warm", warm, "--endpoint-url", moto_server.endpoint, "--json",
                      env=cli_env, ok=True)  # fmt: skip
    assert json.loads(created.stdout)["warm"] == warm
    text = (repo / "chunkfs.toml").read_text()
    assert f'warm = "{warm}"' in text and f'endpoint_url = "{moto_server.endpoint}"' in text
    small = small_settings(tiers=config.load(repo / "chunkfs.toml").tiers)  # small chunks and packs
    (repo / "chunkfs.toml").write_text(config.render(small))
    src = write_run(tmp_path / "src", steps=1)
    chunkfs("import", "--repo", str(repo), str(src), "/llama/run1", env=cli_env, ok=True)
    R = ("--repo", str(repo))

    status = json.loads(chunkfs("status", *R, "--json", env=cli_env, ok=True).stdout)
    assert status["upload_backlog"]["packs"] > 0 and status["writer"] is None
    synced = json.loads(chunkfs("sync", *R, "--json", env=cli_env, ok=True).stdout)
    assert synced["uploaded_bytes"] == status["upload_backlog"]["bytes"]

    chunkfs("run", "complete", "/llama/run1", *R, env=cli_env, ok=True)
    plan = json.loads(chunkfs("tier", *R, "--dry-run", "--json", env=cli_env, ok=True).stdout)["actions"]
    assert [(a["run"], a["from"], a["to"]) for a in plan] == [("/llama/run1", "hot", "warm")]
    done = json.loads(chunkfs("tier", *R, "--json", env=cli_env, ok=True).stdout)
    assert done["moved"]["hot→warm"]["packs"] == plan[0]["packs"] and done["errors"] == []
    assert "every pack is where the index says" in chunkfs("tier", *R, "--check", env=cli_env, ok=True).stdout

    status = json.loads(chunkfs("status", *R, "--json", env=cli_env, ok=True).stdout)
    assert status["upload_backlog"]["packs"] == 0
    assert status["tiers"]["hot"]["packs"] == 0 and status["tiers"]["warm"]["packs"] == plan[0]["packs"]
    assert status["activity"]["moved_packs_hot_warm"] == plan[0]["packs"]
    assert status["activity"]["written_bytes"] > 0
    (du,) = json.loads(chunkfs("du", *R, "/llama", "--json", env=cli_env, ok=True).stdout)
    assert du["run"] == "/llama/run1" and du["files"] == 3 and set(du["stored"]) == {"warm"}
    assert du["logical_bytes"] > du["stored_bytes"] > 0, "dedup: the torch file shares the tensors"
    stats = json.loads(chunkfs("stats", *R, "--json", env=cli_env, ok=True).stdout)
    assert stats["bytes_by_tier"]["warm"] == status["tiers"]["warm"]["bytes"]

    pre = json.loads(chunkfs("prefetch", "/llama/run1/checkpoint-100", *R, "--pin", "--json", env=cli_env, ok=True).stdout)
    assert pre["fetched_bytes"] > 0 and pre["pinned"]
    chunkfs("unpin", "/llama/run1/checkpoint-100", *R, env=cli_env, ok=True)

    moved = json.loads(chunkfs("tier", "move", "/llama/run1", "--to", "hot", *R, "--json", env=cli_env, ok=True).stdout)
    assert moved["moved"]["warm→hot"]["packs"] == plan[0]["packs"]
    bad = chunkfs("tier", "move", "/llama/nothing", "--to", "warm", *R, env=cli_env, ok=False)
    assert "/llama/nothing" in bad.stderr


def test_wrong_bucket_and_wrong_credentials_are_one_line_errors(moto_server, own_rclone, tmp_path, cli_env):
    missing = chunkfs("init", str(tmp_path / "r1"), "--warm", "s3://no-such-bucket-here/x",
                      "--endpoint-url", moto_server.endpoint, env=cli_env, ok=False)  # fmt: skip
    assert "no-such-bucket-here: bucket does not exist" in missing.stderr
    assert not (tmp_path / "r1").exists(), "nothing created"

    wrong = {**cli_env, "AWS_SECRET_ACCESS_KEY": WRONG_SECRET}
    denied = chunkfs("init", str(tmp_path / "r2"), "--warm", f"s3://{BUCKET}/x",
                     "--endpoint-url", own_rclone.endpoint, env=wrong, ok=False)  # fmt: skip
    assert "access denied" in denied.stderr and WRONG_SECRET not in denied.stderr

    # an existing repository whose credentials went wrong: sync and tier say so in one line
    repo = tmp_path / "r3"
    with Repository.create(repo, settings=tiered_settings(own_rclone.endpoint)) as r:
        import_run(r, write_run(tmp_path / "src", steps=1), "/m/run1")
    denied = chunkfs("sync", "--repo", str(repo), env=wrong, ok=False)
    assert "access denied" in denied.stderr and WRONG_SECRET not in denied.stderr
    chunkfs("run", "complete", "/m/run1", "--repo", str(repo), env=wrong, ok=True)  # the index only
    denied = chunkfs("tier", "--repo", str(repo), env=wrong, ok=False)
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


def test_admin_commands_while_another_process_holds_the_repository(moto_server, tmp_path, cli_env):
    """What a mount's daemon does (the repository lock, the uploader) played by this process;
    sync, run complete, tier and status run beside it as separate processes."""
    src = write_run(tmp_path / "src", steps=1)
    repo_path = tmp_path / "repo"
    R = ("--repo", str(repo_path))
    with Repository.create(repo_path, settings=tiered_settings(moto_server.endpoint)) as daemon:
        daemon.start_background()
        import_run(daemon, src, "/m/run1")
        synced = json.loads(chunkfs("sync", *R, "--json", env=cli_env, ok=True).stdout)
        assert synced["by_daemon"] is True, "the daemon's uploader did the work; sync waited"
        chunkfs("run", "complete", "/m/run1", *R, env=cli_env, ok=True)
        done = json.loads(chunkfs("tier", *R, "--json", env=cli_env, ok=True).stdout)
        assert done["moved"]["hot→warm"]["packs"] > 0
        status = json.loads(chunkfs("status", *R, "--json", env=cli_env, ok=True).stdout)
        assert status["writer"] == f"pid {os.getpid()}" and status["tiers"]["hot"]["packs"] == 0
        daemon.chunks.cache.clear()  # the daemon reads the moved run from S3
        out = tmp_path / "out"
        out.mkdir()
        transfer.export_tree(daemon, "/m/run1", out)
        same_tree(src, out / "run1")
