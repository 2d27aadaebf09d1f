#!/usr/bin/env bash
# Set up (tools/setup.sh), lint (ruff, configured in pyproject.toml), then run the whole test
# suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
