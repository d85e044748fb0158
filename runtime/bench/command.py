"""`qrt bench`: the GEMM sweep (--gemm) and model benchmarks (MODEL.qrt ...), one report.

    qrt bench --gemm [--quick] [--shapes 768x3072,bert] [--m 1,16] [--sparsity 0.5,0.9]
                     [--layouts int8,csr] [--backend native] [--json OUT] [--report DIR]
    qrt bench MODEL.qrt [--backend auto] [--batch 1] [--seq 128] [--compare ORIGINAL.onnx]
                        [--profile] [--json OUT] [--report DIR]

Both may be given in one call; the result is one "qrt-bench/1" dict (runtime/bench/report.py)
printed as Markdown and written as JSON (--json) and as a report folder with plots (--report).

The benchmark process re-executes itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (they
make numpy's fp32 BLAS, the dense baseline, slower on some machines); --keep-blas-env keeps
them (tests use it: they never change the BLAS environment).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys

from kernels.core.threads import usable_cpus
from kernels.registry import BACKENDS

from . import gemm as gemm_mod
from . import machine, report
from .model import bench_model
from .progress import Progress


def add_parser(sub) -> None:
    b = sub.add_parser(
        "bench", help="benchmark kernels (--gemm) or a .qrt model against fp32 and other runtimes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure on this machine. --gemm sweeps Y = X W^T over shapes, batch rows M, "
                    "layouts, sparsities and backends against dense fp32 (numpy, onnxruntime) and "
                    "onnxruntime / PyTorch int8 where installed; MODEL.qrt times a converted model "
                    "(latency, throughput, per-node profile with --profile, per-layer plan) and, with "
                    "--compare ORIGINAL.onnx, the original in onnxruntime fp32 and int8 and qrt's own "
                    "dense fp32 on the same inputs, with output agreement. Prints a Markdown report; "
                    "--json and --report write it.",
        epilog="shape sets for --shapes: " + ", ".join(f"{k} ({len(v)} shapes)" for k, v in gemm_mod.SHAPE_SETS.items())
               + f". --quick: shapes {gemm_mod.QUICK['shapes']}, M {gemm_mod.QUICK['ms']}, "
                 f"sparsities {gemm_mod.QUICK['sparsities']}.")
    b.add_argument("model", nargs="?", help=".qrt file to benchmark (optional with --gemm)")
    b.add_argument("--gemm", action="store_true", help="run the GEMM sweep")
    b.add_argument("--quick", action="store_true", help="the GEMM sweep's quick subset (under 2 minutes)")
    b.add_argument("--shapes", help="comma-separated KxN shapes and/or shape sets (default: all)")
    b.add_argument("--m", help="comma-separated GEMM rows M (default 1,16,128,512)")
    b.add_argument("--sparsity", help="comma-separated sparsities in (0, 1) (default 0.5,0.7,0.8,0.9,0.95; "
                   "0.5 also runs 2:4)")
    b.add_argument("--layouts", help=f"comma-separated qrt layouts (default {','.join(gemm_mod.LAYOUTS)}; also "
                                     "int8w7: int8 with 7-bit weights, as --weight-bits 7 converts)")
    b.add_argument("--backend", help="qrt backend(s), comma-separated: for --gemm default native,numba; "
                   "for a model default auto")
    b.add_argument("--no-baselines", action="store_true", help="--gemm: qrt rows only (no fp32 / onnxruntime / "
                   "PyTorch rows, no speed-ups against them)")
    b.add_argument("--threads", type=int, default=usable_cpus(),
                   help="threads for every runtime (default: the CPUs this process may use, affinity and cgroup quota)")
    b.add_argument("--batch", type=int, default=1, help="model: batch size for symbolic batch dimensions")
    b.add_argument("--seq", type=int, help="model: size of the other symbolic dimensions (sequence length)")
    b.add_argument("--compare", metavar="ORIGINAL.onnx", help="model: also run the original ONNX model")
    b.add_argument("--profile", action="store_true", help="model: time every node (InferenceSession.profile)")
    b.add_argument("--seconds", type=float, help="seconds of timed calls per implementation and case "
                   f"(default {gemm_mod.MIN_SECONDS} for --gemm, 1.0 for a model)")
    b.add_argument("--json", metavar="OUT.json", help="write the result as JSON (with the machine fingerprint)")
    b.add_argument("--report", metavar="DIR", help="write report.md, report.json and the PNG plots to DIR")
    b.add_argument("--remeasure-peaks", action="store_true", help="measure the machine's peaks again (they are "
                   "measured once per machine and cached)")
    b.add_argument("--keep-blas-env", action="store_true", help="do not re-execute without OPENBLAS_CORETYPE / "
                   "OPENBLAS_L2_SIZE (the fp32 baseline may then be slower than it can be)")
    b.set_defaults(func=cmd_bench)


def _csv(text: str | None, conv, what: str) -> list | None:
    if text is None:
        return None
    try:
        out = [conv(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"--{what}: {e}") from None
    if not out:
        raise ValueError(f"--{what}: empty list")
    return out


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'768x3072,bert' -> [(768, 3072), *BERT]."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in gemm_mod.SHAPE_SETS:
            out += gemm_mod.SHAPE_SETS[item]
            continue
        k, sep, n = item.partition("x")
        if not sep or not k.isdigit() or not n.isdigit() or int(k) < 1 or int(n) < 1:
            raise ValueError(f"--shapes: {item!r} is neither KxN (e.g. 768x3072) nor a shape set "
                             f"({', '.join(gemm_mod.SHAPE_SETS)})")
        out.append((int(k), int(n)))
    return out


def _positive_int(v: str) -> int:
    i = int(v)
    if i < 1:
        raise ValueError(f"{v} is not >= 1")
    return i


def _sparsity(v: str) -> float:
    s = float(v)
    if not 0 < s < 1:
        raise ValueError(f"{v} is not in (0, 1)")
    return s


def _layout(v: str) -> str:
    known = gemm_mod.LAYOUTS + gemm_mod.EXTRA_LAYOUTS
    if v not in known:
        raise ValueError(f"{v!r} is not one of {', '.join(known)}")
    return v


def gemm_sweep_from_args(args) -> gemm_mod.Sweep:
    base = gemm_mod.Sweep.quick() if args.quick else gemm_mod.Sweep()
    backends = _csv(args.backend, str, "backend")
    if backends:
        bad = [b for b in backends if b not in BACKENDS]
        if bad:
            raise ValueError(f"--backend: unknown backend {bad[0]!r}; expected some of {', '.join(BACKENDS)}")
    return gemm_mod.Sweep(
        shapes=parse_shapes(args.shapes) if args.shapes else base.shapes,
        ms=tuple(_csv(args.m, _positive_int, "m") or base.ms),
        sparsities=tuple(_csv(args.sparsity, _sparsity, "sparsity") or base.sparsities),
        layouts=tuple(_csv(args.layouts, _layout, "layouts") or base.layouts),
        backends=tuple(backends or base.backends), baselines=not args.no_baselines, threads=args.threads,
        min_seconds=args.seconds or gemm_mod.MIN_SECONDS)


# a row measured above its peak by more than this shows the peak itself was measured low
PEAK_SLACK = 1.10


def check_peaks(result: dict) -> list[str]:
    """A peak that measured rates exceed (a peak probe run on a busy machine: "fp32 peak
    1 GOP/s" and rows at 8269% of it) is no peak: it is dropped from the result (no % peak,
    no roof in the plot), its cache entry removed so the next run measures again, and the
    warning returned."""
    peaks = (result.get("machine") or {}).get("peaks") or {}
    warnings = []
    for key, precisions in (("int8_gops", ("int8",)), ("fp32_gflops", ("fp32", "int4"))):
        rows = [r for r in result.get("gemm") or [] if r["precision"] in precisions and r.get("pct_peak")]
        # The fp32 probe is the FMA units' ceiling: no row may pass it. The int8 probe times
        # qrt's exact instruction sequence, which on AVX2 another library (onnxruntime's
        # saturating 16-bit sums) may pass for real: only qrt's rows test it.
        judged = rows if key == "fp32_gflops" else [r for r in rows if r["runtime"].startswith("qrt ")]
        worst = max((r["pct_peak"] for r in judged), default=0.0)
        if peaks.get(key) and worst > 100 * PEAK_SLACK:
            warnings.append(f"the measured {key.split('_')[0]} peak, {peaks[key]:.1f}, is below rates this run "
                            f"measured ({worst:.0f}% of it): the machine was busy while the peak was measured; "
                            f"% peak is left out (qrt bench --remeasure-peaks on a quiet machine)")
            peaks[key] = None
            for r in rows:
                r["pct_peak"] = None
    if warnings:
        peaks["source"] = f"{peaks.get('source', '')}; dropped: below measured rates"
        machine.forget_peaks((result.get("machine") or {}).get("key"))
    return warnings


def cmd_bench(args) -> int:
    if not args.gemm and not args.model:
        raise ValueError("nothing to benchmark: give a MODEL.qrt file and/or --gemm (see qrt bench --help)")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.model and not os.path.isfile(args.model):
        raise ValueError(f"no such .qrt file: {args.model}")
    if args.compare and not args.model:
        raise ValueError("--compare needs a MODEL.qrt to compare with")
    if args.compare and not os.path.isfile(args.compare):     # before the peaks take seconds
        raise ValueError(f"--compare {args.compare}: no such ONNX file")
    for flag in ("batch", "seq"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ValueError(f"--{flag} must be >= 1, got {v}")
    sweep = gemm_sweep_from_args(args) if args.gemm else None      # argument errors before any work
    for out in (args.json, args.report):
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise ValueError(f"the folder of {out!r} does not exist")
    if not args.keep_blas_env:
        machine.openblas_reexec()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    busy = machine.busy_warning(args.threads)
    if busy:
        log(f"qrt bench: warning: {busy}")
    log("qrt bench: this machine's peaks")
    fp = machine.fingerprint(args.threads, measure=True, remeasure=args.remeasure_peaks)
    if busy:
        fp["busy_warning"] = busy
    pair_before = machine.cpu_pair_latency() if args.threads > 1 else None   # machine.py; one thread shares nothing
    result = {"schema": report.SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "qrt " + shlex.join(getattr(args, "argv", None) or ["bench"]),
              "machine": fp, "omitted": []}
    if sweep is not None:
        cases = len(sweep.shapes) * len(sweep.ms)
        with Progress(cases, "gemm sweep") as bar:
            rows, omitted = gemm_mod.run_sweep(sweep, fp["peaks"], progress=bar, log=log)
        result["gemm"] = rows
        result["omitted"] += omitted
        for line in check_peaks(result):
            log(f"qrt bench: warning: {line}")
    if args.model:
        result["models"] = [bench_model(args.model, backend, batch=args.batch, seq=args.seq, threads=args.threads,
                                        compare=args.compare, profile=args.profile,
                                        min_seconds=args.seconds or 1.0, omitted=result["omitted"], log=log)
                            for backend in (_csv(args.backend, str, "backend") or ["auto"])]
    if args.threads > 1:   # how near the CPUs were, before and after the timing (machine.py)
        fp["cpu_pair"] = {"before": pair_before, "after": machine.cpu_pair_latency()}
        _, far = machine.describe_cpu_pair(pair_before, fp["cpu_pair"]["after"])
        if far:
            log(f"qrt bench: warning: {far}")
    report.validate(result)
    print(report.to_markdown(result))
    if args.json:
        report.write_json(result, args.json)
        log(f"wrote {args.json}")
    if args.report:
        written = report.write_report(result, args.report)
        log(f"wrote {', '.join(str(p) for p in written.values())}")
    return 0
