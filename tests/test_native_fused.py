"""native fused BERT ops (csrc/attention.cpp, csrc/layer_norm.cpp, kernels/native_cpu/fused.py)
against the float64 references of kernels/reference/fused.py, with tests/test_fusion.py's
tolerances (ATTENTION_RTOL, SKIP_LN_ATOL: the native kernels have the numba kernels' numerics),
on every code path this CPU has (``isa``: 'avx512', 'avx2' and 'scalar') and 1 and 2 threads
(the results must be identical), plus the test BERT end to end with backend="native".
"""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from kernels import registry
from tests import model_zoo
from tests.test_fusion import ATTENTION_RTOL, MASK_SHAPES, SKIP_LN_ATOL, _attention_case, _rel, _rng

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native, cpu_features
    ISAS = tuple(_native.fused_isas())          # fastest first; "scalar" always
    _FEATURES = cpu_features()
else:
    _native = None
    ISAS = ()
    _FEATURES = {}

# exp32 against float64 exp on [-87, 0]: Taylor truncation 1.2e-7 at |r| = ln2/2 plus a few
# float32 roundings (the numba _exp32's bound, tests/test_fusion.py test_exp32_accuracy)
EXP32_RTOL = 2e-7

# (B, Sq, Sk, H, D, Dv): Sq != Sk, D and Dv not multiples of 4, 8 or 16, Sk across tile edges
# (16 lanes on AVX-512, 8 on AVX2, whose row tiles are 6 high: Sq = 1, 6, 7, 13), Dv = 24
# (whole 8-lane vectors, not 16), Sq = 1 (one query: decoding)
ATTENTION_SHAPES = [
    (1, 1, 1, 1, 1, 1), (1, 16, 16, 12, 32, 32), (2, 7, 13, 3, 6, 6), (1, 130, 130, 2, 64, 64),
    (3, 5, 9, 4, 5, 3), (1, 33, 65, 12, 32, 32), (2, 17, 31, 2, 17, 20), (1, 9, 40, 1, 48, 16),
    (1, 13, 17, 3, 24, 8), (2, 6, 8, 2, 7, 9), (3, 1, 11, 2, 10, 24), (1, 1, 57, 4, 32, 32),
]


@pytest.fixture
def threads():
    """The native backend's thread count; restored afterwards."""
    before = _native.get_threads()
    yield _native.set_threads
    _native.set_threads(before)


def test_fused_paths_on_this_cpu():
    """The AVX2 path exists wherever the CPU has AVX2 and FMA (csrc/attention_avx2.cpp), the
    AVX-512 one wherever it has AVX-512F; "scalar" always; fastest first."""
    want = [isa for isa, ok in (("avx512", _FEATURES["avx512f"]), ("avx2", _FEATURES["avx2"] and _FEATURES["fma"]))
            if ok]
    assert list(ISAS) == want + ["scalar"]


@pytest.fixture
def int8_isa():
    yield _native.set_int8_isa
    _native.set_int8_isa("auto")


def test_fused_auto_path_follows_the_forced_int8_path(int8_isa):
    """isa='auto' (fused_isa()) is the best path, no wider than the int8 path when
    QRT_NATIVE_ISA / set_int8_isa forces one, so that forcing it runs the whole backend on that
    ISA; 'auto' then gives that path's bits."""
    q, k, v, mask = _attention_case("auto", 2, 7, 13, 3, 12, 12, "b1qs")
    x = _rng("auto-ln").standard_normal((3, 21)).astype(np.float32)
    g = np.ones(21, np.float32)
    order = ("avx512", "avx2", "scalar")
    cap = {"auto": "avx512", "amx": "avx512", "avx512_vnni": "avx512", "avx_vnni": "avx2", "avx2": "avx2",
           "scalar": "scalar"}
    for forced in ("auto", *_native.int8_isas()):
        int8_isa(forced)
        want = next(i for i in ISAS if order.index(i) >= order.index(cap[forced]))
        assert _native.fused_isa() == want, forced
        np.testing.assert_array_equal(_native.attention(q, k, v, mask, 12, 0.3),
                                      _native.attention(q, k, v, mask, 12, 0.3, want))
        np.testing.assert_array_equal(_native.skip_layer_norm(x, x, g), _native.skip_layer_norm(x, x, g, None, 1e-5, want))


