"""An exported model's attention fused into one Attention node against the same graph unfused,
one process.

    python benchmarks/attention_fusion.py [--model mpnet|gpt2] [--layers 2] [--hidden 384] [--heads 12]
                                          [--shapes 1x128,8x128] [--quant none|int8] [--seconds 2]

A transformers MPNetModel or GPT2Model with random weights (no download: the config sizes are
arguments; the defaults are all-mpnet-base-v2's shape at MiniLM's width), default (sdpa)
attention, exported by torch.onnx.export's TorchScript exporter with dynamic batch and sequence
axes, as tests/test_default_exports.py does. MPNet's attention adds a relative position bias
and the padding mask to the scores, which runtime/fuse.py folds into one mask (an Add before
the Attention node); GPT-2's adds its causal mask, and its key / value cache (exported without
a past) is a one-input Concat. (Called mpnet_fusion.py before GPT-2 fused.) Each shape: median
ms of InferenceSession(fuse=True) and (fuse=False) on the default backend, timed interleaved
(benchmarks/interleaved.py), and the largest difference between the two outputs.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.interleaved import time_interleaved  # noqa: E402
from runtime.fuse import fuse  # noqa: E402


def export(name: str, layers: int, hidden: int, heads: int) -> bytes:
    import torch
    import transformers as T
    torch.manual_seed(0)
    if name == "gpt2":
        model = T.GPT2Model(T.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=1000,
                                         n_positions=1024, bos_token_id=0, eos_token_id=0)).eval()
    else:
        model = T.MPNetModel(T.MPNetConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                           intermediate_size=4 * hidden, vocab_size=1000)).eval()

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]

    ids, mask = torch.randint(3, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask"]
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(Text(model), (ids, mask), buf, input_names=names, output_names=["y"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, opset_version=17, dynamo=False)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mpnet", "gpt2"], default="mpnet")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--shapes", default="1x128,8x128", help="batch x seq list (default 1x128,8x128)")
    ap.add_argument("--quant", choices=["none", "int8"], default="none")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row and shape (default 2)")
    args = ap.parse_args()
    graph = runtime.convert(export(args.model, args.layers, args.hidden, args.heads),
                            **({} if args.quant == "none" else {"quant": "int8"}))
    fused = [n.op for n in fuse(graph).nodes].count("Attention")
    print(f"# {args.model} {args.layers} layers, hidden {args.hidden}, {args.heads} heads, {args.quant}; "
          f"{fused} Attention node(s) after fusion")
    sessions = {f: runtime.InferenceSession(graph, fuse=f) for f in (True, False)}
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        b, s = (int(x) for x in shape.split("x"))
        feed = {"input_ids": rng.integers(3, 1000, (b, s)).astype(np.int64),
                "attention_mask": np.ones((b, s), np.int64)}
        ys = {f: sess.run(None, feed)[0] for f, sess in sessions.items()}
        med, runs, (l0, l1) = time_interleaved({f"fused={f}": (lambda sess=sess: sess.run(None, feed))
                                                for f, sess in sessions.items()}, args.seconds)
        diff = float(np.max(np.abs(ys[True].astype(np.float64) - ys[False])))
        print(f"{b} x {s}: fused {med['fused=True']:.2f} ms, unfused {med['fused=False']:.2f} ms, "
              f"{med['fused=False'] / med['fused=True']:.2f}x; max |fused - unfused| {diff:.2g}; "
              f"load average {l0:.2f} -> {l1:.2f}")


if __name__ == "__main__":
    main()
