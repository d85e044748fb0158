"""Block-sparse Linear (``bsr`` weights): ("Linear", "bsr", "triton").

    Y (M, N) float32 = act(X @ W^T + bias),  W stored as R x C blocks (kernels/core/layouts.py bsr)

Design:

* Plan time: the stored blocks are repacked into *kernel tiles* of (BN, BK) elements, BN, BK
  powers of two >= 16 (``tl.dot``'s minimum; BK >= 32 for int8, the int8 mma's K). A tile is the
  union of the stored blocks it intersects (zero-filled where nothing is stored); a tile that
  intersects no stored block does not exist. The result is a tile-level CSR: ``tile_ptr``
  (N/BN + 1,), ``tile_k`` (ntiles,) K-tile index, ``tiles`` (ntiles, BN, BK) K-contiguous (the
  K-major B operand the tensor cores take). Storage is at most that of the padded dense
  weight, and equals the stored blocks' when tiles and blocks coincide.
* Tile shape (``kernel_tile``): BN = the largest of 64, 32, 16 dividing R, BK = the largest of
  128, 64, 32 (16 too for fp16) dividing C: tiles then partition blocks exactly (fill 100%,
  every multiply is a stored weight). Blocks smaller than that (R < 16 or C < 32, e.g. the
  default 1 x 4) get BN = 16, BK = 32 tiles that merge neighbouring blocks.
  **Efficient block shapes for this kernel**: R a multiple of 16 (best 32 or 64) and C a
  multiple of 32 (best 64 or 128), e.g. (32, 64) or (64, 64); the converter should prefer
  them when it targets this backend. With 1 x 4 blocks at 90% random block sparsity almost
  every 16 x 32 tile holds a block (P(empty) = 0.9^128 ~ 1e-6): the kernel then does the work
  of a dense GEMM on small tiles. ``SparsePlan.tile_fill`` reports the stored fraction.
* Run: one program per (BM rows, tile row); it walks only its tile row's stored tiles
  (``for t in range(tile_ptr[n], tile_ptr[n+1])``): the X tile at K-tile ``tile_k[t]``, the
  weight tile, one ``tl.dot``. A tile row without tiles does no loads at all (bias only).
* int8 values (quant "int8") with act_quant "dynamic" / "static": X is quantized first
  (quantize.py, padded to the tiles' K), int8 x int8 -> int32 dot, then int8.py's
  epilogue: exact, the reference's bits (sparse int8 is symmetric, so no weight zero point;
  a static zero point is taken out with the weight's row sums).
* float values (quant "none"), and int8 values with act_quant "none" (dequantized at plan
  time to float32(q) * scale, PackedTensor.to_dense()'s values): weights stored as float16,
  X tiles rounded to float16 in registers, fp32 accumulation, float32 bias add.

Numerics of the float path (vs the reference's float64 X @ dense(W)^T): X and W are rounded to
float16 (round to nearest even), |dv| <= 2^-11 |v| + 2^-25 (the last term: half the smallest
float16 subnormal step); products of float16 values are exact in float32; the float32 sums
add (K + 2) * 2^-24 * sum |x w|. A weight beyond float16's range (|w| > 65504) is refused at
plan time; an X beyond it becomes inf. Non-finite X: skipped tiles do not propagate NaN
(the reference's dense product gives NaN for inf * 0 too).

On an H100 (not measured here): with (32, 64) int8 blocks at 90% sparsity, K = 4096,
N = 11008, M = 512, a program of BM = 128 does ~6.4 of 64 K-tiles per tile row: ~10% of the
dense int8 GEMM's MMA work plus the indirect tile-index loads; at M = 1 it reads only the
stored weight bytes (~4.5 MB at 90%) -> a few microseconds. Small tiles (16 x 32) run mma.sync
at well under peak: the per-tile loop overhead dominates, hence the block-shape advice above.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.reference.packed import act_params
from kernels.registry import register
from kernels.core.bounds import MAX_K_INT32
from kernels.core.layouts import layout_spec

from . import _common as C
from ._common import activate, int8_epilogue
from .int8 import linear_factory
from .quantize import quantize_rows

FP16_MAX = 65504.0
BN_CHOICES = (64, 32, 16)
BK_CHOICES_INT8 = (128, 64, 32)
BK_CHOICES_FP16 = (128, 64, 32, 16)
BN_FALLBACK, BK_FALLBACK = 16, 32


def configs() -> list[triton.Config]:
    """Autotune configurations of ``_bsr_kernel``: only BM, warps and stages (BN, BK are the
    plan's tile shape, fixed at load); one under the interpreter."""
    if C.INTERPRET:
        return [triton.Config({"BM": 16}, num_warps=1)]
    tuned = [triton.Config({"BM": bm}, num_warps=w, num_stages=s)
             for bm, w, s in ((16, 4, 4), (32, 4, 4), (64, 4, 3), (128, 8, 3))]
    return tuned if C.AUTOTUNE else [tuned[0], tuned[2]]


@triton.autotune(configs=configs(), key=["m_bucket", "N", "K", "INT8", "BN", "BK"],
                 prune_configs_by={"early_config_prune": C.prune_by_m})
@triton.jit
def _bsr_kernel(x_ptr, tiles_ptr, tile_ptr_ptr, tile_k_ptr, sx_ptr, sw_ptr, colsum_ptr, bias_ptr, y_ptr,
                M, N, K, stride_xm, stride_ym, act_zero_point, m_bucket,
                INT8: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_XZP: tl.constexpr, ACTIVATION: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # X: qx (M, KT*BK) int8 [INT8] or X (M, K) float32; tiles (ntiles, BN, BK) int8 / float16
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < M
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    tile_offs = tl.arange(0, BN)[:, None] * BK + offs_k[None, :]
    start = tl.load(tile_ptr_ptr + pid_n)
    end = tl.load(tile_ptr_ptr + pid_n + 1)
    if INT8:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    b_ptrs = tiles_ptr + start.to(tl.int64) * (BN * BK) + tile_offs
    for t in range(start, end):
        kk = tl.load(tile_k_ptr + t) * BK + offs_k
        b = tl.load(b_ptrs)                                                   # (BN, BK), K-major
        b_ptrs += BN * BK
        if INT8:
            a = tl.load(x_rows + kk[None, :], mask=m_ok[:, None], other=0)     # qx is K-padded
            acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        else:
            a = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)
            acc = tl.dot(a.to(tl.float16), tl.trans(b), acc, out_dtype=tl.float32)

    n_ok = offs_n < N
    if INT8:
        out = int8_epilogue(acc, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, colsum_ptr, bias_ptr,
                            act_zero_point, HAS_XZP, HAS_BIAS)
    else:
        out = acc
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    out = activate(out, ACTIVATION)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])


