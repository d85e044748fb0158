"""Linear on ``int4_grouped`` weights, native backend: ("Linear", "native", "int4_grouped").

The kernel is csrc/int4_gemm*.cpp (numerics in csrc/int4_gemm.h): weight-only (act_quant
"none", float32 X), the nibbles unpacked in registers to float32(q - zp) * scale (the bits of
PackedTensor.to_dense(); the fp32 weight is never stored), float32 accumulation (16 AVX-512
FMA lanes for group_size % 32 == 0, 8 AVX2 FMA lanes for group_size % 16 == 0, else a scalar
loop; the widest the CPU has, no wider than the int8 path when QRT_NATIVE_ISA / set_int8_isa
forces one), bias added in float64 and rounded once. Against the reference (float64
accumulation):

    |y - y_ref| <= (K + 2) * 2^-24 * sum_k |x_k w_nk|  + 2^-24 |bias_n|

Results are identical for any thread count and for a row computed alone (M = 1) or batched.

Other cases run the reference's arithmetic (kernels/reference/packed.PackedPlan): the integer
modes (act_quant "dynamic" / "static" with int4 weights) and X in another float dtype.

The node's epilogue activation is not fused here: kernels.registry.build runs the activation
op's kernel after this one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.gemm_front import F32_F64, gemm_factory, rows_of
from kernels.reference.packed import PreparedWeight, packed_linear_ref
from kernels.registry import register

from . import _native


class Int4Plan(PreparedWeight):
    """One int4_grouped weight, prepared once. weight: PackedTensor of layout "int4_grouped"
    whose 2-D view is (N, K) (a Conv filter is viewed as (M, C/group * prod(kernel)))."""

    def __init__(self, weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0,
                 op: str = "Linear"):
        if weight.layout != "int4_grouped":
            raise ValueError(f"{op}: the native int4 kernel takes layout 'int4_grouped', got {weight.layout!r}")
        super().__init__(weight, act_quant, act_scale, act_zero_point, op)
        if act_quant != "none":
            return      # integer modes: the reference's arithmetic (module docstring)
        f = weight.fields
        zp = f.get("zero_point")
        self.packed = _native.Int4Weight(np.ascontiguousarray(f["qdata"]), np.ascontiguousarray(f["scale"], np.float32),
                                         None if zp is None else np.ascontiguousarray(zp, np.uint8),
                                         (self.n, self.k), int(weight.params["group_size"]))


def int4_linear(x: Any, plan: Int4Plan, bias: Any = None) -> np.ndarray:
    """Y (..., N) = X @ dequant(W).T + bias in X's dtype; X (..., K) float, bias (N,) or None."""
    x, x2 = rows_of(x, plan.k, plan.weight)
    shape = x.shape
    if x.dtype == np.float32 and plan.act_quant == "none":
        if bias is not None and not (isinstance(bias, np.ndarray) and bias.dtype in F32_F64):
            bias = np.asarray(bias, np.float64)
        y = _native.int4_linear(plan.packed, x2 if x2.flags.c_contiguous else np.ascontiguousarray(x2), bias)
        return y.reshape(*shape[:-1], plan.n)
    return packed_linear_ref(x, plan.reference(), bias)


int4_linear_factory = register("Linear", "native", "int4_grouped")(gemm_factory(
    "Linear", lambda w, a, _: Int4Plan(w, **a.quant), lambda x, plan, bias, a: int4_linear(x, plan, bias),
    name="int4_linear_factory"))
