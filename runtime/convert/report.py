"""Accuracy report of a conversion: per layer and end to end, against the fp32 model.

Per layer: the layout chosen, achieved sparsity, bytes (packed vs fp32), weight SQNR in dB
(10 log10 ||w||^2 / ||w - dequant(w)||^2: pruning and quantization error together), and the
layer's output error on its own fp32 calibration inputs (relative L2), so a bad layer can be
told from error that accumulated upstream. Per embedding table (a constant table read by
Gather): layout, bytes vs fp32, max abs dequantization error and SQNR. End to end: max abs
error, relative error, cosine similarity and, for classifier-shaped outputs (rank 2, more
than one column), top-1 agreement. The report is plain JSON-able data: printed as a table,
written with --report and stored in the .qrt metadata so `qrt inspect` can show it later.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..tables import format_table


@dataclass
class LayerReport:
    name: str
    op: str
    shape: list[int]                  # logical weight shape after conversion
    layout: str
    sparsity: float                   # achieved, zeros / size of the stored weight
    bytes: int                        # packed bytes of the weight (all fields)
    fp32_bytes: int                   # bytes of the original fp32 weight
    act_quant: str = "none"
    sqnr_db: float | None = None      # None: not comparable (channel-pruned shape change)
    output_rel_error: float | None = None
    note: str = ""                    # why kept fp32 / skipped / not channel-pruned

    @property
    def ratio(self) -> float:
        return self.bytes / self.fp32_bytes if self.fp32_bytes else 1.0


@dataclass
class EmbeddingReport:
    """One embedding table (a constant table read by Gather; pipeline.find_embeddings)."""
    name: str                         # the table's initializer name
    nodes: list[str]                  # the Gather nodes reading it
    shape: list[int]                  # (V, D): vocabulary rows x embedding width
    layout: str                       # int8 (one scale per row), int4_grouped, or dense (kept fp32)
    bytes: int                        # packed bytes (all fields)
    fp32_bytes: int
    max_abs_error: float              # max |table - dequant(table)| over every entry
    sqnr_db: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.bytes / self.fp32_bytes if self.fp32_bytes else 1.0


@dataclass
class Report:
    options: dict[str, Any]
    calibration: str                  # where the calibration/evaluation inputs came from
    layers: list[LayerReport] = field(default_factory=list)
    end_to_end: dict[str, Any] = field(default_factory=dict)
    # the same metrics on calibration samples held back from every calibration step (pruning,
    # GPTQ, ranges, the budget): what to expect on data the conversion did not see
    held_out: dict[str, Any] = field(default_factory=dict)
    held_out_source: str = ""
    recovery: dict[str, Any] = field(default_factory=dict)   # distillation: steps, losses, cosines
    budget: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    embeddings: list[EmbeddingReport] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for layer, lr in zip(d["layers"], self.layers):
            layer["ratio"] = lr.ratio
        for table, er in zip(d["embeddings"], self.embeddings):
            table["ratio"] = er.ratio
        d["totals"] = self.totals()
        return _finite(d)

    def totals(self) -> dict[str, Any]:
        packed = sum(lr.bytes for lr in self.layers)
        fp32 = sum(lr.fp32_bytes for lr in self.layers)
        out = {"layers": len(self.layers), "weight_bytes": packed, "fp32_weight_bytes": fp32,
               "ratio": packed / fp32 if fp32 else 1.0}
        if self.embeddings:       # apart from the layers' figures, which keep their meaning
            out["embedding_bytes"] = sum(e.bytes for e in self.embeddings)
            out["fp32_embedding_bytes"] = sum(e.fp32_bytes for e in self.embeddings)
        return out

    def table(self) -> str:
        rows = []
        for lr in self.layers:
            rows.append([lr.name, lr.op, "x".join(map(str, lr.shape)), lr.layout,
                         lr.act_quant if lr.act_quant != "none" else "-",
                         f"{lr.sparsity * 100:.1f}", f"{lr.bytes / 1024:.1f}", f"{lr.ratio:.3f}",
                         _fmt(lr.sqnr_db, ".1f"), _fmt(lr.output_rel_error, ".2e"), lr.note])
        out = [format_table(rows, ["layer", "op", "shape", "layout", "act", "sparsity %", "KiB",
                             "x fp32", "SQNR dB", "out rel err", "note"])]
        t = self.totals()
        out.append(f"weights: {t['weight_bytes'] / 1024:.1f} KiB vs {t['fp32_weight_bytes'] / 1024:.1f} KiB "
                   f"fp32 ({t['ratio']:.3f}x)")
        if self.embeddings:
            rows = [[e.name, "x".join(map(str, e.shape)), e.layout, f"{e.bytes / 1024:.1f}", f"{e.ratio:.3f}",
                     f"{e.max_abs_error:.2e}", _fmt(e.sqnr_db, ".1f"), e.note] for e in self.embeddings]
            out.append(format_table(rows, ["embedding table", "shape", "layout", "KiB", "x fp32",
                                           "max abs err", "SQNR dB", "note"]))
            eb, ef = t["embedding_bytes"], t["fp32_embedding_bytes"]
            out.append(f"embedding tables: {eb / 1024:.1f} KiB vs {ef / 1024:.1f} KiB fp32 "
                       f"({eb / ef if ef else 1.0:.3f}x)")
        for e, where in ((self.end_to_end, self.calibration), (self.held_out, self.held_out_source)):
            if not e:
                continue
            line = (f"end to end on {where}: cosine {e['cosine']:.6f}, relative error "
                    f"{e['rel_error']:.3e}, max abs error {e['max_abs_error']:.3e}")
            if e.get("top1_agreement") is not None:
                line += f", top-1 agreement {e['top1_agreement'] * 100:.2f}%"
            out.append(line)
        if self.recovery:
            r = self.recovery
            out.append(f"recovery: {r['steps']} steps in {r['seconds']} s on {r['data']}, loss {r['loss_start']:.4f} "
                       f"-> {r['loss_end']:.4f}, fp32 cosine {r['cosine_before']:.4f} -> {r['cosine_after']:.4f}"
                       f"{' (interrupted)' if r['interrupted'] else ''}")
        if self.budget:
            out.append(f"accuracy budget: {self.budget['summary']}")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


def _fmt(x, spec) -> str:
    return "-" if x is None else format(x, spec)


def _finite(x):
    """JSON has no inf/nan: an exact weight (SQNR = inf) is written as null-free 'inf' string."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return x


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """10 log10(signal / noise); inf when exact, -inf for an all-zero reference with noise."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    want = np.asarray(want, np.float64)
    diff = np.linalg.norm(np.asarray(got, np.float64) - want)
    norm = np.linalg.norm(want)
    return float(diff / norm) if norm > 0 else float(diff)


def output_metrics(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> dict[str, Any]:
    """End-to-end comparison over batches of outputs (got[b][k] vs want[b][k]).

    cosine and relative error are over all float outputs concatenated; top-1 agreement over
    the rank-2 outputs with more than one column (classifier logits/probabilities)."""
    g_all, w_all, agree, total, max_abs = [], [], 0, 0, 0.0
    for gb, wb in zip(got, want):
        for g, w in zip(gb, wb):
            if g.dtype.kind != "f":
                continue
            g64, w64 = g.astype(np.float64).ravel(), w.astype(np.float64).ravel()
            g_all.append(g64)
            w_all.append(w64)
            if g64.size:
                max_abs = max(max_abs, float(np.max(np.abs(g64 - w64))))
            if g.ndim == 2 and g.shape[1] > 1:
                agree += int(np.sum(g.argmax(1) == w.argmax(1)))
                total += g.shape[0]
    g_cat = np.concatenate(g_all) if g_all else np.zeros(0)
    w_cat = np.concatenate(w_all) if w_all else np.zeros(0)
    denom = np.linalg.norm(g_cat) * np.linalg.norm(w_cat)
    cosine = float(np.dot(g_cat, w_cat) / denom) if denom > 0 else 1.0
    return {"cosine": cosine, "rel_error": rel_error(g_cat, w_cat), "max_abs_error": max_abs,
            "top1_agreement": agree / total if total else None}
