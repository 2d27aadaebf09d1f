"""gc with the warm and cold tiers on a real S3 server (moto's, on loopback): dead packs are
deleted from the bucket, mostly-dead ones repacked there; killed mid-repack, a rerun finishes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.cli import chunkfs, cli_json
from helpers.gc import checkpoints_on_tiers, drop_checkpoints, gc_settings, read
from helpers.s3servers import ACCESS_KEY, BUCKET, SECRET_KEY, admin_client
from helpers.tiers import tiered_settings

from chunkfs.ops import gc, retention
from chunkfs.repo import Repository

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
    settings = tiered_settings(endpoint, warm=f"s3://{BUCKET}/gc-{tag}-warm", cold=f"s3://{BUCKET}/gc-{tag}-cold",
                               gc=gc_settings(repack_below=0.99))  # fmt: skip
    return Repository.create(tmp_path / "repo", settings=settings)


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
def test_gc_on_s3_killed_then_rerun(tmp_path, endpoint, step, gc_env):
    tag = f"k{step}"
    repo = make(tmp_path, endpoint, tag)
    files = populate(repo)
    repo.close()
    args = ["gc", "--repo", tmp_path / "repo", "--grace", "0s", "--keep-last", "2", "--repack-below", "0.99"]
    p = chunkfs(*args, "--json", env={"CHUNKFS_GC_HOOK": step}, expect=None)
    assert p.returncode == -9, p.stderr  # the hook killed it at that step
    cli_json(*args)
    again = cli_json(*args)
    assert again["packs_deleted"] == 0 and again["packs_repacked"] == 0
    with Repository(tmp_path / "repo") as repo:
        for path, data in files.items():
            assert read(repo, path) == data
        assert not repo.tiers.audit(), repo.tiers.audit()
