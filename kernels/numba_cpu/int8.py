"""Linear and Conv on ``int8`` packed weights, numba backend: (op, "int8", "numba").

Numerics are kernels/reference/packed.py's, and for act_quant "dynamic" and "static" the
results are the reference's bit for bit (tests/test_numba_int8.py asserts equality):

* activations are quantized per GEMM row (dynamic) or with the node's scale and zero point
  (static) exactly as kernels/numba_cpu/quant.py does, fused with the u8 shift (and, for Conv,
  with im2col: one pass over the input, no float64 patch matrix);
* the integer GEMM runs on AVX-512 VNNI, AVX-VNNI or AVX2 (kernels/numba_cpu/vnni.py: u8 x s8,
  the shift and the zero points undone in the epilogue) or, without them or for
  K > MAX_K_INT32, in portable numba loops; both give the exact integer accumulator;
* the epilogue y = ((s_w[n] * acc) * s_x[m]) + b[n] runs in float64 in the reference's order
  inside the GEMM and is rounded once to float32 (or to X's dtype, through float64).

act_quant "none" (weight-only int8): Linear with float32 X is a float32 BLAS matmul (numpy)
with the weight dequantized once at plan time (PackedTensor.to_dense(), the one definition of
a dequantized weight). It is *not* bit exact: the reference accumulates in float64 and rounds
once, here products and partial sums round to float32, so the error is bounded by
(K + 2) * 2^-24 * sum_k |x_k w_nk| (tests: WEIGHT_ONLY_ERR_PER_TERM). Other float dtypes, and
weight-only Conv, compute in float64 like the reference.

Plan time (the factory): the weight is packed once into VNNI panels (K padded to a multiple of
4, N to a multiple of vnni.PANEL, zeros), its column sums give the u8-shift correction, scales
and zero points become float64 / integer arrays. Conv prepares one such GEMM per group.

Threads: numba's (kernels/numba_cpu.set_threads); every output element is computed by one
thread in a fixed order, so results do not depend on the thread count.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from kernels.reference.conv_pool import _out_size, _spatial_attrs, conv_by_gemm
from kernels.reference.packed import act_params
from kernels.registry import register
from kernels.core.bounds import MAX_K_INT32
from kernels.core.layouts import NARROW_INT8_QMAX, PackedTensor, dense_view_2d
from kernels.gemm_front import GemmAttrs, activate_after, bias32_or_64, gemm_factory, rows_of, weight_only

from . import isa, vnni
from .ops import ACT_NONE, ACTIVATION_KINDS



def _check_weight(op: str, weight: Any) -> PackedTensor:
    if weight.layout != "int8":
        raise ValueError(f"{op}: the numba int8 kernel takes layout 'int8', got {weight.layout!r}")
    return weight


class Int8Group:
    """Y = epilogue(quant(X) @ W.T) for one int8 weight (or one Conv group of its rows),
    prepared once.

    q (N, K) int8 raw qdata, scale (N,) float, zero_point (N,) int or None (symmetric);
    act_quant "dynamic" | "static" (with act_scale, act_zero_point).
    """

    def __init__(self, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                 act_quant: str, act_scale: float = 1.0, act_zero_point: int = 0,
                 use_vnni: bool | None = None, use_avx2: bool | None = None,
                 use_vnni256: bool | None = None):
        self.n, self.k = q.shape
        self.act_quant = act_quant
        self.act_scale, self.act_zero_point = float(act_scale), int(act_zero_point)
        self.static = act_quant == "static"
        fits = self.k <= MAX_K_INT32
        # the tiles in order of preference: zmm vpdpbusd, ymm vpdpbusd (AVX-VNNI: exact for every
        # byte), the AVX2 vpmaddubsw tile (exact only without -128 in the weight, vnni._raw_ymm)
        self.use_vnni = (vnni.has_vnni() if use_vnni is None else use_vnni) and fits
        self.use_vnni256 = not self.use_vnni and fits and \
            (vnni.has_vnni256() if use_vnni256 is None else use_vnni256)
        self.use_avx2 = not (self.use_vnni or self.use_vnni256) and fits \
            and (isa.has_avx2() if use_avx2 is None else use_avx2) and (q.size == 0 or int(q.min()) > -128)
        # narrow weights (every |qw| <= 63) take the AVX2 narrow tile, on u like the VNNI one
        self.narrow = self.use_avx2 and (q.size == 0 or int(np.abs(q.astype(np.int64)).max()) <= NARROW_INT8_QMAX)
        zw = np.zeros(self.n, np.int64) if zero_point is None else np.asarray(zero_point, np.int64)
        colsum = q.astype(np.int64).sum(axis=1)
        # vnni.py docstring: the u8 kernels subtract (128 + z_x) colsum; the signed AVX2 one sums qx qw
        signed = self.use_avx2 and not self.narrow
        col_corr = (self.act_zero_point if signed else 128 + self.act_zero_point) * colsum
        sw = np.asarray(scale, np.float64)
        _, np_, self.k4 = vnni.padded_sizes(1, self.n, self.k)
        self.padded_n = np_ * vnni.PANEL
        self.panels = self.use_vnni or self.use_vnni256 or self.use_avx2
        if self.panels:
            # the view of the same bytes selects the tile (vnni._make_tile)
            panels = vnni.pack_weight_panels(q)
            self.weight = vnni.vnni256_panels(panels) if self.use_vnni256 else vnni.narrow_panels(panels) \
                if self.narrow else panels.view(np.uint8) if self.use_avx2 else panels
            # int32 copies wrap modulo 2^32 like the kernel's arithmetic (exact for K <= MAX_K_INT32)
            self.col_corr = self._pad(col_corr).astype(np.int32)
            self.zw = self._pad(zw).astype(np.int32)
            self.sw = self._pad(sw)
        else:
            self.weight = vnni.pack_weight_rows(q)
            self.col_corr, self.zw, self.sw = col_corr, zw, sw
        self._zero_bias = np.zeros(self.padded_n if self.panels else self.n)
        self._bias_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _pad(self, a: np.ndarray) -> np.ndarray:
        out = np.zeros(self.padded_n, a.dtype)
        out[:self.n] = a
        return out

    def bias64(self, bias: Any) -> np.ndarray:
        """The bias as the kernel reads it (float64, padded for VNNI). Cached for a read-only
        array (an initializer loaded from a file; the session passes the same one every run);
        a writeable one may change between calls and is converted each time."""
        if bias is None:
            return self._zero_bias       # + 0.0 leaves every value of the epilogue unchanged
        cached = self._bias_cache        # one tuple: atomic for concurrent run() calls
        if cached is not None and cached[0] is bias:
            return cached[1]
        b = np.asarray(bias, np.float64).reshape(-1)
        if b.shape != (self.n,):
            raise ValueError(f"bias has shape {np.shape(bias)}, expected ({self.n},)")
        b = self._pad(b) if self.panels else b
        if isinstance(bias, np.ndarray) and not bias.flags.writeable:
            self._bias_cache = (bias, b)
        return b

    def quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X (M, K) float32/float64 C-contiguous -> (u (M, 4 * K4) uint8, s_x (M,), row_corr (M,))."""
        return vnni.quantize_shift(x, 4 * self.k4, self.static, self.act_scale, self.act_zero_point)

    def __call__(self, x: np.ndarray, bias64: np.ndarray, out: np.ndarray, act: int = ACT_NONE) -> np.ndarray:
        """out (M, N) float32/float64 = act(epilogue(quant(x) @ W.T) + bias), x (M, K)
        float32/float64 C-contiguous: quantization and GEMM in one compiled call; act an
        ops.ACTIVATION_KINDS value."""
        linear = vnni.panel_linear if self.panels else vnni.portable_linear
        linear(x, self.static, self.act_scale, self.act_zero_point, self.weight, out,
               self.col_corr, self.zw, self.sw, bias64, act)
        return out

    def integer_gemm(self, u, sx, row_corr, bias64, out, act: int = ACT_NONE) -> None:
        """out = act(epilogue(u @ W.T)): u (M, 4 * K4) uint8, sx, row_corr as quantize() returns."""
        gemm = vnni.panel_gemm if self.panels else vnni.portable_gemm
        gemm(u, sx, row_corr, self.weight, out, self.col_corr, self.zw, self.sw, bias64, act)


