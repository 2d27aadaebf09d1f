"""chunkfs.torch.Reader on a checkpoint whose packs left the hot tier: a rank loads from the
warm tier (S3, moto's server on loopback) and from the cold tier, every chunk verified."""

from __future__ import annotations

import pytest
from helpers.tiers import tiered_settings

from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.types import Tier

torch = pytest.importorskip("torch", reason="chunkfs.torch needs torch (the test extra installs it)")


def test_a_checkpoint_on_warm_then_cold_loads_bit_identical(moto_server, tmp_path):
    import torch.distributed.checkpoint as dcp

    from chunkfs.torch import Reader, Writer

    repo_dir = tmp_path / "repo"
    Repository.create(repo_dir, settings=tiered_settings(moto_server.endpoint, cold="cold")).close()
    g = torch.Generator().manual_seed(3)
    state = {f"layer{i}.weight": torch.randn(256, 512, generator=g) for i in range(6)}
    state["step"] = torch.tensor(7)
    dcp.save(state, storage_writer=Writer("/llama/run1/step-7", repo=repo_dir), no_dist=True)

    for to in (Tier.WARM, Tier.COLD):
        with Repository(repo_dir) as repo:
            tierop.move(repo, "/llama/run1", to)
            repo.drop_caches()  # what the warm load cached on disk must not serve the cold one
            with repo.index.read() as t:
                tiers = {info.tier for _, info in t.packs()}
        assert tiers == {to}, f"every pack of the checkpoint on {to.name}, none left hot: {tiers}"
        loaded = {k: torch.zeros_like(v) for k, v in state.items()}
        dcp.load(loaded, storage_reader=Reader("/llama/run1/step-7", repo=repo_dir), no_dist=True)
        for k, v in state.items():
            assert torch.equal(loaded[k], v), f"{k} read back from {to.name}"
