"""The native peak probe (csrc/peak_probe.cpp, kernels.native_cpu.measure_peaks).

Sanity only: timing belongs in benchmarks/, so no assertion here depends on how fast this
machine is or how busy it is; only that the figures are well-formed (positive, finite, and
what the CPU's features say can be measured).
"""
from __future__ import annotations

import math

import pytest

import kernels.native_cpu as native

_REASON = native.probe()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"native extension unavailable: {_REASON}")

# short: the machine is shared with other test runs and benchmarks
SECONDS = 0.02
KEYS = {"threads", "int8_gops", "int8_isa", "int8_ops_per_instruction", "fp32_gflops", "fp32_isa",
        "fp32_ops_per_instruction"}
# ops per instruction of the instruction each ISA times (peak_probe.h)
INT8_OPS = {"avx512_vnni": 128, "avx_vnni": 64, "avx2": 64}
FP32_OPS = {"avx512f": 32, "avx2_fma": 16, "sse2": 4}


@pytest.mark.parametrize("threads", [1, 2])
def test_measure_peaks_is_sane(threads):
    peaks = native.measure_peaks(threads=threads, seconds=SECONDS)
    assert set(peaks) == KEYS
    from kernels.native_cpu import _native
    assert peaks["threads"] == (threads if _native.build_info()["openmp"] else 1)
    f = native.cpu_features()
    if f["avx512f"] and f["avx512_vnni"]:
        assert peaks["int8_isa"] == "avx512_vnni"
    elif f["avx_vnni"]:
        assert peaks["int8_isa"] == "avx_vnni"
    elif f["avx2"]:
        assert peaks["int8_isa"] == "avx2"        # vpmaddubsw + vpmaddwd + vpaddd
    if peaks["int8_isa"] == "none":
        assert peaks["int8_gops"] is None and not (f["avx512_vnni"] or f["avx_vnni"] or f["avx2"])
    else:
        assert peaks["int8_ops_per_instruction"] == INT8_OPS[peaks["int8_isa"]]
        assert math.isfinite(peaks["int8_gops"]) and peaks["int8_gops"] > 0
    assert peaks["fp32_isa"] == ("avx512f" if f["avx512f"] else "avx2_fma" if f["avx2"] and f["fma"] else "sse2")
    assert peaks["fp32_ops_per_instruction"] == FP32_OPS[peaks["fp32_isa"]]
    assert math.isfinite(peaks["fp32_gflops"]) and peaks["fp32_gflops"] > 0


def test_measure_peaks_defaults_to_the_kernels_threads():
    from kernels.native_cpu import _native
    before = _native.get_threads()
    try:
        _native.set_threads(1)
        assert native.measure_peaks(seconds=SECONDS)["threads"] == 1
    finally:
        _native.set_threads(before)


@pytest.mark.parametrize("threads, seconds", [(0, 0.1), (-3, 0.1), (5000, 0.1), (1, 0.0), (1, -1.0),
                                              (1, float("nan")), (1, float("inf")), (1, 1e9)])
def test_measure_peaks_refuses_bad_arguments(threads, seconds):
    with pytest.raises(ValueError, match="threads|seconds"):
        native.measure_peaks(threads=threads, seconds=seconds)
