"""Split as views of the input (explicit sizes, or num_outputs parts): the kernel the CPU
backends share.

The reference's Split returns C-order copies (kernels/reference/shape_ops.py); a fast backend
may return views (outputs are read-only to every consumer, kernels/reference/_common.py), so
the Q, K and V parts of a merged projection (runtime/fuse.py) are read in place by Attention.
Slices are built directly (np.split costs ~8 us per call, a tuple of basic slices ~1 us).
"""
from __future__ import annotations

from itertools import accumulate
from typing import Any, Callable

from kernels.core.device import to_numpy
from kernels.registry import lookup


def split_views_factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
    """Kernel factory of Split: views for explicit sizes and for num_outputs parts (sizes from
    the dim at run time, as the reference cuts them), the reference for bad input (it raises
    with the message)."""
    ref = lookup("Split", "dense", "reference")(attrs, weights)
    axis, sizes, parts = int(attrs["axis"]), attrs["split"], attrs.get("num_outputs")
    if sizes is None and not parts:
        return ref

    bounds_of: dict[int, list[tuple[int, int]] | None] = {}     # dim -> [(start, end)] or None: bad

    def bounds(dim: int) -> list[tuple[int, int]] | None:
        if dim not in bounds_of:
            if sizes is not None:
                part = [int(v) for v in sizes]
            else:                                  # ONNX 18: ceil(dim / parts), the last part smaller
                step = -(-dim // int(parts))
                part = [min(step, max(dim - k * step, 0)) for k in range(int(parts))]
            ok = sum(part) == dim and min(part, default=0) >= 0
            bounds_of[dim] = [(e - n, e) for e, n in zip(accumulate(part), part)] if ok else None
        return bounds_of[dim]

    def run(x):
        if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
            return ref(x)
        b = bounds(x.shape[axis])
        if b is None:
            return ref(x)
        lead = (slice(None),) * (axis % x.ndim)
        return tuple(x[lead + (slice(a, e),)] for a, e in b)
    return run


def device_split_factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
    """Split for the GPU backends: views of the device array for explicit sizes and
    num_outputs parts (torch tensors and CuPy arrays slice like numpy, without a copy); bad
    input goes through the reference on a host copy, which raises."""
    views = split_views_factory(attrs, weights)
    if attrs["split"] is not None or attrs.get("num_outputs"):
        return views
    return lambda x: views(to_numpy(x))
