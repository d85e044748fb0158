"""`qrt demo`: the main job, end to end on a fresh machine with no files and no network.

1. train an MLP classifier (64 -> 256 -> 256 -> 10, ReLU) on scikit-learn's bundled 8x8 digits
   (1797 images, 70/30 split);
2. write it as an ONNX model (MatMul + Add + Relu ... + Softmax, opset 17);
3. convert it to .qrt files: fp32, and compressed: int8 weights (dynamic and static
   activations), int4 grouped weight-only, 2:4 + int8, 90% unstructured + int8 (VARIANTS);
4. run each on held-out digits with every usable qrt backend and, where installed, the ONNX
   file in onnxruntime fp32 and int8 (quantize_dynamic), and print one table: model size,
   accuracy, agreement with scikit-learn, latency at batch 1 and for the whole test set, and
   the speed-up against the best dense fp32 runtime and against onnxruntime int8;
5. write the same as report.md / report.json with two plots (speed-up and accuracy vs size)
   to a folder it names (``--out``, default ./qrt-demo).

No fine-tuning after pruning: the table shows what compression alone costs. Latency is the
median of repeated runs in this process (runtime/bench/timing.py); sessions use per-layer
planning (runtime/planner.py), whose choices the report lists.
"""
from __future__ import annotations

import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from kernels.core.threads import usable_cpus
from kernels.registry import backend_device

from . import available_backends
from .bench import machine
from .bench.report import figure, markdown_table, save_figure, write_atomic
from .bench.timing import quietest_median, time_blocked
from .convert import from_onnx
from .session import InferenceSession
from .tables import format_table

HIDDEN = (256, 256)
MAX_ITER = 60

# (file suffix, weights column, convert options). Calibration (for the report and static
# ranges) uses the training images, never the held-out ones the table scores. The sparse
# variants prune the hidden layers; the small classifier layer (dense2) is kept unpruned, still
# int8, the usual recipe: one-shot pruning of it alone costs points for no speed.
VARIANTS = [
    ("", "fp32", {}),
    ("_int8", "int8 (dyn. act)", {"quant": "int8"}),
    ("_int8_static", "int8 (static act)", {"quant": "int8", "act": "static", "calib_method": "percentile"}),
    ("_int4", "int4 g32 (weight-only)", {"quant": "int4", "group_size": 32}),
    ("_2of4_int8", "2:4 + int8", {"prune": "nm", "quant": "int8", "skip": ["dense2*"]}),
    ("_s90_int8", "90% CSR + int8", {"prune": "magnitude", "sparsity": 0.9, "quant": "int8", "skip": ["dense2*"]}),
]
BATCH1_SECONDS, BATCHN_SECONDS = 0.3, 0.6     # of timed calls per runner


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise RuntimeError(f"the demo needs {module!r}: pip install -e '.[demo]' in the qrt checkout") from None


def train(seed: int, hidden: tuple[int, ...] = HIDDEN, max_iter: int | None = None):
    """Digits split 70/30, MLP (64 -> hidden... -> 10, ReLU), pixel values scaled to [0, 1]."""
    _need("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter or MAX_ITER,
                        random_state=seed)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on some seeds: accuracy is printed anyway
        clf.fit(x_tr, y_tr)
    return clf, x_tr, x_te, y_te


def to_onnx(clf) -> bytes:
    """The trained MLP as an ONNX ModelProto (bytes), batch dimension symbolic."""
    onnx = _need("onnx")
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    x = "pixels"
    for k, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"mm{k}"], name=f"dense{k}/MatMul"),
                  helper.make_node("Add", [f"mm{k}", f"b{k}"], [f"z{k}"], name=f"dense{k}/Add")]
        x = f"z{k}"
        if k < len(clf.coefs_) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"h{k}"], name=f"relu{k}"))
            x = f"h{k}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=-1, name="softmax"))
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qrt-demo")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _median_ms(fn, seconds: float, settle: bool) -> float:
    return quietest_median(time_blocked([fn], [settle], seconds)[0]) * 1e3


