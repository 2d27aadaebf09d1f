"""Restore drills: from cold (moto) a drill passes, bit-identical against the BLAKE3 recorded at commit;
after a byte of a cold pack is flipped, the drill of that version fails loudly; results are kept."""

from __future__ import annotations

import json
import os

import pytest
from helpers.admin import admin_settings, first_chunk_offset, flip_byte, make_runs, packs_with_files, to_tier
from helpers.cli import chunkfs, cli_json

from chunkfs.errors import CorruptData, UsageError
from chunkfs.ops import drill as drillop
from chunkfs.ops import transfer
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import Tier


@pytest.fixture
def cold_repo(moto_server, tmp_path):
    repo = Repository.create(tmp_path / "repo", settings=admin_settings(moto_server, cold=True))
    srcs = make_runs(repo, tmp_path / "src", runs=("runA", "runB"))
    to_tier(repo, srcs, Tier.COLD)
    yield repo, srcs
    repo.close()


def test_drill_from_cold_passes_and_corruption_fails(cold_repo, moto_server, tmp_path):
    repo, _srcs = cold_repo
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

    # the CLI: a check command gets the restored checkpoint itself; history keeps every drill
    marker = tmp_path / "checked"  # the restored checkpoint comes last: ls -d succeeds only if it exists
    done = chunkfs("drill", "/m/runA/checkpoint-200", "--repo", str(repo.path), "--from", "cold",
                   "--check-cmd", f'test -f "$CHUNKFS_DRILL_DIR/model.safetensors" && touch {marker} && sleep 1 '
                   "&& ls -d")  # fmt: skip
    assert "verdict: PASS" in done.stdout and marker.exists()
    (last,) = cli_json("drill", "--history", "--repo", str(repo.path))[-1:]
    assert last["check_seconds"] >= 1 and last["restore_seconds"] < last["seconds"], "the check is timed apart"
    assert last["mb_per_s"] == pytest.approx(last["bytes"] / 1e6 / last["restore_seconds"])
    # a drill that fails exits with the code of damage (CorruptData), whatever failed
    done = chunkfs("drill", "/m/runA", "--repo", str(repo.path), "--from", "cold", "--check-cmd", "false",
                   expect=CorruptData)  # fmt: skip
    assert "check command exited with 1" in done.stderr
    done = chunkfs("drill", "/m/runB", "--repo", str(repo.path), "--from", "cold", "--json", expect=None)
    assert done.returncode == CorruptData.exit_code and json.loads(done.stdout)["verdict"] == "fail"
    verdicts = [d["verdict"] for d in cli_json("drill", "--history", "--repo", str(repo.path))]
    assert verdicts == ["pass", "fail", "fail", "pass", "fail", "fail"]
    done = chunkfs("drill", "--history", "--repo", str(repo.path))
    assert done.stdout.count("cold") == 5 and "warm" in done.stdout and "pass" in done.stdout and "fail" in done.stdout


def test_a_hot_only_repository_drills_from_its_own_disk(tmp_path):
    """No warm tier: the drill reads every chunk back from the hot packs (the default source then)."""
    src = tmp_path / "src" / "checkpoint-1"
    src.mkdir(parents=True)
    (src / "model.bin").write_bytes(os.urandom(300_000))
    repo = Repository.create(tmp_path / "repo")
    try:
        transfer.import_tree(repo, src, "/run/checkpoint-1")
        repo.packs.seal_all()
        result = drillop.drill(repo, "/run/checkpoint-1")
        assert result.source == "hot" and result.verdict == "pass" and result.verified == 1
        with repo.index.read() as t:
            pack = next(p for p, _ in t.packs())
        path = repo.hot.path(pack_name(pack))
        data = bytearray(path.read_bytes())
        data[200] ^= 0xFF  # inside the first chunk's stored bytes
        path.write_bytes(bytes(data))
        repo.drop_caches()
        assert drillop.drill(repo, "/run/checkpoint-1").verdict == "fail"
    finally:
        repo.close()
