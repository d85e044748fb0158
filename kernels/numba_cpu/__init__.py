"""The numba CPU backend: hand-written @njit kernels, parallel over cores with prange.

Importing this package registers its kernels in kernels.registry (each module below
registers the (op, layout) pairs it implements). Without numba the import fails and the
registry reports the backend unavailable with the reason.

ISA: numba compiles for one target, this CPU unless QRT_NUMBA_ISA (or numba's own
NUMBA_CPU_NAME) says otherwise; the paths that hand-emit AVX-512 instructions are taken only
where that target has them (isa.py). ``QRT_NUMBA_ISA=avx2`` runs the whole backend as on an
AVX2-only CPU.

Threads: numba's thread count is per calling thread; the session calls ``set_threads`` before
each run with its ``threads=`` option, and every numba kernel's result is independent of it
(each output element is computed by one thread, in a fixed order). The fp32 GEMMs (Linear,
MatMul, Gemm, Conv with float weights) are numpy's BLAS, whose bits may change with its thread
count (ops.py): they agree within float32 rounding.
"""
from __future__ import annotations

from kernels.core import threads as core_threads

core_threads.configure_openmp()     # before numba starts its pool (kernels/core/threads.py)

import numba  # noqa: E402

from . import isa  # noqa: E402

# Before any kernel module is imported: the target must be set before numba's first compile.
isa.apply_env()

from . import quant  # noqa: F401  (shared helpers, no kernels)
from . import fused, gather, int4, int8, ops, pool, sparse  # noqa: F401  (register their kernels)


def probe() -> str | None:
    """None: usable here. numba's import succeeding is the requirement, and a QRT_NUMBA_ISA
    that took effect; ISA-specific paths (VNNI, VBMI) follow the compile target (isa.py) and
    fall back to portable loops."""
    if isa.error() is not None:
        return isa.error()
    major, minor = (int(p) for p in numba.__version__.split(".")[:2])
    if (major, minor) < (0, 59):
        return f"numba {numba.__version__} is too old (need >= 0.59)"
    return None


def set_threads(n: int) -> None:
    """Use ``n`` worker threads for this thread's next calls: numba's pool (capped at its size)
    and, where threadpoolctl is installed, the BLAS library numpy uses for the fp32 GEMMs, so
    the two pools never ask for more cores than the session was given."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    core_threads.cap_blas_threads(n)
