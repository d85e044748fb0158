"""Write the MiniLM-dimension BERT benchmark models into a folder, for `qrt bench`:

    python benchmarks/bert_models.py OUT_DIR

bert.onnx (random weights, all-MiniLM-L6 dimensions: hidden 384, 6 layers, 12 heads, FFN
1536, vocabulary 1000; exported by torch), bert_int8.qrt (int8 weights, dynamic activations),
bert_s80_int8.qrt (80% magnitude-pruned + int8) and bert_2of4_int8.qrt (2:4 + int8).
Needs torch and transformers (the test / bench extras).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 1000
VARIANTS = {"bert_int8.qrt": {"quant": "int8"},
            "bert_s80_int8.qrt": {"prune": "magnitude", "sparsity": 0.8, "quant": "int8"},
            "bert_2of4_int8.qrt": {"prune": "nm", "quant": "int8"}}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import runtime
    from tests import model_zoo
    from tests.test_onnx_equivalence import _bert_bytes
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    data = _bert_bytes(model_zoo.bert(layers=6, hidden=384, heads=12, ffn=1536, vocab=VOCAB))
    (out / "bert.onnx").write_bytes(data)
    calib = [model_zoo.bert_feeds(1, 128, vocab=VOCAB, seed=s) for s in range(4)]
    for name, opts in VARIANTS.items():
        runtime.convert(data, out / name, calib=calib, **opts)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