@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("mask_kind", MASK_SHAPES)
def test_attention_matches_reference(shape, mask_kind, threads):
    from kernels.reference.fused import attention_ref
    b, sq, sk, h, d, dv = shape
    q, k, v, mask = _attention_case("native", *shape, mask_kind)
    want = attention_ref(q, k, v, mask, head_dim=d, scale=0.37)
    for isa in ISAS:
        results = []
        for n in (1, 2):
            threads(n)
            results.append(_native.attention(q, k, v, mask, d, 0.37, isa))
        np.testing.assert_array_equal(results[0], results[1])
        got = results[0]
        assert got.shape == want.shape and got.dtype == np.float32
        assert _rel(got, want) < ATTENTION_RTOL, isa


@pytest.mark.parametrize("isa", ISAS)
def test_attention_big_problem_threads_identical(isa, threads):
    """Above the parallel threshold (kAttentionParallelMinMacs), several items per thread."""
    from kernels.reference.fused import attention_ref
    q, k, v, mask = _attention_case("big", 2, 64, 96, 6, 32, 32, "b11s")
    outs = []
    for n in (1, 2):
        threads(n)
        outs.append(_native.attention(q, k, v, mask, 32, 0.125, isa))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert _rel(outs[0], attention_ref(q, k, v, mask, head_dim=32, scale=0.125)) < ATTENTION_RTOL


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mask_kind", [None, "b11s", "bhqs"])
def test_attention_rows_and_batches_alone_give_the_same_bits(isa, mask_kind):
    """csrc/attention.h: a query row (Sq = 1, decoding) or a batch computed alone gives the
    bits it has in the whole problem, wherever it sits in the row tiles (6 or 8 high)."""
    b, sq, sk, h, d = 2, 15, 19, 3, 10
    q, k, v, mask = _attention_case("alone", b, sq, sk, h, d, d, mask_kind)
    full = _native.attention(q, k, v, mask, d, 0.4, isa)
    for i in (0, 5, 6, sq - 1):
        m_i = None if mask is None else mask[:, :, i:i + 1] if mask.shape[2] > 1 else mask
        np.testing.assert_array_equal(_native.attention(q[:, i:i + 1], k, v, m_i, d, 0.4, isa), full[:, i:i + 1])
    np.testing.assert_array_equal(_native.attention(q[1:], k[1:], v[1:], None if mask is None else mask[1:], d, 0.4,
                                                    isa), full[1:])


@pytest.mark.parametrize("isa", ISAS)
def test_attention_strided_views_of_one_qkv_buffer(isa):
    """q, k, v as the Split of a merged (B, S, 3*H*D) projection, a mask that is a strided view,
    and a non-contiguous batch axis: read in place, same result as contiguous copies."""
    from kernels.reference.fused import attention_ref
    rng = _rng("strided")
    b, s, h, d = 3, 19, 4, 12
    qkv = rng.standard_normal((b, s, 3 * h * d)).astype(np.float32)
    q, k, v = np.split(qkv, 3, axis=-1)
    big_mask = np.where(rng.random((b, 1, s, 2 * s)) < 0.3, np.float32(-1e9), np.float32(0)).astype(np.float32)
    big_mask[..., 0] = 0
    mask = big_mask[..., ::2]                              # stride 2 along the keys
    got = _native.attention(q, k, v, mask, d, 0.3, isa)
    c = np.ascontiguousarray
    np.testing.assert_array_equal(got, _native.attention(c(q), c(k), c(v), c(mask), d, 0.3, isa))
    assert _rel(got, attention_ref(q, k, v, mask, head_dim=d, scale=0.3)) < ATTENTION_RTOL
    qb = np.concatenate([q, q])[::2]                        # batch stride twice the batch size
    assert not qb.flags.c_contiguous
    np.testing.assert_array_equal(_native.attention(qb, k, v, mask, d, 0.3, isa),
                                  _native.attention(c(qb), k, v, mask, d, 0.3, isa))


