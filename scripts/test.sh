#!/usr/bin/env bash
# The test command of the README (and of .ci/run): installs what it needs into
# ./.venv, lints, and runs the test suite. Extra arguments go to pytest.
#
# Slow tests (@pytest.mark.slow, skipped by tests/conftest.py unless selected with
# -m: a plain `pip install` in a new venv, demo-length training, QAT, multi-worker
# training, ...) run in a second pytest run after the default suite passed, as
# MVIT3_SLOW says:
#   auto (default)  when CI is set (CI runs .ci/run with CI=true), no pytest arguments
#                   were given, and the time used so far leaves MVIT3_SLOW_MINUTES
#                   (default 45) of the MVIT3_BUDGET_MINUTES (default 90, CI's limit)
#   1               always (with the same pytest arguments)
#   0               never
# A pytest run that fails, or that collects no test (exit 5), fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
slow=${MVIT3_SLOW:-auto}
case "$slow" in
  auto | 0 | 1) ;;
  *) echo "MVIT3_SLOW must be auto, 1 or 0, not '$slow'" >&2 && exit 2 ;;
esac
bash scripts/bootstrap.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
ruff check mvit3_keras training quantization examples tests benchmarks scripts mvit3_cli.py

run_pytest() {
  local rc=0
  python -m pytest -n 2 --dist loadgroup -q "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    return 1
  fi
  return "$rc"
}

run_pytest "$@"

if [ "$slow" = auto ]; then
  left=$((${MVIT3_BUDGET_MINUTES:-90} - SECONDS / 60))
  if [ -n "${CI:-}" ] && [ "$CI" != false ] && [ $# -eq 0 ] \
    && [ "$left" -ge "${MVIT3_SLOW_MINUTES:-45}" ]; then
    slow=1
  else
    slow=0
    echo "slow tests not run (MVIT3_SLOW=auto: CI='${CI:-}', $# pytest argument(s)," \
      "$left of ${MVIT3_BUDGET_MINUTES:-90} minutes left); MVIT3_SLOW=1 runs them" >&2
  fi
fi
if [ "$slow" = 1 ]; then
  echo "slow tests (after $((SECONDS / 60)) minutes):"
  run_pytest -m slow "$@"
fi
