"""Checkpoint series through the library API: what dedups, what does not, and nothing is lost.

Each test writes a real training series with ``torch.save`` or ``safetensors``,
imports every checkpoint with ``ops.transfer.import_tree``, measures stored bytes
with ``ops.stats.collect`` after each import, and exports everything back
bit-identical at the end (after reopening the repository).
"""

from __future__ import annotations

import itertools

import pytest
from helpers.checkpoints import allowed_growth, base_model, save, step, tensor_bytes
from helpers.repos import MIN_CHUNK, assert_same_file, stored_bytes

from chunkfs.ops import stats, transfer

STEPS = 4
FORMATS = ["safetensors", "torch"]
EXT = {"safetensors": "model.safetensors", "torch": "model.pt"}


def _series(tmp_path, fmt, first, changed_names, steps=STEPS):
    """Save ``first`` then ``steps - 1`` steps that change ``changed_names`` (None: all)."""
    sd, paths, sds = first, [], []
    for i in range(steps):
        if i:
            sd = step(sd, changed_names, seed=i)
        paths.append(save(sd, tmp_path / "src" / f"checkpoint-{i}" / EXT[fmt], fmt))
        sds.append(sd)
    return paths, sds


def _import_series(repo, paths):
    """Import each checkpoint under /run/checkpoint-i; stored bytes after each import."""
    after = []
    for i, p in enumerate(paths):
        transfer.import_tree(repo, p, f"/run/checkpoint-{i}/{p.name}")
        after.append(stored_bytes(repo))
    return after


def _export_all_identical(reopen, paths, out):
    out.mkdir(parents=True, exist_ok=True)
    with reopen(writable=False) as repo:
        for i, p in enumerate(paths):
            dest = out / f"{i}-{p.name}"
            transfer.export_tree(repo, f"/run/checkpoint-{i}/{p.name}", dest)
            assert_same_file(p, dest)


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_finetune_series_stores_every_checkpoint_whole(tmp_path, repo, reopen, fmt):
    """Every weight changes a little each step: no false dedup, so stored ≈ N × size."""
    paths, _ = _series(tmp_path, fmt, base_model(), None)
    after = _import_series(repo, paths)
    s = stats.collect(repo)
    logical = sum(p.stat().st_size for p in paths)
    assert s.logical_bytes == logical
    # random fp32 does not compress and no tensor repeats: only headers and zip records may dedup
    assert 0.97 * logical <= s.stored_bytes <= logical
    size = paths[0].stat().st_size
    for grew in (b - a for a, b in itertools.pairwise(after)):
        assert 0.97 * size <= grew <= size
    repo.close()
    _export_all_identical(reopen, paths, tmp_path / "out")
    print(f"\nfull fine-tune {fmt}: stored/logical = {s.stored_bytes / logical:.4f}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", ["last-layer", "lora"])
def test_frozen_layers_dedup_completely(tmp_path, repo, reopen, fmt, scenario):
    """Only the head (or the LoRA adapters) train: each checkpoint costs its changed tensors
    plus a bounded amount of header/zip-record chunks, nothing for the frozen layers."""
    if scenario == "lora":
        first = base_model(lora_rank=8)
        changed = [k for k in first if "lora_" in k]
    else:
        first = base_model()
        changed = ["head.weight", "head.bias"]
    paths, sds = _series(tmp_path, fmt, first, changed)
    after = _import_series(repo, paths)

    size = paths[0].stat().st_size
    for i, grew in enumerate((b - a for a, b in itertools.pairwise(after)), start=1):
        changed_bytes, slack = allowed_growth(paths[i], fmt, sds[i], changed, MIN_CHUNK)
        assert changed_bytes < size / 5, "the scenario must leave most of the model frozen"
        assert slack < size / 50, "the bound must stay small"
        assert changed_bytes <= grew <= changed_bytes + slack, (
            f"checkpoint {i}: stored bytes grew by {grew}, changed tensors are {changed_bytes} "
            f"bytes, allowed slack {slack}"
        )
    s = stats.collect(repo)
    logical = sum(p.stat().st_size for p in paths)
    repo.close()
    _export_all_identical(reopen, paths, tmp_path / "out")
    print(
        f"\nfrozen {scenario} {fmt}: stored/logical = {s.stored_bytes / logical:.4f}; per step "
        f"{[b - a for a, b in itertools.pairwise(after)]} bytes for {changed_bytes} changed"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_byte_identical_rewrite_adds_nothing(tmp_path, repo, fmt):
    src = save(base_model(), tmp_path / "src" / EXT[fmt], fmt)
    transfer.import_tree(repo, src, "/a/model")
    before = stats.collect(repo)
    packs_before = sorted(p.name for p in repo.hot_path.rglob("*.pack"))
    new_before = repo.chunks.new_chunks

    transfer.import_tree(repo, src, "/a/model")  # rewrite in place
    transfer.import_tree(repo, src, "/b/copy")  # and a copy elsewhere
    after = stats.collect(repo)
    assert repo.chunks.new_chunks == new_before
    same = (before.chunks, before.stored_bytes, before.packs)
    assert (after.chunks, after.stored_bytes, after.packs) == same
    assert sorted(p.name for p in repo.hot_path.rglob("*.pack")) == packs_before
    assert after.logical_bytes == 2 * src.stat().st_size
    for path in ("/a/model", "/b/copy"):
        out = tmp_path / "out" / path.strip("/").replace("/", "-")
        out.parent.mkdir(exist_ok=True)
        transfer.export_tree(repo, path, out)
        assert_same_file(src, out)


def test_same_weights_in_both_formats_share_their_tensor_chunks(tmp_path, repo):
    """A safetensors and a torch.save file of the same weights: both round-trip; the tensor
    data chunks are the same bytes, so they dedup across formats."""
    sd = base_model()
    st = save(sd, tmp_path / "m.safetensors", "safetensors")
    pt = save(sd, tmp_path / "m.pt", "torch")
    transfer.import_tree(repo, st, "/m.safetensors")
    one = stored_bytes(repo)
    transfer.import_tree(repo, pt, "/m.pt")
    grew = stored_bytes(repo) - one
    # tensors start chunks in both formats, so the big weights' chunks are shared
    big = tensor_bytes(sd, [k for k in sd if k.endswith("weight")])
    assert grew <= pt.stat().st_size - big + len(sd) * 2 * MIN_CHUNK
    for src in (st, pt):
        out = tmp_path / ("out-" + src.name)
        transfer.export_tree(repo, "/" + src.name, out)
        assert_same_file(src, out)