def run_demo(out_dir: str | None = "qrt-demo", keep_models: bool = False, seed: int = 0) -> int:


    out = Path(out_dir or "qrt-demo")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    hidden = "-".join(map(str, HIDDEN))
    print(f"qrt demo: MLP 64-{hidden}-10 on scikit-learn's digits (8x8 images, 10 classes)")
    fp = machine.fingerprint(threads=usable_cpus(), measure=False)
    print(f"  machine: {fp['cpu']}, {usable_cpus()} usable CPU(s), int8 class {machine.cpu_class(fp['isa'])}")
    busy = machine.busy_warning(usable_cpus())
    if busy:
        print(f"  warning: {busy}")
    t_start = time.perf_counter()
    clf, x_cal, x_te, y_te = train(seed)
    print(f"  trained in {time.perf_counter() - t_start:.1f} s; {len(x_te)} held-out images")
    want = clf.predict_proba(x_te).astype(np.float32)
    onnx_bytes = to_onnx(clf)
    # a GPU backend on the CPU (Triton's interpreter, TRITON_INTERPRET=1) is a correctness
    # tool, thousands of times slower than a kernel: not a row of a speed table
    backends = [b for b, reason in available_backends().items() if reason is None and backend_device(b) != "cpu"]

    with tempfile.TemporaryDirectory(prefix="qrt-demo-") as tmp:
        model_dir = out / "models" if keep_models else Path(tmp)
        model_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = model_dir / "digits_mlp.onnx"
        onnx_path.write_bytes(onnx_bytes)
        calib = [{"pixels": x_cal[i:i + 64]} for i in range(0, len(x_cal), 64)]
        runners = []            # (runtime, weights, bytes, fn, session or None)
        for suffix, weights, options in VARIANTS:
            qrt_path = model_dir / f"digits_mlp{suffix}.qrt"
            graph = from_onnx(onnx_bytes, qrt_path, name="digits_mlp",
                              **({**options, "calib": calib} if options else {}))
            print(f"  converted -> {qrt_path.name} ({qrt_path.stat().st_size} B): "
                  f"{', '.join(sorted({t.layout for t in graph.initializers.values()}))} weights")
            for backend in backends:
                sess = InferenceSession(qrt_path, backend=backend)
                runners.append((f"qrt {backend}", weights, qrt_path.stat().st_size,
                                lambda x, s=sess: s.run(None, {"pixels": x})[0], sess))
        omitted = _onnxruntime_runners(onnx_path, Path(tmp), runners)
        runners.append(("scikit-learn", "fp64", None, lambda x: clf.predict_proba(x), None))

        rows = _measure(runners, x_te, y_te, want)
    _speedups(rows)
    _print_table(rows, len(x_te))
    unavailable = {b: r or "runs on the CPU interpreter (TRITON_INTERPRET=1): not timed"
                   for b, r in available_backends().items() if r or backend_device(b) == "cpu"}
    notes = [f"{b}: {r}" for b, r in unavailable.items()] + [f"{o['what']}: {o['reason']}" for o in omitted]
    if notes:
        print("  not in the table: " + "; ".join(notes))
    plans = [{"runtime": r["runtime"], "weights": r["weights"], **p} for r in rows for p in r.pop("plan", [])]
    written = write_report(out, rows, plans, notes, len(x_te), seed)
    print(f"\n  report: {', '.join(str(p) for p in written)}"
          + (f"; models in {model_dir}" if keep_models else ""))
    print(f"  total {time.perf_counter() - t_start:.0f} s")
    return 0


def _onnxruntime_runners(onnx_path: Path, tmp: Path, runners: list) -> list[dict]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return [{"what": "onnxruntime rows", "reason": "onnxruntime is not installed"}]
    q_path = tmp / "digits_mlp_ort_int8.onnx"
    import logging
    logging.getLogger().setLevel(logging.ERROR)     # quantize_dynamic's "consider pre-processing" hint
    quantize_dynamic(str(onnx_path), str(q_path), weight_type=QuantType.QInt8)
    for label, path in (("fp32", onnx_path), ("int8 (dyn. act)", q_path)):
        o = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runners.append(("onnxruntime", label, path.stat().st_size, lambda x, o=o: o.run(None, {"pixels": x})[0], None))
    return []


