"""Reshape as a numpy view with the target worked out once where it can be: the kernel the CPU
backends share.

The reference (kernels/reference/shape_ops.py reshape_ref) converts the target to Python ints
and resolves 0 and -1 on every call. In a session most targets are constants (runtime/shape_fold.py
folds them, with ONNX's 0 = "copy this dim" and one -1), and a run of GPT-2 at 1 x 128 has 49
Reshapes at ~9 us each, a few microseconds of which are that Python (the steps run on caches the
GEMMs just emptied). So: a constant target is turned into ints once, a 0 is replaced by the
input's dim, numpy infers the -1; a run-time target with allowzero=1 (0 a real zero, DeBERTa's
dynamo export) goes to numpy as it is. numpy's reshape accepts what ONNX's does for these (values
below -1 excepted, which numpy reads as -1: they go to the reference) and refuses the rest,
which then goes to the reference for its error message. The result is the
reference's (a view of X with the same shape), bit for bit.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kernels.registry import lookup


def reshape_views_factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
    ref = lookup("Reshape", "dense", "reference")(attrs, weights)
    allowzero = int(attrs.get("allowzero", 0))
    target = weights.get(1)
    data = None if target is None or target.layout != "dense" else np.asarray(target.fields["data"])
    dims = [int(v) for v in data] if data is not None and data.ndim == 1 and data.dtype.kind in "iu" else None
    if dims is not None and min(dims, default=0) >= -1 and dims.count(-1) <= 1:
        copied = [i for i, d in enumerate(dims) if d == 0] if not allowzero else []

        def run_constant(x, shape=None):
            if not isinstance(x, np.ndarray) or (copied and copied[-1] >= x.ndim):
                return ref(x, shape if shape is not None else data)
            want = dims
            if copied:
                want = list(dims)
                for i in copied:
                    want[i] = x.shape[i]
            try:
                return (x.reshape(want),)
            except ValueError:
                return ref(x, shape if shape is not None else data)     # raises the reference's error
        return run_constant
    if not allowzero:
        return ref

    def run(x, shape):
        # allowzero=1: every value means itself (-1 at most once; numpy refuses more)
        if not isinstance(x, np.ndarray) or not isinstance(shape, np.ndarray) or shape.ndim != 1 \
                or shape.dtype.kind not in "iu":
            return ref(x, shape)
        want = shape.tolist()
        if want and min(want) < -1:      # numpy would take any negative value for -1; ONNX refuses it
            return ref(x, shape)
        try:
            return (x.reshape(want),)
        except ValueError:
            return ref(x, shape)
    return run
