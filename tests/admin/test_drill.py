"""Restore drills: from cold (moto) a drill passes, bit-identical against the BLAKE3 recorded at commit;
after a byte of a cold pack is flipped, the drill of that version fails loudly; results are kept."""

from __future__ import annotations

import json

import pytest
from admin_helpers import admin_settings, first_chunk_offset, flip_byte, make_runs, packs_with_files, to_tier
from tier_helpers import chunkfs

from chunkfs.errors import UsageError
from chunkfs.ops import drill as drillop
from chunkfs.repo import Repository
from chunkfs.types import Tier


@pytest.fixture
def cold_repo(moto_server, tmp_path):
    repo = Repository.create(tmp_path / "repo", settings=admin_settings(moto_server, cold=True))
    srcs = make_runs(repo, tmp_path / "src", runs=("runA", "runB"))
    to_tier(repo, srcs, Tier.COLD)
    yield repo, srcs
    repo.close()


def test_drill_from_cold_passes_and_corruption_fails(cold_repo, moto_server, tmp_path):
    repo, srcs = cold_repo
    result = drillop.drill(repo, "/m/runA", source="cold")
    assert result.verdict == "pass", result.problems
    assert result.files == result.verified == 6 and result.bytes > 0 and result.mb_per_s > 0
    assert not result.unverified
    # only the named tier is a source: the data is on cold, so a drill from warm fails
    wrong = drillop.drill(repo, "/m/runA", source="warm")
    assert wrong.verdict == "fail" and "not on warm" in wrong.problems[0]
    with pytest.raises(UsageError):
        drillop.drill(repo, "/m/runA", source="replica")  # none configured
    first = repo.history.last_commit()

    by_pack = packs_with_files(repo)
    # a pack only runB's files use (identical sidecar files of both runs share chunks)
    pack = next(p for p in sorted(by_pack) if all(f.startswith("/m/runB/") for f in by_pack[p]))
    flip_byte(moto_server, repo.tiers.url(Tier.COLD), pack, first_chunk_offset(repo, pack) + 11)
    result = drillop.drill(repo, "/m/runB", at=str(first), source="cold")
    assert result.verdict == "fail"
    assert result.problems and all("/m/runB/" in p for p in result.problems), result.problems
    repo.close()

    # the CLI: a check command sees the restored tree; history keeps every drill
    marker = tmp_path / "checked"
    done = chunkfs("drill", "/m/runA/checkpoint-200", "--repo", str(repo.path), "--from", "cold",
                   "--check-cmd", f"test -f $CHUNKFS_DRILL_DIR/checkpoint-200/model.safetensors && touch {marker} && ls",
                   ok=True)  # fmt: skip
    assert "verdict: PASS" in done.stdout and marker.exists()
    done = chunkfs("drill", "/m/runA", "--repo", str(repo.path), "--from", "cold", "--check-cmd", "false")
    assert done.returncode == 1 and "check command exited with 1" in done.stderr
    done = chunkfs("drill", "/m/runB", "--repo", str(repo.path), "--from", "cold", "--json")
    assert done.returncode == 1 and json.loads(done.stdout)["verdict"] == "fail"
    done = chunkfs("drill", "--history", "--repo", str(repo.path), "--json", ok=True)
    verdicts = [d["verdict"] for d in json.loads(done.stdout)]
    assert verdicts == ["pass", "fail", "fail", "pass", "fail", "fail"]
    done = chunkfs("drill", "--history", "--repo", str(repo.path), ok=True)
    assert done.stdout.count("cold") == 5 and "warm" in done.stdout and "pass" in done.stdout and "fail" in done.stdout
