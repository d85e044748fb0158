"""float32 Linear, MatMul, Gemm and Conv through BLAS sgemm (numpy float32 matmul): the fp32 layers of the CPU
backends (numba and native register these factories), so a float32 layer never falls to the
float64 reference on a fast path. Other dtypes, and shapes the reference refuses, go to the
reference (which raises its errors).

Linear's weight is prepared once as a contiguous (K, N) float32 array (W.T), the bias added
in place. Conv: im2col of a strided view (the reference's ``_windows``) into one float32
(N, G, C/G * kernel, positions) buffer and one batched sgemm over images and groups, written
straight into the (N, M, *out) output; 1x1 stride-1 unpadded convs skip im2col; the weight
prepared once as (G, M/G, C/G * kernel).

Not bit exact: each of the K products and K - 1 sums rounds to float32 (the bound the
conformance suite applies, tests/conformance_cases.py). Weights that are initializers are
prepared once (transposed / reshaped float32); a BLAS call is noted for the element-wise
kernels' thread policy (kernels/blas_activity.py).
"""
from __future__ import annotations

import numpy as np

from kernels.blas_activity import note_blas_call
from kernels.fused_dispatch import reference_of as _reference
from kernels.reference._common import prod
from kernels.reference.conv_pool import _out_size, _spatial_attrs, _windows
from kernels.registry import bound_dense

F32 = np.dtype(np.float32)


class _Prepared:
    """An initializer input converted once at plan time (``convert(array)``), used when
    ``run`` receives that same array; any other array is converted on the call."""

    def __init__(self, weights: dict, index: int, convert):
        t = weights.get(index)
        self.source = t.fields["data"] if t is not None and t.layout == "dense" else None
        self.convert = convert
        self.value = convert(self.source) if self.source is not None else None

    def get(self, array):
        return self.value if array is self.source else self.convert(array)


def _is_f32(*arrays) -> bool:
    return all(a is None or a.dtype == F32 for a in arrays)


def _check_dense_act(op: str, attrs: dict) -> None:
    if attrs.get("act_quant", "none") != "none":
        raise ValueError(f"{op} with a dense weight takes act_quant='none', got {attrs['act_quant']!r}")


def linear_factory(attrs: dict, weights: dict):
    """Y (..., N) = X (..., K) @ W.T + b; W (N, K) prepared once as contiguous (K, N) float32."""
    _check_dense_act("Linear", attrs)
    ref = _reference("Linear", attrs, weights)
    weight_t = _Prepared(weights, 1, lambda w: np.ascontiguousarray(w.T, dtype=F32) if w.ndim == 2 else None)
    bias32 = _Prepared(weights, 2, lambda b: np.ascontiguousarray(b, dtype=F32))
    bound = bound_dense(weights, 1)

    def run(x, w, b=None):
        w = w if bound is None else bound      # a bound weight's slot is not read (kernels/registry.py)
        if not _is_f32(x, w, b) or w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[1]:
            return ref(x, w, b)       # other dtypes; shape errors are the reference's to raise
        wt = weight_t.get(w)          # (K, N)
        n = wt.shape[1]
        m = prod(x.shape[:-1])
        y = np.empty(x.shape[:-1] + (n,), F32)
        np.matmul(x.reshape(m, wt.shape[0]), wt, out=y.reshape(m, n))
        note_blas_call()
        if b is not None:
            y += bias32.get(b)
        return (y,)
    return run


def mat_mul_factory(attrs: dict, weights: dict):
    """numpy matmul semantics, float32 (sgemm per batch)."""
    ref = _reference("MatMul", attrs, weights)

    def run(a, b):
        if not _is_f32(a, b):
            return ref(a, b)
        y = np.matmul(a, b)
        note_blas_call()
        return (y,)
    return run


def gemm_factory(attrs: dict, weights: dict):
    """Y (M, N) = alpha * A' @ B' + beta * C in float32."""
    ref = _reference("Gemm", attrs, weights)
    alpha, beta = F32.type(attrs["alpha"]), F32.type(attrs["beta"])
    trans_a, trans_b = bool(attrs["transA"]), bool(attrs["transB"])

    def run(a, b, c=None):
        if not _is_f32(a, b, c) or a.ndim != 2 or b.ndim != 2:
            return ref(a, b, c)
        y = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
        note_blas_call()
        if alpha != 1:
            y *= alpha
        if c is not None:
            y += c if beta == 1 else beta * c
        return (y,)
    return run


