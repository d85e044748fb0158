"""Accuracy and size of converted models on real data (scikit-learn's digits).

Two tables, for the digits MLP (64-128-64-10, scikit-learn) and the digits CNN (3 convs +
linear, PyTorch), no fine-tuning after pruning:

1. test accuracy vs sparsity, magnitude vs random pruning, at 50 / 70 / 90% (fp32 values, and
   with int8), against the unpruned fp32 model;
2. file size vs the fp32 file for every layout at 90% sparsity (or 2:4 for N:M), with accuracy.

    python benchmarks/convert_accuracy.py [--seed 0]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from runtime.convert.pipeline import find_layers  # noqa: E402
from runtime.tables import format_table as table  # noqa: E402
from tests import digits  # noqa: E402


def _untiled(layer, data, r, c) -> bool:
    shape = runtime.convert(data).initializers[layer.weight_name].shape
    k = 1
    for d in shape[1:]:
        k *= d
    return bool(shape[0] % r or k % c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"# {platform.machine()}, Python {platform.python_version()}; command: python benchmarks/convert_accuracy.py")
    models = {"MLP": digits.mlp_onnx(a.seed), "CNN": digits.cnn_onnx(a.seed)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, (data, x_tr, x_te, y_te) in models.items():
            name = "pixels" if label == "MLP" else "image"
            calib = [{name: x_tr[i:i + 128]} for i in range(0, 512, 128)]
            fp32_path = tmp / f"{label}.qrt"
            runtime.convert(data, fp32_path)
            fp32_acc = digits.accuracy(fp32_path, x_te, y_te, name)
            fp32_size = fp32_path.stat().st_size

            rows = []
            for s in (0.5, 0.7, 0.9):
                row = [f"{s:.0%}"]
                for quant in ("none", "int8"):
                    for method in ("magnitude", "random"):
                        g = runtime.convert(data, calib=calib, prune=method, sparsity=s, quant=quant, seed=a.seed)
                        row.append(f"{digits.accuracy(g, x_te, y_te, name) * 100:.2f}")
                rows.append(row)
            print(f"\n## {label}: test accuracy % vs sparsity (fp32 unpruned: {fp32_acc * 100:.2f}%)\n")
            print(table(rows, ["sparsity", "magnitude fp32", "random fp32", "magnitude int8", "random int8"]))

            rows = []
            variants = [
                ("dense fp32", {}),
                ("dense int8", {"quant": "int8"}),
                ("int4 g32", {"quant": "int4", "group_size": 32}),
                ("CSR fp32 90%", {"prune": "magnitude", "sparsity": 0.9}),
                ("CSR int8 90%", {"prune": "magnitude", "sparsity": 0.9, "quant": "int8"}),
                ("BSR 1x4 fp32 90%", {"prune": "block", "sparsity": 0.9, "block": (1, 4)}),
                ("BSR 1x4 int8 90%", {"prune": "block", "sparsity": 0.9, "block": (1, 4), "quant": "int8"}),
                ("BSR 4x4 int8 90%", {"prune": "block", "sparsity": 0.9, "block": (4, 4), "quant": "int8"}),
                ("N:M 2:4 fp32", {"prune": "nm"}),
                ("N:M 2:4 int8", {"prune": "nm", "quant": "int8"}),
                ("channel 90% (dense fp32)", {"prune": "channel", "sparsity": 0.9}),
            ]
            layers = find_layers(runtime.convert(data))
            variants.append(("N:M 2:4 int8, classifier skipped", {"prune": "nm", "quant": "int8",
                                                                  "skip": [layers[-1].name]}))
            for vname, opts in variants:
                path = tmp / f"{label}-{len(rows)}.qrt"
                if opts.get("prune") == "block":   # layers the block does not tile stay unpruned
                    r, c = opts["block"]
                    untiled = [lr.name for lr in layers if lr.node.op and _untiled(lr, data, r, c)]
                    if untiled:
                        opts = {**opts, "skip": untiled}
                        vname += f" ({len(untiled)} untiled layer(s) skipped)"
                runtime.convert(data, path, calib=calib, **opts)
                size = path.stat().st_size
                rows.append([vname, f"{size / 1024:.1f}", f"{size / fp32_size:.3f}",
                             f"{digits.accuracy(path, x_te, y_te, name) * 100:.2f}"])
            print(f"\n## {label}: file size vs fp32 ({fp32_size / 1024:.1f} KiB) per layout\n")
            print(table(rows, ["layout", "KiB", "x fp32 file", "accuracy %"]))


if __name__ == "__main__":
    main()
