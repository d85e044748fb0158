"""GPTQ: weight quantization with a second-order error update (docs/CONVERTER.md,
"Quantization methods").

Round-to-nearest (RTN) quantizes every weight on its own. GPTQ (Frantar et al. 2022) visits
the columns of a Linear weight W (N, K) one at a time and, after rounding column k, moves the
not yet quantized columns of each row so that the layer's output on the calibration inputs
changes as little as possible: with H = X^T X + lambda I and U the upper Cholesky factor of
H^-1 (the same U as obs.py's OBS update),

    e = (W[:, k] - Q[:, k]) / U[k, k];   W[:, k+1:] -= e U[k, k+1:]

so the error of column k is absorbed by the columns that still can change. It is OBS with
"round to the grid" in place of "set to zero", and composes with a pruning mask: a pruned
position is rounded to exactly 0 (0 is on every symmetric grid), so the kept weights absorb
both errors and the zeros stay zero.

The grid is fixed before the first column (GPTQ's "static groups"). int8: the scales
round-to-nearest would use on the same (masked) weight, max|w| / 127 per row (or per tensor).
int4: per (row, group of ``group_size`` columns) the scale among r * max|group| / 7,
r in SHRINK, whose grid rounds that group with the least input-weighted squared error
sum_k H[k, k] (w_k - q_k)^2 (search_int4_grid). Seven steps a side are coarse: clipping the
few largest weights of a group to round the rest finer usually lowers the layer's error, and
r = 7/8 puts a group's largest negative weight on the grid's -8. Asymmetric int4
(``symmetric=False``): the same search over the range [r min, r max] in 15 steps with a zero
point; a pruned 0 is still exactly on the grid (q = zero point). Fixing the scales
lets the columns be visited in any order without a group's scale depending on which of its
columns came first, and the converter hands these scales to the packer (layouts.pack_*
``scale=``), so the packed integers are exactly the ones chosen here. Updated weights that
leave the grid's range are clipped (int8 [-127, 127], int4 [-8, 7], asymmetric int4 [0, 15]).

act_order (GPTQ's "desc_act"): columns are visited in order of decreasing H[k, k] (the inputs
with the most energy first), so the error of the columns that matter most is spread over the
most remaining columns. Lazy batches of ``obs.BLOCK`` columns, as obs_prune.

Shapes: w (N, K) float32, g (K, K) float64, mask (N, K) bool or None (True = kept).
"""
from __future__ import annotations

import numpy as np

from kernels.core.layouts import INT4_ASYMMETRIC, INT4_SYMMETRIC, INT8_QMAX_OF_BITS, _scale32, pack_int4_grouped
from .obs import BLOCK, _inverse_cholesky

# bits -> (levels, the symmetric grid): int8 on 8 or 7 bits (ConvertOptions.weight_bits), int4
BITS = {**{b: (q, (-q, q)) for b, q in INT8_QMAX_OF_BITS.items()}, 4: (7, INT4_SYMMETRIC)}
# the int4 scale candidates, as fractions of round-to-nearest's max|group| / 7 (7/8 included:
# a negative extreme then lands exactly on -8)
SHRINK = np.unique(np.concatenate([np.linspace(0.5, 1.0, 26), [7 / 8]]))


