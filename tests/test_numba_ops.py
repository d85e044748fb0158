"""The numba backend's float32 kernels (kernels/numba_cpu/ops.py) against the numpy reference.

Every kernel is built the way a session builds it, ``lookup(op, "dense", backend)(attrs,
weights)``, and compared with the reference kernel of the same node on awkward shapes (M = 1,
K not a multiple of 16, rank 1/3/4, broadcasting, empty tensors where the op allows them).
The reference computes in float64 and rounds once, so the tolerances below are the float32
error of each fast kernel. Then: the same bits for 1 and 2 threads, no unwritten output
element, errors for bad input, and a 2-layer BERT through a numba session against onnxruntime.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from kernels import registry  # noqa: E402
from kernels.core.layouts import PackedTensor  # noqa: E402

_REASON = registry.backend_status("numba")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"numba backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

# --- tolerances -------------------------------------------------------------------------------
# the tolerances of the numba kernels, named and explained once (tests/conformance_cases.py)
from tests.conformance_cases import (  # noqa: E402
    ELEMENTWISE_RTOL,
    GEMM_REL_TOL,
    LAYERNORM_ATOL,
    LAYERNORM_RTOL,
    SOFTMAX_ATOL,
    SOFTMAX_RTOL,
)

# a numba session of the whole BERT against onnxruntime (as tests/test_onnx_equivalence.py)
BERT_REL_TOL = 1e-4

NUMBA_DENSE_OPS = ("Linear", "MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax", "Gelu",
                   "Erf", "Sigmoid", "Relu")


# --- helpers ----------------------------------------------------------------------------------

def make(op: str, backend: str, attrs: dict | None = None, weights: dict | None = None):
    return registry.lookup(op, "dense", backend)(registry.fill_attrs(op, attrs or {}), weights or {})


def dense(name: str, a: np.ndarray) -> PackedTensor:
    return PackedTensor(name, "dense", str(a.dtype), tuple(a.shape), {"data": a})


def both(op, inputs, attrs=None, weights=None):
    """(numba output, reference output) of one node."""
    got = make(op, "numba", attrs, weights)(*inputs)
    want = make(op, "reference", attrs, weights)(*inputs)
    assert len(got) == len(want) == 1
    return got[0], want[0]


def check_close(got, want, rtol, atol):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)


def check_gemm(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    want64 = want.astype(np.float64)
    err = np.linalg.norm(got.astype(np.float64) - want64) / max(np.linalg.norm(want64), 1e-30)
    assert err <= GEMM_REL_TOL, err


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def numba_threads():
    """set_threads of the numba backend; restores all threads afterwards."""
    set_threads = registry.thread_setter("numba")
    yield set_threads
    set_threads(1 << 30)


def test_registered():
    have = {op for op, layout, _ in registry.kernels("numba") if layout == "dense"}
    assert set(NUMBA_DENSE_OPS) <= have


# --- element-wise -----------------------------------------------------------------------------

UNARY_CASES = [("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Erf", {}), ("Sigmoid", {}), ("Relu", {})]
# rank 0..4, odd sizes, empty, and one above PARALLEL_MIN_ELEMENTS that is not a multiple of
# the element-wise block
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the reference's inf * 0
@pytest.mark.parametrize("op,attrs", UNARY_CASES, ids=lambda v: str(v) if v else "")
def test_unary_nonfinite(op, attrs):
    x = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)
    got, want = both(op, (x,), attrs)
    np.testing.assert_array_equal(got, want)


def test_gelu_erf_tails_accurate():
    """Beyond the reference's own accuracy: against math.erf / math.erfc in float64, where
    1 + erf(x / sqrt 2) cancels (x < -5) or erf(x) is tiny (x ~ 0)."""
    x = np.concatenate([np.linspace(-12, 12, 20001), np.geomspace(1e-30, 1e-2, 50),
                        -np.geomspace(1e-30, 1e-2, 50)]).astype(np.float32)
    xs = x.astype(np.float64).tolist()
    gelu_exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in xs])
    erf_exact = np.array([math.erf(v) for v in xs])
    for op, exact in (("Gelu", gelu_exact), ("Erf", erf_exact)):
        got = make(op, "numba")(x)[0].astype(np.float64)
        keep = np.abs(exact) > np.finfo(np.float32).tiny        # float32 normal range
        rel = np.abs(got - exact)[keep] / np.abs(exact)[keep]
        assert rel.max() <= ELEMENTWISE_RTOL, (op, rel.max(), x[keep][rel.argmax()])


def test_non_float32_runs_the_reference(rng):
    x = rng.standard_normal((3, 5))            # float64: the reference kernel, bit for bit
    for op, attrs in UNARY_CASES + [("Softmax", {})]:
        got, want = both(op, (x,), attrs)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    w = rng.standard_normal((4, 5))
    got, want = both("Linear", (x, w), weights={1: dense("w", w)})
    np.testing.assert_array_equal(got, want)
    ints = rng.integers(-5, 5, (4, 7)).astype(np.int32)
    got, want = both("Relu", (ints,))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_gelu_rejects_unknown_form():
    with pytest.raises(ValueError, match="approximate"):
        make("Gelu", "numba", {"approximate": "sigmoid"})


# --- Softmax, LayerNormalization --------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the reference's inf - inf
def test_softmax_masked_rows(rng):
    """Attention masks add -inf or float32's lowest value; a fully masked row is uniform
    (lowest) or NaN (-inf, as in the reference); a NaN poisons its row only."""
    x = randn(rng, 6, 33)
    x[0, 5:] = -np.inf
    x[1, :] = np.finfo(np.float32).min
    x[2, ::2] += np.finfo(np.float32).min
    x[3, :] = -np.inf
    x[4, 7] = np.nan
    x[5, 3] = np.inf
    got, want = both("Softmax", (x,))
    np.testing.assert_allclose(got, want, rtol=SOFTMAX_RTOL, atol=SOFTMAX_ATOL, equal_nan=True)
    assert np.isnan(got[3]).all() and np.isnan(got[4]).all() and not np.isnan(got[:3]).any()


def test_layer_norm_prepared_scale_is_not_stale(rng):
    """A scale that is not the planned initializer (another array) is used as given."""
    x = randn(rng, 3, 8)
    s0, s1 = randn(rng, 8), randn(rng, 8)
    run = make("LayerNormalization", "numba", {}, {1: dense("scale", s0)})
    ref = make("LayerNormalization", "reference")
    check_close(run(x, s0)[0], ref(x, s0)[0], LAYERNORM_RTOL, LAYERNORM_ATOL)
    check_close(run(x, s1)[0], ref(x, s1)[0], LAYERNORM_RTOL, LAYERNORM_ATOL)


# --- GEMMs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("xshape,n", [((1, 17), 5), ((17,), 5), ((2, 3, 33), 31), ((0, 17), 4),
                                      ((5, 0), 3), ((128, 100), 48), ((1, 300), 1)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("initializer", [True, False], ids=["init", "activation"])
def test_linear_matches_reference(xshape, n, with_bias, initializer, rng):
    k = xshape[-1]
    x = randn(rng, *xshape)
    w = randn(rng, n, k)
    b = randn(rng, n)
    inputs = (x, w, b) if with_bias else (x, w)
    weights = {1: dense("w", w), 2: dense("b", b)} if initializer else {}
    got, want = both("Linear", inputs, {}, weights)
    check_gemm(got, want)


def test_linear_strided_input_bound_and_computed_weight(rng):
    x = randn(rng, 40, 24)[::2, :]              # not contiguous
    w0, w1 = randn(rng, 9, 24), randn(rng, 9, 24)
    run = make("Linear", "numba", {}, {1: dense("w", w0)})
    ref = make("Linear", "reference")           # no initializer: the weight is read from the slot
    check_gemm(run(x, w0)[0], ref(x, w0)[0])
    check_gemm(run(x, w1)[0], ref(x, w0)[0])    # an initializer is bound: the slot is not read
    check_gemm(make("Linear", "numba")(x, w1)[0], ref(x, w1)[0])


def test_linear_errors():
    with pytest.raises(ValueError, match="act_quant"):
        make("Linear", "numba", {"act_quant": "dynamic"})
    run = make("Linear", "numba")
    with pytest.raises(ValueError, match="do not match"):
        run(np.ones((2, 5), np.float32), np.ones((3, 4), np.float32))


CONV_CASES = [
    # x shape, w shape, attrs
    ((1, 3, 9, 11), (4, 3, 3, 3), {}),
    ((2, 4, 10, 7), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1]}),
    ((3, 6, 8, 8), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1], "dilations": [2, 1]}),
    ((2, 5, 6, 7), (3, 5, 1, 1), {}),                                 # 1x1: no im2col
    ((1, 5, 6, 7), (3, 5, 1, 1), {"strides": [2, 2]}),                # 1x1 strided
    ((2, 3, 17), (5, 3, 4), {"strides": [3], "pads": [2, 1]}),        # 1-D
    ((1, 16, 20, 20), (8, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
]


@pytest.mark.parametrize("xshape,wshape,attrs", CONV_CASES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_conv_matches_reference(xshape, wshape, attrs, with_bias, rng):
    x, w, b = randn(rng, *xshape), randn(rng, *wshape), randn(rng, wshape[0])
    inputs = (x, w, b) if with_bias else (x, w)
    weights = {1: dense("w", w), 2: dense("b", b)}
    got, want = both("Conv", inputs, attrs, weights)
    check_gemm(got, want)
    assert got.flags.c_contiguous


def test_conv_errors(rng):
    with pytest.raises(ValueError, match="act_quant"):
        make("Conv", "numba", {"act_quant": "static", "act_scale": 0.1})
    run = make("Conv", "numba", {"group": 2})
    with pytest.raises(ValueError, match="do not match"):
        run(randn(rng, 1, 3, 5, 5), randn(rng, 4, 2, 3, 3))


# --- threads, unwritten outputs ---------------------------------------------------------------

def _thread_cases(rng):
    """(op, attrs, inputs, blas), each large enough for the parallel path; ``blas``: the op is
    numpy's BLAS sgemm, not a numba kernel."""
    from kernels.numba_cpu import ops
    rows = ops.PARALLEL_MIN_ELEMENTS // 100 + 7
    x = randn(rng, rows, 131, scale=3.0)
    cases = [(op, attrs, (x,), False) for op, attrs in UNARY_CASES]
    cases.append(("Relu", {}, (randn(rng, ops.RELU_PARALLEL_MIN_ELEMENTS + 5),), False))
    cases += [("Softmax", {}, (x,), False), ("Softmax", {"axis": 0}, (x,), False),
              ("LayerNormalization", {}, (x, randn(rng, 131), randn(rng, 131)), False),
              ("Linear", {}, (x, randn(rng, 64, 131), randn(rng, 64)), True),
              ("Conv", {"pads": [1, 1, 1, 1]}, (randn(rng, 2, 8, 40, 40), randn(rng, 8, 8, 3, 3)), True)]
    return cases


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has a single thread here")
def test_thread_count_changes_no_bits_of_numba_kernels(rng, numba_threads):
    """numba's own kernels give the same bits for 1 and 2 threads (fixed work split); the fp32
    GEMMs are OpenBLAS, whose summation order may follow its thread count (kernels/numba_cpu/
    ops.py: it did on an AVX2-only Zen 3), so for them the promise is float32 rounding only, and
    both thread counts must be that close to the reference."""
    for op, attrs, inputs, blas in _thread_cases(rng):
        run = make(op, "numba", attrs)
        numba_threads(1)
        one = run(*inputs)[0]
        numba_threads(2)
        two = run(*inputs)[0]
        if not blas:
            np.testing.assert_array_equal(one, two, err_msg=op)
            continue
        ref = make(op, "reference", attrs)(*inputs)[0]
        check_gemm(one, ref)
        check_gemm(two, ref)