@pytest.mark.parametrize("isa", ISAS)
def test_attention_fully_masked_rows_and_edges(isa):
    from kernels.reference.fused import attention_ref
    q, k, v, _ = _attention_case("masked", 2, 3, 20, 2, 5, 5, None)
    mask = np.zeros((2, 1, 3, 20), np.float32)
    mask[0, 0, 1] = -3.4e38                                   # row masked everywhere: equal weights
    mask[1, 0, :, 3:] = -3.4e38
    want = attention_ref(q, k, v, mask, head_dim=5, scale=1.0)
    got = _native.attention(q, k, v, mask, 5, 1.0, isa)
    np.testing.assert_allclose(got, want, rtol=ATTENTION_RTOL, atol=1e-6)
    # empty problems: Sq = 0 gives an empty result, Sk = 0 the reference's empty sum (zeros)
    for sq, sk in ((0, 4), (3, 0)):
        q, k, v, _ = _attention_case("empty", 1, sq, sk, 2, 3, 3, None)
        np.testing.assert_array_equal(_native.attention(q, k, v, None, 3, 1.0, isa),
                                      attention_ref(q, k, v, None, head_dim=3, scale=1.0))
    # a NaN score makes its row NaN, as in the reference
    q, k, v, _ = _attention_case("nan", 1, 2, 5, 1, 4, 4, None)
    k[0, 2, 1] = np.nan
    got = _native.attention(q, k, v, None, 4, 1.0, isa)
    want = attention_ref(q, k, v, None, head_dim=4, scale=1.0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # nan_to_zero (sdpa's IsNaN + Where): NaN softmax rows, from a NaN key or a row of -inf
    # mask, give zeros; the other rows keep their bits
    q, k, v, _ = _attention_case("nan0", 2, 5, 9, 2, 4, 4, None)
    mask = np.zeros((2, 1, 5, 9), np.float32)
    mask[1, 0, 3] = -np.inf
    k[0, 2, 1] = np.nan
    plain = _native.attention(q, k, v, mask, 4, 1.0, isa)
    zeroed = _native.attention(q, k, v, mask, 4, 1.0, isa, True)
    want = attention_ref(q, k, v, mask, head_dim=4, scale=1.0, nan_to_zero=1)
    nan_rows = np.isnan(plain)
    assert nan_rows.any() and not np.isnan(zeroed).any()
    np.testing.assert_array_equal(zeroed[nan_rows], 0.0)
    np.testing.assert_array_equal(zeroed[~nan_rows], plain[~nan_rows])
    np.testing.assert_allclose(zeroed, want, rtol=ATTENTION_RTOL, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_exp32_accuracy(isa):
    x = np.concatenate([-np.linspace(0, 87, 200_001), [-1e-30, -0.5, -87.29]]).astype(np.float32)
    want = np.exp(x.astype(np.float64))
    got = _native.exp32(x, isa)
    assert np.max(np.abs(got - want) / want) < EXP32_RTOL
    special = _native.exp32(np.array([np.nan, -np.inf, -88.0, -1e30, 0.0], np.float32), isa)
    assert np.isnan(special[0]) and list(special[1:]) == [0.0, 0.0, 0.0, 1.0]
    for n in (1, 7, 9, 17):           # the tails of the 8 / 16 lane loops
        np.testing.assert_array_equal(_native.exp32(x[:n], isa), got[:n])


def test_exp32_simd_paths_give_the_same_bits():
    """csrc/attention.h: the AVX2 exp32 performs the AVX-512 one's operations (2^n built in the
    exponent bits instead of vscalefps, exact for x <= 0): the same bits on softmax arguments."""
    simd = [isa for isa in ISAS if isa != "scalar"]
    if len(simd) < 2:
        pytest.skip(f"needs two SIMD paths, this CPU has {simd}")
    x = np.concatenate([-np.linspace(0, 90, 300_001), [-0.0, -1e-38, -87.3, -87.29999]]).astype(np.float32)
    outs = [_native.exp32(x, isa) for isa in simd]
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)


def test_attention_bad_inputs_raise():
    q = np.zeros((1, 3, 8), np.float32)
    cases = [
        ((q.astype(np.float64), q, q, None, 4, 1.0), TypeError, "q must have dtype float32"),
        (([[0.0]], q, q, None, 4, 1.0), TypeError, "q must be a numpy array"),
        ((q[0], q, q, None, 4, 1.0), ValueError, r"q, k, v must be \(B, S, H\*D\)"),
        ((q, q, q, None, 3, 1.0), ValueError, "do not match with head_dim 3"),
        ((q, q, q, None, 0, 1.0), ValueError, "head_dim must be >= 1"),
        ((q, np.zeros((2, 3, 8), np.float32), q, None, 4, 1.0), ValueError, "do not match"),
        ((q, q, np.zeros((1, 4, 8), np.float32), None, 4, 1.0), ValueError, "do not match"),
        ((q, q, np.zeros((1, 3, 7), np.float32), None, 4, 1.0), ValueError, "do not match"),
        ((q, q, q, np.zeros((2, 1, 1, 3), np.float32), 4, 1.0), ValueError, r"mask \(2, 1, 1, 3\) does not broadcast"),
        ((q, q, q, np.zeros((1, 1, 1, 1, 3), np.float32), 4, 1.0), ValueError, "does not broadcast"),
        ((q, q, q, np.zeros((1, 1, 3), np.int64), 4, 1.0), TypeError, "mask must have dtype float32"),
        ((q, q, q, None, 4, float("nan")), ValueError, "scale must be finite"),
        ((q[:, :, ::2], q[:, :, ::2], q[:, :, ::2], None, 2, 1.0), ValueError, "contiguous along its last axis"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            _native.attention(*args)
    with pytest.raises(ValueError, match="unknown fused path 'avx9'; expected one of auto, avx512, avx2, scalar"):
        _native.attention(q, q, q, None, 4, 1.0, "avx9")
    unaligned = np.zeros(100, np.uint8)[1:97].view(np.float32).reshape(1, 3, 8)
    assert not unaligned.flags.aligned
    with pytest.raises(ValueError, match="not aligned"):
        _native.attention(unaligned, q, q, None, 4, 1.0)


# --- SkipLayerNormalization ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows, d", [(1, 1), (3, 7), (128, 384), (1000, 64), (37, 769), (5, 8), (17, 23), (2, 1000)])
def test_skip_layer_norm_matches_reference(rows, d, threads):
    rng = _rng("native-skipln", rows, d)
    x = rng.standard_normal((rows, d)).astype(np.float32) * 3 + 1
    skip = rng.standard_normal((rows, d)).astype(np.float32)
    g = rng.standard_normal(d).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    want = registry.lookup("SkipLayerNormalization", "dense", "reference")({"epsilon": 1e-12}, {})(x, skip, g, b)[0]
    want_nb = registry.lookup("SkipLayerNormalization", "dense", "reference")({"epsilon": 1e-12}, {})(x, skip, g)[0]
    for isa in ISAS:
        outs = []
        for n in (1, 2):
            threads(n)
            outs.append(_native.skip_layer_norm(x, skip, g, b, 1e-12, isa))
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_allclose(outs[0], want, rtol=0, atol=SKIP_LN_ATOL * max(1.0, float(np.abs(want).max())))
        no_bias = _native.skip_layer_norm(x, skip, g, None, 1e-12, isa)
        np.testing.assert_allclose(no_bias, want_nb, rtol=0, atol=SKIP_LN_ATOL * max(1.0, float(np.abs(want_nb).max())))
        if isa == "avx2":       # csrc/layer_norm.h: the scalar path's sums in the same order
            np.testing.assert_array_equal(outs[0], _native.skip_layer_norm(x, skip, g, b, 1e-12, "scalar"))
            np.testing.assert_array_equal(no_bias, _native.skip_layer_norm(x, skip, g, None, 1e-12, "scalar"))
        # a row alone gives the bits it has among the others
        np.testing.assert_array_equal(_native.skip_layer_norm(x[-1:], skip[-1:], g, b, 1e-12, isa), outs[0][-1:])


def test_skip_layer_norm_registered_kernel_and_fallbacks():
    rng = _rng("skipln-kernel")
    x = rng.standard_normal((2, 5, 24)).astype(np.float32)
    skip = rng.standard_normal((2, 5, 24)).astype(np.float32)
    g, b = (rng.standard_normal(24).astype(np.float32) for _ in range(2))
    fused = registry.lookup("SkipLayerNormalization", "dense", "native")({"epsilon": 1e-5}, {})
    ref = registry.lookup("SkipLayerNormalization", "dense", "reference")({"epsilon": 1e-5}, {})
    got = fused(x, skip, g, b)[0]
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref(x, skip, g, b)[0], rtol=0, atol=SKIP_LN_ATOL * 4)
    # a non-contiguous x is copied; float64 runs the reference
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    np.testing.assert_array_equal(fused(xt, skip, g, b)[0], got)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(fused(x64, skip, g, b)[0], ref(x64, skip, g, b)[0])


@pytest.mark.parametrize("backend", ["native", "numba"])
def test_skip_layer_norm_broadcast_takes_the_fast_kernel(backend, monkeypatch):
    """x and skip that broadcast to one shape (BERT's embeddings: the (1, S, D) position table
    added to the (B, S, D) words) run the fast kernel on the broadcast inputs, not the float64
    reference (3 ms against 0.2 at 8 x 128 x 384): the same bits as broadcasting by hand."""
    if registry.backend_status(backend) is not None:
        pytest.skip(f"{backend}: {registry.backend_status(backend)}")
    from kernels import fused_dispatch
    rng = _rng("skipln-broadcast", backend)
    x = rng.standard_normal((2, 5, 24)).astype(np.float32)
    skip = rng.standard_normal((2, 5, 24)).astype(np.float32)
    g, b = (rng.standard_normal(24).astype(np.float32) for _ in range(2))
    ref = registry.lookup("SkipLayerNormalization", "dense", "reference")({"epsilon": 1e-5}, {})

    def no_reference(*args):
        raise AssertionError("the reference ran")
    monkeypatch.setattr(fused_dispatch, "reference_of", lambda *a: no_reference)
    fused = registry.lookup("SkipLayerNormalization", "dense", backend)({"epsilon": 1e-5}, {})
    for xs, ss in ((x, skip[:1]), (x[:1], skip), (x, skip[0, 0]), (x[:, :1], skip[:1])):
        shape = np.broadcast_shapes(xs.shape, ss.shape)
        by_hand = fused(np.ascontiguousarray(np.broadcast_to(xs, shape)), np.ascontiguousarray(np.broadcast_to(ss, shape)),
                        g, b)[0]
        got = fused(xs, ss, g, b)[0]
        assert got.shape == shape
        np.testing.assert_array_equal(got, by_hand)
        np.testing.assert_allclose(got, ref(xs, ss, g, b)[0], rtol=0, atol=SKIP_LN_ATOL * 4)
    with pytest.raises(AssertionError, match="the reference ran"):
        fused(x, skip[:, :2], g, b)          # shapes that do not broadcast: the reference says why


def test_skip_layer_norm_bad_inputs_raise():
    x = np.zeros((2, 4), np.float32)
    g = np.ones(4, np.float32)
    cases = [
        ((x.astype(np.float16), x, g), TypeError, "x must have dtype float32"),
        ((x, x[:1], g), ValueError, "skip has shape"),
        ((x, x, g[:3]), ValueError, "scale has shape"),
        ((x, x, g, g[:2]), ValueError, "bias has shape"),
        ((x.T, x.T, g[:2]), ValueError, "C-contiguous"),
        ((np.zeros((2, 0), np.float32), np.zeros((2, 0), np.float32), g[:0]), ValueError, "D >= 1"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            _native.skip_layer_norm(*args)
    with pytest.raises(ValueError, match="epsilon"):
        _native.skip_layer_norm(x, x, g, None, -1.0)


# --- registered kernels and a BERT end to end ----------------------------------------------------------

def test_attention_kernel_and_split_views():
    attrs = {"head_dim": 4, "scale": 0.5}
    run = registry.lookup("Attention", "dense", "native")(attrs, {})
    ref = registry.lookup("Attention", "dense", "reference")(attrs, {})
    split = registry.lookup("Split", "dense", "native")({"axis": -1, "split": [8, 8, 8]}, {})
    qkv = _rng("split").standard_normal((2, 6, 24)).astype(np.float32)
    q, k, v = split(qkv)
    assert all(np.shares_memory(t, qkv) for t in (q, k, v))            # views, no copy
    np.testing.assert_allclose(run(q, k, v)[0], ref(q, k, v)[0], rtol=ATTENTION_RTOL, atol=1e-6)
    qt = np.ascontiguousarray(q.transpose(0, 2, 1)).transpose(0, 2, 1)  # last axis not contiguous: copied
    np.testing.assert_array_equal(run(qt, k, v)[0], run(q, k, v)[0])
    q64, k64, v64 = (t.astype(np.float64) for t in (q, k, v))
    np.testing.assert_array_equal(run(q64, k64, v64)[0], ref(q64, k64, v64)[0])    # runs the reference


@pytest.mark.parametrize("attrs,width", [({"axis": 1, "split": None, "num_outputs": 3}, 24),
                                         ({"axis": 1, "split": None, "num_outputs": 3}, 26),
                                         ({"axis": -1, "split": [5, 0, 7]}, 12)])
def test_split_views_match_the_reference(attrs, width):
    # views (no copy) with the reference's parts: explicit sizes (a 0-sized part included) and
    # num_outputs, even and uneven (26 = 9 + 9 + 8); a width the sizes do not fit is refused
    # by the reference's error
    split = registry.lookup("Split", "dense", "native")(attrs, {})
    ref = registry.lookup("Split", "dense", "reference")(attrs, {})
    x = _rng("views").standard_normal((3, width)).astype(np.float32)
    got, want = split(x), ref(x)
    assert [p.shape for p in got] == [p.shape for p in want]
    assert all(np.shares_memory(p, x) for p in got if p.size)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    if attrs["split"] is not None:
        with pytest.raises(ValueError, match="do not add up"):
            split(np.zeros((3, width + 1), np.float32))


@pytest.fixture(scope="module")
def bert_graphs():
    """A 2-layer BERT as torch exports it: (fp32 graph, dynamic int8 graph)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.test_onnx_equivalence import _bert_bytes
    data = _bert_bytes(model_zoo.bert(layers=2, hidden=64, heads=4, ffn=128))
    return runtime.convert(data), runtime.convert(data, quant="int8")


def test_bert_native_matches_reference(bert_graphs):
    """fp32: the fused kernels (Attention, SkipLayerNorm, GELU epilogues) agree with the
    reference to float rounding. int8: the same, except that an input differing in its last
    bit can land on the other side of an int8 rounding step of its row's dynamic quantization;
    such a row then differs by about one quantization step (measured on an AVX2-only Zen 3:
    1 token row of 99 at 1.8e-3 of the output's range; on AVX-512 none). The bound allows a
    few such rows, never a wrong row."""
    for graph, kind in zip(bert_graphs, ("fp32", "int8")):
        native = runtime.InferenceSession(graph, backend="native")
        reference = runtime.InferenceSession(graph, backend="reference")
        by_op = {(p.op, p.backend) for p in native.plan}
        assert ("Attention", "native") in by_op and ("SkipLayerNormalization", "native") in by_op
        assert ("Split", "native") in by_op
        for b, s in ((1, 1), (2, 7), (3, 33)):
            feeds = model_zoo.bert_feeds(b, s, seed=b * 10 + s)
            for got, want in zip(native.run(None, feeds), reference.run(None, feeds)):
                if kind == "fp32":
                    assert _rel(got, want) < 1e-6, (kind, b, s)      # measured <= 1.6e-7
                    continue
                rows = np.abs(got - want).reshape(-1, got.shape[-1]).max(axis=1) / np.abs(want).max()
                assert (rows > 1e-5).sum() <= max(1, rows.size // 20) and rows.max() < 1e-2, (kind, b, s, rows.max())


def test_one_thread_right_after_a_blas_gemm(monkeypatch):
    """kernels/blas_activity.py: right after a BLAS GEMM the native fused kernels run on one
    thread (OpenBLAS's spinning workers would stall the second), and the count is restored."""
    from kernels import blas_activity
    from kernels.native_cpu import _native
    from kernels.native_cpu import fused as native_fused
    _native.set_threads(2)
    seen = []
    monkeypatch.setattr(_native, "skip_layer_norm", lambda *a: seen.append(_native.get_threads()))
    monkeypatch.setattr(_native, "attention", lambda *a: seen.append(_native.get_threads()))
    x = np.ones((2, 8), np.float32)
    q = np.ones((1, 2, 8), np.float32)
    for call in (lambda: native_fused.skip_layer_norm(x, x, x[0], None, 1e-5),
                 lambda: native_fused.attention(q, q, q, None, 4, 0.5)):
        blas_activity.note_blas_call()
        call()
        monkeypatch.setattr(blas_activity, "_last_blas_call", [float("-inf")])
        call()
    assert seen == [1, 2, 1, 2] and _native.get_threads() == 2


@pytest.mark.parametrize("backend", ["reference", "numba", "native"])
@pytest.mark.parametrize("value", [2, -1, 0.5, "yes"])
def test_attention_nan_to_zero_other_than_0_or_1_is_refused_when_built(backend, value):
    """nan_to_zero is a 0/1 flag: anything else is refused when the kernel is built, on every
    CPU backend (the GPU factory has its own check, tests/test_cupy_kernels.py needs a GPU)."""
    from kernels import registry
    if registry.backend_status(backend) is not None:
        pytest.skip(f"{backend}: {registry.backend_status(backend)}")
    attrs = registry.fill_attrs("Attention", {"head_dim": 4, "scale": 0.5, "nan_to_zero": value})
    with pytest.raises(ValueError, match="nan_to_zero must be 0 or 1"):
        registry.build("Attention", "dense", backend, attrs, {})


# --- DeBERTa's disentangled attention (csrc/attention.h, "Disentangled attention") -------------

def _disentangled_case(b, sq, h, d, span, buckets, seed=0):
    from tests.conformance_cases import _deberta_index
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, sq, h * d)).astype(np.float32) for _ in range(3))
    pk, pq = (rng.standard_normal((h, 2 * span, d)).astype(np.float32) for _ in range(2))
    c2p = _deberta_index(sq, sq, span, buckets)
    p2c = np.ascontiguousarray(np.clip(span - (c2p[0] - span), 0, 2 * span - 1).T)[None]
    mask = np.where(rng.random((b, 1, sq, sq)) < 0.2, np.float32(-3.4028235e38), np.float32(0))
    return q, k, v, mask, pk, c2p, pq, p2c


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("b,sq,h,d,span,buckets", [(1, 1, 1, 1, 1, 2), (2, 23, 3, 20, 8, 8), (1, 130, 12, 32, 64, 64),
                                                   (3, 9, 2, 17, 256, 256)])
def test_disentangled_attention_every_path_matches_reference_and_threads(isa, b, sq, h, d, span, buckets, threads):
    # every ISA path against the float64 reference; one and two threads give the same bits
    # (items per (batch, head), computed start to end by one thread)
    from kernels.reference.fused import disentangled_attention_ref
    q, k, v, mask, pk, c2p, pq, p2c = _disentangled_case(b, sq, h, d, span, buckets)
    scale = 1 / np.sqrt(3 * d)
    want = disentangled_attention_ref(q, k, v, mask, pk, c2p, pq, p2c, head_dim=d, scale=scale)
    outs = []
    for n in (1, 2):
        threads(n)
        outs.append(_native.disentangled_attention(q, k, v, mask, pk, c2p, pq, p2c, d, scale, isa))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert _rel(outs[0], want) < ATTENTION_RTOL
    # without the terms it is the Attention kernel, bit for bit
    np.testing.assert_array_equal(_native.disentangled_attention(q, k, v, mask, None, None, None, None, d, scale, isa),
                                  _native.attention(q, k, v, mask, d, scale, isa))


def test_disentangled_attention_bad_inputs_raise():
    q, k, v, mask, pk, c2p, pq, p2c = _disentangled_case(1, 6, 2, 4, 4, 4)
    run = _native.disentangled_attention
    with pytest.raises(ValueError, match=r"c2p_index holds 8 at flat position 3, outside \[0, 8\)"):
        bad = c2p.copy()
        bad[0, 0, 3] = 8
        run(q, k, v, mask, pk, bad, pq, p2c, 4, 0.5)
    with pytest.raises(ValueError, match=r"p2c_index holds -1"):
        bad = p2c.copy()
        bad[0, 5, 5] = -1
        run(q, k, v, mask, pk, c2p, pq, bad, 4, 0.5)
    with pytest.raises(ValueError, match=r"c2p_index has shape \(6, 5\), expected \(6, 6\)"):
        run(q, k, v, mask, pk, np.ascontiguousarray(c2p[0, :, :5]), pq, p2c, 4, 0.5)
    with pytest.raises(ValueError, match=r"pos_key has shape \(2, 8, 5\), expected \(H, P, D\) = \(2, P >= 1, 4\)"):
        run(q, k, v, mask, np.zeros((2, 8, 5), np.float32), c2p, pq, p2c, 4, 0.5)
    with pytest.raises(ValueError, match="pos_query and p2c_index must be given together"):
        run(q, k, v, mask, pk, c2p, pq, None, 4, 0.5)
    with pytest.raises(TypeError, match="c2p_index"):
        run(q, k, v, mask, pk, c2p.astype(np.int32), pq, p2c, 4, 0.5)


def test_disentangled_attention_kernel_falls_back_to_the_reference():
    # float64 inputs run the reference; int32 indices are widened and take the native kernel
    from kernels.reference.fused import disentangled_attention_ref
    q, k, v, mask, pk, c2p, pq, p2c = _disentangled_case(2, 11, 2, 8, 6, 6)
    kern = registry.build("DisentangledAttention", "dense", "native", {"head_dim": 8, "scale": 0.2}, {})
    want = disentangled_attention_ref(q, k, v, mask, pk, c2p, pq, p2c, head_dim=8, scale=0.2)
    (got,) = kern(q, k, v, mask, pk, c2p.astype(np.int32), pq, p2c)
    assert got.dtype == np.float32 and _rel(got, want) < ATTENTION_RTOL
    f64 = [a.astype(np.float64) for a in (q, k, v, mask, pk)]
    (got,) = kern(*f64, c2p, pq.astype(np.float64), p2c)
    want64 = disentangled_attention_ref(*f64, c2p, pq.astype(np.float64), p2c, head_dim=8, scale=0.2)
    assert got.dtype == np.float64 and np.array_equal(got, want64)


def test_disentangled_attention_position_tables_bound_at_plan_time(monkeypatch):
    # a PositionTable (transposed once) gives the array's bits; the registered kernel makes one
    # for each table that is an initializer and passes it for the session's own array only
    from kernels.core.layouts import dense_tensor
    from kernels.native_cpu import fused
    q, k, v, mask, pk, c2p, pq, p2c = _disentangled_case(2, 19, 3, 16, 12, 12)
    table = _native.PositionTable(pk)
    assert table.shape == pk.shape
    np.testing.assert_array_equal(_native.disentangled_attention(q, k, v, mask, table, c2p, pq, p2c, 16, 0.3),
                                  _native.disentangled_attention(q, k, v, mask, pk, c2p, pq, p2c, 16, 0.3))
    with pytest.raises(ValueError, match=r"table has shape \(24, 16\), expected \(H, P, D\)"):
        _native.PositionTable(pk[0])
    with pytest.raises(ValueError, match=r"pos_key has shape \(3, 24, 16\), expected \(H, P, D\) = \(6, P >= 1, 8\)"):
        _native.disentangled_attention(q, k, v, mask, table, c2p, None, None, 8, 0.3)
    seen = []
    real = _native.disentangled_attention

    class Spy:
        PositionTable = _native.PositionTable

        def disentangled_attention(self, *args):
            seen.append((type(args[4]).__name__, type(args[6]).__name__))
            return real(*args)

        def __getattr__(self, name):
            return getattr(_native, name)

    monkeypatch.setattr(fused, "_native", Spy())
    weights = {4: dense_tensor("pk", pk), 6: dense_tensor("pq", pq)}
    kern = registry.build("DisentangledAttention", "dense", "native", {"head_dim": 16, "scale": 0.3}, weights)
    (a,) = kern(q, k, v, mask, weights[4].fields["data"], c2p, weights[6].fields["data"], p2c)
    (b,) = kern(q, k, v, mask, pk.copy(), c2p, pq.copy(), p2c)
    assert seen == [("PositionTable", "PositionTable"), ("ndarray", "ndarray")]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows,d", [(1, 1), (5, 7), (128, 384), (33, 129), (3, 1000)])
def test_layer_norm_without_skip_is_skip_layer_norm_of_zeros(isa, rows, d, threads):
    # skip None: t = x (LayerNormalization); the same bits as adding zeros (no -0.0 in x),
    # within the reference's tolerance, on 1 and 2 threads
    from kernels.reference.reduction import layer_normalization_ref
    rng = np.random.default_rng(rows * d)
    x = (rng.standard_normal((rows, d)) * 3 + 1).astype(np.float32)
    g, b = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    for n in (1, 2):
        threads(n)
        for bias in (b, None):
            got = _native.skip_layer_norm(x, None, g, bias, 1e-5, isa)
            np.testing.assert_array_equal(got, _native.skip_layer_norm(x, np.zeros_like(x), g, bias, 1e-5, isa))
            want = layer_normalization_ref(x, g, bias, axis=-1, epsilon=1e-5)
            assert np.max(np.abs(got - want)) <= SKIP_LN_ATOL * max(1.0, float(np.max(np.abs(want))))


def test_layer_norm_registered_kernel_and_fallbacks(monkeypatch):
    # the last axis of float32 x takes the native kernel (a spy); another axis, float64, a
    # scale of another shape: the reference
    from kernels.native_cpu import fused
    from kernels.reference.reduction import layer_normalization_ref
    calls = []
    real = _native.skip_layer_norm

    class Spy:
        def skip_layer_norm(self, *args):
            calls.append(args[1] is None)
            return real(*args)

        def __getattr__(self, name):
            return getattr(_native, name)

    monkeypatch.setattr(fused, "_native", Spy())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    g, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    kern = registry.build("LayerNormalization", "dense", "native", {"axis": -1, "epsilon": 1e-5}, {})
    (y,) = kern(x, g, b)
    assert calls == [True]
    assert np.max(np.abs(y - layer_normalization_ref(x, g, b, axis=-1, epsilon=1e-5))) < 1e-5
    (y,) = kern(x.astype(np.float64), g, b)
    assert y.dtype == np.float64 and len(calls) == 1
    kern1 = registry.build("LayerNormalization", "dense", "native", {"axis": 1, "epsilon": 1e-5}, {})
    g2 = rng.standard_normal((5, 16)).astype(np.float32)
    (y,) = kern1(x, g2, None)
    np.testing.assert_array_equal(y, layer_normalization_ref(x, g2, None, axis=1, epsilon=1e-5))
    assert len(calls) == 1
