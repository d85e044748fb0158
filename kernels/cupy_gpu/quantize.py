"""Activation quantization on the GPU (quantize.cu): the prologue of the int8 Linear kernels.

Numerics are kernels/reference/packed.py's (``PackedPlan.quantize_rows``), computed in float64
with the same operations, so the integers and scales are the reference's bit for bit:

* dynamic: s[m] = max|x_m| / 127 (1 for an all-zero row), qx = clip(rint(x / s), -127, 127);
* static:  qx = clip(rint(x / act_scale) + act_zero_point, -128, 127);
* dequantize: float32((qx - z) * s), the product in float64.

X must be finite: NaN or Inf give unspecified integers here, where the reference propagates NaN.
"""
from __future__ import annotations

import numpy as np

from . import _common
from ._common import ELEMENTWISE_THREADS, check_float32, contiguous, empty, grid_1d, launch, row_threads


def quantize_rows(x2, act_quant: str, act_scale: float = 1.0, act_zero_point: int = 0):
    """X (M, K) float32 on the device -> (qx int8 (M, K), x_scale float64, x_scale_step):
    dynamic: x_scale (M,), step 1; static: x_scale (1,) holding act_scale, step 0 (the kernels
    read x_scale[m * step])."""
    cp = _common.cupy()
    x2 = contiguous(x2)
    check_float32("quantize", "X", x2)
    if x2.ndim != 2:
        raise ValueError(f"quantize: X must be (M, K), got shape {x2.shape}")
    m, k = x2.shape
    qx = empty((m, k), np.int8)
    if act_quant == "dynamic":
        x_scale = empty((m,), np.float64)
        if m and k:
            threads = row_threads(k)
            launch("quantize.cu", "quantize_rows_dynamic", (grid_1d(m, 1),), (threads,),
                   (x2, qx, x_scale, np.int64(m), np.int32(k)))
        elif m:
            x_scale[...] = 1.0          # an empty row is all zero: s = 1, as the reference
        return qx, x_scale, 1
    if act_quant == "static":
        n = m * k
        if n:
            launch("quantize.cu", "quantize_static", (grid_1d(n, ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
                   (x2, qx, np.int64(n), np.float64(act_scale), np.int32(act_zero_point)))
        return qx, cp.asarray(np.array([act_scale], dtype=np.float64)), 0
    raise ValueError(f"quantize: act_quant must be 'dynamic' or 'static', got {act_quant!r}")


def dequantize_rows(qx, x_scale, x_scale_step: int, zero_point: int = 0):
    """qx int8 (M, K), x_scale float64 read as x_scale[m * step] -> float32 (M, K) =
    float32((qx - zero_point) * scale), the product in float64."""
    qx = contiguous(qx)
    x_scale = contiguous(x_scale, np.float64)
    if qx.ndim != 2 or np.dtype(qx.dtype) != np.int8:
        raise ValueError(f"dequantize: qx must be int8 (M, K), got {qx.dtype} {qx.shape}")
    m, k = qx.shape
    need = 1 if x_scale_step == 0 else m
    if x_scale.ndim != 1 or x_scale.shape[0] < need:
        raise ValueError(f"dequantize: x_scale {x_scale.shape} is too short for {m} rows with step {x_scale_step}")
    y = empty((m, k), np.float32)
    if m * k:
        launch("quantize.cu", "dequantize_rows", (grid_1d(m * k, ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
               (qx, x_scale, np.int64(x_scale_step), np.int32(zero_point), y, np.int64(m), np.int32(k)))
    return y
