"""The ``chunkfs`` command line, run as users run it: ``python -m chunkfs …`` in a subprocess.

Contract (DESIGN.md, "The command line"): exit 0 on success, and on an error the exit code of
its kind (chunkfs/errors.py, the table in docs/operations.md: 2 usage, 3 config, 4 not found,
5 already exists, 6 damage, …, 1 anything else — a local path that cannot be used, say); an
error is one line on stderr (``chunkfs: error: …``), never a traceback; ``--json`` prints a
machine-readable result on stdout. ``helpers.cli.chunkfs(..., expect=Kind)`` checks all of it.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers.cli import chunkfs, cli_json
from helpers.repos import same_tree

from chunkfs.cli.main import build_parser
from chunkfs.errors import AlreadyExists, ConfigError, Conflict, CorruptData, NotFound, UsageError
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name

SMALL_CHUNKS = '[chunking]\nchunk_size = "64KiB"\nmin_chunk = "4KiB"\n[packs]\ntarget_size = "1MiB"\n'


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


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_a_repository(tmp_path):
    done = chunkfs("init", str(tmp_path / "r"), "--json")
    result = json.loads(done.stdout)
    repo = (tmp_path / "r").resolve()
    assert result == {"repository": str(repo), "hot": str(repo / "hot")}
    assert (tmp_path / "r" / "chunkfs.toml").is_file() and (tmp_path / "r" / "index" / "data.mdb").is_file()


def test_init_with_a_separate_hot_tier(tmp_path):
    chunkfs("init", str(tmp_path / "r"), "--hot", str(tmp_path / "nvme"))
    text = (tmp_path / "r" / "chunkfs.toml").read_text()
    assert str((tmp_path / "nvme").resolve()) in text


def test_init_refuses_to_overwrite_a_repository(repo):
    config_before = (repo / "chunkfs.toml").read_bytes()
    done = chunkfs("init", str(repo), expect=AlreadyExists)
    assert "already exists" in done.stderr
    assert (repo / "chunkfs.toml").read_bytes() == config_before


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious").write_text("keep me")
    done = chunkfs("init", str(tmp_path / "d"), expect=AlreadyExists)
    assert "not empty" in done.stderr
    assert os.listdir(tmp_path / "d") == ["precious"]


def test_init_on_a_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    chunkfs("init", str(tmp_path / "f"), expect=1)  # a local path that cannot be used (an OSError): 1


# -- import / export / stats / index rebuild ------------------------------------------------------


def test_import_export_round_trip(tmp_path, repo, checkpoints):
    done = chunkfs("import", "--repo", str(repo), str(checkpoints), "/llama/run1", "--json")
    result = json.loads(done.stdout)
    sizes = [p.stat().st_size for p in checkpoints.rglob("*") if p.is_file()]
    assert result == {"files": 6, "directories": 3, "symlinks": 0, "bytes": sum(sizes)}
    out = tmp_path / "out"
    out.mkdir()
    done = chunkfs("export", "--repo", str(repo), "/llama/run1", str(out), "--json")
    assert json.loads(done.stdout)["bytes"] == sum(sizes)
    same_tree(checkpoints, out / "run1")


def test_import_and_export_print_a_summary(tmp_path, repo, checkpoints):
    done = chunkfs("import", "--repo", str(repo), str(checkpoints / "checkpoint-100"), "/c")
    assert done.stdout.startswith("imported 3 files, 1 directories")
    done = chunkfs("export", "--repo", str(repo), "/c/model.safetensors", str(tmp_path / "m"))
    assert done.stdout.startswith("exported 1 files")
    assert filecmp.cmp(checkpoints / "checkpoint-100" / "model.safetensors", tmp_path / "m", shallow=False)


def test_repository_from_the_environment(tmp_path, repo, checkpoints):
    src = checkpoints / "checkpoint-100" / "trainer_state.json"
    chunkfs("import", str(src), "/state.json", env={"CHUNKFS_REPO": str(repo)})
    done = chunkfs("stats", "--json", env={"CHUNKFS_REPO": str(repo)})
    assert json.loads(done.stdout)["logical_bytes"] == src.stat().st_size


STATS_KEYS = {
    "files", "logical_bytes", "versions", "versions_bytes", "unique_bytes", "current_unique_bytes",
    "history_unique_bytes", "unreferenced_bytes", "stored_bytes", "condemned_bytes", "chunks", "packs",
    "pack_bytes", "overhead_bytes", "dead_bytes", "packs_by_tier", "bytes_by_tier", "index_bytes",
    "dedup_ratio", "compression_ratio", "stored_fraction", "encodings",
}  # fmt: skip


def assert_stats_add_up(s: dict) -> None:
    """The identities that ``chunkfs stats --help`` and ops/stats.py state."""
    assert s["unique_bytes"] == s["current_unique_bytes"] + s["history_unique_bytes"] + s["unreferenced_bytes"]
    assert s["pack_bytes"] == s["stored_bytes"] + s["condemned_bytes"] + s["overhead_bytes"] + s["dead_bytes"]
    assert min(s[k] for k in STATS_KEYS if k.endswith("_bytes")) >= 0, s
    assert s["current_unique_bytes"] <= s["logical_bytes"] <= s["versions_bytes"]
    assert s["stored_bytes"] <= s["unique_bytes"] and s["dedup_ratio"] >= 1.0
    referenced = s["current_unique_bytes"] + s["history_unique_bytes"]
    assert s["dedup_ratio"] == round(s["versions_bytes"] / referenced, 4) if referenced else s["dedup_ratio"] == 1.0
    assert s["stored_fraction"] == (round(s["pack_bytes"] / s["versions_bytes"], 4) if s["versions_bytes"] else 0)


def test_stats_json_keys_and_values(repo, checkpoints):
    empty = cli_json("stats", "--repo", str(repo))
    assert set(empty) == STATS_KEYS
    assert (empty["logical_bytes"], empty["chunks"], empty["packs"], empty["files"]) == (0, 0, 0, 1)

    chunkfs("import", "--repo", str(repo), str(checkpoints), "/a/run1")
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/b/run1")  # the same bytes again
    s = cli_json("stats", "--repo", str(repo))
    logical = 2 * sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
    assert s["logical_bytes"] == s["versions_bytes"] == logical
    assert s["files"] == 1 + 2 * (1 + 1 + 2 + 6)  # root, a|b, run1, 2 checkpoint dirs, 6 files
    # the copy is free and the second checkpoint shares all but its head: well over 2x dedup
    assert s["dedup_ratio"] > 3.0 and s["history_unique_bytes"] == s["unreferenced_bytes"] == 0
    assert s["compression_ratio"] == round(s["unique_bytes"] / s["stored_bytes"], 4)
    assert s["packs_by_tier"] == {"hot": s["packs"]} and s["pack_bytes"] > s["stored_bytes"]
    assert_stats_add_up(s)
    assert s["index_bytes"] > 0 and s["chunks"] > 0
    assert sum(e["chunks"] for e in s["encodings"].values()) == s["chunks"]
    assert sum(e["raw"] for e in s["encodings"].values()) == s["unique_bytes"]
    assert sum(e["stored"] for e in s["encodings"].values()) == s["stored_bytes"]


def test_stats_add_up_with_history_overwrites_and_deletes(repo, checkpoints, tmp_path):
    """A repository with history, an overwrite that lowers what the tree holds, a delete and a gc:
    unique never exceeds what the definitions allow, and every identity holds at each step."""
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    chunkfs("import", "--repo", str(repo), str(blob), "/run1/notes.bin")
    steps = [cli_json("stats", "--repo", str(repo))]
    blob.write_bytes(os.urandom(1000))
    chunkfs("import", "--repo", str(repo), str(blob), "/run1/notes.bin")  # overwritten: the old version stays
    steps.append(cli_json("stats", "--repo", str(repo)))
    assert steps[1]["history_unique_bytes"] > 0 and steps[1]["versions"] == steps[0]["versions"] + 1
    assert steps[1]["versions_bytes"] == steps[1]["logical_bytes"] + 300_000, "the old version is history"
    with Repository(repo) as r:
        r.ns.unlink(r.ns.resolve("/run1/checkpoint-200"), b"training_state.pt")
    steps.append(cli_json("stats", "--repo", str(repo)))
    chunkfs("gc", "--repo", str(repo), "--keep-within", "0s", "--grace", "0s")
    steps.append(cli_json("stats", "--repo", str(repo)))
    chunkfs("gc", "--repo", str(repo), "--keep-within", "0s", "--grace", "0s", "--repack-below", "1")
    steps.append(cli_json("stats", "--repo", str(repo)))
    for s in steps:
        assert_stats_add_up(s)
    assert steps[3]["history_unique_bytes"] == 0 and steps[3]["versions_bytes"] == steps[3]["logical_bytes"]
    assert steps[4]["dead_bytes"] == 0 and steps[4]["condemned_bytes"] == 0 and steps[4]["unreferenced_bytes"] == 0


def test_stats_table(repo):
    done = chunkfs("stats", "--repo", str(repo))
    for label in ("logical", "stored", "dedup ratio", "chunks", "packs"):
        assert label in done.stdout


def test_index_rebuild_gives_the_same_export(tmp_path, repo, checkpoints):
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1")
    before = cli_json("stats", "--repo", str(repo))

    with Repository(repo) as r, r.index.write() as t:  # the index loses every chunk entry
        t.clear_chunk_index()
    assert cli_json("stats", "--repo", str(repo))["chunks"] == 0

    done = chunkfs("index", "rebuild", "--repo", str(repo), "--json")
    result = json.loads(done.stdout)
    assert result == {
        "index_damaged": "", "moved_to": "", "salvaged": {}, "dangling": 0,
        "packs": before["packs"], "chunks": before["chunks"],
        "unsealed_packs": 0, "damaged": [], "missing_chunks": 0,
    }  # fmt: skip
    after = cli_json("stats", "--repo", str(repo))
    assert {k: after[k] for k in ("chunks", "unique_bytes", "stored_bytes", "packs")} == {
        k: before[k] for k in ("chunks", "unique_bytes", "stored_bytes", "packs")
    }
    out = tmp_path / "out"
    out.mkdir()
    chunkfs("export", "--repo", str(repo), "/run1", str(out))
    same_tree(checkpoints, out / "run1")


def test_index_rebuild_reports_a_damaged_pack_and_exits_with_the_damage_code(repo, checkpoints):
    chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1")
    pack = min((repo / "hot").rglob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[-60] ^= 0xFF  # the last footer entry: the footer checksum no longer matches
    pack.write_bytes(bytes(data))
    done = chunkfs("index", "rebuild", "--repo", str(repo), expect=CorruptData)
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
    done = chunkfs(*command, "--help")
    assert done.stdout.startswith("usage: chunkfs") and done.stderr == ""


def test_version():
    assert chunkfs("--version").stdout.startswith("chunkfs ")


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
    done = chunkfs(*args, expect=None)  # argparse's message: the usage, then the error
    assert done.returncode == UsageError.exit_code and "usage: chunkfs" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [("stats",), ("import", "x", "/x"), ("export", "/x", "x"), ("index", "rebuild")],
    ids=lambda a: a[0],
)
def test_missing_repo_is_a_one_line_usage_error(args):
    done = chunkfs(*args, expect=UsageError)
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
    done = chunkfs("stats", "--repo", str(repo), expect=ConfigError)
    assert names in done.stderr and "chunkfs.toml" in done.stderr


@pytest.mark.parametrize("command", ["import", "export", "index rebuild"])
def test_every_repository_command_checks_the_config(tmp_path, repo, command):
    (repo / "chunkfs.toml").write_text("[compression]\nlevel = 99\n")
    args = {
        "import": ["import", str(repo / "chunkfs.toml"), "/x"],
        "export": ["export", "/x", str(tmp_path / "x")],
        "index rebuild": ["index", "rebuild"],
    }[command]
    done = chunkfs(*args, "--repo", str(repo), expect=ConfigError)
    assert "compression.level: must be between -7 and 22" in done.stderr


def test_not_a_repository(tmp_path):
    done = chunkfs("stats", "--repo", str(tmp_path / "nowhere"), expect=NotFound)
    assert "not a chunkfs repository" in done.stderr


def test_missing_source_and_repository_path(tmp_path, repo):
    done = chunkfs("import", "--repo", str(repo), str(tmp_path / "no-such-file"), "/x", expect=NotFound)
    assert "no-such-file" in done.stderr
    done = chunkfs("export", "--repo", str(repo), "/no/such/path", str(tmp_path / "x"), expect=NotFound)
    assert "no such file" in done.stderr


def test_export_into_a_missing_directory_is_a_one_line_error(tmp_path, repo, checkpoints):
    state = checkpoints / "checkpoint-100" / "trainer_state.json"
    chunkfs("import", "--repo", str(repo), str(state), "/s")
    # the local directory cannot be written to (an OSError): 1
    done = chunkfs("export", "--repo", str(repo), "/s", str(tmp_path / "missing" / "dir" / "s"), expect=1)
    assert "missing/dir" in done.stderr


def test_import_writes_beside_the_process_that_holds_the_repository(tmp_path, repo, checkpoints):
    """``import`` while a mount holds the repository writes beside it (a shared writer); the
    commands that must be the repository's only writer are still refused."""
    with Repository(repo) as held:  # held, as a mount would
        chunkfs("import", "--repo", str(repo), str(checkpoints), "/run1")
        assert cli_json("stats", "--repo", str(repo))["chunks"] > 0
        assert held.ns.resolve("/run1")  # the holder sees what the import committed
        done = chunkfs("index", "rebuild", "--repo", str(repo), expect=Conflict)
        assert "in use" in done.stderr


