"""The model registry: path parsing, records that follow the tree, metadata sources, queries.

The tree is a real ``Namespace`` on a real index; ``Tree`` below calls the
registry's hooks after each operation the way the tree does inside its write
transaction (here in a transaction of their own, which the hooks cannot tell
apart).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from chunkfs import clock, config
from chunkfs.config import RegistrySettings
from chunkfs.errors import ConfigError, InvalidArgument, NotFound, UsageError
from chunkfs.index import Index
from chunkfs.namespace import Namespace
from chunkfs.namespace.registry import (
    BEST,
    LATEST,
    Registry,
    dir_prefixes,
    extract_sidecar,
    fields_of,
    parse_checkpoint,
    parse_value,
    parse_where,
    step_of,
)
from chunkfs.types import ROOT_INODE

LEVELS = ("model", "base", "adapter", "run")
STEP = re.compile(r"(\d+)$")


class Tree:
    """A namespace whose operations call the registry hooks, as the tree will."""

    def __init__(self, index: Index, registry: Registry) -> None:
        self.index = index
        self.ns = Namespace(index)
        self.reg = registry

    def ino(self, path: str) -> int:
        return self.ns.resolve(path)

    def mkdir(self, path: str) -> int:
        """mkdir -p: each new directory is announced."""
        ino, cur = ROOT_INODE, ""
        for part in path.strip("/").split("/"):
            cur += "/" + part
            try:
                ino, _ = self.ns.lookup(ino, part.encode())
            except NotFound:
                ino, _ = self.ns.mkdir(ino, part.encode(), 0o755, 0, 0)
                with self.index.write() as t:
                    self.reg.on_dir_changed(t, ino, cur)
        return ino

    def write(self, path: str, data: bytes | str) -> None:
        """A file committed (its content is not stored: the registry only sees the bytes)."""
        parent, name = path.rsplit("/", 1)
        dir_ino = self.ino(parent)
        try:
            self.ns.lookup(dir_ino, name.encode())
        except NotFound:
            self.ns.mknod(dir_ino, name.encode(), stat.S_IFREG | 0o644, 0, 0)
        data = data.encode() if isinstance(data, str) else data
        self.reg.on_file_committed(dir_ino, name, data if self.reg.wants(name, len(data)) else None)

    def rename(self, old: str, new: str) -> None:
        (op, on), (np_, nn) = old.rsplit("/", 1), new.rsplit("/", 1)
        old_parent, new_parent = self.ino(op or "/"), self.ino(np_ or "/")
        child, _ = self.ns.lookup(old_parent, on.encode())
        try:
            target, _ = self.ns.lookup(new_parent, nn.encode())
        except NotFound:
            target = None
        self.ns.rename(old_parent, on.encode(), new_parent, nn.encode())
        with self.index.write() as t:
            if target is not None:
                self.reg.on_dir_removed(t, target)
            self.reg.on_dir_changed(t, child, new)

    def rmdir(self, path: str) -> None:
        parent, name = path.rsplit("/", 1)
        ino = self.ino(path)
        self.ns.rmdir(self.ino(parent or "/"), name.encode())
        with self.index.write() as t:
            self.reg.on_dir_removed(t, ino)

    def setxattr(self, path: str, name: str, value: bytes | None) -> bool:
        ino = self.ino(path)
        if value is None:
            self.ns.removexattr(ino, name.encode())
        else:
            self.ns.setxattr(ino, name.encode(), value)
        with self.index.write() as t:
            return self.reg.on_xattr(t, ino, name, value)


@pytest.fixture
def index(tmp_path: Path):
    idx = Index(tmp_path / "index", create=True)
    yield idx
    idx.close()


@pytest.fixture
def tree(index) -> Tree:
    return Tree(index, Registry(index))


def paths(records) -> list[str]:
    return [r.path for r in records]


def trainer_state(step: int, eval_loss: float, *, epoch: float = 1.0, best: float | None = None) -> str:
    """A trainer_state.json as transformers' TrainerState.save_to_json writes it."""
    history = []
    for s in range(10, step + 1, 10):
        history.append({"epoch": round(s / 1000, 4), "grad_norm": 1.5, "learning_rate": 2e-4, "loss": 2.0 - s / 1000, "step": s})
        if s % 50 == 0:
            history.append({
                "epoch": round(s / 1000, 4), "eval_loss": eval_loss + (step - s) / 1000,
                "eval_accuracy": 0.5 + s / 10000, "eval_runtime": 12.3, "eval_samples_per_second": 81.3,
                "eval_steps_per_second": 10.2, "step": s,
            })  # fmt: skip
    state = {
        "best_global_step": step, "best_metric": best, "best_model_checkpoint": f"out/checkpoint-{step}",
        "epoch": epoch, "eval_steps": 50, "global_step": step, "is_hyper_param_search": False,
        "is_local_process_zero": True, "is_world_process_zero": True, "log_history": history,
        "logging_steps": 10, "max_steps": 1000, "num_input_tokens_seen": 0, "num_train_epochs": 1,
        "save_steps": 50, "stateful_callbacks": {"TrainerControl": {"args": {"should_save": True}, "attributes": {}}},
        "total_flos": 1.2e15, "train_batch_size": 8, "trial_name": None, "trial_params": None,
    }  # fmt: skip
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, step",
    [
        ("checkpoint-1500", 1500), ("step_1500", 1500), ("global_step1500", 1500), ("1500", 1500),
        ("ckpt-0", 0), ("final", None), ("checkpoint-1500.tmp", None), ("step-" + "9" * 30, None),
        ("step-١٢", None),  # non-ASCII digits are not steps
    ],
)  # fmt: skip
def test_step_of(name, step):
    assert step_of(name, STEP) == step


