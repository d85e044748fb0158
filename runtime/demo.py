"""`qrt demo`: the main job, end to end on a fresh machine with no files and no network.

1. train a small MLP classifier on scikit-learn's bundled 8x8 digits (1797 images);
2. write it as an ONNX model (MatMul + Add + Relu ... + Softmax, opset 17);
3. convert it to one .qrt file (the importer fuses MatMul + Add into Linear);
   fp32, and compressed: int8 weights (dynamic and static activations), 2:4 + int8,
   70% unstructured + int8, weight-only int4 (VARIANTS below);
4. run each .qrt on held-out digits with every usable qrt backend and, where installed, the
   ONNX file in onnxruntime, and print one table: model bytes, accuracy, agreement with
   scikit-learn, probability error and latency.

No fine-tuning after pruning: the table shows what compression alone costs.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN = (128, 64)

# (file suffix, weights column, convert options). Calibration (for the report and static
# ranges) uses the training images, never the held-out ones the table scores.
VARIANTS = [
    ("", "fp32", {}),
    ("_int8", "int8 (dyn. act)", {"quant": "int8"}),
    ("_int8_static", "int8 (static act)", {"quant": "int8", "act": "static", "calib_method": "percentile"}),
    # sparse variants prune the hidden layers; the small 64 -> 10 classifier is skipped (kept
    # unpruned, still int8), the usual recipe: one-shot pruning of it alone costs ~2.5 points
    ("_2of4_int8", "2:4 + int8", {"prune": "nm", "quant": "int8", "skip": ["dense2*"]}),
    ("_s70_int8", "70% CSR + int8", {"prune": "magnitude", "sparsity": 0.7, "quant": "int8", "skip": ["dense2*"]}),
    ("_int4", "int4 g32 (weight-only)", {"quant": "int4", "group_size": 32}),
]


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise RuntimeError(f"the demo needs {module!r}: pip install 'qrt[demo]'") from None


def train(seed: int):
    """Digits split 70/30, MLP (64 -> 128 -> 64 -> 10, ReLU), pixel values scaled to [0, 1]."""
    _need("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=400, random_state=seed)
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


def _latency_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_demo(keep_dir: str | None = None, seed: int = 0) -> int:
    from . import available_backends
    from .convert import from_onnx
    from .session import InferenceSession

    print("qrt demo: MLP 64-128-64-10 on scikit-learn's digits (8x8 images, 10 classes)")
    t0 = time.perf_counter()
    clf, x_cal, x_te, y_te = train(seed)
    print(f"  trained in {time.perf_counter() - t0:.1f} s; {len(x_te)} held-out images")
    want = clf.predict_proba(x_te).astype(np.float32)
    onnx_bytes = to_onnx(clf)

    tmp = None
    if keep_dir:
        out_dir = Path(keep_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="qrt-demo-")
        out_dir = Path(tmp.name)
    try:
        onnx_path = out_dir / "digits_mlp.onnx"
        onnx_path.write_bytes(onnx_bytes)
        calib = [{"pixels": x_cal[i:i + 64]} for i in range(0, len(x_cal), 64)]
        runners = []
        kept = [onnx_path]
        for label, weights, options in VARIANTS:
            qrt_path = out_dir / f"digits_mlp{label}.qrt"
            graph = from_onnx(onnx_bytes, qrt_path, name="digits_mlp",
                              **({**options, "calib": calib} if options else {}))
            kept.append(qrt_path)
            print(f"  converted -> {qrt_path.name} ({qrt_path.stat().st_size} B): "
                  f"{', '.join(sorted({t.layout for t in graph.initializers.values()}))} weights")
            for backend, reason in available_backends().items():
                if reason is None:
                    sess = InferenceSession(qrt_path, backend=backend)
                    runners.append((f"qrt {backend}", weights, qrt_path.stat().st_size,
                                    lambda x, s=sess: s.run(None, {"pixels": x})[0]))
        try:
            import onnxruntime as ort
            o = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            runners.append(("onnxruntime", "fp32", len(onnx_bytes), lambda x, o=o: o.run(None, {"pixels": x})[0]))
        except ImportError:
            print("  (onnxruntime not installed: its row is omitted)")
        runners.append(("scikit-learn", "fp64", None, lambda x: clf.predict_proba(x)))

        rows = []
        one = x_te[:1]
        for name, precision, nbytes, fn in runners:
            probs = np.asarray(fn(x_te))
            acc = float(np.mean(probs.argmax(1) == y_te))
            agree = float(np.mean(probs.argmax(1) == want.argmax(1)))
            err = float(np.max(np.abs(probs.astype(np.float64) - want)))
            lat1 = _latency_ms(lambda: fn(one), 200)
            latn = _latency_ms(lambda: fn(x_te), 30)
            rows.append([name, precision, f"{nbytes / 1024:.1f}" if nbytes else "-", f"{acc * 100:.2f}",
                         f"{agree * 100:.1f}", f"{err:.1e}", f"{lat1:.3f}", f"{len(x_te) / latn:.0f}"])
        from .tables import format_table
        print()
        print(format_table(rows, ["runtime", "weights", "model KiB", "accuracy %", "agrees w/ sklearn %",
                            "max |dp|", "batch 1 ms", f"batch {len(x_te)} k img/s"]))
        print("\n  latency: median of repeated runs in this process; 'max |dp|' is the largest "
              "probability difference from scikit-learn's own predict_proba.")
        unavailable = {b: r for b, r in available_backends().items() if r}
        if unavailable:
            print("  backends not in the table: " + "; ".join(f"{b}: {r}" for b, r in unavailable.items()))
        if keep_dir:
            print(f"  kept {', '.join(str(p) for p in kept)}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
