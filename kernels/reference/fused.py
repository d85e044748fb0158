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
    b, sq, sk, h, d, dv = attention_heads(q, k, v, mask, head_dim)
    f = np.float64
    qh = np.asarray(q, f).reshape(b, sq, h, d).transpose(0, 2, 1, 3)      # (B, H, Sq, D)
    kh = np.asarray(k, f).reshape(b, sk, h, d).transpose(0, 2, 3, 1)      # (B, H, D, Sk)
    vh = np.asarray(v, f).reshape(b, sk, h, dv).transpose(0, 2, 1, 3)     # (B, H, Sk, Dv)
    s = (qh @ kh) * f(scale)
    if mask is not None:
        s = s + np.asarray(mask, f)
    if s.size:
        with np.errstate(invalid="ignore"):     # -inf - -inf, inf - inf: NaN rows, as in ONNX's Softmax
            s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        if nan_to_zero:
            s[np.isnan(s)] = 0.0
    y = (s @ vh).transpose(0, 2, 1, 3).reshape(b, sq, h * dv)
    return y.astype(q.dtype)


@reference_kernel("SkipLayerNormalization")
def skip_layer_normalization_ref(x, skip, scale, bias=None, epsilon=1e-5):
    """LayerNormalization over the last axis of x + skip (numpy broadcasting), the sum rounded
    to x's dtype first, exactly as the Add node it replaces; x float T (..., D), scale and
    bias (D,); output T, the shape of x + skip."""
    return layer_normalization_ref(np.add(x, skip, dtype=x.dtype), scale, bias, axis=-1, epsilon=epsilon)
