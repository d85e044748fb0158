#!/usr/bin/env bash
# The CPU checks a lent GPU machine can do: its host CPU (an Intel Xeon with AVX-512 VNNI,
# AVX-VNNI and AMX on the H200 machine seen on 2026-12-04, 16 cores) runs the native AVX-VNNI
# and AMX paths (csrc/int8_gemm_avxvnni.cpp, csrc/int8_gemm_amx.cpp); since 2026-12-06 some
# development sessions run on such a Xeon too (benchmarks/RESULTS.md, "AMX-INT8 and AVX-VNNI").
#
#   bash benchmarks/device_cpu_check.sh [OUT_DIR]        (default $OUT, else /tmp/qrt-cpu-check)
#
# Uses the machine's python3 and its packages (numpy, numba, pybind11, onnx, onnxruntime,
# pytest), installs nothing. Steps, each logged to OUT_DIR:
# 1. the CPU's flags and the build of the native extension there;
# 2. the native int8 / fused / sparse tests on every int8 path the CPU has, and again with
#    AVX-VNNI forced (QRT_NATIVE_ISA=avx_vnni), then AVX2 forced;
# 3. `qrt bench --gemm` on the BERT and MiniLM shapes, M = 1, 16, 128, native against
#    onnxruntime int8, 2 threads (comparable with the 2-vCPU figures) with the best path and with
#    AVX-VNNI forced.
# About 5 minutes on 16 cores. The summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/qrt-cpu-check}}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
summary=()

grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|amx_int8' /proc/cpuinfo | sort | uniq -c > "$OUT_DIR/cpu_flags.txt"
lscpu > "$OUT_DIR/lscpu.txt" 2>&1 || true
summary+=("cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs); flags: $(awk '{print $2}' "$OUT_DIR/cpu_flags.txt" | xargs)")

if QRT_REQUIRE_NATIVE=1 timeout 300 "$PY" setup.py -q build_ext --inplace > "$OUT_DIR/build.log" 2>&1; then
  summary+=("native build: ok ($("$PY" -c 'from kernels.native_cpu import _native; print(",".join(_native.int8_isas()))' 2>&1))")
else
  summary+=("native build: FAILED (build.log)")
fi

tests="tests/test_native_int8.py tests/test_native_fused.py tests/test_native_sparse.py"
for isa in auto avx_vnni avx2; do
  env_isa=()
  [ "$isa" != auto ] && env_isa=(QRT_NATIVE_ISA="$isa")
  env "${env_isa[@]}" QRT_REQUIRE_NATIVE=1 timeout 240 "$PY" -m pytest -q -p no:cacheprovider $tests \
      > "$OUT_DIR/tests_$isa.log" 2>&1
  summary+=("tests, int8 path $isa: $(tail -1 "$OUT_DIR/tests_$isa.log")")
done

for isa in auto avx_vnni; do
  env_isa=()
  [ "$isa" != auto ] && env_isa=(QRT_NATIVE_ISA="$isa")
  env "${env_isa[@]}" timeout 240 "$PY" -m runtime.cli bench --gemm --shapes bert,minilm --m 1,16,128 \
      --layouts int8 --backend native --threads 2 --json "$OUT_DIR/gemm_$isa.json" > "$OUT_DIR/gemm_$isa.md" 2>&1
  summary+=("gemm, int8 path $isa: $(grep -m1 '^- \*\*qrt native' "$OUT_DIR/gemm_$isa.md" || echo 'no summary: see the log')")
done

printf '%s\n' "${summary[@]}" | tee "$OUT_DIR/summary.txt"
