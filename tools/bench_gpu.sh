#!/usr/bin/env bash
# GPU benchmark of gbw_huge (1026M, full 793,475-entry GBW vocabulary) on one H100/H200.
#
# Prepare once, here: `bash tools/fetch_gpu_wheels.sh` writes .whl/ (git-ignored, ~7 MB): deepspeed (built
# from its sdist), megatron-core cp312, and what deepspeed needs that the device image lacks (hjson,
# pydantic + pydantic-core + annotated-types + typing-inspection). Checked here on 2026-11-26.
# Run on the GPU machine, from the checkout with .whl/ beside it:  bash tools/bench_gpu.sh
#
# Measures, all written under $OUT:
#   adaptive_softmax.json   output/input layers at d=1536 in bf16 (full vs torch's vs our adaptive softmax)
#   train_eager.json        gbw_huge bf16 training step, packed GBW-length sentences, block-diagonal
#                           attention, adaptive vs a full 793k softmax (an OOM is recorded as such):
#                           tokens/s, MFU against the GPU's dense bf16 peak, peak memory
#   train_compiled.json     the same with torch.compile on every transformer block
#   log.txt                 everything printed
# Each measurement has its own time limit, so one that fails or hangs does not take the others with it.
#
# The sizes are overridable so that tests/test_bench_tools.py can run this very script on a CPU with tiny
# shapes: BENCH_DEVICE (cuda), BENCH_SOFTMAX_ARGS, BENCH_TRAIN_ARGS, BENCH_TIMEOUTS ("150 180 200"),
# BENCH_WHEELS (.whl: the folder of wheels to install first, when it holds any), PYTHON (python3).
set -uo pipefail
OUT=${OUT:-/tmp/bench_gpu_out}
DEVICE=${BENCH_DEVICE:-cuda}
SOFTMAX_ARGS=${BENCH_SOFTMAX_ARGS:---d 1536 --tokens 4096 --repeats 10}
TRAIN_ARGS=${BENCH_TRAIN_ARGS:---preset gbw_huge --batch 16 --seq 512 --steps 10 --warmup 3}
read -r T_SOFTMAX T_EAGER T_COMPILED <<<"${BENCH_TIMEOUTS:-150 180 200}"
PYTHON=${PYTHON:-python3}
WHEELS=${BENCH_WHEELS:-.whl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || { echo "wheel install failed" | tee -a "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site
fi
status=0
measure() {  # measure SECONDS NAME COMMAND...: run one measurement, note its exit status, go on
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 0 ] || { echo "== $name FAILED with exit status $rc"; status=1; }
}
{
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi (device: $DEVICE)"
  "$PYTHON" -c "import torch, deepspeed, megatron.core; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
  # shellcheck disable=SC2086  # the argument strings are word lists on purpose
  measure "$T_SOFTMAX" adaptive_softmax "$PYTHON" tools/bench_adaptive_softmax.py --device "$DEVICE" --dtype bf16 \
    $SOFTMAX_ARGS --json "$OUT/adaptive_softmax.json"
  # shellcheck disable=SC2086
  measure "$T_EAGER" train_eager "$PYTHON" tools/bench_train.py --device "$DEVICE" --dtype bf16 --packed --skip-tp \
    $TRAIN_ARGS --json "$OUT/train_eager.json"
  # shellcheck disable=SC2086
  measure "$T_COMPILED" train_compiled "$PYTHON" tools/bench_train.py --device "$DEVICE" --dtype bf16 --packed \
    --skip-tp --compile $TRAIN_ARGS --json "$OUT/train_compiled.json"
  exit $status
} 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
