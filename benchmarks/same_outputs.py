"""Are the outputs the same bits as before a refactor? Writes, or compares against, every output
of the test models (tests/model_zoo.py: MLP, CNN, 2-layer BERT; fixed seeds) under every
conversion and every CPU backend.

    python benchmarks/same_outputs.py write before.npz      # on the old tree
    python benchmarks/same_outputs.py compare before.npz    # on the new tree: exit 1 on any bit

Uses only the public API (runtime.convert, runtime.InferenceSession), so it runs on any tree.
Conversions are deterministic (fixed calibration data); plan="off" runs each stored layout on
the backend asked for, plan="auto" what the planner picks (which may differ between runs
where two candidates are close: compare those rows on one machine, one cache).
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
from tests import model_zoo  # noqa: E402

CONVERSIONS = {
    "fp32": {},
    "int8": dict(quant="int8"),
    "int8_static": dict(quant="int8", act="static"),
    "csr80_int8": dict(prune="magnitude", sparsity=0.8, quant="int8"),
    "nm24_int8": dict(prune="nm", quant="int8"),
    "bsr4x1_int8": dict(prune="block", block=(4, 1), sparsity=0.75, quant="int8"),
    "int4": dict(quant="int4", group_size=16),
}
BACKENDS = ("reference", "numba", "native")


def models():
    """name -> (onnx bytes, feeds for calibration and evaluation)."""
    import torch
    rng = np.random.default_rng(0)
    out = {}
    for name, (module, shape) in {"mlp": (model_zoo.mlp(), (8, 20)), "cnn": (model_zoo.cnn(), (4, 3, 12, 12))}.items():
        x = rng.standard_normal(shape).astype(np.float32)
        out[name] = (model_zoo.export(module, (torch.from_numpy(x),), input_names=["x"], output_names=["y"],
                                      dynamic_axes={"x": {0: "b"}}), {"x": x})
    feeds = model_zoo.bert_feeds(2, 16)
    names = list(feeds)
    out["bert"] = (model_zoo.export(model_zoo.bert(), tuple(torch.from_numpy(feeds[n]) for n in names),
                                    input_names=names, output_names=["h", "pooled"],
                                    dynamic_axes={n: {0: "b", 1: "s"} for n in names}), feeds)
    return out


def outputs() -> dict[str, np.ndarray]:
    got = {}
    with tempfile.TemporaryDirectory() as d:
        for mname, (onnx_bytes, feeds) in models().items():
            src = os.path.join(d, f"{mname}.onnx")
            Path(src).write_bytes(onnx_bytes)
            for cname, opts in CONVERSIONS.items():
                if mname != "bert" and cname in ("nm24_int8", "bsr4x1_int8"):
                    continue        # widths not multiples of 4 in the small MLP / CNN
                out = os.path.join(d, f"{mname}_{cname}.qrt")
                runtime.convert(src, out, calib=[feeds], holdout=0.0, **opts) if opts else runtime.convert(src, out)
                for backend in BACKENDS:
                    for plan in ("off", "auto"):
                        if plan == "auto" and backend != "native":
                            continue
                        sess = runtime.InferenceSession(out, backend=backend if plan == "off" else "auto", plan=plan)
                        y = sess.run(None, feeds)[0]
                        key = f"{mname}/{cname}/{backend if plan == 'off' else 'auto'}"
                        got[key] = np.asarray(y)
                        print(key, y.shape, y.dtype, flush=True)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("write", "compare"))
    ap.add_argument("path", help="the .npz of outputs")
    args = ap.parse_args()
    got = outputs()
    if args.action == "write":
        np.savez(args.path, **got)
        print(f"wrote {len(got)} outputs to {args.path}")
        return 0
    old = np.load(args.path)
    bad = []
    for key, y in got.items():
        if key not in old.files:
            print(f"{key}: not in {args.path}")
            continue
        o = old[key]
        same = o.shape == y.shape and o.dtype == y.dtype and np.array_equal(o.view(np.uint8), y.view(np.uint8))
        if not same:
            diff = float(np.max(np.abs(o.astype(np.float64) - y.astype(np.float64)))) if o.shape == y.shape else None
            bad.append(f"{key}: differs (max |diff| {diff})")
    print(f"{len(got) - len(bad)} of {len(got)} outputs bit-identical")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
