"""Fused ops the session's fusion pass (runtime/fuse.py) puts in place of op patterns:
Attention and SkipLayerNormalization. (Linear/Conv's epilogue ``activation`` is not here: it
is the activation op's reference applied after the GEMM, kernels/registry.build.)

Each is defined to compute what the pattern it replaces computes, up to rounding: the
reference of a fused op is the same math in float64, rounded once, while the unfused graph
rounds to float32 after every node, so the two differ by a few float32 ulps.
"""
from __future__ import annotations

import numpy as np

from ._common import reference_kernel
from .reduction import layer_normalization_ref


def _check_attention(attrs):
    if not isinstance(attrs["head_dim"], int) or attrs["head_dim"] < 1:
        raise ValueError(f"Attention: head_dim must be a positive int, got {attrs['head_dim']!r}")
    if attrs.get("nan_to_zero", 0) not in (0, 1):
        raise ValueError(f"Attention: nan_to_zero must be 0 or 1, got {attrs['nan_to_zero']!r}")


def attention_heads(q, k, v, mask, head_dim: int):
    """Shapes of an Attention call, checked: (B, Sq, Sk, H, D, Dv) for q (B, Sq, H*D),
    k (B, Sk, H*D), v (B, Sk, H*Dv), mask None or broadcastable to (B, H, Sq, Sk)."""
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"Attention: q, k, v must be (B, S, H*D), got {q.shape}, {k.shape}, {v.shape}")
    b, sq, qd = q.shape
    sk = k.shape[1]
    if qd % head_dim or k.shape != (b, sk, qd) or v.shape[:2] != (b, sk) or v.shape[2] % (qd // head_dim or 1):
        raise ValueError(f"Attention: q {q.shape}, k {k.shape}, v {v.shape} do not match with head_dim "
                         f"{head_dim} (need q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv))")
    h = qd // head_dim
    if mask is not None:
        try:
            ok = np.broadcast_shapes(np.shape(mask), (b, h, sq, sk)) == (b, h, sq, sk)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"Attention: mask {np.shape(mask)} does not broadcast to (B, H, Sq, Sk) = "
                             f"{(b, h, sq, sk)}")
    return b, sq, sk, h, head_dim, (v.shape[2] // h if h else 0)


@reference_kernel("Attention", required=("head_dim", "scale"), check=_check_attention)
def attention_ref(q, k, v, mask=None, head_dim=None, scale=None, nan_to_zero=0):
    """Multi-head scaled dot-product attention, heads side by side in the last axis.

    q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv) float T; mask None or float, added to the
    scores, broadcastable to (B, H, Sq, Sk) (a very negative value masks a position; a row
    masked everywhere gets equal weights, as the unfused graph gives); y (B, Sq, H*Dv) of T:
    y[b, i, h*Dv:(h+1)*Dv] = softmax_j(scale * q_bih . k_bjh + mask[b, h, i, j]) @ v_bh.
    In float64, rounded once to T. nan_to_zero: NaN probabilities count as 0, as the sdpa
    export's IsNaN + Where (a row whose scores are all -inf, or hold a NaN or +inf, has an
    all-NaN softmax, so its output is 0).
    """
    qh, kh, vh = _heads64(q, k, v, mask, head_dim)
    return _attend(qh @ kh.transpose(0, 1, 3, 2), scale, mask, vh, nan_to_zero).astype(q.dtype)


def _heads64(q, k, v, mask, head_dim: int):
    """q, k, v checked (attention_heads) and split into float64 heads (B, H, Sq, D), (B, H, Sk, D),
    (B, H, Sk, Dv)."""
    b, sq, sk, h, d, dv = attention_heads(q, k, v, mask, head_dim)
    f = np.float64
    return (np.asarray(q, f).reshape(b, sq, h, d).transpose(0, 2, 1, 3),
            np.asarray(k, f).reshape(b, sk, h, d).transpose(0, 2, 1, 3),
            np.asarray(v, f).reshape(b, sk, h, dv).transpose(0, 2, 1, 3))


def _attend(s, scale: float, mask, vh, nan_to_zero: int = 0):
    """softmax(scale * s + mask) vh per head, heads merged: s (B, H, Sq, Sk) float64 scores,
    vh (B, H, Sk, Dv); y (B, Sq, H*Dv) float64."""
    s = s * np.float64(scale)
    if mask is not None:
        s = s + np.asarray(mask, np.float64)
    if s.size:
        with np.errstate(invalid="ignore"):     # -inf - -inf, inf - inf: NaN rows, as in ONNX's Softmax
            s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        if nan_to_zero:
            s[np.isnan(s)] = 0.0
    b, h, sq, _ = s.shape
    return (s @ vh).transpose(0, 2, 1, 3).reshape(b, sq, h * vh.shape[3])


def relative_index(idx, rows: int, cols: int, positions: int, name: str) -> np.ndarray:
    """A disentangled-attention index as (rows, cols) int64, checked: shape (leading axes of
    size 1 allowed), integer dtype, values in [0, positions)."""
    a = np.asarray(idx)
    if a.dtype.kind not in "iu":
        raise TypeError(f"DisentangledAttention: {name} must be an integer tensor, got {a.dtype}")
    if a.ndim < 2 or a.shape[-2:] != (rows, cols) or any(n != 1 for n in a.shape[:-2]):
        raise ValueError(f"DisentangledAttention: {name} has shape {a.shape}, expected ({rows}, {cols}) "
                         f"(leading axes of size 1 allowed)")
    a = a.reshape(rows, cols).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= positions):
        raise ValueError(f"DisentangledAttention: {name} holds values in [{a.min()}, {a.max()}], outside "
                         f"[0, {positions}) (the rows of its position table)")
    return a


