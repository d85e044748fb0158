"""The planner's fallback decision measured for real: one int8 Linear stored as CSR at several
sparsities, planned by a session (plan="measure") on each fast CPU backend and on "auto". At
10% sparsity the CSR kernel does ~90% of the dense work plus index handling, so it should lose
to dense int8 and be run as dense int8; at high sparsity CSR should be kept where it is faster.
tests/test_planner.py checks the same session plumbing with injected timings; this script is
where the real timings live (they depend on the CPU and on how busy it is).

    python benchmarks/planner_fallback.py [--rows 16] [--threads 1]
    QRT_NATIVE_ISA=avx2 QRT_NUMBA_ISA=avx2 python benchmarks/planner_fallback.py   # as on an AVX2 CPU
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kernels import registry  # noqa: E402
from runtime import InferenceSession  # noqa: E402
from kernels.core.cpu import cpu_name  # noqa: E402
from runtime.graph import Graph, Node, Value  # noqa: E402
from kernels.core.layouts import dense_tensor, pack  # noqa: E402

SPARSITIES = (0.10, 0.50, 0.80, 0.90)
SHAPES = ((256, 512), (768, 768), (3072, 768))    # (N, K): the test's layer, then BERT-base ones


def _graph(n: int, k: int, sparsity: float) -> Graph:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype(np.float32)
    weight = pack("csr", "w", w, rng.random((n, k)) >= sparsity, quant="int8")
    g = Graph("fallback", [Value("x", "float32", ("m", k))], [Value("y", "float32", ("m", n))],
              [Node("fc", "Linear", ["x", "w", "b"], ["y"], {"act_quant": "dynamic"})],
              {"w": weight, "b": dense_tensor("b", rng.standard_normal(n).astype(np.float32))})
    g.validate()
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16, help="activation rows M (default: 16)")
    ap.add_argument("--threads", type=int, default=1, help="session threads (default: 1)")
    args = ap.parse_args()
    fast = [b for b in registry.AUTO_ORDER if b != "reference" and registry.backend_status(b) is None]
    if not fast:
        sys.exit("no fast CPU backend (numba / native) is usable here: "
                 + "; ".join(f"{b}: {registry.backend_status(b)}" for b in ("native", "numba")))
    print(f"# {cpu_name()}, threads={args.threads}, M={args.rows}, load average "
          f"{os.getloadavg()[0]:.2f} (1 min), QRT_NATIVE_ISA={os.environ.get('QRT_NATIVE_ISA', '')!r}, "
          f"QRT_NUMBA_ISA={os.environ.get('QRT_NUMBA_ISA', '')!r}")
    print("| N x K | sparsity | backend | chosen | stored ms | dense int8 ms | stored / dense |")
    print("|---|---|---|---|---|---|---|")
    x_rng = np.random.default_rng(1)
    for n, k in SHAPES:
        x = x_rng.standard_normal((args.rows, k)).astype(np.float32)
        for sparsity in SPARSITIES:
            g = _graph(n, k, sparsity)
            want = InferenceSession(g, "reference").run(None, {"x": x})[0]
            for backend in ["auto", *fast]:
                s = InferenceSession(g, backend, plan="measure", threads=args.threads)
                got = s.run(None, {"x": x})[0]
                assert np.array_equal(got, want), f"{backend} at {sparsity:.0%}: not the reference's bits"
                (rec,) = s.layer_plan
                t = rec["times_ms"]
                stored = t[rec["stored"]]
                dense = min(v for label, v in t.items() if label.startswith("int8/"))
                print(f"| {n} x {k} | {sparsity:.0%} | {backend} | {rec['chosen']} | {stored:.3f} | "
                      f"{dense:.3f} | {stored / dense:.2f} |", flush=True)


if __name__ == "__main__":
    main()
