"""Versions through a real mount and the real command line (issue 4's acceptance).

Overwrites read back bit-identical from ``.snapshots/@…`` and ``chunkfs restore``; a
Trainer-style rotation that a tag made before still shows; ``chunkfs diff`` naming
exactly the tensors that changed; metadata from xattrs, ``meta set`` and a real
``trainer_state.json`` answering ``chunkfs find``; EROFS inside ``.snapshots``;
``@latest``/``@best`` following new checkpoints; a malformed sidecar that is reported
and skipped. Every PATH argument is a path inside the mount, as users give it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import chunkfs, cli_json

from chunkfs.errors import AlreadyExists, NotFound, UsageError

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_versions(path: Path) -> list[dict]:
    """``chunkfs log PATH --json`` of a file: its content versions, newest first — not the
    empty version an ``open(O_CREAT)`` records (creating and first writing are two commits)."""
    entries = cli_json("log", path)
    assert all(e["kind"] == "file" for e in entries if e["event"] != "removed"), entries
    return [e for e in entries if e["event"] in ("written", "renamed") or e["event"] == "created" and e["size"]]


def newest_commit(path: Path) -> int:
    return file_versions(path)[0]["commit"]


# -- overwrites, .snapshots/@…, restore ---------------------------------------------------------


def test_overwrite_three_times_and_read_every_version_back(mnt, plain, tmp_path):
    run = mnt / "llama" / "run1"
    run.mkdir(parents=True)
    target, shadow = run / "latest.pt", plain / "latest.pt"
    digests, commits, between = [], [], []
    for k in range(3):
        torch.manual_seed(k)
        state = {"w": torch.randn(512, 1024), "b": torch.randn(1024), "step": k}
        torch.save(state, target)  # open('wb'), as training code does
        torch.save(state, shadow)
        assert sha(target) == sha(shadow)
        digests.append(sha(shadow))
        commits.append(newest_commit(target))
        time.sleep(0.05)
        between.append(datetime.now(UTC))  # a point after version k, before version k+1
        time.sleep(0.05)
    assert commits == sorted(set(commits)), f"each overwrite is a new, later commit: {commits}"

    versions = file_versions(target)
    assert [v["commit"] for v in versions] == commits[::-1], "one version per overwrite, no empty ones in between"
    assert all(v["size"] == shadow.stat().st_size and v["kind"] == "file" for v in versions)
    assert all(len(v["blake3"]) == 64 for v in versions) and len({v["blake3"] for v in versions}) == 3
    assert versions[0]["writer_uid"] == os.getuid()

    for k, commit in enumerate(commits):
        old = mnt / ".snapshots" / f"@{commit}" / "llama" / "run1" / "latest.pt"
        assert sha(old) == digests[k], f"version {k} (commit {commit}) through .snapshots"
        when = between[k].isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert sha(mnt / ".snapshots" / f"@{when}" / "llama" / "run1" / "latest.pt") == digests[k]
        assert torch.load(old)["step"] == k
    # copy an old version out (a point is N or @N)…
    dest = tmp_path / "out" / "v0.pt"
    result = cli_json("restore", target, "--at", f"@{commits[0]}", "--to", dest)
    assert result["commit"] == commits[0] and sha(dest) == digests[0]
    # …and make it current again: a new version, the history kept
    result = cli_json("restore", target, "--at", str(commits[1]))
    assert result["restored"] == 1
    assert sha(target) == digests[1], "the mount shows the restored content at once"
    versions = file_versions(target)
    assert len(versions) == 4 and versions[0]["commit"] > commits[2]
    assert versions[0]["blake3"] == versions[2]["blake3"], "the restored version has version 1's hash"
    assert sha(mnt / ".snapshots" / f"@{commits[2]}" / "llama" / "run1" / "latest.pt") == digests[2]
    # restoring what is already current changes nothing
    assert cli_json("restore", target, "--at", str(versions[0]["commit"]))["unchanged"] == 1
    assert len(file_versions(target)) == 4


def test_atomic_replace_versions(mnt):
    """Writers that save to a temporary name and ``os.replace`` it over the target: each
    replace is a version of the target, at the commit of the rename."""
    target = mnt / "run" / "model.safetensors"
    target.parent.mkdir()
    contents = []
    for k in range(3):
        torch.manual_seed(k)
        tmp = target.with_name(f".tmp-{k}")
        st.save_file({"w": torch.randn(256, 256)}, tmp)
        contents.append(sha(tmp))
        os.replace(tmp, target)
    versions = file_versions(target)
    assert [v["event"] for v in versions] == ["renamed"] * 3
    for v, digest in zip(versions[::-1], contents, strict=True):
        assert sha(mnt / ".snapshots" / f"@{v['commit']}" / "run" / "model.safetensors") == digest
    assert cli_json("restore", target, "--at", str(versions[-1]["commit"]))["restored"] == 1
    assert sha(target) == contents[0]
    events = [(e["event"], e["path"].rsplit("/", 1)[-1]) for e in cli_json("log", target.parent)]
    assert events.count(("renamed", "model.safetensors")) == 3
    for k in range(3):  # the temporary names went away
        assert ("removed", f".tmp-{k}") in events


def test_log_says_what_each_save_over_latest_changed(mnt):
    """A trainer saving over ``latest`` by rename, one of eight 1 MiB tensors changed each time:
    ``chunkfs log`` counts about that one tensor as new in each version after the first."""
    target = mnt / "run" / "latest.safetensors"
    target.parent.mkdir()
    weights = {f"layer{i}": torch.randn(512, 512, generator=torch.Generator().manual_seed(i)) for i in range(8)}
    for k in range(3):
        if k:
            weights[f"layer{k}"] = weights[f"layer{k}"] + 1
        st.save_file(weights, target.with_name(".tmp"))
        os.replace(target.with_name(".tmp"), target)
    versions = file_versions(target)
    tensor = 512 * 512 * 4
    assert versions[-1]["new_bytes"] == versions[-1]["size"], "the first save is all new"
    for v in versions[:-1]:
        assert tensor <= v["new_bytes"] < tensor + (64 << 10), v
    table = chunkfs("log", target).stdout
    assert " new " in table.splitlines()[0] and "1.00 MiB" in table, table


def test_shell_rewrite_is_one_version(mnt):
    """``echo x > file``: the shell opens with O_TRUNC, dup2()s and closes the first descriptor
    (a FLUSH) before writing: the truncation alone must not become a version of its own."""
    path = mnt / "notes.txt"
    for text in ("one", "two", "three"):
        subprocess.run(["sh", "-c", f"echo {text} > '{path}'"], check=True)
    assert path.read_text() == "three\n"
    sizes = [v["size"] for v in file_versions(path)]
    assert sizes == [6, 4, 4], f"versions, newest first: {sizes} (no 0-byte versions between rewrites)"
    # truncating a file to nothing is still a version of its own
    subprocess.run(["sh", "-c", f": > '{path}'"], check=True)
    deadline = time.monotonic() + 10
    while file_versions(path)[0]["size"] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # the last close's RELEASE reaches the daemon after close() returned
    assert [v["size"] for v in file_versions(path)] == [0, 6, 4, 4]
    # a restore from another process changes the size behind the kernel's back
    cli_json("restore", path, "--at", str(file_versions(path)[1]["commit"]))
    assert path.read_text() == "three\n" and path.stat().st_size == 6


# -- Trainer-style rotation and tags ---------------------------------------------------------------


def write_checkpoint(run: Path, step: int) -> dict[str, str]:
    torch.manual_seed(step)
    d = run / f"checkpoint-{step}"
    d.mkdir()
    st.save_file({"embed": torch.randn(1024, 256), "head": torch.randn(256, 64)}, d / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.randn(256, 64)}}}, d / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps(trainer_state(step, 1.0 / step)))
    return {f.name: sha(f) for f in d.iterdir()}


def trainer_state(step: int, eval_loss: float) -> dict:
    """What transformers.Trainer writes (abridged only in the number of log entries)."""
    return {
        "best_metric": eval_loss,
        "best_model_checkpoint": f"out/checkpoint-{step}",
        "epoch": step / 1000,
        "eval_steps": 500,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": [
            {"epoch": step / 2000, "grad_norm": 1.5, "learning_rate": 5e-5, "loss": 2.0, "step": step // 2},
            {"epoch": step / 1000, "grad_norm": 1.2, "learning_rate": 4e-5, "loss": 1.5, "step": step},
            {"epoch": step / 1000, "eval_loss": eval_loss, "eval_runtime": 3.2, "eval_samples_per_second": 31.2,
             "eval_steps_per_second": 3.9, "step": step},
        ],
        "logging_steps": 500,
        "max_steps": 3000,
        "num_input_tokens_seen": 0,
        "num_train_epochs": 3,
        "save_steps": 500,
        "stateful_callbacks": {"TrainerControl": {"args": {"should_save": True}, "attributes": {}}},
        "total_flos": 1.2e15,
        "train_batch_size": 8,
        "trial_name": None,
        "trial_params": None,
    }


def test_rotation_tag_keeps_the_removed_checkpoint(mnt, tmp_path):
    run = mnt / "llama3" / "8b" / "lora-med" / "r1"
    run.mkdir(parents=True)
    digests = {step: write_checkpoint(run, step) for step in (500, 1000, 1500)}

    tagged = cli_json("tag", "before-rotation", run)
    assert tagged["tag"] == "before-rotation" and tagged["path"] == "/llama3/8b/lora-med/r1"
    shutil.rmtree(run / "checkpoint-500")  # the Trainer's save_total_limit rotation
    assert not (run / "checkpoint-500").exists()

    old = mnt / ".snapshots" / "before-rotation" / "llama3" / "8b" / "lora-med" / "r1" / "checkpoint-500"
    assert sorted(p.name for p in old.iterdir()) == sorted(digests[500])
    assert {p.name: sha(p) for p in old.iterdir()} == digests[500]
    assert st.load_file(old / "model.safetensors")["head"].shape == (256, 64)
    assert ".snapshots" not in os.listdir(mnt.path), "hidden from ls of the root, reachable by name"
    assert "before-rotation" in os.listdir(mnt / ".snapshots")

    history = cli_json("log", run / "checkpoint-500")
    events = {(e["event"], e["path"].rsplit("/", 1)[-1]) for e in history}
    assert ("removed", "checkpoint-500") in events and ("created", "checkpoint-500") in events
    for name in digests[500]:  # safetensors writes a temporary file and renames it into place
        assert ("created", name) in events or ("renamed", name) in events
        assert ("removed", name) in events
    assert history[0]["event"] == "removed", "newest first: the removal"
    text = chunkfs("log", run / "checkpoint-500" / "model.safetensors").stdout
    assert "removed" in text and "created" in text
    # safetensors renames its open temporary file, then closes it: the file arrives with its content
    versions = cli_json("log", run / "checkpoint-500" / "model.safetensors")
    assert all(v["size"] > 0 for v in versions if v["event"] != "removed"), versions

    # restore the removed checkpoint as a copy, then in place
    cli_json("restore", run / "checkpoint-500", "--at", "before-rotation", "--to", tmp_path / "c500")
    assert {p.name: sha(p) for p in (tmp_path / "c500").iterdir()} == digests[500]
    restored = cli_json("restore", run / "checkpoint-500", "--at", "before-rotation")
    assert restored["restored"] == len(digests[500]) + 1  # the directory too
    assert {p.name: sha(p) for p in (run / "checkpoint-500").iterdir()} == digests[500]
    (back,) = cli_json("find", "--run", "r1", "--step", "500", cwd=mnt.path)
    assert back["meta"]["global_step"] == 500, "the restored trainer_state.json is read again"

    listed = cli_json("tag", "--list", cwd=mnt.path)
    assert [(t["name"], t["path"]) for t in listed] == [("before-rotation", "/llama3/8b/lora-med/r1")]
    assert listed[0]["commit"] == tagged["commit"]
    again = chunkfs("tag", "before-rotation", cwd=mnt.path, expect=AlreadyExists)
    assert "already exists" in again.stderr
    cli_json("tag", "pinned-early", mnt.path, "--at", str(tagged["commit"] - 1))
    assert (mnt / ".snapshots" / "pinned-early").is_dir()
    cli_json("tag", "--delete", "before-rotation", cwd=mnt.path)
    assert [t["name"] for t in cli_json("tag", "--list", cwd=mnt.path)] == ["pinned-early"]
    assert "before-rotation" not in os.listdir(mnt / ".snapshots")
    assert not (mnt / ".snapshots" / "before-rotation").exists(), "gone at once, not after a cache timeout"
    gone = chunkfs("tag", "--delete", "before-rotation", cwd=mnt.path, expect=NotFound)
    assert "no such tag" in gone.stderr


# -- diff ---------------------------------------------------------------------------------------------


def differing(a: np.ndarray, b: np.ndarray) -> int:
    """Bytes that differ between two arrays' raw data."""
    return int(np.count_nonzero(a.view(np.uint8) != b.view(np.uint8)))


