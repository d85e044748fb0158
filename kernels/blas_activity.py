"""When did a backend last run a BLAS GEMM? Shared by the CPU backends (no dependencies).

OpenBLAS's workers busy-wait after each GEMM (up to 2^28 cycles, ~0.1 s, by default), so a
parallel region of another thread pool (numba's OpenMP, the native kernels' OpenMP) started
soon after a float32 BLAS call runs its second thread against a spinning one: measured on the
2-core dev machine with the fp32 MiniLM-dims BERT at seq 128, 157 ms per run (numba fused
kernels) and 64 ms (native attention) instead of ~25 ms. Kernels that would go parallel stay
on the calling thread when a BLAS GEMM ran less than BLAS_QUIET_SECONDS ago.
"""
from __future__ import annotations

import time

BLAS_QUIET_SECONDS = 0.2
_last_blas_call = [float("-inf")]


def note_blas_call() -> None:
    """Record that a BLAS GEMM just ran (call right after it)."""
    _last_blas_call[0] = time.perf_counter()


def blas_recently_called() -> bool:
    return time.perf_counter() - _last_blas_call[0] < BLAS_QUIET_SECONDS
