"""Per-node Python overhead of InferenceSession.run().

A chain of N cheap nodes (Relu on a 1x8 float32 tensor) is run through the session and,
for comparison, the same planned kernels are called in a bare Python loop. The difference,
divided by N, is what the session's loop (slot lookups, result stores, frees) costs per node;
the bare-loop time per node is the kernel call itself (numpy dispatch for a tiny array).

    python benchmarks/session_overhead.py [--nodes 2000] [--repeats 50]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from kernels import registry
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    for op in ("Relu", "Identity"):
        r = measure(a.nodes, a.repeats, op)
        print(f"{op:8s} x{r['nodes']}: run() {r['run_us_per_node']:.2f} us/node = kernel call "
              f"{r['kernel_us_per_node']:.2f} us + session overhead {r['overhead_us_per_node']:.2f} us")


if __name__ == "__main__":
    main()