def _measure(runners: list, x_te: np.ndarray, y_te: np.ndarray, want: np.ndarray) -> list[dict]:
    rows = []
    one = x_te[:1]
    for name, weights, nbytes, fn, sess in runners:
        probs = np.asarray(fn(x_te))            # also the first run: per-layer planning happens here
        fn(one)
        qrt = name.startswith("qrt")
        rows.append({
            "runtime": name, "weights": weights, "bytes": nbytes,
            "accuracy": float(np.mean(probs.argmax(1) == y_te)),
            "agreement": float(np.mean(probs.argmax(1) == want.argmax(1))),
            "max_dp": float(np.max(np.abs(probs.astype(np.float64) - want))),
            "batch1_ms": _median_ms(lambda: fn(one), BATCH1_SECONDS, not qrt),
            "batchn_ms": _median_ms(lambda: fn(x_te), BATCHN_SECONDS, not qrt), "batch_n": len(x_te),
            "plan": sess.layer_plan if sess is not None else []})
    return rows


def _speedups(rows: list[dict]) -> None:
    """x fp32: the best dense fp32 runtime's batch-N time / this one's; x ort int8 likewise."""
    fp32 = [r["batchn_ms"] for r in rows if r["weights"] == "fp32"]
    ort8 = [r["batchn_ms"] for r in rows if r["runtime"] == "onnxruntime" and r["weights"] != "fp32"]
    for r in rows:
        r["vs_fp32"] = min(fp32) / r["batchn_ms"] if fp32 else None
        r["vs_ort_int8"] = ort8[0] / r["batchn_ms"] if ort8 else None


HEADER = ["runtime", "weights", "model KiB", "accuracy %", "agrees w/ sklearn %", "max |dp|", "batch 1 ms",
          "batch {n} ms", "x fp32", "x ort int8"]


def _cells(r: dict) -> list[str]:
    ratio = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    return [r["runtime"], r["weights"], f"{r['bytes'] / 1024:.1f}" if r["bytes"] else "-",
            f"{r['accuracy'] * 100:.2f}", f"{r['agreement'] * 100:.1f}", f"{r['max_dp']:.1e}",
            f"{r['batch1_ms']:.3f}", f"{r['batchn_ms']:.3f}", ratio(r["vs_fp32"]), ratio(r["vs_ort_int8"])]


def _print_table(rows: list[dict], n: int) -> None:
    print()
    print(format_table([_cells(r) for r in rows], [h.format(n=n) for h in HEADER]))
    print(f"\n  latency: median of repeated runs in this process; 'x fp32' and 'x ort int8' compare the "
          f"batch-{n} time with the fastest dense fp32 runtime and with onnxruntime int8 (> 1: faster); "
          f"'max |dp|' is the largest probability difference from scikit-learn's predict_proba.")


def _best(rows: list[dict]) -> list[bool]:
    """Which rows to bold: the fastest at batch 1, the fastest at batch N, the smallest file."""
    picks = {min(range(len(rows)), key=lambda i: rows[i]["batch1_ms"]),
             min(range(len(rows)), key=lambda i: rows[i]["batchn_ms"])}
    sized = [i for i, r in enumerate(rows) if r["bytes"]]
    if sized:
        picks.add(min(sized, key=lambda i: rows[i]["bytes"]))
    return [i in picks for i in range(len(rows))]


