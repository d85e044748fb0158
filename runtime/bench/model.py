"""Model benchmark behind `qrt bench MODEL.qrt`: latency and throughput of one .qrt file on one
backend, its per-node profile and per-layer plan, and, with the original ONNX file, the same
inputs through onnxruntime fp32 and int8 and qrt's own dense fp32, with output agreement.

Inputs are made up from the model's declared inputs: symbolic dimensions take ``batch`` (the
first) and ``seq`` (the others; DEFAULT_SEQ when not given, stated in the result); integer inputs named like a mask are all ones, like
token_type_ids all zeros, other integer inputs random ids below the row count of the
embedding table they index (found in the graph), float inputs standard normal.

Agreement is measured against onnxruntime fp32 on the original model where installed (the
float truth), else against qrt's dense fp32 conversion of it: max |a - b| and the cosine of
the first output, flattened.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..convert import from_onnx
from ..format import load
from ..session import InferenceSession
from .timing import percentile, quietest_median, spread, time_blocked

MIN_SECONDS = 1.0           # of calls per runtime, over all passes
DEFAULT_SEQ = 128           # the sequence length for a model with symbolic non-batch axes and no --seq


def make_feeds(graph, batch: int, seq: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for ``graph`` (runtime.graph.Graph): module docstring."""
    rng = np.random.default_rng(seed)
    rows = _embedding_rows(graph)
    feeds = {}
    for v in graph.inputs:
        shape, first = [], True
        for d in (v.shape or ()):
            if isinstance(d, int) and not isinstance(d, bool):
                shape.append(d)
            else:
                shape.append(batch if first else (seq or 1))
                first = False
        name = v.name.lower()
        if v.dtype in ("int64", "int32"):
            if "mask" in name:
                a = np.ones(shape, v.dtype)
            elif "type" in name or "segment" in name:
                a = np.zeros(shape, v.dtype)
            else:
                a = rng.integers(0, rows.get(v.name, 100), size=shape).astype(v.dtype)
        elif v.dtype == "bool":
            a = np.ones(shape, bool)
        else:
            a = rng.standard_normal(shape).astype(v.dtype)
        feeds[v.name] = a
    return feeds


def _has_sequence_axis(graph) -> bool:
    """Whether an input has a symbolic axis after its first symbolic one (what --seq sizes)."""
    for v in graph.inputs:
        symbolic = [d for d in (v.shape or ()) if not (isinstance(d, int) and not isinstance(d, bool))]
        if len(symbolic) > 1:
            return True
    return False


def _embedding_rows(graph) -> dict[str, int]:
    """input name -> rows of the constant table a Gather indexes with it (ids must stay below)."""
    out = {}
    names = {v.name for v in graph.inputs}
    for node in graph.nodes:
        if node.op == "Gather" and len(node.inputs) > 1 and node.inputs[1] in names \
                and node.inputs[0] in graph.initializers:
            rows = int(graph.initializers[node.inputs[0]].shape[0])
            out[node.inputs[1]] = min(rows, out.get(node.inputs[1], rows))
    return out


def agreement(got: np.ndarray, want: np.ndarray) -> tuple[float | None, float | None]:
    """(max |got - want|, cosine of the flattened arrays); None where undefined (a shape
    mismatch, an all-zero output, a non-finite value)."""
    a, b = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    if a.shape != b.shape:
        return None, None
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    cos = float(a @ b / den) if den > 0 else None
    ok = lambda v: v if v is not None and np.isfinite(v) else None  # noqa: E731
    return ok(err), ok(cos)


