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


def feed_signature(fed: list[tuple[int, Any]]) -> tuple:
    """What recheck_feeds compares a later feed with: (dtype, shape) of each checked numpy
    feed, None for a device array (never taken by the fast path)."""
    return tuple((a.dtype, a.shape) if type(a) is np.ndarray else None for _, a in fed)


def recheck_feeds(feeds: Any, inputs: list[tuple[Value, int]], signature: tuple) -> list[tuple[int, Any]] | None:
    """check_feeds' result for a feed of C-contiguous numpy arrays with the dtypes and shapes
    ``signature`` records of a feed check_feeds accepted, or None (then check_feeds decides).
    The same names, dtypes and shapes pass the same checks, so they are not made again: a
    small model's run is a few milliseconds, and the full check cost 20-90 us of it."""
    if type(feeds) is not dict or len(feeds) != len(inputs):
        return None
    out = []
    for (v, slot), sig in zip(inputs, signature):
        a = feeds.get(v.name)
        if sig is None or type(a) is not np.ndarray or a.shape != sig[1] or a.dtype != sig[0] \
                or not a.flags.c_contiguous:
            return None
        out.append((slot, a))
    return out


# Runs estimated to need less than this are not checked against the machine (the check reads
# /proc, which costs more than a small run's whole overhead budget).
MEMORY_CHECK_BYTES = 1 << 30


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable (/proc/meminfo), lowered to the
    cgroup's memory.max minus memory.current where one is set; None where neither is known."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read())
        if limit != "max":
            left = max(0, int(limit) - current)
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def check_memory(fed: list[tuple[int, Any]], widest: int, attention: bool) -> None:
    """Refuse, before anything is allocated, a run whose feeds would make one intermediate
    larger than the memory left (a lower bound, so a refusal is never wrong): the widest
    Linear / embedding output over every row of a token or feature feed (``widest`` values
    per row, float32), and with attention one (batch, sequence, sequence) score matrix of a
    token feed. MemoryError naming the feed shapes, the need and what is available."""
    need, why = 0, ""
    for _, a in fed:
        shape = tuple(int(d) for d in a.shape)
        if not shape:
            continue
        name = dtype_name(a)                                  # numpy's name, for device arrays too
        ints = name.startswith(("int", "uint"))
        rows = 1
        for d in (shape if ints else shape[:-1]):
            rows *= d
        if widest and (ints or len(shape) <= 3) and rows * widest * 4 > need:
            need, why = rows * widest * 4, f"{rows:,} rows x {widest:,} values of the widest layer"
        if attention and ints and len(shape) == 2 and shape[0] * shape[1] ** 2 * 4 > need:
            need, why = shape[0] * shape[1] ** 2 * 4, f"attention scores {shape[0]:,} x {shape[1]:,} x {shape[1]:,}"
    if need < MEMORY_CHECK_BYTES:
        return
    avail = available_memory()
    if avail is not None and need > avail:
        shapes = ", ".join("x".join(str(int(d)) for d in a.shape) for _, a in fed)
        raise MemoryError(f"this run needs at least {need / 2**30:.1f} GiB ({why}) for feeds of shape {shapes}, "
                          f"more than the {avail / 2**30:.1f} GiB this process may still use; run smaller batches "
                          f"or shorter sequences")
