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
#                   (default 20) of the MVIT3_BUDGET_MINUTES (default 90, CI's limit);
#                   they then run longest first, and a slow test that would end
#                   later than MVIT3_MARGIN_MINUTES (default 8) before the budget's
#                   end is skipped with that reason (tests/conftest.py)
#   1               always (with the same pytest arguments)
#   0               never
# A pytest run that fails, or that collects no test (exit 5), fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
slow=${MVIT3_SLOW:-auto}
budgeted=0
case "$slow" in
  auto | 0 | 1) ;;
  *) echo "MVIT3_SLOW must be auto, 1 or 0, not '$slow'" >&2 && exit 2 ;;
esac
bash scripts/bootstrap.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
ruff check mvit3_keras training quantization examples tests benchmarks scripts mvit3_cli.py

limit=()  # the slow run under CI's budget: a hard stop after its deadline
run_pytest() {
  local rc=0
  "${limit[@]}" python -m pytest -n 2 --dist loadgroup -q "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    return 1
  elif [ "$rc" -eq 124 ]; then
    echo "pytest ran past the time budget's deadline and was stopped: failing" >&2
  fi
  return "$rc"
}

run_pytest "$@"

if [ "$slow" = auto ]; then
  left=$((${MVIT3_BUDGET_MINUTES:-90} - SECONDS / 60))
  if [ -n "${CI:-}" ] && [ "$CI" != false ] && [ $# -eq 0 ] \
    && [ "$left" -ge "${MVIT3_SLOW_MINUTES:-20}" ]; then
    slow=1
    budgeted=1
  else
    slow=0
    echo "slow tests not run (MVIT3_SLOW=auto: CI='${CI:-}', $# pytest argument(s)," \
      "$left of ${MVIT3_BUDGET_MINUTES:-90} minutes left); MVIT3_SLOW=1 runs them" >&2
  fi
fi
if [ "$slow" = 1 ]; then
  echo "slow tests (after $((SECONDS / 60)) minutes):"
  if [ "$budgeted" = 1 ]; then
    # tests/conftest.py skips a slow test that would not end before the deadline;
    # one that overruns its estimate is stopped 4 minutes after the deadline.
    usable=$((left - ${MVIT3_MARGIN_MINUTES:-8}))
    export MVIT3_DEADLINE=$(($(date +%s) + usable * 60))
    limit=(timeout --kill-after=60 $(((usable + 4) * 60)))
  fi
  run_pytest -m slow "$@"
fi
