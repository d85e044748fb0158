"""MaxPool on the numba backend: 2-D windows of float32 NCHW, one (n, c) plane per work item.

The reference (kernels/reference/conv_pool.py max_pool_ref) pads with -inf, takes every window
as a strided view and reduces it with np.max: 22 ms for a ResNet stem's (1, 64, 112, 112) 3 x 3
/ 2 pool, half of a small ResNet's run. Here each output is the maximum of its window's taps
inside the input, from -inf (so padding and a ceil_mode overhang never win, as there), with a
NaN kept once seen (np.max propagates NaN): the reference's value, bit for bit, on any thread
count. Output sizes and pads come from the reference's own _pool_setup. Anything else (1-D or
3-D windows, other dtypes) runs the reference.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.blas_activity import blas_recently_called
from kernels.fused_dispatch import reference_of
from kernels.reference.conv_pool import _pool_setup
from kernels.registry import register

from .ops import PARALLEL_MIN_ELEMENTS

# no fastmath: the comparisons must see NaN
_OPTS = dict(cache=True, error_model="numpy")


@njit(**_OPTS)
def _plane(x, y, kh, kw, sh, sw, dh, dw, ph, pw):
    """y (OH, OW) = max pools of one plane x (H, W)."""
    h, w = x.shape
    oh, ow = y.shape
    for i in range(oh):
        for j in range(ow):
            m = np.float32(-np.inf)
            for a in range(kh):
                r = i * sh - ph + a * dh
                if r < 0 or r >= h:
                    continue
                for b in range(kw):
                    c = j * sw - pw + b * dw
                    if c < 0 or c >= w:
                        continue
                    v = x[r, c]
                    if v > m or v != v:      # a NaN, once taken, stays (v > NaN is false)
                        m = v
            y[i, j] = m


@njit(**_OPTS)
def _pool_serial(x, y, kh, kw, sh, sw, dh, dw, ph, pw):
    for p in range(x.shape[0]):
        _plane(x[p], y[p], kh, kw, sh, sw, dh, dw, ph, pw)


@njit(parallel=True, **_OPTS)
def _pool_parallel(x, y, kh, kw, sh, sw, dh, dw, ph, pw):
    for p in prange(x.shape[0]):
        _plane(x[p], y[p], kh, kw, sh, sw, dh, dw, ph, pw)


@register("MaxPool", "numba")
def max_pool_factory(attrs: dict, weights: dict):
    """MaxPool over 2-D windows of float32 (N, C, H, W); the reference otherwise."""
    ref = reference_of("MaxPool", attrs, weights)

    def run(x):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4
                and len(attrs["kernel_shape"]) == 2):
            return ref(x)
        kernel, strides, dilations, out, pad_width, _ = _pool_setup(
            x, attrs["kernel_shape"], attrs["strides"], attrs["pads"], attrs["dilations"], attrs["ceil_mode"])
        n, c = x.shape[:2]
        y = np.empty((n, c, out[0], out[1]), np.float32)
        planes = np.ascontiguousarray(x).reshape(n * c, x.shape[2], x.shape[3])
        args = (planes, y.reshape(n * c, out[0], out[1]), kernel[0], kernel[1], strides[0], strides[1],
                dilations[0], dilations[1], pad_width[2][0], pad_width[3][0])
        # numba's team stays off the cores right after a BLAS GEMM (a float32 Conv before the
        # pool), whose spinning workers would stall it (kernels/blas_activity.py)
        if y.size >= PARALLEL_MIN_ELEMENTS and n * c > 1 and not blas_recently_called():
            _pool_parallel(*args)
        elif y.size:
            _pool_serial(*args)
        return (y,)
    return run
