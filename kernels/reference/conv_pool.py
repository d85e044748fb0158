"""Convolution and pooling over NCHW tensors: X (N, C, *spatial), 1-D (N, C, W) or 2-D
(N, C, H, W); the code is written for any number of spatial dims.

Attributes are explicit (the importer resolves ONNX auto_pad): ``pads`` is
[begin_0, begin_1, ..., end_0, end_1, ...]; None means no padding, ``strides`` and
``dilations`` None mean all ones. Output size along a spatial dim with input size L, kernel
k, stride s, dilation d and pads b, e (floor, or ceil with ceil_mode=1):

    out = floor((L + b + e - (d * (k - 1) + 1)) / s) + 1

Every kernel-sized window is built as a strided view of the padded input (``_windows``), so
Conv is im2col + one matmul per group and pooling is a reduction over the window axes.
Float math is float64, rounded once to the input dtype.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._common import is_float, prod, reference_kernel


def _spatial_attrs(nsp, strides, pads, dilations):
    strides = [1] * nsp if strides is None else [int(s) for s in strides]
    pads = [0] * (2 * nsp) if pads is None else [int(p) for p in pads]
    dilations = [1] * nsp if dilations is None else [int(d) for d in dilations]
    if len(strides) != nsp or len(pads) != 2 * nsp or len(dilations) != nsp:
        raise ValueError(f"{nsp} spatial dims need {nsp} strides, {2 * nsp} pads and {nsp} "
                         f"dilations; got strides={strides}, pads={pads}, dilations={dilations}")
    if min(strides + dilations, default=1) < 1 or min(pads, default=0) < 0:
        raise ValueError(f"strides and dilations must be >= 1 and pads >= 0; got "
                         f"strides={strides}, pads={pads}, dilations={dilations}")
    return strides, pads[:nsp], pads[nsp:], dilations


def _windows(xp, kernel, strides, dilations, out):
    """Every window of padded ``xp`` (N, C, *spatial) as a view (N, C, *out, *kernel):
    window i starts at i * stride, its taps are ``dilation`` apart, ``out`` windows per dim."""
    nsp = len(kernel)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    w = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nsp)))  # (N, C, *starts, *extent)
    starts = tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(strides, out))
    taps = tuple(slice(None, None, d) for d in dilations)
    return w[(slice(None), slice(None)) + starts + taps]


def _out_size(length, k, s, d, pad_begin, pad_end, ceil_mode):
    span = length + pad_begin + pad_end - (d * (k - 1) + 1)
    if span < 0:
        raise ValueError(f"kernel extent {d * (k - 1) + 1} is larger than the padded input "
                         f"{length + pad_begin + pad_end}")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # ceil_mode: a last window that would start inside the end padding is dropped
    # (ONNX >= 19 wording, onnxruntime, PyTorch)
    if ceil_mode and (out - 1) * s >= length + pad_begin:
        out -= 1
    return out


def conv_by_gemm(x, wshape, strides, pads, dilations, group, gemm):
    """The im2col driver every reference Conv shares (dense here, packed layouts in packed.py).

    X (N, C, *spatial); wshape (M, C/group, *kernel); ``gemm(cols, rows)`` gets the float64
    im2col matrix of one group, cols (N * prod(out), C/group * prod(kernel)) with one row per
    (image, output position) and one column per (channel, tap), and the slice of weight rows
    (output channels) of that group, and returns (N * prod(out), M/group) float64.
    Returns Y (N, M, *out) float64, without bias."""
    nsp = x.ndim - 2
    n = x.shape[0]
    m, cg = wshape[:2]
    kernel = [int(k) for k in wshape[2:]]
    strides, pb, pe, dilations = _spatial_attrs(nsp, strides, pads, dilations)
    out = [_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pb[i], pe[i], 0)
           for i in range(nsp)]
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0)] + list(zip(pb, pe)))
    win = _windows(xp, kernel, strides, dilations, out)       # (N, C, *out, *kernel)
    mg = m // group
    y = np.empty((n, m, *out), np.float64)
    for g in range(group):
        cols = np.moveaxis(win[:, g * cg:(g + 1) * cg], 1, 1 + nsp)   # (N, *out, C/g, *kernel)
        cols = cols.reshape(n * prod(out), cg * prod(kernel))
        yg = gemm(cols, slice(g * mg, (g + 1) * mg)).reshape(n, *out, mg)   # (N, *out, M/g)
        y[:, g * mg:(g + 1) * mg] = np.moveaxis(yg, -1, 1)
    return y


@reference_kernel("Conv")
def conv_ref(x, w, b=None, strides=None, pads=None, dilations=None, group=1,
             act_quant="none", act_scale=None, act_zero_point=0):
    """Grouped, strided, dilated, zero-padded convolution (cross-correlation, as ONNX).

    X (N, C, *spatial) float T, W (M, C/group, *kernel), B (M,) or None;
    Y (N, M, *out) of T. Channels split into ``group`` groups: output channels
    [g*M/group, (g+1)*M/group) see input channels [g*C/group, (g+1)*C/group).
    """
    if act_quant != "none":
        raise ValueError(f"Conv with a dense weight takes act_quant='none', got {act_quant!r}")
    nsp = x.ndim - 2
    c = x.shape[1]
    m, cg = w.shape[:2]
    if w.ndim != x.ndim or c != cg * group or m % group:
        raise ValueError(f"Conv: X {x.shape}, W {w.shape} and group={group} do not match "
                         "(need W (M, C/group, *kernel) with M divisible by group)")
    w2 = np.asarray(w, np.float64).reshape(m, -1)
    y = conv_by_gemm(x, w.shape, strides, pads, dilations, group, lambda cols, rows: cols @ w2[rows].T)
    if b is not None:
        y += np.asarray(b, np.float64).reshape((m,) + (1,) * nsp)
    return y.astype(x.dtype)


def _pool_setup(x, kernel_shape, strides, pads, dilations, ceil_mode):
    """Output sizes and the (begin, end) padding per spatial dim, with the end padding grown
    where ceil_mode makes the last window overhang the explicit pads."""
    nsp = len(kernel_shape)
    if x.ndim != nsp + 2:
        raise ValueError(f"pool: X {x.shape} does not have 2 + {nsp} dims for kernel_shape {kernel_shape}")
    kernel = [int(k) for k in kernel_shape]
    strides, pb, pe, dilations = _spatial_attrs(nsp, strides, pads, dilations)
    out, pad_width = [], [(0, 0), (0, 0)]
    for i in range(nsp):
        length = x.shape[2 + i]
        o = _out_size(length, kernel[i], strides[i], dilations[i], pb[i], pe[i], ceil_mode)
        needed = (o - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        out.append(o)
        pad_width.append((pb[i], max(pe[i], needed - length - pb[i])))
    return kernel, strides, dilations, out, pad_width, (pb, pe)


@reference_kernel("MaxPool")
def max_pool_ref(x, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0):
    """Maximum over each window; X (N, C, *spatial) float or int8/uint8 T; Y (N, C, *out) of T.
    Padding (and any ceil_mode overhang) never wins: it is -inf (the lowest integer).
    Only the Y output: ONNX's optional Indices output is not part of the qrt op."""
    kernel, strides, dilations, out, pad_width, _ = _pool_setup(
        x, kernel_shape, strides, pads, dilations, ceil_mode)
    lowest = -np.inf if is_float(x.dtype) else np.iinfo(x.dtype).min
    xp = np.pad(x, pad_width, constant_values=lowest)
    win = _windows(xp, kernel, strides, dilations, out)
    return np.max(win, axis=tuple(range(-len(kernel), 0)))


