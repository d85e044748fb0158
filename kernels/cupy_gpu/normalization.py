"""LayerNormalization and SkipLayerNormalization, CuPy backend (layer_norm.cu).

One block per row of the normalised axes, float32 in and out, float64 statistics (two passes:
mean, then squared deviations) and affine step, rounded once: within one float32 ulp of
kernels/reference (reduction.py layer_normalization_ref, fused.py skip_layer_normalization_ref),
plus ~1e-16 relative from the different summation order (layer_norm.cu).

LayerNormalization normalises over axes [axis, rank): X (..., *D) is viewed as rows (R, prod(D)),
scale and bias broadcast to D. SkipLayerNormalization normalises the last axis of
float32(x + skip) (numpy broadcasting; a broadcast operand is materialised once per call).
scale and bias (and skip, when it is a constant) are uploaded once at plan time as float32
(a float64 constant is rounded to float32 on upload).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels.reference._common import normalize_axis

from . import _common
from ._common import DeviceConstants, check_float32, contiguous, empty, grid_1d, launch, row_threads, to_device


def _affine(op: str, what: str, p, d_shape: tuple[int, ...]):
    """scale / bias (on the device) broadcast to the normalised shape D, as a contiguous (prod(D),)."""
    if p is None:
        return None
    cp = _common.cupy()
    if tuple(p.shape) != d_shape:
        try:
            p = cp.broadcast_to(p, d_shape)
        except ValueError:
            raise ValueError(f"{op}: {what} of shape {tuple(p.shape)} does not broadcast to the normalised "
                             f"shape {d_shape}") from None
    return contiguous(p, np.float32).reshape(-1)


def layer_norm_rows(op: str, x2, skip2, gamma, beta, epsilon: float):
    """x2 (and skip2, or None) float32 (R, D) contiguous on the device, gamma float32 (D,),
    beta float32 (D,) or None -> Y float32 (R, D)."""
    rows, d = x2.shape
    y = empty((rows, d), np.float32)
    if rows and d:
        dummy = x2                                             # never read when its flag is 0
        launch("layer_norm.cu", "layer_norm_rows", (grid_1d(rows, 1),), (row_threads(d),),
               (x2, skip2 if skip2 is not None else dummy, np.int32(skip2 is not None), gamma,
                beta if beta is not None else dummy, np.int32(beta is not None), y, np.int64(rows), np.int32(d),
                np.float64(epsilon)))
    return y


def layer_normalization_factory(attrs: dict[str, Any], weights: dict):
    """Kernel factory of (LayerNormalization, dense, cupy): run(x, scale, bias=None) -> (Y,)."""
    axis_attr, epsilon = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
    constants = DeviceConstants(weights, {1: np.float32, 2: np.float32})

    def run(x, scale, bias=None):
        x = to_device(x)
        check_float32("LayerNormalization", "X", x)
        axis = normalize_axis(axis_attr, x.ndim)
        d_shape = tuple(x.shape[axis:])
        d = math.prod(d_shape)
        gamma = _affine("LayerNormalization", "scale", constants.get(1, scale), d_shape)
        beta = _affine("LayerNormalization", "bias", constants.get(2, bias), d_shape)
        x2 = contiguous(x).reshape(math.prod(x.shape[:axis]), d)
        y = layer_norm_rows("LayerNormalization", x2, None, gamma, beta, epsilon)
        return (y.reshape(x.shape),)
    return run


def skip_layer_normalization_factory(attrs: dict[str, Any], weights: dict):
    """Kernel factory of (SkipLayerNormalization, dense, cupy): run(x, skip, scale, bias=None) -> (Y,)."""
    epsilon = float(attrs.get("epsilon", 1e-5))
    constants = DeviceConstants(weights, {1: np.float32, 2: np.float32, 3: np.float32})

    def run(x, skip, scale, bias=None):
        cp = _common.cupy()
        x = to_device(x)
        check_float32("SkipLayerNormalization", "x", x)
        skip = constants.get(1, skip)
        skip = contiguous(skip, np.float32)      # x + skip in x's dtype: skip is cast first, as np.add(dtype=)
        try:
            shape = tuple(np.broadcast_shapes(tuple(x.shape), tuple(skip.shape)))
        except ValueError:
            raise ValueError(f"SkipLayerNormalization: x {tuple(x.shape)} and skip {tuple(skip.shape)} do not "
                             f"broadcast") from None
        if not shape:
            raise ValueError("SkipLayerNormalization: x + skip must have at least one axis")
        x2 = contiguous(x if tuple(x.shape) == shape else cp.broadcast_to(x, shape))
        s2 = contiguous(skip if tuple(skip.shape) == shape else cp.broadcast_to(skip, shape))
        d = shape[-1]
        gamma = _affine("SkipLayerNormalization", "scale", constants.get(2, scale), (d,))
        beta = _affine("SkipLayerNormalization", "bias", constants.get(3, bias), (d,))
        rows = math.prod(shape[:-1])
        y = layer_norm_rows("SkipLayerNormalization", x2.reshape(rows, d), s2.reshape(rows, d), gamma, beta, epsilon)
        return (y.reshape(shape),)
    return run
