"""The fused ops of runtime/fuse.py on the numba backend: Attention, SkipLayerNormalization.

Float32 in and out (other dtypes run the reference), tested against kernels/reference/fused.py.

Attention: one work item per (batch, head), run on numba's pool; the head is computed
transposed (_attention_head) so the softmax vectorises along the query axis, and both products
are register-blocked float32 GEMMs (f32_tile.py): scores in float32 (q scaled first), exp in
float32 (_exp32, ~1 ulp) summed in float32, y = P V accumulated in float32. One head's (Sk, Sq) scores
exist at a time per thread, never all heads'. Rounding differs from the unfused graph
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
from kernels.fused_dispatch import attention_factory, skip_layer_normalization_factory
from kernels.registry import register
from kernels.reshape_views import reshape_views_factory
from kernels.split_views import split_views_factory

from .f32_tile import gemm_acc
from .ops import _ROWS, F32, _exp32, blas_recently_called

# Attention runs serially below this many multiply-adds (B * H * Sq * Sk * (D + Dv)): waking
# the pool costs more than a small problem (seq 16 in a MiniLM layer is ~0.2 M).
ATTENTION_PARALLEL_MIN_MACS = 1 << 19
# rows per SkipLayerNormalization work item, and the fewest elements worth two threads
SKIP_LN_ROWS_PER_ITEM = 16
SKIP_LN_PARALLEL_MIN_ELEMENTS = 1 << 15


@njit(**_ROWS)
def _attention_head(q, k, v, mask_t, scale, hd, nan_to_zero, item, out):
    """One (b, h) item of Attention: q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv) (any
    strides), mask_t (Bm, Hm, Skm, Sqm) float32, the mask *transposed*, C-contiguous, with each
    of Bm, Hm in {1, the full size}, Skm in {1, Sk}, Sqm in {1, Sq} (a (1, 1, 1, 1) zero array
    when there is none); writes out[b, :, h*Dv:(h+1)*Dv]. nan_to_zero: a query row whose
    softmax sum is NaN (all of its probabilities NaN) writes zeros (the sdpa export's
    IsNaN + Where).

    The head is computed transposed, so that the softmax over j runs down columns, for all
    query rows i at once (vectorised along Sq), and both products are register-blocked
    f32_tile GEMMs on zero-padded scratch copies:
        st (Sk4, Sq16)  = mask^T + Kh (Sk4, D) @ (scale Qh)^T (D, Sq16)
        st[:Sk]         = softmax over j (columns)
        yt (Dv4, Sq16)  = Vh^T (Dv4, Sk) @ st[:Sk]
    with Sq16, Sk4, Dv4 the sizes rounded up to the tile's 16 columns / 4 rows."""
    sq, sk = q.shape[1], k.shape[1]
    heads = q.shape[2] // hd
    dv = v.shape[2] // heads
    b = item // heads
    h = item - b * heads
    sq16 = (sq + 15) // 16 * 16
    sk4 = (sk + 3) // 4 * 4
    dv4 = (dv + 3) // 4 * 4
    kh = np.zeros((sk4, hd), np.float32)
    for j in range(sk):
        for d in range(hd):
            kh[j, d] = k[b, j, h * hd + d]
    qt = np.zeros((hd, sq16), np.float32)
    for i in range(sq):
        for d in range(hd):
            qt[d, i] = np.float32(scale * q[b, i, h * hd + d])
    st = np.zeros((sk4, sq16), np.float32)
    mb = b if mask_t.shape[0] > 1 else 0
    mh = h if mask_t.shape[1] > 1 else 0
    for j in range(sk):
        row = st[j]
        jm = j if mask_t.shape[2] > 1 else 0
        if mask_t.shape[3] > 1:
            mrow = mask_t[mb, mh, jm]
            for i in range(sq):
                row[i] = mrow[i]
        else:
            mv = mask_t[mb, mh, jm, 0]
            for i in range(sq):
                row[i] = mv
    gemm_acc(kh, hd, qt, sq16, hd, st, sq16, sk4, sq16)
    # softmax down each column i; a NaN score is skipped by the maximum but makes its
    # column's sum, so the whole output row, NaN, as in the reference
    m = np.full(sq16, -np.inf, np.float32)
    for j in range(sk):
        row = st[j]
        for i in range(sq16):
            m[i] = row[i] if row[i] > m[i] else m[i]
    total = np.zeros(sq16, np.float32)
    for j in range(sk):
        row = st[j]
        for i in range(sq16):
            e = _exp32(row[i] - m[i])
            row[i] = e
            total[i] += e
    inv = np.empty(sq16, np.float32)
    for i in range(sq16):
        inv[i] = np.float32(1.0) / total[i]
    for j in range(sk):
        row = st[j]
        for i in range(sq16):
            row[i] *= inv[i]
    vt = np.zeros((dv4, sk), np.float32)
    for j in range(sk):
        for d in range(dv):
            vt[d, j] = v[b, j, h * dv + d]
    yt = np.zeros((dv4, sq16), np.float32)
    gemm_acc(vt, sk, st, sq16, sk, yt, sq16, dv4, sq16)
    for i in range(sq):
        zero = nan_to_zero and total[i] != total[i]
        for d in range(dv):
            out[b, i, h * dv + d] = np.float32(0.0) if zero else yt[d, i]


