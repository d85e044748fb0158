"""The native backend's float32 layers outside the quantized GEMMs, so that a float32 node
never falls to the float64 reference on this backend:

* ``Linear`` (dense weight), ``MatMul``, ``Gemm``, ``Conv``: BLAS sgemm, the factories of
  kernels/blas_ops.py (shared with the numba backend); depthwise Convs by their own kernel
  (kernels/native_cpu/conv.py, ``dense_conv_factory``).
* ``HardSigmoid`` and ``HardSwish``: one pass in C++ with the reference's float32 arithmetic
  (csrc/hard_sigmoid.h), the same bits.
* ``Gelu`` (erf and tanh forms) and ``Relu``: the int8 epilogue's vectorised activations
  (csrc/activation.h, ``_native.apply_activation``) on a float32 copy of X: the same bits as
  the fused epilogue, within the reference's GELU tolerance (tests/conformance_cases.py GELU),
  ReLU exact.

Other dtypes go to the reference kernel unchanged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kernels import blas_ops
from kernels.fused_dispatch import reference_of
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


register("HardSigmoid", "native")(_hard_sigmoid_factory("HardSigmoid"))
register("HardSwish", "native")(_hard_sigmoid_factory("HardSwish"))
register("Gelu", "native")(_activation_factory("Gelu", lambda a: "gelu_tanh" if a["approximate"] == "tanh" else "gelu"))
register("Relu", "native")(_activation_factory("Relu", lambda a: "relu"))
