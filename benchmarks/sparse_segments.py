"""The native sparse int8 Linear's ELL forms side by side, against dense int8, in one process.

    python benchmarks/sparse_segments.py [KxN ...] [--m 1,4,16] [--density 0.1] [--forms auto,0,64,128]
    python benchmarks/as_cpu.py avx2 benchmarks/sparse_segments.py 768x3072 --m 1,4

Each shape's weight (N, K) keeps the largest |w| of each row of a standard normal matrix (the
benchmark's magnitude masks, `--density` of them), int8 per output row; the same weight is packed
once per ELL form (`--forms`: `auto` is the packer's default on this CPU, `0` sliding 64-byte
windows, `64` / `128` fixed segments of byte lanes, csrc/sparse_gemm.h) and timed against a dense
int8 weight of the same shape, x (M, K) standard normal, dynamic activations, on 1 and 2
threads: median of 7 rounds of `--reps` calls through the binding (`_native.sparse_int8_linear`,
`_native.int8_linear`), us per call. Every form's output is checked equal to the first's (all are
exact). Prints the ELL vectors of each form. Benchmarks only: figures vary with the machine's
load, so compare forms within one run (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.native_cpu import _native  # noqa: E402

DEFAULT_SHAPES = ("384x384", "384x1536", "768x768", "768x3072", "3072x768", "4096x4096")


def median_us(fn, reps: int) -> float:
    """Median over 7 rounds of ``reps`` calls, after 30 warm-up calls, in microseconds."""
    for _ in range(30):
        fn()
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t0) / reps)
    return float(np.median(rounds)) * 1e6


def magnitude_csr(rng, n: int, k: int, density: float):
    """(indptr, indices, qdata, scale) of a csr int8 weight (N, K): each row's largest |w|."""
    w = rng.standard_normal((n, k))
    keep = max(1, int(round(density * k)))
    cols = np.sort(np.argsort(-np.abs(w), axis=1)[:, :keep], axis=1)
    vals = np.take_along_axis(w, cols, axis=1)
    scale = (np.abs(vals).max(axis=1) / 127).astype(np.float32)
    q = np.clip(np.rint(vals / scale[:, None]), -127, 127).astype(np.int8)
    indptr = np.arange(0, n * keep + 1, keep, dtype=np.int64)
    return indptr, cols.reshape(-1).astype(np.int32), q.reshape(-1), scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=list(DEFAULT_SHAPES), help="KxN weights (default: %(default)s)")
    ap.add_argument("--m", default="1,4,16", help="activation rows, comma-separated (default: 1,4,16)")
    ap.add_argument("--density", type=float, default=0.1, help="kept share of each row (default: 0.1 = 90%% sparse)")
    ap.add_argument("--forms", default="auto,0,64", help="ELL forms: auto, 0 (windows), 64, 128 (default: auto,0,64)")
    ap.add_argument("--reps", type=int, default=200, help="calls per timed round (default: 200)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    forms = [f.strip() for f in args.forms.split(",")]
    print(f"# int8 path {_native.int8_isa()}, default byte segment option {_native.sparse_byte_segment()} "
          f"(0: sliding windows); density {args.density}; us per call, median of 7 x {args.reps}")
    for shape in args.shapes:
        k, n = (int(v) for v in shape.lower().split("x"))
        indptr, indices, qdata, scale = magnitude_csr(rng, n, k, args.density)
        packed = {f: _native.sparse_int8_csr(indptr, indices, qdata, scale, (n, k),
                                             segment=-1 if f == "auto" else int(f)) for f in forms}
        dense = _native.Int8Weight(rng.integers(-127, 128, (n, k)).astype(np.int8), scale, None)
        print(f"K={k} N={n}: " + ", ".join(
            f"{f} = {'windows' if w.windows else f'{w.lanes} {w.segment}'} {w.ell_vectors} vectors" for f, w in packed.items()))
        for m in (int(v) for v in args.m.split(",")):
            x = rng.standard_normal((m, k)).astype(np.float32)
            outs = [_native.sparse_int8_linear(w, x, None, "dynamic", 1.0, 0, activation="none") for w in packed.values()]
            assert all(np.array_equal(outs[0], o) for o in outs[1:]), "the ELL forms disagree"
            cells = []
            for threads in (1, 2):
                _native.set_threads(threads)
                d = median_us(lambda: _native.int8_linear(dense, x, None, "dynamic", 1.0, 0, activation="none"), args.reps)
                row = [f"dense {d:7.1f}"]
                for f, w in packed.items():
                    s = median_us(lambda w=w: _native.sparse_int8_linear(w, x, None, "dynamic", 1.0, 0, activation="none"),
                                  args.reps)
                    row.append(f"{f} {s:7.1f} ({d / s:.2f}x)")
                cells.append(f"{threads}T " + " ".join(row))
            print(f"  M={m:4d}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
