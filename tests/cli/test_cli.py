"""The ``chunkfs`` command line, run as users run it: ``python -m chunkfs …`` in a subprocess.

Contract (DESIGN.md, "The command line"): exit 0 on success, 1 on error, 2 on a
usage error; an error is one line on stderr (``chunkfs: error: …``), never a
traceback; ``--json`` prints a machine-readable result on stdout.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from chunkfs.cli.main import build_parser
from chunkfs.repo import Repository

SMALL_CHUNKS = '[chunking]\nchunk_size = "64KiB"\nmin_chunk = "4KiB"\n[packs]\ntarget_size = "1MiB"\n'


def chunkfs(*args: str, env: dict | None = None, ok: bool | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; ``ok=True`` asserts exit 0, ``ok=False`` asserts a one-line error and no traceback."""
    run_env = {k: v for k, v in os.environ.items() if k != "CHUNKFS_REPO"}
    run_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "chunkfs", *args], capture_output=True, text=True, env=run_env, timeout=300
    )
    if ok is True:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    if ok is False:
        assert done.returncode != 0, f"{args}: should have failed"
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, f"not one line:\n{done.stderr}"
        assert done.stderr.startswith("chunkfs: error: "), done.stderr
    return done


@pytest.fixture
def repo(tmp_path) -> Path:
    """An empty repository with small chunks (made with the library: ``init`` has its own tests)."""
    path = tmp_path / "repo"
    Repository.create(path).close()
    (path / "chunkfs.toml").write_text(SMALL_CHUNKS)
    return path


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    """A run directory with two checkpoints (safetensors + torch.save); only the head changes."""
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.weight": torch.randn(256, 256, generator=g) for i in range(4)}
    sd["head.weight"] = torch.randn(64, 256, generator=g)
    run = tmp_path / "src" / "run1"
    for step in (100, 200):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        safetensors.torch.save_file(sd, str(d / "model.safetensors"))
        torch.save({"step": step, "model": sd}, d / "training_state.pt")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        sd = {**sd, "head.weight": sd["head.weight"] + 0.01}
    return run


def same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files), cmp.report()
    for sub in cmp.common_dirs:
        same_tree(a / sub, b / sub)
    for name in cmp.common_files:  # dircmp compares shallowly: compare the bytes
        assert filecmp.cmp(a / name, b / name, shallow=False), name


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_a_repository(tmp_path):
    done = chunkfs("init", str(tmp_path / "r"), "--json", ok=True)
    result = json.loads(done.stdout)
    repo = (tmp_path / "r").resolve()
    assert result == {"repository": str(repo), "hot": str(repo / "hot")}
    assert (tmp_path / "r" / "chunkfs.toml").is_file() and (tmp_path / "r" / "index" / "data.mdb").is_file()


def test_init_with_a_separate_hot_tier(tmp_path):
    chunkfs("init", str(tmp_path / "r"), "--hot", str(tmp_path / "nvme"), ok=True)
    text = (tmp_path / "r" / "chunkfs.toml").read_text()
    assert str((tmp_path / "nvme").resolve()) in text


def test_init_refuses_to_overwrite_a_repository(repo):
    config_before = (repo / "chunkfs.toml").read_bytes()
    done = chunkfs("init", str(repo), ok=False)
    assert done.returncode == 1 and "already exists" in done.stderr
    assert (repo / "chunkfs.toml").read_bytes() == config_before


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious").write_text("keep me")
    done = chunkfs("init", str(tmp_path / "d"), ok=False)
    assert done.returncode == 1 and "not empty" in done.stderr
    assert os.listdir(tmp_path / "d") == ["precious"]


def test_init_on_a_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert chunkfs("init", str(tmp_path / "f"), ok=False).returncode == 1


# -- import / export / stats / index rebuild ------------------------------------------------------


def test_import_export_round_trip(tmp_path, repo, checkpoints):
    done = chunkfs("import", "--repo", str(repo), str(checkpoints), "/llama/run1", "--json", ok=True)
    result = json.loads(done.stdout)
    sizes = [p.stat().st_size for p in checkpoints.rglob("*") if p.is_file()]
    assert result == {"files": 6, "directories": 3, "symlinks": 0, "bytes": sum(sizes)}
    out = tmp_path / "out"
    out.mkdir()
    done = chunkfs("export", "--repo", str(repo), "/llama/run1", str(out), "--json", ok=True)
    assert json.loads(done.stdout)["bytes"] == sum(sizes)
    same_tree(checkpoints, out / "run1")


