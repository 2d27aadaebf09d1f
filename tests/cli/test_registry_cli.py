"""``chunkfs meta`` and ``chunkfs find`` as a user runs them (in-process, through ``main``).

A checkpoint tree with Hugging Face sidecar files is imported with ``chunkfs
import``, records are (re)built with ``chunkfs meta scan`` — which reads the
sidecars back through the chunk store — and then queried and changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import cli_json

from chunkfs.cli import registry_cmds
from chunkfs.cli.main import main
from chunkfs.errors import InvalidArgument, NotFound, UsageError
from chunkfs.namespace.registry import Registry
from chunkfs.repo import Repository


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _state(step: int, eval_loss: float) -> str:
    history = [
        {"epoch": 0.1, "learning_rate": 1e-4, "loss": 1.9, "step": step - 10},
        {"epoch": 0.1, "eval_loss": eval_loss, "eval_runtime": 3.2, "step": step},
    ]
    return json.dumps({"global_step": step, "epoch": 0.1, "log_history": history}, indent=2, sort_keys=True)


@pytest.fixture
def repo(tmp_path: Path, capsys) -> Path:
    """/llama3/8b/lora-med/{r1,r2}/checkpoint-N with sidecars, imported and scanned."""
    src = tmp_path / "src" / "llama3"
    for run_, steps in (("r1", (100, 200, 300)), ("r2", (100, 250))):
        for step in steps:
            d = src / "8b" / "lora-med" / run_ / f"checkpoint-{step}"
            d.mkdir(parents=True)
            (d / "trainer_state.json").write_text(_state(step, round(1 - step / 1000 + (0.2 if run_ == "r2" else 0), 3)))
            (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Meta-Llama-3-8B", "r": 16}))
            (d / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    (src / "8b" / "lora-med" / "r2" / "checkpoint-250" / "config.json").write_text("{not json")
    path = tmp_path / "repo"
    Repository.create(path).close()
    code, _, err = run(capsys, "import", "--repo", path, src, "/llama3")
    assert code == 0, err
    result = run_json(capsys, "meta", "scan", "--repo", path)
    assert result == {"checkpoints": 5, "sidecars": 11, "dropped": 0}
    return path


def test_meta_get_shows_the_extracted_record(repo, capsys):
    rec = run_json(capsys, "meta", "get", "--repo", repo, "/llama3/8b/lora-med/r1/checkpoint-200")
    assert rec["path"] == "/llama3/8b/lora-med/r1/checkpoint-200" and rec["step"] == 200
    assert rec["fields"] == {"model": "llama3", "base": "8b", "adapter": "lora-med", "run": "r1"}
    assert rec["meta"]["global_step"] == 200 and rec["meta"]["eval_loss"] == 0.8
    assert rec["meta"]["base_model"] == "meta-llama/Meta-Llama-3-8B" and rec["meta"]["train_loss"] == 1.9
    code, out, err = run(capsys, "meta", "get", "--repo", repo, "/llama3/8b/lora-med/r2/checkpoint-250")
    assert code == 0 and "eval_loss" in out and "trainer_state.json" in out
    assert "config.json: not valid JSON" in err  # reported, not fatal


def test_meta_set_and_unset(repo, capsys):
    path = "/llama3/8b/lora-med/r1/checkpoint-100"
    rec = run_json(capsys, "meta", "set", "--repo", repo, path, "eval_loss=0.05", "note=first try", "git_commit=abc123")
    assert rec["meta"]["eval_loss"] == 0.05 and rec["user"] == {"eval_loss": 0.05, "note": "first try", "git_commit": "abc123"}
    assert rec["extracted"]["trainer_state.json"]["eval_loss"] == 0.9
    got = run_json(capsys, "find", "--repo", repo, "--sort", "eval_loss", "--limit", "1")
    assert [r["path"] for r in got] == [path]
    rec = run_json(capsys, "meta", "unset", "--repo", repo, path, "eval_loss")
    assert rec["meta"]["eval_loss"] == 0.9 and "eval_loss" not in rec["user"]


def test_meta_set_works_while_the_repository_is_in_use(repo):
    path = "/llama3/8b/lora-med/r2/checkpoint-100"
    with Repository(repo) as writer:  # holds the writer lock and the index open, as a mount does
        assert cli_json("meta", "set", "--repo", repo, path, "ok=true")["meta"]["ok"] is True
        assert Registry(writer.index, writer.settings.registry).get_meta(path).meta["ok"] is True


def test_find(repo, capsys):
    latest = run_json(capsys, "find", "--repo", repo, "--model", "llama3", "--latest")
    assert [r["path"] for r in latest] == ["/llama3/8b/lora-med/r1/checkpoint-300"]
    at = run_json(capsys, "find", "--repo", repo, "--run", "r2", "--step", "250")
    assert [r["path"] for r in at] == ["/llama3/8b/lora-med/r2/checkpoint-250"]
    good = run_json(capsys, "find", "--repo", repo, "--where", "eval_loss<0.96, global_step>=200", "--sort", "-eval_loss")
    assert [(r["fields"]["run"], r["step"]) for r in good] == [("r2", 250), ("r1", 200), ("r1", 300)]
    assert run_json(capsys, "find", "--repo", repo, "--field", "adapter=lora-med", "--limit", "2")[1]["step"] == 200
    assert run_json(capsys, "find", "--repo", repo, "--model", "mistral") == []
    code, out, _ = run(capsys, "find", "--repo", repo, "--adapter", "lora-med", "--where", "eval_loss<0.8")
    assert code == 0 and "/llama3/8b/lora-med/r1/checkpoint-300" in out and "eval_loss" in out


@pytest.mark.parametrize(
    "argv, kind, message",
    [
        (["find", "--where", "eval_loss<"], UsageError, "--where"),
        (["find", "--where", "eval_loss<0.3 or step>1"], UsageError, "expected 'and'"),
        (["find", "--sort", "-"], UsageError, "--sort"),
        (["find", "--field", "project=x"], UsageError, "no level named 'project'"),
        (["find", "--field", "nonsense"], UsageError, "LEVEL=VALUE"),
        (["meta", "get", "/llama3/8b"], NotFound, "not a checkpoint directory"),
        (["meta", "get", "/nope"], NotFound, "no such file"),
        (["meta", "set", "/llama3/8b/lora-med/r1/checkpoint-100", "novalue"], UsageError, "KEY=VALUE"),
        (["meta", "set", "/llama3/8b/lora-med/r1/checkpoint-100", "step=3"], InvalidArgument, "reserved"),
    ],
)
def test_errors_are_one_line(repo, capsys, argv, kind, message):
    got, _, err = run(capsys, *argv, "--repo", repo)
    assert got == kind.exit_code and message in err and err.count("\n") <= 2 and "Traceback" not in err, err


def test_no_repository_is_a_usage_error(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("CHUNKFS_REPO", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "meta", "get", "/x")
    assert code == 2 and "--repo" in err


def test_a_resolver_can_be_swapped_in(repo, capsys, monkeypatch):
    monkeypatch.setattr(registry_cmds, "resolve", lambda path, _repo: (repo, path.removeprefix("/models")))
    rec = run_json(capsys, "meta", "get", "/models/llama3/8b/lora-med/r1/checkpoint-300")
    assert rec["step"] == 300


def test_help(capsys):
    for argv in (["find", "--help"], ["meta", "set", "--help"], ["meta", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--where" in capsys.readouterr().out
