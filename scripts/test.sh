#!/usr/bin/env bash
# Set up .venv if needed, then run the linter and the test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
exec .venv/bin/python -m pytest "$@"
