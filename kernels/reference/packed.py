"""Linear and Conv on packed weights: int8, int4_grouped, csr, bsr, nm (the reference spec).

Numerics are docs/CONVERTER.md's "Numerics", implemented literally; every fast kernel for a
packed layout is tested against these functions. Shapes: X (M, K') rows of the GEMM input,
the weight's 2-D view W (N, K') (kernels.core.layouts.dense_view_2d), Y (M, N).

``act_quant`` (a node attribute, kernels/core/ops.py):

* ``"none"``: float activations. Y = X @ dequant(W).T + b in float64, rounded once to X's
  dtype, where dequant(W) is ``PackedTensor.to_dense()`` (float32, the one definition of a
  dequantized weight). The only mode for sparse layouts that store float values (quant
  "none"); weight-only for int8 and int4.
* ``"dynamic"``: each GEMM row (a row of X for Linear, one im2col patch for Conv) is
  quantized on its own, symmetric: s[m] = max|x_m| / 127 (1 for an all-zero row) and
  qx = clip(rint(x / s), -127, 127), both in float64.
* ``"static"``: one scale s = act_scale and zero point z = act_zero_point (int8) per node:
  qx = clip(rint(x / s) + z, -128, 127), in float64.

Integer GEMM, for a weight whose columns are split into G groups of g (int4_grouped; G = 1,
g = K' for one scale per row):

    acc[m, n, j] = sum_{k in group j} (qx[m, k] - z) * (qw[n, k] - zw[n, j])     exact integer
    Y[m, n]      = s_x[m] * sum_j (s_w[n, j] * acc[m, n, j]) + b[n]           float64, j = 0, 1, ...

rounded once to X's dtype. The accumulation is exact: it runs in float64 through BLAS, where
every product and partial sum is an integer of magnitude <= K' * 255 * 255 < 2^53 (K' below
1.38e11, ``MAX_EXACT_K``), so the result is bit for bit that of an int64 accumulation, in any order.
Padding of a Conv input is 0, which quantizes to qx = z, so (qx - z) = 0 whether the pad is
applied before or after quantization.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels.gemm_front import GemmAttrs, bias64, gemm_factory
from kernels.registry import register
from kernels.core.bounds import MAX_EXACT_K
from kernels.core.layouts import PackedTensor, dense_view_2d, int_weight

from ._common import is_float
from .conv_pool import conv_by_gemm

PACKED_LAYOUTS = ("int8", "int4_grouped", "csr", "bsr", "nm")
ACT_QUANT_MODES = ("none", "dynamic", "static")


def act_params(op: str, act_quant: str, act_scale: Any, act_zero_point: Any) -> tuple[float, int]:
    """(s, z) of static activations, validated (s finite > 0, z an int in [-128, 127]);
    (1.0, 0) for the other modes. Every kernel of a packed layout checks its node this way."""
    if act_quant not in ACT_QUANT_MODES:
        raise ValueError(f"{op}: act_quant must be one of {ACT_QUANT_MODES}, got {act_quant!r}")
    if act_quant != "static":
        return 1.0, 0
    if act_scale is None:
        raise ValueError(f"{op}: act_quant='static' needs the attribute act_scale")
    s = float(act_scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{op}: act_scale must be finite and > 0, got {act_scale!r}")
    z = act_zero_point if act_zero_point is not None else 0
    if isinstance(z, bool) or not float(z).is_integer() or not -128 <= int(z) <= 127:
        raise ValueError(f"{op}: act_zero_point must be an int in [-128, 127], got {act_zero_point!r}")
    return s, int(z)


class PackedPlan:
    """A packed weight prepared once, at plan time, for Y = act(X) @ W.T (no bias).

    weight:    the PackedTensor; its 2-D view is (N, K')
    act_quant: "none" | "dynamic" | "static" (with act_scale > 0 and act_zero_point in int8)

    Prepared: ``dense`` float64 (N, K') for "none"; for the integer modes ``q`` float64
    (N, G, g) holding the integers qw - zw (K' zero-padded to G * g) and ``scale`` float64
    (N, G).
    """

    def __init__(self, weight: PackedTensor, act_quant: str = "none", act_scale: Any = None,
                 act_zero_point: Any = 0, *, op: str = "Linear"):
        if not isinstance(weight, PackedTensor):
            raise TypeError(f"{op}: the weight must be an initializer in a packed layout, got "
                             f"{type(weight).__name__}")
        if weight.layout not in PACKED_LAYOUTS:
            raise ValueError(f"{op}: layout {weight.layout!r} is not a packed layout {PACKED_LAYOUTS}")
        if act_quant not in ACT_QUANT_MODES:
            raise ValueError(f"{op}: act_quant must be one of {ACT_QUANT_MODES}, got {act_quant!r}")
        self.weight = weight
        self.act_quant = act_quant
        self.n, self.k = dense_view_2d(weight.shape)
        if act_quant == "none":
            self.dense = weight.to_dense().reshape(self.n, self.k).astype(np.float64)
            return
        if weight.layout in ("csr", "bsr", "nm") and weight.params.get("quant", "none") != "int8":
            raise ValueError(f"{op}: act_quant={act_quant!r} needs integer weights, but {weight.layout} "
                             f"weight {weight.name!r} stores float values (quant='none'); use act_quant='none'")
        if self.k > MAX_EXACT_K:
            raise ValueError(f"{op}: K' = {self.k} is too large for an exact integer accumulation "
                             f"(at most {MAX_EXACT_K})")
        if act_quant == "static":
            self.act_scale, self.act_zero_point = act_params(op, act_quant, act_scale, act_zero_point)
        iw = int_weight(weight)
        g = iw.group_size
        groups = iw.scale.shape[1]
        q = np.zeros((self.n, groups * g), np.float64)
        q[:, :self.k] = iw.q
        self.group_size = g
        self.q = q.reshape(self.n, groups, g)
        self.scale = iw.scale.astype(np.float64)

    def quantize_rows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
        """X (M, K') float -> (qx - z as float64 (M, K') integers, s_x: (M,) or a float)."""
        x = np.asarray(x, np.float64)
        if self.act_quant == "dynamic":
            s = np.max(np.abs(x), axis=1) / 127
            s = np.where(s == 0, 1.0, s)
            return np.clip(np.rint(x / s[:, None]), -127, 127), s
        z = self.act_zero_point
        qx = np.clip(np.rint(x / self.act_scale) + z, -128, 127)
        return qx - z, self.act_scale

    def __call__(self, x: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """X (M, K') -> act(X) @ W[rows].T, float64 (M, N'), no bias; ``rows`` picks output rows
        (a Conv group)."""
        if self.act_quant == "none":
            return np.asarray(x, np.float64) @ self.dense[rows].T
        qx, s_x = self.quantize_rows(x)
        m, g = qx.shape[0], self.group_size
        groups = self.q.shape[1]
        if groups * g != self.k:
            qx = np.concatenate([qx, np.zeros((m, groups * g - self.k))], axis=1)
        q, scale = self.q[rows], self.scale[rows]
        y = np.zeros((m, q.shape[0]), np.float64)
        for j in range(groups):
            acc = qx[:, j * g:(j + 1) * g] @ q[:, j].T        # exact integers (module docstring)
            y += scale[:, j] * acc
        return y * (s_x[:, None] if isinstance(s_x, np.ndarray) else s_x)


class PreparedWeight:
    """What a backend's prepared Linear/Conv weight holds: the PackedTensor, its activation
    quantization (checked), (N, K') of its 2-D view, and the reference GEMM for the inputs its
    fast kernel does not take (other float dtypes), built on first use."""

    def __init__(self, weight: PackedTensor, act_quant: str = "none", act_scale: Any = None,
                 act_zero_point: Any = 0, op: str = "Linear"):
        self.weight, self.act_quant, self.op = weight, act_quant, op
        self.act_scale, self.act_zero_point = act_params(op, act_quant, act_scale, act_zero_point)
        self.n, self.k = dense_view_2d(weight.shape)
        self._reference: PackedPlan | None = None

    def reference(self) -> PackedPlan:
        if self._reference is None:
            self._reference = PackedPlan(self.weight, self.act_quant, self.act_scale, self.act_zero_point, op=self.op)
        return self._reference


def packed_linear_ref(x: np.ndarray, gemm: PackedPlan, bias: np.ndarray | None = None) -> np.ndarray:
    """Y = act(X) @ dequant(W).T + bias with a packed weight (numerics: module docstring).

    X (..., K) float, W logical (N, K), bias (N,) or None; Y (..., N) in X's dtype."""
    if len(gemm.weight.shape) != 2:
        raise ValueError(f"Linear: packed weight {gemm.weight.name!r} has shape {gemm.weight.shape}, expected (N, K)")
    if not is_float(x.dtype) or x.ndim < 1 or x.shape[-1] != gemm.k:
        raise ValueError(f"Linear: X {x.shape} ({x.dtype}) does not match packed weight "
                         f"{gemm.weight.name!r} of shape {gemm.weight.shape} (need float X (..., K))")
    y = gemm(x.reshape(-1, gemm.k))
    b = bias64(bias, gemm.n, "Linear")
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], gemm.n).astype(x.dtype)


def packed_conv_ref(x: np.ndarray, gemm: PackedPlan, bias: np.ndarray | None = None, strides=None,
                    pads=None, dilations=None, group: int = 1) -> np.ndarray:
    """Grouped, strided, dilated, zero-padded convolution with a packed weight, as conv_ref.

    X (N, C, *spatial) float, W logical (M, C/group, *kernel) with 2-D view
    (M, C/group * prod(kernel)), bias (M,) or None; Y (N, M, *out) in X's dtype. Each group
    is im2col + the packed GEMM on its M/group weight rows; with act_quant "dynamic" every
    im2col row (one patch, C/group * prod(kernel) values) is quantized on its own."""
    wshape = gemm.weight.shape
    nsp = x.ndim - 2
    c = x.shape[1]
    m, cg = wshape[:2]
    if not is_float(x.dtype) or len(wshape) != x.ndim or c != cg * group or m % group:
        raise ValueError(f"Conv: X {x.shape} ({x.dtype}), packed weight {gemm.weight.name!r} {wshape} and "
                         f"group={group} do not match (need float X, W (M, C/group, *kernel), group | M)")
    y = conv_by_gemm(x, wshape, strides, pads, dilations, group, gemm)   # rows = im2col patches
    b = bias64(bias, m, "Conv")
    if b is not None:
        y += b.reshape((m,) + (1,) * nsp)
    return y.astype(x.dtype)


# --- registration -------------------------------------------------------------------------------

def _prepare(w: PackedTensor, a: GemmAttrs, _weights: dict) -> PackedPlan:
    return PackedPlan(w, **a.quant, op=a.op)


packed_linear_factory = gemm_factory("Linear", _prepare, lambda x, g, bias, a: packed_linear_ref(x, g, bias),
                                     name="packed_linear_ref_factory")
packed_conv_factory = gemm_factory("Conv", _prepare, lambda x, g, bias, a: packed_conv_ref(x, g, bias, **a.conv),
                                   name="packed_conv_ref_factory")

for _layout in PACKED_LAYOUTS:
    register("Linear", "reference", _layout)(packed_linear_factory)
    register("Conv", "reference", _layout)(packed_conv_factory)
