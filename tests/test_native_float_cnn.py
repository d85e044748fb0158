"""The native backend's float32 CNN layers outside the quantized GEMMs: the channel product that
runs a float32 Conv on NCHW memory (csrc/f32_channel_gemm.h) with its fused activation, the
depthwise Conv's fused activation (csrc/depthwise_conv.h), Add / Sub / Mul / Div and ReduceMean
(csrc/elementwise_f32.h); the HardSwish fusion that feeds them: tests/test_fusion.py.

Every kernel is checked on every ISA path this CPU has, with 1 and 2 threads (the ``native_paths``
fixture; tests/test_forced_isa.py reruns the module forced to AVX2): float32 sums within their
bound of the float64 reference and the same bits on every path; element-wise ops with numpy's
bits; a fused activation with the bits of the unfused pair.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from kernels import registry
from kernels.core import layouts

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native
    from kernels.native_cpu import conv as native_conv_module


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def _activation(y: np.ndarray, name: str) -> np.ndarray:
    """The unfused activation: the op's own native kernel (kernels/registry.py EPILOGUE_OPS)."""
    if name == "none":
        return y
    op, attrs = registry.EPILOGUE_OPS[name]
    return registry.apply_epilogue_op(name, registry.lookup(op, "dense", "native")(registry.fill_attrs(op, attrs), {}), y)


# --- the channel product (csrc/f32_channel_gemm.h) ------------------------------------------------

# (N, M, K, P): row counts around both paths' tile heights (6, 8), positions around their
# vector widths (8, 16) and the 128-position work item, K from 1 to a stem's 27 and beyond
GEMM_SHAPES = [(1, 1, 1, 1), (2, 5, 3, 37), (1, 6, 16, 15), (1, 7, 16, 16), (1, 8, 27, 17), (2, 9, 4, 31),
               (1, 13, 24, 129), (1, 17, 64, 200), (0, 4, 3, 5), (1, 3, 130, 33)]


@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_channel_gemm_within_the_float32_bound_and_the_same_bits_everywhere(shape, native_paths):
    n, m, k, p = shape
    rng = _rng("gemm", shape)
    x = rng.standard_normal((n, k, p)).astype(np.float32)
    w = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    ref = np.einsum("mk,nkp->nmp", w.astype(np.float64), x.astype(np.float64)) + b[:, None]
    mag = np.einsum("mk,nkp->nmp", np.abs(w).astype(np.float64), np.abs(x).astype(np.float64)) + np.abs(b)[:, None]
    first = None
    for isa, nt in native_paths():
        y = _native.f32_channel_gemm(x, w, b)
        assert y.dtype == np.float32 and y.shape == (n, m, p)
        assert np.all(np.abs(y - ref) <= (k + 2) * 2.0 ** -24 * mag), (isa, nt)
        first = y if first is None else first
        assert np.array_equal(_bits(y), _bits(first)), f"{isa}, {nt} threads differ from the first path"
    assert np.array_equal(_bits(_native.f32_channel_gemm(x, w, None) + b[:, None]), _bits(first)), \
        "the bias is one float32 addition after the sum"


@pytest.mark.parametrize("activation", ["relu", "gelu", "hard_swish", "silu"])
def test_channel_gemm_activation_has_the_bits_of_the_unfused_pair(activation, native_paths):
    rng = _rng("gemm-act", activation)
    x = (3 * rng.standard_normal((2, 11, 150))).astype(np.float32)
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]       # special values through the activation
    w = rng.standard_normal((10, 11)).astype(np.float32)
    for isa, nt in native_paths():
        plain = _native.f32_channel_gemm(x, w, None, "none")
        fused = _native.f32_channel_gemm(x, w, None, activation)
        assert np.array_equal(_bits(fused), _bits(_activation(plain, activation))), (isa, nt)