class Int8Plan:
    """A packed int8 weight prepared for one node: one Int8Group per Conv group (one for Linear),
    or the dequantized float weight for act_quant "none"."""

    def __init__(self, op: str, weight: Any, act_quant: str = "none", act_scale: Any = None,
                 act_zero_point: Any = 0, group: int = 1, use_vnni: bool | None = None, use_avx2: bool | None = None,
                 use_vnni256: bool | None = None):
        self.weight = _check_weight(op, weight)
        self.act_quant = act_quant
        s, z = act_params(op, act_quant, act_scale, act_zero_point)
        self.n, self.k = dense_view_2d(weight.shape)
        if self.n % group:
            raise ValueError(f"{op}: group={group} does not divide the {self.n} output channels")
        if act_quant == "none":
            self.dense32 = np.ascontiguousarray(weight.to_dense().reshape(self.n, self.k), np.float32)
            self.groups = []
            return
        f = weight.fields
        q = np.asarray(f["qdata"]).reshape(self.n, self.k)
        scale = np.broadcast_to(np.asarray(f["scale"], np.float64).reshape(-1), (self.n,))
        zp = f.get("zero_point")
        zp = None if zp is None else np.broadcast_to(np.asarray(zp, np.int64).reshape(-1), (self.n,))
        mg = self.n // group
        self.groups = [Int8Group(q[g * mg:(g + 1) * mg], scale[g * mg:(g + 1) * mg],
                                None if zp is None else zp[g * mg:(g + 1) * mg], act_quant, s, z, use_vnni, use_avx2,
                                use_vnni256)
                       for g in range(group)]


