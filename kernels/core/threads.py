"""Thread settings shared by the CPU backends: the OpenMP wait policy every pool in the process
lives with, and the cap on numpy's BLAS threads.

The numba pool, the native extension's OpenMP pool and OpenBLAS's pthreads pool take turns on
the same cores. GNU OpenMP's default spins after each parallel region, which starves the other
pools (the fp32 BERT once ran tens of times slower for it); parking at once is the other
extreme (waking a parked worker costs tens of microseconds per layer's GEMM). So: passive
waiting after a short spin. libgomp reads both once, when a pool starts; values the user set win.
"""
from __future__ import annotations

import os

_blas_threads: list[int] = []      # the BLAS thread cap last set, if any


def configure_openmp() -> None:
    """Before a backend loads its OpenMP runtime: passive waiting after a short spin."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def cap_blas_threads(n: int) -> None:
    """Cap numpy's BLAS at ``n`` threads (where threadpoolctl is installed), so a backend's pool
    and BLAS never ask for more cores than the session was given. threadpoolctl costs about
    0.1 ms a call: only on change."""
    if _blas_threads and _blas_threads[-1] == n:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=n, user_api="blas")
    _blas_threads.append(n)
