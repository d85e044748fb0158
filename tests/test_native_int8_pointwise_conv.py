"""The native int8 1 x 1 Conv on NCHW memory (csrc/int8_pointwise_conv.h): ``_native.int8_pointwise_conv``
directly, and ``_native.int8_conv2d`` / the Conv driver, which run it for every 1 x 1 window of
stride 1 without pads and one group.

Bit for bit the reference's packed_conv_ref (kernels/reference/packed.py) on every int8 code path
(scalar, the AVX2 int16 kernel, the 256-bit VNNI one, AVX-512 VNNI; amx runs the AVX-512 one) with
1 and 2 threads: pixel counts that fill a 64-pixel block, leave a partial one or a single pixel;
K not a multiple of 4, K = 1, K beyond one panel's rows; M over several 64-row panels with a
partial last one; a batch; dynamic and static activations, symmetric and asymmetric weights; the
fused activations; pixels that hold NaN, inf, only zeros, subnormal values, and values on a
half-integer of x / s (the estimate's float64 fallback); K past the int32 lanes' bound (the
scalar path). The binding's refusals.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from kernels import registry
from kernels.core import layouts
from kernels.gemm_front import activate_after
from kernels.reference.packed import PackedPlan, packed_conv_ref

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native
    from kernels.native_cpu.conv import ConvPlan, native_conv

POINTWISE = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1])
STATIC = dict(act_quant="static", act_scale=0.03, act_zero_point=-7)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


CASES = {  # name: (N, K, H, W, M)
    "one partial block": (1, 72, 7, 9, 24),
    "two blocks, K % 4 = 1, two panels": (2, 13, 9, 10, 70),
    "K = 1": (1, 1, 4, 5, 3),
    "batch of 3, K % 4 = 2, three panels": (3, 6, 1, 17, 130),
    "K over a panel's rows, one row past a tile": (1, 300, 5, 5, 7),
    "whole blocks, one whole panel": (1, 40, 16, 16, 64),
    "one pixel": (1, 20, 1, 1, 9),
}


def _setup(case, symmetric, act, rng):
    n, k, h, w_, m = CASES[case]
    w = rng.standard_normal((m, k, 1, 1)).astype(np.float32)
    t = layouts.pack_int8("w", w, symmetric=symmetric)
    quant = STATIC if act == "static" else dict(act_quant="dynamic")
    x = rng.standard_normal((n, k, h, w_)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    return t, quant, x, bias


def _ref(x, t, quant, bias):
    return packed_conv_ref(x, PackedPlan(t, op="Conv", **quant), bias, group=1, **POINTWISE)


def _direct(x, plan, quant, bias, activation="none"):
    """int8_pointwise_conv on X (N, K, H, W) viewed as (N, K, H * W), back to (N, M, H, W)."""
    n, k, h, w = x.shape
    y = _native.int8_pointwise_conv(plan.tap_major[0], x.reshape(n, k, h * w), bias, quant["act_quant"],
                                    quant.get("act_scale", 1.0), quant.get("act_zero_point", 0), activation)
    return y.reshape(n, -1, h, w)


@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_exact_on_every_path(case, symmetric, act, native_paths):
    rng = _rng(case, symmetric, act)
    t, quant, x, bias = _setup(case, symmetric, act, rng)
    x.reshape(x.shape[0], x.shape[1], -1)[0, :, 0] = 0.0      # an all-zero pixel: scale 1
    plan = ConvPlan(t, 1, **quant)
    want, want_nobias = _ref(x, t, quant, bias), _ref(x, t, quant, None)
    for isa, nt in native_paths():
        y = _direct(x, plan, quant, bias)
        assert y.dtype == np.float32 and y.flags.c_contiguous
        assert np.array_equal(y, want), f"{isa}, {nt} threads: max diff {np.max(np.abs(y - want))}"
        assert np.array_equal(native_conv(x, plan, bias, **POINTWISE), want), (isa, nt)   # via int8_conv2d
        assert np.array_equal(_direct(x, plan, quant, None), want_nobias), (isa, nt)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "hard_swish", "silu"])
def test_fused_activation_is_the_activation_of_the_result(activation, native_paths):
    rng = _rng("act", activation)
    t, quant, x, bias = _setup("two blocks, K % 4 = 1, two panels", True, "dynamic", rng)
    plan = ConvPlan(t, 1, **quant)
    want = activate_after(_ref(x, t, quant, bias).astype(np.float32), activation, "native")   # its own op's kernel
    for isa, nt in native_paths():
        assert np.array_equal(_direct(x, plan, quant, bias, activation), want), (isa, nt)
        assert np.array_equal(native_conv(x, plan, bias, activation=activation, **POINTWISE), want), (isa, nt)


def _special_pixels(k: int, rng) -> np.ndarray:
    """X (1, K, 1, 24): each pixel a case the quantizer treats apart."""
    x = rng.standard_normal((k, 24)).astype(np.float32)
    x[0, 0] = np.nan                          # NaN in the first channel
    x[k - 1, 1] = np.nan                      # ... the last
    x[k // 2, 2] = np.inf                     # +-inf (dynamic: scale NaN; static: clamped)
    x[1, 3] = -np.inf
    x[:, 4] = 0.0                             # all zero: scale 1
    x[:, 5] = 0.0
    x[0, 5], x[1, 5], x[2, 5], x[3, 5] = 127.0, 0.5, -2.5, 63.5   # s = 1: x / s on half-integers
    x[:, 6] = 0.0
    x[0, 6], x[1, 6], x[2, 6] = 100.0, 50.0, -50.0                # 63.5 (1 + e): within the tie window
    x[:, 7] = rng.standard_normal(k).astype(np.float32) * np.float32(1e-39)   # subnormal: 1 / s not a float32
    x[:, 8] = np.float32(3e38) * np.sign(rng.standard_normal(k)).astype(np.float32)   # near the top of float32
    x[:, 9] = np.float32(1e-3) * rng.standard_normal(k).astype(np.float32)
    x[2, 9] = np.float32(40.0)                # static: far beyond the range, clamped
    x[:, 10] = -0.0
    return x[None, :, None, :]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the reference's x / NaN
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("k", [5, 36])
def test_special_values_reach_only_their_pixels(k, act, native_paths):
    rng = _rng("special", k, act)
    w = rng.standard_normal((10, k, 1, 1)).astype(np.float32)
    t = layouts.pack_int8("w", w)
    quant = STATIC if act == "static" else dict(act_quant="dynamic")
    plan = ConvPlan(t, 1, **quant)
    x = _special_pixels(k, rng)
    bias = rng.standard_normal(10).astype(np.float32)
    want = _ref(x, t, quant, bias)
    assert np.isnan(want).any() and np.isfinite(want).any()
    for isa, nt in native_paths():
        assert np.array_equal(_direct(x, plan, quant, bias), want, equal_nan=True), (isa, nt)


def test_k_beyond_the_int32_lanes_takes_exact_int64_sums(native_paths):
    k = int(2**31 // (255 * 255)) + 3                           # past kMaxKInt32: every path runs scalar
    rng = _rng("big k")
    w = np.where(rng.random((3, k, 1, 1)) < 0.5, -1.0, 1.0).astype(np.float32)   # |qw| = 127 everywhere
    t = layouts.pack_int8("w", w)
    x = np.abs(rng.standard_normal((1, k, 1, 2))).astype(np.float32)
    plan = ConvPlan(t, 1, act_quant="dynamic")
    want = _ref(x, t, dict(act_quant="dynamic"), None)
    for isa, nt in native_paths():
        assert np.array_equal(_direct(x, plan, dict(act_quant="dynamic"), None), want), (isa, nt)


def test_one_dimensional_pointwise_conv_through_the_driver(native_paths):
    rng = _rng("1-D")
    w = rng.standard_normal((11, 9, 1)).astype(np.float32)
    t = layouts.pack_int8("w", w)
    plan = ConvPlan(t, 1, act_quant="dynamic")
    x = rng.standard_normal((2, 9, 37)).astype(np.float32)
    kw = dict(strides=[1], pads=[0, 0], dilations=[1])
    want = packed_conv_ref(x, PackedPlan(t, op="Conv", act_quant="dynamic"), None, group=1, **kw)
    for isa, nt in native_paths():
        assert np.array_equal(native_conv(x, plan, None, **kw), want), (isa, nt)
        assert np.array_equal(_native.int8_pointwise_conv(plan.tap_major[0], x), want), (isa, nt)


def test_empty_batch():
    t = layouts.pack_int8("w", np.ones((4, 3, 1, 1), np.float32))
    plan = ConvPlan(t, 1, act_quant="dynamic")
    assert _native.int8_pointwise_conv(plan.tap_major[0], np.zeros((0, 3, 5), np.float32)).shape == (0, 4, 5)


def test_refuses_bad_arguments():
    t = layouts.pack_int8("w", np.ones((4, 3, 1, 1), np.float32))
    w = ConvPlan(t, 1, act_quant="dynamic").tap_major[0]
    x = np.zeros((1, 3, 5), np.float32)
    with pytest.raises(ValueError, match=r"expected \(N, K, P\) with K = 3"):
        _native.int8_pointwise_conv(w, np.zeros((1, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected \(N, K, P\)"):
        _native.int8_pointwise_conv(w, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="P >= 1"):
        _native.int8_pointwise_conv(w, np.zeros((1, 3, 0), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _native.int8_pointwise_conv(w, x.astype(np.float64))
    with pytest.raises(ValueError, match="act_quant"):
        _native.int8_pointwise_conv(w, x, None, "per_tensor")
    with pytest.raises(ValueError, match="activation"):
        _native.int8_pointwise_conv(w, x, None, "dynamic", 1.0, 0, "swish")
    with pytest.raises(ValueError, match="bias"):
        _native.int8_pointwise_conv(w, x, np.zeros(5, np.float32))
