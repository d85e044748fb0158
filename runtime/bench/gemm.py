"""The GEMM sweep behind `qrt bench --gemm` and the pytest-benchmark suite: Y = X @ W.T + b for
every (shape, M, layout, sparsity, backend), against dense fp32 and the int8 runtimes users
would otherwise pick, validated, then timed side by side in one process.

Shapes, M and sparsities: the design card's table, written here (SHAPE_SETS, ALL_M, SPARSITIES). Implementations of one case (``Impl``):

* qrt: the registered ("Linear", layout, backend) kernel, exactly what a session runs, on a
  weight packed like the converter packs it: int8 per channel with dynamic activations; int4
  grouped (g = 64) weight-only; csr, bsr (4x4 blocks: the native kernels' preferred shape)
  and 2:4 nm, int8 values, dynamic activations. Sparsity is magnitude pruning at the case's
  level (2:4 only at 50%).
* baselines, where installed: numpy fp32 (BLAS), onnxruntime fp32 (MatMul + Add), the better
  of the two is "best dense fp32"; onnxruntime int8 (quantize_dynamic: DynamicQuantizeMatMul,
  MLAS) and PyTorch dynamic int8 (fbgemm). A missing one is an "omitted" entry with the reason.

Validate, then time: each qrt output is compared with the reference kernel of its packed
weight (bit-exact for the integer layouts, the int4 kernels' stated bound for int4); each
baseline's error against float64 X @ W.T + b is recorded. Timing: runtime/bench/timing.py
(blocked calls, several passes, the median of the quietest pass; spread = interquartile
range / median over every call).
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kernels import registry
from kernels.core import layouts as L
from runtime.convert import prune

from .timing import quietest_median, spread, time_blocked

BERT = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
MINILM = [(384, 1152), (384, 384), (384, 1536), (1536, 384)]
LLM = [(4096, 4096), (4096, 11008), (11008, 4096)]
SHAPE_SETS = {"bert": BERT, "minilm": MINILM, "llm": LLM, "all": BERT + MINILM + LLM}
ALL_M = (1, 16, 128, 512)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
LAYOUTS = ("int8", "int4", "csr", "bsr", "nm")
# report layouts beyond the default sweep: "int8w7" is int8 with 7-bit weights ([-63, 63], the
# converter's --weight-bits 7), which the AVX2 kernels multiply with their narrow tile
EXTRA_LAYOUTS = ("int8w7",)
BSR_BLOCK = (4, 4)
INT4_GROUP = 64
# the quick subset: one shape per family, small and large M, two sparsities
QUICK = {"shapes": [(768, 768), (384, 1536)], "ms": (1, 128), "sparsities": (0.5, 0.9)}

VALIDATE_ROWS = 16          # rows quantize independently: a few rows validate the kernel
INT4_RTOL = 1e-5            # int4 float32 summation vs the float64 reference (csrc/int4_gemm.h bound)
MIN_SECONDS = 0.15          # of calls per implementation and case, over all passes


@dataclass
class Impl:
    """One way to compute the case's Y (M, N) float32 from X (M, K) float32."""
    runtime: str            # "qrt native", "numpy fp32", ...
    layout: str             # report layout: fp32, int8, int4, csr, bsr, nm
    precision: str          # fp32, int8, int4
    weight_bytes: int       # as stored / as the runtime holds it
    run: Callable[[np.ndarray], np.ndarray]
    sparsity: float = 0.0
    block: str | None = None
    reference: Callable[[np.ndarray], np.ndarray] | None = None   # qrt: the reference kernel
    tolerance: float = 0.0  # qrt: max |y - reference| allowed, relative to max |reference|

    @property
    def is_qrt(self) -> bool:
        return self.runtime.startswith("qrt ")

    @property
    def name(self) -> str:
        lay = self.layout + (f" {self.block}" if self.block and self.layout == "bsr" else "")
        return f"{self.runtime} {lay}" + (f" {self.sparsity:.0%}" if self.sparsity else "")


