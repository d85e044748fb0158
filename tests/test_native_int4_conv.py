"""Native int4_grouped weight-only Linear (csrc/int4_gemm*.cpp) and the native Conv driver
(kernels/native_cpu/conv.py) against the numpy reference (kernels/reference/packed.py).

int4: within the float32-accumulation bound of csrc/int4_gemm.h on every path this CPU has
("avx512" needs group_size % 32 == 0, "avx2" group_size % 16 == 0), identical for threads 1 and
2 and for a row computed alone (M = 1) or in a batch; the "auto" path follows a forced int8 path. Conv on int8 / csr / bsr / nm with act_quant "dynamic" / "static":
bit for bit the reference's packed_conv_ref, on every int8 code path, threads 1 and 2; int4
Conv within the int4 bound. A converted CNN (tests/digits.py) runs on backend="native" with the
reference session's outputs exactly.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from kernels import registry
from kernels.reference.packed import PackedPlan, packed_conv_ref, packed_linear_ref
from kernels.core import layouts
from runtime.convert.prune import nm_mask

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native
    from kernels.native_cpu.conv import ConvPlan, native_conv
    from kernels.native_cpu.int4 import Int4Plan, int4_linear
    INT4_ISAS = tuple(_native.int4_isas())
    INT8_ISAS = tuple(_native.int8_isas())
    from kernels.native_cpu import cpu_features
    _FEATURES = cpu_features()
else:  # pragma: no cover
    INT4_ISAS = INT8_ISAS = ("scalar",)
    _FEATURES = {}

# k elements per vector step of the SIMD paths: they need group_size % step == 0
# (csrc/int4_gemm.h kInt4Avx512Step, kInt4Avx2Step)
INT4_STEP = {"avx512": 32, "avx2": 16}

# float32 accumulation of K products against the reference's float64 one, plus the final
# rounding (csrc/int4_gemm.h): |y - y_ref| <= (K + 2) * 2^-24 * sum_k |x_k w_nk| + 2^-24 |b|.
INT4_ERR_PER_TERM = 2.0 ** -24


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _int4_bound(x2, t, k, bias):
    w = t.to_dense().reshape(t.shape[0], -1).astype(np.float64)
    b = 0 if bias is None else np.abs(bias.astype(np.float64))
    return (k + 2) * INT4_ERR_PER_TERM * (np.abs(x2.astype(np.float64)) @ np.abs(w).T) + INT4_ERR_PER_TERM * b


@pytest.fixture
def threads():
    before = _native.get_threads()
    yield _native.set_threads
    _native.set_threads(before)


@pytest.fixture
def int8_isa():
    yield _native.set_int8_isa
    _native.set_int8_isa("auto")


# --- int4_grouped Linear ------------------------------------------------------------------------

INT4_SHAPES = [  # (M, N, K, group_size)
    (1, 37, 100, 32), (3, 5, 64, 64), (16, 33, 200, 32), (5, 64, 768, 128),
    (1, 7, 70, 6), (4, 9, 31, 2), (2, 3, 1, 2),
    # group sizes for AVX2 only (g % 16 == 0, g % 32 != 0), for neither (g = 8, 24), odd K,
    # M across the 4-row items (M % 4 = 1, 2, 3) and N across the 4 / 2 weight-row passes
    (1, 6, 101, 16), (2, 10, 97, 48), (7, 11, 33, 16), (6, 2, 80, 80), (3, 1, 17, 16),
    (1, 5, 45, 8), (5, 13, 71, 24), (9, 4, 160, 32),
]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("m,n,k,g", INT4_SHAPES)
def test_int4_linear_matches_reference(m, n, k, g, symmetric, threads):
    rng = _rng("int4", m, n, k, g, symmetric)
    w = rng.standard_normal((n, k)).astype(np.float32)
    t = layouts.pack_int4_grouped("w", w, group_size=g, symmetric=symmetric)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    ref = packed_linear_ref(x, PackedPlan(t, "none"), bias).astype(np.float64)
    plan = Int4Plan(t)
    bound = _int4_bound(x, t, k, bias)
    for isa in INT4_ISAS:
        if g % INT4_STEP.get(isa, 2):
            with pytest.raises(ValueError, match="group_size"):
                _native.int4_linear(plan.packed, x, bias, isa)
            continue
        results = []
        for nt in (1, 2):
            threads(nt)
            results.append(_native.int4_linear(plan.packed, x, bias, isa))
        assert np.array_equal(results[0], results[1])
        y = results[0]
        assert y.dtype == np.float32 and y.shape == (m, n)
        err = np.abs(y - ref)
        assert (err <= bound).all(), f"{isa}: max excess {np.max(err - bound)}"
        # a row alone gives the same bits as in the batch (M = 1 path == batched path), as
        # does a batch in which it sits at another position of the 4-row items
        for r in {0, m // 2, m - 1}:
            assert np.array_equal(_native.int4_linear(plan.packed, x[r:r + 1], bias, isa)[0], y[r])
        shifted = _native.int4_linear(plan.packed, np.concatenate([x[1:], x[:1]]), bias, isa)
        assert np.array_equal(shifted, np.concatenate([y[1:], y[:1]]))
    y_auto = int4_linear(x.reshape(1, m, k), plan, bias)        # the wrapper: (..., K) in, (..., N) out
    assert y_auto.shape == (1, m, n)
    assert (np.abs(y_auto[0] - ref) <= bound).all()


def test_int4_paths_on_this_cpu():
    """The AVX2 path exists wherever the CPU has AVX2 and FMA (csrc/int4_gemm_avx2.cpp), the
    AVX-512 one wherever it has AVX-512F/BW; "scalar" always; fastest first."""
    want = [isa for isa, ok in (("avx512", _FEATURES["avx512f"] and _FEATURES["avx512bw"]),
                                ("avx2", _FEATURES["avx2"] and _FEATURES["fma"])) if ok]
    assert list(INT4_ISAS) == want + ["scalar"]


def test_int4_auto_path_follows_the_forced_int8_path(int8_isa):
    """Int4Weight.isa (what 'auto' runs): the widest path whose step divides g, no wider than
    the int8 path when QRT_NATIVE_ISA / set_int8_isa forces one; auto gives that path's bits."""
    rng = _rng("int4-auto")
    x = rng.standard_normal((3, 96)).astype(np.float32)
    order = ("avx512", "avx2", "scalar")
    cap = {"auto": "avx512", "amx": "avx512", "avx512_vnni": "avx512", "avx_vnni": "avx2", "avx2": "avx2",
           "scalar": "scalar"}
    for forced in ("auto", *INT8_ISAS):
        int8_isa(forced)
        for g in (64, 16, 6):
            want = next(i for i in INT4_ISAS
                        if order.index(i) >= order.index(cap[forced]) and g % INT4_STEP.get(i, 2) == 0)
            w = Int4Plan(layouts.pack_int4_grouped("w", rng.standard_normal((5, 96)).astype(np.float32),
                                                           group_size=g)).packed
            assert w.isa == want, (forced, g)
            assert np.array_equal(_native.int4_linear(w, x), _native.int4_linear(w, x, None, want))


