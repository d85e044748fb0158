"""qrt against onnxruntime on a quiet and on a busy machine, the same files, one process.

    python benchmarks/busy_ratio.py MODEL.qrt MODEL_ORT.onnx [--shapes 1x16,1x128] [--repeat 5] [--backend B]

For each batch x seq shape, qrt (default session) and onnxruntime (intra_op_num_threads = CPU
count) are timed interleaved (benchmarks/interleaved.py), first alone, then with one CPU-bound
process per CPU beside them; the line printed per repeat gives the latency ratio qrt /
onnxruntime for each. A ratio that stays put when the machine is busy is what "fast on a shared
machine" means; one repeat far off (tens of x) is the signature of a thread pool waiting at a
barrier for a worker the scheduler does not run. To compare two builds, run the same command
from a git worktree of each (PYTHONPATH set to it). The inputs are token ids of a BERT-style
model (input_ids, attention_mask, token_type_ids; those the files do not take are dropped).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.interleaved import ort_session, time_interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qrt", help="the .qrt file")
    ap.add_argument("onnx", help="the ONNX file onnxruntime runs (e.g. its quantize_dynamic output)")
    ap.add_argument("--shapes", default="1x16,1x128", help="batch x seq list (default 1x16,1x128)")
    ap.add_argument("--repeat", type=int, default=5, help="repeats (default 5)")
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per row (default 1.5)")
    ap.add_argument("--backend", default="auto", help="qrt's backend (default auto; e.g. numba: its own thread pool)")
    args = ap.parse_args()
    q = runtime.InferenceSession(args.qrt, args.backend)
    o = ort_session(args.onnx)
    q_in, o_in = {i.name for i in q.get_inputs()}, {i.name for i in o.get_inputs()}
    rng = np.random.default_rng(0)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    ratios: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        out = []
        for b, s in shapes:
            feed = {"input_ids": rng.integers(1000, 30000, (b, s)).astype(np.int64),
                    "attention_mask": np.ones((b, s), np.int64), "token_type_ids": np.zeros((b, s), np.int64)}
            qf, of = {k: v for k, v in feed.items() if k in q_in}, {k: v for k, v in feed.items() if k in o_in}
            for busy in (0, 1):
                med, _, _ = time_interleaved({"qrt": lambda: q.run(None, qf), "ort": lambda: o.run(None, of)},
                                             args.seconds, busy)
                key = f"{b}x{s} {'busy' if busy else 'quiet'}"
                ratios.setdefault(key, []).append(med["qrt"] / med["ort"])
                out.append(f"{key}: qrt {med['qrt']:.2f} ms, onnxruntime {med['ort']:.2f} ms, "
                           f"ratio {med['qrt'] / med['ort']:.2f}")
        print(f"repeat {rep + 1}: " + " | ".join(out), flush=True)
    print("median ratio qrt / onnxruntime: " + ", ".join(f"{k} {np.median(v):.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