@dataclass
class Sweep:
    """What to run: shapes (K, N), M values, sparsities, layouts and qrt backends."""
    shapes: list[tuple[int, int]] = field(default_factory=lambda: list(SHAPE_SETS["all"]))
    ms: tuple[int, ...] = ALL_M
    sparsities: tuple[float, ...] = SPARSITIES
    layouts: tuple[str, ...] = LAYOUTS
    backends: tuple[str, ...] = ("native", "numba")
    baselines: bool = True
    threads: int = 1
    min_seconds: float = MIN_SECONDS

    @staticmethod
    def quick(**kw) -> "Sweep":
        return Sweep(shapes=list(QUICK["shapes"]), ms=QUICK["ms"], sparsities=QUICK["sparsities"], **kw)


# --- building implementations ----------------------------------------------------------------------

def pack_case(w: np.ndarray, layout: str, sparsity: float = 0.0):
    """(PackedTensor, block label or None) of w (N, K) float32 in a report layout (fp32, int8,
    int4, csr, bsr, nm) pruned to ``sparsity`` (magnitude; 2:4 for nm; 4x4 blocks for bsr),
    packed like the converter packs it; None where the shape does not fit (bsr, nm)."""
    n, k = w.shape
    if layout == "fp32":
        return L.pack_dense("w", w), None
    if layout == "int8":
        return L.pack_int8("w", w), None
    if layout == "int8w7":
        return L.pack_int8("w", w, qmax=L.NARROW_INT8_QMAX), "w7"
    if layout == "int4":
        return L.pack_int4_grouped("w", w, group_size=INT4_GROUP), f"g{INT4_GROUP}"
    if layout == "csr":
        return L.pack("csr", "w", w, prune.magnitude_mask(w, sparsity), quant="int8"), None
    if layout == "bsr" and n % BSR_BLOCK[0] == 0 and k % BSR_BLOCK[1] == 0:
        return (L.pack("bsr", "w", w, prune.block_mask(w, sparsity, BSR_BLOCK), quant="int8", block_shape=BSR_BLOCK),
                "x".join(map(str, BSR_BLOCK)))
    if layout == "nm" and k % 4 == 0:
        return L.pack("nm", "w", w, prune.nm_mask(w, 2, 4), quant="int8"), "2:4"
    return None, None


def layout_cases(layouts: tuple[str, ...], sparsities: tuple[float, ...]) -> list[tuple[str, float]]:
    """(layout, sparsity) of a sweep: dense layouts once, csr / bsr at every sparsity, 2:4
    (nm) at 50% only."""
    out = [(lay, 0.0) for lay in ("fp32", "int8", "int8w7", "int4") if lay in layouts]
    for s in sparsities:
        out += [(lay, s) for lay in ("csr", "bsr") if lay in layouts]
        if "nm" in layouts and s == 0.5:
            out.append(("nm", s))
    return out


def packed_weights(w: np.ndarray, layouts: tuple[str, ...], sparsities: tuple[float, ...]):
    """(layout, sparsity, block, PackedTensor) for every qrt weight of one shape; w (N, K) float32."""
    out = []
    for layout, s in layout_cases(layouts, sparsities):
        t, block = pack_case(w, layout, s)
        if t is not None:
            out.append((layout, s, block, t))
    return out


def qrt_impls(w: np.ndarray, b: np.ndarray, sweep: Sweep, omitted: list) -> list[Impl]:
    """The registered qrt kernels for every packed weight of ``w`` (N, K) on sweep.backends."""
    impls = []
    weights = packed_weights(w, sweep.layouts, sweep.sparsities)
    for backend in sweep.backends:
        reason = registry.backend_status(backend)
        if reason is not None:
            _omit(omitted, f"qrt {backend}", reason)
            continue
        for layout, sparsity, block, t in weights:
            act = {"act_quant": "none" if layout == "int4" else "dynamic"}
            attrs = registry.fill_attrs("Linear", act)
            if not registry.has_kernel("Linear", t.layout, backend):
                _omit(omitted, f"qrt {backend} {layout}", f"no {t.layout} Linear kernel on {backend}")
                continue
            kernel = registry.build("Linear", t.layout, backend, attrs, {1: t})
            ref = registry.build("Linear", t.layout, "reference", attrs, {1: t})
            impls.append(Impl(f"qrt {backend}", layout, "int4" if layout == "int4" else "int8", t.nbytes,
                              lambda x, k=kernel, t=t: k(x, t, b)[0], sparsity, block,
                              reference=lambda x, k=ref, t=t: k(x, t, b)[0],
                              tolerance=INT4_RTOL if layout == "int4" else 0.0))
    return impls