def _float_input(op: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"{op}: X must be a float array, got {x.dtype}")
    return x


def _gemm_dtype(x: np.ndarray):
    """(dtype the kernel reads X in, dtype it writes Y in): float32 stays float32; other floats
    go through float64 (float16 -> float64 is exact) and are rounded once to X's dtype after."""
    return (np.float32, np.float32) if x.dtype == np.float32 else (np.float64, np.float64)


def int8_linear(x: np.ndarray, plan: Int8Plan, bias: Any = None, activation: str = "none") -> np.ndarray:
    """Y (..., N) = act(quant(X) @ W.T + bias) in X's dtype; X (..., K) float, W logical (N, K);
    activation a kernels.core.ops ACTIVATIONS name, fused into the GEMM's tiles for float32 X."""
    x, x2 = rows_of(x, plan.k, plan.weight)
    shape = x.shape
    if plan.act_quant == "none":
        y = weight_only(x2, plan.dense32, bias32_or_64(bias, plan.n)).reshape(*shape[:-1], plan.n)
        return activate_after(y, activation, "numba")
    gemm = plan.groups[0]
    if x.dtype == np.float32:             # the common case: no conversion, float32 out
        if not x2.flags.c_contiguous:
            x2 = np.ascontiguousarray(x2)
        y = np.empty((x2.shape[0], plan.n), np.float32)
        gemm(x2, gemm.bias64(bias), y, ACTIVATION_KINDS[activation])
        return y.reshape(*shape[:-1], plan.n)
    xin, yt = _gemm_dtype(x)
    x2 = np.ascontiguousarray(x.reshape(-1, plan.k), dtype=xin)
    y = np.empty((x2.shape[0], plan.n), yt)
    gemm(x2, gemm.bias64(bias), y)
    return activate_after(y.reshape(*shape[:-1], plan.n).astype(x.dtype, copy=False), activation, "numba")


# --- Conv: im2col fused with activation quantization ------------------------------------------

# output positions per im2col work item: a (OX_BLOCK, K') float64 patch buffer that stays in
# L1/L2 while it is filled column by column (contiguous reads along a row of the image) and
# then quantized row by row
OX_BLOCK = 32


