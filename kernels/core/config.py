"""Every QRT_* environment variable qrt reads, in one table (README.md lists it; tests hold that
nothing else reads one). ``get(name)`` knows the default; an unlisted name is a KeyError."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    meaning: str


VARS = {v.name: v for v in (
    Var("QRT_NATIVE_ISA", "", "force the native backend's int8 code path: amx, avx512_vnni, avx_vnni, avx2 or scalar "
                              "(same bits on every path; tests and benchmarks)"),
    Var("QRT_NUMBA_ISA", "", "compile the numba backend for another target: auto, avx512_vnni, avx_vnni, avx2 or generic"),
    Var("QRT_NUMBA_NO_VNNI", "", "1: the numba int8 GEMM takes no vpdpbusd tile (zmm or ymm) even on a VNNI CPU"),
    Var("QRT_OUTPUT_CACHE_MB", "64", "MiB of freed native kernel outputs (256 KiB or larger) kept for reuse, so that "
                                     "each run does not map and fault them in anew (csrc/output_cache.h); 0: none"),
    Var("QRT_TRITON_AUTOTUNE", "1", "0: Triton kernels use their first configuration instead of autotuning"),
    Var("QRT_TRITON_WEIGHT_ONLY_DOT", "fp32", "the dot of Triton's weight-only Linear: fp32 or fp16 (tensor cores, large M)"),
    Var("QRT_CACHE_DIR", "", "where the planner and qrt bench keep their measurements: layer timings, machine peaks (default $XDG_CACHE_HOME/qrt or ~/.cache/qrt)"),
    Var("QRT_DEBUG", "", "any value: the CLI prints tracebacks instead of one-line errors"),
    Var("QRT_BENCH_UNSET", "", "set by a benchmark's OpenBLAS re-exec: the variables it removed (internal)"),
    Var("QRT_REQUIRE_NATIVE", "", "1: `pip install` fails when the C++ extension does not build (setup.py)"),
    Var("QRT_DISABLE_BACKENDS", "", "comma list: backends this process treats as unavailable, e.g. numba to skip its "
                                    "JIT warm-up (tests/test_sanitizers.py: numba under ASan)"),
    Var("QRT_REQUIRE_BACKENDS", "", "comma list: pytest stops at once if one of these backends cannot load "
                                    "(tests/conftest.py)"),
)}

# The switches that make a process run other kernels than this machine's own (kernels/core/cpu.py
# puts them in the machine key, so their measurements are cached apart).
FORCED_PATH_VARS = ("QRT_NATIVE_ISA", "QRT_NUMBA_ISA", "QRT_NUMBA_NO_VNNI")


def get(name: str) -> str:
    """The variable's value in this process, or its default when unset or empty."""
    var = VARS[name]
    return os.environ.get(name, "") or var.default
