"""Speed of converted all-MiniLM-L6-v2 files side by side, in one process, on the same inputs.

    python benchmarks/minilm_prune.py --only fp32 int8 "80% + int8, obs" --save DIR   # the files
    python benchmarks/minilm_speed.py DIR [--batch 1] [--seq 128] [--seconds 3] [--busy N]

Times, in interleaved rounds (so that a change in the machine's load hits every row alike;
each round starts with WARM_SECONDS of untimed calls, so that the previous row's spinning thread pool does
not count against this one), one ``run`` of: every .qrt file in DIR under qrt's planner (``plan="auto"``: per layer the
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from kernels.core.threads import usable_cpus  # noqa: E402
from runtime.tables import format_table  # noqa: E402

WARM_SECONDS = 0.2      # OpenBLAS's idle workers spin about 0.1 s before they sleep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="folder with minilm.onnx and the .qrt files (minilm_prune.py --save)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row (default 3)")
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound background processes per CPU while timing")
    args = ap.parse_args()
    import onnxruntime as ort
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
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    fp32 = ort.InferenceSession(str(d / "minilm.onnx"), so, providers=["CPUExecutionProvider"])
    runners["onnxruntime fp32"] = lambda: fp32.run(None, feed)
    with tempfile.TemporaryDirectory() as t:
        q = os.path.join(t, "int8.onnx")
        quantize_dynamic(str(d / "minilm.onnx"), q, weight_type=QuantType.QInt8)
        i8 = ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])
    runners["onnxruntime int8 (dynamic)"] = lambda: i8.run(None, feed)
    for fn in runners.values():          # first runs: the planner measures, numba compiles
        fn()
        fn()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy * usable_cpus())]
    time.sleep(0.5 if busy else 0.0)
    times: dict[str, list[float]] = {k: [] for k in runners}
    rounds = 10
    t_end = time.perf_counter() + args.seconds * len(runners)
    load = os.getloadavg()[0]
    while time.perf_counter() < t_end or min(len(v) for v in times.values()) < 5:
        for name, fn in runners.items():
            warm = time.perf_counter() + WARM_SECONDS
            while time.perf_counter() < warm:   # untimed: the previous row's thread pool may still
                fn()                            # spin on the cores (OpenBLAS: ~0.1 s after a call)
            for _ in range(rounds):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    for p in busy:
        p.kill()
        p.wait()
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    base = med.get("qrt int8 (plan auto)")
    rows = [[k, f"{v:.2f}", f"{base / v:.2f}x" if base else "-", str(len(times[k]))] for k, v in med.items()]
    print(f"# batch {args.batch} x seq {args.seq}; {os.cpu_count()} CPUs; {args.busy} busy background process(es) "
          f"per CPU; load average before timing {load:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print(format_table(rows, ["run", "median ms", "speed-up vs qrt int8", "runs"]))


if __name__ == "__main__":
    main()
