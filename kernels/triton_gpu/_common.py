"""Shared pieces of the Triton kernels: uploads, input checks, the bias, the epilogue activation
and round-half-to-even, written once.

Numerics shared by every kernel of this backend:

* Activation quantization and the int8 epilogues run in float64 (quantize.py,
  int8.py), the reference's own arithmetic: on the GPU, float64 division is ``div.rn.f64``
  (correctly rounded; Triton's float32 ``/`` is not), conversions round to nearest even, and
  every kernel is launched with ``enable_fp_fusion=False`` (``LAUNCH``) so that no multiply and
  add are contracted into an FMA behind the reference's back.
* Round half to even (np.rint) is ``rint_f64``: (v + 1.5 * 2^52) - 1.5 * 2^52, exact in IEEE
  float64 round-to-nearest-even for |v| <= 2^51 (callers clamp v to a few hundred first). It
  needs no libdevice, so it is the same operation on the GPU and in the interpreter.
* The fused activation (``activate``) takes the float32 Y, as kernels/registry.py EPILOGUE_OPS
  defines it (act applied to the rounded float32 output): ReLU exact, the GELUs in float64
  (erf: libdevice ``erf``; tanh from ``exp`` of a non-positive argument) rounded once to float32.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.core import config
from kernels.core.layouts import PackedTensor

from . import DEVICE

# Read when this module is imported, i.e. when the kernels are decorated: triton.jit makes an
# interpreted function exactly when this is set at that moment.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# QRT_TRITON_AUTOTUNE=0: each kernel gets one default configuration per M range instead of
# benchmarking its list on every new shape (tests on a GPU, quick runs). Compilation is per
# configuration and constexpr combination, so tuning the full lists costs minutes on first use.
AUTOTUNE = config.get("QRT_TRITON_AUTOTUNE") != "0"

# Launch options of every kernel: no FMA contraction (module docstring).
LAUNCH = {"enable_fp_fusion": False}


# kernels/core/ops.py ACTIVATIONS -> the constexpr the kernels branch on
ACTIVATION_CODES = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}
FUSED_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")

# constants of the jitted helpers (a kernel may only read constexpr globals); a Python float
# meeting a float64 tensor becomes a float64 constant, exactly
_SQRT_2 = tl.constexpr(math.sqrt(2.0))
_SQRT_2_OVER_PI = tl.constexpr(math.sqrt(2.0 / math.pi))
_RINT_MAGIC = tl.constexpr(6755399441055744.0)       # 1.5 * 2^52


def alloc(shape, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer a wrapper creates (outputs and scratch) comes from here, uninitialized;
    the tests replace it with one that poisons the buffer, so an element a kernel forgets to
    write fails them."""
    return torch.empty(shape, dtype=dtype, device=DEVICE)


def upload(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array as a contiguous tensor on DEVICE (a copy)."""
    t = torch.from_numpy(np.array(a, order="C"))      # a writable copy (a may be a read-only view)
    if dtype is not None:
        t = t.to(dtype)
    return t.to(DEVICE).contiguous()


def round_up(v: int, multiple: int) -> int:
    return -(-int(v) // multiple) * multiple


def m_bucket(m: int) -> int:
    """The autotuner's key for M: the next power of two, so that every new batch size does not
    start a new tuning run."""
    return 1 << max(0, int(m) - 1).bit_length()


def prune_by_m(configs: list, nargs: dict, **kwargs) -> list:
    """The autotuner's early prune for GEMMs: the configs whose BM is no larger than M's bucket
    (a 128-row tile for M = 1 only wastes its work), else those of the smallest BM; without
    AUTOTUNE, only the largest such BM's first config, so that nothing is benchmarked."""
    mb = nargs["m_bucket"]
    keep = [c for c in configs if c.kwargs["BM"] <= mb]
    if not keep:
        smallest = min(c.kwargs["BM"] for c in configs)
        keep = [c for c in configs if c.kwargs["BM"] == smallest]
    if not AUTOTUNE:
        keep = [max(keep, key=lambda c: c.kwargs["BM"])]
    return keep


def check_activation(attrs: dict) -> int:
    act = attrs.get("activation", "none")
    if act not in ACTIVATION_CODES:
        raise ValueError(f"Linear: activation must be one of {', '.join(ACTIVATION_CODES)}; got {act!r}")
    return ACTIVATION_CODES[act]


def check_2d_weight(weight: Any, layout: str) -> tuple[int, int]:
    if not isinstance(weight, PackedTensor):
        raise TypeError(f"Linear: the weight must be an initializer in a packed layout, got {type(weight).__name__}")
    if weight.layout != layout:
        raise ValueError(f"Linear: this triton kernel takes layout {layout!r}, got {weight.layout!r}")
    if len(weight.shape) != 2:
        raise ValueError(f"Linear: packed weight {weight.name!r} has shape {weight.shape}, expected (N, K)")
    weight.check()
    return int(weight.shape[0]), int(weight.shape[1])


def as_device_tensor(x: Any) -> torch.Tensor:
    """A torch tensor on DEVICE: numpy arrays are uploaded (a copy), torch tensors elsewhere
    moved, other CUDA arrays (CuPy) wrapped through DLPack without a copy. TypeError for
    anything else."""
    if isinstance(x, torch.Tensor):
        return x if x.device.type == torch.device(DEVICE).type else x.to(DEVICE)
    if isinstance(x, np.ndarray):
        # from_numpy shares memory; a read-only array is copied (torch warns on those)
        return torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x)).to(DEVICE)
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(f"triton backend: expected a torch tensor, a numpy array or a DLPack array, "
                    f"got {type(x).__name__}")


