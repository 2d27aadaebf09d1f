"""gc with the warm and cold tiers on a real S3 server (moto's, on loopback): dead packs are
deleted from the bucket, mostly-dead ones repacked there; killed mid-repack, a rerun finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gc_helpers import checkpoints_on_tiers, drop_checkpoints, read, tiered_settings

from chunkfs import config
from chunkfs.ops import gc, retention
from chunkfs.repo import Repository

sys.path.insert(0, str(Path(__file__).parent.parent / "backends"))  # s3_servers

from s3_servers import ACCESS_KEY, BUCKET, SECRET_KEY, admin_client  # noqa: E402

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_EC2_METADATA_DISABLED="true")
    admin_client(url).create_bucket(Bucket=BUCKET)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def objects(endpoint: str, prefix: str) -> set[str]:
    client = admin_client(endpoint)
    out = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update(o["Key"] for o in page.get("Contents", []))
    return {k for k in out if k.endswith(".pack")}


def make(tmp_path: Path, endpoint: str, tag: str) -> Repository:
    tiers = config.TierSettings(warm=f"s3://{BUCKET}/gc-{tag}-warm", cold=f"s3://{BUCKET}/gc-{tag}-cold",
                                endpoint_url=endpoint)  # fmt: skip
    return Repository.create(tmp_path / "repo", settings=tiered_settings(tiers, repack_below=0.99))


def populate(repo) -> dict[str, bytes]:
    files = checkpoints_on_tiers(repo, 3000)
    drop_checkpoints(repo, files)
    return files


def test_gc_on_s3_tiers(tmp_path, endpoint):
    repo = make(tmp_path, endpoint, "a")
    try:
        files = populate(repo)
        before = objects(endpoint, "gc-a-warm") | objects(endpoint, "gc-a-cold")
        result = gc.run(repo, retention.rules_for(repo.settings, keep_last=2))
        assert result.packs_deleted + result.packs_repacked > 0
        after = objects(endpoint, "gc-a-warm") | objects(endpoint, "gc-a-cold")
        assert after != before and len(after) < len(before)
        for path, data in files.items():
            assert read(repo, path) == data
        assert not repo.tiers.audit()
    finally:
        repo.close()


@pytest.mark.parametrize("step", ["repack-built", "repack-switched", "packs-unindexed"])
def test_gc_on_s3_killed_then_rerun(tmp_path, endpoint, step):
    tag = f"k{step}"
    repo = make(tmp_path, endpoint, tag)
    files = populate(repo)
    repo.close()
    env = dict(os.environ, CHUNKFS_GC_HOOK=step)
    cmd = [sys.executable, "-m", "chunkfs", "gc", "--repo", str(tmp_path / "repo"), "--json", "--grace", "0s",
           "--keep-last", "2", "--repack-below", "0.99"]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    env.pop("CHUNKFS_GC_HOOK")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    again = json.loads(p.stdout)
    assert again["packs_deleted"] == 0 and again["packs_repacked"] == 0
    with Repository(tmp_path / "repo") as repo:
        for path, data in files.items():
            assert read(repo, path) == data
        assert not repo.tiers.audit(), repo.tiers.audit()
