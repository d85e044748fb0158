"""Linear on ``int8`` weights with int8 activations: ("Linear", "int8", "triton").

    Y (M, N) float32 = act(dequant(qx @ qw^T) + bias)

Design:

* Plan time (the factory): qdata (N, K) is copied once into a zero-padded (Np, Kp) int8 array,
  Np and Kp multiples of the largest BN / BK of ``configs()``, so the main loop loads weight
  tiles without masks. It stays K-contiguous: Hopper's wgmma takes 8-bit operands only
  K-major, so the kernel loads (BN, BK) tiles and feeds ``tl.trans`` of them as the B operand
  (no data movement). Also uploaded: s_w (N,) float64 (per-tensor broadcast), the weight zero
  point z_w (N,) int32 (asymmetric only), colsum[n] = sum_k (q_w - z_w) over the real K
  (int32), and the bias (float64) when it is an initializer.
* Run time: quantize.py turns X into qx (M, Kp) int8 + s_x (M,) + rowsum (M,) (one pass; why
  not fused: see there), then one GEMM launch: a (BM, BN) output tile per program, programs in
  GROUP_M-row super-groups so consecutive programs share weight tiles in L2, K loop of int8
  ``tl.dot(..., out_dtype=int32)`` (tensor cores: mma / wgmma s8.s8.s32).
* Epilogue, fused: the zero-point corrections in exact int32, the float64 dequantize + bias,
  the rounding to float32, then the activation (``_common.activate``), one store.

Numerics (the reference's, kernels/reference/packed.py, bit for bit):

* acc[m, n] = sum_k qx qw exactly (int32 accumulate), then
  acc -= z_w[n] * rowsum[m]  and  acc -= z_x * colsum[n], which gives
  sum_k (qx - z_x)(qw - z_w) exactly: every intermediate is a sum of at most K products of
  magnitude <= 255 * 255, so K <= ``MAX_K_INT32`` = 33025 is required (checked, refused above).
  Padded columns contribute 0 (qx is 0 there and left out of rowsum; colsum is over real K).
* y = float64(s_w[n]) * float64(acc); y = y * s_x[m]; y = y + b[n]; float32(y): the
  reference's operations in its order, each IEEE-rounded once (no FMA contraction: LAUNCH).
  With the quantization also the reference's (quantize.py), Y equals the reference's Y
  exactly; the fused ReLU is exact, the GELUs are float64 formulas rounded once (their
  tolerance: tests/test_triton_kernels.py).
* act_quant "none" (weight-only int8) is int4.py's kernel.

On an H100 (SXM: ~1980 dense int8 TOP/s, 3.35 TB/s). Nothing could be timed here; the
configurations were only compiled for sm_90a (Triton 3.9) to check that the >= 64-row tiles
lower to wgmma, the 16-row ones to mma.sync, and what fits in registers (``configs()``).
Expected: M >= 128 runs the 128 x 128 x 64 tile (8 warps, 4 stages) on wgmma, compute-bound at
large N and K; the float64 epilogue costs ~10 float64 operations per output (H100: 34 TFLOP/s
fp64 on CUDA cores), a few % of a K = 768 tile's time, more with a GELU (which spills in the
128 x 128 tile: ``configs()``). M <= 16 (decode) runs the 16-row tiles and is bound by
the weight bytes: ~N * K / 3.35 TB/s, e.g. 4096 x 11008 -> ~14 us, plus the quantize launch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.reference.packed import act_params
from kernels.core.bounds import MAX_K_INT32
from kernels.gemm_front import gemm_factory
from kernels.registry import register

from . import _common as C
from ._common import activate, grouped_tile, int8_epilogue
from .quantize import quantize_rows


def configs() -> list[triton.Config]:
    """Autotune configurations of ``_int8_gemm_kernel`` (one small one under the interpreter).
    The largest BN / BK here set the weight's padding (N_ALIGN, K_ALIGN)."""
    if C.INTERPRET:
        return [triton.Config({"BM": 16, "BN": 32, "BK": 32, "GROUP_M": 2}, num_warps=1)]
    # Checked by compiling for sm_90a with Triton 3.9 (no GPU to run on): each of these fits in
    # 255 registers without spilling for the plain epilogue; with a float64 GELU the 128 x 128
    # tile spills ~370 (erf) / ~1160 (tanh) bytes a thread, in the epilogue, not the main loop
    # (128 x 64 does not spill; the autotuner chooses). 128 x 256 and
    # BK = 128 at 128-row tiles spill even without an activation, so they are not offered.
    tuned = [
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 64, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 64, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 64, "BN": 64, "BK": 128, "GROUP_M": 8}, num_warps=4, num_stages=3),
        triton.Config({"BM": 16, "BN": 128, "BK": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
        triton.Config({"BM": 16, "BN": 64, "BK": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
    ]
    return tuned if C.AUTOTUNE else [tuned[3], tuned[5]]


N_ALIGN = max(c.kwargs["BN"] for c in configs())
K_ALIGN = max(c.kwargs["BK"] for c in configs())


@triton.autotune(configs=configs(), key=["m_bucket", "N", "Kp"], prune_configs_by={"early_config_prune": C.prune_by_m})
@triton.jit
def _int8_gemm_kernel(qx_ptr, w_ptr, sx_ptr, rowsum_ptr, sw_ptr, zw_ptr, colsum_ptr, bias_ptr, y_ptr,
                      M, N, Kp, stride_qm, stride_wn, stride_ym, act_zero_point, m_bucket,
                      HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, HAS_XZP: tl.constexpr,
                      ACTIVATION: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # qx (M, Kp) int8, W (Np, Kp) int8 zero-padded, Y (M, N) float32
    pid_m, pid_n = grouped_tile(M, N, BM, BN, GROUP_M)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < M
    a_ptrs = qx_ptr + offs_m.to(tl.int64)[:, None] * stride_qm + offs_k[None, :]
    b_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]   # (BN, BK), K-major
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for _ in range(0, Kp, BK):
        a = tl.load(a_ptrs, mask=m_ok[:, None], other=0)
        b = tl.load(b_ptrs)                                  # padded: never out of bounds
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        a_ptrs += BK
        b_ptrs += BK

    n_ok = offs_n < N
    if HAS_WZP:   # - z_w[n] * sum_k qx[m, k]
        rowsum = tl.load(rowsum_ptr + offs_m, mask=m_ok, other=0)
        zw = tl.load(zw_ptr + offs_n, mask=n_ok, other=0)
        acc -= zw[None, :] * rowsum[:, None]
    y = int8_epilogue(acc, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, colsum_ptr, bias_ptr, act_zero_point,
                      HAS_XZP, HAS_BIAS)
    out = activate(y, ACTIVATION)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])


class Int8Plan:
    """One Linear node's int8 weight on the device, for act_quant "dynamic" / "static".

    weight: PackedTensor "int8", logical (N, K): qdata (N, K) int8, scale (N,) or (1,) float32,
    zero_point like scale (asymmetric) or absent. Symmetric and asymmetric, per-channel and
    per-tensor are all handled (the reference handles all four)."""

    bias_dtype = torch.float64

    def __init__(self, weight: Any, act_quant: str, act_scale: Any = None, act_zero_point: Any = 0):
        self.weight = weight
        self.n, self.k = C.check_2d_weight(weight, "int8")
        if act_quant not in ("dynamic", "static"):
            raise ValueError(f"Linear: the triton int8 GEMM takes act_quant 'dynamic' or 'static', got {act_quant!r}")
        s, z = act_params("Linear", act_quant, act_scale, act_zero_point)
        if self.k > MAX_K_INT32:
            raise ValueError(f"Linear (triton int8): K = {self.k} is too large for the exact int32 "
                             f"accumulation (at most {MAX_K_INT32}); use another backend")
        self.static = act_quant == "static"
        self.act_zero_point = z
        self.act_scale = C.upload(np.array([s], np.float64)) if self.static else None
        n, k = self.n, self.k
        self.kp = C.round_up(k, K_ALIGN)
        f = weight.fields
        q = np.asarray(f["qdata"]).reshape(n, k)
        w = np.zeros((C.round_up(n, N_ALIGN), self.kp), np.int8)
        w[:n, :k] = q
        zp = f.get("zero_point")
        zw = np.zeros(n, np.int64) if zp is None else np.broadcast_to(np.asarray(zp, np.int64).reshape(-1), (n,))
        colsum = q.astype(np.int64).sum(axis=1) - k * zw          # |.| <= 255 K < 2^31
        self.w = C.upload(w)
        self.sw = C.upload(np.broadcast_to(np.asarray(f["scale"], np.float64).reshape(-1), (n,)))
        self.has_wzp = zp is not None and bool(np.any(zw != 0))
        self.zw = C.upload(zw.astype(np.int32))
        self.colsum = C.upload(colsum.astype(np.int32))

    def __call__(self, x2: torch.Tensor, bias: torch.Tensor | None, activation: int,
                 out: torch.Tensor) -> torch.Tensor:
        """x2 (M, K) float32 on DEVICE -> out (M, N) float32."""
        m = x2.shape[0]
        if m == 0:
            return out
        qx, s_x, rowsum = quantize_rows(x2, self.kp, self.act_scale, self.act_zero_point)
        grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(self.n, meta["BN"]),)
        _int8_gemm_kernel[grid](
            qx, self.w, s_x, rowsum, self.sw, self.zw, self.colsum, bias if bias is not None else self.sw, out,
            m, self.n, self.kp, qx.stride(0), self.w.stride(0), out.stride(0), self.act_zero_point,
            C.m_bucket(m),
            HAS_BIAS=bias is not None, HAS_WZP=self.has_wzp, HAS_XZP=self.static and self.act_zero_point != 0,
            ACTIVATION=activation, **C.LAUNCH)
        return out


