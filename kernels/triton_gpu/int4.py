"""Weight-only Linear: float32 X times a 4-bit (``int4_grouped``) or 8-bit (``int8`` with
act_quant "none") weight dequantized in registers: ("Linear", "int4_grouped", "triton"), and
the int8 factory's act_quant "none" path.

    Y (M, N) float32 = act(X @ dequant(W)^T + bias)

Design:

* Plan time: the packed bytes are copied once into a zero-padded (Np, Kp / 2) uint8 (int4) or
  (Np, Kp) int8 array, still K-contiguous (a weight tile is (BN, BK) with K fastest, as the
  tensor cores want the B operand); scales and zero points are transposed to (G', Np) so that
  one group's values for BN columns are one contiguous load; padding holds q = 0 and scale 0,
  which dequantizes to 0. BK is fixed per weight at plan time: the largest power of two
  dividing group_size, capped at ``BK_MAX`` (then every K tile lies in one group and its scale
  and zero point are one (BN,) vector), or BK_MAX when group_size has no power-of-two factor
  >= 16 (then each element gathers its own group's scale: correct, slower).
* Main loop, per K tile: load (BN, BK/2) bytes, split the nibbles (low nibble = even k, as
  kernels/core/layouts.py packs them), interleave them back with ``tl.join`` + ``tl.reshape``,
  sign-extend (symmetric) or subtract the zero point (asymmetric), dequantize, then
  ``tl.dot``. Rows M < 16 (decode) take a GEMV branch instead (broadcast multiply + ``tl.sum``):
  a ``tl.dot`` needs BM >= 16 and would do 16x the work of a 1-row GEMV.
* Epilogue fused: + bias (float32), activation (``_common.activate``), store.

Numerics (vs kernels/reference/packed.py, which computes X @ dequant(W)^T in float64):

* "fp32" (the default, ``DOT``): each weight is dequantized to float32(q - z) * s, one
  rounding: exactly PackedTensor.to_dense()'s value, the reference's weight. The products and
  sums run in float32 (``tl.dot(input_precision="ieee")``: true fp32 FMAs, never TF32), so
  |Y - exact| <= (K + 2) * 2^-24 * (sum_k |x_k w_k| + |b|): the classical bound of a float32
  dot product in any summation order; with the reference's own rounding to float32 the tests
  allow (K + 3) * 2^-24 * (...) (tests/test_triton_kernels.py FP32_UNIT).
* "fp16" (env QRT_TRITON_WEIGHT_ONLY_DOT=fp16; tensor cores, for large M): X is rounded to
  float16 (round to nearest even; |x| > 65504 becomes inf), q - z is an exact float16
  integer, the tile's dot accumulates in float32, and the float32 scale multiplies each tile's
  partial sum (once at the end for a one-scale-per-row int8 weight): the error adds
  sum_k (2^-11 |x_k| + 2^-25) |w_k| for the rounding of X. Only for weights whose tiles lie in
  one group; others, and the GEMV branch (M < 16), stay fp32.

On an H100 (not measured here; configurations checked only by compiling for sm_90a): decode
(M <= 8) is bound by weight bytes: int4 4096 x 11008 is 22.5 MB + scales -> ~8 us at 3 TB/s,
with the GEMV branch doing 1 FMA per weight per row. Prefill with "fp32" runs on FP32 FMAs
(at best ~60 TFLOP/s, likely well under half of that with 32 x 64 tiles: (512, 4096, 11008)
~ 1.5-3 ms); "fp16" moves the dot to the tensor cores (wgmma from 64-row tiles), several
times faster at M >= 128.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.core import config
from kernels.core.layouts import layout_spec
from kernels.registry import register

from . import _common as C
from ._common import activate, grouped_tile
from .int8 import linear_factory

DOT_MODES = ("fp32", "fp16")
DOT = config.get("QRT_TRITON_WEIGHT_ONLY_DOT")
BK_MAX = 32           # K tile at most (configs(): register pressure of the fp32 dot)
DOT_MIN_M = 16        # rows from which the tl.dot branch runs (tl.dot needs BM >= 16)


def configs() -> list[triton.Config]:
    """Autotune configurations of ``_weight_only_kernel``: BM >= 16 use tl.dot, BM < 16 the GEMV
    branch; ``_prune`` keeps the ones that fit M (and the large tiles for the fp16 dot only).
    Under the interpreter one of each, so that exactly one config fits every M.

    Checked by compiling for sm_90a with Triton 3.9 (no GPU to run on), at BK = 32: none of
    these spills. The fp32 (FMA) dot holds its operand tiles in registers: 32 x 64 tiles at
    4 warps, or BK = 64, spill hundreds of bytes a thread, hence BK_MAX = 32 and small tiles."""
    if C.INTERPRET:
        return [triton.Config({"BM": 16, "BN": 16, "GROUP_M": 2}, num_warps=1),
                triton.Config({"BM": 4, "BN": 16, "GROUP_M": 1}, num_warps=1)]
    dot = [triton.Config({"BM": bm, "BN": bn, "GROUP_M": 8}, num_warps=w, num_stages=3)
           for bm, bn, w in ((16, 64, 8), (16, 32, 4), (32, 32, 4), (32, 64, 8), (64, 128, 8))]
    gemv = [triton.Config({"BM": bm, "BN": bn, "GROUP_M": 1}, num_warps=w, num_stages=3)
            for bm, bn, w in ((1, 128, 4), (1, 64, 4), (2, 64, 4), (4, 32, 4), (4, 64, 8), (8, 32, 8))]
    return dot + gemv if C.AUTOTUNE else [dot[0], gemv[0]]


FP32_DOT_MAX_TILE = 32 * 64     # BM * BN of the largest tile the fp32 (FMA) dot may use


def _prune(configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """M < 16: the GEMV configs of the smallest BM >= M (else the largest); otherwise the dot
    configs with BM <= M (else the smallest), tiles above FP32_DOT_MAX_TILE for the fp16 dot only."""
    mb = nargs["m_bucket"]
    gemv = [c for c in configs if c.kwargs["BM"] < DOT_MIN_M]
    dot = [c for c in configs if c.kwargs["BM"] >= DOT_MIN_M]
    if mb < DOT_MIN_M and gemv:
        fits = [c.kwargs["BM"] for c in gemv if c.kwargs["BM"] >= mb]
        bm = min(fits) if fits else max(c.kwargs["BM"] for c in gemv)
        keep = [c for c in gemv if c.kwargs["BM"] == bm]
        return keep if C.AUTOTUNE else keep[:1]
    if not kwargs.get("DOT_FP16"):
        dot = [c for c in dot if c.kwargs["BM"] * c.kwargs["BN"] <= FP32_DOT_MAX_TILE] or dot
    return C.prune_by_m(dot, nargs)


@triton.autotune(configs=configs(), key=["m_bucket", "N", "Kp", "BITS", "BK"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _weight_only_kernel(x_ptr, w_ptr, scale_ptr, zp_ptr, bias_ptr, y_ptr,
                        M, N, K, Kp, stride_xm, stride_wn, stride_sg, stride_ym, group_size, m_bucket,
                        BITS: tl.constexpr, SIGNED: tl.constexpr, HAS_ZP: tl.constexpr,
                        HAS_BIAS: tl.constexpr, TILE_IN_GROUP: tl.constexpr, ONE_GROUP: tl.constexpr,
                        DOT_FP16: tl.constexpr, ACTIVATION: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # X (M, K) float32; W (Np, Kp*BITS/8) bytes, K-major, zero-padded; scale / zp (G', Np)
    pid_m, pid_n = grouped_tile(M, N, BM, BN, GROUP_M)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < M
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    if BITS == 8:
        w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    else:
        w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + tl.arange(0, BK // 2)[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, Kp, BK):
        x = tl.load(x_ptrs, mask=m_ok[:, None] & (k0 + offs_k < K)[None, :], other=0.0)
        if BITS == 8:
            q = tl.load(w_ptrs).to(tl.int32)                                  # (BN, BK)
        else:
            packed = tl.load(w_ptrs)                                          # (BN, BK/2) uint8
            lo = (packed & 0xF).to(tl.int32)                                  # k = 2j
            hi = (packed >> 4).to(tl.int32)                                   # k = 2j + 1
            q = tl.reshape(tl.join(lo, hi), (BN, BK))
            if SIGNED:
                q = tl.where(q >= 8, q - 16, q)                               # two's complement nibble
        if TILE_IN_GROUP:
            g = k0 // group_size
            s = tl.load(scale_ptr + g * stride_sg + offs_n)                   # (BN,) float32
            if HAS_ZP:
                q = q - tl.load(zp_ptr + g * stride_sg + offs_n)[:, None]
        else:
            sg = ((k0 + offs_k) // group_size)[None, :] * stride_sg + offs_n[:, None]
            s = tl.load(scale_ptr + sg)                                       # (BN, BK)
            if HAS_ZP:
                q = q - tl.load(zp_ptr + sg)
        if DOT_FP16 and BM >= 16:
            part = tl.dot(x.to(tl.float16), tl.trans(q.to(tl.float16)), out_dtype=tl.float32)
            if ONE_GROUP:
                acc += part                                                   # scaled once, below
            else:
                acc += part * s[None, :]
        else:
            if TILE_IN_GROUP:
                w = q.to(tl.float32) * s[:, None]                             # the reference's weight
            else:
                w = q.to(tl.float32) * s
            if BM >= 16:
                acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
            else:
                acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
        x_ptrs += BK
        if BITS == 8:
            w_ptrs += BK
        else:
            w_ptrs += BK // 2

    n_ok = offs_n < N
    y = acc
    if DOT_FP16 and BM >= 16 and ONE_GROUP:
        y = y * tl.load(scale_ptr + offs_n)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    out = activate(y, ACTIVATION)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])


def _tile_k(group_size: int) -> int:
    """The K tile of a weight with this group size (module docstring)."""
    pow2 = group_size & -group_size                  # largest power of two dividing it
    return min(pow2, BK_MAX) if pow2 >= 16 else BK_MAX


class Int4Plan:
    """A weight-only int8 / int4_grouped weight on the device.

    int8: qdata (N, K) int8, scale (N,) or (1,), zero_point like scale or absent: one group of K.
    int4_grouped: qdata (N, G*g/2) uint8 (even k in the low nibble), scale (N, G),
    zero_point (N, G) uint8 or absent (then signed nibbles)."""

    bias_dtype = torch.float32

    def __init__(self, weight: Any, dot: str | None = None):
        self.weight = weight
        dot = DOT if dot is None else dot
        if dot not in DOT_MODES:
            raise ValueError(f"Linear (triton weight-only): dot must be one of {DOT_MODES}, got {dot!r} "
                             f"(QRT_TRITON_WEIGHT_ONLY_DOT)")
        f = weight.fields
        if weight.layout == "int8":
            n, k = C.check_2d_weight(weight, "int8")
            self.bits, self.signed = 8, True
            self.bk = BK_MAX
            kp = C.round_up(k, self.bk)
            self.group_size, groups = kp, 1
            q = np.asarray(f["qdata"]).reshape(n, k)
            scale = np.broadcast_to(np.asarray(f["scale"], np.float32).reshape(-1, 1), (n, 1))
            zp = f.get("zero_point")
            zp = None if zp is None else np.broadcast_to(np.asarray(zp, np.int32).reshape(-1, 1), (n, 1))
            np_ = C.round_up(n, 128)
            w = np.zeros((np_, kp), np.int8)
            w[:n, :k] = q
        else:
            n, k = C.check_2d_weight(weight, "int4_grouped")
            self.bits = 4
            g = int(weight.params.get("group_size", layout_spec("int4_grouped").params["group_size"]))
            self.group_size = g
            self.signed = "zero_point" not in f
            self.bk = _tile_k(g)
            qb = np.asarray(f["qdata"])                                   # (N, G*g/2)
            kp = C.round_up(qb.shape[1] * 2, self.bk)
            groups = -(-kp // g)
            scale = np.asarray(f["scale"], np.float32)                    # (N, G)
            zp = f.get("zero_point")
            zp = None if zp is None else np.asarray(zp, np.int32)
            np_ = C.round_up(n, 128)
            w = np.zeros((np_, kp // 2), np.uint8)
            w[:n, :qb.shape[1]] = qb
        self.n, self.k, self.kp = n, k, kp
        self.tile_in_group = self.group_size % self.bk == 0
        self.dot = dot if self.tile_in_group else "fp32"
        scale_t = np.zeros((groups, np_), np.float32)                    # padding: scale 0 -> w = 0
        scale_t[:scale.shape[1], :n] = scale.T
        self.w = C.upload(w)
        self.scale = C.upload(scale_t)
        self.zp = None
        if zp is not None:
            zp_t = np.zeros((groups, np_), np.int32)
            zp_t[:zp.shape[1], :n] = zp.T
            self.zp = C.upload(zp_t)

    def __call__(self, x2: torch.Tensor, bias: torch.Tensor | None, activation: int,
                 out: torch.Tensor) -> torch.Tensor:
        m = x2.shape[0]
        if m == 0:
            return out
        grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(self.n, meta["BN"]),)
        _weight_only_kernel[grid](
            x2, self.w, self.scale, self.zp if self.zp is not None else self.scale,
            bias if bias is not None else self.scale, out,
            m, self.n, self.k, self.kp, x2.stride(0), self.w.stride(0), self.scale.stride(0), out.stride(0),
            self.group_size, C.m_bucket(m),
            BITS=self.bits, SIGNED=self.signed, HAS_ZP=self.zp is not None, HAS_BIAS=bias is not None,
            TILE_IN_GROUP=self.tile_in_group, ONE_GROUP=self.scale.shape[0] == 1,
            DOT_FP16=self.dot == "fp16", ACTIVATION=activation, BK=self.bk, **C.LAUNCH)
        return out


def make_plan(weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0):
    if act_quant != "none":
        raise ValueError(f"Linear (triton): int4_grouped weights are weight-only (act_quant 'none'), "
                         f"got act_quant={act_quant!r}")
    C.check_2d_weight(weight, "int4_grouped")
    return Int4Plan(weight)


int4_linear_factory = register("Linear", "triton", "int4_grouped")(linear_factory("int4_grouped", make_plan))