def test_diff_names_the_changed_tensors(mnt):
    rng = np.random.default_rng(7)
    base = {f"layer{i}.weight": rng.standard_normal((256, 256)).astype(np.float32) for i in range(6)}
    base["embed"] = rng.standard_normal((2048, 256)).astype(np.float32)
    new = {k: v.copy() for k, v in base.items()}
    new["layer2.weight"] += 1.0  # every byte of the values changes…
    new["layer4.weight"][10, :16] = 0  # …or a few
    expected_bytes = {name: differing(base[name], new[name]) for name in ("layer2.weight", "layer4.weight")}
    from safetensors.numpy import save_file

    run = mnt / "m" / "run1"
    for step, tensors in ((100, base), (200, new)):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        save_file(tensors, run / f"checkpoint-{step}" / "model.safetensors")
        (run / f"checkpoint-{step}" / "config.json").write_text('{"model_type": "toy"}')
    a, b = run / "checkpoint-100" / "model.safetensors", run / "checkpoint-200" / "model.safetensors"

    (change,) = cli_json("diff", a, b)
    assert change["status"] == "changed" and change["format"] == "safetensors"
    assert {t["name"]: t["bytes_changed"] for t in change["tensors"]} == expected_bytes
    assert all(t["status"] == "changed" and t["size_a"] == 256 * 256 * 4 for t in change["tensors"])
    assert change["tensors_unchanged"] == len(base) - 2
    text = chunkfs("diff", a, b).stdout
    assert "layer2.weight" in text and "layer4.weight" in text and "layer0.weight" not in text

    # two trees: only the changed file
    (tree_change,) = cli_json("diff", run / "checkpoint-100", run / "checkpoint-200")
    assert tree_change["path"] == "/model.safetensors"
    assert {t["name"] for t in tree_change["tensors"]} == set(expected_bytes)
    assert cli_json("diff", run / "checkpoint-100", run / "checkpoint-100") == []

    # PATH@commit against PATH: a checkpoint overwritten in place
    before = newest_commit(run / "checkpoint-200" / "config.json")  # after the whole checkpoint
    changed = {k: v.copy() for k, v in new.items()}
    changed["embed"][:3] = 0
    save_file(changed, b)
    (change,) = cli_json("diff", f"{b}@{before}", b)
    assert [t["name"] for t in change["tensors"]] == ["embed"]
    assert change["tensors"][0]["bytes_changed"] == differing(new["embed"], changed["embed"])
    # a tree against itself in the past
    (c,) = cli_json("diff", f"{run / 'checkpoint-200'}@{before}", run / "checkpoint-200")
    assert c["path"] == "/model.safetensors" and [t["name"] for t in c["tensors"]] == ["embed"]


