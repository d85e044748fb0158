"""Per-node Python overhead of InferenceSession.run().

A chain of N cheap nodes (Relu on a 1x8 float32 tensor) is run through the session and,
for comparison, the same planned kernels are called in a bare Python loop. The difference,
divided by N, is what the session's loop (slot lookups, result stores, frees) costs per node;
the bare-loop time per node is the kernel call itself (numpy dispatch for a tiny array).

    python benchmarks/session_overhead.py [--nodes 2000] [--repeats 50] [--bert]

With --bert (needs torch, transformers, onnxruntime) it also converts the 2-layer random-weight
BERT of the tests and reports, per (batch, seq): node count, run() latency, the session's
share of it (nodes x measured overhead), and the relative error against onnxruntime.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from runtime.graph import Graph, Node, Value
from runtime.session import InferenceSession


def chain(n: int, op: str = "Relu") -> Graph:
    nodes = [Node(f"n{k}", op, [f"v{k}"], [f"v{k + 1}"]) for k in range(n)]
    return Graph("chain", [Value("v0", "float32", (1, 8))], [Value(f"v{n}", "float32", (1, 8))], nodes)


def median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(n: int, repeats: int, op: str = "Relu") -> dict:
    sess = InferenceSession(chain(n, op), backend="reference")
    x = np.random.default_rng(0).standard_normal((1, 8), dtype=np.float32)
    feeds = {"v0": x}
    kernels = [step[0] for step in sess._steps]

    def bare():
        v = x
        for k in kernels:
            v = k(v)[0]
        return v

    t_sess = median_time(lambda: sess.run(None, feeds), repeats)
    t_bare = median_time(bare, repeats)
    np.testing.assert_array_equal(sess.run(None, feeds)[0], bare())
    return {"nodes": n, "op": op, "run_us_per_node": t_sess / n * 1e6,
            "kernel_us_per_node": t_bare / n * 1e6, "overhead_us_per_node": (t_sess - t_bare) / n * 1e6}


def bert_rows(overhead_us: float, repeats: int) -> None:
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import onnxruntime as ort
    from runtime.convert import from_onnx
    from tests import model_zoo
    from tests.test_onnx_equivalence import _bert_bytes, rel_err
    for label, kw in [("torchscript opset 17", {}), ("dynamo opset 18", {"opset": 18, "dynamo": True})]:
        data = _bert_bytes(model_zoo.bert(), **kw)
        graph = from_onnx(data)
        sess = InferenceSession(graph, backend="reference")
        ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        for batch, seq in [(1, 16), (1, 128), (4, 128)]:
            feeds = model_zoo.bert_feeds(batch, seq, seed=seq)
            err = max(rel_err(g, w) for g, w in zip(sess.run(None, feeds), ref.run(None, feeds)))
            t = median_time(lambda: sess.run(None, feeds), repeats)
            print(f"BERT-2L h64 ({label}) batch {batch} seq {seq}: {len(graph.nodes)} nodes, run() "
                  f"{t * 1e3:.2f} ms, session overhead ~{len(graph.nodes) * overhead_us / 1e3:.3f} ms "
                  f"({len(graph.nodes) * overhead_us / (t * 1e6) * 100:.1f}%), rel. error vs onnxruntime {err:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--bert", action="store_true", help="also time the 2-layer test BERT")
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    for op in ("Relu", "Identity"):
        r = measure(a.nodes, a.repeats, op)
        print(f"{op:8s} x{r['nodes']}: run() {r['run_us_per_node']:.2f} us/node = kernel call "
              f"{r['kernel_us_per_node']:.2f} us + session overhead {r['overhead_us_per_node']:.2f} us")
    if a.bert:
        bert_rows(r["overhead_us_per_node"], a.repeats)


if __name__ == "__main__":
    main()
