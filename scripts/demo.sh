#!/usr/bin/env bash
# The main job of the README: installs what it needs into ./.venv and runs the
# end-to-end demo. Extra arguments go to `mvit3 demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2
mvit3 demo "$@"
