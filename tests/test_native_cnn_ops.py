"""The native backend's MaxPool (csrc/max_pool.h), HardSigmoid / HardSwish
(csrc/hard_sigmoid.h) and Sigmoid (csrc/sigmoid.h: one set of bits on every path, within 3 ulp
of the float64 sigmoid): the reference's bits on every int8 ISA path and 1 / 2 threads (NaN,
infinities, ties at the clamps, padding, ceil_mode overhang, dilation, strides 1 / 2 / 3, 1-D
windows), the registered kernels taking them (a spy) and the reference otherwise, and the
bindings' refusals. The depthwise Conv shares MaxPool's window rows (csrc/window_rows.h); its
tests are in tests/test_native_int8_conv.py."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import registry

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native


def _specials(x):
    flat = x.reshape(-1)
    flat[::17] = np.nan
    flat[5::23] = -np.inf
    flat[7::29] = np.inf
    return x


POOLS = {
    "stem 3x3 / 2": ((1, 8, 56, 56), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "dilated, ceil_mode": ((2, 3, 9, 11), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 2, 0],
                                               dilations=[2, 1], ceil_mode=1)),
    "padding only windows": ((1, 2, 3, 3), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[2, 2, 2, 2])),
    "2x2 / 2, odd size, ceil_mode": ((2, 4, 7, 9), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "3x3 / 1, wide rows": ((1, 3, 5, 70), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "1-D": ((2, 3, 19), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "1x1": ((1, 2, 4, 4), dict(kernel_shape=[1, 1])),
}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_max_pool_is_the_reference_bit_for_bit(case, native_paths, monkeypatch):
    shape, given = POOLS[case]
    attrs = registry.fill_attrs("MaxPool", given)
    x = _specials(np.random.default_rng(len(case)).standard_normal(shape).astype(np.float32))
    want = registry.lookup("MaxPool", "dense", "reference")(attrs, {})(x)[0]
    calls = []
    real = _native.max_pool2d
    monkeypatch.setattr(_native, "max_pool2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = registry.lookup("MaxPool", "dense", "native")(attrs, {})
    for isa, nt in native_paths():
        y = run(x)[0]
        assert y.dtype == np.float32 and y.shape == want.shape
        assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), (isa, nt)
    assert calls


def test_max_pool_other_inputs_go_to_the_reference(monkeypatch):
    monkeypatch.setattr(_native, "max_pool2d", None)          # any call would fail
    attrs = registry.fill_attrs("MaxPool", dict(kernel_shape=[2, 2, 2]))
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4, 5)).astype(np.float32)   # 3-D windows
    run = registry.lookup("MaxPool", "dense", "native")(attrs, {})
    assert np.array_equal(run(x)[0], registry.lookup("MaxPool", "dense", "reference")(attrs, {})(x)[0])
    attrs2 = registry.fill_attrs("MaxPool", dict(kernel_shape=[2, 2]))
    x64 = np.random.default_rng(1).standard_normal((1, 2, 4, 4))
    assert registry.lookup("MaxPool", "dense", "native")(attrs2, {})(x64)[0].dtype == np.float64
    with pytest.raises(ValueError, match="larger than the padded input"):
        registry.lookup("MaxPool", "dense", "native")(registry.fill_attrs("MaxPool", dict(kernel_shape=[5, 5])), {})(
            np.zeros((1, 1, 3, 3), np.float32))


def test_max_pool_binding_refuses_bad_arguments():
    x = np.zeros((1, 2, 6, 6), np.float32)
    good = dict(kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], out_size=[3, 3])
    assert _native.max_pool2d(x, **good).shape == (1, 2, 3, 3)
    for change, err, match in [
        (dict(x=x.astype(np.float64)), TypeError, "float32"),
        (dict(x=x[0]), ValueError, r"\(N, C, H, W\)"),
        (dict(out_size=[4, 3]), ValueError, "reaches past the padded input"),
        (dict(out_size=[1 << 40, 1]), ValueError, "larger than the padded input"),
        (dict(strides=[0, 1]), ValueError, "1 to 2\\^20"),
        (dict(pads=[-1, 0, 0, 0]), ValueError, "pads must be"),
        (dict(kernel=[3]), ValueError, "kernel must have 2"),
    ]:
        args = dict(x=x, **good)
        args.update(change)
        with pytest.raises(err, match=match):
            _native.max_pool2d(**args)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")    # the reference's x * NaN
@pytest.mark.parametrize("op,given", [("HardSwish", {}), ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_hard_sigmoid_and_swish_are_the_reference_bit_for_bit(op, given, native_paths, monkeypatch):
    attrs = registry.fill_attrs(op, given)
    rng = np.random.default_rng(3)
    x = _specials((rng.standard_normal((2, 5, 33, 31)) * 4).astype(np.float32))
    flat = x.reshape(-1)
    flat[2::31], flat[3::37], flat[4::41], flat[6::43] = 3.0, -3.0, -0.0, 2.5    # the clamps' corners
    want = registry.lookup(op, "dense", "reference")(attrs, {})(x)[0]
    calls = []
    real = _native.hard_sigmoid
    monkeypatch.setattr(_native, "hard_sigmoid", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = registry.lookup(op, "dense", "native")(attrs, {})
    for isa, nt in native_paths():
        y = run(x)[0]
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), (isa, nt)
    assert calls
    x64 = x.astype(np.float64)                                  # other dtypes: the reference
    assert np.array_equal(run(x64)[0], registry.lookup(op, "dense", "reference")(attrs, {})(x64)[0], equal_nan=True)
    with pytest.raises(TypeError, match="float32"):
        real(x64, 0.2, 0.5)


def _sigmoid_inputs() -> np.ndarray:
    """Every kind of float32 the kernel has a case for: normal values of both signs over the
    range where the result moves (and past it: 1 and e^x rounding to 0 below -104), both zeros,
    subnormal inputs and results, infinities and NaN; an odd count for the vector tails."""
    rng = np.random.default_rng(11)
    parts = [rng.standard_normal(40_000) * 6, rng.uniform(-110.0, 20.0, 30_001),
             np.array([0.0, -0.0, 1e-40, -1e-40, np.inf, -np.inf, np.nan, -np.nan, 16.63553, 17.0, 88.0, -87.33655,
                       -87.33656, -103.27893, -103.97, -104.0, -104.5, -150.0, -3.4e38, 3.4e38])]
    return np.concatenate(parts).astype(np.float32)


def test_sigmoid_is_one_set_of_bits_within_3_ulp(native_paths, monkeypatch):
    x = _sigmoid_inputs()
    calls = []
    real = _native.sigmoid
    monkeypatch.setattr(_native, "sigmoid", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = registry.lookup("Sigmoid", "dense", "native")({}, {})
    outs = {}
    for isa, nt in native_paths():
        y = run(x.reshape(7, -1) if x.size % 7 == 0 else x)[0].reshape(-1)
        assert y.dtype == np.float32 and y.size == x.size
        outs[(isa, nt)] = y
    assert calls
    first = next(iter(outs.values()))
    for key, y in outs.items():                       # every path, every thread count: one set of bits
        assert np.array_equal(y.view(np.uint32), first.view(np.uint32)), key
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    nan = np.isnan(x)
    assert np.isnan(first[nan]).all()
    ok = ~nan
    normal = ok & (exact >= np.finfo(np.float32).tiny)
    ulps = np.abs(first[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 3.0, ulps.max()
    assert np.abs(first[ok & ~normal] - exact[ok & ~normal]).max() <= 2.0 ** -149   # subnormal results
    assert first[x == np.inf][0] == 1.0 and first[x == -np.inf][0] == 0.0
    assert first[x == 0][0] == 0.5 and (first >= 0).all() | nan.any()
    # within the reference's tolerance for Sigmoid (tests/conformance_cases.py), other dtypes the reference
    want = registry.lookup("Sigmoid", "dense", "reference")({}, {})(x)[0]
    assert np.allclose(first[normal], want[normal], rtol=1e-6, atol=0)
    x64 = x.astype(np.float64)
    assert run(x64)[0].dtype == np.float64
    with pytest.raises(TypeError, match="float32"):
        real(x64)


IM2COL = {  # name: (X shape, kernel, strides, pads, dilations)
    "3x3 pad 1": ((2, 5, 9, 8), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1]),
    "7x7 / 2 stem": ((1, 3, 17, 19), [7, 7], [2, 2], [3, 3, 3, 3], [1, 1]),
    "dilated, asymmetric pads": ((1, 4, 9, 10), [3, 2], [2, 1], [1, 0, 2, 1], [1, 2]),
    "pads wider than the window": ((1, 2, 5, 5), [3, 3], [3, 3], [4, 0, 0, 4], [1, 1]),
    "stride 3 over 2 columns": ((1, 2, 4, 7), [2, 2], [1, 3], [0, 2, 0, 0], [2, 1]),
    "1-D": ((2, 4, 17), [5], [3], [2, 1], [2]),
}


@pytest.mark.parametrize("case", sorted(IM2COL))
def test_im2col_is_numpys_and_the_float32_conv_on_its_values(case, native_paths, monkeypatch):
    from kernels.blas_ops import im2col_numpy
    from kernels.core import layouts
    from kernels.native_cpu.conv import _im2col
    from kernels.reference.conv_pool import _out_size, _spatial_attrs, conv_ref
    shape, kernel, strides, pads, dilations = IM2COL[case]
    nsp = len(kernel)
    x = _specials(np.random.default_rng(len(case)).standard_normal(shape).astype(np.float32))
    s, pb, pe, d = _spatial_attrs(nsp, strides, pads, dilations)
    out = [_out_size(shape[2 + i], kernel[i], s[i], d[i], pb[i], pe[i], 0) for i in range(nsp)]
    want = im2col_numpy(x, kernel, s, pb, pe, d, out)
    for isa, nt in native_paths():
        got = _im2col(x, kernel, s, pb, pe, d, out)
        assert got.shape == want.shape and np.array_equal(got, want, equal_nan=True), (isa, nt)
    calls = []       # the float32 Conv: im2col + sgemm, or the direct form on im2col's values in place
    for name in ("im2col", "f32_conv2d"):
        monkeypatch.setattr(_native, name, lambda *a, _real=getattr(_native, name), **k: calls.append(1) or _real(*a, **k))
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    w = np.random.default_rng(8).standard_normal((3, shape[1], *kernel)).astype(np.float32)
    attrs = registry.fill_attrs("Conv", {"strides": strides, "pads": pads, "dilations": dilations})
    y = registry.lookup("Conv", "dense", "native")(attrs, {1: layouts.dense_tensor("w", w)})(x, w)[0]
    ref = conv_ref(x.astype(np.float64), w.astype(np.float64), None, strides, pads, dilations)
    bound = (np.prod(w.shape[1:]) + 2) * 2.0 ** -24 * conv_ref(np.abs(x).astype(np.float64),
                                                               np.abs(w).astype(np.float64), None, strides, pads,
                                                               dilations)
    assert calls and np.all(np.abs(y - ref) <= bound)


def test_im2col_binding_refuses_bad_arguments():
    x = np.zeros((1, 2, 6, 6), np.float32)
    good = dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    assert _native.im2col(x, **good).shape == (1, 18, 36)
    for change, err, match in [
        (dict(x=x.astype(np.float64)), TypeError, "float32"),
        (dict(x=x[0]), ValueError, r"\(N, C, H, W\)"),
        (dict(kernel=[9, 9]), ValueError, "larger than the padded input"),
        (dict(strides=[1, 0]), ValueError, ">= 1"),
        (dict(pads=[1, 1, 1]), ValueError, "pads"),
    ]:
        args = dict(x=x, **good)
        args.update(change)
        with pytest.raises(err, match=match):
            _native.im2col(**args)
