"""docs/configuration.md lists every setting exactly as chunkfs/config.py defines it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import configdoc  # noqa: E402


def test_settings_table_is_current():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert configdoc.table() in text, "docs/configuration.md is stale: run tools/configdoc.py and paste the table"
