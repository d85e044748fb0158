"""Plumbing shared by the numpy reference kernels.

Every reference op is a plain function ``<snake_op>_ref(*inputs, **attrs) -> array | tuple``
(``add_ref``, ``layer_normalization_ref``, ``gather_nd_ref``...). ``@reference_kernel(op)``
registers it with kernels.registry as the ``(op, "dense", "reference")`` kernel factory:

    factory(attrs, weights) -> run(*inputs) -> tuple of np.ndarray

The factory binds the op's attributes (those listed in kernels.core.ops, defaults filled in) once,
at plan time, and checks the required ones; ``run`` only calls the function and wraps its
result. Absent optional inputs arrive as None (or are simply not passed).

Outputs are always ``np.ndarray`` (a 0-d result is a 0-d array, never a numpy scalar). An
output may be the input itself or a view of it (Identity, Reshape, Squeeze, Flatten...), and a
dense weight input is a read-only memmap, so callers must treat every output as read-only.
Ops that reorder or subsample memory (Transpose, Slice, Split, Expand) return fresh C-order
arrays, so C-contiguous inputs always give C-contiguous outputs.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np

from kernels.registry import bound_dense, register
from kernels.core.ops import op_spec

_SNAKE_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_name(op: str) -> str:
    """'LayerNormalization' -> 'layer_normalization', 'GatherND' -> 'gather_nd'."""
    return _SNAKE_BOUNDARY.sub("_", op).lower()


def as_outputs(result: Any) -> tuple[np.ndarray, ...]:
    """A reference function's result as the tuple of ndarrays a kernel ``run`` returns."""
    if isinstance(result, (tuple, list)):
        return tuple(r if isinstance(r, np.ndarray) else np.asarray(r) for r in result)
    return (result if isinstance(result, np.ndarray) else np.asarray(result),)


def reference_kernel(op: str, *, required: tuple[str, ...] = (),
                     extra_attrs: dict[str, Any] | None = None,
                     check: Callable[[dict[str, Any]], None] | None = None):
    """Decorator: register ``fn`` (named ``<snake_op>_ref``) as the reference kernel of ``op``.

    required:    attributes that must not be None (checked at plan time, not per call).
    extra_attrs: attributes the kernel honours that kernels.core.ops does not (yet) list, with
                 their defaults; passed through when a node carries them.
    check:       validates the bound attributes at plan time; raises ValueError.
    """
    defaults = dict(op_spec(op).attrs)
    # Linear/Conv's epilogue "activation" and Conv's "channel_mean" output are applied after the
    # kernel by kernels.registry.build (the reference function computes the op without them), so
    # they are not passed here.
    defaults.pop("activation", None)
    defaults.pop("channel_mean", None)
    defaults.update(extra_attrs or {})
    expected = snake_name(op) + "_ref"

    def deco(fn):
        if fn.__name__ != expected:
            raise AssertionError(f"reference kernel of {op} must be named {expected}, not {fn.__name__}")

        def factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
            kwargs = {k: attrs.get(k, d) for k, d in defaults.items()}
            missing = [k for k in required if kwargs[k] is None]
            if missing:
                raise ValueError(f"{op}: required attribute(s) {', '.join(missing)} not set")
            if check is not None:
                check(kwargs)
            wi = op_spec(op).weight_input
            bound = None if wi is None else bound_dense(weights, wi)
            if bound is None:
                def run(*inputs):
                    return as_outputs(fn(*inputs, **kwargs))
            else:   # the weight input is bound at plan time (kernels/registry.py): its slot is not read
                def run(*inputs):
                    return as_outputs(fn(*inputs[:wi], bound, *inputs[wi + 1:], **kwargs))
            return run

        factory.__name__ = f"{expected}_factory"
        factory.__qualname__ = factory.__name__
        factory.__doc__ = f"Reference kernel factory of {op}: binds attributes, returns run(*inputs)."
        register(op, "reference")(factory)
        return fn
    return deco


# --- small helpers used by several modules -------------------------------------------------

def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """ONNX negative axis -> non-negative; ValueError outside [-rank, rank)."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for a rank-{rank} tensor")
    return axis + rank if axis < 0 else axis


def is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


def is_int(dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


def prod(dims) -> int:
    """Product of dims as a Python int (1 for no dims), safe for zero-size shapes."""
    return math.prod(int(d) for d in dims)


def erf64(x: np.ndarray) -> np.ndarray:
    """erf(x) in float64, accurate to ~1 ulp: math.erf element by element.

    numpy has no erf and scipy is not an inference dependency; short rational approximations
    (Abramowitz-Stegun 7.1.26: |error| < 1.5e-7) are too coarse for a spec. This is slow
    (a Python call per element) and that is accepted: accuracy matters more here.
    """
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.fromiter(map(math.erf, flat.tolist()), dtype=np.float64, count=flat.size)
    return out.reshape(np.shape(x))
