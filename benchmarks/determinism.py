"""Same file, same input, same bits, measured for real (issue 16): N sessions of one sparse
model with backend="auto" and plan="measure" (each times its candidates on this machine, so
noise can make them choose differently), alternating thread counts, R runs each; every output
is compared bit for bit with the first session's, and the choices the sessions made are
counted. tests/test_determinism.py checks the same with injected timings.

    python benchmarks/determinism.py [--sessions 6] [--runs 200] [--threads 1 8]

Model: tests/model_zoo.py's 2-layer BERT (hidden 64, FFN 128), 80% magnitude-pruned, csr int8,
the FFN's GELU fused into its Linear; inputs batch 2 x seq 24 and batch 1 x seq 100.
Exit status 1 if any bit differs.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from tests import model_zoo  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=6, help="sessions to compare (default: 6)")
    ap.add_argument("--runs", type=int, default=200, help="runs per session and input (default: 200)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="thread counts, alternated (default: 1 8)")
    args = ap.parse_args()
    import torch
    buf = io.BytesIO()
    m = model_zoo.bert(layers=2, hidden=64, heads=4, ffn=128)
    feeds = model_zoo.bert_feeds(1, 8)
    torch.onnx.export(m, tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")), buf,
                      input_names=["input_ids", "attention_mask"], output_names=["hidden", "pooled"],
                      dynamic_axes={k: {0: "b", 1: "s"} for k in ("input_ids", "attention_mask")},
                      opset_version=17, dynamo=False)
    g = runtime.convert(buf.getvalue(), prune="magnitude", sparsity=0.8, quant="int8", holdout=0.0)
    inputs = [model_zoo.bert_feeds(2, 24, seed=1), model_zoo.bert_feeds(1, 100, seed=2)]
    first, choices, differing = None, [], 0
    with tempfile.TemporaryDirectory() as cache:
        os.environ["QRT_CACHE_DIR"] = cache            # this run's measurements only
        for k in range(args.sessions):
            threads = args.threads[k % len(args.threads)]
            t0 = time.perf_counter()
            s = runtime.InferenceSession(g, "auto", plan="measure", threads=threads)
            outs = [[s.run(None, f) for _ in range(args.runs)] for f in inputs]
            if first is None:
                first = [o[0] for o in outs]
            bad = sum(any(not np.array_equal(x, y) for x, y in zip(run, first[i]))
                      for i, runs in enumerate(outs) for run in runs)
            differing += bad
            chosen = sorted({f"{r['chosen']}" for r in s.layer_plan})
            backends = {p.backend for p in s.plan}
            choices.append(tuple((r["node"], r["holds_for"], r["chosen"]) for r in s.layer_plan))
            print(f"session {k + 1}: {threads} thread(s), {len(inputs) * args.runs} runs in "
                  f"{time.perf_counter() - t0:.1f} s, {bad} differing from session 1; layers chose "
                  f"{', '.join(chosen)}; nodes on {', '.join(sorted(backends))}", flush=True)
    print(f"{args.sessions} sessions x {len(inputs)} inputs x {args.runs} runs: {differing} runs differ from "
          f"session 1 in any bit; {len(set(choices))} distinct sets of planner choices")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