def test_fields_fill_from_the_left_and_the_last_directory_is_the_run():
    assert fields_of(["llama3", "8b", "lora", "r1"], 4) == ("llama3", "8b", "lora", "r1")
    assert fields_of(["llama3", "r1"], 4) == ("llama3", "", "", "r1")
    assert fields_of(["llama3", "8b", "r1"], 4) == ("llama3", "8b", "", "r1")
    assert fields_of(["r1"], 4) == ("", "", "", "r1")
    assert fields_of(["meta-llama", "Llama-3-8B", "v1", "lora", "r1"], 4) == ("meta-llama/Llama-3-8B", "v1", "lora", "r1")
    assert fields_of(["a", "b", "c"], 2) == ("a/b", "c")


def test_parse_checkpoint():
    p = parse_checkpoint("/llama3/8b/lora-med/run1/checkpoint-500", 4, STEP)
    assert p.fields == ("llama3", "8b", "lora-med", "run1") and p.step == 500
    assert parse_checkpoint("/checkpoint-500", 4, STEP) is None  # nothing above it: no run
    assert parse_checkpoint("/llama3/8b/lora-med", 4, STEP) is None
    assert parse_checkpoint("/", 4, STEP) is None
    documented = re.compile(RegistrySettings(step_pattern=r"^(?:checkpoint|step|global_step|iter)[-_]?(\d+)$").step_pattern)
    assert parse_checkpoint("/m/r/iter_0000500", 4, documented).step == 500
    assert parse_checkpoint("/m/r/iter_0000500/mp_rank_00", 4, documented) is None
    assert parse_checkpoint("/m/r/runs/May01_12-00-00_node07", 4, documented) is None
    strict = re.compile(r"^checkpoint-(\d+)$")
    assert parse_checkpoint("/m/r/global_step7", 4, strict) is None
    assert parse_checkpoint("/m/r/checkpoint-7", 4, strict).step == 7


def test_dir_prefixes_select_exactly_the_checkpoints_below():
    levels = LEVELS
    assert dir_prefixes("/", levels) == [((), False, None)]
    got = dir_prefixes("/llama3/8b", levels)
    assert (("llama3", "8b"), False, "base") in got  # the convention
    assert (("llama3/8b",), False, "model") in got  # /llama3/8b/… with more levels: model llama3/8b
    assert (("llama3", "", "", "8b"), False, "run") in got  # /llama3/8b/checkpoint-N: 8b is the run
    assert (("llama3/8b/",), True, "model") in got  # model llama3/8b/…
    assert len({(p, o) for p, o, _ in got}) == len(got)


