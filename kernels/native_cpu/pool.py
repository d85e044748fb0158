"""MaxPool on the native backend: ("MaxPool", "native") for float32 NCHW with 1-D or 2-D windows.

csrc/max_pool.h: one (image, channel) plane at a time, copied into a -inf padded buffer, each
window tap applied to a whole output row. The reference's value bit for bit (each output the
maximum of its taps, padding and any ceil_mode overhang never winning, a NaN kept once seen),
on every ISA path and thread count. Output sizes and pads come from the reference's own
_pool_setup (its errors included). Anything else (3-D windows, other dtypes) runs the reference.
A ResNet stem's 3 x 3 / 2 pool over (1, 64, 112, 112): numpy's strided view 22 ms, the numba
kernel 1.0-1.6 ms, this one 0.22 ms on 2 threads (RESULTS.md, "int8 Conv without numpy's im2col").
"""
from __future__ import annotations

import numpy as np

from kernels.fused_dispatch import reference_of
from kernels.reference.conv_pool import _pool_setup
from kernels.registry import register

from . import _native
from .conv import planar, unplanar


@register("MaxPool", "native")
def max_pool_factory(attrs: dict, weights: dict):
    """MaxPool over 1-D or 2-D windows of float32 (N, C, *spatial); the reference otherwise."""
    ref = reference_of("MaxPool", attrs, weights)
    nsp = len(attrs["kernel_shape"])

    def run(x):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and nsp in (1, 2) and x.ndim == nsp + 2):
            return ref(x)
        kernel, strides, dilations, out, pad_width, _ = _pool_setup(
            x, attrs["kernel_shape"], attrs["strides"], attrs["pads"], attrs["dilations"], attrs["ceil_mode"])
        begin, end = [p[0] for p in pad_width[2:]], [p[1] for p in pad_width[2:]]
        out2 = list(out) if nsp == 2 else [1, out[0]]
        return (unplanar(_native.max_pool2d(*planar(x, kernel, strides, begin, end, dilations), out2), nsp),)
    return run
