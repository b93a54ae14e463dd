#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: idempotent and quick when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.cellseg-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import cellseg" 2>/dev/null; then
  echo "setup: installing cellseg and its pinned dependencies into .venv (about 1-2 minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
