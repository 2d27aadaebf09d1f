"""docs/configuration.md lists every setting exactly as chunkfs/config.py defines it."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
configdoc = runpy.run_path(str(ROOT / "tools" / "configdoc.py"))  # a script's functions, without its __main__ part


def test_settings_table_is_current():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert configdoc["table"]() in text, "docs/configuration.md is stale: run tools/configdoc.py and paste the table"