# -- metadata and find -----------------------------------------------------------------------------------


def test_metadata_sources_answer_find(mnt):
    r1 = mnt / "llama3" / "8b" / "lora-med" / "r1"
    r2 = mnt / "llama3" / "8b" / "lora-med" / "r2"
    for run, steps in ((r1, (500, 1000, 1500)), (r2, (500, 1000))):
        for step in steps:
            d = run / f"checkpoint-{step}"
            d.mkdir(parents=True)
            (d / "adapter_model.safetensors").write_bytes(os.urandom(4096))
            loss = {500: 0.9, 1000: 0.5, 1500: 0.6}[step] + (0.05 if run is r2 else 0)
            (d / "trainer_state.json").write_text(json.dumps(trainer_state(step, loss), indent=2))
    (mnt / "gpt2" / "run-a" / "step_100").mkdir(parents=True)

    os.setxattr(r2 / "checkpoint-500", "user.chunkfs.eval_loss", b"0.231")  # overrides the extracted 0.95
    os.setxattr(r2 / "checkpoint-500", "user.chunkfs.dataset", b"pile-v2")
    cli_json("meta", "set", r1 / "checkpoint-1000", "git_commit=abc123", "lr_scheduler_type=cosine")
    rec = cli_json("meta", "get", r1 / "checkpoint-1000")
    assert rec["meta"]["global_step"] == 1000 and rec["meta"]["eval_loss"] == 0.5
    assert rec["meta"]["best_metric"] == 0.5 and rec["meta"]["train_loss"] == 1.5
    assert rec["meta"]["git_commit"] == "abc123"
    assert os.getxattr(r1 / "checkpoint-1000", "user.chunkfs.git_commit") == b"abc123", "meta set is mirrored"
    assert rec["fields"] == {"model": "llama3", "base": "8b", "adapter": "lora-med", "run": "r1"}

    def find(*args):
        return [r["path"] for r in cli_json("find", *args, cwd=mnt.path)]

    assert find("--model", "llama3", "--latest") == ["/llama3/8b/lora-med/r1/checkpoint-1500"]
    assert find("--run", "r2", "--step", "1000") == ["/llama3/8b/lora-med/r2/checkpoint-1000"]
    assert find("--step", "500") == ["/llama3/8b/lora-med/r1/checkpoint-500", "/llama3/8b/lora-med/r2/checkpoint-500"]
    assert find("--where", "eval_loss<0.3") == ["/llama3/8b/lora-med/r2/checkpoint-500"]
    assert find("--where", "dataset==pile-v2") == ["/llama3/8b/lora-med/r2/checkpoint-500"]
    assert find("--where", "git_commit==abc123 and global_step>=1000") == ["/llama3/8b/lora-med/r1/checkpoint-1000"]
    assert find("--model", "llama3", "--sort", "eval_loss", "--limit", "2") == [
        "/llama3/8b/lora-med/r2/checkpoint-500",
        "/llama3/8b/lora-med/r1/checkpoint-1000",
    ]
    assert find("--sort", "-eval_loss", "--limit", "1") == ["/llama3/8b/lora-med/r1/checkpoint-500"]
    assert find("--model", "gpt2") == ["/gpt2/run-a/step_100"]
    assert find("--model", "nobody") == []
    (best,) = cli_json("find", "--run", "r1", "--sort", "eval_loss", "--limit", "1", cwd=mnt.path)
    assert best["step"] == 1000 and best["meta"]["eval_step"] == 1000

    bad = chunkfs("find", "--where", "eval_loss<0.3 or step>1", cwd=mnt.path, expect=UsageError)
    assert bad.stderr.strip()

    # removing the xattr brings the extracted value back
    os.removexattr(r2 / "checkpoint-500", "user.chunkfs.eval_loss")
    assert find("--where", "eval_loss<0.3") == []