@reference_kernel("AveragePool")
def average_pool_ref(x, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0):
    """Mean over each window; X (N, C, *spatial) float T; Y (N, C, *out) of T.

    The divisor counts the window's elements inside the input (count_include_pad=0) or inside
    input + explicit pads (count_include_pad=1); a ceil_mode overhang beyond the explicit pads
    is never counted (ONNX >= 19, onnxruntime, PyTorch).
    """
    nsp = len(kernel_shape)
    kernel, strides, dilations, out, pad_width, (pb, pe) = _pool_setup(
        x, kernel_shape, strides, pads, None, ceil_mode)
    axes = tuple(range(-nsp, 0))
    xp = np.pad(np.asarray(x, np.float64), pad_width)
    total = np.sum(_windows(xp, kernel, strides, dilations, out), axis=axes)
    # the divisor: the same windows summed over a 0/1 mask of the positions that count
    lengths = x.shape[2:]
    counted = np.zeros((1, 1) + xp.shape[2:], np.float64)
    if count_include_pad:
        region = tuple(slice(0, pb[i] + lengths[i] + pe[i]) for i in range(nsp))
    else:
        region = tuple(slice(pb[i], pb[i] + lengths[i]) for i in range(nsp))
    counted[(0, 0) + region] = 1.0
    count = np.sum(_windows(counted, kernel, strides, dilations, out), axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(x.dtype)


@reference_kernel("GlobalAveragePool")
def global_average_pool_ref(x):
    """Mean over all spatial dims; X (N, C, *spatial) float T; Y (N, C, 1, ..., 1) of T,
    computed in float64."""
    axes = tuple(range(2, x.ndim))
    return np.mean(np.asarray(x, np.float64), axis=axes, keepdims=True).astype(x.dtype)
