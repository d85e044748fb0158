"""Attention, CuPy backend: ("Attention", "dense", "cupy").

The op of kernels/reference/fused.py attention_ref: q (B, Sq, H*D), k (B, Sk, H*D),
v (B, Sk, H*Dv) float32, mask None or broadcastable to (B, H, Sq, Sk);
y (B, Sq, H*Dv)[b, i, h*Dv:(h+1)*Dv] = softmax_j(scale * q_bih . k_bjh + mask[b, h, i, j]) @ v_bh.

Composed, not fused: QK^T and PV are ``cupy.matmul`` on (B, H, ...) views (batched cuBLAS
SGEMM, float32; CuPy does not use TF32 unless CUPY_TF32=1 is set, which would make these
GEMMs 10-bit-mantissa accurate and break the tolerance below), and between them the masked
softmax kernel (softmax.cu), which applies the scale and the mask (never materialised when
broadcast: it is read through zero strides) in float64 and the exp in float32. The score
matrix (B, H, Sq, Sk) is written to and read from device memory once each: fine for the
sequence lengths of encoder models, not a flash-attention kernel.

Accuracy against the float64 reference: the float32 GEMMs' rounding (relative ~K 2^-24 per
score and per output, K = D or Sk) and the softmax's (softmax.cu): the norm of the error
relative to the norm of y below 1e-5 on the tests' shapes (tests/test_cupy_kernels.py
ATTENTION_RTOL, the bound the CPU backends are held to).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.reference.fused import attention_heads

from . import _common
from ._common import check_float32, contiguous, to_device
from .elementwise import mask_float32, masked_softmax


def attention(q, k, v, mask, head_dim: int, scale: float, nan_to_zero: bool = False):
    """q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv) float32 on the device, mask None or a
    float32 device array broadcastable to (B, H, Sq, Sk) -> y (B, Sq, H*Dv) float32;
    nan_to_zero: NaN probabilities count as 0 (the sdpa export's IsNaN + Where)."""
    cp = _common.cupy()
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_float32("Attention", name, a)
    b, sq, sk, h, d, dv = attention_heads(q, k, v, mask, head_dim)
    qh = q.reshape(b, sq, h, d).transpose(0, 2, 1, 3)            # (B, H, Sq, D)
    kt = k.reshape(b, sk, h, d).transpose(0, 2, 3, 1)            # (B, H, D, Sk)
    vh = v.reshape(b, sk, h, dv).transpose(0, 2, 1, 3)           # (B, H, Sk, Dv)
    scores = contiguous(cp.matmul(qh, kt))                        # (B, H, Sq, Sk)
    probs = masked_softmax(scores, float(scale), mask)           # (B, H, Sq, Sk)
    if nan_to_zero:
        probs = cp.where(cp.isnan(probs), cp.float32(0), probs)
    y = cp.matmul(probs, vh)                                      # (B, H, Sq, Dv)
    return contiguous(y.transpose(0, 2, 1, 3)).reshape(b, sq, h * dv)


def attention_factory(attrs: dict[str, Any], weights: dict):
    """Kernel factory of (Attention, dense, cupy): run(q, k, v, mask=None) -> (y,); a constant
    mask is uploaded once."""
    head_dim, scale = attrs.get("head_dim"), attrs.get("scale")
    if not isinstance(head_dim, (int, np.integer)) or isinstance(head_dim, bool) or head_dim < 1:
        raise ValueError(f"Attention: head_dim must be a positive int, got {head_dim!r}")
    if scale is None:
        raise ValueError("Attention: required attribute(s) scale not set")
    head_dim, scale = int(head_dim), float(scale)
    nan_to_zero = attrs.get("nan_to_zero", 0)
    if nan_to_zero not in (0, 1):
        raise ValueError(f"Attention: nan_to_zero must be 0 or 1, got {nan_to_zero!r}")
    mask_host = _common.host_constant(weights.get(3))
    mask_device = mask_float32(mask_host) if mask_host is not None else None

    def run(q, k, v, mask=None):
        if mask is not None:
            mask = mask_device if (mask is mask_host or mask is weights.get(3)) else mask_float32(mask)
        return (attention(to_device(q), to_device(k), to_device(v), mask, head_dim, scale, bool(nan_to_zero)),)
    return run
