"""The native int8 Conv kernel (csrc/int8_conv.h, ``_native.int8_conv2d``): patch rows built in
C++ from a channels-last copy of X, tap-major, into the int8 Linear's own quantizer and GEMM.

Bit for bit the reference's packed_conv_ref (kernels/reference/packed.py) on every int8 code
path, 1 and 2 threads: the window shapes that take each way of building a row (one run for
1 x 1 windows, kernel-row runs, per-tap runs for dilation and groups), stems with short rows,
depthwise groups, a batch, NaN / inf / all-zero patches, static and dynamic activations,
the fused activation; the binding's refusals; the driver's use of the kernel (a spy).
tests/test_native_int4_conv.py covers the other layouts and the session.
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


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))

CASES = {  # name: (X shape, M, kernel, group, strides, pads, dilations)
    "3x3 pad 1": ((1, 16, 9, 9), 24, (3, 3), 1, [1, 1], [1, 1, 1, 1], [1, 1]),
    "stem 7x7 / 2, 3 channels": ((2, 3, 19, 17), 8, (7, 7), 1, [2, 2], [3, 3, 3, 3], [1, 1]),
    "1x1 (one run)": ((2, 12, 5, 6), 70, (1, 1), 1, [1, 1], [0, 0, 0, 0], [1, 1]),
    "1x1 / 2, two groups": ((1, 8, 7, 6), 6, (1, 1), 2, [2, 2], [0, 0, 0, 0], [1, 1]),
    "3x3 / 2, asymmetric pads": ((1, 5, 8, 11), 4, (3, 3), 1, [2, 2], [0, 1, 2, 0], [1, 1]),
    "dilated 3x2": ((2, 6, 9, 8), 12, (3, 2), 1, [2, 1], [1, 0, 2, 1], [1, 2]),
    "grouped 3x3": ((1, 12, 6, 7), 9, (3, 3), 3, [1, 1], [1, 1, 1, 1], [1, 1]),
    "depthwise 3x3": ((2, 8, 6, 6), 8, (3, 3), 8, [1, 1], [1, 1, 1, 1], [1, 1]),
    "1-D, dilated": ((2, 6, 10), 5, (3,), 1, [2], [1, 2], [2]),
    "1-D 1x1, four groups": ((2, 4, 11), 8, (1,), 4, [1], [0, 0], [1]),
    "window = input": ((1, 4, 3, 3), 3, (3, 3), 1, [1, 1], [0, 0, 0, 0], [1, 1]),
    "K over one panel's rows": ((1, 40, 5, 5), 130, (3, 3), 1, [1, 1], [1, 1, 1, 1], [1, 1]),
}


def _plan_and_ref(case, symmetric, act, rng):
    xshape, m, kernel, group, strides, pads, dilations = CASES[case]
    w = rng.standard_normal((m, xshape[1] // group, *kernel)).astype(np.float32)
    t = layouts.pack_int8("w", w, symmetric=symmetric)
    quant = dict(act_quant=act, act_scale=0.03, act_zero_point=-7) if act == "static" else dict(act_quant=act)
    plan = ConvPlan(t, group, **quant)
    kw = dict(strides=strides, pads=pads, dilations=dilations)

    def ref(x, bias):
        return packed_conv_ref(x, PackedPlan(t, op="Conv", **quant), bias, group=group, **kw)
    return plan, kw, ref


@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_exact_on_every_path(case, symmetric, act, native_paths):
    rng = _rng(case, symmetric, act)
    plan, kw, ref = _plan_and_ref(case, symmetric, act, rng)
    assert plan.tap_major is not None                     # the kernel, not the im2col driver
    xshape, m = CASES[case][:2]
    x = rng.standard_normal(xshape).astype(np.float32)
    x.reshape(xshape[0], xshape[1], -1)[0, :, 0] = 0.0    # (part of) a patch of zeros: scale 1
    bias = rng.standard_normal(m).astype(np.float32)
    want, want_nobias = ref(x, bias), ref(x, None)
    for isa, nt in native_paths():
        y = native_conv(x, plan, bias, **kw)
        assert y.dtype == np.float32 and y.shape == want.shape and y.flags.c_contiguous
        assert np.array_equal(y, want), f"{isa}, {nt} threads: max diff {np.max(np.abs(y - want))}"
        assert np.array_equal(native_conv(x, plan, None, **kw), want_nobias), (isa, nt)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the reference's x / NaN
@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_nan_and_inf_reach_the_patches_that_hold_them(act, native_paths):
    rng = _rng("nan", act)
    plan, kw, ref = _plan_and_ref("3x3 pad 1", True, act, rng)
    x = rng.standard_normal((1, 16, 9, 9)).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    x[0, 5, 7, 6] = np.inf
    bias = rng.standard_normal(24).astype(np.float32)
    want = ref(x, bias)
    assert np.isnan(want).any() and np.isfinite(want).any()
    for isa, nt in native_paths():
        assert np.array_equal(native_conv(x, plan, bias, **kw), want, equal_nan=True), (isa, nt)


@pytest.mark.parametrize("activation", ["relu", "gelu", "hard_swish", "silu"])
def test_fused_activation_is_the_activation_of_the_result(activation, native_paths):
    rng = _rng("act", activation)
    plan, kw, ref = _plan_and_ref("stem 7x7 / 2, 3 channels", True, "dynamic", rng)
    x = rng.standard_normal((2, 3, 19, 17)).astype(np.float32)
    want = activate_after(ref(x, None).astype(np.float32), activation, "native")   # its own op's kernel
    for isa, nt in native_paths():
        assert np.array_equal(native_conv(x, plan, None, activation=activation, **kw), want), (isa, nt)


def test_empty_batch_and_float64_input():
    rng = _rng("edge")
    plan, kw, ref = _plan_and_ref("3x3 pad 1", True, "dynamic", rng)
    y = native_conv(np.zeros((0, 16, 9, 9), np.float32), plan, None, **kw)
    assert y.shape == (0, 24, 9, 9)
    x64 = rng.standard_normal((1, 16, 9, 9))              # other dtypes: the reference, as before
    assert np.array_equal(native_conv(x64, plan, None, **kw), ref(x64, None))


def test_the_driver_calls_the_kernel(monkeypatch):
    rng = _rng("spy")
    plan, kw, ref = _plan_and_ref("dilated 3x2", True, "dynamic", rng)
    calls = []
    real = _native.int8_conv2d
    monkeypatch.setattr(_native, "int8_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    plan.gemms = None                                      # the im2col driver would fail on this
    x = rng.standard_normal((2, 6, 9, 8)).astype(np.float32)
    assert np.array_equal(native_conv(x, plan, None, **kw), ref(x, None)) and calls == [1]


def test_the_bound_run_takes_plain_calls_and_hands_on_the_rest(monkeypatch):
    """The factory's run (conv.bound_int8_conv): float32 C-contiguous X straight into the kernel,
    everything else through native_conv, with the same results and errors as before."""
    from kernels.native_cpu import conv as conv_mod
    rng = _rng("bound")
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    t = layouts.pack_int8("w", w)
    kw = dict(strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 1])
    run = registry.build("Conv", "int8", "native", registry.fill_attrs("Conv", {"act_quant": "dynamic", **kw}), {1: t})
    ref = PackedPlan(t, op="Conv", act_quant="dynamic")
    general = []
    real = conv_mod.native_conv
    monkeypatch.setattr(conv_mod, "native_conv", lambda *a, **k: general.append(1) or real(*a, **k))
    x = rng.standard_normal((2, 4, 7, 8)).astype(np.float32)
    b32 = rng.standard_normal(6).astype(np.float32)
    for bias in (None, b32, b32.astype(np.float64)):
        assert np.array_equal(run(x, t, bias)[0], packed_conv_ref(x, ref, bias, **kw))
    assert general == []
    others = [(x.astype(np.float64), None),                        # the reference's dtype path
              (np.asfortranarray(x), None),                        # not C-contiguous
              (x, b32.astype(np.float16))]                         # a bias dtype the binding does not read
    for xo, bias in others:
        assert np.array_equal(run(xo, t, bias)[0], packed_conv_ref(xo, ref, bias, **kw))
    assert len(general) == len(others)
    unpadded = registry.build("Conv", "int8", "native", registry.fill_attrs("Conv", {"act_quant": "dynamic"}), {1: t})
    with pytest.raises(ValueError, match="larger than the padded input"):   # the general path's error
        unpadded(np.zeros((1, 4, 2, 8), np.float32), t, None)             # H = 2 < 3: no window
    assert len(general) == len(others) + 1


def test_kernel_refuses_bad_arguments():
    rng = _rng("bad")
    w = _native.Int8Weight(rng.integers(-127, 128, (4, 18)).astype(np.int8), np.ones(4, np.float32), None)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    good = dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    assert _native.int8_conv2d([w], x, **good).shape == (1, 4, 5, 5)
    bad = [
        (dict(x=x.astype(np.float64)), TypeError, "float32"),
        (dict(x=x[:, :, :, ::2]), ValueError, "contiguous"),
        (dict(x=x[0]), ValueError, r"\(N, C, H, W\)"),
        (dict(kernel=[3]), ValueError, "kernel must have 2"),
        (dict(pads=[1, 1]), ValueError, "pads"),
        (dict(pads=[-1, 1, 1, 1]), ValueError, "pads must be >= 0"),
        (dict(strides=[0, 1]), ValueError, ">= 1"),
        (dict(kernel=[2, 3]), ValueError, r"\(4, 18\)"),          # the weight's K is 2 * 3 * 3
        (dict(x=x[:, :, :1, :1].copy(), pads=[0, 0, 0, 0]), ValueError, "larger than the padded input"),
        (dict(weights=[w, w]), ValueError, r"= \(4, 9\), got \(4, 18\)"),   # two groups of one channel: K = 9
        (dict(weights=[w, w], x=rng.standard_normal((1, 3, 5, 5)).astype(np.float32)), ValueError,
         "group = 2 must be >= 1 and divide C = 3"),
        (dict(weights=[]), ValueError, "one Int8Weight per group"),
        (dict(weights=w), TypeError, "a list of Int8Weight"),
        (dict(weights=[w, None]), TypeError, "Int8Weight entries, got NoneType"),
        (dict(bias=np.zeros(3, np.float32)), ValueError, "bias"),
        (dict(act_quant="static", act_scale=0.0), ValueError, "act_scale"),
        (dict(activation="tanh"), ValueError, "activation"),
    ]
    for change, err, match in bad:
        args = dict(weights=[w], x=x, **good)
        args.update(change)
        with pytest.raises(err, match=match):
            _native.int8_conv2d(**args)


# --- the float32 depthwise kernel (csrc/depthwise_conv.h) ------------------------------------------

DW_CASES = {  # name: (X shape, channel multiplier, kernel, strides, pads, dilations)
    "3x3 pad 1": ((2, 6, 9, 8), 1, (3, 3), [1, 1], [1, 1, 1, 1], [1, 1]),
    "3x3 / 2": ((1, 5, 11, 10), 1, (3, 3), [2, 2], [1, 1, 1, 1], [1, 1]),
    "stride 2 x 1 (rows only)": ((1, 4, 9, 9), 1, (3, 3), [2, 1], [1, 1, 1, 1], [1, 1]),
    "stride 1 x 2": ((1, 4, 9, 9), 1, (3, 3), [1, 2], [1, 1, 1, 1], [1, 1]),
    "5x5, multiplier 2, asymmetric pads": ((2, 3, 8, 7), 2, (5, 5), [1, 1], [2, 0, 1, 2], [1, 1]),
    "dilated, stride 3, no pads": ((1, 4, 12, 13), 1, (3, 2), [3, 3], [0, 0, 0, 0], [2, 3]),
    "1-D": ((2, 6, 17), 1, (5,), [2], [2, 1], [1]),
    "wide rows (vector tails)": ((1, 3, 5, 67), 1, (3, 3), [1, 1], [1, 1, 1, 1], [1, 1]),
    # tall planes: the middle rows 8 and 4 at a time, then one at a time (depthwise_conv.cpp)
    "tall, 3x3": ((1, 3, 37, 20), 1, (3, 3), [1, 1], [1, 1, 1, 1], [1, 1]),
    "tall, 5x5 / 2": ((1, 2, 41, 35), 1, (5, 5), [2, 2], [2, 2, 2, 2], [1, 1]),
    # stride 1 or 2 down the rows: each input row loaded once for the rows it feeds (rows_slide_*)
    "tall, 5x5": ((1, 3, 30, 21), 1, (5, 5), [1, 1], [2, 2, 2, 2], [1, 1]),
    # interior vector columns, whose loads are all inside the rows, take plain loads (full_loads)
    "tall and wide, 3x3": ((1, 2, 30, 52), 1, (3, 3), [1, 1], [1, 1, 1, 1], [1, 1]),
    "tall and wide, 5x5": ((1, 2, 30, 52), 1, (5, 5), [1, 1], [2, 2, 2, 2], [1, 1]),
    "tall and wide, 3x3 / 2": ((1, 2, 37, 80), 1, (3, 3), [2, 2], [1, 1, 1, 1], [1, 1]),
    "tall and wide, 5x5 / 2": ((2, 2, 41, 100), 1, (5, 5), [2, 2], [2, 1, 2, 2], [1, 1]),
    # 5 x 5 / 2 through the phase planes (depthwise_conv.cpp, plane_phases): one vector column with
    # a tail, no pads (e0 = 0), pads of 3 and 0 with odd widths, MobileNet's 56 x 56 -> 28 x 28
    "5x5 / 2, a small plane": ((1, 3, 9, 7), 1, (5, 5), [2, 2], [2, 2, 2, 2], [1, 1]),
    "5x5 / 2, no pads": ((1, 2, 19, 23), 1, (5, 5), [2, 2], [0, 0, 0, 0], [1, 1]),
    "5x5 / 2, pads 3 and 0, multiplier 2": ((1, 2, 12, 13), 2, (5, 5), [2, 2], [3, 0, 0, 3], [1, 1]),
    "5x5 / 2, 56 x 56": ((1, 2, 56, 56), 1, (5, 5), [2, 2], [2, 2, 2, 2], [1, 1]),
    "tall, 3x3, rows dilated (the per-row form)": ((1, 2, 30, 18), 1, (3, 3), [1, 1], [2, 1, 2, 1], [2, 1]),
    "7x7 (the tap loop not unrolled)": ((1, 2, 20, 19), 1, (7, 7), [1, 1], [3, 3, 3, 3], [1, 1]),
    "taller window than plane": ((1, 2, 3, 18), 1, (5, 3), [1, 1], [2, 1, 2, 1], [1, 1]),
    "1x1 (a channel scale; not the 1 x 1 product)": ((1, 4, 5, 6), 2, (1, 1), [1, 1], [0, 0, 0, 0], [1, 1]),
}


def _dw_node(case, rng, bias=True):
    xshape, mult, kernel, strides, pads, dilations = DW_CASES[case]
    c = xshape[1]
    w = rng.standard_normal((c * mult, 1, *kernel)).astype(np.float32)
    weights = {1: layouts.dense_tensor("w", w)}
    b = rng.standard_normal(c * mult).astype(np.float32) if bias else None
    if bias:
        weights[2] = layouts.dense_tensor("b", b)
    attrs = registry.fill_attrs("Conv", {"group": c, "strides": strides, "pads": pads, "dilations": dilations})
    return attrs, weights, w, b


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(DW_CASES))
def test_depthwise_within_the_float32_bound_and_the_same_bits_everywhere(case, bias, native_paths):
    from kernels.reference.conv_pool import conv_ref
    rng = _rng("dw", case, bias)
    attrs, weights, w, b = _dw_node(case, rng, bias)
    x = rng.standard_normal(DW_CASES[case][0]).astype(np.float32)
    kw = dict(strides=attrs["strides"], pads=attrs["pads"], dilations=attrs["dilations"], group=attrs["group"])
    ref = conv_ref(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64), **kw)
    mag = conv_ref(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                   None if b is None else np.abs(b).astype(np.float64), **kw)
    taps = int(np.prod(w.shape[2:]))
    run = registry.lookup("Conv", "dense", "native")(attrs, weights)
    first = None
    for isa, nt in native_paths():
        y = run(x, w, b)[0]
        assert y.dtype == np.float32 and y.shape == ref.shape
        assert np.all(np.abs(y - ref) <= (taps + 2) * 2.0 ** -24 * mag), (isa, nt)
        first = y if first is None else first
        assert np.array_equal(y, first), f"{isa}, {nt} threads differ from the first path"


def test_depthwise_factory_takes_the_kernel_only_where_it_applies(monkeypatch):
    rng = _rng("dw-dispatch")
    calls = []
    real = _native.depthwise_conv2d
    monkeypatch.setattr(_native, "depthwise_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    attrs, weights, w, b = _dw_node("3x3 pad 1", rng)
    run = registry.lookup("Conv", "dense", "native")(attrs, weights)
    x = rng.standard_normal((2, 6, 9, 8)).astype(np.float32)
    run(x, w, b)
    assert calls == [1]
    run(x.astype(np.float64), w, b)                         # float64: BLAS / the reference, not the kernel
    assert calls == [1]
    attrs3, weights3, w3, b3 = _dw_node("dilated, stride 3, no pads", rng)
    with pytest.raises(ValueError, match="larger than the padded input"):   # the reference's error
        registry.lookup("Conv", "dense", "native")(attrs3, weights3)(
            rng.standard_normal((1, 4, 4, 4)).astype(np.float32), w3, b3)
    dense = registry.fill_attrs("Conv", {"group": 2, "pads": [1, 1, 1, 1]})   # two channels a group
    w2 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    registry.lookup("Conv", "dense", "native")(dense, {1: layouts.dense_tensor("w", w2)})(
        rng.standard_normal((1, 6, 5, 5)).astype(np.float32), w2)
    assert calls == [1]


def test_depthwise_kernel_refuses_bad_arguments():
    rng = _rng("dw-bad")
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    good = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    assert _native.depthwise_conv2d(x, w, **good).shape == (1, 4, 6, 6)
    for change, err, match in [
        (dict(w=rng.standard_normal((4, 2, 3, 3)).astype(np.float32)), ValueError, r"\(M, 1, kh, kw\)"),
        (dict(w=rng.standard_normal((6, 1, 3, 3)).astype(np.float32)), ValueError, "multiple of C = 4"),
        (dict(w=w.astype(np.float64)), TypeError, "float32"),
        (dict(x=x[:, :, ::2]), ValueError, "contiguous"),
        (dict(bias=np.zeros(3, np.float32)), ValueError, "bias"),
        (dict(dilations=[0, 1]), ValueError, ">= 1"),
        (dict(pads=[1, 1]), ValueError, "pads"),
    ]:
        args = dict(x=x, w=w, **good)
        args.update(change)
        with pytest.raises(err, match=match):
            _native.depthwise_conv2d(**args)
