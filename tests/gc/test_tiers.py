"""gc on every tier: packs that moved to warm and cold (local-directory tiers; the same Backend
calls as S3) are deleted and repacked there."""

from __future__ import annotations

from pathlib import Path

from gc_helpers import content, read, rmtree, settings, write

from chunkfs import config
from chunkfs.ops import gc, retention
from chunkfs.repo import Repository
from chunkfs.types import PackState, Tier


def pack_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.pack")}


def test_gc_deletes_and_repacks_on_warm_and_cold(tmp_path):
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    s = settings(repack_below=0.99)
    s = config.Settings(**{**{f: getattr(s, f) for f in s.__dataclass_fields__},
                           "tiers": config.TierSettings(warm=str(warm), cold=str(cold))})  # fmt: skip
    repo = Repository.create(tmp_path / "repo", settings=s)
    try:
        files = {}
        for step in range(6):
            path = f"/m/run/checkpoint-{step}/model.bin"
            files[path] = content(*range(4), *(2000 + step * 100 + k for k in range(20)))
            write(repo, path, files[path])
        repo.packs.seal_all()
        with repo.index.read() as t:
            sealed = sorted((i.created_ns, p) for p, i in t.packs() if i.state == PackState.SEALED)
        for n, (_, pack) in enumerate(sealed):
            repo.tiers.move_pack(pack, Tier.WARM if n % 2 else Tier.COLD)
        assert pack_files(warm) and pack_files(cold)
        for step in range(4):
            rmtree(repo, f"/m/run/checkpoint-{step}")
            del files[f"/m/run/checkpoint-{step}/model.bin"]
        before = {"warm": pack_files(warm), "cold": pack_files(cold)}
        result = gc.run(repo, retention.rules_for(repo.settings, keep_last=2))
        assert result.packs_deleted + result.packs_repacked > 0
        assert set(result.by_tier) & {"warm", "cold"}
        assert pack_files(warm) != before["warm"] and pack_files(cold) != before["cold"]
        for path, data in files.items():
            assert read(repo, path) == data
        assert not repo.tiers.audit()
        roots = (warm, cold, tmp_path / "repo" / "hot")
        stored = b"".join(p.read_bytes() for root in roots for p in root.rglob("*.pack"))
        assert content(2000)[:4096] not in stored and content(2319)[:4096] not in stored
    finally:
        repo.close()
