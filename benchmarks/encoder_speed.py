"""The issue's text models, sized like all-MiniLM-L6-v2, exported the default way: qrt int8 against
onnxruntime int8, in one process.

    python benchmarks/encoder_speed.py [--models bert,gpt2] [--shape 1x128] [--seconds 1.5]

Each of BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA, XLM-R, MPNet and GPT-2 with hidden 384, 6
layers of 12 heads and FFN 1536 (ALBERT and ELECTRA with 128-wide embeddings; DistilBERT and
GPT-2 in their own config names), transformers' random weights, exported by
``torch.onnx.export`` (the dynamo exporter, torch's default) with input_ids and attention_mask;
qrt int8 (``runtime.convert(f, quant="int8")``, default backend) and onnxruntime int8
(``quantize_dynamic``, QInt8 weights) timed interleaved (benchmarks/interleaved.py). Prints the
median ms of each, the ratio, and how many Attention / Softmax / MatMul nodes the fused graph
has (an unfused attention shows as Softmax and MatMul). DeBERTa-v3 has its own script,
benchmarks/deberta_v3.py.
"""
from __future__ import annotations

import argparse
import collections
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

SIZE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, vocab_size=30522,
            max_position_embeddings=512)


def models() -> dict:
    import transformers as T
    return {
        "bert": lambda: T.BertModel(T.BertConfig(**SIZE)),
        "roberta": lambda: T.RobertaModel(T.RobertaConfig(**SIZE)),
        "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(dim=384, n_layers=6, n_heads=12, hidden_dim=1536)),
        "albert": lambda: T.AlbertModel(T.AlbertConfig(embedding_size=128, **SIZE)),
        "electra": lambda: T.ElectraModel(T.ElectraConfig(embedding_size=128, **SIZE)),
        "xlm-roberta": lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**SIZE)),
        "mpnet": lambda: T.MPNetModel(T.MPNetConfig(**SIZE)),
        "gpt2": lambda: T.GPT2Model(T.GPT2Config(n_embd=384, n_layer=6, n_head=12, n_positions=512)),
    }


def export(model, path: str) -> None:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]

    names = ["input_ids", "attention_mask"]
    args = (torch.randint(3, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.long))
    with torch.no_grad():
        torch.onnx.export(Encoder(model).eval(), args, path, input_names=names, output_names=["y"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(models()), help="comma-separated (default: all)")
    ap.add_argument("--shape", default="1x128", help="batch x seq (default 1x128)")
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per row (default 1.5)")
    args = ap.parse_args()
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from runtime.fuse import fuse

    b, s = (int(x) for x in args.shape.split("x"))
    table = models()
    unknown = [m for m in args.models.split(",") if m not in table]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; expected some of {', '.join(table)}")
    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; batch {b} x seq {s}; torch {torch.__version__}", flush=True)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as t:
            path, i8 = os.path.join(t, "m.onnx"), os.path.join(t, "m_int8.onnx")
            export(table[name]().eval(), path)
            quantize_dynamic(path, i8, weight_type=QuantType.QInt8)
            graph = runtime.convert(path, quant="int8")
            ops = collections.Counter(n.op for n in fuse(graph).nodes)
            qrt = runtime.InferenceSession(graph)
            o = ort_session(i8)
        feed = {"input_ids": np.random.default_rng(0).integers(3, 1000, (b, s)),
                "attention_mask": np.ones((b, s), np.int64)}
        kept = {i.name for i in o.get_inputs()}
        ort_feed = {k: v for k, v in feed.items() if k in kept}
        before = cpu_pair_latency()
        med, _, (load, _) = time_interleaved({"qrt": lambda: qrt.run(None, feed), "ort": lambda: o.run(None, ort_feed)},
                                             args.seconds)
        pair_line, far = describe_cpu_pair(before, cpu_pair_latency())
        rows.append([name, f"{med['qrt']:.2f}", f"{med['ort']:.2f}", f"{med['ort'] / med['qrt']:.2f}x",
                     f"{ops.get('Attention', 0) + ops.get('DisentangledAttention', 0)} / {ops.get('Softmax', 0)} / "
                     f"{ops.get('MatMul', 0)}", f"{load:.2f}", pair_line + (" (far)" if far else "")])
        print(format_table(rows[-1:], ["model", "qrt int8 ms", "ort int8 ms", "qrt vs ort", "attention / softmax / "
                                       "matmul nodes", "load before", "CPU pair"]), flush=True)
    print()
    print(format_table(rows, ["model", "qrt int8 ms", "ort int8 ms", "qrt vs ort", "attention / softmax / matmul nodes",
                              "load before", "CPU pair"]))


if __name__ == "__main__":
    main()
