"""A cold tier in an S3 archive storage class (GLACIER), against moto's server: a read of a run
that went cold fails at once and names `chunkfs thaw`; `chunkfs thaw` restores the packs
(RestoreObject, then the HEAD's x-amz-restore), moves them to warm, and the run reads back
bit-identical. Plus ``S3Backend.restore``'s states one by one and the plain GET of an archived
object (one request, an error that says what to do).

moto restores an object at the first look after the request unless its state manager is told
otherwise (``/moto-api/state-manager``): the restore-state test makes it take a few looks.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request

import pytest
from helpers.cli import chunkfs, cli_json
from helpers.repos import same_tree, small_settings
from helpers.tiers import RequestCounter, packs_by_tier, s3_url, write_config, write_run

from chunkfs import config
from chunkfs.errors import BackendUnavailable
from chunkfs.repo import Repository
from chunkfs.store.backends.s3 import S3Backend, restore_state
from chunkfs.store.pack.files import pack_name
from chunkfs.types import Tier

RESTORE_MODEL = "s3::keyrestore"


def _state_manager(endpoint: str, action: str, body: dict) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/state-manager/{action}", data=json.dumps(body).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def slow_restores(moto_server):
    """moto's keys take ``times`` looks per restore state (None → in progress → restored)."""

    def slow(times: int) -> None:
        _state_manager(
            moto_server.endpoint, "set-transition",
            {"model_name": RESTORE_MODEL, "transition": {"progression": "manual", "times": times}},
        )  # fmt: skip

    yield slow
    _state_manager(moto_server.endpoint, "unset-transition", {"model_name": RESTORE_MODEL})


def test_restore_state_header():
    assert restore_state(None) is None
    assert restore_state('ongoing-request="true"') is False
    assert restore_state('ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"') is True
    with pytest.raises(BackendUnavailable, match="x-amz-restore"):
        restore_state("whatever")


def test_restore_states_and_reads_of_an_archived_object(moto_server, slow_restores, tmp_path):
    slow_restores(1000)  # no restore state moves while the object is uploaded and checked
    endpoint = moto_server.endpoint
    glacier = S3Backend(s3_url("glacier"), endpoint_url=endpoint, storage_class="GLACIER", restore_days=2)
    standard = S3Backend(s3_url("standard"), endpoint_url=endpoint, storage_class="GLACIER_IR")
    data = bytes(range(256)) * 4096
    glacier.put("packs/a.pack", data)
    standard.put("packs/a.pack", data)
    requests = RequestCounter(glacier)

    assert standard.restore("packs/a.pack") is True, "a class read without a restore is readable as it is"
    with pytest.raises(BackendUnavailable, match=r"/packs/a\.pack: archived .*not restored; run `chunkfs thaw"):
        glacier.get_range("packs/a.pack", 0, 100)
    with pytest.raises(BackendUnavailable, match=r"/packs/a\.pack: archived .*`chunkfs thaw PATH`"):
        glacier.get("packs/a.pack")
    assert requests.count("GetObject") == 2, "refused at once: no retries"

    requests.reset()
    slow_restores(2)
    assert glacier.restore("packs/a.pack") is False, "archived, nothing requested: asks for a restore"
    assert requests.calls == ["HeadObject", "RestoreObject"]
    states = []
    for _ in range(10):
        states.append(glacier.restore("packs/a.pack"))
        if states[-1]:
            break
    assert states[-1] is True and False in states, f"in progress, then done: {states}"
    assert requests.count("RestoreObject") == 1, "a requested restore is not requested again"
    assert glacier.get_range("packs/a.pack", 100, 50) == data[100:150]
    assert glacier.restore("packs/a.pack") is True


def test_thaw_restores_a_glacier_cold_tier_end_to_end(moto_server, tmp_path):
    repo = tmp_path / "repo"
    R = ("--repo", str(repo))
    chunkfs("init", str(repo), "--warm", s3_url("warm"), "--cold", s3_url("cold"), "--cold-archive",
            "--endpoint-url", moto_server.endpoint)  # fmt: skip
    tiers = config.load(repo / config.CONFIG_NAME).tiers
    write_config(repo, small_settings(tiers=dataclasses.replace(tiers, cold_storage_class="GLACIER")))
    src = write_run(tmp_path / "src", steps=1)
    chunkfs("import", *R, str(src), "/llama/run1")
    moved = cli_json("tier", "move", "/llama/run1", "--to", "cold", *R)
    assert moved["errors"] == [] and sum(m["packs"] for m in moved["moved"].values()) > 0
    with Repository(repo, writable=False) as r:
        assert {t for t, n in packs_by_tier(r).items() if n} == {Tier.COLD}
        cold = r.tiers.backend(Tier.COLD)
        with r.index.read() as t:
            names = [pack_name(p) for p, _ in t.packs()]
        heads = [cold._client.head_object(Bucket=cold.bucket, Key=cold._key(n)) for n in names]
        assert {h["StorageClass"] for h in heads} == {"GLACIER"}

    failed = chunkfs("export", *R, "/llama/run1", str(tmp_path / "out1"), timeout=60, expect=BackendUnavailable)
    assert "/llama/run1" in failed.stderr and "`chunkfs thaw /llama/run1 --repo " in failed.stderr

    thawed = cli_json("thaw", "/llama/run1", *R, "--wait", "60")
    assert thawed["packs"] == len(names) and thawed["to"] == "warm" and thawed["runs"] == ["/llama/run1"]
    with Repository(repo, writable=False) as r:
        assert {t for t, n in packs_by_tier(r).items() if n} == {Tier.WARM}
    chunkfs("export", *R, "/llama/run1", str(tmp_path / "out2"))
    same_tree(src, tmp_path / "out2")
    assert "every pack is where the index says" in chunkfs("tier", *R, "--check").stdout


def test_glacier_storage_class_implies_archive(moto_server, tmp_path):
    cases = (("GLACIER", True), ("deep_archive", True), ("GLACIER_IR", False), ("", False))
    for storage_class, archive in cases:
        tiers = config.TierSettings(
            cold=s3_url("cold"), endpoint_url=moto_server.endpoint, cold_storage_class=storage_class
        )
        repo = Repository.create(tmp_path / f"repo-{storage_class}", settings=small_settings(tiers=tiers))
        try:
            assert repo.tiers.archive(Tier.COLD) is archive, storage_class
            assert not repo.tiers.archive(Tier.WARM)
        finally:
            repo.close()