def _conv_weight(w: np.ndarray, group: int) -> np.ndarray:
    """W (M, C/G, *kernel) -> contiguous float32 (G, M/G, C/G * prod(kernel))."""
    m = w.shape[0]
    return np.ascontiguousarray(w, dtype=F32).reshape(group, m // group, -1)


def im2col_numpy(x, kernel, strides, pb, pe, dilations, out):
    """cols (N, C * prod(kernel), prod(out)) float32 of X (N, C, *spatial): row (c, tap), one
    column per output position, 0 in the padding (a strided window view made contiguous)."""
    nsp = x.ndim - 2
    n, c = x.shape[:2]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(pb, pe))) if any(pb + pe) else x
    win = _windows(xp, kernel, strides, dilations, out)                   # (N, C, *out, *kernel)
    # (N, C, *kernel, *out): one row per (channel, tap), one column per position
    perm = (0, 1) + tuple(range(2 + nsp, 2 + 2 * nsp)) + tuple(range(2, 2 + nsp))
    return np.ascontiguousarray(win.transpose(perm)).reshape(n, c * prod(kernel), prod(out))


def _conv_f32(x, w3, kernel, strides, pads, dilations, group, im2col=im2col_numpy):
    """Conv of float32 X (N, C, *spatial) with prepared w3 (G, M/G, C/G * kernel), no bias."""
    nsp = x.ndim - 2
    n, c = x.shape[:2]
    cg = c // group
    mg = w3.shape[1]
    strides, pb, pe, dilations = _spatial_attrs(nsp, strides, pads, dilations)
    out = [_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pb[i], pe[i], 0)
           for i in range(nsp)]
    positions = prod(out)
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pb + pe):
        cols = np.ascontiguousarray(x).reshape(n, group, cg, positions)      # 1x1: no im2col
    else:
        # rows (c, tap) with c = g * C/G + c': group g's rows are one block, so the split is a view
        cols = im2col(x, kernel, strides, pb, pe, dilations, out).reshape(n, group, -1, positions)
    y = np.empty((n, group * mg, *out), F32)
    # (G, M/G, CK) @ (N, G, CK, P) -> (N, G, M/G, P), which is y's memory
    np.matmul(w3, cols, out=y.reshape(n, group, mg, positions))
    note_blas_call()
    return y


def conv_factory(attrs: dict, weights: dict, im2col=im2col_numpy):
    """Grouped, strided, dilated, padded Conv (NCHW, 1-D and 2-D) in float32, im2col + sgemm.
    ``im2col``: a backend's own (im2col_numpy's arguments and result), numpy's by default."""
    _check_dense_act("Conv", attrs)
    ref = _reference("Conv", attrs, weights)
    group = int(attrs["group"])
    strides, pads, dilations = attrs["strides"], attrs["pads"], attrs["dilations"]
    weight3 = _Prepared(weights, 1, lambda w: _conv_weight(w, group))
    bias32 = _Prepared(weights, 2, lambda b: np.ascontiguousarray(b, dtype=F32))
    bound = bound_dense(weights, 1)

    def run(x, w, b=None):
        w = w if bound is None else bound      # a bound weight's slot is not read (kernels/registry.py)
        m = w.shape[0]
        if (not _is_f32(x, w, b) or x.ndim < 3 or w.ndim != x.ndim or m % group
                or x.shape[1] != w.shape[1] * group):
            return ref(x, w, b)       # other dtypes; shape errors are the reference's to raise
        y = _conv_f32(x, weight3.get(w), [int(k) for k in w.shape[2:]], strides, pads, dilations, group, im2col)
        if b is not None:
            per_channel = y.reshape(y.shape[0], m, -1)     # a view of y
            per_channel += bias32.get(b)[:, None]
        return (y,)
    return run


# op -> factory, registered by each CPU backend under its own name
FACTORIES = {"Linear": linear_factory, "MatMul": mat_mul_factory, "Gemm": gemm_factory, "Conv": conv_factory}
