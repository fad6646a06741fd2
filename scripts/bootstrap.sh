#!/usr/bin/env bash
# Creates ./.venv (if needed) and installs the package with the given extras.
# Used by scripts/demo.sh and scripts/test.sh; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# PyTorch is only needed to read .pt checkpoints; the CPU build is enough.
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0" 2>/dev/null \
    || echo "warning: PyTorch not installed; .pt checkpoint tests will be skipped" >&2
fi
python -m pip install -q -e ".[test,data,litert]"
