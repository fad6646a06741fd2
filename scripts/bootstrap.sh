#!/usr/bin/env bash
# Creates ./.venv (if needed) and installs the package editable with the extras
# for development: `test` (pytest, ruff) and `torch` (reading .pt checkpoints; the
# tests compare with the official PyTorch code). Everything the `mvit3` commands
# need is a core dependency (setup.cfg). Used by scripts/demo.sh and
# scripts/test.sh; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# PyTorch (the `torch` extra) is only needed to read .pt checkpoints; the CPU build
# that lies on this machine's disk is enough.
extras="test,torch"
if ! python -c "import torch" >/dev/null 2>&1; then
  if ! python -m pip install -q "torch==2.13.0" 2>/dev/null; then
    echo "warning: PyTorch not installed; .pt checkpoint tests will be skipped" >&2
    extras="test"
  fi
fi
python -m pip install -q -e ".[$extras]"