def test_import_and_export_print_a_summary(tmp_path, repo, checkpoints):
    done = chunkfs("import", "--repo", str(repo), str(checkpoints / "checkpoint-100"), "/c", ok=True)
    assert done.stdout.startswith("imported 3 files, 1 directories")
    done = chunkfs("export", "--repo", str(repo), "/c/model.safetensors", str(tmp_path / "m"), ok=True)
    assert done.stdout.startswith("exported 1 files")
    assert filecmp.cmp(checkpoints / "checkpoint-100" / "model.safetensors", tmp_path / "m", shallow=False)


def test_repository_from_the_environment(tmp_path, repo, checkpoints):
    src = checkpoints / "checkpoint-100" / "trainer_state.json"
    chunkfs("import", str(src), "/state.json", env={"CHUNKFS_REPO": str(repo)}, ok=True)
    done = chunkfs("stats", "--json", env={"CHUNKFS_REPO": str(repo)}, ok=True)
    assert json.loads(done.stdout)["logical_bytes"] == src.stat().st_size


STATS_KEYS = {
    "files", "logical_bytes", "unique_bytes", "stored_bytes", "chunks", "packs", "pack_bytes",
    "packs_by_tier", "bytes_by_tier", "index_bytes", "dedup_ratio", "compression_ratio", "stored_fraction",
}  # fmt: skip


def test_stats_json_keys_and_values(repo, checkpoints):
    empty = json.loads(chunkfs("stats", "--repo", str(repo), "--json", ok=True).stdout)
    assert set(empty) == STATS_KEYS
    assert (empty["logical_bytes"], empty["chunks"], empty["packs"], empty["files"]) == (0, 0, 0, 1)

    chunkfs("import", "--repo", str(repo), str(checkpoints), "/a/run1", ok=True)
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/b/run1", ok=True)  # the same bytes again
    s = json.loads(chunkfs("stats", "--repo", str(repo), "--json", ok=True).stdout)
    logical = 2 * sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
    assert s["logical_bytes"] == logical
    assert s["files"] == 1 + 2 * (1 + 1 + 2 + 6)  # root, a|b, run1, 2 checkpoint dirs, 6 files
    # the copy is free and the second checkpoint shares all but its head: well over 2x dedup
    assert s["dedup_ratio"] > 3.0
    assert s["dedup_ratio"] == round(logical / s["unique_bytes"], 4)
    assert s["compression_ratio"] == round(s["unique_bytes"] / s["stored_bytes"], 4)
    assert s["stored_fraction"] == round(s["stored_bytes"] / logical, 4)
    assert s["packs_by_tier"] == {"hot": s["packs"]} and s["pack_bytes"] > s["stored_bytes"]
    assert s["index_bytes"] > 0 and s["chunks"] > 0


def test_stats_table(repo):
    done = chunkfs("stats", "--repo", str(repo), ok=True)
    for label in ("logical", "stored", "dedup ratio", "chunks", "packs"):
        assert label in done.stdout


def test_index_rebuild_gives_the_same_export(tmp_path, repo, checkpoints):
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1", ok=True)
    before = json.loads(chunkfs("stats", "--repo", str(repo), "--json", ok=True).stdout)

    with Repository(repo) as r, r.index.write() as t:  # the index loses every chunk entry
        t.clear_chunk_index()
    assert json.loads(chunkfs("stats", "--repo", str(repo), "--json", ok=True).stdout)["chunks"] == 0

    done = chunkfs("index", "rebuild", "--repo", str(repo), "--json", ok=True)
    result = json.loads(done.stdout)
    assert result == {
        "packs": before["packs"], "chunks": before["chunks"],
        "unsealed_packs": 0, "damaged": [], "missing_chunks": 0,
    }  # fmt: skip
    after = json.loads(chunkfs("stats", "--repo", str(repo), "--json", ok=True).stdout)
    assert {k: after[k] for k in ("chunks", "unique_bytes", "stored_bytes", "packs")} == {
        k: before[k] for k in ("chunks", "unique_bytes", "stored_bytes", "packs")
    }
    out = tmp_path / "out"
    out.mkdir()
    chunkfs("export", "--repo", str(repo), "/run1", str(out), ok=True)
    same_tree(checkpoints, out / "run1")


def test_index_rebuild_reports_a_damaged_pack_and_exits_1(repo, checkpoints):
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1", ok=True)
    pack = sorted((repo / "hot").rglob("*.pack"))[0]
    data = bytearray(pack.read_bytes())
    data[-60] ^= 0xFF  # the last footer entry: the footer checksum no longer matches
    pack.write_bytes(bytes(data))
    done = chunkfs("index", "rebuild", "--repo", str(repo))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"pack packs/{pack.parent.name}/{pack.name}: footer checksum mismatch" in done.stderr
    assert done.stdout.startswith("rebuilt the index from")


