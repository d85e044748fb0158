"""int4_grouped Linear / Conv kernels for the numba backend.

Numerics are kernels/reference/packed.py's (docs/CONVERTER.md, "Numerics"); tests compare
against it (tests/test_numba_sparse.py). Shapes: X (M, K') rows of the GEMM input, the
weight's 2-D view W (N, K'), Y (M, N). The weight: qdata uint8 (N, G*g/2), two 4-bit values
a byte (element 2j in bits 0-3, 2j+1 in bits 4-7; signed two's complement nibbles when
symmetric, unsigned with a zero point otherwise), scale float32 (N, G), zero_point uint8
(N, G) when asymmetric; g = group_size, G = ceil(K'/g), K' zero-padded to G*g.

The nibbles are unpacked one weight row at a time, inside the kernel, into per-thread row
buffers (never the whole dequantized weight: the packed bytes are what is read), and every
activation row then runs over them (the even / odd split below keeps both loops vectorized).

``act_quant``:

* ``"none"`` (weight-only, the int4 default): the row buffer holds the dequantized weight
  exactly as ``PackedTensor.to_dense``: float32(q - zp) * scale, one float32 rounding. Y = X @
  W.T + b with a **float64 accumulator** per output element; every product of two float32 is
  exact in float64, and the sum runs in an order LLVM vectorizes (the reassoc flag: a
  fixed order, compiled once, so it does not depend on the thread count), so the result
  equals the reference's float64 BLAS up to summation order: within 1 ulp of float32 in
  practice (tests: FLOAT_ULPS, FLOAT64_SUM_ERR_PER_TERM).
* ``"dynamic"`` / ``"static"``: X quantized bit for bit as kernels/numba_cpu/quant.py (via
  sparse._quantize_u8); the row buffer holds the integers q - zp (int16); per group j an exact
  integer acc_j = sum_{k in group j} (qx - z) * (q - zp) (int32: |acc_j| <= g * 255 * 15),
  then the reference's epilogue in float64 and in its order: y = 0; y += s_w[n, j] * acc_j
  for j = 0, 1, ...; y = y * s_x[m] (+ b[n]); rounded once to X's dtype. Bit for bit the
  reference's result.

Parallelism: prange over chunks of output rows; each output element is computed by one thread
in a fixed order, so results do not depend on the thread count.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from kernels.core.layouts import PackedTensor, dense_view_2d
from kernels.gemm_front import bias64
from kernels.registry import register

from .sparse import (
    PAR_CHUNKS,
    SERIAL_WORK,
    U8_SHIFT,
    _is_float,
    _quantize_u8,
    act_params,
    packed_conv,
    packed_factory,
)

# --- kernels ------------------------------------------------------------------------------------
# Byte b of a weight row holds columns 2b (low nibble) and 2b + 1 (high nibble). Unpacking
# into one interleaved row does not vectorize, so the activations are split once per call into
# their even and odd columns (xe, xo: (M, Kp/2), zero-padded to Kp = G * g) and each weight
# row unpacks into two unit-stride arrays, lo[b] (column 2b) and hi[b] (column 2b + 1):
# sum_k x[k] w[k] = sum_b xe[b] lo[b] + xo[b] hi[b]. Padded columns have x = 0 and w = 0.
# (No @njit helper with array arguments is called per row: each such call costs an NRT
# incref/decref per array, ~40 ns, more than unpacking a short row.)

@njit(cache=True)
def _split_even_odd(a, kp, dtype_like):
    """a (M, K) -> (even columns, odd columns), each (M, kp / 2) of dtype_like's dtype,
    zero-padded."""
    m, k = a.shape
    half = kp // 2
    xe = np.zeros((m, half), dtype_like.dtype)
    xo = np.zeros((m, half), dtype_like.dtype)
    for i in range(m):
        for b in range(half):
            if 2 * b < k:
                xe[i, b] = a[i, 2 * b]
            if 2 * b + 1 < k:
                xo[i, b] = a[i, 2 * b + 1]
    return xe, xo


@njit(cache=True, fastmath={"reassoc"})
def _f64_chunk(xe, xo, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, r0, r1):
    """Rows [r0, r1): unpack the row to float32 (the to_dense value float32(q - zp) * scale,
    one rounding), then per activation row a float64 dot. ``reassoc`` only lets LLVM
    vectorize the dot's sum (a fixed order); every other float operation here is a single
    rounding that reassociation cannot touch, and ``contract`` (FMA) is not allowed.
    Indices are unsigned: numba's negative-index wraparound would block vectorization."""
    m, half = xe.shape
    groups = scale.shape[1]
    gh = np.uint64(g // 2)
    lo = np.empty(half, np.float32)
    hi = np.empty(half, np.float32)
    sbit = np.int32(8 if signed else 0)     # two's complement nibble: (v ^ 8) - 8
    for n in range(r0, r1):
        qrow = qdata[n]
        for j in range(groups):
            s = scale[n, j]
            z = (np.int32(zp[n, j]) if has_zp else np.int32(0)) + sbit
            base = np.uint64(j) * gh
            for bb in range(gh):
                b = base + np.uint64(bb)
                byte = np.int32(qrow[b])
                lo[b] = np.float32(((byte & 15) ^ sbit) - z) * s
                hi[b] = np.float32(((byte >> 4) ^ sbit) - z) * s
        for mm in range(m):
            xer, xor_ = xe[mm], xo[mm]
            acc = 0.0
            for b in range(np.uint64(half)):
                acc += xer[b] * np.float64(lo[b]) + xor_[b] * np.float64(hi[b])
            if has_bias:
                acc += bias[n]
            out[mm, n] = acc


@njit(cache=True, parallel=True)
def _f64_par(xe, xo, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, nchunks):
    n = qdata.shape[0]
    for c in prange(nchunks):
        _f64_chunk(xe, xo, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out,
                   c * n // nchunks, (c + 1) * n // nchunks)


@njit(cache=True)
def _gemm_f64(x, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, nchunks):
    xe, xo = _split_even_odd(x, scale.shape[1] * g, np.zeros(0, np.float64))
    if nchunks <= 1:
        _f64_chunk(xe, xo, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, 0, qdata.shape[0])
    else:
        _f64_par(xe, xo, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, nchunks)


@njit(cache=True)
def _int_chunk(xe, xo, s_x, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, r0, r1):
    """Rows [r0, r1): unpack the row to int16 q - zp, then per activation row and group an
    exact integer dot (|.| <= g * 255 * 15) and the reference's float64 epilogue, in its
    order: y = 0; y += s_w[n, j] * acc_j; y = y * s_x[m] (+ b). Unsigned indices, as above."""
    m, half = xe.shape
    groups = scale.shape[1]
    gh = np.uint64(g // 2)
    lo = np.empty(half, np.int16)
    hi = np.empty(half, np.int16)
    sbit = np.int32(8 if signed else 0)
    for n in range(r0, r1):
        qrow = qdata[n]
        for j in range(groups):
            z = (np.int32(zp[n, j]) if has_zp else np.int32(0)) + sbit
            base = np.uint64(j) * gh
            for bb in range(gh):
                b = base + np.uint64(bb)
                byte = np.int32(qrow[b])
                lo[b] = np.int16(((byte & 15) ^ sbit) - z)
                hi[b] = np.int16(((byte >> 4) ^ sbit) - z)
        for mm in range(m):
            xer, xor_ = xe[mm], xo[mm]
            y = 0.0
            for j in range(groups):
                base = np.uint64(j) * gh
                acc = np.int32(0)
                for bb in range(gh):
                    b = base + np.uint64(bb)
                    # numba widens int32 arithmetic to int64; truncating each step keeps it
                    # int32 so LLVM vectorizes it (exact: |acc| <= g * 255 * 15 < 2^31)
                    acc = np.int32(acc + np.int32(xer[b]) * np.int32(lo[b]) + np.int32(xor_[b]) * np.int32(hi[b]))
                y += np.float64(scale[n, j]) * np.float64(acc)
            y = y * s_x[mm]
            if has_bias:
                y += bias[n]
            out[mm, n] = y


@njit(cache=True, parallel=True)
def _int_par(xe, xo, s_x, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, nchunks):
    n = qdata.shape[0]
    for c in prange(nchunks):
        _int_chunk(xe, xo, s_x, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out,
                   c * n // nchunks, (c + 1) * n // nchunks)


@njit(cache=True)
def _gemm_int(x, dynamic, act_scale, act_zero_point, qdata, scale, zp, has_zp, signed, g, bias, has_bias,
              out, nchunks):
    u, s_x = _quantize_u8(x, dynamic, act_scale, act_zero_point, x.shape[1])
    qxz = u.astype(np.int16) - np.int16(U8_SHIFT + (0 if dynamic else act_zero_point))
    xe, xo = _split_even_odd(qxz, scale.shape[1] * g, np.zeros(0, np.int16))
    if nchunks <= 1:
        _int_chunk(xe, xo, s_x, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, 0, qdata.shape[0])
    else:
        _int_par(xe, xo, s_x, qdata, scale, zp, has_zp, signed, g, bias, has_bias, out, nchunks)


# --- the plan ------------------------------------------------------------------------------------

class Int4Plan:
    """An int4_grouped weight prepared once for Y = act(X) @ W.T (+ b): the 2-D view of
    qdata, scale and zero_point as C-contiguous arrays (no dequantization at plan time)."""

    def __init__(self, weight: PackedTensor, act_quant: str = "none", act_scale: Any = None,
                 act_zero_point: Any = 0, *, op: str = "Linear", rows: slice | None = None):
        if weight.layout != "int4_grouped":
            raise ValueError(f"{op}: layout {weight.layout!r} is not int4_grouped")
        self.weight, self.act_quant, self.op = weight, act_quant, op
        self.act_scale, self.act_zero_point = act_params(op, act_quant, act_scale, act_zero_point)
        n, self.k = dense_view_2d(weight.shape)
        rows = rows if rows is not None else slice(0, n)
        self.g = int(weight.params.get("group_size", 64))
        self.signed = bool(weight.params.get("symmetric", True))
        self.qdata = np.ascontiguousarray(weight.fields["qdata"][rows])
        self.scale = np.ascontiguousarray(weight.fields["scale"][rows], np.float32)
        self.has_zp = "zero_point" in weight.fields
        self.zp = (np.ascontiguousarray(weight.fields["zero_point"][rows], np.uint8) if self.has_zp
                   else np.zeros((1, 1), np.uint8))
        self.n = self.qdata.shape[0]
        self.bias_dummy = np.zeros(1, np.float64)
        self._groups: dict[int, list[Int4Plan]] = {}

    def conv_groups(self, group: int) -> list[Int4Plan]:
        if group not in self._groups:
            mg = self.n // group
            self._groups[group] = [self] if group == 1 else [
                Int4Plan(self.weight, self.act_quant, self.act_scale, self.act_zero_point, op=self.op,
                         rows=slice(g * mg, (g + 1) * mg)) for g in range(group)]
        return self._groups[group]

    def __call__(self, x: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """x (M, K') C-contiguous float32/float64 -> out (M, N) = act(x) @ W.T (+ bias)."""
        m = x.shape[0]
        has_bias = bias is not None
        b = bias if has_bias else self.bias_dummy
        work = self.n * self.k * m
        nch = 1 if work < SERIAL_WORK else max(1, min(self.n, PAR_CHUNKS))
        args = (self.qdata, self.scale, self.zp, self.has_zp, self.signed, self.g, b, has_bias, out)
        if self.act_quant == "none":
            _gemm_f64(x, *args, nch)
        else:
            _gemm_int(x, self.act_quant == "dynamic", self.act_scale, self.act_zero_point, *args, nch)
        return out


# --- Linear / Conv wrappers --------------------------------------------------------------------

def int4_linear(x: np.ndarray, gemm: Int4Plan, bias=None) -> np.ndarray:
    """Y = act(X) @ dequant(W).T + bias with an int4_grouped weight; X (..., K) float, Y (..., N)
    in X's dtype."""
    w = gemm.weight
    if len(w.shape) != 2:
        raise ValueError(f"Linear: packed weight {w.name!r} has shape {w.shape}, expected (N, K)")
    x = np.asarray(x)
    if not _is_float(x.dtype) or x.ndim < 1 or x.shape[-1] != gemm.k:
        raise ValueError(f"Linear: X {x.shape} ({x.dtype}) does not match packed weight "
                         f"{w.name!r} of shape {w.shape} (need float X (..., K))")
    b = bias64(bias, gemm.n, "Linear")
    kdtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    x2 = np.ascontiguousarray(x.reshape(-1, gemm.k), kdtype)
    out = np.empty((x2.shape[0], gemm.n), kdtype)
    if x2.shape[0]:
        gemm(x2, b, out)
    return out.reshape(*x.shape[:-1], gemm.n).astype(x.dtype, copy=False)


# Conv: the sparse module's im2col driver (packed_conv) and factory, with this module's plan
register("Linear", "numba", "int4_grouped")(packed_factory("Linear", int4_linear, Int4Plan))
register("Conv", "numba", "int4_grouped")(packed_factory("Conv", packed_conv, Int4Plan))
