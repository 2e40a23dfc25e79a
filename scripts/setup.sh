#!/usr/bin/env bash
# Create/refresh the project-local virtual environment in .venv and install structprune with its test extras.
# The torch CPU pin goes in first: a bare `torch` requirement on a machine without torch would pull a
# multi-GB CUDA build. Users on other platforms install whatever torch their platform needs instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.structprune-installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==${STRUCTPRUNE_TORCH:-2.13.0}"
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$STAMP"
fi
