"""The native backend's float32 layers outside the quantized GEMMs, so that a float32 node
never falls to the float64 reference on this backend:

* ``Linear`` (dense weight), ``MatMul``, ``Gemm``: BLAS sgemm, the factories of
  kernels/blas_ops.py (shared with the numba backend). ``Conv``: kernels/native_cpu/conv.py's
  ``dense_conv_factory`` (depthwise and small-patch Convs on their own kernels, the rest sgemm).
* ``HardSigmoid`` and ``HardSwish``: one pass in C++ with the reference's float32 arithmetic
  (csrc/hard_sigmoid.h), the same bits.
* ``Sigmoid``: one pass in C++, the reference's stable form in float32 with the epilogue's
  exponential (csrc/sigmoid.h): within 3 ulp of the float64 sigmoid, the same bits on every
  ISA path (EfficientNet's SiLU is a Sigmoid and a Mul).
* ``Gelu`` (erf and tanh forms) and ``Relu``: the int8 epilogue's vectorised activations
  (csrc/activation.h, ``_native.apply_activation``) on a float32 copy of X: the same bits as
  the fused epilogue, within the reference's GELU tolerance (tests/conformance_cases.py GELU),
  ReLU exact.
* ``Add``, ``Sub``, ``Mul``, ``Div`` on two float32 arrays of the same shape, or where one is a
  single value or one value per row of the other (the trailing axes of size 1: a CNN's
  (N, C, 1, 1) channel scales): csrc/elementwise_f32.h, numpy's float32 bits; an Add with the
  fused "relu" of runtime/fuse.py (ResNet's Add -> Relu) applies it in the same pass, the bits of
  the Relu op after it. Other broadcasts and dtypes: the reference (then the Relu op).
* ``ReduceMean`` of float32 over trailing axes (global average pooling): float64 row sums
  rounded once (csrc/elementwise_f32.h), within one float32 rounding of the reference.

Other dtypes go to the reference kernel unchanged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kernels import blas_ops
from kernels.fused_dispatch import reference_of
from kernels.gemm_front import activate_after
from kernels.reference._common import prod
from kernels.reference.reduction import _reduce_axes
from kernels.registry import register

from . import _native

for _op, _factory in blas_ops.FACTORIES.items():
    if _op != "Conv":           # conv.py: depthwise Convs on their own kernel, the rest as here
        register(_op, "native")(_factory)


def _activation_factory(op: str, kind_of: Callable[[dict], str]):
    """Factory of a float32 element-wise op run by _native.apply_activation(y, kind)."""
    def factory(attrs: dict, weights: dict):
        ref = reference_of(op, attrs, weights)      # checks the attributes
        kind = kind_of(attrs)

        def run(x):
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                return ref(x)
            y = np.array(x, dtype=np.float32, order="C")   # a copy: the op is not in place
            _native.apply_activation(y, kind)
            return (y,)
        return run
    return factory


def _hard_sigmoid_factory(op: str):
    """HardSigmoid (alpha, beta from the node) or HardSwish (ONNX's 1/6 and 0.5) on float32 X by
    ``_native.hard_sigmoid``: the reference's float32 arithmetic in one pass (csrc/hard_sigmoid.h),
    the same bits; numpy's four passes with a temporary each cost MobileNetV3-sized layers
    0.25-1 ms apiece."""
    def factory(attrs: dict, weights: dict):
        ref = reference_of(op, attrs, weights)
        swish = op == "HardSwish"
        alpha, beta = (1.0 / 6.0, 0.5) if swish else (attrs["alpha"], attrs["beta"])
        alpha32, beta32 = float(np.float32(alpha)), float(np.float32(beta))   # the reference rounds them to T

        def run(x):
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                return ref(x)
            return (_native.hard_sigmoid(np.ascontiguousarray(x), alpha32, beta32, swish),)
        return run
    factory.__name__ = factory.__qualname__ = f"{op.lower()}_factory"
    return factory


@register("Sigmoid", "native")
def sigmoid_factory(attrs: dict, weights: dict):
    """Sigmoid of float32 X (any shape) by ``_native.sigmoid``: one pass on the call's threads
    (csrc/sigmoid.h); other dtypes: the reference."""
    ref = reference_of("Sigmoid", attrs, weights)

    def run(x):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            return ref(x)
        return (_native.sigmoid(np.ascontiguousarray(x)),)
    return run


register("HardSigmoid", "native")(_hard_sigmoid_factory("HardSigmoid"))
register("HardSwish", "native")(_hard_sigmoid_factory("HardSwish"))
register("Gelu", "native")(_activation_factory("Gelu", lambda a: "gelu_tanh" if a["approximate"] == "tanh" else "gelu"))
register("Relu", "native")(_activation_factory("Relu", lambda a: "relu"))


def _row_kind(shape: tuple, out: tuple) -> tuple[int, int] | None:
    """How an operand of ``shape`` broadcasts to ``out``: (0, -) the full array, (2, -) one value,
    (1, k) one value per row of out viewed as (prod(out[:k]), prod(out[k:])); None otherwise
    (the reference's broadcasting then)."""
    if shape == out:
        return 0, len(out)
    if prod(shape) == 1:
        return 2, len(out)
    p = (1,) * (len(out) - len(shape)) + shape
    k = len(out)
    while k > 0 and p[k - 1] == 1:
        k -= 1
    return (1, k) if p[:k] == out[:k] else None


def _binary_factory(op: str):
    """Factory of a float32 Add / Sub / Mul / Div by ``_native.binary_f32`` (module docstring);
    an Add's fused "relu" (runtime/fuse.py: ResNet's Add -> Relu) in the same pass, the bits of
    the native Relu after it."""
    name = op.lower()

    def factory(attrs: dict, weights: dict):
        act = attrs.get("activation", "none")
        plain = reference_of(op, {k: v for k, v in attrs.items() if k != "activation"}, weights)

        def ref(a, b):
            (y,) = plain(a, b)
            return (activate_after(y, act, "native"),)

        # (a.shape, b.shape) -> (out, a_kind, b_kind, rows, cols), or None for the reference: a
        # node sees the same shapes call after call, and working the split out took 5 us of a
        # MobileNet channel scale's 6 (np.broadcast_shapes, the kinds)
        splits: dict = {}

        def split(sa: tuple, sb: tuple):
            try:
                out = np.broadcast_shapes(sa, sb)
            except ValueError:
                return None               # the reference's error
            ka, kb = _row_kind(sa, out), _row_kind(sb, out)
            if ka is None or kb is None or prod(out) == 0:
                return None
            # the per-row operand's split (at most one is per row: two would make both full), else
            # one row of everything
            k = next((kind[1] for kind in (ka, kb) if kind[0] == 1), 0)
            return out, ka[0], kb[0], prod(out[:k]), prod(out[k:])

        def run(a, b):
            if not (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == np.float32
                    and b.dtype == np.float32):
                return ref(a, b)
            if a.shape == b.shape and a.size and a.flags.c_contiguous and b.flags.c_contiguous:   # the common case, quickly
                return (_native.binary_f32(name, a, 0, b, 0, 1, a.size, act).reshape(a.shape),)
            key = (a.shape, b.shape)
            if key not in splits:
                if len(splits) >= 64:     # run-time shapes that keep changing: a bounded memo
                    splits.clear()
                splits[key] = split(*key)
            plan = splits[key]
            if plan is None:
                return ref(a, b)
            out, ka, kb, rows, cols = plan
            y = _native.binary_f32(name, np.ascontiguousarray(a), ka, np.ascontiguousarray(b), kb, rows, cols, act)
            return (y.reshape(out),)
        return run
    factory.__name__ = factory.__qualname__ = f"{name}_factory"
    if op == "Add":
        factory.fused_activations = ("relu",)      # kernels.registry.build
    return factory


for _op in ("Add", "Sub", "Mul", "Div"):
    register(_op, "native")(_binary_factory(_op))


@register("ReduceMean", "native")
def reduce_mean_factory(attrs: dict, weights: dict):
    """float32 ReduceMean over trailing axes by ``_native.mean_rows_f32``; other axes, dtypes and
    empty reductions: the reference."""
    ref = reference_of("ReduceMean", attrs, weights)
    keep = bool(attrs["keepdims"])

    def run(x):
        if type(x) is not np.ndarray or x.dtype != np.float32:
            return ref(x)
        ax = _reduce_axes(x, attrs["axes"], attrs["noop_with_empty_axes"])
        if ax is None or ax != tuple(range(x.ndim - len(ax), x.ndim)) or prod(x.shape[x.ndim - len(ax):]) == 0:
            return ref(x)
        k = x.ndim - len(ax)
        y = _native.mean_rows_f32(np.ascontiguousarray(x).reshape(prod(x.shape[:k]), -1))
        return (y.reshape(x.shape[:k] + ((1,) * len(ax) if keep else ())),)
    return run
