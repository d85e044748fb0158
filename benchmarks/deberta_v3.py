"""DeBERTa-v3 (transformers' DebertaV2 with relative attention) exported the default way, qrt
against onnxruntime, in one process.

    python benchmarks/deberta_v3.py [--shapes 1x16,1x128,8x128] [--seconds 2] [--layers 12]

No pretrained DeBERTa ships for offline use here, so the model is microsoft/deberta-v3-xsmall's
configuration (hidden 384, 12 layers of 6 heads, FFN 1536, 128,100-token vocabulary, 256
log-bucketed relative positions, shared key projections) with transformers' random weights: the
speed of every op is the pretrained model's, the outputs are not meaningful. It is exported by
``torch.onnx.export`` with nothing but input / output names and dynamic batch and sequence axes
(the dynamo exporter, torch's default). From that one file:

  * qrt int8 (``runtime.convert(f, quant="int8")``), on the default backend and planner, its
    attention fused into DisentangledAttention (runtime/fuse.py), and the same session with
    ``fuse=False`` (the exported c2p / p2c MatMul + GatherElements graph, as before the fusion);
  * qrt fp32;
  * onnxruntime fp32 and onnxruntime int8 (``quantize_dynamic``, QInt8 weights). onnxruntime's
    transformer optimizer has no DeBERTa attention fusion (its "bert" fusions do not match the
    disentangled pattern), so it is not a row here.

For each ``BxS`` shape (random token ids, no padding): the median ms per run of every row,
timed interleaved (benchmarks/interleaved.py), the speed against onnxruntime int8, and the
largest difference of qrt int8's output from onnxruntime fp32's (int8 rounding, for scale).
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

NAMES = ["input_ids", "attention_mask"]
# microsoft/deberta-v3-xsmall's config.json (the fields that shape the graph)
XSMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, vocab_size=128100,
              max_position_embeddings=512, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
              share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
              layer_norm_eps=1e-7, max_relative_positions=-1, hidden_act="gelu")


def export(path: str, layers: int) -> None:
    import torch
    import transformers as T

    class Encoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    model = T.DebertaV2Model(T.DebertaV2Config(**dict(XSMALL, num_hidden_layers=layers))).eval()
    args = (torch.randint(1000, 2000, (2, 16)), torch.ones(2, 16, dtype=torch.long))
    print(f"# deberta-v3-xsmall configuration, {layers} layers, random weights; torch {torch.__version__}, "
          f"transformers {T.__version__}; dynamo export", flush=True)
    with torch.no_grad():
        torch.onnx.export(Encoder(model).eval(), args, path, input_names=NAMES, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in NAMES})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1x16,1x128,8x128", help="batch x seq list (default 1x16,1x128,8x128)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row and shape (default 2)")
    ap.add_argument("--layers", type=int, default=12, help="encoder layers (default 12, as deberta-v3-xsmall)")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from runtime.fuse import fuse

    with tempfile.TemporaryDirectory() as t:
        onnx_path = os.path.join(t, "deberta.onnx")
        export(onnx_path, args.layers)
        int8 = runtime.convert(onnx_path, quant="int8")
        fused = [n.op for n in fuse(int8).nodes]
        print(f"# qrt after fusion: {fused.count('DisentangledAttention')} DisentangledAttention, "
              f"{fused.count('GatherElements')} GatherElements, {fused.count('Softmax')} Softmax", flush=True)
        sessions = {"qrt int8": runtime.InferenceSession(int8),
                    "qrt int8, not fused": runtime.InferenceSession(int8, fuse=False),
                    "qrt fp32": runtime.InferenceSession(runtime.convert(onnx_path))}
        i8 = os.path.join(t, "int8.onnx")
        quantize_dynamic(onnx_path, i8, weight_type=QuantType.QInt8)
        ort_sessions = {"onnxruntime fp32": ort_session(onnx_path), "onnxruntime int8": ort_session(i8)}
    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; qrt threads {sessions['qrt int8'].threads}", flush=True)
    rng = np.random.default_rng(0)
    for b, s in shapes:
        feed = {"input_ids": rng.integers(1000, 30000, (b, s)).astype(np.int64),
                "attention_mask": np.ones((b, s), np.int64)}
        runners = {**{k: (lambda x=x: x.run(None, feed)) for k, x in sessions.items()},
                   **{k: (lambda x=x: x.run(None, feed)) for k, x in ort_sessions.items()}}
        err = float(np.max(np.abs(sessions["qrt int8"].run(None, feed)[0]
                                  - ort_sessions["onnxruntime fp32"].run(None, feed)[0])))
        pair_before = cpu_pair_latency()
        med, runs, (load, load_after) = time_interleaved(runners, args.seconds)
        pair_line, far = describe_cpu_pair(pair_before, cpu_pair_latency())
        base = med["onnxruntime int8"]
        rows = [[k, f"{v:.2f}", f"{base / v:.2f}x", str(runs[k])] for k, v in med.items()]
        print(f"\n## batch {b} x seq {s}; load average {load:.2f} before timing, {load_after:.2f} after"
              + (f"; {pair_line}" if pair_line else "") + f"; qrt int8 max |y - onnxruntime fp32| {err:.3g}")
        if far:
            print(f"warning: {far}")
        print(format_table(rows, ["run", "median ms", "speed vs ort int8", "runs"]), flush=True)


if __name__ == "__main__":
    main()
