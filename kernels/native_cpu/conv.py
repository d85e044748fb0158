"""Conv on packed weights, native backend: ("Conv", "native", layout) for int8, int4_grouped,
csr, bsr and nm.

A Python driver: im2col of X (N, C, *spatial) in float32, with the reference's patch order
(kernels/reference/conv_pool.conv_by_gemm: one row per (image, output position), one column
per (channel, tap), zero padding applied before the windows), then per group the native
Linear kernel of the layout on that group's weight rows, bias included in its epilogue.

Numerics. The im2col matrix holds X's float32 values unchanged (the reference's float64 copy
of them is exact), and the native int8 / sparse Linears quantize each row (one patch) on its
own for act_quant "dynamic", or with the node's static scale, exactly as the reference; their
float64 epilogue adds the bias in the reference's order and rounds once. So for float32 X and
act_quant "dynamic" / "static" the result equals kernels/reference/packed.packed_conv_ref bit
for bit (tests/test_native_int4_conv.py). act_quant "none" (weight-only, or sparse float
values) runs the layout's float32 path with the Linear's tolerance; int4_grouped Conv is its
weight-only kernel (csrc/int4_gemm.h's bound, K' = C/group * prod(kernel)).

Per group weights, prepared once at plan time: group = 1 uses the weight's own 2-D view; with
group > 1 int8 and int4_grouped slice their fields by rows, and the sparse layouts re-express
each group's rows as CSR built from the same stored integers (kernels.core.layouts.int_weight), an
exact re-encoding, so the integer products are unchanged.

int8 with act_quant "dynamic" / "static" does not go through this driver: the whole Conv is
one call of csrc/int8_conv.h (``_native.int8_conv2d``), which builds the same rows in C++ from a
channels-last copy of X, with each patch tap-major (ki, kj, c) and the weight's columns permuted
to match at plan time (``_tap_major``): the integer sums do not depend on the order, so the bits
are still packed_conv_ref's. numpy's im2col (a strided gather into a float32 matrix nine times
X's size for a 3 x 3 window) had cost 4-8x the int8 GEMM itself (RESULTS.md, "int8 Conv without
numpy's im2col"). A 1 x 1 window of stride 1 (no pads, one group) skips the patch rows and
their transposes there: csrc/int8_pointwise_conv.h works on NCHW memory with the same bits. That
kernel also applies the node's epilogue activation (HardSwish included); the other layouts
apply it on Y afterwards (``activate_after``), in place for float32.

Other cases run the reference (packed_conv_ref): X not float32, or more than 2 spatial dims.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kernels import blas_ops
from kernels.core.layouts import PackedTensor, int_weight
from kernels.gemm_front import F32_F64, activate_after, bias32_or_64, bias64, gemm_factory, weight_only
from kernels.reference._common import prod
from kernels.reference.conv_pool import _out_size, _spatial_attrs, _windows
from kernels.reference.packed import PreparedWeight, packed_conv_ref
from kernels.registry import CHANNEL_MEAN_ATTRS, bound_dense, fill_attrs, register

from . import _native
from .elementwise import reduce_mean_factory
from .int4 import Int4Plan, int4_linear
from .int8 import Int8Plan, int8_linear
from .sparse import SPARSE_LAYOUTS, SparsePlan, sparse_linear

CONV_LAYOUTS = ("int8", "int4_grouped") + SPARSE_LAYOUTS
NATIVE_SPATIAL_DIMS = (1, 2)      # other ranks: the reference driver

# one group's GEMM: (cols (R, K') float32 C-contiguous, bias (M/group,) float64 or None) -> (R, M/group) float32
GroupGemm = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def _rows_view(weight: PackedTensor, rows: slice, mg: int, kk: int) -> PackedTensor:
    """int8 / int4_grouped weight rows ``rows`` as a 2-D (mg, K') tensor (fields sliced)."""
    f = weight.fields
    m = weight.shape[0]
    sub = {}
    for name, a in f.items():
        a = np.asarray(a)
        if name == "qdata" and weight.layout == "int8":
            sub[name] = np.ascontiguousarray(a.reshape(m, kk)[rows])
        elif a.shape[0] == m and not (a.ndim == 1 and m == 1):
            sub[name] = np.ascontiguousarray(a[rows])
        else:
            sub[name] = a            # per-tensor scale / zero point (1,)
    return PackedTensor(f"{weight.name}[{rows.start}:{rows.stop}]", weight.layout, weight.dtype, (mg, kk), sub,
                        dict(weight.params))


def _tap_major(weight: PackedTensor, group: int) -> list:
    """The int8 weight (M, C/group, *kernel) as one ``_native.Int8Weight`` per group, its columns
    tap-major: (M/group, *kernel, C/group) flattened, the order of csrc/int8_conv.h's rows."""
    f = weight.fields
    m = weight.shape[0]
    mg = m // group
    q = np.asarray(f["qdata"]).reshape(weight.shape)
    q = np.moveaxis(q, 1, -1).reshape(m, -1)             # (M, kernel..., C/group) -> (M, K')
    scale = np.broadcast_to(np.asarray(f["scale"], np.float32).reshape(-1), (m,))
    zp = f.get("zero_point")
    if zp is not None:
        zp = np.broadcast_to(np.asarray(zp, np.int8).reshape(-1), (m,))
    rows = [slice(g * mg, (g + 1) * mg) for g in range(group)]
    return [_native.Int8Weight(np.ascontiguousarray(q[r]), np.ascontiguousarray(scale[r]),
                               None if zp is None else np.ascontiguousarray(zp[r])) for r in rows]


def _sparse_group_csr(iw, rows: slice, mg: int, kk: int):
    """The native CSR weight of rows ``rows`` of an integer sparse weight (exact re-encoding)."""
    q = iw.q[rows]
    nz = q != 0
    indptr = np.zeros(mg + 1, np.int64)
    np.cumsum(nz.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(nz)[1].astype(np.int32)
    qdata = q[nz].astype(np.int8)
    scale = np.ascontiguousarray(iw.scale[rows].reshape(-1), np.float32)
    return _native.sparse_int8_csr(indptr, indices, qdata, scale, (mg, kk), "auto", -1)


def planar(x: np.ndarray, kernel, strides, pb, pe, dilations) -> tuple:
    """The native 2-D window kernels' arguments for a 1-D or 2-D window over X (N, C, *spatial):
    (X as C-contiguous (N, C, H, W), kernel, strides, pads (top, left, bottom, right),
    dilations). A 1-D window is a 2-D one over a single row (kernel, stride and dilation 1 down
    the rows, no pads there); ``unplanar`` takes the row axis off the result again."""
    return (planar_x(x), *window_args(x.ndim - 2, kernel, strides, pb, pe, dilations))


def planar_x(x: np.ndarray) -> np.ndarray:
    """``planar``'s X: C-contiguous (N, C, H, W), a 1-D window's X as one row."""
    return np.ascontiguousarray(x if x.ndim == 4 else x[:, :, None, :])


def window_args(nsp: int, kernel, strides, pb, pe, dilations) -> tuple:
    """``planar``'s window arguments for ``nsp`` spatial dims: they depend on the node alone."""
    if nsp == 2:
        return list(kernel), list(strides), [pb[0], pb[1], pe[0], pe[1]], list(dilations)
    return [1, kernel[0]], [1, strides[0]], [0, pb[0], 0, pe[0]], [1, dilations[0]]


def unplanar(y: np.ndarray, nsp: int) -> np.ndarray:
    """A native 2-D kernel's (N, M, OH, OW) result as the (N, M, *out) of a ``nsp``-D window."""
    return y if nsp == 2 else y[:, :, 0, :]


class ConvPlan(PreparedWeight):
    """One Conv node's packed weight W (M, C/group, *kernel), prepared once per group."""

    def __init__(self, weight: Any, group: int = 1, act_quant: str = "none", act_scale: Any = None,
                 act_zero_point: Any = 0):
        if weight.layout not in CONV_LAYOUTS:
            raise ValueError(f"Conv: the native Conv takes layouts {CONV_LAYOUTS}, got {weight.layout!r}")
        if len(weight.shape) < 3:
            raise ValueError(f"Conv: packed weight {weight.name!r} has shape {weight.shape}, expected (M, C/group, *kernel)")
        super().__init__(weight, act_quant, act_scale, act_zero_point, "Conv")
        self.group = int(group)
        self.m, self.kk = self.n, self.k          # W's 2-D view: (M, C/group * prod(kernel))
        if self.group < 1 or self.m % self.group:
            raise ValueError(f"Conv: group={group} must be >= 1 and divide M = {self.m}")
        self.mg = self.m // self.group
        # int8 with quantized activations: the one-call kernel (csrc/int8_conv.h) for 1-D / 2-D X
        self.tap_major = None
        if weight.layout == "int8" and act_quant != "none" and len(weight.shape) - 2 in NATIVE_SPATIAL_DIMS:
            self.tap_major = _tap_major(weight, self.group)
        self.gemms: list[GroupGemm] = [self._group_gemm(g) for g in range(self.group)]

    def _group_gemm(self, g: int) -> GroupGemm:
        w, mg, kk = self.weight, self.mg, self.kk
        rows = slice(g * mg, (g + 1) * mg)
        quant = dict(act_quant=self.act_quant, act_scale=self.act_scale, act_zero_point=self.act_zero_point)
        if w.layout in ("int8", "int4_grouped"):
            sub = _rows_view(w, rows, mg, kk)
            if w.layout == "int8":
                plan8 = Int8Plan(sub, **quant)
                return lambda cols, b: int8_linear(cols, plan8, b)
            plan4 = Int4Plan(sub, **quant, op="Conv")
            return lambda cols, b: int4_linear(cols, plan4, b)
        if self.group == 1:
            view = PackedTensor(w.name, w.layout, w.dtype, (mg, kk), w.fields, w.params)
            plans = SparsePlan(view, **quant)
            return lambda cols, b: sparse_linear(cols, plans, b)
        if self.act_quant == "none":
            dense = np.ascontiguousarray(w.to_dense().reshape(self.m, kk)[rows], np.float32)
            return lambda cols, b: weight_only(cols, dense, b)
        if w.params.get("quant", "none") != "int8":
            raise ValueError(f"Conv: act_quant={self.act_quant!r} needs integer weights, but {w.layout} weight "
                             f"{w.name!r} stores float values (quant='none'); use act_quant='none'")
        packed = _sparse_group_csr(int_weight(w), rows, mg, kk)
        return lambda cols, b: _native.sparse_int8_linear(packed, cols, b, self.act_quant, self.act_scale,
                                                          self.act_zero_point)


def native_conv(x: Any, plan: ConvPlan, bias: Any = None, strides=None, pads=None, dilations=None,
                activation: str = "none") -> np.ndarray:
    """Y (N, M, *out) = act(conv(X, W) + bias) in X's dtype (numerics: module docstring)."""
    x = np.asarray(x)
    nsp = x.ndim - 2
    wshape = plan.weight.shape
    if x.dtype != np.float32 or nsp not in NATIVE_SPATIAL_DIMS:
        return activate_after(packed_conv_ref(x, plan.reference(), bias, strides, pads, dilations, plan.group),
                              activation, "native")
    n, c = x.shape[:2]
    cg = wshape[1]
    if len(wshape) != x.ndim or c != cg * plan.group:
        raise ValueError(f"Conv: X {x.shape} ({x.dtype}), packed weight {plan.weight.name!r} {wshape} and "
                         f"group={plan.group} do not match (need float X, W (M, C/group, *kernel), group | M)")
    kernel = [int(k) for k in wshape[2:]]
    strides, pb, pe, dilations = _spatial_attrs(nsp, strides, pads, dilations)
    out = [_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pb[i], pe[i], 0) for i in range(nsp)]
    if min(out) < 1:
        raise ValueError(f"Conv: X {x.shape} is smaller than the dilated kernel {kernel} with pads {pb + pe}")
    if plan.tap_major is not None:
        y = _native.int8_conv2d(plan.tap_major, *planar(x, kernel, strides, pb, pe, dilations),
                                bias32_or_64(bias, plan.m, "Conv"), plan.act_quant, plan.act_scale,
                                plan.act_zero_point, activation)
        return unplanar(y, nsp)
    b = bias64(bias, plan.m, "Conv")
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(pb, pe))) if any(pb) or any(pe) else x
    win = _windows(xp, kernel, strides, dilations, out)          # (N, C, *out, *kernel), a view
    rows = n * int(np.prod(out))
    mg = plan.mg
    y = np.empty((n, plan.m, *out), np.float32)
    for g in range(plan.group):
        cols = np.moveaxis(win[:, g * cg:(g + 1) * cg], 1, 1 + nsp)   # (N, *out, C/g, *kernel)
        cols = np.ascontiguousarray(cols).reshape(rows, plan.kk)
        bg = None if b is None else np.ascontiguousarray(b[g * mg:(g + 1) * mg])
        yg = plan.gemms[g](cols, bg).reshape(n, *out, mg)
        y[:, g * mg:(g + 1) * mg] = np.moveaxis(yg, -1, 1)
    if activation in ("hard_swish", "silu"):
        return activate_after(y, activation, "native")    # HardSwish's / Sigmoid's own native kernel
    if activation != "none":
        _native.apply_activation(y, activation)           # in place, the epilogue's code
    return y