def test_piped_tables_are_never_cut(repo, tmp_path):
    """Tables piped to another program (log, find, du, tag --list, drill --history) were cut at 80
    columns: paths showed as /llama-tiny/256…. Piped output carries every value whole."""
    deep = "/llama-tiny/" + "x" * 120 + "/run-with-a-long-name/checkpoint-256"
    src = tmp_path / "one"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(5000))
    chunkfs("import", "--repo", str(repo), str(src), deep)
    run = deep.rsplit("/", 1)[0]
    for args, whole in ((("log", f"{deep}/model.bin"), deep), (("du", deep), run), (("find",), deep)):
        out = chunkfs(*args, "--repo", str(repo)).stdout
        assert whole in out and "…" not in out, (args, out)
    chunkfs("tag", "a-tag-with-a-rather-long-name-to-make-the-row-wider", "--repo", str(repo))
    assert "a-tag-with-a-rather-long-name-to-make-the-row-wider" in chunkfs("tag", "--list", "--repo", str(repo)).stdout  # fmt: skip


def test_fsck_counts_one_flipped_byte_as_one_damaged_chunk(repo, tmp_path):
    """One flipped byte in a chunk that two files and two versions share: one problem, one damaged
    chunk per file, the chunk and pack named once, and no advice to run the command being run."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(40_000)
    (src / "a.bin").write_bytes(data)
    (src / "b.bin").write_bytes(data)
    chunkfs("import", "--repo", str(repo), str(src), "/src")
    chunkfs("import", "--repo", str(repo), str(src / "a.bin"), "/src/a.bin")  # a second version
    with Repository(repo, writable=False) as r:
        with r.index.read() as t:
            ((chunk, loc),) = [(c, loc) for c, loc in t.chunks()]
        path = r.hot.path(pack_name(loc.pack))
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 7] ^= 0x40
    path.write_bytes(bytes(raw))
    done = chunkfs("fsck", "--repo", str(repo), expect=CorruptData)
    assert done.stdout.count(chunk.hex()) == 1 and done.stdout.count(loc.pack.hex()) == 1, done.stdout
    assert "run `chunkfs fsck`" not in done.stdout + done.stderr
    assert done.stdout.count("(1 damaged chunk)") == 0 and done.stdout.count("1 damaged chunk)") == 2, done.stdout
    assert done.stderr.strip() == (
        "chunkfs: error: 1 problem found; `chunkfs fsck --repair` fetches damaged chunks from replicas, "
        "or restore the affected files"
    )
    done = chunkfs("fsck", "--repo", str(repo), "--json", expect=None)  # the report on stdout, nothing on stderr
    assert done.returncode == CorruptData.exit_code
    report = json.loads(done.stdout)
    assert len(report["problems"]) == 1 and [a["chunks"] for a in report["affected"]] == [1, 1]
