"""Real checkpoint writers, unmodified, through the mount: torch, safetensors, a Trainer-style series,
an atomic writer, numpy memmap."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

MiB = 1 << 20


def model_and_optimizer(seed: int):
    """A small model after one Adam step: weights, exp_avg and exp_avg_sq all non-trivial."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Embedding(4096, 512),  # 8 MiB
        torch.nn.Linear(512, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 512),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.randint(0, 4096, (8, 16))).pow(2).mean()
    loss.backward()
    opt.step()
    return model, opt


def assert_state_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_state_equal(x, y)
    else:
        assert a == b


def test_torch_save_load(mnt, plain):
    model, opt = model_and_optimizer(0)
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    os.mkdir(mnt / "run")
    os.mkdir(plain / "run")
    torch.save(ckpt, mnt / "run/checkpoint.pt")  # same file name: the zip's archive name derives from it
    torch.save(ckpt, plain / "run/checkpoint.pt")
    assert (mnt / "run/checkpoint.pt").read_bytes() == (plain / "run/checkpoint.pt").read_bytes()
    assert_state_equal(torch.load(mnt / "run/checkpoint.pt", weights_only=True), ckpt)
    mnt.remount()
    assert (mnt / "run/checkpoint.pt").read_bytes() == (plain / "run/checkpoint.pt").read_bytes()
    loaded = torch.load(mnt / "run/checkpoint.pt", weights_only=True, mmap=True)
    assert_state_equal(loaded, ckpt)
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])  # restorable by the real consumer