def test_channel_gemm_refuses_bad_arguments():
    rng = _rng("gemm-bad")
    x = rng.standard_normal((1, 4, 9)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    assert _native.f32_channel_gemm(x, w).shape == (1, 3, 9)
    for args, err, match in [
        ((x.astype(np.float64), w), TypeError, "X must have dtype float32"),
        ((x[0], w), ValueError, r"expected \(N, K, P\)"),
        ((x, np.ascontiguousarray(w[:, :3])), ValueError, r"expected \(M, 4\)"),
        ((x, w, np.ones(2, np.float32)), ValueError, r"bias has shape \(2,\), expected \(3,\)"),
        ((x, w, None, "swish"), ValueError, "hard_swish"),
    ]:
        with pytest.raises(err, match=match):
            _native.f32_channel_gemm(*args)


DIRECT_CASES = {  # name: (X shape, W shape, kernel, strides, pads (t, l, b, r), dilations)
    "stem 3x3 / 2, pad 1": ((2, 3, 17, 16), (16, 3, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1]),
    "3x3, pad 1": ((1, 5, 9, 11), (10, 5, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1]),
    "7x7 / 2, pad 3 (ResNet's stem)": ((1, 2, 23, 21), (9, 2, 7, 7), [2, 2], [3, 3, 3, 3], [1, 1]),
    "asymmetric pads, stride 3 x 2": ((1, 4, 13, 14), (7, 4, 3, 2), [3, 2], [0, 2, 1, 0], [1, 1]),
    "dilated 3x3": ((2, 3, 12, 12), (5, 3, 3, 3), [1, 2], [2, 1, 0, 3], [2, 3]),
    "1x1 / 2": ((1, 8, 9, 9), (37, 8, 1, 1), [2, 2], [0, 0, 0, 0], [1, 1]),
    "wide rows (OW > 2 vectors)": ((1, 2, 5, 80), (3, 2, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1]),
    # stride 2 splits each row into its column pairs 32 (16) padded columns at a time: several blocks, a partial last one
    "wide rows / 2": ((1, 2, 7, 75), (3, 2, 3, 3), [2, 2], [1, 2, 1, 3], [1, 1]),
    "window = padded input": ((1, 3, 2, 2), (4, 3, 3, 3), [1, 1], [1, 0, 0, 1], [1, 1]),
}


@pytest.mark.parametrize("activation", ["none", "relu", "hard_swish", "silu"])
@pytest.mark.parametrize("case", sorted(DIRECT_CASES))
def test_direct_conv_is_the_channel_product_on_im2col_bit_for_bit(case, activation, native_paths):
    xshape, wshape, strides, pads, dilations = DIRECT_CASES[case]
    rng = _rng("direct", case, activation)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    x[0, 0, 0, :2] = [np.inf, -0.0]                      # non-finite and signed zeros where windows meet them
    w[0, 0, 0, 0] = -0.0
    w2 = np.ascontiguousarray(w.reshape(wshape[0], -1))
    b = rng.standard_normal(wshape[0]).astype(np.float32)
    kernel = list(wshape[2:])
    for isa, nt in native_paths():
        cols = _native.im2col(x, kernel, strides, pads, dilations)
        want = _native.f32_channel_gemm(cols, w2, b, activation)
        for bias in (b, None):
            y = _native.f32_conv2d(x, w2, kernel, strides, pads, dilations, bias, activation)
            if bias is None:
                want = _native.f32_channel_gemm(cols, w2, None, activation)
            assert y.shape == (xshape[0], wshape[0], *_out_hw(xshape, kernel, strides, pads, dilations))
            assert np.array_equal(_bits(y.reshape(want.shape)), _bits(want)), (isa, nt, bias is None)


def _out_hw(xshape, kernel, strides, pads, dilations):
    return tuple((xshape[2 + i] + pads[i] + pads[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                 for i in range(2))


def test_direct_conv_refuses_bad_arguments():
    x = np.zeros((1, 3, 5, 5), np.float32)
    w = np.zeros((4, 27), np.float32)
    assert _native.f32_conv2d(x, w, [3, 3], [1, 1], [0, 0, 0, 0], [1, 1]).shape == (1, 4, 3, 3)
    assert _native.f32_conv2d(np.zeros((0, 3, 5, 5), np.float32), w, [3, 3], [1, 1], [0, 0, 0, 0], [1, 1]).shape == (0, 4, 3, 3)
    for args, err, match in [
        ((x.astype(np.float64), w), TypeError, "X must have dtype float32"),
        ((x[0], w), ValueError, r"expected \(N, C, H, W\)"),
        ((x, np.zeros((4, 26), np.float32)), ValueError, r"expected \(M, C \* kh \* kw\) = \(4, 27\)"),
        ((x, w, [3, 3], [1, 1], [0, 0, 0, 0], [1, 1], np.ones(2, np.float32)), ValueError, "bias has shape"),
        ((x, w, [3, 3], [1, 1], [0, 0, 0, 0], [1, 1], None, "swish"), ValueError, "hard_swish"),
        ((x, np.zeros((4, 6 * 9), np.float32), [6, 9], [1, 1], [0, 0, 0, 0], [1, 1]), ValueError, "larger than"),
        ((x, w, [3, 3], [0, 1], [0, 0, 0, 0], [1, 1]), ValueError, ">= 1"),
    ]:
        if len(args) == 2:
            args = args + ([3, 3], [1, 1], [0, 0, 0, 0], [1, 1])
        with pytest.raises(err, match=match):
            _native.f32_conv2d(*args)


def _conv_node(w, b=None, **attrs):
    weights = {1: layouts.dense_tensor("w", w)}
    if b is not None:
        weights[2] = layouts.dense_tensor("b", b)
    return registry.fill_attrs("Conv", attrs), weights


CONV_CASES = {  # name: (X shape, W shape, attributes); group 1 unless said
    "1x1": ((2, 16, 7, 9), (24, 16, 1, 1), {}),
    "stem 3x3 / 2": ((1, 3, 17, 16), (16, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "1x1 / 2": ((1, 8, 9, 9), (5, 8, 1, 1), {"strides": [2, 2]}),
    "1-D, padded": ((2, 4, 19), (6, 4, 3), {"pads": [1, 2]}),
}


@pytest.mark.parametrize("activation", ["none", "relu", "hard_swish", "silu"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_float_conv_runs_the_channel_product_with_its_activation(case, activation, monkeypatch):
    from kernels.reference.conv_pool import conv_ref
    calls = []
    xshape, wshape, extra = CONV_CASES[case]
    # 1 x 1 of stride 1: the channel product on X itself; others its direct form (f32_conv2d)
    kernel = "f32_channel_gemm" if case == "1x1" else "f32_conv2d"
    real = getattr(_native, kernel)
    monkeypatch.setattr(_native, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = _rng("conv", case, activation)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(wshape[0]).astype(np.float32)
    attrs, weights = _conv_node(w, b, **extra)
    plain = registry.build("Conv", "dense", "native", attrs, weights)(x, w, b)[0]
    fused = registry.build("Conv", "dense", "native", {**attrs, "activation": activation}, weights)(x, w, b)[0]
    assert calls == [1, 1]
    assert np.array_equal(_bits(fused), _bits(_activation(plain, activation)))
    kw = dict(strides=attrs["strides"], pads=attrs["pads"], dilations=attrs["dilations"], group=1)
    ref = conv_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    mag = conv_ref(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), np.abs(b).astype(np.float64), **kw)
    assert plain.shape == ref.shape
    assert np.all(np.abs(plain - ref) <= (np.prod(wshape[1:]) + 2) * 2.0 ** -24 * mag)


def test_float_conv_takes_sgemm_past_the_patch_limits_and_for_groups(monkeypatch):
    calls = []
    for name in ("f32_channel_gemm", "f32_conv2d"):
        monkeypatch.setattr(_native, name, lambda *a, _real=getattr(_native, name), **k: calls.append(1) or _real(*a, **k))
    rng = _rng("conv-route")
    c = native_conv_module.DIRECT_MAX_K // 9 + 1                      # a 3 x 3 patch past the direct form's limit
    w = rng.standard_normal((4, c, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, c, 5, 5)).astype(np.float32)
    attrs, weights = _conv_node(w, pads=[1, 1, 1, 1])
    y = registry.build("Conv", "dense", "native", {**attrs, "activation": "hard_swish"}, weights)(x, w)[0]
    plain = registry.build("Conv", "dense", "native", attrs, weights)(x, w)[0]
    assert calls == [] and np.array_equal(_bits(y), _bits(_activation(plain, "hard_swish")))
    c1 = native_conv_module.POINTWISE_MAX_K                          # a 1 x 1 takes the product up to its own limit
    w1 = rng.standard_normal((4, c1, 1, 1)).astype(np.float32)
    attrs, weights = _conv_node(w1)
    registry.build("Conv", "dense", "native", attrs, weights)(rng.standard_normal((1, c1, 3, 3)).astype(np.float32), w1)
    assert calls == [1]
    w1 = rng.standard_normal((4, c1 + 1, 1, 1)).astype(np.float32)
    attrs, weights = _conv_node(w1)
    registry.build("Conv", "dense", "native", attrs, weights)(rng.standard_normal((1, c1 + 1, 3, 3)).astype(np.float32), w1)
    assert calls == [1]
    calls.clear()
    wg = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)       # 2 groups of 3 channels
    attrs, weights = _conv_node(wg, group=2, pads=[1, 1, 1, 1])
    registry.build("Conv", "dense", "native", attrs, weights)(rng.standard_normal((1, 6, 5, 5)).astype(np.float32), wg)
    assert calls == []
    cd = native_conv_module.DIRECT_MAX_K // 9                         # at the limit: the direct form
    wd = rng.standard_normal((4, cd, 3, 3)).astype(np.float32)
    attrs, weights = _conv_node(wd, pads=[1, 1, 1, 1])
    registry.build("Conv", "dense", "native", attrs, weights)(rng.standard_normal((1, cd, 4, 4)).astype(np.float32), wd)
    assert calls == [1]
    calls.clear()
    w1 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)        # float64 X: the reference
    attrs, weights = _conv_node(w1)
    y64 = registry.build("Conv", "dense", "native", {**attrs, "activation": "relu"}, weights)(
        rng.standard_normal((1, 3, 4, 4)), w1)[0]
    assert calls == [] and y64.dtype == np.float64 and np.all(y64 >= 0)


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 2)])   # (5, 2): through the phase planes
def test_depthwise_activation_has_the_bits_of_the_unfused_pair(k, stride, native_paths):
    rng = _rng("dw-act", k, stride)
    x = (3 * rng.standard_normal((2, 5, 13, 21))).astype(np.float32)
    w = rng.standard_normal((5, 1, k, k)).astype(np.float32)
    s, p = [stride] * 2, [k // 2] * 4
    for isa, nt in native_paths():
        plain = _native.depthwise_conv2d(x, w, s, p, [1, 1])
        for act in ("relu", "hard_swish", "silu"):
            fused = _native.depthwise_conv2d(x, w, s, p, [1, 1], None, act)
            assert np.array_equal(_bits(fused), _bits(_activation(plain, act))), (isa, nt, act)


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 2), (3, 3)])
def test_depthwise_channel_means_have_the_bits_of_mean_rows(k, stride, native_paths):
    rng = _rng("dw-means", k, stride)
    x = (3 * rng.standard_normal((2, 6, 17, 19))).astype(np.float32)
    w = rng.standard_normal((12, 1, k, k)).astype(np.float32)   # multiplier 2
    s, p = [stride] * 2, [k // 2] * 4
    for isa, nt in native_paths():
        for act in ("none", "hard_swish", "silu"):
            y, m = _native.depthwise_conv2d(x, w, s, p, [1, 1], None, act, True)
            plain = _native.depthwise_conv2d(x, w, s, p, [1, 1], None, act)
            assert np.array_equal(_bits(y), _bits(plain)), (isa, nt, act)
            assert m.shape == (2, 12, 1, 1) and m.dtype == np.float32
            want = _native.mean_rows_f32(plain.reshape(24, -1)).reshape(2, 12, 1, 1)
            assert np.array_equal(_bits(m), _bits(want)), (isa, nt, act)


# --- Add / Sub / Mul / Div and ReduceMean (csrc/elementwise_f32.h) -------------------------------

BROADCASTS = [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 9, 9), (2, 3, 1, 1)), ((2, 3, 1, 1), (2, 3, 9, 9)),
              ((4, 70000), (1,)), ((), (3, 5)), ((5,), (4, 5)), ((3, 4, 5), (2, 1, 4, 5)), ((2, 3), (1, 3)),
              ((3, 0), (3, 1))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_ops_have_numpy_bits_for_every_broadcast(op, native_paths):
    rng = _rng("binary", op)
    run = registry.lookup(op, "dense", "native")(registry.fill_attrs(op, {}), {})
    ref = registry.lookup(op, "dense", "reference")(registry.fill_attrs(op, {}), {})
    for sa, sb in BROADCASTS:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        if a.size:
            a.flat[0] = np.nan
        want = ref(a, b)[0]
        for isa, nt in native_paths():
            y = run(a, b)[0]
            assert y.shape == want.shape and y.dtype == want.dtype, (sa, sb)
            assert np.array_equal(_bits(y), _bits(want)), (op, sa, sb, isa, nt)
    assert run(np.ones(3), np.ones(3))[0].dtype == np.float64            # other dtypes: the reference


