"""The cuts depend only on the bytes, whatever way a real writer writes them (docs/chunking.md).

safetensors ``save_file`` extends the file with ``ftruncate`` to its final size and then
fills it (and so do ``save_pretrained`` and the Trainer); threads ``pwrite`` their own
regions; ``mmap`` pages are written back when the kernel pleases. Each pattern must give
the chunks an in-order write of the same bytes gives: a second file with the same bytes
stores nothing new, and one changed tensor costs about its own size.
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

MiB = 1 << 20


def unique(mnt) -> int:
    return mnt.stats()["unique_bytes"]


def state(seed: int = 0) -> dict:
    """~26 MiB of tensors of assorted sizes, one of them 256 KiB."""
    g = torch.Generator().manual_seed(seed)
    out = {f"layers.{i}.weight": torch.randn(1024, 1024 + 16 * i, generator=g) for i in range(5)}  # ~4 MiB each
    out["small.bias"] = torch.randn(300, generator=g)
    out["norm.weight"] = torch.randn(4096, generator=g)
    out["adapter.lora_A"] = torch.randn(256, 256, generator=g)  # 256 KiB
    out["embed"] = torch.randn(1500, 1000, generator=g)
    return out


def test_safetensors_save_file_keeps_tensor_aligned_dedup(mnt):
    tensors = state()
    st.save_file(tensors, mnt / "a.safetensors")
    first = unique(mnt)
    assert first >= 20 * MiB
    tensors["adapter.lora_A"] += 1  # one 256 KiB tensor changes
    st.save_file(tensors, mnt / "a.safetensors")
    assert unique(mnt) - first < 256 * 1024 + 160 * 1024, "one changed tensor, one tensor's worth of new bytes"
    assert st.load_file(mnt / "a.safetensors")["adapter.lora_A"].equal(tensors["adapter.lora_A"])

    before = unique(mnt)
    torch.save(tensors, mnt / "same.pt")  # other format, same tensors: the big ones dedup
    assert unique(mnt) - before < 2 * MiB
    np.save(mnt / "embed.npy", tensors["embed"].numpy())
    assert unique(mnt) - before < 2 * MiB + 64 * 1024


def test_save_pretrained_twice_stores_only_what_changed(mnt):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=4000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=1024)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.save_pretrained(mnt / "bert" / "checkpoint-1")
    first = unique(mnt)
    with torch.no_grad():
        model.encoder.layer[1].output.dense.bias += 1  # 1 KiB
    model.save_pretrained(mnt / "bert" / "checkpoint-2")
    assert unique(mnt) - first < 200 * 1024
    again = transformers.BertModel.from_pretrained(mnt / "bert" / "checkpoint-2")
    assert torch.equal(again.encoder.layer[1].output.dense.bias, model.encoder.layer[1].output.dense.bias)


def test_dcp_save_twice_stores_only_what_changed(mnt):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    tensors = state()
    dcp.save(tensors, checkpoint_id=mnt / "dcp" / "step-1", no_dist=True)
    first = unique(mnt)
    tensors["adapter.lora_A"] += 1
    dcp.save(tensors, checkpoint_id=mnt / "dcp" / "step-2", no_dist=True)
    assert unique(mnt) - first < 1 * MiB
    loaded = {k: torch.empty_like(v) for k, v in tensors.items()}
    dcp.load(loaded, checkpoint_id=mnt / "dcp" / "step-2", no_dist=True)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


# -- raw write patterns: the same bytes as an in-order write, nothing new stored -------------------------


def _write_in_order(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _extend_then_fill(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, len(data))
    for pos in range(0, len(data), 1 << 20):
        os.pwrite(fd, data[pos : pos + (1 << 20)], pos)
    os.close(fd)


def _backwards(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for pos in reversed(range(0, len(data), 3 << 20)):
        os.pwrite(fd, data[pos : pos + (3 << 20)], pos)
    os.fsync(fd)
    os.close(fd)


def _threads(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    quarter = -(-len(data) // 4)

    def write_region(lo: int) -> None:
        for pos in range(lo, min(lo + quarter, len(data)), 512 * 1024):
            os.pwrite(fd, data[pos : min(pos + 512 * 1024, lo + quarter)], pos)

    workers = [threading.Thread(target=write_region, args=(k * quarter,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    os.close(fd)


def _mmap(path, data: bytes) -> None:
    with open(path, "w+b") as f:
        f.truncate(len(data))
        with mmap.mmap(f.fileno(), len(data)) as m:
            for pos in reversed(range(0, len(data), 1 << 20)):  # touched back to front
                m[pos : pos + (1 << 20)] = data[pos : pos + (1 << 20)]
            m.flush()


@pytest.mark.parametrize("pattern", [_extend_then_fill, _backwards, _threads, _mmap])
def test_every_write_pattern_cuts_like_an_in_order_write(mnt, pattern):
    data = st.save(state())  # a safetensors file's bytes: its cuts are the tensors' starts
    _write_in_order(mnt / "reference.safetensors", data)
    before = unique(mnt)
    pattern(mnt / "copy.safetensors", data)
    assert (mnt / "copy.safetensors").read_bytes() == data
    assert unique(mnt) - before == 0, f"{pattern.__name__} cut the file differently"
    mnt.remount()
    assert (mnt / "copy.safetensors").read_bytes() == data