def test_registry_settings():
    s = config.parse({"registry": {"levels": ["project", "model", "run"], "best_mode": "max"}}).registry
    assert s.level_names == ("project", "model", "run") and s.best_mode == "max" and s.best_metric == "eval_loss"
    assert config.parse({"registry": {"levels": "a/b"}}).registry.level_names == ("a", "b")
    rendered = config.render(config.Settings(registry=s))
    assert config.parse(tomllib.loads(rendered)).registry == s
    for bad, message in (
        ({"levels": ["a b"]}, "registry.levels"), ({"levels": ["model", "step"]}, "not a usable level name"),
        ({"levels": ["a", "a"]}, "distinct"), ({"levels": []}, "registry.levels"), ({"best_mode": "median"}, "min, max"),
        ({"step_pattern": "("}, "not a regular expression"), ({"step_pattern": r"(\d)(\d)"}, "at most one group"),
        ({"best_metric": ""}, "registry.best_metric"), ({"colour": 1}, "unknown key registry.colour"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(message)):
            config.parse({"registry": bad})


def test_names_that_are_not_utf8(tree):
    top = tree.mkdir("/m")
    run, _ = tree.ns.mkdir(top, b"r\xff", 0o755, 0, 0)
    ckpt, _ = tree.ns.mkdir(run, b"checkpoint-3", 0o755, 0, 0)
    with tree.index.write() as t:
        tree.reg.on_dir_changed(t, run)
        tree.reg.on_dir_changed(t, ckpt)
    (rec,) = tree.reg.find(run="r\udcff")
    assert rec.path == "/m/r\udcff/checkpoint-3" and rec.ino == ckpt
    assert tree.reg.latest("/m") == rec.path


def test_parse_value():
    assert parse_value("0.231") == 0.231 and isinstance(parse_value("0.231"), float)
    assert parse_value(" 42 ") == 42 and isinstance(parse_value("42"), int)
    assert parse_value("-1e-3") == -0.001
    assert parse_value("true") is True and parse_value("false") is False
    assert parse_value("abc123") == "abc123"
    assert parse_value("nan") == "nan" and parse_value("1e999") == "1e999"


# -- records follow the tree ---------------------------------------------------------------------


def test_mkdir_creates_records_and_levels_ending_in_numbers_are_not_checkpoints(tree):
    tree.mkdir("/llama3/8b/lora-r16/run1/checkpoint-500")
    tree.mkdir("/llama3/8b/lora-r16/run1/checkpoint-1000")
    got = tree.reg.find()
    assert paths(got) == ["/llama3/8b/lora-r16/run1/checkpoint-500", "/llama3/8b/lora-r16/run1/checkpoint-1000"]
    assert got[0].fields == {"model": "llama3", "base": "8b", "adapter": "lora-r16", "run": "run1"}
    assert [r.step for r in got] == [500, 1000]
    with pytest.raises(NotFound, match="not a checkpoint"):
        tree.reg.get_meta("/llama3/8b/lora-r16/run1")


def test_short_and_long_paths(tree):
    tree.mkdir("/gpt2/run-a/step_100")
    tree.mkdir("/meta-llama/Llama-3-8B/v1/lora/r1/checkpoint-5")
    by_path = {r.path: r for r in tree.reg.find()}
    assert by_path["/gpt2/run-a/step_100"].fields == {"model": "gpt2", "base": "", "adapter": "", "run": "run-a"}
    long = by_path["/meta-llama/Llama-3-8B/v1/lora/r1/checkpoint-5"]
    assert long.fields == {"model": "meta-llama/Llama-3-8B", "base": "v1", "adapter": "lora", "run": "r1"}
    assert paths(tree.reg.find(model="meta-llama/Llama-3-8B")) == [long.path]
    assert paths(tree.reg.find(run="run-a")) == ["/gpt2/run-a/step_100"]


def test_rename_rekeys_and_keeps_metadata(tree):
    ino = tree.mkdir("/m/b/a/r1/tmp-checkpoint-500")  # transformers saves here, then renames
    tree.write("/m/b/a/r1/tmp-checkpoint-500/trainer_state.json", trainer_state(500, 0.4))
    before = tree.reg.get_meta(ino)
    clock.advance(1)
    tree.rename("/m/b/a/r1/tmp-checkpoint-500", "/m/b/a/r1/checkpoint-500")
    rec = tree.reg.get_meta("/m/b/a/r1/checkpoint-500")
    assert rec.ino == ino and rec.path == "/m/b/a/r1/checkpoint-500" and rec.step == 500
    assert rec.meta["global_step"] == 500 and rec.time_ns > before.time_ns
    tree.rename("/m/b/a/r1/checkpoint-500", "/m/b/a/r1/checkpoint-600")
    assert [r.step for r in tree.reg.find()] == [600]
    tree.rename("/m/b/a/r1/checkpoint-600", "/m/b/a/r1/best")
    assert tree.reg.find() == []


def test_renaming_a_level_rekeys_every_checkpoint_below(tree):
    for step in (100, 200):
        tree.mkdir(f"/m/b/a/r1/checkpoint-{step}")
    tree.mkdir("/m/b/a/r1/checkpoint-200/sub")  # not a step directory
    tree.reg.set_meta("/m/b/a/r1/checkpoint-100", {"note": "keep me"})
    tree.mkdir("/m/b/other")
    tree.rename("/m/b/a/r1", "/m/b/other/r9")
    got = tree.reg.find()
    assert paths(got) == ["/m/b/other/r9/checkpoint-100", "/m/b/other/r9/checkpoint-200"]
    assert {r.fields["adapter"] for r in got} == {"other"} and {r.fields["run"] for r in got} == {"r9"}
    assert got[0].meta["note"] == "keep me"
    assert tree.reg.find(run="r1") == [] and paths(tree.reg.find(run="r9", step=200)) == [got[1].path]


def test_rename_over_an_empty_checkpoint_and_rmdir_drop_records(tree):
    tree.mkdir("/m/b/a/r1/checkpoint-1")
    tree.mkdir("/m/b/a/r1/checkpoint-2")
    tree.rename("/m/b/a/r1/checkpoint-1", "/m/b/a/r1/checkpoint-2")  # replaces the empty one
    assert [(r.step, r.ino) for r in tree.reg.find()] == [(2, tree.ino("/m/b/a/r1/checkpoint-2"))]
    tree.rmdir("/m/b/a/r1/checkpoint-2")
    assert tree.reg.find() == []
    with tree.index.read() as t:
        assert t.ckpt_count() == 0


def test_a_step_directory_of_the_same_step_is_part_of_the_checkpoint(tree):
    tree.mkdir("/m/b/a/r1/checkpoint-500")
    tree.write("/m/b/a/r1/checkpoint-500/config.json", '{"model_type": "llama"}')
    tree.mkdir("/m/b/a/r1/checkpoint-500/global_step500")  # DeepSpeed's layout
    assert paths(tree.reg.find()) == ["/m/b/a/r1/checkpoint-500"]
    tree.mkdir("/m/b/a/exp-20240501/checkpoint-7")  # a level ending in a number
    tree.mkdir("/m/b/a/exp-20240501/checkpoint-8/global_step8")  # no files above it: the deepest counts
    tree.mkdir("/m/b/a/run500/notes")
    assert set(paths(tree.reg.find())) == {
        "/m/b/a/exp-20240501/checkpoint-7", "/m/b/a/exp-20240501/checkpoint-8/global_step8",
        "/m/b/a/r1/checkpoint-500", "/m/b/a/run500",
    }  # fmt: skip
    tree.write("/m/b/a/run500/notes/x.txt", "a run directory with files")
    tree.mkdir("/m/b/a/run500/checkpoint-100")  # another step: run500 was a level
    assert "/m/b/a/run500" not in paths(tree.reg.find()) and tree.reg.get_meta("/m/b/a/run500/checkpoint-100")


def test_scan_rebuilds_the_same_records(tree):
    for p in ("/m/b/a/r1/checkpoint-1", "/m/b/a/r1/checkpoint-2", "/x/run-a/step_3"):
        tree.mkdir(p)
    tree.reg.set_meta("/x/run-a/step_3", {"k": 1})
    before = tree.reg.find()
    with tree.index.write() as t:
        t.ckpt_delete(tree.ino("/m/b/a/r1/checkpoint-1"))  # a lost update
        t.ckpt_put(999, ("s", "", "", "t"), 1, 0, 0, None, {"path": "/gone/t/1"})  # a stale record
    result = tree.reg.scan("/")
    assert result.checkpoints == 3 and result.dropped == 1
    after = tree.reg.find()
    assert [(r.path, r.fields, r.step, r.meta) for r in after] == [(r.path, r.fields, r.step, r.meta) for r in before]


# -- metadata sources ---------------------------------------------------------------------------------


def test_extraction_from_hugging_face_files(tree):
    d = "/llama3/8b/lora-med/run1/checkpoint-1500"
    tree.mkdir(d)
    tree.write(f"{d}/trainer_state.json", trainer_state(1500, 0.231, epoch=1.5, best=0.229))
    tree.write(f"{d}/config.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "model_type": "llama",
        "num_hidden_layers": 32, "torch_dtype": "bfloat16", "vocab_size": 128256, "rope_theta": 500000.0,
    }))  # fmt: skip
    tree.write(f"{d}/adapter_config.json", json.dumps({
        "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B", "peft_type": "LORA", "r": 16,
        "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM",
    }))  # fmt: skip
    tree.write(f"{d}/training_args.json", json.dumps({"learning_rate": 2e-4, "seed": 42, "bf16": True, "output_dir": "x"}))
    tree.write(f"{d}/chunkfs.json", json.dumps({"dataset": ["c4", "wiki"], "git_commit": "abc123", "hardware": "8xH100"}))
    tree.write(f"{d}/model.safetensors", b"\0" * 100)
    m = tree.reg.get_meta(d).meta
    assert m["global_step"] == 1500 and m["epoch"] == 1.5 and m["best_metric"] == 0.229
    assert m["best_model_checkpoint"] == "out/checkpoint-1500"
    assert m["eval_loss"] == pytest.approx(0.231) and m["eval_step"] == 1500 and m["eval_accuracy"] == 0.65
    assert m["train_loss"] == pytest.approx(0.5) and m["max_steps"] == 1000 and m["train_batch_size"] == 8
    assert m["model_type"] == "llama" and m["architectures"] == ["LlamaForCausalLM"] and m["hidden_size"] == 4096
    assert m["torch_dtype"] == "bfloat16" and m["vocab_size"] == 128256 and "rope_theta" not in m
    assert m["base_model"] == "meta-llama/Meta-Llama-3-8B" and m["peft_type"] == "LORA" and m["r"] == 16
    assert m["target_modules"] == ["q_proj", "v_proj"] and m["lora_alpha"] == 32
    assert m["learning_rate"] == 2e-4 and m["seed"] == 42 and m["bf16"] is True and "output_dir" not in m
    assert m["dataset"] == ["c4", "wiki"] and m["git_commit"] == "abc123" and m["hardware"] == "8xH100"
    rec = tree.reg.get_meta(d)
    assert set(rec.extracted) == {"trainer_state.json", "config.json", "adapter_config.json", "training_args.json", "chunkfs.json"}
    assert rec.problems == {}