def baseline_impls(w: np.ndarray, b: np.ndarray, threads: int, tmp: str, omitted: list) -> list[Impl]:
    """numpy fp32, onnxruntime fp32 and int8, PyTorch int8 (where installed) for w (N, K)."""
    n, k = w.shape
    w_kn = np.ascontiguousarray(w.T)
    impls = [Impl("numpy fp32", "fp32", "fp32", w.nbytes, lambda x: x @ w_kn + b)]
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
        f32, i8 = os.path.join(tmp, f"linear_{k}_{n}.onnx"), os.path.join(tmp, f"linear_{k}_{n}_int8.onnx")
        _onnx_linear(w_kn, b, f32)
        quantize_dynamic(f32, i8, weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        s32 = ort.InferenceSession(f32, opts, providers=["CPUExecutionProvider"])
        s8 = ort.InferenceSession(i8, opts, providers=["CPUExecutionProvider"])
        impls.append(Impl("onnxruntime fp32", "fp32", "fp32", w.nbytes, lambda x: s32.run(None, {"x": x})[0]))
        impls.append(Impl("onnxruntime int8", "int8", "int8", n * k + 4 * n, lambda x: s8.run(None, {"x": x})[0]))
    except ImportError as e:
        _omit(omitted, "onnxruntime fp32 / int8", f"not installed ({e.name})")
    try:
        import torch
        torch.set_num_threads(threads)
        lin = torch.nn.Linear(k, n)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)

        def torch_int8(x):
            with torch.inference_mode():
                return qlin(torch.from_numpy(x)).numpy()
        impls.append(Impl("pytorch int8", "int8", "int8", n * k + 4 * n, torch_int8))
    except ImportError as e:
        _omit(omitted, "pytorch int8", f"not installed ({e.name})")
    except Exception as e:  # quantized engine missing on this build / CPU
        _omit(omitted, "pytorch int8", f"{type(e).__name__}: {e}")
    return impls


