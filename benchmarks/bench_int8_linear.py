"""int8 Linear throughput: qrt numba and qrt native (AMX / AVX-512 VNNI / AVX2) against onnxruntime int8,
PyTorch dynamic int8 and dense fp32 (numpy, onnxruntime), on the shapes table of runtime/bench/gemm.py.

    python benchmarks/bench_int8_linear.py [--quick] [--shapes 768x2304,384x384] [--m 16,128]
                                           [--repeats 20] [--threads N] [--native-isas auto,avx512_vnni]

Every implementation computes Y = X @ W.T + b with X (M, K) float32, W (N, K), b (N,), float32
out, quantization of X included where there is one:

* qrt numba int8: the registered ("Linear", "int8", "numba") kernel with act_quant="dynamic"
  on a per-channel symmetric int8 weight: per-row activation quantization, VNNI GEMM, fused
  float64 epilogue (kernels/numba_cpu/int8.py).
* qrt native int8: the same through the registered ("Linear", "int8", "native") kernel, the C++
  extension (csrc/int8_gemm*.cpp; OpenMP threads), where it is built.
* onnxruntime int8: a MatMul + Add model quantized by onnxruntime.quantization.quantize_dynamic
  (QInt8 weights, per tensor: its default), which onnxruntime runs as DynamicQuantizeMatMul.
* PyTorch int8: torch.ao.quantization.quantize_dynamic on nn.Linear (qint8, fbgemm).
* numpy fp32 (x @ W.T + b through BLAS) and onnxruntime fp32 (MatMul + Add); the faster of the
  two per row is "best fp32".

Validate, then time, then explain: each qrt output is first checked against the reference
kernel (bit-exact expected, on up to 32 rows: rows are quantized independently), and every
implementation's relative error against float64 X @ W.T + b is printed. Timing: each
implementation in its own block of calls after a pause (time_blocked says why), three passes,
at least ``--repeats`` calls in all; reported: the median of the quietest pass, and the spread
(interquartile range / median) over all calls.

Throughput is GOP/s = 2 M N K / median time, also as a share of the int8 VNNI peak measured here
(a register-only vpdpbusd loop on every thread: 128 ops per instruction); a native row on a
forced path (--native-isas) as a share of that path's own peak (the extension's probe: AMX's
TDPBUSD for "amx", 32768 ops per instruction).

OpenBLAS: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow numpy's fp32 on some machines; this script
re-executes itself without them (for its own process only) and prints which BLAS numpy runs.
"""
from __future__ import annotations

import os
import sys

_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _OPENBLAS_VARS):   # before numpy loads OpenBLAS
    _env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_VARS}
    _env["QRT_BENCH_UNSET"] = ",".join(f"{v}={os.environ[v]}" for v in _OPENBLAS_VARS if v in os.environ)
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import registry  # noqa: E402
from kernels.core.layouts import pack_int8  # noqa: E402

BERT = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
MINILM = [(384, 1152), (384, 384), (384, 1536), (1536, 384)]
LLM = [(4096, 4096), (4096, 11008), (11008, 4096)]
ALL_SHAPES = BERT + MINILM + LLM
ALL_M = (1, 16, 128, 512)
QUICK_SHAPES = [(768, 768), (768, 3072), (384, 1536), (4096, 4096)]
QUICK_M = (1, 16, 128)
VALIDATE_ROWS = 32
QRT_PREFIX = "qrt "          # qrt's rows (numba, native on each path): validated against the reference kernel
MIN_SECONDS = 0.3           # per implementation and case: more repeats for fast calls
PASSES = 3
SETTLE_SECONDS = 0.2        # > the spin-wait of OpenBLAS / OpenMP / onnxruntime workers


# --- machine ------------------------------------------------------------------------------------

def blas_summary() -> str:
    try:
        from threadpoolctl import threadpool_info
        rows = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')}, "
                f"{i.get('num_threads')} threads, {os.path.basename(i.get('filepath', ''))})"
                for i in threadpool_info() if i.get("user_api") == "blas"]
        if rows:
            return "; ".join(rows)
    except ImportError:
        pass
    cfg = np.show_config(mode="dicts")
    blas = cfg.get("Build Dependencies", {}).get("blas", {})
    return f"{blas.get('name', '?')} {blas.get('version', '')} (np.show_config; install threadpoolctl for the kernel)"