def test_malformed_sidecars_are_reported_and_skipped(tree, caplog):
    d = "/m/b/a/r1/checkpoint-10"
    tree.mkdir(d)
    tree.write(f"{d}/config.json", '{"model_type": "llama"}')
    tree.write(f"{d}/trainer_state.json", trainer_state(10, 0.5))
    caplog.set_level(logging.WARNING, logger="chunkfs")
    tree.write(f"{d}/adapter_config.json", '{"r": 16,')  # truncated
    tree.write(f"{d}/chunkfs.json", "[1, 2]")  # not an object
    tree.write(f"{d}/training_args.json", b"\xff\xfe garbage")
    tree.write(f"{d}/trainer_state.json", json.dumps({"global_step": "ten", "epoch": 0.5, "log_history": {"x": 1}}))
    tree.write(f"{d}/config.json", json.dumps({"model_type": "llama", "hidden_size": "big", "nested": {"a": 1}}))
    rec = tree.reg.get_meta(d)
    assert rec.meta == {"model_type": "llama", "epoch": 0.5}  # what is usable is kept
    assert set(rec.problems) == {"adapter_config.json", "chunkfs.json", "training_args.json", "trainer_state.json", "config.json"}
    assert "not valid JSON" in rec.problems["adapter_config.json"]
    assert "expected a JSON object" in rec.problems["chunkfs.json"]
    assert "global_step: expected integer" in rec.problems["trainer_state.json"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("adapter_config.json", "chunkfs.json", "training_args.json", "trainer_state.json", "config.json"):
        assert f"{d}/{name}" in logged
    tree.write(f"{d}/adapter_config.json", '{"r": 16}')  # fixed: the problem goes away
    rec = tree.reg.get_meta(d)
    assert rec.meta["r"] == 16 and "adapter_config.json" not in rec.problems


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b"1" * 10, b"[" * 100000, json.dumps({"k": {"nested": 1}}).encode(), b'{"a": NaN}'],
)
def test_extract_never_raises_anything_but_sidecar_error(data):
    for name in ("trainer_state.json", "config.json", "adapter_config.json", "training_args.json", "chunkfs.json"):
        try:
            extract_sidecar(name, data)
        except ValueError:
            pass