# The Conv -> HardSwish pair and Conv -> Sigmoid -> Mul (SiLU) (runtime/fuse.py) as one node:
# csrc/int8_conv.h applies them in its epilogue too (the 1 x 1 kernel while each row of Y is in
# L1), the other layouts after.
FLOAT_CONV_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "hard_swish", "silu")

def bound_int8_conv(plan: ConvPlan, a, general):
    """The int8 Conv's common call bound at plan time (``gemm_factory``'s ``fast``): C-contiguous
    float32 X (N, C, H, W) whose windows fit, with a float32 / float64 bias (M,) or None, straight
    into ``_native.int8_conv2d``; every other call to ``general`` (native_conv: the same kernel,
    the same bits). About 5 us of Python a node less: a MobileNet has a dozen such Convs."""
    wshape = plan.weight.shape
    if plan.tap_major is None or len(wshape) != 4:
        return None
    try:
        strides, pb, pe, dilations = _spatial_attrs(2, a.strides, a.pads, a.dilations)
    except ValueError:
        return None               # native_conv raises it when the node runs
    kernel = [int(k) for k in wshape[2:]]
    pads = [pb[0], pb[1], pe[0], pe[1]]
    channels, m = wshape[1] * plan.group, plan.m
    # the smallest H and W whose padded extent holds one dilated window
    min_h = dilations[0] * (kernel[0] - 1) + 1 - pb[0] - pe[0]
    min_w = dilations[1] * (kernel[1] - 1) + 1 - pb[1] - pe[1]
    tail = (plan.act_quant, plan.act_scale, plan.act_zero_point, a.activation)
    weights, conv = plan.tap_major, _native.int8_conv2d
    ndarray, f32 = np.ndarray, np.dtype(np.float32)

    def run(x, _weight=None, bias=None):
        if (type(x) is ndarray and x.dtype == f32 and x.ndim == 4 and x.shape[1] == channels
                and x.shape[2] >= min_h and x.shape[3] >= min_w and x.flags.c_contiguous
                and (bias is None or (type(bias) is ndarray and bias.dtype in F32_F64 and bias.shape == (m,)))):
            return (conv(weights, x, kernel, strides, pads, dilations, bias, *tail),)
        return general(x, _weight, bias)
    return run


