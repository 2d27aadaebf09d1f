#!/usr/bin/env bash
# Set up (tools/setup.sh), then run the demo: a repository mounted at ./models
# with a real PyTorch checkpoint series written through it. Arguments go to tools/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python tools/demo.py "$@"