def machine_summary(threads: int) -> list[str]:
    from kernels.native_cpu import cpu_brand, cpu_features
    feats = [k for k, v in cpu_features().items() if v]
    unset = os.environ.get("QRT_BENCH_UNSET")
    lines = [f"CPU: {cpu_brand()}, {os.cpu_count()} logical cores, {threads} threads used",
             f"ISA: {' '.join(feats)}",
             f"Python {platform.python_version()}, numpy {np.__version__}, BLAS: {blas_summary()}",
             "OpenBLAS env: " + (f"unset for this process ({unset})" if unset else "not set")]
    for mod in ("numba", "onnxruntime", "torch"):
        try:
            lines.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            lines.append(f"{mod}: not installed")
    return lines


_PEAK_RUNNER = None
PEAK_ACCUMULATORS = 12


def _peak_runner():
    """A compiled register-only vpdpbusd loop (PEAK_ACCUMULATORS independent accumulators, two
    vpdpbusd each per iteration), run(n, out) with one prange iteration per thread."""
    global _PEAK_RUNNER
    if _PEAK_RUNNER is not None:
        return _PEAK_RUNNER
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    nacc = PEAK_ACCUMULATORS
    i64 = ir.IntType(64)
    v16 = ir.VectorType(ir.IntType(32), 16)

    @intrinsic
    def spin(typingctx, n, out):
        def codegen(context, builder, sig, args):
            fn = builder.module.globals.get("llvm.x86.avx512.vpdpbusd.512") or ir.Function(
                builder.module, ir.FunctionType(v16, [v16] * 3), "llvm.x86.avx512.vpdpbusd.512")
            out_ptr = context.make_array(sig.args[1])(context, builder, args[1]).data
            pre = builder.block
            loop = builder.append_basic_block("spin")
            done = builder.append_basic_block("done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            accs = [builder.phi(v16) for _ in range(nacc)]
            a, b = ir.Constant(v16, [3] * 16), ir.Constant(v16, [5] * 16)
            new = [builder.call(fn, [builder.call(fn, [acc, a, b]), a, b]) for acc in accs]
            kn = builder.add(k, ir.Constant(i64, 1))
            k.add_incoming(ir.Constant(i64, 0), pre)
            k.add_incoming(kn, loop)
            for i, (acc, nv) in enumerate(zip(accs, new)):
                acc.add_incoming(ir.Constant(v16, [i] * 16), pre)
                acc.add_incoming(nv, loop)
            builder.cbranch(builder.icmp_signed("<", kn, args[0]), loop, done)
            builder.position_at_end(done)
            total = new[0]
            for nv in new[1:]:
                total = builder.add(total, nv)
            builder.store(total, builder.bitcast(out_ptr, v16.as_pointer()), align=4)
            return context.get_dummy_value()
        return types.void(types.intp, out), codegen

    @njit(parallel=True)
    def run(n, out):
        for t in prange(out.shape[0]):
            spin(n, out[t])

    _PEAK_RUNNER = run
    return run


def measure_vnni_peak(threads: int, n: int = 5_000_000, repeats: int = 5) -> float | None:
    """GOP/s of the register-only vpdpbusd loop on every thread (128 ops per vpdpbusd), best
    of ``repeats``; None without VNNI."""
    from kernels.numba_cpu import vnni
    if not vnni.has_vnni():
        return None
    import numba
    run = _peak_runner()
    numba.set_num_threads(threads)
    out = np.zeros((threads, 16), np.int32)
    run(10, out)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(n, out)
        best = max(best, threads * 2 * PEAK_ACCUMULATORS * n * 128 / (time.perf_counter() - t0) / 1e9)
    return best


def wait_for_cores(threads: int, peak: float | None, max_wait: float) -> float | None:
    """On a shared machine: wait (up to max_wait seconds) until a short peak measurement is
    within 15% of ``peak``, i.e. no other process holds one of our cores; returns the last
    short measurement (None without VNNI or when not waiting)."""
    if not peak or max_wait <= 0:
        return None
    deadline = time.perf_counter() + max_wait
    while True:
        now = measure_vnni_peak(threads, n=1_000_000, repeats=2)
        if now >= 0.85 * peak or time.perf_counter() > deadline:
            return now
        time.sleep(2.0)


# --- implementations ----------------------------------------------------------------------------

def native_name(isa: str) -> str:
    """The row name of the native int8 Linear on one of its code paths."""
    return "qrt native int8" if isa == "auto" else f"qrt native int8 ({isa})"


def build_impls(k: int, n: int, w: np.ndarray, b: np.ndarray, threads: int, tmp: str,
                native_isas: tuple[str, ...] = ("auto",)) -> dict:
    """name -> callable(x) -> y (float32 (M, N)), for everything installed here: qrt's int8
    Linear kernels (the native one on each of native_isas: a callable's ``path`` attribute is
    the code path time_blocked sets before its block of calls), and the baselines of
    runtime/bench/gemm.py (numpy / onnxruntime fp32, onnxruntime / PyTorch int8)."""
    from runtime.bench.gemm import baseline_impls
    impls = {}
    t = pack_int8("W", w)                               # per-channel symmetric
    qrt = registry.lookup("Linear", "int8", "numba")({"act_quant": "dynamic"}, {1: t})
    impls["qrt numba int8"] = lambda x: qrt(x, t, b)[0]
    if registry.backend_status("native") is None:
        native = registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: t})
        for isa in native_isas:
            def run(x):
                return native(x, t, b)[0]
            run.path = isa
            impls[native_name(isa)] = run
    omitted: list = []
    for impl in baseline_impls(w, b, threads, tmp, omitted):
        impls[impl.runtime] = impl.run
    for o in omitted:
        print(f"{o['what']}: skipped ({o['reason']})")
    return impls