_conv_factory = gemm_factory(
    "Conv", lambda w, a, _: ConvPlan(w, a.group, **a.quant),
    lambda x, plan, bias, a: native_conv(x, plan, bias, a.strides, a.pads, a.dilations, a.activation),
    fused=True, name="native_conv_factory", fast=bound_int8_conv)
_conv_factory.fused_activations = FLOAT_CONV_ACTIVATIONS


for _layout in CONV_LAYOUTS:
    register("Conv", "native", _layout)(_conv_factory)


# --- float32 Conv: depthwise on its own kernel -------------------------------------------------

def _im2col(x, kernel, strides, pb, pe, dilations, out):
    """kernels/blas_ops.im2col_numpy's result by csrc/im2col.h for 1-D and 2-D windows (the same
    values: a copy), numpy's for others. A ResNet layer of 64 channels at 56 x 56 took 1-2 ms in
    numpy's form (RESULTS.md, "int8 Conv without numpy's im2col")."""
    if x.ndim - 2 in NATIVE_SPATIAL_DIMS:      # (N, C * taps, positions) either way: nothing to take off
        return _native.im2col(*planar(x, kernel, strides, pb, pe, dilations))
    return blas_ops.im2col_numpy(x, kernel, strides, pb, pe, dilations, out)


# Convs of one group whose patch (C * kh * kw) has at most this many values run on
# csrc/f32_channel_gemm.h: 1 x 1 stride-1 unpadded Convs as the channel product on X itself (up to
# POINTWISE_MAX_K), the others in its direct form (up to DIRECT_MAX_K: 3 x 3 over 128 channels);
# larger patches as sgemm on an im2col. Measured on the Xeon, 2 threads (RESULTS.md,
# "MobileNetV3-like: the float32 layers" and "int8 1 x 1 Convs on NCHW memory and the direct
# float32 Conv"): the channel product 1.4-3.2x sgemm + bias at K <= 128, the fp32
# MobileNetV3-like model 4.5 -> 3.0 ms with its 1 x 1 Convs of K = 240 and 480 on it; the direct
# form 1.3-3.9x the sgemm path on ResNet's 7 x 7 / 2 stem and 3 x 3 layers of 16-128 channels
# (then 45% of the FMA peak, 58-70% since its tiles take plain loads: "CNN layers again"), where
# the channel product on an im2col had been even with sgemm and the model 10% slower.
POINTWISE_MAX_K = 576
DIRECT_MAX_K = 1152


