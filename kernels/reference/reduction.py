"""Reductions, Softmax and normalisation.

Float inputs are reduced in float64 and the result rounded once to the input dtype: the spec
is the exact value, and a fast kernel's float32 accumulation error is what the tolerances in
its tests allow for. Integer sums accumulate in the input dtype (wrapping like onnxruntime's
T accumulator); an integer mean truncates toward zero (C integer division).

Reduction axes are attributes in the qrt IR for every opset (see kernels/core/ops.py):
``axes`` None or [] reduces every axis, unless ``noop_with_empty_axes`` is 1, in which case
the input is returned unchanged (an alias: outputs are read-only).
"""
from __future__ import annotations

import numpy as np

from ._common import is_float, is_int, normalize_axis, prod, reference_kernel


def _reduce_axes(x, axes, noop_with_empty_axes):
    """The axes tuple to reduce, or None for "return the input unchanged"."""
    if axes is None or len(axes) == 0:
        return None if noop_with_empty_axes else tuple(range(x.ndim))
    out = tuple(sorted(normalize_axis(a, x.ndim, "reduction axis") for a in axes))
    if len(set(out)) != len(out):
        raise ValueError(f"reduction axes {list(axes)} repeat an axis")
    return out


def _lowest(dtype):
    """The identity of max: -inf, the integer minimum, or False."""
    if is_float(dtype):
        return -np.inf
    if is_int(dtype):
        return np.iinfo(dtype).min
    return False


def _highest(dtype):
    """The identity of min: +inf, the integer maximum, or True."""
    if is_float(dtype):
        return np.inf
    if is_int(dtype):
        return np.iinfo(dtype).max
    return True


@reference_kernel("ReduceSum")
def reduce_sum_ref(x, axes=None, keepdims=1, noop_with_empty_axes=0):
    """Sum over ``axes``; X numeric T of any rank; output T, reduced axes kept as 1 if keepdims.
    An empty reduction gives 0."""
    ax = _reduce_axes(x, axes, noop_with_empty_axes)
    if ax is None:
        return x
    if is_float(x.dtype):
        return np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=np.float64).astype(x.dtype)
    return np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=x.dtype)


@reference_kernel("ReduceMean")
def reduce_mean_ref(x, axes=None, keepdims=1, noop_with_empty_axes=0):
    """Mean over ``axes``; X numeric T; output T, reduced axes kept as 1 if keepdims.
    Integer means truncate toward zero (C integer division). The mean of an empty set is
    undefined in ONNX; here it is 0, as in onnxruntime."""
    ax = _reduce_axes(x, axes, noop_with_empty_axes)
    if ax is None:
        return x
    keep = bool(keepdims)
    count = prod(x.shape[a] for a in ax)
    if is_float(x.dtype):
        total = np.sum(x, axis=ax, keepdims=keep, dtype=np.float64)
        return (total / max(count, 1)).astype(x.dtype)
    total = np.sum(x, axis=ax, keepdims=keep, dtype=np.int64)
    # truncating division: |total| // count with the sign of total
    return (np.sign(total) * (np.abs(total) // max(count, 1))).astype(x.dtype)


@reference_kernel("ReduceMax")
def reduce_max_ref(x, axes=None, keepdims=1, noop_with_empty_axes=0):
    """Maximum over ``axes``; X numeric or bool T; output T, reduced axes kept as 1 if keepdims.
    An empty reduction gives the lowest value of T (-inf for floats), as ONNX 18 specifies."""
    ax = _reduce_axes(x, axes, noop_with_empty_axes)
    if ax is None:
        return x
    return np.max(x, axis=ax, keepdims=bool(keepdims), initial=_lowest(x.dtype))


@reference_kernel("ReduceMin")
def reduce_min_ref(x, axes=None, keepdims=1, noop_with_empty_axes=0):
    """Minimum over ``axes``; X numeric or bool T; output T, reduced axes kept as 1 if keepdims.
    An empty reduction gives the highest value of T (+inf for floats), as ONNX 18 specifies."""
    ax = _reduce_axes(x, axes, noop_with_empty_axes)
    if ax is None:
        return x
    return np.min(x, axis=ax, keepdims=bool(keepdims), initial=_highest(x.dtype))


@reference_kernel("Softmax")
def softmax_ref(x, axis=-1):
    """exp(X) / sum(exp(X)) along one ``axis`` (opset 13 semantics, not the flattened 2-D
    form of opset < 13); float T; output T, same shape.

    The maximum along the axis is subtracted first so exp never overflows; computed in
    float64 and rounded once to T.
    """
    axis = normalize_axis(axis, x.ndim)
    if x.size == 0:
        return x.copy()
    x64 = np.asarray(x, np.float64)
    e = np.exp(x64 - np.max(x64, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


@reference_kernel("LayerNormalization")
def layer_normalization_ref(x, scale, bias=None, axis=-1, epsilon=1e-5):
    """(X - mean) / sqrt(var + epsilon) * scale + bias, mean and (biased) variance taken over
    axes [axis, ..., rank-1]; X float T of shape (..., *D) with D = X.shape[axis:], scale and
    bias broadcastable to D (bias optional); output T, same shape as X.

    Statistics and the affine step in float64, rounded once to T. Only the Y output: the
    optional Mean / InvStdDev outputs of ONNX are not part of the qrt op.
    """
    axis = normalize_axis(axis, x.ndim)
    axes = tuple(range(axis, x.ndim))
    x64 = np.asarray(x, np.float64)
    mean = np.mean(x64, axis=axes, keepdims=True)
    var = np.mean(np.square(x64 - mean), axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + epsilon) * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.astype(x.dtype)


@reference_kernel("BatchNormalization")
def batch_normalization_ref(x, scale, bias, mean, var, epsilon=1e-5):
    """Inference form: (X - mean) / sqrt(var + epsilon) * scale + bias per channel;
    X float T of shape (N, C, *spatial), scale, bias, mean, var of shape (C,); output T,
    same shape. Computed in float64, rounded once to T."""
    if x.ndim < 2:
        raise ValueError(f"BatchNormalization: X must be (N, C, ...), got shape {x.shape}")
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)

    def channel(p):
        return np.asarray(p, np.float64).reshape(per_channel)

    y = (np.asarray(x, np.float64) - channel(mean)) / np.sqrt(channel(var) + epsilon)
    return (y * channel(scale) + channel(bias)).astype(x.dtype)