def rtn_scales(w: np.ndarray, bits: int, *, per_channel: bool = True, group_size: int | None = None) -> np.ndarray:
    """The scales round-to-nearest uses for w (N, K) float32 (pruned entries already 0), in
    the packer's field shape: int8 (N,) per channel or (1,) per tensor; int4 (N, ceil(K/g))."""
    levels, _ = BITS[bits]
    a = np.abs(np.asarray(w, np.float32))
    n, k = a.shape
    if bits == 4:
        g = int(group_size)
        groups = -(-k // g)
        pad = np.zeros((n, groups * g), np.float32)
        pad[:, :k] = a
        return _scale32(pad.reshape(n, groups, g).max(axis=2), levels).astype(np.float32)
    amax = a.max(axis=1) if per_channel else np.array([a.max()], np.float32)
    return _scale32(amax, levels).astype(np.float32)


def search_int4_grid(w: np.ndarray, weight: np.ndarray, group_size: int, *,
                     symmetric: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The int4 grid for w (N, K): per (row, group) the candidate of SHRINK with the least
    sum_k weight[k] (w_k - q_k)^2, ``weight`` (K,) >= 0 being the input energy H[k, k].
    Candidate r: symmetric, scale r * max|group| / 7; asymmetric, the range [r * min, r * max]
    (min <= 0 <= max, as the packer's) in 15 steps, zero point rint(-r * min / scale). Round to
    nearest's own grid (r = 1) is a candidate, so the weighted error is never above its error.
    Returns (scale (N, ceil(K/g)) float32, zero point of that shape uint8 or None when
    symmetric); all-zero groups get scale 1 (and zero point 0), as the packer."""
    a = np.asarray(w, np.float32)
    n, k = a.shape
    g = int(group_size)
    groups = -(-k // g)
    wp = np.zeros((n, groups * g), np.float64)
    wp[:, :k] = a
    wp = wp.reshape(n, groups, g)
    d = np.zeros(groups * g, np.float64)
    d[:k] = np.maximum(np.asarray(weight, np.float64), 0.0)
    d = d.reshape(1, groups, g)
    lo, hi = np.minimum(wp.min(axis=2), 0.0), np.maximum(wp.max(axis=2), 0.0)
    span = np.maximum(-lo, hi) / 7 if symmetric else (hi - lo) / 15
    qrange = INT4_SYMMETRIC if symmetric else INT4_ASYMMETRIC
    best_s, best_z, best_e = None, None, np.full(span.shape, np.inf)
    for r in SHRINK:
        # the float32 scale the packer will store (never below the smallest normal float32)
        s = np.maximum((span * r).astype(np.float32), np.finfo(np.float32).tiny).astype(np.float64)
        z = np.zeros_like(s) if symmetric else np.clip(np.rint(-lo * r / s), *qrange)
        e = (d * (wp - _round(wp, s[..., None], qrange, z[..., None])) ** 2).sum(axis=2)
        if best_s is None:
            best_s, best_z = s, z
        better = e < best_e
        best_s, best_z, best_e = np.where(better, s, best_s), np.where(better, z, best_z), np.where(better, e, best_e)
    zero = span == 0
    scale = np.where(zero, 1.0, best_s).astype(np.float32)
    return scale, None if symmetric else np.where(zero, 0, best_z).astype(np.uint8)


def _column_scales(scale: np.ndarray, bits: int, n: int, k: int, group_size: int | None) -> np.ndarray:
    """(N, K) float64: the scale (or zero point) every weight position quantizes with."""
    s = np.asarray(scale, np.float64)
    if bits == 4:
        return np.repeat(s, int(group_size), axis=1)[:, :k]
    return np.broadcast_to(s.reshape(-1, 1), (n, k))


def _round(col: np.ndarray, s: np.ndarray, qrange: tuple[int, int], zp=0.0) -> np.ndarray:
    """The packer's rounding (layouts._quant_symmetric / _quant_asymmetric), in float64:
    (clip(rint(w / s) + zp) - zp) * s; zp = 0 on a symmetric grid."""
    return (np.clip(np.rint(col / s) + zp, *qrange) - zp) * s


def rtn_quantize(w: np.ndarray, bits: int, *, per_channel: bool = True, group_size: int | None = None,
                 mask: np.ndarray | None = None, symmetric: bool = True) -> np.ndarray:
    """Round-to-nearest on the RTN grid: the dequantized weight (N, K) float32 the packer
    stores for w without GPTQ (the baseline GPTQ is compared with)."""
    a = np.asarray(w, np.float32)
    if mask is not None:
        a = np.where(mask, a, np.float32(0))
    if not symmetric:
        if bits != 4:
            raise ValueError("asymmetric round to nearest here is int4 only")
        return pack_int4_grouped("w", a, group_size=int(group_size), symmetric=False).to_dense()
    n, k = a.shape
    scale = rtn_scales(a, bits, per_channel=per_channel, group_size=group_size)
    cs = _column_scales(scale, bits, n, k, group_size)
    return _round(a.astype(np.float64), cs, BITS[bits][1]).astype(np.float32)


def gptq_quantize(w: np.ndarray, g: np.ndarray, bits: int, *, per_channel: bool = True,
                  group_size: int | None = None, mask: np.ndarray | None = None,
                  act_order: bool = True, symmetric: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """GPTQ (module docstring). Returns (the dequantized weight (N, K) float32, exactly
    (q - zero point) * scale with q on the grid and 0 where ``mask`` prunes; the scales in the
    packer's field shape, see rtn_scales; the zero points (int4 asymmetric, uint8 like the
    scales) or None)."""
    if bits not in BITS:
        raise ValueError(f"GPTQ quantizes to 8 or 4 bits, got {bits!r}")
    if not symmetric and bits != 4:
        raise ValueError("asymmetric GPTQ is int4 only (int8 GPTQ grids are symmetric)")
    a = np.asarray(w, np.float32)
    if a.ndim != 2:
        raise ValueError(f"GPTQ takes a Linear weight (N, K), got shape {a.shape}")
    n, k = a.shape
    if np.shape(g) != (k, k):
        raise ValueError(f"input statistics are {np.shape(g)}, expected ({k}, {k}) for a weight {a.shape}")
    if bits == 4 and not (isinstance(group_size, int) and group_size > 0):
        raise ValueError(f"int4 GPTQ needs a positive group size, got {group_size!r}")
    if mask is not None and np.shape(mask) != a.shape:
        raise ValueError(f"mask {np.shape(mask)} does not match the weight {a.shape}")
    keep = np.ones((n, k), bool) if mask is None else np.asarray(mask, bool)
    a = np.where(keep, a, np.float32(0))
    g = np.asarray(g, np.float64)
    zero = None
    if bits == 4:
        scale, zero = search_int4_grid(a, np.diagonal(g), group_size, symmetric=symmetric)
    else:
        scale = rtn_scales(a, bits, per_channel=per_channel, group_size=group_size)
    cs = _column_scales(scale, bits, n, k, group_size)
    cz = np.zeros((n, k)) if zero is None else _column_scales(zero, bits, n, k, group_size)
    qrange = BITS[bits][1] if symmetric else INT4_ASYMMETRIC

    order = np.argsort(-np.diagonal(g), kind="stable") if act_order else np.arange(k)
    gp = g[np.ix_(order, order)]
    dead = np.diagonal(gp) == 0                 # inputs that were always 0: no coupling, plain RTN
    u = _inverse_cholesky(gp, dead)
    wt = a.astype(np.float64)[:, order]
    keep_p, cs_p = keep[:, order], np.ascontiguousarray(cs[:, order])
    cz_p = np.ascontiguousarray(cz[:, order])
    for c0 in range(0, k, BLOCK):
        c1 = min(k, c0 + BLOCK)
        w1 = wt[:, c0:c1].copy()
        err = np.zeros_like(w1)
        u1 = u[c0:c1, c0:c1]
        for j in range(c1 - c0):
            col = w1[:, j]
            q = np.where(keep_p[:, c0 + j], _round(col, cs_p[:, c0 + j], qrange, cz_p[:, c0 + j]), 0.0)
            e = (col - q) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            w1[:, j] = q                         # exactly on the grid (or 0)
            err[:, j] = e
        wt[:, c0:c1] = w1
        wt[:, c1:] -= err @ u[c0:c1, c1:]
    out = np.empty_like(wt)
    out[:, order] = wt
    return out.astype(np.float32), scale, zero
