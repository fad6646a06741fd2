#!/usr/bin/env bash
# The test command of the README (and of .ci/run): installs what it needs into
# ./.venv, lints, and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
ruff check mvit3_keras training quantization tests benchmarks
set +e
python -m pytest -n 2 --dist loadgroup -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
