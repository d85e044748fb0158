"""Native CPU backend: the Python side of the pybind11 module built from csrc/.

The compiled module is ``kernels.native_cpu._native`` (csrc/bindings.cpp). It is optional:
setup.py skips it with a warning when there is no compiler, and then this package still
imports, :func:`probe` says why the backend is unusable, and :func:`cpu_features` answers
from /proc/cpuinfo instead.

The extension is built for baseline x86-64 (no -march=native), so kernels that need AVX2,
AVX-512, VNNI or AMX must be picked at run time on :func:`cpu_features`.

Kernels: ("Linear", "int8") in int8.py (csrc/int8_gemm.cpp), ("Linear", "csr" / "bsr" /
"nm") in sparse.py (csrc/sparse_gemm.cpp), ("Gather", "int8" / "int4_grouped"), the
quantized embedding lookup, in gather.py (csrc/embedding_gather.cpp), float32 Linear /
MatMul / Gemm / Conv (BLAS) and Gelu / Relu in elementwise.py, and others, registered
when the extension imports. The
feature probe imports nothing heavy (no numpy) when the extension is not built; when it is,
importing this package registers the kernels, which need numpy.

Threads: the extension's work pool (csrc/work_pool.h: items claimed by the calling thread and
whichever workers are awake, so a descheduled worker on a shared core holds nobody up; every
kernel of the extension runs on it); the session calls :func:`set_threads` before each run.
Every C++ kernel's result is independent of the thread count (each output tile is computed by
one thread, in a fixed order). The weight-only (act_quant "none") Linear is numpy's float32
BLAS matmul, whose bits may follow BLAS's thread count (kernels/blas_ops.py): it agrees
within float32 rounding.

Environment: QRT_NATIVE_ISA = amx | avx512_vnni | avx_vnni | avx2 | scalar forces the int8 GEMM's code path (all
give the same bits; for tests and benchmarks), and caps the int4 Linear's and the fused ops'
automatic paths at the same ISA (amx and avx512_vnni: AVX-512, avx_vnni and avx2: AVX2, scalar: scalar), so that
forcing it runs the whole backend on that ISA. A value this CPU cannot run makes the backend
unavailable, with that reason.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

from kernels.core import config, cpu
from kernels.core import threads as core_threads

core_threads.configure_openmp()     # before the extension loads libgomp (kernels/core/threads.py)

ISA_ENV = "QRT_NATIVE_ISA"
OUTPUT_CACHE_ENV = "QRT_OUTPUT_CACHE_MB"

# The feature names, in the order the extension reports them. They are the Linux
# /proc/cpuinfo flag names, so both sources can be compared key by key.
FEATURES = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
)

# feature -> /proc/cpuinfo flag. The identity today; kept as a table so that a kernel
# renaming a flag is a one-line change here, not a hunt through the dispatch code.
_CPUINFO_FLAG = {name: name for name in FEATURES}

# Not named `_native`: a package attribute of that name would shadow the submodule, and
# `from . import _native` would return it instead of importing the extension.
_EXTENSION = f"{__name__}._native"
_ext: ModuleType | None = None
_ext_error: str | None = None
_ext_tried = False


def _load_native() -> ModuleType | None:
    """Import the compiled module once; remember why it failed, if it did."""
    global _ext, _ext_error, _ext_tried
    if not _ext_tried:
        _ext_tried = True
        try:
            _ext = importlib.import_module(_EXTENSION)
        except ImportError as e:
            # ImportError covers both "never built" (ModuleNotFoundError) and a built .so that
            # the loader rejects (wrong Python ABI, missing libstdc++ symbol).
            _ext_error = str(e) or type(e).__name__
    return _ext


_isa_error: str | None = None


def _apply_isa_env() -> None:
    """QRT_NATIVE_ISA, if set: force that int8 code path; remember why it cannot be."""
    global _isa_error
    value = config.get(ISA_ENV)
    if value and _ext is not None:
        try:
            _ext.set_int8_isa(value)
        except ValueError as e:
            _isa_error = f"{ISA_ENV}={value}: {e}"


def _apply_output_cache_env() -> None:
    """QRT_OUTPUT_CACHE_MB: the MiB of freed outputs the extension keeps (csrc/output_cache.h);
    a value that is not a whole number >= 0 is refused with a warning, the default kept."""
    value = config.get(OUTPUT_CACHE_ENV)
    try:
        mb = int(value)
        if mb < 0 or mb > 1 << 20:
            raise ValueError
    except ValueError:
        warnings.warn(f"{OUTPUT_CACHE_ENV}={value!r} is not a whole number of MiB from 0 to {1 << 20}; "
                      f"keeping {config.VARS[OUTPUT_CACHE_ENV].default}", RuntimeWarning, stacklevel=2)
        mb = int(config.VARS[OUTPUT_CACHE_ENV].default)
    _ext.output_cache_set_limit(mb << 20)


def probe() -> str | None:
    """Why the native backend cannot run here, or None if the extension imports.

    Called by kernels.registry; whether any native kernel is registered is the registry's
    own check.
    """
    if _load_native() is None:
        return f"extension not built: {_ext_error}"
    return _isa_error


def set_threads(n: int) -> None:
    """Use ``n`` worker threads in the native kernels from now on (all calling threads), and,
    where threadpoolctl is installed, as numpy's BLAS cap (the weight-only int8 Linear is a
    BLAS matmul), as the numba backend does."""
    n = max(1, int(n))
    if _load_native() is None:
        return
    _ext.set_threads(n)                                 # an atomic store
    core_threads.cap_blas_threads(n)


def cpu_pair_round_trip_ns(cpu_a: int, cpu_b: int, seconds: float = 0.05) -> float | None:
    """Nanoseconds per round trip of one cache line between threads pinned to CPUs ``cpu_a``
    and ``cpu_b``, about ``seconds`` of them (csrc/cpu_pair_probe.h: ~100-130 ns where the two
    share an L3, ~500 where a VM's host put them on two CCDs); None without the extension or
    where it cannot be measured (a CPU outside this process's affinity, no answer)."""
    if _load_native() is None:
        return None
    ns = float(_ext.cpu_pair_round_trip_ns(int(cpu_a), int(cpu_b), float(seconds)))
    return ns if ns > 0 else None


def ell_byte_segment() -> int:
    """The segment option of the byte-lane ELL the sparse packer builds now by default
    (``_native.sparse_byte_segment``, csrc/sparse_gemm.h: 64 columns, or 0 for sliding 64-column
    windows); 128 without the extension. runtime/row_order.py sorts rows for it."""
    if _load_native() is None:
        return 128
    return int(_ext.sparse_byte_segment())


def cpu_features() -> dict[str, bool]:
    """ISA features of this CPU that the OS has enabled, as {name: bool} for every FEATURES name.

    From the extension (cpuid + xgetbv) when it is built, else from /proc/cpuinfo flags
    (Linux; the kernel hides flags whose register state it does not enable, so both sources
    mean "usable"), else all False.
    """
    return dict(_cpu_features_cached())


def cpu_features_source() -> str:
    """Where cpu_features() gets its answer: "native", "/proc/cpuinfo" or "none"."""
    if _load_native() is not None:
        return "native"
    if cpu.read_cpuinfo() is not None:
        return cpu.CPUINFO
    return "none"


def cpu_brand() -> str:
    """The CPU model name, e.g. "AMD EPYC 7B13 64-Core Processor"."""
    mod = _load_native()
    if mod is not None:
        return mod.cpu_brand()
    return cpu.cpu_name()


def build_info() -> dict | None:
    """Compiler, C++ standard and pybind11 version of the extension; None if not built."""
    mod = _load_native()
    return None if mod is None else dict(mod.build_info())


def measure_peaks(threads: int | None = None, seconds: float = 0.2) -> dict:
    """This machine's int8 and fp32 peak, measured now (csrc/peak_probe.h): register-only loops
    of independent vpdpbusd (int8) and vfmadd231ps (fp32; mulps + addps without FMA) on
    ``threads`` OpenMP threads (default: the native kernels' current count), about ``seconds``
    in all, best of three repeats.

    Returns {"threads", "int8_gops", "int8_isa", "int8_ops_per_instruction", "fp32_gflops",
    "fp32_isa", "fp32_ops_per_instruction"}: GOP/s counting a multiply and an add as 2 ops
    (a zmm vpdpbusd is 128 ops, a zmm FMA 32); int8_gops is None without AVX-512 VNNI or
    AVX-VNNI. On a shared machine the figure is lower while other processes hold cores.
    Raises RuntimeError when the extension is not built.
    """
    mod = _load_native()
    if mod is None:
        raise RuntimeError(f"native extension not built: {_ext_error}")
    n = mod.get_threads() if threads is None else int(threads)
    return dict(mod.measure_peaks(n, float(seconds)))


@functools.lru_cache(maxsize=1)
def _cpu_features_cached() -> tuple[tuple[str, bool], ...]:
    # The CPU does not change under a running process: probe once.
    mod = _load_native()
    if mod is not None:
        found = mod.cpu_features()
        return tuple((name, bool(found.get(name, False))) for name in FEATURES)
    text = cpu.read_cpuinfo()
    found = _features_from_cpuinfo(text) if text is not None else {}
    return tuple((name, found.get(name, False)) for name in FEATURES)


def _features_from_cpuinfo(text: str) -> dict[str, bool]:
    """FEATURES from /proc/cpuinfo text (kernels/core/cpu.py reads its flags line)."""
    flags = cpu.cpuinfo_flags(text)
    return {name: _CPUINFO_FLAG[name] in flags for name in FEATURES}


# Kernels register themselves on import (kernels.registry); they need the extension and numpy.
if _load_native() is not None:
    _apply_isa_env()
    _apply_output_cache_env()
    if _isa_error is None:
        from . import int8, sparse  # noqa: F401,E402
        from . import fused  # noqa: F401,E402
        from . import conv, int4  # noqa: F401,E402
        from . import elementwise, gather, pool  # noqa: F401,E402
