"""The ingest compression rule: zero-heavy chunks are stored zstd-compressed, random floats raw."""

from __future__ import annotations

import safetensors.torch
import torch
from helpers.repos import assert_same_file, data_chunks, extents_of, location

from chunkfs.ops import stats, transfer
from chunkfs.types import HOLE, Compression, flags_compression


def _compressions(repo, path: str) -> list[Compression]:
    return [flags_compression(location(repo, c).flags) for c in data_chunks(extents_of(repo, path))]


def _fresh_adam_state(tmp_path):
    """torch.save of Adam's state after one step of a fresh model with an embedding: only the
    rows of the tokens seen have non-zero moments, so most of exp_avg/exp_avg_sq is zeros."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(8192, 64), torch.nn.Linear(64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 8192, (4, 16))
    model(tokens).pow(2).mean().backward()
    opt.step()
    path = tmp_path / "optimizer.pt"
    torch.save(opt.state_dict(), path)
    return path


def test_fresh_adam_state_is_compressed(tmp_path, repo):
    src = _fresh_adam_state(tmp_path)
    transfer.import_tree(repo, src, "/run/checkpoint-1/optimizer.pt")
    kinds = _compressions(repo, "/run/checkpoint-1/optimizer.pt")
    extents = extents_of(repo, "/run/checkpoint-1/optimizer.pt")
    assert any(e.chunk == HOLE for e in extents), "all-zero chunks of the moments are holes"
    assert kinds.count(Compression.ZSTD) >= 8, kinds
    s = stats.collect(repo)
    assert s.compression_ratio > 2
    assert s.stored_bytes < 0.5 * src.stat().st_size
    out = tmp_path / "out.pt"
    transfer.export_tree(repo, "/run/checkpoint-1/optimizer.pt", out)
    assert_same_file(src, out)
    state = torch.load(out, weights_only=True)
    assert state["state"][0]["exp_avg"].count_nonzero() > 0


def test_mostly_zero_tensor_is_compressed(tmp_path, repo):
    g = torch.Generator().manual_seed(0)
    sparse = torch.zeros(512, 512)
    mask = torch.rand(512, 512, generator=g) < 0.05
    sparse[mask] = torch.randn(int(mask.sum()), generator=g)
    src = tmp_path / "sparse.safetensors"
    safetensors.torch.save_file({"mask_weights": sparse}, str(src))
    transfer.import_tree(repo, src, "/sparse.safetensors")
    kinds = _compressions(repo, "/sparse.safetensors")
    tensor_chunks = len(kinds) - 1  # the header chunk is too small to bother with
    assert kinds.count(Compression.ZSTD) >= tensor_chunks
    assert stats.collect(repo).compression_ratio > 2


def test_random_floats_are_stored_raw(tmp_path, repo):
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "dense.safetensors"
    safetensors.torch.save_file({"w": torch.randn(512, 512, generator=g)}, str(src))
    transfer.import_tree(repo, src, "/dense.safetensors")
    kinds = _compressions(repo, "/dense.safetensors")
    assert len(kinds) >= 16 and set(kinds) == {Compression.NONE}
    s = stats.collect(repo)
    assert s.compression_ratio == 1.0 and s.stored_bytes == s.unique_bytes
