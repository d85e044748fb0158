"""Feed checks of InferenceSession.run: names, dtypes and shapes (symbolic dims bound
consistently across inputs), each error naming the input and what was expected."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from kernels.core.device import dtype_name, is_device_array, to_numpy

from .graph import Value, format_shape, shape_problem


def check_feeds(feeds: Mapping[str, Any], inputs: list[tuple[Value, int]], on_gpu: bool) -> list[tuple[int, Any]]:
    """The feeds as (slot, array) for every model input, in ``inputs`` order ((Value, slot)
    pairs): numpy arrays made C-contiguous; device arrays kept on a GPU session, brought to
    the host once on a CPU one. TypeError / ValueError naming the problem otherwise."""
    if not isinstance(feeds, Mapping):
        raise TypeError(f"input_feed must be a dict of input name -> array, got {type(feeds).__name__}")
    expected = {v.name for v, _ in inputs}
    unknown = [k for k in feeds if k not in expected]
    if unknown:
        raise ValueError(f"unknown input {unknown[0]!r}; the model's inputs are: {', '.join(sorted(expected))}")
    symbols: dict[str, tuple[int, str]] = {}
    checked = []
    for v, slot in inputs:
        if v.name not in feeds:
            got = f"got only {', '.join(repr(k) for k in feeds)}" if feeds else "got an empty feed"
            raise ValueError(f"missing input {v.name!r} (expected {v.dtype} with shape {format_shape(v.shape)}); "
                             f"{got}")
        a = feeds[v.name]
        device = is_device_array(a)
        if not device and not isinstance(a, np.ndarray):
            a = np.asarray(a)
        if dtype_name(a) != v.dtype:
            raise ValueError(f"input {v.name!r}: expected dtype {v.dtype}, got {dtype_name(a)}")
        problem = shape_problem(v, tuple(int(d) for d in a.shape), symbols)
        if problem:
            raise ValueError(f"input {v.name!r}: {problem}")
        if device and not on_gpu:        # a CPU session: bring it to the host once
            a = to_numpy(a)
            device = False
        checked.append((slot, a if device else np.ascontiguousarray(a)))
    return checked