@njit(cache=True, parallel=True)
def _im2col_quantize_2d(x, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, static, s, z, u, sx, row_corr):
    """The im2col rows of X (N, C, H, W) for every group, quantized as vnni.quantize_shift:
    row (b, oy, ox) of group g holds channels g * cg .. (g + 1) * cg - 1, taps (ky, kx) in the
    weight's order (channel-major), 0 outside the image (the reference's zero padding, which
    quantizes to qx = z). Work item = (g, b, oy, block of OX_BLOCK ox): the patches are
    gathered into a float64 buffer one (c, ky, kx) column at a time, reading X along its rows,
    then each patch is quantized by the same row routine as Linear. Writes u (G, rows, 4 * K4)
    uint8, sx (G, rows), row_corr (G, rows); rows are (b, oy, ox) in C order."""
    n, _, h, w = x.shape
    groups = u.shape[0]
    k = cg * kh * kw
    oxb = (ow + OX_BLOCK - 1) // OX_BLOCK
    for item in prange(groups * n * oh * oxb):
        g = item // (n * oh * oxb)
        rest = item - g * (n * oh * oxb)
        b = rest // (oh * oxb)
        oy = (rest // oxb) % oh
        ox0 = (rest % oxb) * OX_BLOCK
        cnt = min(OX_BLOCK, ow - ox0)
        patch = np.zeros((cnt, k), np.float64)
        for c in range(cg):
            plane = x[b, g * cg + c]
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                if iy < 0 or iy >= h:
                    continue
                line = plane[iy]
                for kx in range(kw):
                    j = (c * kh + ky) * kw + kx
                    off = kx * dw - pl              # ix = ox * sw + off, inside for ox in [lo, hi)
                    lo = max(ox0, (-off + sw - 1) // sw) if off < 0 else ox0
                    hi = min(ox0 + cnt, (w - off + sw - 1) // sw)
                    for ox in range(lo, hi):
                        patch[ox - ox0, j] = np.float64(line[ox * sw + off])
        row0 = (b * oh + oy) * ow + ox0
        ur, sr, cr = u[g, row0:row0 + cnt], sx[g, row0:row0 + cnt], row_corr[g, row0:row0 + cnt]
        for r in range(cnt):
            if static:
                vnni.quantize_row_static(patch, r, ur, s, z, sr, cr)
            else:
                vnni.quantize_row_dynamic(patch, r, ur, sr, cr)


def int8_conv(x: np.ndarray, plan: Int8Plan, bias: Any = None, strides=None, pads=None,
              dilations=None, group: int = 1, activation: str = "none") -> np.ndarray:
    """Grouped, strided, dilated, zero-padded convolution with an int8 weight, as
    kernels/reference/packed.packed_conv_ref: X (N, C, *spatial) float, W logical
    (M, C/group, *kernel); Y (N, M, *out) in X's dtype. 2-D (and 1-D, as H = 1) inputs take
    the fused im2col + quantize kernel and the fused epilogue; other ranks use the reference
    im2col driver (conv_by_gemm) with the same GEMM. ``activation`` is fused into the GEMM
    for float32 X on the 2-D path, applied after it otherwise."""
    wshape = plan.weight.shape
    x = _float_input("Conv", x)
    nsp = x.ndim - 2
    m, cg = wshape[:2]
    if len(wshape) != x.ndim or nsp < 1 or x.shape[1] != cg * group or m % group or len(plan.groups) not in (0, group):
        raise ValueError(f"Conv: X {x.shape} ({x.dtype}), packed weight {plan.weight.name!r} {wshape} and "
                         f"group={group} do not match (need float X, W (M, C/group, *kernel), group | M)")
    if plan.act_quant == "none":
        return activate_after(_conv_generic(x, plan, bias, strides, pads, dilations, group), activation, "numba")
    if nsp == 1:      # (N, C, W) as (N, C, 1, W) with a 1 x k kernel
        (st,), (pb,), (pe,), (dl,) = _spatial_attrs(1, strides, pads, dilations)
        y = _conv_2d(x[:, :, None, :], plan, bias, [1, st], [0, pb, 0, pe], [1, dl], group, (1, wshape[2]),
                     activation)
        return y[:, :, 0, :]
    if nsp == 2:
        return _conv_2d(x, plan, bias, strides, pads, dilations, group, tuple(wshape[2:]), activation)
    return activate_after(_conv_generic(x, plan, bias, strides, pads, dilations, group), activation, "numba")


def _conv_2d(x, plan, bias, strides, pads, dilations, group, kernel, activation):
    n, c, h, w = x.shape
    (sh, sw), pb, pe, (dh, dw) = _spatial_attrs(2, strides, pads, dilations)
    kh, kw = kernel
    oh = _out_size(h, kh, sh, dh, pb[0], pe[0], 0)
    ow = _out_size(w, kw, sw, dw, pb[1], pe[1], 0)
    xin, yt = _gemm_dtype(x)
    xc = np.ascontiguousarray(x, dtype=xin)
    m = plan.n
    mg, cg = m // group, c // group
    rows = n * oh * ow
    y = np.empty((n, m, oh, ow), yt)
    b = None if bias is None else np.asarray(bias, np.float64).reshape(-1)
    if b is not None and b.shape != (m,):
        raise ValueError(f"Conv: bias has shape {np.shape(bias)}, expected ({m},)")
    if rows == 0:
        return y.astype(x.dtype, copy=False)
    fused = x.dtype == np.float32          # else Y is rounded to X's dtype before the activation
    act = ACTIVATION_KINDS[activation] if fused else ACT_NONE
    first = plan.groups[0]
    u = np.empty((group, rows, 4 * first.k4), np.uint8)
    sx = np.empty((group, rows), np.float64)
    row_corr = np.empty((group, rows), np.int64)
    _im2col_quantize_2d(xc, cg, kh, kw, sh, sw, pb[0], pb[1], dh, dw, oh, ow, first.static,
                        first.act_scale, first.act_zero_point, u, sx, row_corr)
    yg = np.empty((rows, mg), yt)
    for g, gemm in enumerate(plan.groups):
        gemm.integer_gemm(u[g], sx[g], row_corr[g], gemm.bias64(None if b is None else b[g * mg:(g + 1) * mg]),
                          yg, act)
        y[:, g * mg:(g + 1) * mg] = yg.reshape(n, oh, ow, mg).transpose(0, 3, 1, 2)
    y = y.astype(x.dtype, copy=False)
    return y if fused else activate_after(y, activation, "numba")


def _conv_generic(x, plan, bias, strides, pads, dilations, group):
    """Any rank, through the reference's im2col driver: float64 patches, the same int8 GEMM
    (float64 out, bias added after, as the reference does), or the weight-only matmul."""
    m = plan.n
    if plan.act_quant == "none":
        w64 = plan.dense32.astype(np.float64)
        y = conv_by_gemm(x, plan.weight.shape, strides, pads, dilations, group,
                         lambda cols, rows: cols @ w64[rows].T)
    else:
        mg = m // group

        def gemm(cols, rows):
            g = plan.groups[rows.start // mg]
            out = np.empty((cols.shape[0], mg), np.float64)
            return g(np.ascontiguousarray(cols), g.bias64(None), out)
        y = conv_by_gemm(x, plan.weight.shape, strides, pads, dilations, group, gemm)
    if bias is not None:
        b = np.asarray(bias, np.float64).reshape(-1)
        if b.shape != (m,):
            raise ValueError(f"Conv: bias has shape {np.shape(bias)}, expected ({m},)")
        y += b.reshape((m,) + (1,) * (x.ndim - 2))
    return y.astype(x.dtype)


# --- registration -------------------------------------------------------------------------------

def _linear_plan(weight: PackedTensor, a: GemmAttrs, _weights: dict) -> Int8Plan:
    return Int8Plan("Linear", weight, **a.quant)


int8_linear_factory = register("Linear", "numba", "int8")(gemm_factory(
    "Linear", _linear_plan, lambda x, plan, bias, a: int8_linear(x, plan, bias, a.activation), fused=True,
    name="int8_linear_factory"))
int8_conv_factory = register("Conv", "numba", "int8")(gemm_factory(
    "Conv", lambda w, a, _: Int8Plan("Conv", w, **a.quant, group=a.group),
    lambda x, plan, bias, a: int8_conv(x, plan, bias, group=a.group, activation=a.activation, strides=a.strides,
                                       pads=a.pads, dilations=a.dilations),
    fused=True, name="int8_conv_factory"))
