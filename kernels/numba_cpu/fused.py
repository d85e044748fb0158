"""The fused ops of runtime/fuse.py on the numba backend: Attention, SkipLayerNormalization.

Float32 in and out (other dtypes run the reference), tested against kernels/reference/fused.py.

Attention: one work item per (batch, head), run on numba's pool. An item copies its K head
transposed to a (D, Sk) scratch (so the score loop reads it along rows), then, one query row at
a time: scores s (Sk,) = (scale * q_i) K^T accumulated in float32 over D (the j loop is the
vectorised one) on top of the mask row, softmax in float64 through ops._exp64 (as
ops.Softmax) stored transposed, then y_h = P V accumulated in float32 over Sk. One head's
(Sq, Sk) probabilities exist at a time per thread, never all heads' scores. Rounding differs from the unfused graph
(which rounds to float32 after each MatMul, Mul and Add): the scale multiplies q before the dot
product; the error bound is in tests/test_fusion.py (ATTENTION_RTOL).

SkipLayerNormalization: ops._layer_norm_rows' numerics on x + skip, the sum rounded to float32
first, so the result is bit for bit numba's Add then LayerNormalization.

Work is split in fixed items (a head; a block of rows), each done by one thread start to end:
results do not depend on the thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.reference._common import prod
from kernels.reference.fused import attention_heads
from kernels.registry import register

from .ops import _ROWS, F32, _exp64, _is_f32, _reference

# Attention runs serially below this many multiply-adds (B * H * Sq * Sk * (D + Dv)): waking
# the pool costs more than a small problem (seq 16 in a MiniLM layer is ~0.2 M).
ATTENTION_PARALLEL_MIN_MACS = 1 << 19
# rows per SkipLayerNormalization work item, and the fewest elements worth two threads
SKIP_LN_ROWS_PER_ITEM = 16
SKIP_LN_PARALLEL_MIN_ELEMENTS = 1 << 15


@njit(**_ROWS)
def _attention_head(q, k, v, mask, scale, hd, item, out):
    """One (b, h) item of Attention: q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv), mask
    (Bm, Hm, Sqm, Skm) float32 with each of Bm, Hm, Sqm in {1, the full size}, Skm in {1, Sk}
    (a (1, 1, 1, 1) zero array when there is none); writes out[b, :, h*Dv:(h+1)*Dv].

    Every inner loop runs along Sk or Sq (long, contiguous), not along D (32 or 64 in BERTs):
    scores of row i are s (Sk,) += q[i, d] * kt[d, :]; the probabilities are stored
    transposed, pt (Sk, Sq), so that y_h^T (Dv, Sq) += v[j, d] * pt[j, :] also runs along Sq."""
    sq, sk = q.shape[1], k.shape[1]
    heads = q.shape[2] // hd
    dv = v.shape[2] // heads
    b = item // heads
    h = item - b * heads
    kt = np.empty((hd, sk), np.float32)
    for j in range(sk):
        for d in range(hd):
            kt[d, j] = k[b, j, h * hd + d]
    s = np.empty(sk, np.float32)
    e = np.empty(sk, np.float64)
    pt = np.empty((sk, sq), np.float32)
    mb = b if mask.shape[0] > 1 else 0
    mh = h if mask.shape[1] > 1 else 0
    sk8 = sk - sk % 8
    sk4 = sk - sk % 4
    hd4 = hd - hd % 4
    for i in range(sq):
        mrow = mask[mb, mh, i if mask.shape[2] > 1 else 0]
        if mask.shape[3] > 1:
            for j in range(sk):
                s[j] = mrow[j]
        else:
            for j in range(sk):
                s[j] = mrow[0]
        # four d at a time: one load and store of s per four multiply-adds (the loop is
        # bound by L1 traffic, not by the FMA units: 2.3x faster than one d at a time)
        qrow = q[b, i, h * hd:(h + 1) * hd]
        for d in range(0, hd4, 4):
            q0 = np.float32(scale * qrow[d])
            q1 = np.float32(scale * qrow[d + 1])
            q2 = np.float32(scale * qrow[d + 2])
            q3 = np.float32(scale * qrow[d + 3])
            k0, k1, k2, k3 = kt[d], kt[d + 1], kt[d + 2], kt[d + 3]
            for j in range(sk):
                s[j] += (q0 * k0[j] + q1 * k1[j]) + (q2 * k2[j] + q3 * k3[j])
        for d in range(hd4, hd):
            qd = np.float32(scale * qrow[d])
            kd = kt[d]
            for j in range(sk):
                s[j] += qd * kd[j]
        # row maximum with 8 running maxima (ops._softmax_rows: a max reduction with NaN
        # semantics does not vectorise); a NaN makes the sum, so the row, NaN
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
        for j in range(0, sk8, 8):
            m0 = max(m0, s[j])
            m1 = max(m1, s[j + 1])
            m2 = max(m2, s[j + 2])
            m3 = max(m3, s[j + 3])
            m4 = max(m4, s[j + 4])
            m5 = max(m5, s[j + 5])
            m6 = max(m6, s[j + 6])
            m7 = max(m7, s[j + 7])
        m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
        for j in range(sk8, sk):
            m = max(m, s[j])
        m64 = np.float64(m)
        total = 0.0
        for j in range(sk):
            e[j] = _exp64(np.float64(s[j]) - m64)
            total += e[j]
        inv = 1.0 / total
        for j in range(sk):
            pt[j, i] = e[j] * inv
    yt = np.zeros((dv, sq), np.float32)
    vh = v[b, :, h * dv:(h + 1) * dv]
    for d in range(dv):
        yd = yt[d]
        for j in range(0, sk4, 4):       # four j at a time, as above
            v0, v1, v2, v3 = vh[j, d], vh[j + 1, d], vh[j + 2, d], vh[j + 3, d]
            p0, p1, p2, p3 = pt[j], pt[j + 1], pt[j + 2], pt[j + 3]
            for i in range(sq):
                yd[i] += (v0 * p0[i] + v1 * p1[i]) + (v2 * p2[i] + v3 * p3[i])
        for j in range(sk4, sk):
            vd = vh[j, d]
            pj = pt[j]
            for i in range(sq):
                yd[i] += vd * pj[i]
    for i in range(sq):
        for d in range(dv):
            out[b, i, h * dv + d] = yt[d, i]


@njit(parallel=True, **_ROWS)
def _attention_parallel(q, k, v, mask, scale, hd, out):
    heads = q.shape[2] // hd
    for item in prange(q.shape[0] * heads):
        _attention_head(q, k, v, mask, scale, hd, item, out)


@njit(**_ROWS)
def _attention_serial(q, k, v, mask, scale, hd, out):
    heads = q.shape[2] // hd
    for item in range(q.shape[0] * heads):
        _attention_head(q, k, v, mask, scale, hd, item, out)


_NO_MASK = np.zeros((1, 1, 1, 1), F32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
              head_dim: int, scale: float) -> np.ndarray:
    """Y (B, Sq, H*Dv) float32 for float32 q, k, v (and mask): see the module docstring."""
    b, sq, sk, h, d, dv = attention_heads(q, k, v, mask, head_dim)
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    if mask is None:
        m4 = _NO_MASK
    else:
        m4 = np.ascontiguousarray(np.asarray(mask, F32).reshape((1,) * (4 - np.ndim(mask)) + np.shape(mask)))
    out = np.empty((b, sq, h * dv), F32)
    if out.size == 0:
        return out
    if sk == 0:
        out[:] = np.nan          # softmax over no positions: 0 / 0, as the reference
        return out
    if b * h * sq * sk * (d + dv) >= ATTENTION_PARALLEL_MIN_MACS:
        _attention_parallel(q, k, v, m4, float(scale), d, out)
    else:
        _attention_serial(q, k, v, m4, float(scale), d, out)
    return out


@register("Attention", "numba")
def attention_factory(attrs: dict, weights: dict):
    """Attention on float32 q, k, v, mask; other dtypes run the reference."""
    ref = _reference("Attention", attrs, weights)     # checks head_dim and scale
    head_dim, scale = int(attrs["head_dim"]), float(attrs["scale"])

    def run(q, k, v, mask=None):
        if not _is_f32(q, k, v, mask):
            return ref(q, k, v, mask)
        return (attention(q, k, v, mask, head_dim, scale),)
    return run


# --- SkipLayerNormalization --------------------------------------------------------------------

@njit(**_ROWS)
def _skip_layer_norm_rows(x, skip, scale, bias, eps, out, lo, hi):
    """Rows lo..hi-1 of x, skip, out (R, D) float32; scale, bias (D,) float32."""
    d = x.shape[1]
    row = np.empty(d, np.float32)
    for i in range(lo, hi):
        s = 0.0
        q = 0.0
        for j in range(d):
            v = x[i, j] + skip[i, j]                 # float32 sum, as the Add node
            row[j] = v
            v64 = np.float64(v)
            s += v64
            q += v64 * v64
        mean = s / d
        var = max(q / d - mean * mean, 0.0)
        rstd = 1.0 / np.sqrt(var + eps)
        for j in range(d):
            out[i, j] = (np.float64(row[j]) - mean) * rstd * np.float64(scale[j]) + np.float64(bias[j])


@njit(parallel=True, **_ROWS)
def _skip_layer_norm_parallel(x, skip, scale, bias, eps, out):
    r = x.shape[0]
    for item in prange((r + SKIP_LN_ROWS_PER_ITEM - 1) // SKIP_LN_ROWS_PER_ITEM):
        lo = item * SKIP_LN_ROWS_PER_ITEM
        _skip_layer_norm_rows(x, skip, scale, bias, eps, out, lo, min(r, lo + SKIP_LN_ROWS_PER_ITEM))


@njit(**_ROWS)
def _skip_layer_norm_serial(x, skip, scale, bias, eps, out):
    _skip_layer_norm_rows(x, skip, scale, bias, eps, out, 0, x.shape[0])


@register("SkipLayerNormalization", "numba")
def skip_layer_normalization_factory(attrs: dict, weights: dict):
    """LayerNorm(x + skip) over the last axis for float32 x, skip of one shape and (D,) scale
    and bias; anything else (broadcasting, other dtypes) runs the reference."""
    ref = _reference("SkipLayerNormalization", attrs, weights)
    eps = float(attrs["epsilon"])

    def run(x, skip, scale, bias=None):
        d = x.shape[-1] if x.ndim else 0
        if (not _is_f32(x, skip, scale, bias) or x.shape != skip.shape or x.ndim == 0 or d == 0
                or scale.shape != (d,) or (bias is not None and bias.shape != (d,))):
            return ref(x, skip, scale, bias)
        r = prod(x.shape[:-1])
        x2 = np.ascontiguousarray(x).reshape(r, d)
        s2 = np.ascontiguousarray(skip).reshape(r, d)
        b = np.zeros(d, F32) if bias is None else np.ascontiguousarray(bias)
        out = np.empty((r, d), F32)
        if x2.size >= SKIP_LN_PARALLEL_MIN_ELEMENTS:
            _skip_layer_norm_parallel(x2, s2, np.ascontiguousarray(scale), b, eps, out)
        elif r:
            _skip_layer_norm_serial(x2, s2, np.ascontiguousarray(scale), b, eps, out)
        return (out.reshape(x.shape),)
    return run