def test_add_with_relu_has_the_bits_of_add_then_relu(native_paths):
    """The fused Add -> Relu (runtime/fuse.py) on every path, each operand kind, across chunk
    boundaries (70000 columns: several work items)."""
    rng = _rng("add-relu")
    for sa, sb in [((4, 70000), (4, 70000)), ((2, 3, 9, 9), (2, 3, 1, 1)), ((5,), (1,))]:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        a.flat[:3] = [np.nan, -0.0, -np.inf]
        run = registry.build("Add", "dense", "native", registry.fill_attrs("Add", {"activation": "relu"}), {})
        plain = registry.lookup("Add", "dense", "native")(registry.fill_attrs("Add", {}), {})
        relu = registry.lookup("Relu", "dense", "native")(registry.fill_attrs("Relu", {}), {})
        for isa, nt in native_paths():
            want = relu(plain(a, b)[0])[0]
            assert np.array_equal(_bits(run(a, b)[0]), _bits(want)), (sa, sb, isa, nt)


def test_binary_kernel_refuses_bad_arguments():
    a = np.ones(6, np.float32)
    for args, match in [(("pow", a, 0, a, 0, 2, 3), "expected add"), (("add", a, 0, a[:5], 0, 2, 3), "B has 5 values"),
                        (("add", a, 3, a, 0, 2, 3), "A_kind = 3"), (("add", a, 1, a, 0, 2, 3), "A has 6 values"),
                        (("add", a, 0, a, 0, -2, -3), "rows and cols must be >= 0"),
                        (("add", a, 0, a, 0, 2, 3, "gelu"), "activation = 'gelu', expected none or relu")]:
        with pytest.raises(ValueError, match=match):
            _native.binary_f32(*args)
    with pytest.raises(TypeError, match="B must have dtype float32"):
        _native.binary_f32("add", a, 0, a.astype(np.float64), 0, 2, 3)


