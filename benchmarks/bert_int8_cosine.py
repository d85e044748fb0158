"""Output cosine of int8 conversions of random-weight BERT encoders vs their fp32 model.

    python benchmarks/bert_int8_cosine.py

Models: the 2-layer test BERT (hidden 64) and one with all-MiniLM-L6 dimensions (hidden 384,
6 layers, 12 heads, FFN 1536), random weights, exported by torch (TorchScript exporter);
calibration = evaluation feeds: 3 batches of 2 x 16 tokens with attention masks that mask
real positions. The report's end-to-end metrics are over both outputs (last_hidden_state,
pooler_output).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from runtime.tables import format_table  # noqa: E402
from tests import model_zoo  # noqa: E402
from tests.test_onnx_equivalence import _bert_bytes  # noqa: E402


def main() -> None:
    rows = []
    for label, kw in [("BERT 2L h64", dict(layers=2)),
                      ("MiniLM-L6 dims", dict(layers=6, hidden=384, heads=12, ffn=1536, vocab=1000))]:
        data = _bert_bytes(model_zoo.bert(**kw))
        vocab = kw.get("vocab", 100)
        feeds = [model_zoo.bert_feeds(2, 16, vocab=vocab, seed=s) for s in range(3)]
        for opts in [dict(quant="int8"), dict(quant="int8", act="static", calib_method="percentile"),
                     dict(prune="nm", quant="int8"), dict(quant="int4", group_size=32)]:
            t0 = time.perf_counter()
            g = runtime.convert(data, calib=feeds, **opts)
            e = g.metadata["report"]["end_to_end"]
            tot = g.metadata["report"]["totals"]
            rows.append([label, ", ".join(f"{k}={v}" for k, v in opts.items()), f"{e['cosine']:.5f}",
                         f"{e['rel_error']:.3e}", f"{tot['ratio']:.3f}", f"{time.perf_counter() - t0:.1f}"])
    print(format_table(rows, ["model", "options", "cosine", "rel. error", "weights x fp32", "convert s"]))


if __name__ == "__main__":
    main()