def test_safetensors(mnt, plain):
    torch.manual_seed(1)
    tensors = {
        "embed.weight": torch.randn(2048, 1024),  # 8 MiB: two chunks
        "layer.0.weight": torch.randn(512, 512, dtype=torch.bfloat16),
        "layer.0.bias": torch.zeros(512),
        "scalar": torch.tensor(3.5),
        "ints": torch.arange(1000, dtype=torch.int64),
    }
    st.save_file(tensors, mnt / "model.safetensors", metadata={"format": "pt"})
    st.save_file(tensors, plain / "model.safetensors", metadata={"format": "pt"})
    assert (mnt / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    mnt.remount()
    loaded = st.load_file(mnt / "model.safetensors")  # mmaps the file
    assert_state_equal(loaded, tensors)
    from safetensors import safe_open

    with safe_open(mnt / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_slice("embed.weight")[100:200], tensors["embed.weight"][100:200])


def write_trainer_checkpoint(out, step: int, frozen: dict, expected: dict) -> None:
    """What transformers.Trainer._save_checkpoint leaves in output_dir/checkpoint-STEP."""
    torch.manual_seed(step)
    d = out / f"checkpoint-{step}"
    d.mkdir()
    head = {"head.weight": torch.randn(256, 1024), "head.bias": torch.randn(256)}
    st.save_file({**frozen, **head}, d / "model.safetensors", metadata={"format": "pt"})
    optim = {"state": {i: {"step": torch.tensor(float(step)), "exp_avg": torch.randn(t.shape),
                           "exp_avg_sq": torch.rand(t.shape)} for i, t in enumerate(head.values())},
             "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}  # fmt: skip
    torch.save(optim, d / "optimizer.pt")
    torch.save({"last_epoch": step, "_step_count": step + 1}, d / "scheduler.pt")
    torch.save({"python": step, "numpy": np.random.default_rng(step).integers(0, 2**31, 624),
                "cpu": torch.get_rng_state()}, d / "rng_state.pth")  # fmt: skip
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"loss": 1 / step}]}))
    (d / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 1024}))
    for f in d.iterdir():
        expected[f"checkpoint-{step}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()


def test_trainer_checkpoint_rotation(mnt):
    torch.manual_seed(0)
    frozen = {"base.embed": torch.randn(4096, 1024), "base.layer": torch.randn(1024, 1024)}  # 20 MiB
    frozen_bytes = sum(t.numel() * t.element_size() for t in frozen.values())
    out = mnt / "toy/run1/output"
    out.mkdir(parents=True)
    expected: dict[str, str] = {}
    written = 0
    steps = [100, 200, 300, 400, 500]
    for step in steps:
        write_trainer_checkpoint(out, step, frozen, expected)
        written += sum(f.stat().st_size for f in (out / f"checkpoint-{step}").iterdir())
        checkpoints = sorted((p for p in out.iterdir() if p.name.startswith("checkpoint-")),
                             key=lambda p: int(p.name.split("-")[1]))  # fmt: skip
        for old in checkpoints[:-2]:  # save_total_limit=2
            shutil.rmtree(old)
    mnt.remount()
    assert sorted(os.listdir(out)) == ["checkpoint-400", "checkpoint-500"]
    for step in steps[-2:]:
        d = out / f"checkpoint-{step}"
        for f in d.iterdir():
            assert hashlib.sha256(f.read_bytes()).hexdigest() == expected[f"checkpoint-{step}/{f.name}"]
        model = st.load_file(d / "model.safetensors")
        assert_state_equal({k: model[k] for k in frozen}, frozen)
        torch.load(d / "optimizer.pt", weights_only=True)
        assert json.loads((d / "trainer_state.json").read_text())["global_step"] == step

    stats = mnt.stats()
    kept = sum(f.stat().st_size for s in steps[-2:] for f in (out / f"checkpoint-{s}").iterdir())
    assert stats["logical_bytes"] == kept
    # every checkpoint ever written (deleted ones too: there is no gc yet) costs its
    # changed tensors only; the frozen ones are stored once
    changing = written - len(steps) * frozen_bytes
    assert stats["unique_bytes"] < frozen_bytes + changing * 1.1 + MiB, stats
    assert stats["stored_bytes"] <= stats["unique_bytes"]


def test_atomic_replace(mnt):
    """write temp, fsync, os.replace over the old file: readers always see one whole version."""

    def version(k: int) -> bytes:
        body = np.random.default_rng(k).bytes(MiB + 4096 * k)
        return k.to_bytes(8, "little") + hashlib.sha256(body).digest() + body

    target = mnt / "latest.bin"
    target.write_bytes(version(0))
    done = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader():
        while not done.is_set():
            try:
                data = target.read_bytes()
            except OSError as e:  # a rename must never make the name vanish, even for an instant
                errors.append(repr(e))
                continue
            k = int.from_bytes(data[:8], "little")
            if hashlib.sha256(data[40:]).digest() != data[8:40] or len(data) != 40 + MiB + 4096 * k:
                errors.append(f"torn read: {len(data)} bytes claiming version {k}")
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for k in range(1, 21):
            tmp = mnt / f".latest.bin.tmp{k}"
            with open(tmp, "wb") as f:
                f.write(version(k))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert reads[0] > 0
    assert target.read_bytes() == version(20)
    assert os.listdir(mnt.path) == ["latest.bin"]
    mnt.remount()
    assert target.read_bytes() == version(20)


def test_numpy_memmap(mnt, plain):
    shape = (3 * MiB,)  # float32: 12 MiB, three chunks

    def ops(path):
        rng = np.random.default_rng(42)
        m = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
        m[: MiB // 2] = rng.standard_normal(MiB // 2)
        m.flush()
        del m
        m = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
        for _ in range(50):
            lo = int(rng.integers(0, shape[0] - 10000))
            n = int(rng.integers(1, 10000))
            m[lo : lo + n] = rng.standard_normal(n)
        m.flush()
        m[-1] = 7.0  # written after the last flush: msync at close / unmap write-back
        del m

    ops(mnt / "array.f32")
    ops(plain / "array.f32")
    assert (mnt / "array.f32").read_bytes() == (plain / "array.f32").read_bytes()
    mnt.remount()
    assert (mnt / "array.f32").read_bytes() == (plain / "array.f32").read_bytes()
    m = np.memmap(mnt / "array.f32", dtype=np.float32, mode="r", shape=shape)
    assert m[-1] == 7.0