def test_mean_kernel_refuses_bad_arguments():
    assert _native.mean_rows_f32(np.ones((2, 3), np.float32)).tolist() == [1.0, 1.0]
    for x, err, match in [(np.ones(3, np.float32), ValueError, r"expected \(rows, cols >= 1\)"),
                          (np.ones((2, 0), np.float32), ValueError, r"expected \(rows, cols >= 1\)"),
                          (np.ones((2, 3)), TypeError, "X must have dtype float32")]:
        with pytest.raises(err, match=match):
            _native.mean_rows_f32(x)


@pytest.mark.parametrize("axes, keepdims", [([2, 3], 1), ([-1, -2], 0), ([3], 1), (None, 1), ([1], 1), ([1, 3], 1)])
def test_reduce_mean_within_one_rounding_of_the_reference(axes, keepdims, native_paths):
    rng = _rng("mean", axes, keepdims)
    x = (rng.standard_normal((2, 3, 40, 37)) * 100).astype(np.float32)
    attrs = registry.fill_attrs("ReduceMean", {"axes": axes, "keepdims": keepdims})
    run = registry.lookup("ReduceMean", "dense", "native")(attrs, {})
    want = registry.lookup("ReduceMean", "dense", "reference")(attrs, {})(x)[0]
    first = None
    for isa, nt in native_paths():
        y = run(x)[0]
        assert y.shape == want.shape and y.dtype == np.float32
        assert np.all(np.abs(y - want) <= np.spacing(np.abs(want))), (isa, nt)
        first = y if first is None else first
        assert np.array_equal(_bits(y), _bits(first)), (isa, nt)
    empty = np.zeros((2, 0), np.float32)                 # the mean of nothing: the reference's 0
    assert np.array_equal(registry.lookup("ReduceMean", "dense", "native")(
        registry.fill_attrs("ReduceMean", {"axes": [1]}), {})(empty)[0], np.zeros((2, 1), np.float32))