def test_every_output_element_written(rng):
    """The private drivers on outputs poisoned with NaN, at sizes that leave partial blocks."""
    from kernels.numba_cpu import ops
    for n in (1, 15, ops.ELEMENTWISE_BLOCK + 17, 3 * ops.ELEMENTWISE_BLOCK + 5):
        x = randn(rng, n)
        for kind in (ops.GELU_ERF, ops.GELU_TANH, ops.ERF, ops.SIGMOID, ops.RELU):
            for driver in (ops._unary_serial, ops._unary_parallel):
                out = np.full(n, np.nan, np.float32)
                driver(x, out, kind)
                assert not np.isnan(out).any(), (driver, kind, n)
    for shape in ((1, 1), (3, 9), (37, 130)):
        x = randn(rng, *shape)
        scale, bias = randn(rng, shape[1]), randn(rng, shape[1])
        for driver in (ops._layer_norm_serial, ops._layer_norm_parallel):
            out = np.full(shape, np.nan, np.float32)
            driver(x, scale, bias, 1e-5, out)
            assert not np.isnan(out).any()
        for driver in (ops._softmax_serial, ops._softmax_parallel):
            out = np.full(shape, np.nan, np.float32)
            driver(x, out)
            assert not np.isnan(out).any()


# --- a whole model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_graph_and_bytes():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("transformers")
    from runtime.convert import from_onnx
    from tests import model_zoo
    from tests.test_onnx_equivalence import _bert_bytes
    data = _bert_bytes(model_zoo.bert())
    return from_onnx(data), data


