"""Activation quantization shared by the numba int8 kernels (dense and sparse).

Numerics are docs/CONVERTER.md's, computed exactly as kernels/reference/packed.py does (in
float64), so a numba kernel's integer accumulators equal the reference's bit for bit:

* dynamic, per GEMM row: s[m] = max|x_m| / 127 (1.0 for an all-zero row),
  q = clip(rint(x / s), -127, 127);
* static, per tensor: q = clip(rint(x / s) + z, -128, 127).

np.rint rounds half to even, as numpy does.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def quantize_rows_dynamic(x, q, scale):
    """x (M, K) float32 -> q (M, K) int8 in [-127, 127], scale (M,) float64. Writes q, scale."""
    m, k = x.shape
    for i in prange(m):
        amax = 0.0
        for j in range(k):
            v = abs(np.float64(x[i, j]))
            if v > amax:
                amax = v
        s = amax / 127.0 if amax > 0.0 else 1.0
        scale[i] = s
        for j in range(k):
            r = np.rint(np.float64(x[i, j]) / s)
            q[i, j] = np.int8(min(127.0, max(-127.0, r)))


@njit(cache=True, parallel=True)
def quantize_static(x, q, s, z):
    """x (M, K) float32 -> q (M, K) int8 = clip(rint(x / s) + z, -128, 127). Writes q."""
    m, k = x.shape
    for i in prange(m):
        for j in range(k):
            r = np.rint(np.float64(x[i, j]) / s) + z
            q[i, j] = np.int8(min(127.0, max(-128.0, r)))
