#!/usr/bin/env bash
# The suite's full run on this machine, as recorded in benchmarks/RESULTS.md:
#   bash benchmarks/full_run.sh [OUT_DIR]      (default benchmarks/results/full)
# 1. the GEMM sweep over the whole shapes table (runtime/bench/gemm.py), M, layouts and sparsities, both CPU
#    backends, against numpy / onnxruntime fp32 and onnxruntime / PyTorch int8;
# 2. the MiniLM-dimension BERT (int8, 80% sparse + int8, 2:4 + int8) at batch 1, sequence 16
#    and 128, against the original ONNX model in onnxruntime fp32 and int8 and qrt's own fp32.
# Each writes report.md, report.json and plots to a folder of OUT_DIR. Takes about 30-40 minutes
# on 2 cores; run it on an otherwise idle machine (ratios are measured within one run, but a
# busy core stalls 2-thread kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/full}
PY=${PYTHON:-python}
mkdir -p "$OUT"
$PY -m runtime.cli bench --gemm --report "$OUT/gemm" > /dev/null
$PY benchmarks/bert_models.py "$OUT/models"
for seq in 128 16; do
  for m in bert_int8 bert_s80_int8 bert_2of4_int8; do
    $PY -m runtime.cli bench "$OUT/models/$m.qrt" --seq "$seq" --compare "$OUT/models/bert.onnx" --profile \
        --backend auto,numba --report "$OUT/${m}_seq$seq" > /dev/null
  done
done
rm -rf "$OUT/models"