def _onnx_linear(w_kn: np.ndarray, b: np.ndarray, path: str) -> None:
    """MatMul + Add as an ONNX file: x (M, K) float32 -> y (M, N)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    k, n = w_kn.shape
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                              [numpy_helper.from_array(w_kn, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _omit(omitted: list, what: str, reason: str) -> None:
    if not any(o["what"] == what for o in omitted):
        omitted.append({"what": what, "reason": reason})


# --- validate, time -------------------------------------------------------------------------------

def check(impl: Impl, x: np.ndarray, truth: np.ndarray) -> tuple[float | None, bool]:
    """(max error, valid) of ``impl`` on x (a few rows): qrt against its reference kernel
    (error relative to max |reference|; valid within the layout's tolerance), a baseline
    against float64 ``truth`` (valid when finite: baselines are not ours to fix)."""
    y = np.asarray(impl.run(x), np.float64)
    if impl.reference is None:
        err = float(np.max(np.abs(y - truth))) if y.size else 0.0
        return (err if math.isfinite(err) else None), math.isfinite(err)
    want = np.asarray(impl.reference(x), np.float64)
    diff = float(np.max(np.abs(y - want))) if y.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    ok = math.isfinite(diff) and diff <= impl.tolerance * max(scale, 1e-30)
    return (diff if math.isfinite(diff) else None), ok


# --- the sweep ------------------------------------------------------------------------------------

def set_threads(threads: int) -> None:
    """Thread count for qrt's CPU backends (where usable) and numpy's BLAS."""
    for backend in ("numba", "native"):
        setter = registry.thread_setter(backend)
        if setter is not None:
            setter(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads, user_api="blas")
    except ImportError:
        pass


def run_sweep(sweep: Sweep, peaks: dict | None, progress=None, log=None) -> tuple[list[dict], list[dict]]:
    """(rows, omitted): one schema row (runtime/bench/report.py) per implementation x case.
    ``peaks``: fingerprint()["peaks"] for % of peak; ``progress``: a Progress-like object
    (update(n, note)); ``log``: a callable(str) for one line per case."""
    set_threads(sweep.threads)
    rows: list[dict] = []
    omitted: list[dict] = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="qrt-bench-") as tmp:
        for k, n in sweep.shapes:
            w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
            b = (rng.standard_normal(n) * 0.1).astype(np.float32)
            impls = qrt_impls(w, b, sweep, omitted)
            if sweep.baselines:
                impls += baseline_impls(w, b, sweep.threads, tmp, omitted)
            for m in sweep.ms:
                x = rng.standard_normal((m, k)).astype(np.float32)
                rows += case_rows(impls, x, w, b, peaks, sweep.min_seconds)
                if log is not None:
                    log(_case_line(rows, m, n, k))
                if progress is not None:
                    progress.update(1, f"K={k} N={n} M={m}")
            del impls
    return rows, omitted


def case_rows(impls: list[Impl], x: np.ndarray, w: np.ndarray, b: np.ndarray, peaks: dict | None,
              min_seconds: float) -> list[dict]:
    """Validate, time and describe every implementation on x (M, K); w (N, K), b (N,)."""
    m, k = x.shape
    n = w.shape[0]
    xv = x[:VALIDATE_ROWS]
    truth = xv.astype(np.float64) @ w.T.astype(np.float64) + b
    checks = [check(impl, xv, truth) for impl in impls]
    times = time_blocked([lambda f=impl.run: f(x) for impl in impls], [not i.is_qrt for i in impls], min_seconds)
    med = [quietest_median(t) for t in times]
    fp32 = [t for impl, t in zip(impls, med) if impl.layout == "fp32" and not impl.is_qrt]
    best_fp32 = min(fp32) if fp32 else None
    ort8 = next((t for impl, t in zip(impls, med) if impl.runtime == "onnxruntime int8"), None)
    dense_int8 = {impl.runtime: t for impl, t in zip(impls, med) if impl.is_qrt and impl.layout == "int8"}
    ops = 2.0 * m * n * k
    out = []
    for impl, (err, ok), t, ts in zip(impls, checks, med, times):
        peak_key = "fp32_gflops" if impl.precision in ("fp32", "int4") else "int8_gops"
        peak = (peaks or {}).get(peak_key)
        gops = ops / t / 1e9
        moved = impl.weight_bytes + 4 * m * k + 4 * m * n
        sparse = impl.layout in ("csr", "bsr", "nm")
        # a sparse kernel's dense-equivalent rate may pass the peak; its share of the peak
        # counts the operations it does (the kept weights)
        done_gops = gops * (1.0 - float(impl.sparsity)) if sparse else gops
        out.append({
            "M": m, "N": n, "K": k, "layout": impl.layout, "sparsity": float(impl.sparsity),
            "block": impl.block, "runtime": impl.runtime, "precision": impl.precision,
            "median_s": t, "spread": spread(ts), "calls": sum(map(len, ts)), "gops": gops,
            "pct_peak": done_gops / peak * 100 if peak else None, "intensity": ops / moved,
            "vs_fp32": best_fp32 / t if best_fp32 else None,
            "vs_ort_int8": ort8 / t if ort8 else None,
            "vs_dense_int8": dense_int8[impl.runtime] / t if sparse and impl.runtime in dense_int8 else None,
            "max_err": err, "valid": bool(ok)})
    return out


def _case_line(rows: list[dict], m: int, n: int, k: int) -> str:
    """One line per case for the log: the best qrt row against best fp32 and onnxruntime int8."""
    case = [r for r in rows if (r["M"], r["N"], r["K"]) == (m, n, k)]
    qrt = [r for r in case if r["runtime"].startswith("qrt ") and r["layout"] == "int8"]
    bad = [r for r in case if not r["valid"]]
    parts = [f"K={k} N={n} M={m}:"]
    for r in qrt:
        parts.append(f"{r['runtime']} int8 {r['gops']:.0f} GOP/s"
                     + (f" x{r['vs_fp32']:.2f} fp32" if r["vs_fp32"] else "")
                     + (f" x{r['vs_ort_int8']:.2f} ort-int8" if r["vs_ort_int8"] else ""))
    if bad:
        parts.append("INVALID: " + ", ".join(f"{r['runtime']} {r['layout']}" for r in bad))
    return " ".join(parts)
