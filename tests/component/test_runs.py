"""One definition of a run: tiering's pack groups and the registry's runs follow the same
``registry.step_pattern`` (it used to be a hard-coded ``\\d+$`` for pack groups)."""

from __future__ import annotations

import dataclasses
import re

from chunkfs import config
from chunkfs.namespace.registry.keypath import run_of
from chunkfs.repo import Repository


def test_pack_groups_follow_the_configured_step_pattern(tmp_path):
    settings = dataclasses.replace(config.Settings(), registry=config.RegistrySettings(step_pattern=r"^step_(\d+)$"))
    repo = Repository.create(tmp_path / "repo", settings=settings)
    try:
        for path in ("/m/run1/step_5/model.bin", "/m/run-7/notes.bin"):
            parent = 1
            for name in path.strip("/").split("/")[:-1]:
                try:
                    parent, _ = repo.ns.lookup(parent, name.encode())
                except Exception:  # noqa: BLE001 — not there yet
                    parent, _ = repo.ns.mkdir(parent, name.encode(), 0o755, 0, 0)
            ino, _ = repo.ns.mknod(parent, path.rsplit("/", 1)[1].encode(), 0o100644, 0, 0)
            assert repo.ns.group_of(ino) == repo.registry.run_of(path)
        (record,) = repo.registry.find()
        assert record.path == "/m/run1/step_5"
        assert repo.ns.group_of(repo.ns.resolve("/m/run1/step_5/model.bin")) == "/m/run1"
        # with \\d+$ this run directory, whose name ends in a digit, was taken for a checkpoint
        assert repo.ns.group_of(repo.ns.resolve("/m/run-7/notes.bin")) == "/m/run-7"
    finally:
        repo.close()


def test_run_of():
    default = re.compile(config.RegistrySettings().step_pattern)
    assert run_of("/llama/run1/checkpoint-500/model.bin", default) == "/llama/run1"
    assert run_of("/llama/run1/checkpoint-500/global_step500/x", default) == "/llama/run1", "DeepSpeed's layout"
    assert run_of("/llama/run1/checkpoint-1/model.bin", default) == "/llama/run1", "a run named like its first step"
    assert run_of("/scratch/notes.txt", default) == "/scratch"
    assert run_of("/500/x", default) == "/500", "a checkpoint needs a directory above it"