def rows_of(x: Any, k: int, weight: PackedTensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """X (..., K) as a (M, K) float32 tensor on DEVICE with unit stride along K, and X's leading
    shape; a numpy X is uploaded. ValueError naming what does not match."""
    if isinstance(x, np.ndarray) and x.dtype != np.float32:
        raise ValueError(f"Linear (triton): X must be float32, got {x.dtype}")
    if not isinstance(x, torch.Tensor):
        x = as_device_tensor(x)
    if x.device.type != torch.device(DEVICE).type:
        raise ValueError(f"Linear (triton): X is on {x.device}, this backend runs on {DEVICE!r}")
    if x.dtype != torch.float32:
        raise ValueError(f"Linear (triton): X must be float32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"Linear: X {tuple(x.shape)} does not match packed weight {weight.name!r} of "
                         f"shape {weight.shape} (need float X (..., K))")
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, k)
    if x2.shape[0] and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2, lead


class Bias:
    """The node's bias: uploaded once when it is an initializer (weights[2]), in ``dtype``;
    any other bias array is checked and uploaded on the call that passes it."""

    def __init__(self, weights: dict, n: int, dtype: torch.dtype):
        self.n, self.dtype = n, dtype
        planned = weights.get(2)
        self.array = planned.fields["data"] if isinstance(planned, PackedTensor) and planned.layout == "dense" else None
        self.device = None if self.array is None else self.upload(self.array)

    def upload(self, b: Any) -> torch.Tensor:
        if isinstance(b, torch.Tensor):
            t = b.detach().to(device=DEVICE, dtype=self.dtype)
        else:
            a = np.asarray(b)
            if a.dtype.kind not in "fiu":
                raise ValueError(f"Linear: bias must be numeric, got dtype {a.dtype}")
            t = upload(a.astype(np.float64), self.dtype)   # float32 / float64 -> exact
        if tuple(t.shape) != (self.n,):
            raise ValueError(f"Linear: bias has shape {tuple(t.shape)}, expected ({self.n},)")
        return t.contiguous()

    def __call__(self, b: Any) -> torch.Tensor | None:
        if b is None:
            return None
        if b is self.array:
            return self.device
        return self.upload(b)


@triton.jit
def rint_f64(v):
    """Round half to even of float64 ``v``, |v| <= 2^51 (module docstring)."""
    return (v + _RINT_MAGIC) - _RINT_MAGIC


@triton.jit
def activate(y, ACTIVATION: tl.constexpr):
    """The epilogue activation of a float32 tile (ACTIVATION_CODES)."""
    if ACTIVATION == 1:
        y = tl.where(y < 0, 0.0, y)               # NaN and -0.0 kept, as np.maximum(y, 0)
    elif ACTIVATION == 2:
        x = y.to(tl.float64)
        y = (0.5 * x * (1.0 + tl.math.erf(x / _SQRT_2))).to(tl.float32)
    elif ACTIVATION == 3:
        x = y.to(tl.float64)
        u = _SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))
        e = tl.exp(-2.0 * tl.abs(u))              # in (0, 1]: never overflows
        t = (1.0 - e) / (1.0 + e)                 # tanh(|u|)
        t = tl.where(u < 0, -t, t)
        y = (0.5 * x * (1.0 + t)).to(tl.float32)
    return y


@triton.jit
def grouped_tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program in a 1-D grid over (M / BM) x (N / BN) output tiles,
    GROUP_M tile rows at a time, so that programs running together share weight tiles in L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


@triton.jit
def int8_epilogue(acc, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, colsum_ptr, bias_ptr, act_zero_point,
                  HAS_XZP: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The int8 GEMM epilogue in the reference's order (kernels/reference/packed.py): the
    activation zero point's correction in exact int32 (- z_x * sum_k (qw[n, k] - z_w[n])), then
    s_w[n] * acc, times s_x[m], plus the bias, in float64, rounded once to float32."""
    if HAS_XZP:
        colsum = tl.load(colsum_ptr + offs_n, mask=n_ok, other=0)
        acc -= act_zero_point * colsum[None, :]
    sw = tl.load(sw_ptr + offs_n, mask=n_ok, other=0.0)
    sx = tl.load(sx_ptr + offs_m, mask=m_ok, other=0.0)
    y = sw[None, :] * acc.to(tl.float64)
    y = y * sx[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    return y.to(tl.float32)