@njit(parallel=True, **_ROWS)
def _attention_parallel(q, k, v, mask, scale, hd, nan_to_zero, out):
    heads = q.shape[2] // hd
    for item in prange(q.shape[0] * heads):
        _attention_head(q, k, v, mask, scale, hd, nan_to_zero, item, out)


@njit(**_ROWS)
def _attention_serial(q, k, v, mask, scale, hd, nan_to_zero, out):
    heads = q.shape[2] // hd
    for item in range(q.shape[0] * heads):
        _attention_head(q, k, v, mask, scale, hd, nan_to_zero, item, out)


_NO_MASK = np.zeros((1, 1, 1, 1), F32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
              head_dim: int, scale: float, nan_to_zero: bool = False) -> np.ndarray:
    """Y (B, Sq, H*Dv) float32 for float32 q, k, v (and mask): see the module docstring."""
    b, sq, sk, h, d, dv = attention_heads(q, k, v, mask, head_dim)
    # q, k, v may be strided views (the Split of a merged QKV Linear): the kernel reads them
    # element by element into its transposed scratch, so no contiguous copy is made
    if mask is None:
        m4 = _NO_MASK
    else:
        # transposed once per call (not per head): the kernel then reads a mask row along Sq
        m4 = np.asarray(mask, F32).reshape((1,) * (4 - np.ndim(mask)) + np.shape(mask))
        m4 = np.ascontiguousarray(m4.transpose(0, 1, 3, 2))
    out = np.empty((b, sq, h * dv), F32)
    if out.size == 0:
        return out
    if sk == 0:
        out[:] = 0               # no keys: the weighted sum over no values is empty, as the reference's
        return out
    if b * h * sq * sk * (d + dv) >= ATTENTION_PARALLEL_MIN_MACS and not blas_recently_called():
        _attention_parallel(q, k, v, m4, float(scale), d, bool(nan_to_zero), out)
    else:
        _attention_serial(q, k, v, m4, float(scale), d, bool(nan_to_zero), out)
    return out


register("Attention", "numba")(attention_factory(attention))


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


def skip_layer_norm(x: np.ndarray, skip: np.ndarray, scale: np.ndarray, bias: np.ndarray | None,
                    eps: float) -> np.ndarray:
    """LayerNorm(x + skip) over the last axis: float32 x, skip (..., D) of one shape, D >= 1,
    scale and bias (D,) (kernels/fused_dispatch.py checks all that before calling)."""
    d = x.shape[-1]
    r = prod(x.shape[:-1])
    x2 = np.ascontiguousarray(x).reshape(r, d)
    s2 = np.ascontiguousarray(skip).reshape(r, d)
    b = np.zeros(d, F32) if bias is None else np.ascontiguousarray(bias)
    out = np.empty((r, d), F32)
    if x2.size >= SKIP_LN_PARALLEL_MIN_ELEMENTS and not blas_recently_called():
        _skip_layer_norm_parallel(x2, s2, np.ascontiguousarray(scale), b, eps, out)
    elif r:
        _skip_layer_norm_serial(x2, s2, np.ascontiguousarray(scale), b, eps, out)
    return out.reshape(x.shape)


register("SkipLayerNormalization", "numba")(skip_layer_normalization_factory(skip_layer_norm))


# --- Split along the last axis: views ------------------------------------------------------------

register("Split", "numba")(split_views_factory)      # views, kernels/split_views.py
register("Reshape", "numba")(reshape_views_factory)      # views, kernels/reshape_views.py
