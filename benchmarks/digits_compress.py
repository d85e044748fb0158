"""Digits MLP and CNN at 90% sparsity + int8: one-shot (magnitude, obs) against distillation
recovery, test accuracy.

    python benchmarks/digits_compress.py [--steps 2000] [--only mlp|cnn]

Models: the demo's MLP (64-256-256-10, scikit-learn, runtime/demo.py; its classifier layer
dense2 is kept unpruned, as the demo does) and the CNN of tests/digits.py (Conv 1->16,
Conv 16->32, MaxPool, Linear 512->64, Linear 64->10; the first conv, 9 weights per filter, and
the classifier are kept unpruned). Calibration: 512 training images; recovery trains on all
1257 training images without their labels; accuracy on the 540 held-out test images. obs
runs with drift correction (the default) and, for comparison, without.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from runtime.tables import format_table  # noqa: E402
from tests import digits  # noqa: E402


def models(only):
    from runtime.demo import to_onnx, train
    if only in (None, "mlp"):
        clf, x_tr, x_te, y_te = train(0)
        yield "MLP 64-256-256-10", to_onnx(clf), x_tr, x_te, y_te, "pixels", ["dense2*"]
    if only in (None, "cnn"):
        data, x_tr, x_te, y_te = digits.cnn_onnx(0)
        g = runtime.convert.from_onnx(data)
        layers = [n.name for n in g.nodes if n.op in ("Linear", "Conv")]
        yield "CNN", data, x_tr, x_te, y_te, "image", [layers[0], layers[-1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="recovery steps (default 2000)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--only", choices=["mlp", "cnn"])
    args = ap.parse_args()
    print(f"# load average {os.getloadavg()[0]:.2f}; {args.steps} recovery steps", flush=True)
    rows = []
    for label, data, x_tr, x_te, y_te, name, skip in models(args.only):
        calib = [{name: x_tr[i:i + 128]} for i in range(0, 512, 128)]
        train = [{name: x_tr[i:i + 64]} for i in range(0, len(x_tr), 64)]
        base = dict(calib=calib, quant="int8", skip=skip, holdout=0.0)
        pruned = dict(base, prune="magnitude", sparsity=args.sparsity)
        sets = [("fp32", {}), ("int8", base),
                (f"{args.sparsity:.0%} + int8, magnitude", dict(pruned, prune_method="magnitude")),
                (f"{args.sparsity:.0%} + int8, obs, no drift correction", dict(pruned, prune_method="obs",
                                                                              drift_correction="off")),
                (f"{args.sparsity:.0%} + int8, obs", dict(pruned, prune_method="obs")),
                (f"{args.sparsity:.0%} + int8, obs + recover", dict(pruned, prune_method="obs", recover=True,
                                                                     recover_data=train, recover_steps=args.steps,
                                                                     recover_lr=1e-3)),
                (f"{args.sparsity:.0%} + int8, gradual recover", dict(pruned, recover=True, recover_gradual=True,
                                                                       recover_data=train, recover_steps=args.steps,
                                                                       recover_lr=1e-3))]
        for set_label, opts in sets:
            t0 = time.perf_counter()
            g = runtime.convert(data, **opts) if opts else runtime.convert.from_onnx(data)
            secs = time.perf_counter() - t0
            acc = digits.accuracy(g, x_te, y_te, name)
            rows.append([label, set_label, f"{acc * 100:.1f}", f"{secs:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    print(format_table(rows, ["model", "conversion", "test accuracy %", "convert s"]))


if __name__ == "__main__":
    main()
