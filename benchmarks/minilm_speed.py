"""Speed of converted all-MiniLM-L6-v2 files side by side, in one process, on the same inputs.

    python benchmarks/minilm_prune.py --only fp32 int8 "80% + int8, obs" --save DIR   # the files
    python benchmarks/minilm_speed.py DIR [--batch 1] [--seq 128] [--seconds 3] [--busy N]

Times, in interleaved rounds (benchmarks/interleaved.py), one ``run`` of: every .qrt file in DIR under qrt's planner (``plan="auto"``: per layer the
fastest of the stored layout and its dense int8 equivalent on this machine's backends) and
with the stored layouts as written (``plan="off"``); onnxruntime fp32 on DIR/minilm.onnx and
onnxruntime int8 (its dynamic quantization of the same file). Prints the median ms per run
and the speed-up against the dense int8 file (int8.qrt). The inputs are random token ids of
``--seq`` tokens, no padding. ``--busy N`` runs N CPU-bound background processes per CPU
during the timing (a shared machine: other workers on the same cores), for every row alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.interleaved import ort_session, time_interleaved  # noqa: E402
from runtime.tables import format_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="folder with minilm.onnx and the .qrt files (minilm_prune.py --save)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row (default 3)")
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound background processes per CPU while timing")
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    d = Path(args.dir)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 30000, (args.batch, args.seq)).astype(np.int64),
            "attention_mask": np.ones((args.batch, args.seq), np.int64),
            "token_type_ids": np.zeros((args.batch, args.seq), np.int64)}
    runners = {}
    for f in sorted(d.glob("*.qrt")):
        for plan in ("auto", "off"):
            sess = runtime.InferenceSession(f, plan=plan)
            runners[f"qrt {f.stem} (plan {plan})"] = (lambda s=sess: s.run(None, feed))
    fp32 = ort_session(str(d / "minilm.onnx"))
    runners["onnxruntime fp32"] = lambda: fp32.run(None, feed)
    with tempfile.TemporaryDirectory() as t:
        q = os.path.join(t, "int8.onnx")
        quantize_dynamic(str(d / "minilm.onnx"), q, weight_type=QuantType.QInt8)
        i8 = ort_session(q)
    runners["onnxruntime int8 (dynamic)"] = lambda: i8.run(None, feed)
    med, runs, (load, load_after) = time_interleaved(runners, args.seconds, args.busy)
    base = med.get("qrt int8 (plan auto)")
    rows = [[k, f"{v:.2f}", f"{base / v:.2f}x" if base else "-", str(runs[k])] for k, v in med.items()]
    print(f"# batch {args.batch} x seq {args.seq}; {os.cpu_count()} CPUs; {args.busy} busy background process(es) "
          f"per CPU; load average before timing {load:.2f}, "
          f"after {load_after:.2f}")
    print(format_table(rows, ["run", "median ms", "speed-up vs qrt int8", "runs"]))


if __name__ == "__main__":
    main()
