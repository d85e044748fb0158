"""Thread settings of the CPU backends. The numba, native (OpenMP) and OpenBLAS pools take turns
on the same cores: OpenMP's default spinning starves the others, parking at once costs tens of
microseconds a wake-up, so workers wait passively after a short spin (RESULTS.md, "OpenMP wait
policy"). libgomp reads this once, when a pool starts; values the user set win."""
from __future__ import annotations

import os

_blas_threads: list[int] = []      # the BLAS thread cap last set, if any
# set by the first configure_openmp(): whether the process's OpenMP workers may spin for
# milliseconds after each parallel region (openmp_may_spin)
_openmp_spins: list[bool] = []

# OpenMP runtimes that read OMP_WAIT_POLICY once, when they are loaded
_OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")


def configure_openmp(maps_path: str = "/proc/self/maps") -> None:
    """Before a backend loads its OpenMP runtime: passive waiting after a short spin. Called
    when ``kernels`` is imported, so that it precedes anything qrt loads; an OpenMP runtime
    that is already loaded by then (torch imported first brings its libgomp) has read its
    settings and keeps its default, which spins: openmp_may_spin() says so."""
    if not _openmp_spins:
        user_set = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
        active = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "active"
        _openmp_spins.append(active or (not user_set and _openmp_loaded(maps_path)))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def openmp_may_spin() -> bool:
    """Whether the OpenMP workers of this process (numba's pool) keep spinning for
    milliseconds after each parallel region: the runtime was loaded before configure_openmp
    could set its wait policy, or OMP_WAIT_POLICY=active. The planner then charges a switch
    between thread pools much more (runtime/planner.py, SPINNING_POOL_SWITCH_S)."""
    if not _openmp_spins:
        configure_openmp()
    return _openmp_spins[0]


def _openmp_loaded(maps_path: str) -> bool:
    """An OpenMP runtime is mapped into this process (Linux; elsewhere: unknown, False)."""
    try:
        with open(maps_path) as f:
            return any(lib in line for line in f for lib in _OPENMP_LIBRARIES)
    except OSError:
        return False


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


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """How many CPUs this process may really use: the CPUs of its affinity mask, capped by its
    cgroup's CPU quota rounded up (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), at least 1. The default thread count: a container limited to 2
    CPUs on a 64-core host, or a process pinned to 2 cores, gets 2 threads, not 64 that then
    wait at every barrier for workers the scheduler does not run."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):          # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _cgroup_quota(root: str) -> int | None:
    """ceil(quota / period) of the cgroup CPU limit, None when unlimited or unreadable."""
    def read(name: str) -> str | None:
        try:
            with open(os.path.join(root, name)) as f:
                return f.read().strip()
        except OSError:
            return None
    v2 = read("cpu.max")                       # "max 100000" or "200000 100000"
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _ceil_ratio(parts[0], parts[1])
        return None
    q, p = read("cpu/cpu.cfs_quota_us") or read("cpu.cfs_quota_us"), read("cpu/cpu.cfs_period_us") or read("cpu.cfs_period_us")
    if q and p and q.lstrip("-").isdigit() and int(q) > 0:
        return _ceil_ratio(q, p)
    return None


def _ceil_ratio(q: str, p: str) -> int | None:
    try:
        quota, period = int(q), int(p)
    except ValueError:
        return None
    return max(1, -(-quota // period)) if quota > 0 and period > 0 else None