def make_plan(weight: Any, act_quant: str = "none", act_scale: Any = None, act_zero_point: Any = 0):
    """The int8 GEMM plan for integer activations, int4.py's for act_quant "none"."""
    if act_quant == "none":
        from .int4 import Int4Plan
        C.check_2d_weight(weight, "int8")
        return Int4Plan(weight)
    return Int8Plan(weight, act_quant, act_scale, act_zero_point)


def linear_factory(layout: str, make: Any):
    """A kernel factory for ("Linear", layout, "triton") on kernels/gemm_front.py over a plan
    constructor ``make(weight, act_quant, act_scale, act_zero_point)``: the weight (and a
    constant bias) go to the device once; each call runs the plan on X's rows."""

    def prepare(weight, a, weights):
        plan = make(weight, **a.quant)
        return plan, C.Bias(weights, plan.n, plan.bias_dtype), C.check_activation({"activation": a.activation})

    def compute(x, prepared, bias, a):
        plan, bias_of, activation = prepared
        x2, lead = C.rows_of(x, plan.k, plan.weight)
        out = C.alloc((x2.shape[0], plan.n), torch.float32)
        plan(x2, bias_of(bias), activation, out)
        return out.reshape(*lead, plan.n)

    factory = gemm_factory("Linear", prepare, compute, name=f"triton_{layout}_linear_factory")
    factory.fused_activations = C.FUSED_ACTIVATIONS          # kernels.registry.build
    return factory


int8_linear_factory = register("Linear", "triton", "int8")(linear_factory("int8", make_plan))
