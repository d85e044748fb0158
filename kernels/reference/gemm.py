"""GEMM-like ops: MatMul, Linear, Gemm.

Shapes use M (rows of the activation), N (outputs), K (the reduced dimension). Float inputs
are multiplied and accumulated in float64 and the result is rounded once to the input dtype:
the reference is the exact product, so a fast kernel's float32 (or int32) accumulation error
over K is the only error its test tolerance has to cover. Integer MatMul accumulates in the
input dtype (wrapping on overflow, like onnxruntime).
"""
from __future__ import annotations

import numpy as np

from ._common import is_float, reference_kernel


def _f64(a):
    return np.asarray(a, np.float64)


@reference_kernel("MatMul")
def mat_mul_ref(a, b):
    """numpy matmul semantics (= ONNX MatMul): A (..., M, K) @ B (..., K, N) -> (..., M, N),
    batch dims broadcast; a 1-D A is (K,) -> a row, a 1-D B is (K,) -> a column, and the
    added dim is dropped from the result. A, B of one dtype T; output T."""
    if is_float(a.dtype):
        return np.matmul(_f64(a), _f64(b)).astype(a.dtype)
    return np.matmul(a, b)


@reference_kernel("Linear")
def linear_ref(x, weight, bias=None, act_quant="none", act_scale=None, act_zero_point=0):
    """Y = X @ weight.T + bias, like torch.nn.Linear.

    X (..., K) float32, weight (N, K) (a dense initializer: its packed forms are other
    layouts, kernels/reference/packed.py), bias (N,) or None; Y (..., N) in X's dtype,
    computed in float64. A dense float weight has float activations: act_quant must be "none".
    """
    if act_quant != "none":
        raise ValueError(f"Linear with a dense weight takes act_quant='none', got {act_quant!r}")
    if weight.ndim != 2 or x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"Linear: X {x.shape} and weight {weight.shape} do not match "
                         "(need X (..., K), weight (N, K))")
    y = _f64(x) @ _f64(weight).T
    if bias is not None:
        y = y + _f64(bias)
    return y.astype(x.dtype)


@reference_kernel("Gemm")
def gemm_ref(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    """Y = alpha * A' @ B' + beta * C, with A' = A.T if transA else A (M, K), B' = B.T if
    transB else B (K, N), and C optional, broadcastable to (M, N); float T; Y (M, N) of T,
    computed in float64."""
    a2 = _f64(a).T if transA else _f64(a)
    b2 = _f64(b).T if transB else _f64(b)
    y = alpha * (a2 @ b2)
    if c is not None:
        y = y + beta * _f64(c)
    return y.astype(a.dtype)