def test_int4_bad_inputs():
    rng = _rng("int4-bad")
    t = layouts.pack_int4_grouped("w", rng.standard_normal((4, 64)).astype(np.float32), group_size=32,
                                  symmetric=False)
    q, s, z = t.fields["qdata"], t.fields["scale"], t.fields["zero_point"]
    with pytest.raises(TypeError, match="qdata"):
        _native.Int4Weight(q.astype(np.int8), s, z, (4, 64), 32)
    with pytest.raises(ValueError, match="qdata"):
        _native.Int4Weight(q[:, :-1].copy(), s, z, (4, 64), 32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.Int4Weight(np.asfortranarray(q), s, z, (4, 64), 32)
    with pytest.raises(ValueError, match="scale"):
        _native.Int4Weight(q, np.zeros_like(s), z, (4, 64), 32)
    with pytest.raises(ValueError, match="scale"):
        _native.Int4Weight(q, s[:, :1].copy(), z, (4, 64), 32)
    with pytest.raises(ValueError, match="zero_point"):
        _native.Int4Weight(q, s, np.full_like(z, 16), (4, 64), 32)
    with pytest.raises(ValueError, match="group_size"):
        _native.Int4Weight(q, s, z, (4, 64), 3)
    with pytest.raises(ValueError, match="N, K"):
        _native.Int4Weight(q, s, z, (4, 0), 32)
    w = _native.Int4Weight(q, s, z, (4, 64), 32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="X"):
        _native.int4_linear(w, x.astype(np.float64))
    with pytest.raises(ValueError, match="X"):
        _native.int4_linear(w, x[:, :63].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.int4_linear(w, x[:, ::2])
    with pytest.raises(ValueError, match="bias"):
        _native.int4_linear(w, x, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="bias"):
        _native.int4_linear(w, x, np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="'auto', 'avx512', 'avx2' or 'scalar'"):
        _native.int4_linear(w, x, None, "avx9")
    wg = _native.Int4Weight(np.zeros((4, 33), np.uint8), np.ones((4, 11), np.float32), None, (4, 64), 6)
    for isa in INT4_ISAS[:-1]:      # the SIMD paths refuse a group size that is not whole steps
        with pytest.raises(ValueError, match=f"'{isa}' needs group_size % {INT4_STEP[isa]}"):
            _native.int4_linear(wg, x, None, isa)
    assert _native.int4_linear(w, x[:0].copy()).shape == (0, 4)


# --- Conv ---------------------------------------------------------------------------------------

CONV_CASES = [  # (x shape, M, kernel, group, strides, pads, dilations)
    ((2, 6, 9, 8), 12, (3, 2), 1, [2, 1], [1, 0, 2, 1], [1, 2]),
    ((1, 6, 7, 7), 12, (3, 3), 3, [1, 1], [1, 1, 1, 1], [1, 1]),
    ((3, 4, 5, 6), 8, (1, 1), 2, [1, 2], [0, 0, 0, 0], [1, 1]),
    ((2, 4, 17), 8, (5,), 2, [3], [2, 1], [2]),
    ((1, 3, 10), 4, (3,), 1, [1], [0, 0], [1]),
]


def _packed(layout, w, rng):
    if layout in ("int8", "int8_asym"):
        return layouts.pack_int8("w", w, symmetric=layout == "int8")
    if layout == "csr":
        return layouts.pack_csr("w", w, rng.random(w.shape) > 0.7, quant="int8")
    if layout == "bsr":
        n, kk = layouts.dense_view_2d(w.shape)
        blocks = rng.random((n // 2, kk)) > 0.5           # (2, 1) blocks: tile any even M
        return layouts.pack_bsr("w", w, np.repeat(blocks, 2, axis=0).reshape(w.shape), block_shape=(2, 1),
                                quant="int8")
    if layout == "nm":
        n, kk = layouts.dense_view_2d(w.shape)
        if kk % 4:
            pytest.skip("2:4 needs K' % 4 == 0")
        return layouts.pack_nm("w", w, nm_mask(w.reshape(n, kk)).reshape(w.shape), quant="int8")
    return layouts.pack_int4_grouped("w", w, group_size=4, symmetric=False)


@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("layout", ["int8", "int8_asym", "csr", "bsr", "nm"])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_integer_modes_bit_exact(case, layout, act, threads, int8_isa):
    xshape, m, kernel, group, strides, pads, dilations = CONV_CASES[case]
    rng = _rng("conv", case, layout, act)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal((m, xshape[1] // group, *kernel)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    t = _packed(layout, w, rng)
    quant = dict(act_quant=act, act_scale=0.03, act_zero_point=5) if act == "static" else dict(act_quant=act)
    kw = dict(strides=strides, pads=pads, dilations=dilations)
    ref = packed_conv_ref(x, PackedPlan(t, op="Conv", **quant), bias, group=group, **kw)
    plan = ConvPlan(t, group, **quant)
    for isa in INT8_ISAS:
        int8_isa(isa)
        for nt in (1, 2):
            threads(nt)
            y = native_conv(x, plan, bias, **kw)
            assert y.dtype == np.float32 and y.shape == ref.shape
            assert np.array_equal(y, ref), f"{isa}, {nt} threads: max diff {np.max(np.abs(y - ref))}"
    assert np.array_equal(native_conv(x, plan, None, **kw),
                          packed_conv_ref(x, PackedPlan(t, op="Conv", **quant), None, group=group, **kw))


def test_conv_sparse_weight_only_and_3d_fallback():
    rng = _rng("conv-misc")
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    t = layouts.pack_csr("w", w, rng.random(w.shape) > 0.5)           # float values: act_quant none
    y = native_conv(x, ConvPlan(t, 2), None, pads=[1, 1, 1, 1])
    ref = packed_conv_ref(x, PackedPlan(t, op="Conv"), None, pads=[1, 1, 1, 1], group=2)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    x3 = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32)      # 3-D: the reference driver
    t3 = layouts.pack_int8("w", rng.standard_normal((3, 2, 2, 2, 2)).astype(np.float32))
    y3 = native_conv(x3, ConvPlan(t3, 1, "dynamic"), None)
    assert np.array_equal(y3, packed_conv_ref(x3, PackedPlan(t3, "dynamic", op="Conv"), None))


def test_conv_bad_inputs():
    rng = _rng("conv-bad")
    t = layouts.pack_int8("w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="group"):
        ConvPlan(t, 3, "dynamic")
    with pytest.raises(TypeError, match="initializer in a packed layout"):   # kernels/gemm_front.py checks
        registry.lookup("Conv", "int8", "native")({"act_quant": "dynamic"}, {1: rng.standard_normal((4, 2, 3, 3))})
    with pytest.raises(ValueError, match="act_quant"):
        ConvPlan(t, 1, "int8")
    plan = ConvPlan(t, 2, "dynamic")
    with pytest.raises(ValueError, match="do not match"):
        native_conv(rng.standard_normal((1, 3, 5, 5)).astype(np.float32), plan)
    with pytest.raises(ValueError, match="bias"):
        native_conv(rng.standard_normal((1, 4, 5, 5)).astype(np.float32), plan, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="larger|smaller"):
        native_conv(rng.standard_normal((1, 4, 2, 2)).astype(np.float32), plan)
    with pytest.raises(ValueError, match="strides"):
        native_conv(rng.standard_normal((1, 4, 5, 5)).astype(np.float32), plan, strides=[1])


# --- a converted CNN through a session ----------------------------------------------------------

@pytest.mark.parametrize("prune", [{}, {"prune": "nm"}, {"prune": "magnitude", "sparsity": 0.7}])
def test_session_cnn_native_equals_reference(prune):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import runtime
    from tests.digits import cnn_onnx
    onnx_bytes, x_tr, x_te, _ = cnn_onnx(epochs=1)
    graph = runtime.convert(onnx_bytes, quant="int8", act="dynamic", quant_small_convs=True, **prune)
    convs = [n for n in graph.nodes if n.op == "Conv"]
    assert convs and all(n.attrs.get("act_quant") == "dynamic" for n in convs)
    native = runtime.InferenceSession(graph, backend="native")
    ref = runtime.InferenceSession(graph, backend="reference")
    assert sum(p.backend == "native" and p.op == "Conv" for p in native.plan) == len(convs), native.plan
    for batch in (1, 7):
        x = np.ascontiguousarray(x_te[:batch], np.float32)
        assert np.array_equal(native.run(None, {"image": x})[0], ref.run(None, {"image": x})[0])
