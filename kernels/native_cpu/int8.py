"""Linear on ``int8`` packed weights, native backend: ("Linear", "native", "int8").

The kernel is csrc/int8_gemm.cpp (numerics written down in csrc/int8_gemm.h): per-row
(dynamic) or static activation quantization fused into the GEMM's prologue, an exact integer
GEMM (AMX, AVX-512 VNNI, AVX-VNNI, AVX2 or scalar, chosen on cpuid; ``_native.set_int8_isa`` or the
environment variable QRT_NATIVE_ISA forces one), the float64 epilogue in the reference's order.
For act_quant "dynamic" and "static" with float32 X the result is
kernels/reference/packed.py's bit for bit (tests/test_native_int8.py asserts equality).

Plan time (the factory): the weight is packed once into 64-column panels (``_native.Int8Weight``).
Run time: X (..., K) is viewed as (M, K) rows, Y (M, N) reshaped to (..., N).

Epilogue activation: the node's "activation" attribute (kernels/core/ops.py ACTIVATIONS: relu, gelu,
gelu_tanh; kernels/registry.py EPILOGUE_OPS defines it as the Relu / Gelu op applied to the
float32 Y) is fused: the kernel applies it to each output tile right after the epilogue's
rounding to float32 (csrc/activation.h: ReLU exact; the GELUs mostly in float32 with a fitted
erfc and exp, relative error < 4.6e-7 against the float64 reference where the result is a
normal float32; the same bits on every code path).
The factory declares ``fused_activations`` so that kernels.registry.build does not add a
separate activation kernel.

Other cases, each with the numerics of the kernel it uses:

* act_quant "none" (weight-only int8): float32 BLAS matmul with the weight dequantized once at
  plan time (PackedTensor.to_dense()), like the numba backend's: not bit exact, the float32
  accumulation error is bounded by (K + 2) * 2^-24 * sum_k |x_k w_nk| (tests:
  WEIGHT_ONLY_ERR_PER_TERM); float64 BLAS for other float dtypes. The activation then runs
  on Y in place (``_native.apply_activation``: the epilogue's code, on the native threads
  when Y is large).
* X in another float dtype (float64, float16): the reference's own arithmetic
  (kernels/reference/packed.PackedPlan), since the C++ kernel reads float32 and rounding
  float64 X to float32 first would change the quantized values; the activation is then the
  reference's kernel on Y in X's dtype, as the unfused pair computes it. Models run float32.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.gemm_front import F32_F64, activate_after, bias32_or_64, gemm_factory, rows_of, weight_only
from kernels.reference.packed import PreparedWeight, packed_linear_ref
from kernels.registry import register

from . import _native


class Int8Plan(PreparedWeight):
    """One Linear node's int8 weight, prepared once.

    weight: PackedTensor of layout "int8", logical shape (N, K): qdata (N, K) int8, scale (N,)
    or (1,) float32, zero_point like scale (asymmetric) or absent.
    """

    def __init__(self, weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0):
        if weight.layout != "int8":
            raise ValueError(f"Linear: the native int8 kernel takes layout 'int8', got {weight.layout!r}")
        super().__init__(weight, act_quant, act_scale, act_zero_point)
        if act_quant == "none":
            self.dense32 = np.ascontiguousarray(weight.to_dense().reshape(self.n, self.k), np.float32)
            return
        f = weight.fields
        # per-tensor scale / zero point (shape (1,)) become one value per row, as the kernel reads
        scale = np.ascontiguousarray(np.broadcast_to(np.asarray(f["scale"]).reshape(-1), (self.n,)), np.float32)
        zp = f.get("zero_point")
        if zp is not None:
            zp = np.ascontiguousarray(np.broadcast_to(np.asarray(zp).reshape(-1), (self.n,)), np.int8)
        qdata = np.ascontiguousarray(np.asarray(f["qdata"]).reshape(self.n, self.k))
        self.packed = _native.Int8Weight(qdata, scale, zp)


def int8_linear(x: Any, plan: Int8Plan, bias: Any = None, activation: str = "none") -> np.ndarray:
    """Y (..., N) = act(quant(X) @ W.T + bias) in X's dtype; X (..., K) float, W logical (N, K),
    bias (N,) or None, activation one of kernels.core.ops ACTIVATIONS (fused for float32 X)."""
    return packed_linear(_native.int8_linear, x, plan, bias, activation)


def packed_linear(binding: Any, x: Any, plan: Any, bias: Any = None, activation: str = "none") -> np.ndarray:
    """int8_linear's body on any native integer plan (Int8Plan, sparse.SparsePlan): float32 X
    with quantized activations goes to ``binding(plan.packed, X (M, K), bias, act_quant,
    act_scale, act_zero_point, activation=)`` -> Y (M, N) float32, the activation applied by the
    kernel; weight-only plans to float BLAS on ``plan.dense32``, then the activation in place;
    anything else to the reference."""
    x, x2 = rows_of(x, plan.k, plan.weight)
    shape = x.shape
    if x.dtype == np.float32 and plan.act_quant != "none":
        # the common case, kept lean (it runs on every inference): the binding checks the
        # bias's shape and reads float32 / float64 itself
        if bias is not None and not (isinstance(bias, np.ndarray) and bias.dtype in F32_F64):
            bias = bias32_or_64(bias, plan.n)
        y = binding(plan.packed, x2 if x2.flags.c_contiguous else np.ascontiguousarray(x2), bias,
                    plan.act_quant, plan.act_scale, plan.act_zero_point, activation=activation)   # (M, N) float32
        return y.reshape(*shape[:-1], plan.n)
    bias = bias32_or_64(bias, plan.n)
    if plan.act_quant == "none":
        y = weight_only(x2, plan.dense32, bias)               # (M, N), a fresh array in X's dtype
        if y.dtype == np.float32:
            _native.apply_activation(y, activation)      # in place; "none" does nothing
            return y.reshape(*shape[:-1], plan.n)
        return activate_after(y.reshape(*shape[:-1], plan.n), activation)
    return activate_after(packed_linear_ref(x, plan.reference(), bias), activation)


def bound_linear_run(plan: Any, general: Any, activation: str) -> Any:
    """A Linear's fast run (``gemm_factory``'s ``fast``) on a native integer plan (Int8Plan,
    sparse.SparsePlan): ``_native.LinearCall``, which runs C-contiguous float32 X (..., K) with
    a float32 / float64 bias (N,) or None straight into the kernel and hands every other call
    to ``general`` (csrc/bind_linear_call.cpp: the same bits as ``packed_linear``, without the
    Python between the session and the binding, about 1.5 us a call). None for a weight-only
    plan (no packed weight)."""
    if plan.act_quant == "none":
        return None
    return _native.LinearCall(plan.packed, plan.act_quant, plan.act_scale, plan.act_zero_point, activation, general)


int8_linear_factory = register("Linear", "native", "int8")(gemm_factory(
    "Linear", lambda w, a, _: Int8Plan(w, **a.quant),
    lambda x, plan, bias, a: int8_linear(x, plan, bias, a.activation), fused=True, name="int8_linear_factory",
    fast=lambda plan, a, run: bound_linear_run(plan, run, a.activation)))
