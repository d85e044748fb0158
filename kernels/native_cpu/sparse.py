"""Linear on sparse int8 weights, native backend: ("Linear", "native", "csr" / "bsr" / "nm").

The kernels are csrc/sparse_gemm*.cpp (numerics and packed layouts written down in
csrc/sparse_gemm.h): X quantized per row (dynamic) or with the node's static scale by the int8
GEMM's own quantizer, an exact integer product with the stored int8 values (AVX-512 VNNI: ELL
vectors over 16-row blocks for csr / nm / unaligned bsr, column quads for bsr blocks of whole
4-column quads; AVX2: the same ELL vectors, 8 rows per ymm, path "ell_avx2"; scalar int64 on
other CPUs and for K > 33025), the float64 epilogue in the reference's order. For act_quant "dynamic" and "static" with float32 X the result is
kernels/reference/packed.py's bit for bit (tests/test_native_sparse.py asserts equality).

Plan time (the factory): the layout's fields are checked and packed once
(``_native.sparse_int8_csr`` / ``_bsr`` / ``_nm``). Run time: X (..., K) is viewed as (M, K)
rows, Y (M, N) reshaped to (..., N).

Other cases, each with the numerics of the code it runs (not fast, not small):

* act_quant "none" (float values, quant "none", or weight-only int8): float32 BLAS matmul with
  the weight densified once at plan time (PackedTensor.to_dense()), as int8.py's
  weight-only path: within (K + 2) * 2^-24 * sum_k |x_k w_nk| of the reference.
* X in another float dtype (float64, float16): the reference's own arithmetic.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.core.layouts import PackedTensor
from kernels.gemm_front import gemm_factory
from kernels.reference.packed import PreparedWeight
from kernels.registry import register

from . import _native
from .int8 import bound_linear_run, packed_linear

SPARSE_LAYOUTS = ("csr", "bsr", "nm")
def pack_sparse(weight: PackedTensor, lanes: str = "auto", quad_rows: int = -1, pairs: int = -1, segment: int = -1):
    """The native packed form of a csr / bsr / nm weight with quant "int8", logical (N, K).

    Fields as kernels/core/layouts.py stores them; a per-tensor scale (1,) becomes one per row.
    ``lanes`` / ``quad_rows`` / ``pairs`` / ``segment`` force the packed structures (tests,
    benchmarks; see ``_native.sparse_int8_csr``)."""
    n, k = weight.shape
    f = weight.fields
    scale = np.ascontiguousarray(np.broadcast_to(np.asarray(f["scale"]).reshape(-1), (n,)), np.float32)
    qdata = np.ascontiguousarray(f["qdata"])
    if weight.layout == "csr":
        return _native.sparse_int8_csr(f["indptr"], f["indices"], qdata, scale, (n, k), lanes, quad_rows, pairs, segment)
    if weight.layout == "bsr":
        return _native.sparse_int8_bsr(f["indptr"], f["indices"], qdata, scale, (n, k), lanes, quad_rows, pairs, segment)
    p = weight.params
    return _native.sparse_int8_nm(f["meta"], qdata, scale, (n, k), int(p.get("n", 2)), int(p.get("m", 4)),
                                  lanes, quad_rows, pairs, segment)


class SparsePlan(PreparedWeight):
    """One Linear node's csr / bsr / nm weight, prepared once.

    weight: PackedTensor of logical shape (N, K); quant "int8" (qdata, scale (N,) or (1,))
    for the integer modes, any quant for act_quant "none"."""

    def __init__(self, weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0):
        if weight.layout not in SPARSE_LAYOUTS:
            raise ValueError(f"Linear: the native sparse kernel takes layouts {SPARSE_LAYOUTS}, got {weight.layout!r}")
        super().__init__(weight, act_quant, act_scale, act_zero_point)
        if act_quant == "none":
            self.dense32 = np.ascontiguousarray(weight.to_dense().reshape(self.n, self.k), np.float32)
            return
        if weight.params.get("quant", "none") != "int8":
            raise ValueError(f"Linear: act_quant={act_quant!r} needs integer weights, but {weight.layout} weight "
                             f"{weight.name!r} stores float values (quant='none'); use act_quant='none'")
        self.packed = pack_sparse(weight)


def sparse_linear(x: Any, plan: SparsePlan, bias: Any = None, activation: str = "none") -> np.ndarray:
    """Y (..., N) = act(quant(X) @ W.T + bias) in X's dtype; X (..., K) float, W logical (N, K),
    bias (N,) or None, activation one of kernels.core.ops ACTIVATIONS (applied by the kernel's
    threads in one pass over Y for float32 X: no copy, no separate op)."""
    return packed_linear(_native.sparse_int8_linear, x, plan, bias, activation)


_factory = gemm_factory("Linear", lambda w, a, _: SparsePlan(w, **a.quant),
                        lambda x, plan, bias, a: sparse_linear(x, plan, bias, a.activation), fused=True,
                        name="sparse_linear_factory",
                        fast=lambda plan, a, run: bound_linear_run(plan, run, a.activation))


for _layout in SPARSE_LAYOUTS:
    register("Linear", "native", _layout)(_factory)
