#!/usr/bin/env bash
# GPU benchmark of gbw_huge (1026M, full 793,475-entry GBW vocabulary) on one H100/H200, for the device tool.
#
# Prepare once, here: `bash tools/fetch_gpu_wheels.sh` writes .whl/ (git-ignored, ~7 MB): deepspeed (built
# from its sdist), megatron-core cp312, and what deepspeed needs that the device image lacks (hjson,
# pydantic + pydantic-core + annotated-types + typing-inspection). Checked here on 2026-11-26.
# Run (device tool):  run(command="bash tools/bench_gpu.sh", carry=[".whl"], timeout_s=540)
#
# Measures, all written under $OUT: the output/input layer benchmark at d=1536 in bf16
# (adaptive_softmax.json), and a gbw_huge bf16 training step with packed GBW-length sentences and
# block-diagonal attention, adaptive vs a full 793k softmax (an OOM is recorded as such): tokens/s,
# MFU against the GPU's dense bf16 peak, peak memory (train.json). Logs: $OUT/log.txt.
set -uo pipefail
OUT=${OUT:-/tmp/bench_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee -a "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site
fi
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, deepspeed, megatron.core; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
  timeout 150 python3 tools/bench_adaptive_softmax.py --device cuda --dtype bf16 --d 1536 --tokens 4096 \
    --repeats 10 --json "$OUT/adaptive_softmax.json"
  timeout 300 python3 tools/bench_train.py --preset gbw_huge --device cuda --dtype bf16 --packed \
    --batch 16 --seq 512 --steps 10 --warmup 3 --skip-tp --json "$OUT/train.json"
} 2>&1 | tee "$OUT/log.txt"
