"""SmoothQuant (Xiao et al. 2023) for static int8 activations (docs/CONVERTER.md, "Quantization methods").

A static int8 activation has one scale per tensor, so a few input channels with outliers
(transformer activations have channels 10-100x larger than the rest) leave the other
channels only a few int8 steps. SmoothQuant moves that range into the weight, which is
quantized per output row and absorbs it easily: for the Linear layers reading one input X (N_i, K),

    s_j = max|X[:, j]|^alpha / max_i max|W_i[:, j]|^(1 - alpha)       (j < K)
    X' = X / s (per column),  W_i' = W_i * s (per column):  X' W_i'^T = X W_i^T exactly.

alpha = 0.5 is the paper's default; larger moves more range into the weights.

Where X / s is computed: if X is the output of a LayerNormalization whose only readers are
these layers, 1/s is folded into its scale and bias (free). Otherwise (BERT's post-LN
outputs also feed the residual Add; GELU and attention outputs have no affine producer) a Mul
by 1/s is inserted in front of these layers only, so every other reader of X sees it
unchanged; it costs one elementwise pass over X.
"""
from __future__ import annotations

import numpy as np

from kernels.core.layouts import dense_tensor

from ..graph import Graph, Node, unique_name
from .gptq import rtn_quantize

S_RANGE = (1e-5, 1e5)     # clip: a channel that is 0 in all calibration data must not blow up
# alpha "auto": the candidates tried per group of layers (None: no smoothing)
ALPHAS = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def smooth_factors(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s (K,) float32 from max|X[:, j]| (K,) and max|W[:, j]| over the layers (K,); 1 where
    either is 0 (nothing to balance)."""
    x = np.asarray(x_absmax, np.float64)
    w = np.asarray(w_absmax, np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *S_RANGE).astype(np.float32)


def _fake_quant_rows(x: np.ndarray, act: str, lo: float, hi: float) -> np.ndarray:
    """x (R, K) float64 through int8 activations as the kernels quantize them (kernels/reference/
    packed.py): dynamic = symmetric per row; static = one asymmetric (scale, zero point) over
    [lo, hi] (the calibrated range, min-max)."""
    if act == "dynamic":
        s = np.abs(x).max(axis=1, keepdims=True) / 127.0
        s = np.where(s == 0, 1.0, s)
        return np.clip(np.rint(x / s), -127, 127) * s
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    z = np.clip(np.rint(-128 - lo / scale), -128, 127)
    return (np.clip(np.rint(x / scale) + z, -128, 127) - z) * scale


def search_alpha(x: np.ndarray, col_min: np.ndarray, col_max: np.ndarray, w: np.ndarray, act: str,
                 alphas=ALPHAS, weight_bits: int = 8) -> tuple[float | None, dict]:
    """The alpha (or None: leave X alone) whose int8 layer output is closest to the float one
    on the sampled rows x (R, K) of X, for the weights w (N, K) of every layer reading X
    (stacked): ||Q(X / s) Q(W * s)^T - X W^T|| / ||X W^T||, Q = int8 activations as ``act``
    quantizes them (the static range from col_min / col_max over all calibration rows) and
    int8 weights per row, rounded to nearest on the ``weight_bits`` grid (8, or 7: [-63, 63]).
    Returns (best alpha, {alpha: error})."""
    x64 = np.asarray(x, np.float64)
    w32 = np.asarray(w, np.float32)
    ref = x64 @ w32.T.astype(np.float64)
    den = float(np.linalg.norm(ref)) or 1.0
    absmax = np.maximum(np.abs(col_min), np.abs(col_max))
    errors = {}
    for a in alphas:
        s = np.ones(x.shape[1], np.float32) if a is None else smooth_factors(absmax, np.abs(w32).max(axis=0), a)
        s64 = s.astype(np.float64)
        xq = _fake_quant_rows(x64 / s64, act, min(0.0, float((col_min / s64).min())),
                              max(0.0, float((col_max / s64).max())))
        wq = rtn_quantize((w32 * s[None, :]).astype(np.float32), weight_bits).astype(np.float64)
        errors[a] = float(np.linalg.norm(xq @ wq.T - ref)) / den
    best = min(errors, key=lambda a: errors[a])
    return best, errors


def apply_smoothing(graph: Graph, x_name: str, readers: list[Node], weight_names: list[str],
                    s: np.ndarray) -> str:
    """Divide X = ``x_name`` by s for ``readers`` (Linear nodes of ``graph``) and multiply
    their weights' columns by s, in place on ``graph`` (the converter's working copy).
    Returns how X / s is computed, for the report."""
    s = np.asarray(s, np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    for name in dict.fromkeys(weight_names):
        w = np.asarray(graph.initializers[name].fields["data"])
        graph.initializers[name] = dense_tensor(name, (w * s[None, :]).astype(np.float32))
    producer = graph.producers().get(x_name)
    reader_ids = {id(n) for n in readers}
    others = [n for n in graph.consumers().get(x_name, []) if id(n) not in reader_ids]
    is_output = any(v.name == x_name for v in graph.outputs)
    if (producer is not None and producer.op == "LayerNormalization" and not others and not is_output
            and all(i in graph.initializers and graph.initializers[i].layout == "dense"
                    for i in producer.inputs[1:] if i)):
        # gamma / s and beta / s, as new initializers (the originals may be shared)
        for pos in range(1, len(producer.inputs)):
            old = producer.inputs[pos]
            if not old:
                continue
            new = unique_name(f"{old}.smooth", graph.initializers)
            v = np.asarray(graph.initializers[old].fields["data"])
            graph.initializers[new] = dense_tensor(new, (v * inv).astype(np.float32))
            producer.inputs[pos] = new
        return f"folded into {producer.name}"
    taken = set(graph.initializers) | {o for n in graph.nodes for o in n.outputs} | {v.name for v in graph.inputs}
    scale_name = unique_name(f"{x_name}.smooth_scale", taken)
    taken.add(scale_name)
    out_name = unique_name(f"{x_name}.smoothed", taken)
    graph.initializers[scale_name] = dense_tensor(scale_name, inv)
    mul = Node(unique_name(f"{x_name}/smooth", {n.name for n in graph.nodes}), "Mul",
               [x_name, scale_name], [out_name], {})
    first = min(graph.nodes.index(n) for n in readers)
    graph.nodes.insert(first, mul)
    for n in readers:
        n.inputs[0] = out_name
    return f"Mul by 1/s inserted ({mul.name})"
