#!/usr/bin/env bash
# One command for every benchmark (speed against timm / PyTorch, LiteRT latency, training):
#
#   bash benchmarks/run_all.sh            # full run (all pairs / variants; an hour or more on 2 cores)
#   bash benchmarks/run_all.sh --quick    # the headline pairs and fewer rounds (~30-40 min)
#
# 1. ./.venv (ours) via scripts/bootstrap.sh when missing;
# 2. benchmarks/.peer-venv (the peer: timm, PyTorch, ONNX, ONNX Runtime), created once:
#      pip install torch==2.14.1 torchvision==0.29.1 timm onnx onnxruntime
#    (pip takes the torch wheels from this machine's disk; a failed install is reported with
#    pip's own error and the run goes on with our side only);
# 3. every script in turn, each writing benchmarks/results/<name>.json, then the PNG plot
#    benchmarks/results/latency_vs_macs.png. Logs: benchmarks/results/logs/.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
RESULTS=benchmarks/results
LOGS=$RESULTS/logs
mkdir -p "$LOGS"

if [ ! -x .venv/bin/python ]; then
  bash scripts/bootstrap.sh || { echo "could not create ./.venv (scripts/bootstrap.sh failed)" >&2; exit 1; }
fi
PY=.venv/bin/python

PEER=benchmarks/.peer-venv
PEER_PY=$PEER/bin/python
if ! "$PEER_PY" -c "import timm, torch, onnx, onnxruntime" >/dev/null 2>&1; then
  echo "== creating the peer environment $PEER (torch 2.14.1, torchvision 0.29.1, timm, onnx, onnxruntime)"
  python3 -m venv "$PEER" \
    && "$PEER_PY" -m pip install torch==2.14.1 torchvision==0.29.1 timm onnx onnxruntime \
      >"$LOGS/peer_install.log" 2>&1
  if ! "$PEER_PY" -c "import timm, torch, onnx, onnxruntime" >/dev/null 2>&1; then
    echo "!! peer install FAILED; pip's last lines ($LOGS/peer_install.log):" >&2
    tail -n 25 "$LOGS/peer_install.log" >&2 || true
    echo "!! continuing with our side only (--peer-python none)" >&2
    PEER_PY=none
  fi
fi
PEER_ARG=(--peer-python "$PEER_PY")

FAILED=()
run() {  # run NAME ARGS...: one benchmark, its log in $LOGS/NAME.log
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" >"$LOGS/$name.log" 2>&1; then
    grep -E '^(\||###|\[equivalence\]|wrote )' "$LOGS/$name.log" || true
    echo "   ($((SECONDS - start)) s)"
  else
    echo "!! $name failed (exit $?): tail of $LOGS/$name.log" >&2
    tail -n 20 "$LOGS/$name.log" >&2
    FAILED+=("$name")
  fi
}

HEADLINE=mobilevitv3_050:mobilevitv2_050,mobilevitv3_xxs:mobilevit_xxs,mobilevit_xxs,mobilevitv2_050
if [ "$QUICK" = 1 ]; then
  INF_PAIRS=$HEADLINE,mobilevit_xs,mobilevit_s,mobilevitv2_100
  ROUNDS=(--rounds 3)
else
  INF_PAIRS=$HEADLINE,mobilevit_xs,mobilevit_s,mobilevitv2_075,mobilevitv2_100,mobilevitv2_125,mobilevitv2_150,mobilevitv2_175,mobilevitv2_200
  ROUNDS=()
fi
# every MobileViTv3 variant in TFLite, also in --quick (the plot needs them all)
TFL_MODELS=mobilevitv3_xxs,mobilevitv3_xs,mobilevitv3_s,mobilevitv3_xxs_l2,mobilevitv3_xs_l2,mobilevitv3_s_l2,mobilevitv3_050,mobilevitv3_075,mobilevitv3_100,mobilevitv3_125,mobilevitv3_150,mobilevitv3_175,mobilevitv3_200

run machine_peak "$PY" benchmarks/machine_peak.py "${PEER_ARG[@]}"
run inference "$PY" benchmarks/inference.py --pairs "$INF_PAIRS" --extra-models v3 "${ROUNDS[@]}" "${PEER_ARG[@]}"
run inference_stock_pytorch "$PY" benchmarks/inference.py --pairs "$HEADLINE" --peer-malloc default --xla-models "" "${ROUNDS[@]}" "${PEER_ARG[@]}"
run inference_1thread "$PY" benchmarks/inference.py --pairs "$HEADLINE" --threads 1 --xla-models "" "${ROUNDS[@]}" "${PEER_ARG[@]}"
run tflite_latency "$PY" benchmarks/tflite_latency.py --models "$TFL_MODELS" "${PEER_ARG[@]}"
run litert_vs_onnx "$PY" benchmarks/tflite_latency.py --baselines --quants fp32 --no-qat "${PEER_ARG[@]}"
if [ "$QUICK" = 1 ]; then
  run variant_latency "$PY" benchmarks/variant_latency.py --models "$TFL_MODELS" --rounds 2
else
  run variant_latency "$PY" benchmarks/variant_latency.py
fi
run scaling "$PY" benchmarks/scaling.py
run litert_profile "$PY" benchmarks/litert_profile.py --models mobilevitv3_xxs,mobilevitv3_050
run training_step "$PY" benchmarks/training_step.py "${ROUNDS[@]}" "${PEER_ARG[@]}"
if [ -f benchmarks/input_pipeline.py ]; then
  run input_pipeline "$PY" benchmarks/input_pipeline.py
else
  echo "== input_pipeline: benchmarks/input_pipeline.py not present, skipped"
fi
run profile_tf "$PY" benchmarks/profile_tf.py
run plot "$PY" benchmarks/plot.py
run summary "$PY" benchmarks/summary.py
cat "$RESULTS/summary.md" 2>/dev/null

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "finished with failures: ${FAILED[*]} (logs in $LOGS)" >&2
  exit 1
fi
echo "all benchmarks done: $RESULTS/*.json, $RESULTS/latency_vs_macs.png, $RESULTS/limits_and_scaling.png"