def relative_table(table, h: int, d: int, name: str) -> np.ndarray:
    t = np.asarray(table)
    if t.ndim != 3 or t.shape[0] != h or t.shape[2] != d or t.shape[1] < 1:
        raise ValueError(f"DisentangledAttention: {name} has shape {t.shape}, expected (H, P, D) = ({h}, P >= 1, {d})")
    return t


@reference_kernel("DisentangledAttention", required=("head_dim", "scale"), check=_check_attention)
def disentangled_attention_ref(q, k, v, mask=None, pos_key=None, c2p_index=None, pos_query=None, p2c_index=None,
                               head_dim=None, scale=None):
    """DeBERTa's disentangled attention: attention_ref's softmax(scale * S + mask) V with
    relative-position terms in S (content-to-position and position-to-content):

        S[b, h, i, j] = q_bih . k_bjh + q_bih . pos_key[h, c2p_index[i, j]]
                        + k_bjh . pos_query[h, p2c_index[j, i]]

    q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv) float T; mask None or broadcastable to
    (B, H, Sq, Sk); pos_key / pos_query (H, P, D) float; c2p_index (Sq, Sk), p2c_index (Sk, Sq)
    integer in [0, P) (leading axes of size 1 allowed); a table and its index are given or
    absent together. In float64, rounded once to T. (DeBERTa's export scales each of the
    three terms by 1/sqrt(3 D) separately and masks with a Where; one scale and an additive
    mask of float32's lowest value give the same up to rounding.)
    """
    if (pos_key is None) != (c2p_index is None) or (pos_query is None) != (p2c_index is None):
        raise ValueError("DisentangledAttention: pos_key / c2p_index and pos_query / p2c_index come in pairs")
    qh, kh, vh = _heads64(q, k, v, mask, head_dim)
    b, h, sq, d = qh.shape
    sk = kh.shape[2]
    f = np.float64
    s = qh @ kh.transpose(0, 1, 3, 2)
    if pos_key is not None:
        pk = np.asarray(relative_table(pos_key, h, d, "pos_key"), f)
        c2p = relative_index(c2p_index, sq, sk, pk.shape[1], "c2p_index")
        full = qh @ pk.transpose(0, 2, 1)[None]                            # (B, H, Sq, P)
        s = s + np.take_along_axis(full, np.broadcast_to(c2p, (b, h, sq, sk)), axis=-1)
    if pos_query is not None:
        pq = np.asarray(relative_table(pos_query, h, d, "pos_query"), f)
        p2c = relative_index(p2c_index, sk, sq, pq.shape[1], "p2c_index")
        full = kh @ pq.transpose(0, 2, 1)[None]                            # (B, H, Sk, P)
        s = s + np.take_along_axis(full, np.broadcast_to(p2c, (b, h, sk, sq)), axis=-1).transpose(0, 1, 3, 2)
    return _attend(s, scale, mask, vh).astype(q.dtype)


@reference_kernel("SkipLayerNormalization")
def skip_layer_normalization_ref(x, skip, scale, bias=None, epsilon=1e-5):
    """LayerNormalization over the last axis of x + skip (numpy broadcasting), the sum rounded
    to x's dtype first, exactly as the Add node it replaces; x float T (..., D), scale and
    bias (D,); output T, the shape of x + skip."""
    return layer_normalization_ref(np.add(x, skip, dtype=x.dtype), scale, bias, axis=-1, epsilon=epsilon)
