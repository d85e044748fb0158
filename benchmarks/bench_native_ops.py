"""The native fused ops and int4 Linear against the numba backend (and fp32 BLAS for int4),
side by side in one process: attention (B=1, S=128, H=12, D=32, Q/K/V as views of one
buffer, a (1, 1, S, S) mask), SkipLayerNormalization (128 x 384), int4 grouped Linear
((N, K) = (3072, 768), group 64, M = 1 and 16). Each case is checked against the reference
first (max relative error), then timed (median of --repeats calls), for 1 and 2 threads.

    python benchmarks/bench_native_ops.py [--repeats 200]

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed for this process (re-exec), as for every
fp32 baseline here.
"""
from __future__ import annotations

import os
import sys

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import registry  # noqa: E402
from kernels.core.layouts import pack_int4_grouped  # noqa: E402
from runtime.tables import format_table  # noqa: E402


def median_us(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(ts))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args()
    for b in ("numba", "native"):
        if registry.backend_status(b) is not None:
            sys.exit(f"backend {b} unavailable: {registry.backend_status(b)}")
    rng = np.random.default_rng(0)
    s, h, d = 128, 12, 32
    qkv = rng.standard_normal((1, s, 3 * h * d)).astype(np.float32)
    q, k, v = np.split(qkv, 3, axis=-1)
    mask = np.where(rng.random((1, 1, s, s)) < 0.1, np.float32(-1e4), np.float32(0))
    att = {"head_dim": d, "scale": 1 / np.sqrt(d)}
    x = rng.standard_normal((128, 384)).astype(np.float32)
    skip = rng.standard_normal((128, 384)).astype(np.float32)
    g, bias = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    ln = {"epsilon": 1e-12}
    w4 = pack_int4_grouped("w", rng.standard_normal((3072, 768)).astype(np.float32), group_size=64)
    dense4 = np.ascontiguousarray(w4.to_dense().T)
    l4 = registry.fill_attrs("Linear", {})
    cases = [("Attention 1x128, H=12, D=32", "Attention", "dense", att, {}, (q, k, v, mask), 2 * 2 * h * s * s * d),
             ("SkipLayerNorm 128 x 384", "SkipLayerNormalization", "dense", ln, {}, (x, skip, g, bias), 0)]
    for m in (1, 16):
        xm = rng.standard_normal((m, 768)).astype(np.float32)
        cases.append((f"int4 Linear 3072x768 g64, M={m}", "Linear", "int4_grouped", l4, {1: w4}, (xm, w4), 2 * m * 3072 * 768))
    rows = []
    for title, op, layout, attrs, weights, args, flops in cases:
        ref = registry.build(op, layout, "reference", registry.fill_attrs(op, attrs), weights)(*args)[0]
        for threads in (1, 2):
            for backend in ("numba", "native"):
                registry.thread_setter(backend)(threads)
                run = registry.build(op, layout, backend, registry.fill_attrs(op, attrs), weights)
                err = rel(run(*args)[0], ref)
                us = median_us(lambda: run(*args), a.repeats)
                rows.append([title, threads, f"qrt {backend}", f"{us:.1f}", f"{flops / us / 1e3:.1f}" if flops else "-",
                             f"{err:.1e}"])
            if layout == "int4_grouped":
                xm = args[0]
                registry.thread_setter("numba")(threads)     # caps numpy's BLAS too
                us = median_us(lambda: xm @ dense4, a.repeats)
                rows.append([title, threads, "numpy fp32 (dense)", f"{us:.1f}", f"{flops / us / 1e3:.1f}", "-"])
    print(format_table(rows, ["case", "threads", "implementation", "median us", "GFLOP/s", "rel. err vs ref"]))


if __name__ == "__main__":
    main()