# what the numba backend runs of a BERT once the session has fused it (runtime/fuse.py)
FAST_OPS = ("SkipLayerNormalization", "Attention", "Linear")


def test_bert_numba_session_matches_onnxruntime(bert_graph_and_bytes):
    ort = pytest.importorskip("onnxruntime")
    import runtime
    from tests import model_zoo
    from tests.test_onnx_equivalence import BERT_SHAPES, rel_err
    graph, data = bert_graph_and_bytes
    sess = runtime.InferenceSession(graph, backend="numba")
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for b, s in BERT_SHAPES:
        feeds = model_zoo.bert_feeds(b, s, seed=b * 100 + s)
        want = ref.run(None, feeds)
        got = sess.run(None, feeds)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert rel_err(g, w) <= BERT_REL_TOL, (b, s, rel_err(g, w))
    planned = [p for p in sess.plan if p.op in FAST_OPS]
    assert {p.op for p in planned} == set(FAST_OPS)
    assert all(p.backend == "numba" for p in planned), [p for p in planned if p.backend != "numba"]
    # threads= changes nothing in the result
    feeds = model_zoo.bert_feeds(2, 16, seed=7)
    one = runtime.InferenceSession(graph, backend="numba", threads=1).run(None, feeds)
    two = runtime.InferenceSession(graph, backend="numba", threads=2).run(None, feeds)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_bert_auto_backend_picks_numba(bert_graph_and_bytes):
    import runtime
    graph, _ = bert_graph_and_bytes
    for p in runtime.InferenceSession(graph).plan:
        if p.op in FAST_OPS:
            # native comes first in AUTO_ORDER; it wins where it has a kernel of its own
            want = "native" if registry.has_kernel(p.op, p.layout, "native") else "numba"
            assert p.backend == want, p