# --- timing -------------------------------------------------------------------------------------

def time_blocked(impls: dict, x: np.ndarray, repeats: int) -> dict:
    """name -> list of passes, each a list of seconds. Each implementation is timed in its own
    block of calls, after a pause: the runtimes' worker pools (numba's OpenMP, onnxruntime's,
    PyTorch's, OpenBLAS's) spin-wait for a while after each call, and interleaving them call
    by call would time their fight over the cores instead of the kernels. PASSES passes over all
    implementations spread slow machine-wide noise (other processes) over everyone."""
    times = {name: [] for name in impls}
    for _ in range(PASSES):
        for name, fn in impls.items():
            set_native_path(getattr(fn, "path", "auto"))
            time.sleep(SETTLE_SECONDS)
            t0 = time.perf_counter()
            for _ in range(3):                      # warm-up: compilation, allocator, caches
                fn(x)
            per_call = (time.perf_counter() - t0) / 3
            calls = max(-(-repeats // PASSES), min(1000, int(MIN_SECONDS / PASSES / max(per_call, 1e-9))))
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn(x)
                ts.append(time.perf_counter() - t0)
            times[name].append(ts)
    return times


def set_native_path(isa: str) -> None:
    """Force the native int8 code path (or "auto"), where the backend is built."""
    if registry.backend_status("native") is None:
        from kernels.native_cpu import _native
        _native.set_int8_isa(isa)


def best_pass_median(passes: list[list[float]]) -> float:
    """The median of the pass with the lowest median: on a shared machine a whole pass can land
    in another process's busy period; the quietest pass is the kernel's own speed."""
    return min(statistics.median(ts) for ts in passes)


def spread(passes: list[list[float]]) -> float:
    """Interquartile range / median over every timed call of every pass."""
    ts = [t for p in passes for t in p]
    q = statistics.quantiles(ts, n=4)
    return (q[2] - q[0]) / statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES} x M {QUICK_M}")
    ap.add_argument("--shapes", help="comma-separated KxN, e.g. 768x2304,384x384 (default: all of runtime/bench/gemm.py's table)")
    ap.add_argument("--m", help="comma-separated M values (default 1,16,128,512)")
    ap.add_argument("--repeats", type=int, default=20, help="minimum timed calls per implementation (>= 20)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--native-isas", default="auto",
                    help="comma-separated code paths of the native int8 Linear to time side by side, e.g. "
                         "auto,avx512_vnni (default: auto, the best the CPU has)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each case, wait up to SECONDS until no other process holds our cores "
                         "(a short vpdpbusd peak within 15%% of the start's); for shared machines")
    args = ap.parse_args()
    shapes = QUICK_SHAPES if args.quick else ALL_SHAPES
    ms = QUICK_M if args.quick else ALL_M
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    if args.m:
        ms = tuple(int(v) for v in args.m.split(","))
    repeats = max(20, args.repeats)
    native_isas = tuple(v.strip() for v in args.native_isas.split(",") if v.strip())

    reason = registry.backend_status("numba")
    if reason:
        sys.exit(f"numba backend unavailable: {reason}")
    import numba

    from kernels.numba_cpu import set_threads, vnni
    set_threads(args.threads)
    threads = numba.get_num_threads()
    if registry.backend_status("native") is None:
        from kernels.native_cpu import set_threads as native_set_threads
        native_set_threads(threads)

    print("# int8 Linear benchmark\n")
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    for line in machine_summary(threads):
        print(f"- {line}")
    # the machine's int8 peak: one core's register-only vpdpbusd rate times the threads (one
    # core is measurable even when another process holds the others), and all threads at once
    one = measure_vnni_peak(1)
    peak = one * threads if one else None
    peak_start = measure_vnni_peak(threads)
    print(f"- qrt numba GEMM path: {'AVX-512 VNNI' if vnni.has_vnni() else 'portable numba loops (no VNNI)'}")
    native_reason = registry.backend_status("native")
    if native_reason is None:
        from kernels.native_cpu import _native, build_info
        info = build_info()
        print(f"- qrt native GEMM path: {_native.int8_isa()} ({info['compiler']}, OpenMP: {info['openmp']}, "
              f"{_native.get_threads()} threads)")
    else:
        print(f"- qrt native: unavailable ({native_reason})")
    print("- int8 peak (register-only vpdpbusd loop, 128 ops per instruction): "
          + (f"{one:.0f} GOP/s on 1 thread, so {peak:.0f} GOP/s for {threads}; measured on {threads} "
             f"threads at the start: {peak_start:.0f} GOP/s" if peak else "n/a (no VNNI)"))
    if native_reason is None:
        # the extension's own probe (csrc/peak_probe.cpp), as a cross-check, with the fp32 FMA peak
        from kernels.native_cpu import measure_peaks
        p1, pt = measure_peaks(1, seconds=0.4), measure_peaks(threads, seconds=0.4)
        int8 = (f"int8 {p1['int8_gops']:.0f} GOP/s on 1 thread, {pt['int8_gops']:.0f} on {pt['threads']} "
                f"({p1['int8_isa']})" if p1["int8_gops"] else "int8 n/a (no VNNI)")
        print(f"- native peak probe: {int8}; fp32 {p1['fp32_gflops']:.0f} GFLOP/s on 1 thread, "
              f"{pt['fp32_gflops']:.0f} on {pt['threads']} ({p1['fp32_isa']})")
    # each native path's rows as a share of its own instruction's peak (the probe follows the
    # int8 path: AMX's TDPBUSD for "amx", vpdpbusd for "avx512_vnni"), the others of vpdpbusd's
    row_peaks = {}
    for isa in native_isas if native_reason is None else ():
        set_native_path(isa)
        pp = measure_peaks(threads, seconds=0.4)
        row_peaks[native_name(isa)] = pp["int8_gops"]
        print(f"- peak of the native path {_native.int8_isa()} ({native_name(isa)}): "
              f"{pp['int8_gops'] or float('nan'):.0f} GOP/s on {pp['threads']} threads ({pp['int8_isa']})")
    set_native_path("auto")
    print()

    rows, summary = [], []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for k, n in shapes:
            w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32) * 0.1
            impls = build_impls(k, n, w, b, threads, tmp, native_isas)
            ref_kernel = registry.lookup("Linear", "int8", "reference")({"act_quant": "dynamic"}, {1: pack_int8("W", w)})
            t_ref = pack_int8("W", w)
            for m in ms:
                x = rng.standard_normal((m, k)).astype(np.float32)
                # validate
                xv = x[:VALIDATE_ROWS]
                want = ref_kernel(xv, t_ref, b)[0]
                qrt_impls = [name for name in impls if name.startswith(QRT_PREFIX)]
                exact_diff = {name: float(np.max(np.abs(impls[name](xv).astype(np.float64) - want)))
                              for name in qrt_impls}
                truth = xv.astype(np.float64) @ w.T.astype(np.float64) + b
                rel = {name: float(np.linalg.norm(fn(xv) - truth) / np.linalg.norm(truth)) for name, fn in impls.items()}
                # time
                before = wait_for_cores(threads, peak, args.wait_quiet)
                times = time_blocked(impls, x, repeats)
                if args.wait_quiet > 0:
                    time.sleep(SETTLE_SECONDS)             # our own pools' spin-wait first
                after = wait_for_cores(threads, peak, 1e-9 if args.wait_quiet > 0 else 0)
                if before is not None:
                    quiet_note = f", vpdpbusd rate before/after: {before / peak * 100:.0f}%/{after / peak * 100:.0f}% of peak"
                else:
                    quiet_note = ""
                ops = 2.0 * m * n * k
                med = {name: best_pass_median(ts) for name, ts in times.items()}
                fp32 = [nm for nm in ("numpy fp32", "onnxruntime fp32") if nm in med]
                best_fp32 = min(med[nm] for nm in fp32)
                ort8 = med.get("onnxruntime int8")
                for name, ts in times.items():
                    rows.append((k, n, m, name, med[name] * 1e3, spread(ts), ops / med[name] / 1e9,
                                 ops / med[name] / 1e9 / row_peaks.get(name, peak) * 100
                                 if row_peaks.get(name, peak) else float("nan"),
                                 best_fp32 / med[name], ort8 / med[name] if ort8 else float("nan"),
                                 rel[name], sum(map(len, ts))))
                for name in qrt_impls:
                    summary.append((k, n, m, name, best_fp32 / med[name],
                                    ort8 / med[name] if ort8 else float("nan"), exact_diff[name]))
                    print(f"K={k} N={n} M={m}: {name} {ops / med[name] / 1e9:.0f} GOP/s, "
                          f"x{best_fp32 / med[name]:.2f} vs best fp32, "
                          + (f"x{ort8 / med[name]:.2f} vs onnxruntime int8, " if ort8 else "")
                          + f"max |qrt - reference| = {exact_diff[name]:g}{quiet_note}", file=sys.stderr, flush=True)

    peak_end = measure_vnni_peak(threads)
    if peak and peak_end:
        print(f"{threads}-thread vpdpbusd rate at the start {peak_start:.0f} GOP/s, at the end {peak_end:.0f} GOP/s, "
              f"against a peak of {peak:.0f} (lower: other processes held cores). "
              f"'% int8 peak' below is of {peak:.0f} GOP/s"
              + (", a native row's on a named path of that path's peak above" if len(row_peaks) > 1 else "") + ".\n")
    print("| K | N | M | implementation | median ms | spread | GOP/s | % int8 peak | x best fp32 | x ort int8 | rel. err | calls |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k, n, m, name, ms_, sp, gops, pct, vs32, vs8, rel, calls in rows:
        bold = "**" if name.startswith(QRT_PREFIX) else ""
        print(f"| {k} | {n} | {m} | {bold}{name}{bold} | {ms_:.3f} | {sp * 100:.0f}% | {gops:.0f} | {pct:.0f}% | "
              f"{vs32:.2f} | {vs8:.2f} | {rel:.1e} | {calls} |")
    print("\nqrt int8, summary (x = speed-up; > 1 is faster than the baseline):\n")
    print("| K | N | M | implementation | x best fp32 | x onnxruntime int8 | max abs diff vs reference kernel |")
    print("|---|---|---|---|---|---|---|")
    for k, n, m, name, vs32, vs8, diff in summary:
        print(f"| {k} | {n} | {m} | {name} | {vs32:.2f} | {vs8:.2f} | {diff:g} |")
    for name in dict.fromkeys(r[3] for r in summary):
        for label, keep in (("M >= 16", lambda m: m >= 16), ("M = 1", lambda m: m == 1)):
            sel = [r for r in summary if r[3] == name and keep(r[2])]
            if sel:
                g32 = float(np.exp(np.mean([np.log(r[4]) for r in sel])))
                g8 = [r[5] for r in sel if np.isfinite(r[5])]
                g8 = float(np.exp(np.mean(np.log(g8)))) if g8 else float("nan")
                print(f"\n{name}: geometric mean over {len(sel)} cases with {label}: x{g32:.2f} vs best fp32, "
                      f"x{g8:.2f} vs onnxruntime int8")


if __name__ == "__main__":
    main()
