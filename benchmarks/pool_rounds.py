"""What one round of the native work pool costs beyond its items.

    python benchmarks/pool_rounds.py [--rounds 3000]

Times rounds of ``parallel_items`` (csrc/work_pool.h) in C++ (``_native.work_pool_round_ns``:
the median of back-to-back rounds, no Python inside a round) for a few item counts and item
lengths, on 1 thread and on 2, and prints the 2-thread round against half the 1-thread round:
the overhead a parallel call pays for handing out work (publishing the job, a worker joining,
the claims, waiting for the last item). Each native kernel call that runs on several threads
pays it once per round (a GEMM: once for the activation rows, once for the products).
The CPU pair's cache-line round trip is printed with it: on VMs whose two vCPUs are far apart
every line the pool moves costs that much.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import registry  # noqa: E402
from kernels.core.cpu import cpu_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3000, help="rounds per case (default 3000)")
    args = ap.parse_args()
    registry.backend_status("native")
    from kernels.native_cpu import _native
    trip = _native.cpu_pair_round_trip_ns(0, 1, 0.2) if (os.cpu_count() or 1) >= 2 else -1
    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"cache-line round trip CPU 0 <-> 1: {trip:.0f} ns")
    print("\n| items | item us (1 thread) | 1 thread us | 2 threads us | overhead us (2 threads - half of 1) |")
    print("|---|---|---|---|---|")
    for items in (2, 16, 48):
        for spin in (0, 200, 1000):
            one = _native.work_pool_round_ns(items, 1, spin, args.rounds) / 1e3
            two = _native.work_pool_round_ns(items, 2, spin, args.rounds) / 1e3
            print(f"| {items} | {one / items:.3f} | {one:.2f} | {two:.2f} | {two - one / 2:.2f} |", flush=True)


if __name__ == "__main__":
    main()