def test_latest_and_best_follow_new_checkpoints(mnt):
    adapter = mnt / "llama3" / "8b" / "lora-med"
    adapter.mkdir(parents=True)
    assert not os.path.lexists(adapter / "@latest"), "no checkpoint below: no link"
    run = adapter / "r1"
    run.mkdir()
    for step, loss in ((500, 0.7), (1000, 0.4)):
        d = run / f"checkpoint-{step}"
        d.mkdir()
        (d / "weights.bin").write_bytes(f"step {step}".encode() * 100)
        (d / "trainer_state.json").write_text(json.dumps(trainer_state(step, loss)))
        assert os.readlink(adapter / "@latest") == f"r1/checkpoint-{step}"
        assert (adapter / "@latest" / "weights.bin").read_bytes() == f"step {step}".encode() * 100

    # a new run's checkpoint: @latest follows as soon as it is committed
    d = adapter / "r2" / "checkpoint-1500"
    d.mkdir(parents=True)
    with open(d / "weights.bin", "wb") as f:
        f.write(b"fresh" * 100)
    assert os.readlink(adapter / "@latest") == "r2/checkpoint-1500"
    assert (adapter / "@latest" / "weights.bin").read_bytes() == b"fresh" * 100
    assert os.readlink(run / "@latest") == "checkpoint-1000"
    assert os.readlink(mnt / "llama3" / "@latest") == "8b/lora-med/r2/checkpoint-1500"

    # @best: by eval_loss (min); r2's checkpoint has no metric yet, so it is no candidate
    assert os.readlink(adapter / "@best") == "r1/checkpoint-1000"
    os.setxattr(d, "user.chunkfs.eval_loss", b"0.1")
    assert os.readlink(adapter / "@best") == "r2/checkpoint-1500"
    assert (adapter / "@best" / "weights.bin").read_bytes() == b"fresh" * 100
    assert "@latest" not in os.listdir(adapter) and "@best" not in os.listdir(adapter)
    # PATH arguments may go through the links
    assert cli_json("meta", "get", adapter / "@best")["path"] == "/llama3/8b/lora-med/r2/checkpoint-1500"
    (change,) = cli_json("diff", adapter / "r1" / "@latest" / "weights.bin", adapter / "@latest" / "weights.bin")
    assert change["path"] == "/llama3/8b/lora-med/r2/checkpoint-1500/weights.bin" and change["status"] == "changed"
    assert cli_json("log", adapter / "@latest" / "weights.bin")[0]["path"].startswith("/llama3/8b/lora-med/r2/")

    # and back when it goes away
    shutil.rmtree(adapter / "r2")
    assert os.readlink(adapter / "@latest") == "r1/checkpoint-1000"
    assert os.readlink(adapter / "@best") == "r1/checkpoint-1000"