def kernel_tile(block_shape: tuple[int, int], int8: bool) -> tuple[int, int]:
    """(BN, BK) of the kernel tiles for stored R x C blocks (module docstring)."""
    r, c = block_shape
    bn = next((b for b in BN_CHOICES if r % b == 0), BN_FALLBACK)
    bk = next((b for b in (BK_CHOICES_INT8 if int8 else BK_CHOICES_FP16) if c % b == 0), BK_FALLBACK)
    return bn, bk


def repack_tiles(values: np.ndarray, indptr: np.ndarray, indices: np.ndarray, block_shape: tuple[int, int],
                 n: int, k: int, bn: int, bk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored blocks (nb, R, C) -> (tiles (max(ntiles, 1), bn, bk), tile_ptr (ceil(n/bn)+1,) int32,
    tile_k (max(ntiles, 1),) int32): tile rows in order, K-tiles ascending within a row; a
    tile exists iff a stored block intersects it (its other elements are 0)."""
    r, c = block_shape
    nt, kt = -(-n // bn), -(-k // bk)
    ptr = np.asarray(indptr, np.int64)
    block_rows = np.repeat(np.arange(n // r, dtype=np.int64), np.diff(ptr))
    block_cols = np.asarray(indices, np.int64)
    rows = (block_rows[:, None, None] * r + np.arange(r)[None, :, None])      # (nb, R, 1)
    cols = (block_cols[:, None, None] * c + np.arange(c)[None, None, :])      # (nb, 1, C)
    rows, cols = (a.ravel() for a in np.broadcast_arrays(rows, cols))
    key = (rows // bn) * kt + cols // bk
    tile_keys, tile_of = np.unique(key, return_inverse=True)                  # sorted: (tile row, K-tile)
    ntiles = tile_keys.size
    tiles = np.zeros((max(ntiles, 1), bn, bk), values.dtype)
    tiles[tile_of, rows % bn, cols % bk] = values.reshape(-1)
    tile_ptr = np.zeros(nt + 1, np.int64)
    np.cumsum(np.bincount(tile_keys // kt, minlength=nt), out=tile_ptr[1:])
    tile_k = np.zeros(max(ntiles, 1), np.int64)
    tile_k[:ntiles] = tile_keys % kt
    return tiles, tile_ptr.astype(np.int32), tile_k.astype(np.int32)


class SparsePlan:
    """A bsr weight repacked into kernel tiles on the device (module docstring).

    act_quant "dynamic" / "static" need quant "int8" values (symmetric int8, scale (N,) or (1,));
    act_quant "none" takes float values, or int8 values dequantized at plan time."""

    def __init__(self, weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0):
        self.weight = weight
        n, k = C.check_2d_weight(weight, "bsr")
        params = {**layout_spec("bsr").params, **weight.params}
        r, c = (int(v) for v in params["block_shape"])
        quant = params["quant"]
        f = weight.fields
        s, z = act_params("Linear", act_quant, act_scale, act_zero_point)
        self.int8 = act_quant != "none"
        ptr = np.asarray(f["indptr"], np.int64)
        if self.int8:
            if quant != "int8":
                raise ValueError(f"Linear: act_quant={act_quant!r} needs integer weights, but bsr weight "
                                 f"{weight.name!r} stores float values (quant='none'); use act_quant='none'")
            if k > MAX_K_INT32:
                raise ValueError(f"Linear (triton bsr int8): K = {k} is too large for the exact int32 "
                                 f"accumulation (at most {MAX_K_INT32}); use another backend")
            values = np.asarray(f["qdata"])
        elif quant == "int8":     # weight-only: PackedTensor.to_dense()'s values, float32(q) * scale
            scale = np.broadcast_to(np.asarray(f["scale"], np.float32).reshape(-1), (n,))
            block_rows = np.repeat(np.arange(n // r), np.diff(ptr))
            row_scale = scale[block_rows[:, None] * r + np.arange(r)[None, :]]          # (nb, R)
            values = np.asarray(f["qdata"]).astype(np.float32) * row_scale[:, :, None]
        else:
            values = np.asarray(f["values"], np.float32)
        if not self.int8:
            big = float(np.max(np.abs(values), initial=0.0))
            if big > FP16_MAX:
                raise ValueError(f"Linear (triton bsr float path): weight {weight.name!r} has |w| = {big:g} "
                                 f"beyond float16's range ({FP16_MAX:g}); use another backend")
            values = values.astype(np.float16)
        self.n, self.k = n, k
        self.bn, self.bk = kernel_tile((r, c), self.int8)
        tiles, tile_ptr, tile_k = repack_tiles(values, ptr, f["indices"], (r, c), n, k, self.bn, self.bk)
        self.ntiles = int(tile_ptr[-1])
        stored = values.size
        self.tile_fill = stored / (self.ntiles * self.bn * self.bk) if self.ntiles else 1.0
        self.kp = -(-k // self.bk) * self.bk
        self.tiles, self.tile_ptr, self.tile_k = C.upload(tiles), C.upload(tile_ptr), C.upload(tile_k)
        self.static = act_quant == "static"
        self.act_zero_point = z
        self.act_scale = C.upload(np.array([s], np.float64)) if self.static else None
        self.bias_dtype = torch.float64 if self.int8 else torch.float32
        if self.int8:
            self.sw = C.upload(np.broadcast_to(np.asarray(f["scale"], np.float64).reshape(-1), (n,)))
            rows = np.repeat(np.arange(n // r), np.diff(ptr))[:, None] * r + np.arange(r)[None, :]
            colsum = np.bincount(np.broadcast_to(rows[:, :, None], values.shape).ravel(),
                                 weights=values.astype(np.float64).ravel(), minlength=n)
            self.colsum = C.upload(colsum.astype(np.int32))          # |.| <= 127 K, exact in float64

    def __call__(self, x2: torch.Tensor, bias: torch.Tensor | None, activation: int,
                 out: torch.Tensor) -> torch.Tensor:
        m = x2.shape[0]
        if m == 0:
            return out
        if self.int8:
            a, s_x, _ = quantize_rows(x2, self.kp, self.act_scale, self.act_zero_point)
            sw, colsum = self.sw, self.colsum
        else:
            a = s_x = sw = colsum = x2
        grid = lambda meta: (triton.cdiv(m, meta["BM"]), triton.cdiv(self.n, self.bn))
        _bsr_kernel[grid](
            a, self.tiles, self.tile_ptr, self.tile_k, s_x, sw, colsum, bias if bias is not None else a, out,
            m, self.n, self.k, a.stride(0), out.stride(0), self.act_zero_point, C.m_bucket(m),
            INT8=self.int8, HAS_BIAS=bias is not None, HAS_XZP=self.static and self.act_zero_point != 0,
            ACTIVATION=activation, BN=self.bn, BK=self.bk, **C.LAUNCH)
        return out


sparse_linear_factory = register("Linear", "triton", "bsr")(linear_factory("bsr", SparsePlan))
