"""Split with explicit sizes as views of the input: the kernel the CPU backends share.

The reference's Split returns C-order copies (kernels/reference/shape_ops.py); a fast backend
may return views (outputs are read-only to every consumer, kernels/reference/_common.py), so
the Q, K and V parts of a merged projection (runtime/fuse.py) are read in place by Attention.
Slices are built directly (np.split costs ~8 us per call, a tuple of basic slices ~1 us).
"""
from __future__ import annotations

from typing import Any, Callable

from kernels.core.device import to_numpy
from kernels.registry import lookup


def split_views_factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
    """Kernel factory of Split: views for explicit sizes, the reference for the other forms
    (num_outputs) and for bad input (it raises with the message)."""
    ref = lookup("Split", "dense", "reference")(attrs, weights)
    axis, sizes = int(attrs["axis"]), attrs["split"]
    if sizes is None:
        return ref
    sizes = [int(v) for v in sizes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    total = sum(sizes)

    def run(x):
        if x.ndim == 0 or not -x.ndim <= axis < x.ndim or x.shape[axis] != total or min(sizes, default=0) < 0:
            return ref(x)
        lead = (slice(None),) * (axis % x.ndim)
        return tuple(x[lead + (slice(a, a + n),)] for a, n in zip(starts, sizes))
    return run


def device_split_factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
    """Split for the GPU backends: views of the device array for explicit sizes (torch
    tensors and CuPy arrays slice like numpy, without a copy); the other forms go through the
    reference on a host copy (the next GPU kernel uploads its part)."""
    views = split_views_factory(attrs, weights)
    if attrs["split"] is not None:
        return views
    return lambda x: views(to_numpy(x))
