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
INT8_OPS = {"amx": 16 * 16 * 64 * 2, "avx512_vnni": 128, "avx_vnni": 64, "avx2": 64}


def _expected_int8_probe(path: str, f: dict) -> str:
    """The instruction the int8 probe times: the int8 GEMM's path's own (vpmaddubsw + vpmaddwd +
    vpaddd for avx2), or for the scalar path the CPU's best vector one short of AMX."""
    if path != "scalar":
        return path
    if f["avx512f"] and f["avx512_vnni"]:
        return "avx512_vnni"
    if f["avx_vnni"]:
        return "avx_vnni"
    return "avx2" if f["avx2"] else "none"


def test_the_int8_probe_follows_the_int8_path(restore_int8_path):
    """Forcing the int8 GEMM's path (QRT_NATIVE_ISA / set_int8_isa) makes the probe time that
    path's instruction, so a kernel's share of the peak is of its own instruction's: on an AMX
    machine 'amx' times TDPBUSD, 'avx512_vnni' vpdpbusd on zmm."""
    from kernels.native_cpu import _native
    f = native.cpu_features()
    for path in _native.int8_isas():
        _native.set_int8_isa(path)
        peaks = native.measure_peaks(threads=1, seconds=SECONDS)
        assert peaks["int8_isa"] == _expected_int8_probe(path, f), path
        if peaks["int8_isa"] != "none":
            assert peaks["int8_ops_per_instruction"] == INT8_OPS[peaks["int8_isa"]]


@pytest.fixture
def restore_int8_path():
    """Put the int8 path back as the run had it (QRT_NATIVE_ISA may force one for the whole run)."""
    import os
    from kernels.native_cpu import _native
    yield
    _native.set_int8_isa(os.environ.get("QRT_NATIVE_ISA") or "auto")
FP32_OPS = {"avx512f": 32, "avx2_fma": 16, "sse2": 4}


@pytest.mark.parametrize("threads", [1, 2])
def test_measure_peaks_is_sane(threads):
    peaks = native.measure_peaks(threads=threads, seconds=SECONDS)
    assert set(peaks) == KEYS
    from kernels.native_cpu import _native
    assert peaks["threads"] == (threads if _native.build_info()["openmp"] else 1)
    f = native.cpu_features()
    assert peaks["int8_isa"] == _expected_int8_probe(_native.int8_isa(), f)
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