def test_malformed_trainer_state_is_reported_and_skipped(mnt):
    d = mnt / "llama3" / "8b" / "lora" / "r1" / "checkpoint-500"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"weights" * 1000)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    (d / "trainer_state.json").write_text('{"global_step": 500, "log_history": [')  # cut off mid-write
    assert (d / "trainer_state.json").read_text().endswith("[")
    assert (d / "adapter_model.safetensors").read_bytes() == b"weights" * 1000

    rec = cli_json("meta", "get", d)
    assert "trainer_state.json" in rec["problems"] and "JSON" in rec["problems"]["trainer_state.json"]
    assert rec["meta"]["model_type"] == "llama", "the other sidecars still count"
    shown = chunkfs("meta", "get", d)
    assert "trainer_state.json" in shown.stdout + shown.stderr
    assert [r["path"] for r in cli_json("find", "--model", "llama3", cwd=mnt.path)] == ["/llama3/8b/lora/r1/checkpoint-500"]
    assert os.readlink(mnt / "llama3" / "@latest") == "8b/lora/r1/checkpoint-500"
    log = (mnt.repo / "mount.log").read_text()
    assert "trainer_state.json" in log and "not valid JSON" in log, "a warning in the mount log"

    # a key of the wrong type: that key skipped, the rest kept
    (d / "trainer_state.json").write_text(json.dumps({**trainer_state(500, 0.3), "global_step": "ten"}))
    rec = cli_json("meta", "get", d)
    assert "global_step" not in rec["meta"] or rec["meta"]["global_step"] != "ten"
    assert rec["meta"]["eval_loss"] == 0.3