# -- help and usage -----------------------------------------------------------------------------


def _command_paths(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


COMMANDS = _command_paths(build_parser())


def test_every_documented_command_is_found():
    for command in [("init",), ("import",), ("export",), ("stats",), ("index",), ("index", "rebuild")]:
        assert command in COMMANDS


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "chunkfs")
def test_help_on_every_command(command):
    done = chunkfs(*command, "--help", ok=True)
    assert done.stdout.startswith("usage: chunkfs") and done.stderr == ""


def test_version():
    assert chunkfs("--version", ok=True).stdout.startswith("chunkfs ")


@pytest.mark.parametrize(
    "args",
    [
        (),  # no command
        ("frobnicate",),
        ("init",),  # missing REPO
        ("import", "--repo", "r", "only-src"),
        ("export", "--repo"),  # option without its value
        ("stats", "--no-such-option"),
        ("index",),  # missing ACTION
        ("index", "rebuild", "extra"),
    ],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_usage_errors_exit_2(args):
    done = chunkfs(*args)
    assert done.returncode == 2 and "usage: chunkfs" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [("stats",), ("import", "x", "/x"), ("export", "/x", "x"), ("index", "rebuild")],
    ids=lambda a: a[0],
)
def test_missing_repo_is_a_one_line_usage_error(args):
    done = chunkfs(*args, ok=False)
    assert done.returncode == 2
    assert "--repo" in done.stderr and "CHUNKFS_REPO" in done.stderr


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "toml, names",
    [
        ('[chunking]\nchunk_sise = "1MiB"\n', "chunking.chunk_sise"),
        ('[chunking]\nchunk_size = "huge"\n', "chunking.chunk_size"),
        ('[chunking]\nchunk_size = "1KiB"\n', "chunking.chunk_size"),
        ("[compression]\nlevel = 99\n", "compression.level"),
        ("[packs]\nmax_open = 0\n", "packs.max_open"),
        ('[tier]\nhot = "x"\n', "[tier]"),
        ("[chunking\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_the_key(repo, toml, names):
    (repo / "chunkfs.toml").write_text(toml)
    done = chunkfs("stats", "--repo", str(repo), ok=False)
    assert done.returncode == 1
    assert names in done.stderr and "chunkfs.toml" in done.stderr


@pytest.mark.parametrize("command", ["import", "export", "index rebuild"])
def test_every_repository_command_checks_the_config(tmp_path, repo, command):
    (repo / "chunkfs.toml").write_text("[compression]\nlevel = 99\n")
    args = {
        "import": ["import", str(repo / "chunkfs.toml"), "/x"],
        "export": ["export", "/x", str(tmp_path / "x")],
        "index rebuild": ["index", "rebuild"],
    }[command]
    done = chunkfs(*args, "--repo", str(repo), ok=False)
    assert done.returncode == 1 and "compression.level: must be between -7 and 22" in done.stderr


def test_not_a_repository(tmp_path):
    done = chunkfs("stats", "--repo", str(tmp_path / "nowhere"), ok=False)
    assert done.returncode == 1 and "not a chunkfs repository" in done.stderr


def test_missing_source_and_repository_path(tmp_path, repo):
    done = chunkfs("import", "--repo", str(repo), str(tmp_path / "no-such-file"), "/x", ok=False)
    assert done.returncode == 1 and "no-such-file" in done.stderr
    done = chunkfs("export", "--repo", str(repo), "/no/such/path", str(tmp_path / "x"), ok=False)
    assert done.returncode == 1 and "no such file" in done.stderr


def test_export_into_a_missing_directory_is_a_one_line_error(tmp_path, repo, checkpoints):
    state = checkpoints / "checkpoint-100" / "trainer_state.json"
    chunkfs("import", "--repo", str(repo), str(state), "/s", ok=True)
    done = chunkfs("export", "--repo", str(repo), "/s", str(tmp_path / "missing" / "dir" / "s"), ok=False)
    assert done.returncode == 1 and "missing/dir" in done.stderr


def test_second_writer_is_refused_while_the_repository_is_in_use(tmp_path, repo, checkpoints):
    with Repository(repo):  # held, as a mount would
        done = chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1", ok=False)
        assert done.returncode == 1 and "in use" in done.stderr
        assert json.loads(chunkfs("stats", "--repo", str(repo), "--json", ok=True).stdout)["chunks"] == 0
