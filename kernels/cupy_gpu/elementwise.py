"""Softmax (with an optional scale and additive mask: the attention score path) and Gelu,
CuPy backend (softmax.cu, gelu.cu). Numerics and launch geometry: the .cu files' headers.

* Softmax: one block per row, float64 score arithmetic, float32 exp, float64 row sum:
  |y - reference| <= about 8 * 2^-24 per element (softmax.cu).
* Gelu: float32, erfc form and the logistic form of the tanh approximation (no cancellation
  for negative x): within 3e-6 relative + 1e-12 absolute of the float64 reference (gelu.cu).

float32 in and out; other dtypes are refused with the reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.reference._common import normalize_axis

from . import _common
from ._common import ELEMENTWISE_THREADS, check_float32, contiguous, empty, grid_1d, launch, row_threads, to_device

FLOAT32_MAX = float(np.finfo(np.float32).max)


def mask_float32(mask):
    """An additive mask as float32 on the device. A wider float mask is clipped to the float32
    range first, so a "very negative" float64 value such as -1e300 stays finite (it would
    round to -inf and turn a fully masked row into NaN, where the reference gives it equal
    weights)."""
    cp = _common.cupy()
    m = to_device(mask)
    if np.dtype(m.dtype).kind == "f" and np.dtype(m.dtype).itemsize > 4:
        m = cp.clip(m, -FLOAT32_MAX, FLOAT32_MAX)
    return contiguous(m, np.float32)


def masked_softmax(scores, scale: float = 1.0, mask=None):
    """scores float32 (B, H, Sq, Sk) contiguous on the device, mask None or float32 on the device
    broadcastable to (B, H, Sq, Sk) -> float32 (B, H, Sq, Sk): softmax over the last axis of
    scale * scores + mask."""
    cp = _common.cupy()
    b, h, sq, sk = scores.shape
    y = empty(scores.shape, np.float32)
    rows = b * h * sq
    if rows == 0 or sk == 0:
        return y
    if mask is not None:
        mb = cp.broadcast_to(mask, scores.shape)               # 0 strides along broadcast axes
        strides = tuple(np.int64(s // mb.itemsize) for s in mb.strides)
        mask_arg = mb
    else:
        strides = (np.int64(0),) * 4
        mask_arg = scores                                       # never read when has_mask is 0
    launch("softmax.cu", "masked_softmax_rows", (grid_1d(rows, 1),), (row_threads(sk),),
           (scores, y, np.int64(rows), np.int32(sk), np.float64(scale), mask_arg, np.int32(mask is not None),
            np.int64(h), np.int64(sq), *strides))
    return y


def softmax_factory(attrs: dict[str, Any], weights: dict):
    """Kernel factory of (Softmax, dense, cupy): run(x) -> (softmax of x along attrs["axis"],)."""
    axis_attr = int(attrs.get("axis", -1))

    def run(x):
        cp = _common.cupy()
        x = to_device(x)
        check_float32("Softmax", "X", x)
        if x.ndim == 0:
            raise ValueError("Softmax: X must have at least one axis")
        axis = normalize_axis(axis_attr, x.ndim)
        last = contiguous(cp.moveaxis(x, axis, -1))
        cols = last.shape[-1]
        rows = int(np.prod(last.shape[:-1], dtype=np.int64))
        y = masked_softmax(last.reshape(1, 1, rows, cols)).reshape(last.shape)   # rows as (B, H, Sq) = (1, 1, R)
        return (y if axis == x.ndim - 1 else contiguous(cp.moveaxis(y, -1, axis)),)
    return run


def gelu_factory(attrs: dict[str, Any], weights: dict):
    """Kernel factory of (Gelu, dense, cupy): run(x) -> (GELU(x),), erf or tanh form."""
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu: approximate must be one of ('none', 'tanh'), got {approximate!r}")
    tanh_form = np.int32(approximate == "tanh")

    def run(x):
        x = contiguous(x)
        check_float32("Gelu", "X", x)
        y = empty(x.shape, np.float32)
        n = int(x.size)
        if n:
            launch("gelu.cu", "gelu_float", (grid_1d(n, ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
                   (x, y, np.int64(n), tanh_form))
        return (y,)
    return run
