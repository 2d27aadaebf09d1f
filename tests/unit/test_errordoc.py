"""The exit-code table of docs/operations.md is the one tools/errordoc.py generates from errors.py."""

from __future__ import annotations

import runpy
from pathlib import Path

from chunkfs import errors

ROOT = Path(__file__).resolve().parents[2]
errordoc = runpy.run_path(str(ROOT / "tools" / "errordoc.py"))  # a script's functions, without its __main__ part


def test_operations_md_has_the_generated_table():
    text = (ROOT / "docs" / "operations.md").read_text()
    assert errordoc["table"]() in text, "docs/operations.md is stale: run tools/errordoc.py and paste the table"


def test_every_kind_has_its_own_code():
    kinds = [errors.UsageError, errors.ConfigError, errors.NotFound, errors.AlreadyExists, errors.CorruptData,
             errors.FormatVersionError, errors.BackendUnavailable, errors.NoSpace, errors.Conflict]  # fmt: skip
    codes = [k.exit_code for k in kinds]
    assert len(set(codes)) == len(codes) and errors.ChunkfsError.exit_code not in codes
