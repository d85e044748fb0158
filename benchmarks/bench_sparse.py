"""Sparse int8 Linear (numba and qrt native: csr, bsr, nm) against dense int8 (numba / native)
and dense fp32 (numpy).

Validate, then time, then explain:

1. validate: every sparse kernel's output is compared with the reference kernel of its layout
   (kernels/reference/packed.py) on the same packed weight: act_quant "dynamic" results must
   be identical bits; a mismatch is reported and the row marked FAIL;
2. time: the whole Linear call (quantize X, GEMM, epilogue), warm-up, then the median (and
   the spread p10..p90) of --reps runs; all variants of a (shape, M) timed round-robin in
   one process, so that they share the machine's noise and their ratios are the figures
   that count (absolute times on a shared machine drift);
3. explain: speedup over dense int8 on the same backend (numba rows: numba dense int8; "qrt
   native" rows: the native dense int8 kernel, csrc/int8_gemm.cpp) and over dense fp32 numpy, dense-
   equivalent GOP/s (2 M N K / t), the share of the measured int8 peak (a register-only
   vpdpbusd loop), for M = 1 the bytes the kernel streams and the bandwidth that implies,
   and per shape the break-even sparsity (the lowest benchmarked sparsity at which the
   sparse kernel beats dense int8).

    python benchmarks/bench_sparse.py                 # BERT-base and MiniLM shapes, M in {1, 16}
    python benchmarks/bench_sparse.py --full --m 1,16,128
    python benchmarks/bench_sparse.py --threads 1 --layouts csr,bsr16x1 --sparsities 0.9
    python benchmarks/bench_sparse.py --shapes 384:1536,768:3072 --sparsities 0.9 --backends native

OpenBLAS: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow numpy's fp32 on some machines; the script
re-executes itself without them (this process only) before importing numpy, and reports the
BLAS numpy uses.
"""
from __future__ import annotations

import os
import sys

