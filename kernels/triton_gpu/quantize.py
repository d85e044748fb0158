"""Activation quantization for the int8 GEMMs: X (M, K) float32 -> qx (M, Kp) int8, s_x (M,)
float64, rowsum (M,) int32. One program per row.

Why a separate pass and not a fused first pass over K inside the GEMM: the per-row scale
needs the whole row's max|x| before any element of the row can be quantized, so a fused GEMM
prologue would read each X row twice (absmax, then quantize) in *every* program along N:
N / BN times the fp32 traffic and the division work. Done once here, the pass reads X (4 bytes
an element) once or twice per row and writes 1 byte, and the GEMM's main loop streams int8
A tiles straight into the tensor cores. Its cost is one extra launch (a few microseconds:
noticeable only for decode-sized M, where the GEMM itself is a few microseconds too).

Numerics: the reference's (kernels/reference/packed.py), in float64:

* dynamic: s[m] = max|x_m| / 127 (1 for an all-zero row); qx = clip(rint(x / s), -127, 127).
  max|x| of float32 values is exact; the division is correctly rounded (div.rn.f64 on the
  GPU); rint is round half to even (``_common.rint_f64``). So qx and s are the reference's
  bits, and the GEMM is exact.
* static: s = act_scale (a float64 scalar, passed in a tensor: a Python float argument would
  become a float32), z = act_zero_point; qx = clip(rint(x / s) + z, -128, 127), stored as qx
  itself (an int8); the GEMM subtracts z * colsum(W) afterwards.
* columns K..Kp-1 (the GEMM's K padding) are written as 0 and left out of rowsum, so padded
  products vanish whatever the weights' padding holds.
* non-finite X, as the reference computes it: with dynamic scales a NaN or +-inf anywhere in a
  row makes that whole output row NaN (the row's scale is NaN); with a static scale a NaN
  does so too, while +-inf saturates to 127 / -128. The flag travels as s[m] = NaN; qx of such
  a row is written finite (NaN -> 0), never an undefined float -> int conversion.

On an H100: memory-bound, ~5 bytes per element (4 read, +4 again for a long row that misses
L2, 1 written); BLOCK_K = 1024 with 4 warps keeps a row's 1-2 passes in flight; M programs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from ._common import rint_f64

_INF = tl.constexpr(float("inf"))
# NaN as float64 bits: a global tl.constexpr(float("nan")) breaks Triton's check that a
# kernel's globals are unchanged since it was compiled (it compares with ==, and NaN != NaN:
# "Global variable _NAN has changed ... from constexpr[nan] to constexpr[nan]", seen on an
# H200 with Triton 3.6; the interpreter does not make that check).
_NAN_BITS = tl.constexpr(0x7FF8000000000000)


def configs() -> list[triton.Config]:
    """Autotune configurations of ``_quantize_rows_kernel`` (one under the interpreter)."""
    if C.INTERPRET:
        return [triton.Config({"BLOCK_K": 64}, num_warps=1)]
    tuned = [triton.Config({"BLOCK_K": 1024}, num_warps=4),
             triton.Config({"BLOCK_K": 2048}, num_warps=8),
             triton.Config({"BLOCK_K": 256}, num_warps=2)]
    return tuned if C.AUTOTUNE else tuned[:1]


@triton.autotune(configs=configs(), key=["k_bucket", "STATIC"])
@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, rowsum_ptr, act_scale_ptr, act_zero_point,
                          K, Kp, stride_xm, stride_qm, k_bucket,
                          STATIC: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + m * stride_xm
    q_row = q_ptr + m * stride_qm
    offs = tl.arange(0, BLOCK_K)

    if STATIC:
        s = tl.load(act_scale_ptr)                                   # float64
    else:
        amax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0)
            amax = tl.maximum(amax, tl.abs(x))                       # NaN: flagged below
        row_max = tl.max(amax, axis=0).to(tl.float64)
        s = tl.where(row_max == 0.0, 1.0, row_max / 127.0)

    bad = tl.zeros([BLOCK_K], dtype=tl.int32)
    rowsum = tl.zeros([BLOCK_K], dtype=tl.int32)
    for k0 in range(0, Kp, BLOCK_K):
        kk = k0 + offs
        x = tl.load(x_row + kk, mask=kk < K, other=0.0)
        if STATIC:
            bad = bad | (x != x).to(tl.int32)  # noqa: PLR0124 - NaN test (no isnan in tl)
        else:
            bad = bad | ((x != x) | (tl.abs(x) == _INF)).to(tl.int32)  # noqa: PLR0124
        v = x.to(tl.float64) / s
        v = tl.where(v == v, v, 0.0)  # noqa: PLR0124 - NaN -> 0 (the row is flagged)
        if STATIC:
            # clamp first so rint's range holds; |z| <= 128, so any |v| > 256 saturates anyway
            v = tl.minimum(tl.maximum(v, -256.0), 256.0)
            q = rint_f64(v) + act_zero_point
            q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        else:
            v = tl.minimum(tl.maximum(v, -127.0), 127.0)            # rint(+-127) = +-127
            q = rint_f64(v)
        qi = tl.where(kk < K, q.to(tl.int32), 0)
        rowsum += qi
        tl.store(q_row + kk, qi.to(tl.int8), mask=kk < Kp)
    nan = tl.full([], _NAN_BITS, tl.int64).to(tl.float64, bitcast=True)
    s = tl.where(tl.max(bad, axis=0) != 0, nan, s)
    tl.store(s_ptr + m, s)
    tl.store(rowsum_ptr + m, tl.sum(rowsum, axis=0))


def quantize_rows(x2: torch.Tensor, kp: int, act_scale: torch.Tensor | None,
                  act_zero_point: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X (M, K) float32, unit stride along K -> (qx (M, kp) int8, s_x (M,) float64, rowsum (M,)
    int32). ``act_scale`` None: dynamic; else a (1,) float64 tensor on DEVICE: static with
    ``act_zero_point``."""
    m, k = x2.shape
    if x2.dtype != torch.float32 or (m and x2.stride(1) != 1) or kp < k:
        raise ValueError(f"quantize_rows: need float32 X with unit stride along K and kp >= K, got "
                         f"{x2.dtype}, strides {x2.stride()}, kp = {kp}, K = {k}")
    qx = C.alloc((m, kp), torch.int8)
    s_x = C.alloc((m,), torch.float64)
    rowsum = C.alloc((m,), torch.int32)
    if m == 0:
        return qx, s_x, rowsum
    static = act_scale is not None
    _quantize_rows_kernel[(m,)](
        x2, qx, s_x, rowsum, act_scale if static else s_x, int(act_zero_point),
        k, kp, x2.stride(0), qx.stride(0), C.m_bucket(k),
        STATIC=static, **C.LAUNCH)
    return qx, s_x, rowsum