def write_report(out: Path, rows: list[dict], plans: list[dict], notes: list[str], n: int, seed: int) -> list[Path]:
    """report.md, report.json, speedup.png and accuracy_vs_size.png in ``out`` (plots only with
    matplotlib); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    fp = machine.fingerprint(threads=usable_cpus(), measure=False)   # the sessions' default threads
    fp.pop("peaks", None)
    fp.pop("mem_bw_gbs", None)
    written = []
    data = {"schema": "qrt-demo/1", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": f"MLP 64-{'-'.join(map(str, HIDDEN))}-10, digits, seed {seed}", "test_images": n,
            "machine": fp, "rows": rows, "plan": plans, "not_in_table": notes}
    written.append(write_atomic(out / "report.json", json.dumps(data, indent=1).encode()))
    plots = _plots(out, rows)
    lines = [f"# qrt demo ({data['created']})", "", f"Model: {data['model']}; {n} held-out images.", "",
             *[f"- {line}" for line in machine.describe(fp)], "",
             *markdown_table(tuple(h.format(n=n) for h in HEADER), [_cells(r) for r in rows],
                             _best(rows)), "",
             "Bold: the fastest row at batch 1 and at batch N, and the smallest file.", "",
             "Latency: median of repeated runs in one process; x fp32 / x ort int8: the fastest dense fp32 "
             f"runtime's and onnxruntime int8's batch-{n} time over this row's (> 1: this row is faster).", ""]
    if plans:
        lines += ["## Per-layer plan (measured on this machine at the first run)", "",
                  *markdown_table(("runtime", "weights", "layer", "rows", "stored", "chosen", "reason"),
                                  [[p["runtime"], p["weights"], p["node"], str(p["rows"]), p["stored"], p["chosen"],
                                    p["reason"]] for p in plans]), ""]
    if notes:
        lines += ["Not in the table: " + "; ".join(notes), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] or ["(plots skipped: matplotlib is not installed)"]
    written.insert(0, write_atomic(out / "report.md", ("\n".join(lines) + "\n").encode()))
    return written + plots


def _row_label(r: dict) -> str:
    return f"{r['runtime']}, {r['weights']}"


def _plots(out: Path, rows: list[dict]) -> list[Path]:
    """speedup.png: every timed row (qrt on each backend, onnxruntime fp32 and int8) as one
    horizontal bar, so no label can overlap or be cut; accuracy_vs_size.png: one marker per
    file, named in a legend beside the axes rather than by text on the points."""
    try:
        fig, (ax,) = figure(1, width=8, height=0.32 * len(rows) + 1.6)
    except ImportError:
        return []
    timed = sorted((r for r in rows if r.get("vs_fp32")), key=lambda r: r["vs_fp32"])
    colors = {"qrt": "tab:blue", "onnxruntime": "tab:orange", "scikit-learn": "tab:gray"}
    ax.barh([_row_label(r) for r in timed], [r["vs_fp32"] for r in timed],
            color=[colors.get(r["runtime"].split()[0], "tab:green") for r in timed])
    fastest = max((r for r in rows if r["weights"] == "fp32"), key=lambda r: r["vs_fp32"] or 0, default=None)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--",
               label=f"1.0 = the fastest dense fp32 ({fastest['runtime']})" if fastest else "1.0")
    for y, r in enumerate(timed):
        ax.annotate(f"{r['vs_fp32']:.2f}x", (r["vs_fp32"], y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7)
    ax.set_xlabel(f"speed-up over the fastest dense fp32 runtime, batch {rows[0].get('batch_n', 'N')} "
                  "(higher is faster)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, max(r["vs_fp32"] for r in timed) * 1.15)
    ax.set_title("qrt and onnxruntime against dense fp32: the whole test set in one batch")
    ax.legend(fontsize=7, loc="lower right")
    paths = [out / "speedup.png"]
    save_figure(fig, paths[0])

    fig, (ax,) = figure(1, width=8, height=3.8)
    files = {}
    for r in rows:            # one point per file: the backends of one qrt file share its size
        if r["bytes"]:
            files.setdefault((r["runtime"].split()[0], r["weights"]), r)
    markers = "osD^v<>ph*"
    for i, ((runtime, weights), r) in enumerate(sorted(files.items(), key=lambda kv: kv[1]["bytes"])):
        ax.scatter(r["bytes"] / 1024, r["accuracy"] * 100, marker=markers[i % len(markers)], s=40,
                   color=colors.get(runtime, "tab:green"), label=f"{runtime} {weights}")
    ax.set_xlabel("model file KiB")
    ax.set_ylabel("test accuracy %")
    ax.set_title("test accuracy against file size")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    paths.append(out / "accuracy_vs_size.png")
    save_figure(fig, paths[1])
    return paths