_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _BLAS_VARS) and os.environ.get("_QRT_BENCH_REEXEC") != "1":
    env = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
    env["_QRT_BENCH_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import argparse
import platform
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import registry
from kernels.core import layouts
from runtime.convert import prune

BERT_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
MINILM_SHAPES = [(384, 1152), (384, 384), (384, 1536), (1536, 384)]
LLM_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
# name -> (layout, block_shape); 16x1 is the block shape the Ell kernel favours (a block
# column fills the 16 rows of an Ell vector), 4x4 / 1x16 the quad paths at larger M
LAYOUTS = {"csr": ("csr", None), "bsr1x4": ("bsr", (1, 4)), "bsr4x4": ("bsr", (4, 4)),
           "bsr16x1": ("bsr", (16, 1)), "bsr1x16": ("bsr", (1, 16)),
           # not in the default list: the native quad kernels' other shapes (--layouts)
           "bsr16x4": ("bsr", (16, 4)), "bsr2x4": ("bsr", (2, 4))}
DEFAULT_LAYOUTS = ("csr", "bsr1x4", "bsr4x4", "bsr16x1", "bsr1x16", "nm2:4")
ACT = {"act_quant": "dynamic"}


def timeit(fn, reps: int, warmup: int = 3) -> tuple[float, float, float]:
    """(median, p10, p90) seconds of ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.percentile(ts, 10)), float(np.percentile(ts, 90))


def machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import numba
        info["numba"] = numba.__version__
        info["threads"] = numba.get_num_threads()
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in txt.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in txt.splitlines() if line.startswith("flags"))
        info["isa"] = " ".join(f for f in flags if f.startswith(("avx512", "avx2", "fma")))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["blas"] = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except (TypeError, AttributeError, KeyError) as e:     # numpy without show_config(mode=)
        info["blas"] = f"unknown ({type(e).__name__})"
    try:
        from threadpoolctl import threadpool_info
        info["blas_runtime"] = "; ".join(f"{p.get('internal_api')} {p.get('architecture', '')}"
                                         for p in threadpool_info())
    except ImportError:
        pass
    return info


def measure_peaks(threads: int) -> dict:
    """int8 peak: a register-only vpdpbusd loop (8 independent accumulators, no memory
    operands), one thread, times the thread count; read bandwidth: a parallel sum over 256 MiB."""
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from kernels.numba_cpu.sparse import HAS_VNNI, _v_add, _v_dot, _v_load, i32x16

    @intrinsic
    def hsum(typingctx, v):
        def impl(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(32), [ir.VectorType(ir.IntType(32), 16)]),
                "llvm.vector.reduce.add.v16i32")
            return builder.call(fn, [args[0]])
        return types.int32(i32x16), impl

    @njit(cache=False)
    def peak_loop(iters, seed):
        x = _v_load(seed, 0)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _v_load(seed, 64)
        for _ in range(iters):
            a0 = _v_dot(a0, x, x)
            a1 = _v_dot(a1, x, x)
            a2 = _v_dot(a2, x, x)
            a3 = _v_dot(a3, x, x)
            a4 = _v_dot(a4, x, x)
            a5 = _v_dot(a5, x, x)
            a6 = _v_dot(a6, x, x)
            a7 = _v_dot(a7, x, x)
        return hsum(_v_add(_v_add(_v_add(a0, a1), _v_add(a2, a3)), _v_add(_v_add(a4, a5), _v_add(a6, a7))))

    @njit(cache=False, parallel=True)
    def read_sum(a):
        s = 0
        for i in prange(a.shape[0]):
            s += a[i]
        return s

    seed = np.arange(128, dtype=np.uint8)
    peak_loop(10, seed)
    iters = 2_000_000
    t, _, _ = timeit(lambda: peak_loop(iters, seed), 5, 1)
    gops = 2 * 64 * 8 * iters / t / 1e9
    big = np.ones(32 << 20, np.int64)
    read_sum(big)
    tb, _, _ = timeit(lambda: read_sum(big), 5, 1)
    return {"int8_peak_gops_1t": gops, "int8_peak_gops": gops * threads, "vnni": HAS_VNNI,
            "read_gbs": big.nbytes / tb / 1e9, "threads": threads, "numba_threads": numba.get_num_threads()}


def dense_int8_kernel(w: np.ndarray):
    """(run(x), label): the numba dense int8 Linear if registered, else the reference dense int8
    path's arithmetic as a numpy float32 matmul of the dequantized weight (said in the label)."""
    t = layouts.pack("int8", "w", w)
    attrs = registry.fill_attrs("Linear", ACT)
    if registry.has_kernel("Linear", "int8", "numba"):
        run = registry.lookup("Linear", "int8", "numba")(attrs, {1: t})
        return (lambda x: run(x, t, None)[0]), "numba int8", t
    wt = np.ascontiguousarray(t.to_dense().T)
    return (lambda x: x @ wt), "fp32 matmul of dequantized int8 (numba int8 not registered)", t


def sparse_weight(w: np.ndarray, layout: str, block, sparsity: float) -> layouts.PackedTensor:
    if layout == "csr":
        return layouts.pack("csr", "w", w, prune.magnitude_mask(w, sparsity), quant="int8")
    if layout == "nm":
        return layouts.pack("nm", "w", w, prune.nm_mask(w, 2, 4), quant="int8")
    return layouts.pack("bsr", "w", w, prune.block_mask(w, sparsity, block), quant="int8", block_shape=block)


def streamed_bytes(gemm, m: int) -> int:
    """Bytes of the packed structure the chosen kernel reads once per call (weights side)."""
    path = gemm.path(m)
    if path == "ell":
        st = gemm.structure("ell")
        return st.vidx.nbytes + st.vval.nbytes + st.sptr.nbytes
    if path in ("block_quad_tiles",):
        st = gemm.structure("block_quad_tiles")
        return st.wq.nbytes + st.qcol.nbytes + st.bptr.nbytes
    if path == "quad_tiles":
        st = gemm.structure("quad_tiles")
        return st.qw.nbytes + st.qidx.nbytes + st.qptr.nbytes
    if path == "value_groups":
        st = gemm.structure("value_groups")
        return st.gw.nbytes + st.cols.nbytes + st.gptr.nbytes
    return gemm.rc.cols.nbytes + gemm.rc.values.nbytes


def interleaved(fns: dict, reps: int, warmup: int = 3) -> dict:
    """name -> (median, p10, p90) seconds, timing the variants round-robin (each round runs
    every variant once): on a shared, noisy machine all variants then see the same noise, so
    their ratios hold even when absolute times drift."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90)))
            for name, v in ts.items()}


def native_bytes(packed, m: int) -> int:
    """Bytes of the native packed structure the M = 1 path reads once per call (the weights
    side; printed for M = 1 only)."""
    return packed.kernel_nbytes


def run_shape(k: int, n: int, ms, configs, sparsities, reps, peaks, rng, rows_out, fails, backends=("numba",)):
    from kernels.numba_cpu import sparse
    use_numba = "numba" in backends
    use_native = "native" in backends
    if use_native:
        from kernels.native_cpu.sparse import pack_sparse
    w = rng.standard_normal((n, k)).astype(np.float32)
    wt32 = np.ascontiguousarray(w.T)
    dense_run, dense_label, dense_t = dense_int8_kernel(w)
    dense_ref = registry.lookup("Linear", "int8", "reference")(registry.fill_attrs("Linear", ACT), {1: dense_t})
    xs = {m: (rng.standard_normal((m, k)) * 1.5).astype(np.float32) for m in ms}
    # build and validate every sparse variant first
    variants = []                                  # (name, sparsity, tensor, run, gemm)
    native_variants = []                           # (name, sparsity, tensor, run, native packed weight)
    attrs = registry.fill_attrs("Linear", ACT)
    for name in configs:
        layout, block = ("nm", None) if name == "nm2:4" else LAYOUTS[name]
        for sp in ([0.5] if name == "nm2:4" else sparsities):
            if block is not None and (n % block[0] or k % block[1]):
                continue
            t = sparse_weight(w, layout, block, sp)
            if use_numba:
                fast = registry.lookup("Linear", layout, "numba")(attrs, {1: t})
                variants.append((name, sp, t, fast, sparse.SparsePlan(t, "dynamic")))
            if use_native:
                fast = registry.lookup("Linear", layout, "native")(attrs, {1: t})
                native_variants.append((name, sp, t, fast, pack_sparse(t)))
    native_dense = None
    if use_native:
        nd = registry.lookup("Linear", "int8", "native")(attrs, {1: dense_t})
        native_dense = (lambda x: nd(x, dense_t, None)[0])
    for m in ms:
        x = xs[m]
        valid = {}
        if dense_label == "numba int8":
            valid["int8"] = bool(np.array_equal(dense_run(x), dense_ref(x, dense_t, None)[0]))
        for name, sp, t, fast, _ in variants:
            ref = registry.lookup("Linear", t.layout, "reference")(attrs, {1: t})
            valid[(name, sp)] = bool(np.array_equal(fast(x, t, None)[0], ref(x, t, None)[0]))
            del ref
        if native_dense is not None:
            valid["native int8"] = bool(np.array_equal(native_dense(x), dense_ref(x, dense_t, None)[0]))
        for name, sp, t, fast, _ in native_variants:
            ref = registry.lookup("Linear", t.layout, "reference")(attrs, {1: t})
            valid[("native", name, sp)] = bool(np.array_equal(fast(x, t, None)[0], ref(x, t, None)[0]))
            del ref
        fns = {"fp32": lambda x=x: x @ wt32, "int8": lambda x=x: dense_run(x)}
        for name, sp, t, fast, _ in variants:
            fns[(name, sp)] = (lambda f=fast, tt=t, x=x: f(x, tt, None))
        if native_dense is not None:
            fns["native int8"] = lambda x=x: native_dense(x)
        for name, sp, t, fast, _ in native_variants:
            fns[("native", name, sp)] = (lambda f=fast, tt=t, x=x: f(x, tt, None))
        times = interleaved(fns, reps)
        t_fp32, t_int8 = times["fp32"], times["int8"]
        flops = 2.0 * m * n * k
        rows_out.append({"K": k, "N": n, "M": m, "kernel": "dense fp32 (numpy)", "sparsity": 0.0, "t": t_fp32, "ok": None,
                             "gops": flops / t_fp32[0] / 1e9, "vs_fp32": 1.0, "vs_int8": t_int8[0] / t_fp32[0]})
        rows_out.append({"K": k, "N": n, "M": m, "kernel": f"dense int8 ({dense_label})", "sparsity": 0.0, "t": t_int8,
                             "ok": valid.get("int8"), "gops": flops / t_int8[0] / 1e9, "vs_int8": 1.0,
                             "vs_fp32": t_fp32[0] / t_int8[0], "peak": flops / t_int8[0] / 1e9 / peaks["int8_peak_gops"],
                             "bytes": n * k, "gbs": n * k / t_int8[0] / 1e9 if m == 1 else None})
        if valid.get("int8") is False:
            fails.append(f"dense int8 K={k} N={n} M={m}")
        if native_dense is not None:
            t_nat = times["native int8"]
            if not valid["native int8"]:
                fails.append(f"native dense int8 K={k} N={n} M={m}")
            rows_out.append({"K": k, "N": n, "M": m, "kernel": "dense int8 (qrt native; baseline of the native rows)",
                             "sparsity": 0.0, "t": t_nat, "ok": valid["native int8"], "gops": flops / t_nat[0] / 1e9,
                             "vs_int8": 1.0, "vs_fp32": t_fp32[0] / t_nat[0],
                             "peak": flops / t_nat[0] / 1e9 / peaks["int8_peak_gops"],
                             "bytes": n * k, "gbs": n * k / t_nat[0] / 1e9 if m == 1 else None})
            for name, sp, t, fast, packed in native_variants:
                tm = times[("native", name, sp)]
                ok = valid[("native", name, sp)]
                if not ok:
                    fails.append(f"native {name} {sp} K={k} N={n} M={m}")
                nbytes = native_bytes(packed, m)
                rows_out.append({"K": k, "N": n, "M": m, "kernel": f"{name} (qrt native: {packed.path(m)})",
                                 "sparsity": sp, "t": tm, "ok": ok, "gops": flops / tm[0] / 1e9,
                                 "peak": flops / tm[0] / 1e9 / peaks["int8_peak_gops"],
                                 "vs_int8": t_nat[0] / tm[0], "vs_fp32": t_fp32[0] / tm[0],
                                 "bytes": nbytes, "gbs": nbytes / tm[0] / 1e9 if m == 1 else None,
                                 "config": f"native {name}"})
        for name, sp, t, fast, gemm in variants:
            tm = times[(name, sp)]
            ok = valid[(name, sp)]
            if not ok:
                fails.append(f"{name} {sp} K={k} N={n} M={m}")
            nbytes = streamed_bytes(gemm, m)
            rows_out.append({"K": k, "N": n, "M": m, "kernel": f"{name} ({gemm.path(m)})", "sparsity": sp, "t": tm, "ok": ok,
                                 "gops": flops / tm[0] / 1e9, "peak": flops / tm[0] / 1e9 / peaks["int8_peak_gops"],
                                 "vs_int8": t_int8[0] / tm[0], "vs_fp32": t_fp32[0] / tm[0],
                                 "bytes": nbytes, "gbs": nbytes / tm[0] / 1e9 if m == 1 else None, "config": name})


def fmt_table(rows) -> str:
    out = [("| K | N | M | kernel (path) | sparsity | median us (p10-p90) | vs dense int8 | vs fp32 | "
            "GOP/s (dense eq.) | % int8 peak | M=1: MB read, GB/s | valid |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def opt(v, f):
        return "-" if v is None else f.format(v)
    for r in rows:
        t, lo, hi = (v * 1e6 for v in r["t"])
        mb = f"{r['bytes'] / 1e6:.2f}, {r['gbs']:.1f}" if r.get("gbs") is not None else "-"
        ok = {True: "ok", False: "FAIL", None: "-"}[r["ok"]]
        out.append(f"| {r['K']} | {r['N']} | {r['M']} | {r['kernel']} | {r['sparsity']:.0%} | "
                   f"{t:.1f} ({lo:.1f}-{hi:.1f}) | {opt(r.get('vs_int8'), '{:.2f}x')} | "
                   f"{opt(r.get('vs_fp32'), '{:.2f}x')} | {r['gops']:.0f} | "
                   f"{opt(None if r.get('peak') is None else 100 * r['peak'], '{:.0f}%')} | {mb} | {ok} |")
    return "\n".join(out)


def break_even(rows) -> str:
    """Per (shape, M, config): the lowest benchmarked sparsity at which sparse beats dense int8,
    and the speedup at 90%."""
    out = ["| K | N | M | config | break-even sparsity vs dense int8 | speedup at 90% |", "|---|---|---|---|---|---|"]
    keys = sorted({(r["K"], r["N"], r["M"], r["config"]) for r in rows if "config" in r and not r["config"].endswith("nm2:4")},
                  key=lambda t: (t[0], t[1], t[2], t[3]))
    for k, n, m, c in keys:
        sel = sorted((r for r in rows if r.get("config") == c and (r["K"], r["N"], r["M"]) == (k, n, m)),
                     key=lambda r: r["sparsity"])
        be = next((f"{r['sparsity']:.0%}" for r in sel if r["vs_int8"] >= 1.0), "none")
        s90 = next((f"{r['vs_int8']:.2f}x" for r in sel if abs(r["sparsity"] - 0.9) < 1e-9), "-")
        out.append(f"| {k} | {n} | {m} | {c} | {be} | {s90} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also the LLM shapes (4096 / 11008)")
    ap.add_argument("--m", default="1,16", help="comma-separated batch rows M (default 1,16)")
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    ap.add_argument("--reps", type=int, default=30, help="timed runs per variant (>= 20)")
    ap.add_argument("--layouts", default=",".join(DEFAULT_LAYOUTS),
                    help=f"comma-separated, of {', '.join(list(LAYOUTS) + ['nm2:4'])}")
    ap.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    ap.add_argument("--shapes", default=None, help="K:N,K:N,... instead of the tables")
    ap.add_argument("--out", default=None, help="also write the markdown report to this file")
    ap.add_argument("--backends", default="numba,native",
                    help="sparse backends to time: numba, native (default both; native where it is built)")
    args = ap.parse_args(argv)
    if args.reps < 20:
        ap.error("--reps must be >= 20")
    reason = registry.backend_status("numba")
    if reason is not None:
        print(f"numba backend unavailable: {reason}")
        return 1
    import numba
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    backends = tuple(b for b in args.backends.split(",") if b)
    if "native" in backends:
        native_reason = registry.backend_status("native")
        if native_reason is not None:
            print(f"native backend unavailable ({native_reason}): its rows are left out")
            backends = tuple(b for b in backends if b != "native")
        else:
            import kernels.native_cpu as native
            native.set_threads(threads)        # the same thread count as numba's
    ms = [int(v) for v in args.m.split(",")]
    configs = args.layouts.split(",")
    sparsities = [float(v) for v in args.sparsities.split(",")]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    else:
        shapes = BERT_SHAPES + MINILM_SHAPES + (LLM_SHAPES if args.full else [])
    info = machine()
    peaks = measure_peaks(threads)
    head = ["# qrt sparse int8 benchmark", "",
            f"command: `{' '.join([os.path.basename(sys.executable)] + sys.argv)}`", "",
            "machine: " + "; ".join(f"{k}={v}" for k, v in info.items()), "",
            (f"measured: int8 peak {peaks['int8_peak_gops_1t']:.0f} GOP/s per thread (register-only vpdpbusd, "
             f"VNNI={peaks['vnni']}), x {threads} threads = {peaks['int8_peak_gops']:.0f} GOP/s; "
             f"read bandwidth {peaks['read_gbs']:.1f} GB/s ({threads} threads)"), ""]
    print("\n".join(head), flush=True)
    rng = np.random.default_rng(0)
    rows, fails = [], []
    for k, n in shapes:
        shape_rows = []
        run_shape(k, n, ms, configs, sparsities, args.reps, peaks, rng, shape_rows, fails, backends)
        rows += shape_rows
        print(fmt_table(shape_rows), "\n", flush=True)
    report = "\n".join(head) + "\n" + fmt_table(rows) + "\n\n## Break-even\n\n" + break_even(rows) + "\n"
    print("## Break-even\n\n" + break_even(rows))
    if fails:
        print("\nVALIDATION FAILED: " + "; ".join(fails))
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
