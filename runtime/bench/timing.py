"""Timing on a shared, noisy machine: blocked calls, several passes, the quietest pass.

Each function runs in its own block of calls: the runtimes' worker pools (OpenMP, onnxruntime's,
PyTorch's, OpenBLAS's) spin-wait for a while after each call, and interleaving them call by call
would time their fight over the cores instead of the kernels. A pause of SETTLE_SECONDS comes
before each pass and before each block marked ``settle`` (the other runtimes' blocks), so that
block finds idle cores. Several passes spread slow machine-wide noise (other processes) over
everyone; the median of the quietest pass is the function's own speed.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

PASSES = 3
MIN_CALLS, MAX_CALLS = 6, 600
SETTLE_SECONDS = 0.1        # > the spin-wait of OpenBLAS / onnxruntime / PyTorch workers
SLOW_CALL_SECONDS = 0.05    # calls this long are timed once per pass (3 calls: the spread is small)


def time_blocked(fns: list[Callable[[], Any]], settle: list[bool], min_seconds: float,
                 passes: int = PASSES) -> list[list[list[float]]]:
    """Per function, ``passes`` lists of call times in seconds: about ``min_seconds`` of calls
    per function in all, at least MIN_CALLS (or one per pass for calls longer than
    SLOW_CALL_SECONDS) and at most MAX_CALLS. Warm-up (compilation, allocator, caches): two
    calls in the first pass (one for a slow call), one in the others (none for slow calls)."""
    times: list[list[list[float]]] = [[] for _ in fns]
    per_call = [0.0] * len(fns)
    for p in range(passes):
        time.sleep(SETTLE_SECONDS)
        for i, fn in enumerate(fns):
            if settle[i] or (i and settle[i - 1]):
                time.sleep(SETTLE_SECONDS)
            if p == 0 or per_call[i] <= SLOW_CALL_SECONDS:
                t0 = time.perf_counter()
                fn()
                per_call[i] = time.perf_counter() - t0
                if p == 0 and per_call[i] <= SLOW_CALL_SECONDS:     # the first call may have compiled
                    t0 = time.perf_counter()
                    fn()
                    per_call[i] = time.perf_counter() - t0
            slow = per_call[i] > SLOW_CALL_SECONDS
            least = 1 if slow else -(-MIN_CALLS // passes)
            calls = max(least, min(MAX_CALLS // passes, int(min_seconds / passes / max(per_call[i], 1e-9))))
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[i].append(ts)
    return times


def quietest_median(passes: list[list[float]]) -> float:
    """The median of the pass with the lowest median."""
    return min(statistics.median(ts) for ts in passes)


def percentile(passes: list[list[float]], q: float) -> float:
    """The q-th percentile (0-100) over every call of every pass."""
    ts = sorted(t for p in passes for t in p)
    if len(ts) == 1:
        return ts[0]
    pos = (len(ts) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ts) - 1)
    return ts[lo] + (ts[hi] - ts[lo]) * (pos - lo)


def spread(passes: list[list[float]]) -> float:
    """Interquartile range / median over every call of every pass."""
    ts = [t for p in passes for t in p]
    if len(ts) < 2:
        return 0.0
    q = statistics.quantiles(ts, n=4)
    return (q[2] - q[0]) / statistics.median(ts)
