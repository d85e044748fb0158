"""End to end: a random-weight BERT with all-MiniLM-L6 dimensions (hidden 384, 6 layers,
12 heads, FFN 1536) exported to ONNX; batch 1, sequence 16 and 128.

Rows, all on the same ONNX file and the same inputs, in one process:
  onnxruntime fp32; onnxruntime int8 (quantize_dynamic, QInt8 weights);
  qrt fp32, qrt int8 (dynamic activations), qrt 80% unstructured + int8, qrt 2:4 + int8,
  each on backend "numba" (and "reference" with --reference).
Latency: median of --repeats runs after warm-up; p90 and spread; outputs are checked first
(cosine vs onnxruntime fp32).

    python benchmarks/bench_bert_e2e.py [--repeats 30] [--seqs 16 128] [--backends numba native] [--unfused]

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed for this process (re-exec) so numpy's fp32
BLAS runs at its best, as every fp32 baseline here must.
"""
from __future__ import annotations

import os
import sys

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from runtime.tables import format_table  # noqa: E402
from tests import model_zoo  # noqa: E402
from tests.test_onnx_equivalence import _bert_bytes  # noqa: E402

VOCAB = 1000


def timed(fn, repeats):
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return statistics.median(ts), ts[int(0.9 * (len(ts) - 1))], ts[0], ts[-1]


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def print_profile(title: str, per_node) -> None:
    """Time per (op, layout, backend), largest first, from InferenceSession.profile."""
    total = sum(t for _, t in per_node)
    by_op: dict[tuple, list] = {}
    for p, t in per_node:
        entry = by_op.setdefault((p.op, p.layout, p.backend), [0, 0.0])
        entry[0] += 1
        entry[1] += t
    rows = [[op, layout, backend, n, f"{t * 1e3:.3f}", f"{100 * t / total:.1f}%"]
            for (op, layout, backend), (n, t) in sorted(by_op.items(), key=lambda kv: -kv[1][1])]
    print(f"\n## profile: {title} (sum of node medians {total * 1e3:.2f} ms, {len(per_node)} nodes)")
    print(format_table(rows, ["op", "layout", "backend", "nodes", "ms", "share"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seqs", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--backends", nargs="+", default=["numba"])
    ap.add_argument("--unfused", action="store_true",
                    help="also time int8 with the session's fusions off (fuse=False)")
    ap.add_argument("--profile", action="store_true",
                    help="print where each qrt int8 runner spends its time, per op (InferenceSession.profile)")
    a = ap.parse_args()
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    print(f"# {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"onnxruntime {ort.__version__}, backends {runtime.available_backends()}")
    data = _bert_bytes(model_zoo.bert(layers=6, hidden=384, heads=12, ffn=1536, vocab=VOCAB))
    calib = [model_zoo.bert_feeds(1, 128, vocab=VOCAB, seed=s) for s in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        src, q = Path(tmp) / "bert.onnx", Path(tmp) / "bert_int8.onnx"
        src.write_bytes(data)
        quantize_dynamic(str(src), str(q), weight_type=QuantType.QInt8)
        runners = {"onnxruntime fp32": ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]),
                   "onnxruntime int8": ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])}
        variants = {"fp32": {}, "int8": {"quant": "int8"},
                    "80% + int8": {"prune": "magnitude", "sparsity": 0.8, "quant": "int8"},
                    "2:4 + int8": {"prune": "nm", "quant": "int8"}}
        for label, opts in variants.items():
            graph = runtime.convert(data, calib=calib, **opts)
            for backend in a.backends:
                runners[f"qrt {backend} {label}"] = runtime.InferenceSession(graph, backend=backend)
                if label == "int8" and a.unfused:
                    runners[f"qrt {backend} {label}, fuse=False"] = runtime.InferenceSession(
                        graph, backend=backend, fuse=False)
        rows = []
        for seq in a.seqs:
            feeds = model_zoo.bert_feeds(1, seq, vocab=VOCAB, seed=seq)
            feeds["attention_mask"][:] = 1
            want = runners["onnxruntime fp32"].run(None, feeds)[0]
            base = None
            for name, sess in runners.items():
                time.sleep(0.3)       # let the previous runner's thread pool stop spinning
                out = sess.run(None, feeds)[0]
                med, p90, lo, hi = timed(lambda s=sess: s.run(None, feeds), a.repeats)
                if name == "onnxruntime int8":
                    base = med
                rows.append([f"1 x {seq}", name, f"{med * 1e3:.2f}", f"{p90 * 1e3:.2f}",
                             f"{lo * 1e3:.2f}-{hi * 1e3:.2f}", f"{cosine(out, want):.5f}", med])
            for r in rows:
                if r[0] == f"1 x {seq}" and base:
                    r.append(f"{base / r[-1]:.2f}x")
        if a.profile:
            for seq in a.seqs:
                feeds = model_zoo.bert_feeds(1, seq, vocab=VOCAB, seed=seq)
                feeds["attention_mask"][:] = 1
                for name, sess in runners.items():
                    if name.startswith("qrt") and "int8" in name:
                        print_profile(f"{name}, 1 x {seq}", sess.profile(feeds, repeats=a.repeats))
        print(format_table([r[:6] + r[7:] for r in rows],
                           ["batch x seq", "runtime", "median ms", "p90 ms", "min-max ms",
                            "cosine vs ort fp32", "speed vs ort int8"]))


if __name__ == "__main__":
    main()
