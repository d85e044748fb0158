"""Thread settings of the CPU backends. The numba, native (OpenMP) and OpenBLAS pools take turns
on the same cores: OpenMP's default spinning starves the others, parking at once costs tens of
microseconds a wake-up, so workers wait passively after a short spin (RESULTS.md, "OpenMP wait
policy"). libgomp reads this once, when a pool starts; values the user set win."""
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