def dense_conv_factory(attrs: dict, weights: dict):
    """float32 Conv with a dense weight (initializer), 1-D or 2-D, the node's activation fused:
    depthwise Convs (group = C > 1, one input channel per group, W (M, 1, *kernel)) by
    csrc/depthwise_conv.h; group = 1 with a patch within the limits above by
    csrc/f32_channel_gemm.h on X itself (1 x 1, stride 1, unpadded) or its direct form
    (``_native.f32_conv2d``: the product on im2col's values without building im2col);
    everything else by kernels/blas_ops.py's sgemm on csrc/im2col.h's columns, the activation
    after it. As a
    grouped GEMM a depthwise Conv is one 9-column product per channel: a MobileNet-sized one
    (96 x 56 x 56, 3 x 3) took 1.0 ms there and 0.17 ms here (RESULTS.md, "int8 Conv without
    numpy's im2col"). All are float32 sums within the same bound of the float64 reference
    (module docstrings); the activation has the bits of its own op's native kernel. A
    "channel_mean" output (runtime/fuse.py: the squeeze-excite ReduceMean after a depthwise
    Conv) is summed by the depthwise kernel while each plane is in L1, elsewhere by the native
    ReduceMean after the kernel: its bits either way."""
    act = attrs.get("activation", "none")
    general = blas_ops.conv_factory({k: v for k, v in attrs.items() if k not in ("activation", "channel_mean")},
                                    weights, im2col=_im2col)
    group = int(attrs["group"])
    w = bound_dense(weights, 1)
    b_init = bound_dense(weights, 2)
    nsp = None if w is None else w.ndim - 2
    means = None
    if attrs.get("channel_mean"):
        means = reduce_mean_factory(fill_attrs("ReduceMean", CHANNEL_MEAN_ATTRS), {})

    def with_means(out: tuple) -> tuple:
        return out if means is None else (out[0], *means(out[0]))

    def fallback(x, _weight=None, b=None):
        (y,) = general(x, _weight, b)
        return with_means((activate_after(y, act, "native"),))

    if w is None or w.dtype != np.float32 or nsp not in NATIVE_SPATIAL_DIMS:
        return fallback
    depthwise = group > 1 and w.shape[1] == 1 and w.shape[0] % group == 0
    try:
        strides, pb, pe, dilations = _spatial_attrs(nsp, attrs["strides"], attrs["pads"], attrs["dilations"])
    except ValueError:
        return fallback           # the reference raises it when the node runs
    pointwise = all(k == 1 for k in w.shape[2:]) and all(s == 1 for s in strides) and not any(pb + pe)
    if not depthwise and (group != 1 or prod(w.shape[1:]) > (POINTWISE_MAX_K if pointwise else DIRECT_MAX_K)):
        return fallback
    # the weight as its kernel reads it, prepared once: (M, 1, kh, kw) for the depthwise one, (M, K) else
    wk = np.ascontiguousarray((w if nsp == 2 else w[:, :, None, :]) if depthwise else w.reshape(w.shape[0], -1))
    kernel = [int(k) for k in w.shape[2:]]
    channels = group if depthwise else w.shape[1]
    b32 = None if b_init is None or b_init.dtype != np.float32 else np.ascontiguousarray(b_init)
    k2, s2, pads4, d2 = window_args(nsp, kernel, strides, pb, pe, dilations)   # once per node

    def run(x, _weight=None, b=None):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == w.ndim and x.shape[1] == channels
                and (b is None or (isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape == (w.shape[0],)))):
            return fallback(x, _weight, b)        # other dtypes and shapes (their errors) as before
        bias = None if b is None else (b32 if b is b_init and b32 is not None else np.ascontiguousarray(b))
        # the output size, which also raises the reference's error for a window larger than X
        out = [_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pb[i], pe[i], 0) for i in range(nsp)]
        if depthwise or not pointwise:
            x4 = planar_x(x)
            if depthwise and means is not None and nsp == 2:   # the means summed by the kernel
                return _native.depthwise_conv2d(x4, wk, s2, pads4, d2, bias, act, True)
            if depthwise:       # the kernel is wk's
                return with_means((unplanar(_native.depthwise_conv2d(x4, wk, s2, pads4, d2, bias, act), nsp),))
            # the direct form: im2col's values read where they are
            return with_means((unplanar(_native.f32_conv2d(x4, wk, k2, s2, pads4, d2, bias, act), nsp),))
        cols = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)      # 1 x 1: X is its columns
        y = _native.f32_channel_gemm(cols, wk, bias, act)
        return with_means((y.reshape(x.shape[0], w.shape[0], *out),))
    return run


dense_conv_factory.fused_activations = FLOAT_CONV_ACTIVATIONS
dense_conv_factory.fused_channel_mean = True


register("Conv", "native")(dense_conv_factory)
