"""One native int8 Linear called after pauses: does the second thread help, or share a CPU?

    python benchmarks/pool_wakeups.py [--shape 16,384,1536] [--rounds 200]

Calls the native int8 Linear (M, K, N) in rounds of 6 back-to-back calls, each round after a
pause (0 / 0.2 / 2 / 20 ms, as a server between requests), on 1 and on 2 threads; prints the
median microseconds of each call position of the round. Then 20 blocks of 300 back-to-back
calls, 50 ms apart, on 2 threads: the median of each block, and how many blocks ran at about
one thread's speed (the worker sharing the caller's CPU: RESULTS.md, "Two threads on one CPU").
Last, how many times a pool worker found itself on its caller's CPU and moved
(``_native.work_pool_moves``, absent in builds before that change).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kernels import registry  # noqa: E402
from kernels.core.cpu import cpu_name  # noqa: E402
from kernels.core.layouts import pack_int8  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="16,384,1536", help="M,K,N of the Linear (default 16,384,1536)")
    ap.add_argument("--rounds", type=int, default=200, help="rounds per pause and thread count (default 200)")
    args = ap.parse_args()
    m, k, n = (int(v) for v in args.shape.split(","))
    registry.backend_status("native")
    from kernels.native_cpu import _native, set_threads
    rng = np.random.default_rng(0)
    w = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32))
    linear = registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: w})
    x, b = rng.standard_normal((m, k)).astype(np.float32), np.zeros(n, np.float32)

    def call_ns() -> int:
        t0 = time.perf_counter_ns()
        linear(x, w, b)
        return time.perf_counter_ns() - t0

    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; Linear (M, K, N) = "
          f"({m}, {k}, {n}), native int8, dynamic activations")
    print("\n| threads | pause ms | median us of calls 1 .. 6 after the pause |\n|---|---|---|")
    for threads in (1, 2):
        set_threads(threads)
        for _ in range(200):
            call_ns()
        for pause in (0.0, 2e-4, 2e-3, 2e-2):
            rounds = args.rounds if pause < 1e-2 else max(args.rounds // 4, 10)
            times = []
            for _ in range(rounds):
                if pause:
                    time.sleep(pause)
                times.append([call_ns() for _ in range(6)])
            med = np.median(np.array(times), axis=0) / 1e3
            print(f"| {threads} | {pause * 1e3:g} | {' / '.join(f'{v:.1f}' for v in med)} |", flush=True)
    set_threads(1)
    one = np.median([call_ns() for _ in range(2000)]) / 1e3
    set_threads(2)
    blocks = []
    for _ in range(20):
        time.sleep(0.05)
        blocks.append(np.median([call_ns() for _ in range(300)]) / 1e3)
    slow = sum(v > 0.8 * one for v in blocks)
    print(f"\n2 threads, 20 blocks of 300 calls 50 ms apart, block medians us: {' '.join(f'{v:.1f}' for v in blocks)}")
    print(f"1 thread back to back: {one:.1f} us; blocks at over 0.8 of that: {slow} of 20")
    moves = getattr(_native, "work_pool_moves", None)
    print(f"work pool moves: {moves() if moves else 'n/a (build without them)'}")


if __name__ == "__main__":
    main()