def test_non_finite_numbers_become_text():
    values, _ = extract_sidecar("chunkfs.json", b'{"a": NaN, "b": Infinity, "c": 1.5}')
    assert values == {"a": "nan", "b": "inf", "c": 1.5}


def test_removing_a_sidecar_forgets_its_keys(tree):
    d = "/m/b/a/r1/checkpoint-50"
    tree.mkdir(d)
    tree.write(f"{d}/trainer_state.json", trainer_state(50, 0.5))
    tree.write(f"{d}/config.json", '{"model_type": "llama"}')
    tree.ns.unlink(tree.ino(d), b"trainer_state.json")
    with tree.index.write() as t:
        assert tree.reg.on_file_removed(t, tree.ino(d), b"trainer_state.json")
        assert not tree.reg.on_file_removed(t, tree.ino(d), b"notes.txt")
    assert tree.reg.get_meta(d).meta == {"model_type": "llama"}


def test_best_ties_go_to_the_later_step(tree):
    for step in (10, 20, 30):
        tree.mkdir(f"/m/b/a/r1/checkpoint-{step}")
        tree.reg.set_meta(f"/m/b/a/r1/checkpoint-{step}", {"eval_loss": 0.5 if step < 30 else 0.7})
    assert tree.reg.best("/m/b/a/r1") == "/m/b/a/r1/checkpoint-20"
    tree.mkdir("/m/b/a/r2/checkpoint-15")
    tree.reg.set_meta("/m/b/a/r2/checkpoint-15", {"eval_loss": 0.5})
    assert tree.reg.best("/m") == "/m/b/a/r1/checkpoint-20"