def bench_model(path: str | os.PathLike, backend: str = "auto", *, batch: int = 1, seq: int | None = None,
                threads: int | None = None, compare: str | os.PathLike | None = None, profile: bool = False,
                min_seconds: float = MIN_SECONDS, omitted: list | None = None, log: Callable[[str], None] | None = None,
                seed: int = 0) -> dict:
    """One model_result (runtime/bench/report.py schema) for the .qrt file at ``path``."""
    omitted = omitted if omitted is not None else []
    log = log or (lambda s: None)
    path = Path(path)
    graph = load(path)
    if seq is None and _has_sequence_axis(graph):
        seq = DEFAULT_SEQ               # stated in the result and the report, never a silent 1
        log(f"{path.name}: symbolic sequence axis, benchmarking seq {seq} (--seq to change)")
    feeds = make_feeds(graph, batch, seq, seed)
    sess = InferenceSession(graph, backend, threads=threads)
    log(f"qrt {backend}: first run (compiles kernels, plans layers)")
    out = sess.run(None, feeds)[0]
    runners: list[tuple[str, Callable[[], Any], bool]] = [(f"qrt {backend}", lambda: sess.run(None, feeds), False)]
    outputs = {f"qrt {backend}": out}
    truth_name = None
    tmp = tempfile.TemporaryDirectory(prefix="qrt-bench-model-")
    try:
        if compare is not None:
            truth_name = _compare_runners(Path(compare), feeds, backend, threads, Path(tmp.name), runners,
                                          outputs, omitted, log)
        log(f"timing {len(runners)} runtime(s), about {min_seconds * len(runners):.0f} s")
        times = time_blocked([r[1] for r in runners], [r[2] for r in runners], min_seconds)
    finally:
        tmp.cleanup()
    med = [quietest_median(t) for t in times]
    qrt_med = med[0]
    want = outputs.get(truth_name) if truth_name else None
    compare_rows = []
    if compare is not None:
        for (name, _, _), m, t in zip(runners, med, times):
            err, cos = agreement(outputs[name], want) if want is not None else (None, None)
            compare_rows.append({"runtime": name, "median_ms": m * 1e3, "p90_ms": percentile(t, 90) * 1e3,
                                 "speedup": m / qrt_med, "max_abs_err": err, "cosine": cos})
    result = {
        "model": path.name, "backend": backend, "batch": int(batch), "seq": seq, "bytes": path.stat().st_size,
        "latency_ms": {"median": qrt_med * 1e3, "p90": percentile(times[0], 90) * 1e3, "spread": spread(times[0])},
        "throughput": batch / qrt_med, "unit": "sequences/s" if seq else "samples/s",
        "compare": compare_rows, "profile": _profile(sess, feeds) if profile else [],
        "plan": [{k: r[k] for k in ("node", "stored", "chosen", "rows", "times_ms", "reason")}
                 for r in sess.layer_plan],
    }
    return result


def _compare_runners(onnx_path: Path, feeds: dict, backend: str, threads: int | None, tmp: Path,
                     runners: list, outputs: dict, omitted: list, log) -> str:
    """Add onnxruntime fp32 / int8 and qrt dense fp32 runners for the original model; returns
    the name of the float truth for agreement."""
    if not onnx_path.is_file():
        raise FileNotFoundError(f"--compare: no such ONNX file: {onnx_path}")
    truth = None
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        want_names = None
        for label, model in (("onnxruntime fp32", onnx_path), ("onnxruntime int8", tmp / "int8.onnx")):
            if label == "onnxruntime int8":
                log("quantizing the original with onnxruntime.quantization.quantize_dynamic")
                quantize_dynamic(str(onnx_path), str(model), weight_type=QuantType.QInt8)
            o = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            ins = {i.name for i in o.get_inputs()}
            f = {k: v for k, v in feeds.items() if k in ins}
            want_names = want_names or [o.get_outputs()[0].name]
            outputs[label] = o.run(want_names, f)[0]
            runners.append((label, lambda o=o, f=f, n=want_names: o.run(n, f), True))
        truth = "onnxruntime fp32"
    except ImportError as e:
        omitted.append({"what": "onnxruntime fp32 / int8 comparison", "reason": f"not installed ({e.name})"})
    log("converting the original to qrt dense fp32")
    fp32_path = tmp / "fp32.qrt"
    from_onnx(str(onnx_path), fp32_path)
    s32 = InferenceSession(fp32_path, backend, threads=threads)
    outputs[f"qrt {backend} fp32"] = s32.run(None, feeds)[0]
    runners.append((f"qrt {backend} fp32", lambda: s32.run(None, feeds), False))
    return truth or f"qrt {backend} fp32"


def _profile(sess, feeds: dict, repeats: int = 10) -> list[dict]:
    """Per node: median ms over ``repeats`` runs and its share of their sum, largest first;
    ``kernel`` is the node's backend, or the per-layer plan's choice."""
    chosen = {r["node"]: r["chosen"] for r in sess.layer_plan}
    per_node = sess.profile(feeds, repeats=repeats)
    total = sum(t for _, t in per_node) or 1.0
    rows = [{"node": p.name, "op": p.op, "layout": p.layout, "kernel": chosen.get(p.name, f"{p.layout}/{p.backend}"),
             "median_ms": t * 1e3, "share": t / total} for p, t in per_node]
    return sorted(rows, key=lambda r: -r["median_ms"])
