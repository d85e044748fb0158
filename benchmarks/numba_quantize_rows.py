"""Time numba's activation row quantizers alone: ns per row, static and dynamic, one thread.

    python benchmarks/numba_quantize_rows.py [--k 384,768,1536] [--rows 16] [--repeat 300]
    python benchmarks/as_cpu.py avx2 benchmarks/numba_quantize_rows.py     # as an AVX2 CPU

The serial drivers of kernels/numba_cpu/vnni.py (`_quantize_shift_static_serial`,
`_quantize_shift_dynamic_serial`: the work each thread of an int8 Linear does per row before
its products) on standard-normal float32 rows; static with s = 0.02, z = 3. Best of --repeat
calls, divided by the rows.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kernels.numba_cpu import vnni  # noqa: E402


def best_ns(f, args, repeat: int) -> int:
    f(*args)                                   # compile / warm up
    best = None
    for _ in range(repeat):
        t = time.perf_counter_ns()
        f(*args)
        d = time.perf_counter_ns() - t
        best = d if best is None else min(best, d)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="384,768,1536", help="row lengths, comma-separated (default 384,768,1536)")
    ap.add_argument("--rows", type=int, default=16, help="rows per call (default 16)")
    ap.add_argument("--repeat", type=int, default=300, help="calls timed; the best counts (default 300)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    m = args.rows
    for k in (int(v) for v in args.k.split(",")):
        x = rng.standard_normal((m, k)).astype(np.float32)
        u = np.empty((m, -(-k // 4) * 4), np.uint8)
        sx, rc = np.empty(m), np.empty(m, np.int64)
        static = best_ns(vnni._quantize_shift_static_serial, (x, u, np.float64(0.02), np.int64(3), sx, rc), args.repeat)
        dynamic = best_ns(vnni._quantize_shift_dynamic_serial, (x, u, sx, rc), args.repeat)
        print(f"K = {k}: static {static / m:.0f} ns per row, dynamic {dynamic / m:.0f} ns per row", flush=True)


if __name__ == "__main__":
    main()