def test_files_outside_checkpoints_are_ignored(tree):
    tree.mkdir("/m/b/a/r1")
    tree.write("/m/b/a/r1/trainer_state.json", "{}")  # r1 is a checkpoint (nothing below yet)…
    tree.mkdir("/m/b/a/r1/checkpoint-100")  # …until one appears below it
    tree.mkdir("/m/b/a/r1/logs")
    tree.write("/m/b/a/r1/logs/trainer_state.json", "{}")
    assert paths(tree.reg.find()) == ["/m/b/a/r1/checkpoint-100"]


def test_xattrs_set_typed_metadata(tree):
    d = "/m/b/a/r1/checkpoint-10"
    tree.mkdir(d)
    tree.write(f"{d}/trainer_state.json", trainer_state(50, 0.5))
    assert tree.setxattr(d, "user.chunkfs.eval_loss", b"0.231")
    assert tree.setxattr(d, "user.chunkfs.seed", b"7")
    assert tree.setxattr(d, "user.chunkfs.note", b"good run")
    rec = tree.reg.get_meta(d)
    assert rec.meta["eval_loss"] == 0.231 and rec.user == {"eval_loss": 0.231, "seed": 7, "note": "good run"}
    assert rec.extracted["trainer_state.json"]["eval_loss"] == 0.5  # user keys win, extracted stay
    assert tree.setxattr(d, "user.chunkfs.eval_loss", None)
    assert tree.reg.get_meta(d).meta["eval_loss"] == 0.5
    assert not tree.setxattr(d, "user.other", b"x")  # not ours
    assert not tree.setxattr("/m/b", "user.chunkfs.eval_loss", b"1")  # not a checkpoint
    with pytest.raises(InvalidArgument), tree.index.write() as t:
        tree.reg.on_xattr(t, tree.ino(d), "user.chunkfs.step", b"1")


def test_set_meta_parses_values_and_mirrors_xattrs(tree):
    d = "/m/b/a/r1/checkpoint-10"
    ino = tree.mkdir(d)
    rec = tree.reg.set_meta(d, {"eval_loss": "0.25", "lr": 1e-4, "tags": ["a", "b"], "ok": "true"})
    assert rec.meta == {"eval_loss": 0.25, "lr": 1e-4, "tags": ["a", "b"], "ok": True}
    assert tree.ns.getxattr(ino, b"user.chunkfs.eval_loss") == b"0.25"
    assert tree.ns.getxattr(ino, b"user.chunkfs.tags") == b'["a", "b"]'
    tree.reg.set_meta(ino, {"eval_loss": None})
    assert "eval_loss" not in tree.reg.get_meta(ino).meta and b"user.chunkfs.eval_loss" not in tree.ns.listxattr(ino)
    for bad in ({"bad key": 1}, {"run": "x"}, {"path": "x"}, {"k": {"a": 1}}):
        with pytest.raises(InvalidArgument):
            tree.reg.set_meta(d, bad)
    with pytest.raises(NotFound):
        tree.reg.set_meta("/m/b", {"k": 1})
    with pytest.raises(NotFound):
        tree.reg.get_meta("/nope")


# -- queries -----------------------------------------------------------------------------------------------


@pytest.fixture
def zoo(tree) -> Tree:
    """Two models, two adapters, three runs; eval_loss falls with the step except in r3."""
    for model, adapter, run, steps in (
        ("llama3", "lora-a", "r1", (100, 200, 300)),
        ("llama3", "lora-a", "r2", (100, 400)),
        ("llama3", "lora-b", "r3", (50, 150)),
        ("qwen2", "lora-a", "r1", (1000,)),
    ):
        for s in steps:
            d = f"/{model}/8b/{adapter}/{run}/checkpoint-{s}"
            tree.mkdir(d)
            loss = 1.0 - s / 1000 if run != "r3" else 0.01 * s
            tree.reg.set_meta(d, {"eval_loss": loss, "owner": "ana" if s < 200 else "bo"})
            clock.advance(1)
    return tree


def test_find_filters(zoo):
    reg = zoo.reg
    assert len(reg.find()) == 8
    assert [r.step for r in reg.find(model="llama3")] == [100, 200, 300, 100, 400, 50, 150]
    assert [r.fields["model"] for r in reg.find(run="r1")] == ["llama3"] * 3 + ["qwen2"]
    assert paths(reg.find(run="r1", step=200)) == ["/llama3/8b/lora-a/r1/checkpoint-200"]
    assert paths(reg.find(model="llama3", adapter="lora-b")) == ["/llama3/8b/lora-b/r3/checkpoint-50", "/llama3/8b/lora-b/r3/checkpoint-150"]
    assert paths(reg.find(fields={"adapter": "lora-a"}, step=1000)) == ["/qwen2/8b/lora-a/r1/checkpoint-1000"]
    assert reg.find(model="nope") == [] and reg.find(step=7) == []
    with pytest.raises(UsageError, match="no level named"):
        reg.find(project="x")