# -- .snapshots is read-only ----------------------------------------------------------------------------


def write_attempts(mnt, d: Path, f: Path) -> dict[str, Callable[[], object]]:
    """Every way to change the directory ``d`` and its file ``f``, by name: each must fail (EROFS)."""

    def open_and_close(path: Path, mode: str) -> None:
        with open(path, mode):
            pass

    return {
        "create": lambda: open_and_close(d / "new", "wb"),
        "write-open": lambda: open_and_close(f, "r+b"),
        "append-open": lambda: open_and_close(f, "ab"),
        "truncate-open": lambda: os.open(f, os.O_WRONLY | os.O_TRUNC),
        "mkdir": lambda: os.mkdir(d / "sub"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(d),
        "rename": lambda: os.rename(f, d / "g.bin"),
        "rename-out": lambda: os.rename(f, mnt / "stolen.bin"),
        "link": lambda: os.link(f, d / "h.bin"),
        "symlink": lambda: os.symlink("f.bin", d / "s"),
        "setxattr": lambda: os.setxattr(d, "user.chunkfs.eval_loss", b"1"),
        "removexattr": lambda: os.removexattr(d, "user.x"),
        "chmod": lambda: os.chmod(f, 0o600),
        "utime": lambda: os.utime(f, (0, 0)),
        "truncate": lambda: os.truncate(f, 0),
    }


def test_writes_into_snapshots_fail_with_erofs(mnt):
    (mnt / "d").mkdir()
    (mnt / "d" / "f.bin").write_bytes(b"x" * 100)
    commit = newest_commit(mnt / "d" / "f.bin")
    cli_json("tag", "t1", mnt.path)
    for root in (mnt / ".snapshots" / f"@{commit}", mnt / ".snapshots" / "t1"):
        d, f = root / "d", root / "d" / "f.bin"
        assert f.read_bytes() == b"x" * 100
        attempts = write_attempts(mnt, d, f)
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS, f"{what} in {root.name}: {e.value}"
        assert f.read_bytes() == b"x" * 100
    for name in ("@999", "tag-x"):
        with pytest.raises(OSError) as e:
            os.mkdir(mnt / ".snapshots" / name)
        assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.mkdir(mnt / ".snapshots")
    assert e.value.errno in (errno.EROFS, errno.EEXIST)
    assert not (mnt / "stolen.bin").exists()
    assert (mnt / "d" / "f.bin").read_bytes() == b"x" * 100


def test_bad_points_are_enoent(mnt):
    (mnt / "f").write_bytes(b"1")
    for name in ("@99999", "@1999-01-01T00:00Z", "no-such-tag", "@not-a-time"):
        assert not (mnt / ".snapshots" / name).exists()
    bad = chunkfs("restore", mnt / "f", "--at", "99999", expect=NotFound)
    assert "no such commit" in bad.stderr


# -- historic reads cost what current ones do -------------------------------------------------------------


def test_historic_open_is_as_fast_as_current(mnt):
    """Recorded, not asserted tightly: the library test counts the index lookups
    (tests/component/test_history.py::test_historic_lookup_is_bounded)."""
    deep = mnt / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    for k in range(30):
        (deep / "f.bin").write_bytes(bytes([k]) * 100_000)
    old_commit = file_versions(deep / "f.bin")[-1]["commit"]
    historic = mnt / ".snapshots" / f"@{old_commit}" / "a" / "b" / "c" / "d" / "f.bin"

    def open_read(path: Path) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            with open(path, "rb") as f:
                f.read(1)
            best = min(best, time.perf_counter() - start)
        return best

    assert historic.read_bytes()[:1] == b"\x00" and (deep / "f.bin").read_bytes()[:1] == bytes([29])
    current_s, historic_s = open_read(deep / "f.bin"), open_read(historic)
    print(f"open+read 1 byte: current {current_s * 1e3:.2f} ms, historic {historic_s * 1e3:.2f} ms")
    assert historic_s < 1.0


def test_rename_before_close_leaves_no_empty_version(mnt):
    """safetensors creates its file, fills it and renames it before closing it: every version that
    `chunkfs log` names must be content a reader could have seen complete — never the empty file
    the rename moved."""
    tensors = {"w": torch.randn(512, 512), "b": torch.randn(512)}
    st.save_file(tensors, mnt / "x.safetensors")
    size = os.stat(mnt / "x.safetensors").st_size
    fd = os.open(mnt / "y.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # the raw pattern
    os.write(fd, b"y" * 5000)
    os.rename(mnt / "y.tmp", mnt / "y.bin")
    os.close(fd)
    for name, full in (("x.safetensors", size), ("y.bin", 5000)):
        log = cli_json("log", mnt / name)
        assert log and all(e["size"] == full for e in log if e["event"] != "removed"), log
        for e in log:
            snap = mnt / ".snapshots" / f"@{e['commit']}" / name
            assert snap.stat().st_size == full, (name, e)
        first = min(e["commit"] for e in log)
        if first > 1:
            assert not (mnt / ".snapshots" / f"@{first - 1}" / name).exists()
    diff = chunkfs("diff", f"{mnt / 'x.safetensors'}@{min(e['commit'] for e in cli_json('log', mnt / 'x.safetensors'))}",
                   mnt / "x.safetensors")
    assert "0 B" not in diff.stdout, diff.stdout
    (mnt / "empty").touch()  # created and closed empty: that is a version too
    log = cli_json("log", mnt / "empty")
    assert [e["size"] for e in log] == [0]


def test_log_of_a_removed_directory_names_the_last_commit_it_was_whole(mnt):
    """The Trainer's rotation (rmtree) unlinks a checkpoint's files one commit each, then the
    directory: `chunkfs log RUN` names, with the removal, the commit at which it was last whole."""
    run = mnt / "run"
    ckpt = run / "checkpoint-10"
    ckpt.mkdir(parents=True)
    names = ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    for name in names:
        (ckpt / name).write_bytes(os.urandom(1000))
    (run / "checkpoint-20").mkdir()
    shutil.rmtree(ckpt)
    (removal,) = [e for e in cli_json("log", run) if e["event"] == "removed" and e["path"].endswith("checkpoint-10")]
    assert removal["kind"] == "directory" and removal["whole_at"] is not None
    whole = mnt / ".snapshots" / f"@{removal['whole_at']}" / "run" / "checkpoint-10"
    assert sorted(os.listdir(whole)) == names
    later = mnt / ".snapshots" / f"@{removal['whole_at'] + 1}" / "run" / "checkpoint-10"
    assert len(os.listdir(later)) < len(names), "the next commit already lost a file"
    assert f"removed (whole at @{removal['whole_at']})" in chunkfs("log", run).stdout
