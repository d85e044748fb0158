"""Linear on csr and nm weights, CuPy backend: ("Linear", "csr" / "nm", "cupy").

Y (..., N) = act(X (..., K) @ W.T + bias) with W logical (N, K); X is viewed as rows (M, K).

* act_quant "dynamic" / "static" (weights with quant "int8"): X is quantized on the device
  (quantize.cu, the reference's integers and scales bit for bit), then one kernel computes
  the exact int32 sum of (qx - z) * qw over each channel's stored entries and the float64
  epilogue y = float32((s_w * acc) * s_x + b) in the reference's order, then the activation
  (csr_spmm_int8.cu ``csr_int8_linear``, nm_int8.cu ``nm_int8_linear``). Without an
  activation, or with relu, Y is kernels/reference/packed.py's bit for bit; gelu is computed
  in float64 with CUDA's erf / tanh (within 2 float64 ulp): Y within one float32 ulp.
* act_quant "none": the float32 values (quant "none") or the dequantized ones (quant "int8",
  the layout's own float32(q) * scale), float32 products summed in float32 per lane then
  across the warp, the bias added in float64: within (entries + 2) * 2^-24 * sum_k |x_k w_nk|
  of the reference (the classical bound of a float32 dot product), plus its one rounding.

Int32 accumulation is exact while a channel's stored entries <= (2^31 - 1) // (127 * max|qx - z|)
(133144 for dynamic, 66311 at worst for static); a weight with a denser row is refused at
plan time with that bound in the message.

Kernel design (common.cuh ``sparse_int8_warp``): one warp per output channel, WARPS_PER_BLOCK
warps per block, blockIdx.y over tiles of 8 rows of X; the channel's entries are read
coalesced 32 at a time and each X row gathered by column (L1/L2). The weight is prepared once
in the factory (kernels/cupy_gpu/host.py, then uploaded): csr indptr int64 and indices int32,
nm meta unpacked to int32 columns, scales float64 (N,), the bias (a constant input) float64.

X must be float32 (other dtypes are refused: use another backend) and finite (quantize.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.reference.packed import ACT_QUANT_MODES, act_params
from kernels.gemm_front import gemm_factory

from . import host
from ._common import ACTIVATION_CODES, DeviceConstants, check_float32, contiguous, empty, launch, to_device
from .quantize import quantize_rows

WARPS_PER_BLOCK = 4            # 128 threads: 4 output channels per block
ROWS_PER_TILE = 8              # common.cuh QRT_SPARSE_ROWS
MAX_ROW_TILES = 65535          # gridDim.y limit; the kernels stride past it


class SparsePlan:
    """One Linear node's csr / nm weight on the device, prepared once.

    weight: PackedTensor (N, K), layout csr or nm; act_quant "dynamic" / "static" need quant
    "int8"; activation one of ACTIVATION_CODES. Every check runs on the host before anything
    is uploaded, so a weight this kernel cannot take is refused the same way without a GPU."""

    def __init__(self, weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0,
                 activation: str = "none"):
        self.n, self.k = host.check_sparse(weight)
        if act_quant not in ACT_QUANT_MODES:
            raise ValueError(f"Linear: act_quant must be one of {ACT_QUANT_MODES}, got {act_quant!r}")
        if activation not in ACTIVATION_CODES:
            raise ValueError(f"Linear: activation must be one of {', '.join(ACTIVATION_CODES)}, got {activation!r}")
        self.weight = weight
        self.layout = weight.layout
        self.act_quant = act_quant
        self.act = np.int32(ACTIVATION_CODES[activation])
        self.act_scale, self.act_zero_point = act_params("Linear", act_quant, act_scale, act_zero_point)
        if self.layout == "csr":
            indptr, cols = host.csr_device_arrays(weight)
            most = host.csr_max_row_entries(weight)
        else:
            self.count = host.nm_count(weight)
            cols = host.nm_column_indices(weight)
            most = self.count
        if act_quant == "none":
            values = host.float_values(weight)
        else:
            if weight.params.get("quant", "none") != "int8":
                raise ValueError(f"Linear: act_quant={act_quant!r} needs integer weights, but {weight.layout} weight "
                                 f"{weight.name!r} stores float values (quant='none'); use act_quant='none'")
            max_abs_qx = 127 if act_quant == "dynamic" else max(127 - self.act_zero_point, self.act_zero_point + 128)
            bound = host.max_entries_int32(max_abs_qx)
            if most > bound:
                raise ValueError(f"Linear: weight {weight.name!r} has a row with {most} stored entries; the cupy "
                                 f"int8 kernel's int32 sum is exact up to {bound} for act_quant={act_quant!r} "
                                 f"(2^31 / (127 * {max_abs_qx})): use another backend")
            qw, w_scale = host.stored_int8(weight), host.weight_scale64(weight)
        # host checks done: upload
        self.cols = to_device(cols)
        if self.layout == "csr":
            self.indptr = to_device(indptr)
        if act_quant == "none":
            self.values = to_device(values)
        else:
            self.qw, self.w_scale = to_device(qw), to_device(w_scale)
        self.no_bias = to_device(np.zeros(1, np.float64))     # a valid double* when there is no bias

    def __call__(self, x, bias=None):
        """X (..., K) float32 on the device, bias float64 (N,) on the device or None ->
        Y (..., N) float32."""
        x = to_device(x)
        check_float32("Linear", "X", x)
        if x.ndim < 1 or x.shape[-1] != self.k:
            raise ValueError(f"Linear: X {x.shape} does not match packed weight {self.weight.name!r} of shape "
                             f"{self.weight.shape} (need X (..., K))")
        lead = tuple(x.shape[:-1])
        x2 = contiguous(x.reshape(-1, self.k))
        m = x2.shape[0]
        y = empty((m, self.n), np.float32)
        if m == 0:
            return y.reshape(*lead, self.n)
        has_bias = np.int32(bias is not None)
        bias = bias if bias is not None else self.no_bias        # never read when has_bias is 0
        grid = (-(-self.n // WARPS_PER_BLOCK), min(MAX_ROW_TILES, -(-m // ROWS_PER_TILE)))
        block = (32 * WARPS_PER_BLOCK,)
        dims = (np.int32(m), np.int32(self.n), np.int32(self.k))
        if self.act_quant == "none":
            if self.layout == "csr":
                launch("csr_spmm_int8.cu", "csr_float_linear", grid, block,
                       (x2, self.indptr, self.cols, self.values, bias, has_bias, self.act, y, *dims))
            else:
                launch("nm_int8.cu", "nm_float_linear", grid, block,
                       (x2, self.cols, self.values, np.int64(self.count), bias, has_bias, self.act, y, *dims))
            return y.reshape(*lead, self.n)
        qx, x_scale, step = quantize_rows(x2, self.act_quant, self.act_scale, self.act_zero_point)
        quant = (qx, x_scale, np.int64(step), np.int32(self.act_zero_point if self.act_quant == "static" else 0))
        if self.layout == "csr":
            launch("csr_spmm_int8.cu", "csr_int8_linear", grid, block,
                   (*quant, self.indptr, self.cols, self.qw, self.w_scale, bias, has_bias, self.act, y, *dims))
        else:
            launch("nm_int8.cu", "nm_int8_linear", grid, block,
                   (*quant, self.cols, self.qw, np.int64(self.count), self.w_scale, bias, has_bias, self.act, y,
                    *dims))
        return y.reshape(*lead, self.n)


def _prepare(weight, a, weights):
    return SparsePlan(weight, **a.quant, activation=a.activation), DeviceConstants(weights, {2: np.float64})


def _compute(x, prepared, bias, a):
    plan, constants = prepared
    b = constants.get(2, bias)
    if b is not None and tuple(b.shape) != (plan.n,):
        raise ValueError(f"Linear: bias has shape {tuple(b.shape)}, expected ({plan.n},)")
    return plan(x, b)


# Kernel factory of (Linear, csr / nm, cupy) on kernels/gemm_front.py: the weight and a constant
# bias go to the device once; run(x, w, bias=None) -> (Y (..., N) float32 cupy array,).
sparse_linear_factory = gemm_factory("Linear", _prepare, _compute, fused=True, name="sparse_linear_factory")