def test_find_where(zoo):
    reg = zoo.reg
    assert [r.step for r in reg.find(where="eval_loss<0.75")] == [300, 400, 50, 1000]
    assert [r.step for r in reg.find(where="eval_loss<0.75 and owner==bo, step>=400")] == [400, 1000]
    assert [r.step for r in reg.find(where="owner!='bo'")] == [100, 100, 50, 150]
    assert [r.step for r in reg.find(where="model==qwen2")] == [1000]
    assert reg.find(where="missing<1") == [] and reg.find(where="missing!=1") == []
    assert reg.find(where="owner<1") == []  # a string is not below a number
    assert [r.step for r in reg.find(where="run == 'r3' AND eval_loss > 1")] == [150]
    for bad in ("eval_loss<", "<3", "a<1 b>2", "a ~ 1", "a<1 and", "a<1,,b<2"):
        with pytest.raises(UsageError, match="--where"):
            reg.find(where=bad)


def test_parse_where_quoting():
    (c,) = parse_where('run=="007"')
    assert c.quoted and c.text == "007" and c.matches("007") and not c.matches(7)
    (c,) = parse_where("seed==7")
    assert c.matches(7) and c.matches(7.0) and c.matches("7") and not c.matches(True)
    (c,) = parse_where("ok==true")
    assert c.matches(True) and not c.matches(1)
    (c,) = parse_where("eval_loss<0.3")
    assert not c.matches("nan") and not c.matches(["x"]) and not c.matches(None)


def test_find_sort_latest_limit(zoo):
    reg = zoo.reg
    assert [r.step for r in reg.find(sort="eval_loss", limit=3)] == [1000, 50, 400]
    assert [r.step for r in reg.find(sort="-eval_loss", limit=2)] == [150, 100]
    assert [r.step for r in reg.find(sort="-step,eval_loss", limit=3)] == [1000, 400, 300]
    zoo.reg.set_meta("/qwen2/8b/lora-a/r1/checkpoint-1000", {"eval_loss": None})
    assert reg.find(sort="eval_loss")[-1].step == 1000  # missing keys last, both ways
    assert reg.find(sort="-eval_loss")[-1].step == 1000
    assert paths(reg.find(model="llama3", latest=True)) == ["/llama3/8b/lora-a/r2/checkpoint-400"]
    assert paths(reg.find(latest=True)) == ["/qwen2/8b/lora-a/r1/checkpoint-1000"]
    assert paths(reg.find(model="llama3", where="owner==ana", latest=True)) == ["/llama3/8b/lora-b/r3/checkpoint-150"]
    assert reg.find(limit=0) == []
    with pytest.raises(UsageError):
        reg.find(sort="-")


def test_latest_ties_go_to_the_later_change(tree):
    tree.mkdir("/m/b/a/r1/checkpoint-100")
    clock.advance(1)
    tree.mkdir("/m/b/a/r2/checkpoint-100")
    assert tree.reg.latest("/m") == "/m/b/a/r2/checkpoint-100"
    clock.advance(1)
    tree.write("/m/b/a/r1/checkpoint-100/model.safetensors", b"x")  # r1's checkpoint changed last
    assert tree.reg.latest("/m") == "/m/b/a/r1/checkpoint-100"
    assert paths(tree.reg.find(latest=True)) == ["/m/b/a/r1/checkpoint-100"]


def test_latest_and_best_at_every_level(zoo):
    reg = zoo.reg
    assert reg.latest("/llama3") == "/llama3/8b/lora-a/r2/checkpoint-400"
    assert reg.latest("/llama3/8b") == "/llama3/8b/lora-a/r2/checkpoint-400"
    assert reg.latest("/llama3/8b/lora-b") == "/llama3/8b/lora-b/r3/checkpoint-150"
    assert reg.latest("/llama3/8b/lora-a/r1") == "/llama3/8b/lora-a/r1/checkpoint-300"
    assert reg.latest("/") == "/qwen2/8b/lora-a/r1/checkpoint-1000"
    assert reg.latest({"model": "llama3", "adapter": "lora-b"}) == "/llama3/8b/lora-b/r3/checkpoint-150"
    assert reg.latest(("llama3", "8b", "lora-a")) == "/llama3/8b/lora-a/r2/checkpoint-400"
    assert reg.best("/llama3") == "/llama3/8b/lora-b/r3/checkpoint-50"  # eval_loss 0.5
    assert reg.best("/llama3/8b/lora-a") == "/llama3/8b/lora-a/r2/checkpoint-400"  # 0.6
    assert reg.best("/llama3/8b/lora-a/r1") == "/llama3/8b/lora-a/r1/checkpoint-300"
    assert reg.latest("/mistral") is None and reg.best("/mistral") is None
    assert reg.latest("/llama3/8b/lora-a/r1/checkpoint-300") is None  # nothing below a checkpoint
    assert reg.level_of("/llama3") == "model" and reg.level_of("/llama3/8b") == "base"
    assert reg.level_of("/llama3/8b/lora-a") == "adapter" and reg.level_of("/llama3/8b/lora-a/r1") == "run"
    assert reg.level_of("/") is None and reg.level_of("/mistral") is None
    assert reg.level_of("/llama3/8b/lora-a/r1/checkpoint-300") is None
    assert reg.links("/llama3/8b/lora-a") == {LATEST: "r2/checkpoint-400", BEST: "r2/checkpoint-400"}
    assert reg.links("/llama3") == {LATEST: "8b/lora-a/r2/checkpoint-400", BEST: "8b/lora-b/r3/checkpoint-50"}
    assert reg.links("/") == {} and reg.links("/mistral") == {}
    assert reg.links(zoo.ino("/llama3/8b/lora-a")) == reg.links("/llama3/8b/lora-a")  # by inode, as FUSE has it


def test_best_follows_metric_changes_and_mode(zoo, index):
    reg = zoo.reg
    reg.set_meta("/llama3/8b/lora-a/r1/checkpoint-100", {"eval_loss": 0.01})
    assert reg.best("/llama3") == "/llama3/8b/lora-a/r1/checkpoint-100"
    reg.set_meta("/llama3/8b/lora-a/r1/checkpoint-100", {"eval_loss": "diverged"})  # no longer a number
    assert reg.best("/llama3") == "/llama3/8b/lora-b/r3/checkpoint-50"
    high = Registry(index, RegistrySettings(best_metric="eval_loss", best_mode="max"))
    assert high.best("/llama3") == "/llama3/8b/lora-b/r3/checkpoint-150"  # 1.5
    ana = Registry(index, RegistrySettings(best_metric="step", best_mode="max"))  # not a metadata key: none
    assert ana.best("/llama3") is None


def test_changed_settings_rebuild_the_indexes(zoo, index, caplog):
    reg = Registry(index, RegistrySettings(best_metric="score"))  # opening alone writes nothing
    assert reg.best("/llama3") is None  # (read from the records until the index is rebuilt)
    reg.set_meta("/llama3/8b/lora-a/r1/checkpoint-100", {"score": 1})  # a write rebuilds first
    with index.read() as t:
        assert t.registry_settings()["metric"] == "score"
    reg.set_meta("/llama3/8b/lora-a/r1/checkpoint-200", {"score": 3})
    assert reg.best("/llama3") == "/llama3/8b/lora-a/r1/checkpoint-100"
    assert Registry(index, RegistrySettings(best_metric="score", best_mode="max")).best("/llama3") == (
        "/llama3/8b/lora-a/r1/checkpoint-200"
    )
    three = Registry(index, RegistrySettings(levels="model/adapter/run"))
    caplog.set_level(logging.WARNING, logger="chunkfs")
    assert three.find(model="llama3/8b", adapter="lora-a", run="r1") == []  # still keyed the old way
    assert "other [registry] levels" in caplog.text
    three.ensure_built()  # re-keys every record (the mount does this at start)
    got = three.find(model="llama3/8b", adapter="lora-a", run="r1")
    assert [r.step for r in got] == [100, 200, 300] and got[1].meta["score"] == 3
    assert three.latest("/llama3/8b/lora-b") == "/llama3/8b/lora-b/r3/checkpoint-150"
    back = Registry(index)
    back.ensure_built()
    assert back.find(model="llama3", run="r1")[1].meta["score"] == 3


# -- the benchmark, small ---------------------------------------------------------------------------------


def _bench_module():
    path = Path(__file__).resolve().parents[2] / "tools" / "bench_find.py"
    spec = importlib.util.spec_from_file_location("bench_find", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_find"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_find_logic_small(tmp_path):
    bench = _bench_module()
    shape = bench.Shape(models=2, bases=1, adapters=2, runs=2, steps=5)
    figures = bench.run(tmp_path / "repo", shape, repeat=2)
    assert figures["checkpoints"] == shape.total == 40
    for name, result in figures["queries"].items():
        assert result["results"] >= 1, name
