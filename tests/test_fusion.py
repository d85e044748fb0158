"""Session-time fusion (runtime/fuse.py) and the fused kernels.

* The pass: which patterns fuse on exported BERTs and small hand-made graphs, which must not
  (an intermediate that is a graph output or read twice), and that a fused session computes
  what the unfused graph computes.
* The fused ops' references (kernels/reference/fused.py) against the unfused graph's math.
* The numba kernels against those references, for awkward shapes and 1 and 2 threads, and the
  int8 GEMM's fused epilogue against the unfused GEMM + activation kernel (identical bits).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import runtime
from kernels import registry
from runtime.fuse import fuse
from runtime.graph import Graph, Node, Value
from kernels.core.layouts import dense_tensor, pack_int8
from tests import model_zoo

pytestmark = pytest.mark.isa   # the fused kernels' CPU paths: tests/test_forced_isa.py runs them forced to AVX2

# The fused reference computes in float64 and rounds once; the unfused graph rounds to float32
# after each of ~8 nodes: a few float32 ulps of the largest intermediate.
UNFUSED_RTOL = 1e-5
# numba Attention accumulates q.k over D and p.v over Sk in float32 (and scales q first):
# relative error of a float32 dot product ~ n * 2^-24 on terms of mixed sign; measured worst
# ~6e-7 relative to the output norm at Sk = 130, bound set with 10x margin.
ATTENTION_RTOL = 1e-5
# numba SkipLayerNormalization: float32 sum (as the Add node), float64 statistics and affine
# step (as the numba LayerNorm); vs the float64 reference: one float32 rounding of the output
# plus the float64 E[x^2] - mean^2 cancellation, ~1e-16 * mean^2 / var.
SKIP_LN_ATOL = 2e-6
# numba GELU (kernels/numba_cpu/ops.py _gelu_erf_value, mostly float32) against the float64
# reference: < 4e-7 relative measured, 1e-6 allowed; for x < -5 the reference's own
# 0.5 x (1 + erf(x / sqrt 2)) cancels (absolute error ~1e-16 |x|), hence the absolute floor:
# both as in tests/test_numba_ops.py.
GELU_RTOL = 1e-6
GELU_ATOL = 1e-12


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _numba_or_skip():
    reason = registry.backend_status("numba")
    if reason is not None:
        pytest.skip(f"numba backend unavailable: {reason}")


@pytest.fixture
def threads():
    """The numba backend's set_threads; restores all threads afterwards."""
    _numba_or_skip()
    set_threads = registry.thread_setter("numba")
    yield set_threads
    set_threads(1 << 30)


# --- the pass on exported BERTs -------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_graph():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.test_onnx_equivalence import _bert_bytes
    return runtime.convert(_bert_bytes(model_zoo.bert(layers=2, hidden=64, heads=4, ffn=128)))


def test_bert_fuses_attention_layernorm_and_gelu(bert_graph):
    fused = fuse(bert_graph)
    ops = [n.op for n in fused.nodes]
    assert ops.count("Attention") == 2
    assert ops.count("SkipLayerNormalization") == 2 * 2 + 1          # two per layer + embeddings
    assert sum(n.attrs.get("activation") == "gelu" for n in fused.nodes) == 2
    for gone in ("Softmax", "Transpose", "MatMul", "Gelu", "LayerNormalization"):
        assert gone not in ops, gone
    # Q, K, V projections: one Linear over the concatenated weight, split into three views
    assert ops.count("Split") == 2 and ops.count("Linear") == len(
        [n for n in bert_graph.nodes if n.op == "Linear"]) - 2 * 2
    att = next(n for n in fused.nodes if n.op == "Attention")
    assert att.attrs == {"head_dim": 16, "scale": pytest.approx(0.25)} and len(att.inputs) == 4
    # the stored graph is untouched: fusion works on a copy
    assert "Attention" not in [n.op for n in bert_graph.nodes]
    assert len(fused.nodes) < len(bert_graph.nodes) - 20


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_fused_bert_matches_unfused(bert_graph, backend):
    if backend == "numba":
        _numba_or_skip()
    plain = runtime.InferenceSession(bert_graph, backend="reference", fuse=False)
    fast = runtime.InferenceSession(bert_graph, backend=backend)
    assert "Attention" in [p.op for p in fast.plan]
    for b, s in ((1, 1), (2, 7), (3, 33)):
        feeds = model_zoo.bert_feeds(b, s, seed=b * 10 + s)       # masks real positions
        for got, want in zip(fast.run(None, feeds), plain.run(None, feeds)):
            assert _rel(got, want) < 2 * ATTENTION_RTOL, (b, s)


def test_fuse_false_runs_the_graph_as_stored(bert_graph):
    s = runtime.InferenceSession(bert_graph, backend="reference", fuse=False)
    assert [p.op for p in s.plan] == [n.op for n in bert_graph.nodes]


# --- the pass on small graphs ----------------------------------------------------------------------

def _linear_act_graph(act_op: str, extra_output: bool = False, attrs=None) -> Graph:
    rng = _rng("linear-act", act_op)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    nodes = [Node("fc", "Linear", ["x", "w", "b"], ["h"]), Node("act", act_op, ["h"], ["y"], dict(attrs or {}))]
    outputs = [Value("y", "float32", ("n", 5))] + ([Value("h", "float32", ("n", 5))] if extra_output else [])
    g = Graph("t", [Value("x", "float32", ("n", 8))], outputs, nodes,
              {"w": dense_tensor("w", w), "b": dense_tensor("b", b)})
    g.validate()
    return g


@pytest.mark.parametrize("act_op, attrs, name", [("Relu", {}, "relu"), ("Gelu", {}, "gelu"),
                                                  ("Gelu", {"approximate": "tanh"}, "gelu_tanh")])
def test_linear_activation_fuses_and_matches(act_op, attrs, name):
    g = _linear_act_graph(act_op, attrs=attrs)
    fused = fuse(g)
    assert [(n.op, n.attrs.get("activation")) for n in fused.nodes] == [("Linear", name)]
    x = _rng("x", name).standard_normal((4, 8)).astype(np.float32) * 2
    want = runtime.InferenceSession(g, backend="reference", fuse=False).run(None, {"x": x})[0]
    got = runtime.InferenceSession(g, backend="reference").run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)        # the reference applies the same two kernels


def test_hard_swish_fuses_into_a_conv_only():
    """HardSwish after a Linear stays its own node: Linears also run on the GPU backends, whose
    kernels have no HardSwish epilogue (the Conv case: tests/test_convert.py)."""
    g = _linear_act_graph("HardSwish")
    assert [n.op for n in fuse(g).nodes] == ["Linear", "HardSwish"]


@pytest.mark.skipif(registry.backend_status("triton") is not None, reason="triton backend unavailable")
def test_an_activation_a_gpu_kernel_lacks_is_refused_there():
    w = pack_int8("w", _rng("gpu-act").standard_normal((5, 8)).astype(np.float32))
    attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic", "activation": "hard_swish"})
    with pytest.raises(ValueError, match="activation 'hard_swish' is not available after a triton kernel"):
        registry.build("Linear", "int8", "triton", attrs, {1: w})


def test_linear_reshape_activation_fuses_into_the_linear():
    # GPT-2's Conv1D: Gemm on (B*S, K), Reshape to (B, S, N), then the activation
    g = _linear_act_graph("Gelu", attrs={"approximate": "tanh"})
    g.nodes = [g.nodes[0], Node("rs", "Reshape", ["h", "shape"], ["h3"]), Node("act", "Gelu", ["h3"], ["y"],
                                                                            {"approximate": "tanh"})]
    g.initializers["shape"] = dense_tensor("shape", np.array([2, -1, 5], np.int64))
    g.outputs = [Value("y", "float32", (2, "m", 5))]
    g.validate()
    fused = fuse(g)
    assert [(n.op, n.attrs.get("activation")) for n in fused.nodes] == [("Linear", "gelu_tanh"), ("Reshape", None)]
    x = _rng("x", "reshape").standard_normal((4, 8)).astype(np.float32) * 2
    want = runtime.InferenceSession(g, backend="reference", fuse=False).run(None, {"x": x})[0]
    for backend in ("reference", "numba", "native"):
        if registry.backend_status(backend) is not None:
            continue
        got = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})[0]
        assert got.shape == (2, 2, 5)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _add_relu_graph(b_shape=(2, 3, 5, 4), extra_output: bool = False) -> Graph:
    """ResNet's residual block end: Add(h, skip) -> Relu."""
    nodes = [Node("sum", "Add", ["h", "skip"], ["s"]), Node("act", "Relu", ["s"], ["y"])]
    outputs = [Value("y", "float32", (2, 3, 5, 4))] + ([Value("s", "float32", (2, 3, 5, 4))] if extra_output else [])
    g = Graph("t", [Value("h", "float32", (2, 3, 5, 4)), Value("skip", "float32", b_shape)], outputs, nodes, {})
    g.validate()
    return g


@pytest.mark.parametrize("b_shape", [(2, 3, 5, 4), (2, 3, 1, 1), (1,)])
def test_add_relu_fuses_and_has_the_bits_of_the_pair(b_shape):
    g = _add_relu_graph(b_shape)
    assert [(n.op, n.attrs.get("activation")) for n in fuse(g).nodes] == [("Add", "relu")]
    rng = _rng("add-relu", b_shape)
    h = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    skip = rng.standard_normal(b_shape).astype(np.float32)
    h.flat[:4] = [np.nan, -0.0, np.inf, -np.inf]          # NaN kept, -0 + -0 -> +0 after the Relu
    if skip.size > 1:
        skip.flat[1] = -0.0
    feed = {"h": h, "skip": skip}
    want = runtime.InferenceSession(g, backend="reference", fuse=False).run(None, feed)[0]
    for backend in ("reference", "numba", "native"):
        if registry.backend_status(backend) is not None:
            continue
        for fused in (True, False):
            got = runtime.InferenceSession(g, backend=backend, fuse=fused).run(None, feed)[0]
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (backend, fused)


def test_add_relu_is_not_fused_when_the_sum_is_read_elsewhere():
    assert [n.op for n in fuse(_add_relu_graph(extra_output=True)).nodes] == ["Add", "Relu"]


def _assert_fused_has_the_bits_of_unfused(g: Graph, x: np.ndarray) -> None:
    """Graph g on {"x": x}, fused and not, the same bits on every CPU backend there is."""
    for backend in ("reference", "numba", "native"):
        if registry.backend_status(backend) is not None:
            continue
        want = runtime.InferenceSession(g, backend=backend, fuse=False).run(None, {"x": x})[0]
        got = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})[0]
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), backend


def _squeeze_excite_graph(k: int = 3, stride: int = 1, axes=(2, 3), keepdims: int = 1, mean_of: str = "a") -> Graph:
    """MobileNetV3's block: depthwise Conv -> HardSwish (a), ReduceMean of a over H, W ->
    1 x 1 Conv -> Relu -> 1 x 1 Conv -> HardSigmoid (s), y = a * s."""
    rng = _rng("se", k, stride)
    c, r = 4, 2
    conv = {"strides": [stride, stride], "pads": [k // 2] * 4, "dilations": [1, 1]}
    one = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}
    nodes = [Node("dw", "Conv", ["x", "w_dw", "b_dw"], ["d"], {**conv, "group": c}),
             Node("hs", "HardSwish", ["d"], ["a"]),
             Node("mean", "ReduceMean", [mean_of], ["m"], {"axes": list(axes), "keepdims": keepdims}),
             Node("fc1", "Conv", ["m", "w1", "b1"], ["f"], one), Node("relu", "Relu", ["f"], ["fr"]),
             Node("fc2", "Conv", ["fr", "w2", "b2"], ["e"], one),
             Node("hsig", "HardSigmoid", ["e"], ["s"], {"alpha": 1 / 6, "beta": 0.5}),
             Node("scale", "Mul", ["a", "s"], ["y"])]
    inits = {"w_dw": rng.standard_normal((c, 1, k, k)), "b_dw": rng.standard_normal(c),
             "w1": rng.standard_normal((r, c, 1, 1)), "b1": rng.standard_normal(r),
             "w2": rng.standard_normal((c, r, 1, 1)), "b2": rng.standard_normal(c)}
    g = Graph("se", [Value("x", "float32", ("n", c, 11, 13))], [Value("y", "float32", None)], nodes,
              {name: dense_tensor(name, v.astype(np.float32)) for name, v in inits.items()})
    g.validate()
    return g


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 2)])
def test_squeeze_excite_mean_fuses_into_the_conv_with_the_bits_of_the_pair(k, stride):
    g = _squeeze_excite_graph(k, stride)
    fused = fuse(g)
    dw = fused.nodes[0]
    assert (dw.op, dw.attrs.get("activation"), dw.attrs.get("channel_mean"), dw.outputs) == ("Conv", "hard_swish", 1, ["a", "m"])
    assert "ReduceMean" not in [n.op for n in fused.nodes]
    x = (3 * _rng("se-x", k, stride).standard_normal((2, 4, 11, 13))).astype(np.float32)
    _assert_fused_has_the_bits_of_unfused(g, x)


def _silu_se_graph(mul_order: str = "ys", extra_reader: bool = False) -> Graph:
    """EfficientNet's block: 1 x 1 Conv -> SiLU (as exported: Sigmoid, then Mul of the Conv's output
    by it), depthwise Conv -> SiLU (a), ReduceMean of a -> 1 x 1 Conv -> SiLU -> 1 x 1 Conv ->
    Sigmoid (the gate s), y = a * s. mul_order "sy": the SiLU Muls take the Sigmoid's output first
    (not fused);
    extra_reader: the expand Conv's output is also a graph output (no fusion there)."""
    rng = _rng("silu-se", mul_order, extra_reader)
    c, e, r = 3, 6, 2
    one = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}

    def silu(name, v):
        ins = [v, f"{name}_s"] if mul_order == "ys" else [f"{name}_s", v]
        return [Node(f"{name}_sig", "Sigmoid", [v], [f"{name}_s"]), Node(f"{name}_mul", "Mul", ins, [f"{name}_y"])]
    nodes = [Node("ex", "Conv", ["x", "w_ex", "b_ex"], ["h"], one), *silu("ex", "h"),
             Node("dw", "Conv", ["ex_y", "w_dw", "b_dw"], ["d"],
                  {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": e}), *silu("dw", "d"),
             Node("mean", "ReduceMean", ["dw_y"], ["m"], {"axes": [2, 3], "keepdims": 1}),
             Node("fc1", "Conv", ["m", "w1", "b1"], ["f"], one), *silu("fc1", "f"),
             Node("fc2", "Conv", ["fc1_y", "w2", "b2"], ["g"], one), Node("gate", "Sigmoid", ["g"], ["s"]),
             Node("scale", "Mul", ["dw_y", "s"], ["y"])]
    inits = {"w_ex": rng.standard_normal((e, c, 1, 1)), "b_ex": rng.standard_normal(e),
             "w_dw": rng.standard_normal((e, 1, 3, 3)), "b_dw": rng.standard_normal(e),
             "w1": rng.standard_normal((r, e, 1, 1)), "b1": rng.standard_normal(r),
             "w2": rng.standard_normal((e, r, 1, 1)), "b2": rng.standard_normal(e)}
    outs = [Value("y", "float32", None)] + ([Value("h", "float32", None)] if extra_reader else [])
    g = Graph("silu-se", [Value("x", "float32", ("n", c, 9, 10))], outs, nodes,
              {name: dense_tensor(name, v.astype(np.float32)) for name, v in inits.items()})
    g.validate()
    return g


@pytest.mark.parametrize("mul_order", ["ys"])
def test_silu_fuses_into_each_conv_with_the_bits_of_sigmoid_and_mul(mul_order):
    g = _silu_se_graph(mul_order)
    fused = fuse(g)
    convs = {n.name: n for n in fused.nodes if n.op == "Conv"}
    assert [convs[k].attrs.get("activation", "none") for k in ("ex", "dw", "fc1", "fc2")] == ["silu", "silu", "silu", "none"]
    assert convs["dw"].attrs.get("channel_mean") == 1          # the mean after the SiLU: the Conv's output now
    assert [n.op for n in fused.nodes].count("Sigmoid") == 1    # the gate stays: its input is read once
    x = (2 * _rng("silu-x", mul_order).standard_normal((2, 3, 9, 10))).astype(np.float32)
    x[0, 0, 0, :2] = [np.nan, -np.inf]
    _assert_fused_has_the_bits_of_unfused(g, x)


def test_silu_is_not_fused_when_the_convs_output_is_read_elsewhere_or_the_mul_is_reversed():
    convs = {n.name: n for n in fuse(_silu_se_graph(extra_reader=True)).nodes if n.op == "Conv"}
    assert convs["ex"].attrs.get("activation", "none") == "none" and convs["dw"].attrs.get("activation") == "silu"
    # Mul(sigmoid(y), y): a NaN product takes the first operand's NaN, so the pair's bits are not y * sigmoid(y)'s
    assert "silu" not in [n.attrs.get("activation") for n in fuse(_silu_se_graph("sy")).nodes]


@pytest.mark.parametrize("change", [dict(keepdims=0), dict(axes=(1, 2)), dict(axes=(3,)), dict(mean_of="x")])
def test_squeeze_excite_mean_fuses_only_over_a_convs_planes_kept(change):
    assert "ReduceMean" in [n.op for n in fuse(_squeeze_excite_graph(**change)).nodes]


def test_no_fusion_when_the_intermediate_is_an_output():
    g = _linear_act_graph("Relu", extra_output=True)
    assert [n.op for n in fuse(g).nodes] == ["Linear", "Relu"]


def test_bad_activation_attribute_is_refused():
    g = _linear_act_graph("Relu")
    g.nodes = [g.nodes[0]]
    g.nodes[0].attrs["activation"] = "swish"
    g.nodes[0].outputs = ["y"]
    with pytest.raises(ValueError, match="activation must be one of none, relu, gelu, gelu_tanh, hard_swish, silu; got 'swish'"):
        runtime.InferenceSession(g, backend="reference")


def test_add_layernorm_with_a_second_reader_is_not_fused():
    rng = _rng("ln")
    d = 6
    nodes = [Node("add", "Add", ["x", "r"], ["s"]),
             Node("ln", "LayerNormalization", ["s", "g", "b"], ["y"]),
             Node("relu", "Relu", ["s"], ["z"])]
    g = Graph("t", [Value("x", "float32", (2, d)), Value("r", "float32", (2, d))],
              [Value("y", "float32", (2, d)), Value("z", "float32", (2, d))], nodes,
              {"g": dense_tensor("g", rng.standard_normal(d).astype(np.float32)),
               "b": dense_tensor("b", rng.standard_normal(d).astype(np.float32))})
    g.validate()
    assert [n.op for n in fuse(g).nodes] == ["Add", "LayerNormalization", "Relu"]
    g.nodes.pop()
    g.outputs.pop()
    assert [n.op for n in fuse(g).nodes] == ["SkipLayerNormalization"]


# --- references of the fused ops --------------------------------------------------------------------

def _unfused_attention(q, k, v, mask, d, scale):
    """The exported pattern's math, node by node, in float32 (what the fused op replaces)."""
    b, sq, hd = q.shape
    sk, h = k.shape[1], hd // d
    qh = q.reshape(b, sq, h, d).transpose(0, 2, 1, 3)
    kt = k.reshape(b, sk, h, d).transpose(0, 2, 3, 1)
    vh = v.reshape(b, sk, h, -1).transpose(0, 2, 1, 3)
    s = (qh @ kt) * np.float32(scale)
    if mask is not None:
        s = s + mask
    s = np.exp(s - s.max(-1, keepdims=True))
    p = s / s.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, sq, -1)


MASK_SHAPES = [None, "b11s", "b1qs", "1hqs", "bhqs", "scalar"]


def _attention_case(key, b, sq, sk, h, d, dv, mask_kind):
    rng = _rng("attention", key, b, sq, sk, h, d, dv, mask_kind)
    q = rng.standard_normal((b, sq, h * d)).astype(np.float32)
    k = rng.standard_normal((b, sk, h * d)).astype(np.float32)
    v = rng.standard_normal((b, sk, h * dv)).astype(np.float32)
    shapes = {"b11s": (b, 1, 1, sk), "b1qs": (b, 1, sq, sk), "1hqs": (1, h, sq, sk),
              "bhqs": (b, h, sq, sk), "scalar": ()}
    mask = None
    if mask_kind is not None:
        mask = np.where(rng.random(shapes[mask_kind]) < 0.3, np.float32(-3.4e38), np.float32(0)).astype(np.float32)
        if mask.ndim:
            mask[..., 0] = 0          # at least one position visible in every row
    return q, k, v, mask


@pytest.mark.parametrize("mask_kind", MASK_SHAPES)
def test_attention_reference_matches_the_unfused_math(mask_kind):
    from kernels.reference.fused import attention_ref
    q, k, v, mask = _attention_case("ref", 2, 5, 7, 3, 4, 4, mask_kind)
    got = attention_ref(q, k, v, mask, head_dim=4, scale=0.5)
    assert got.dtype == np.float32 and got.shape == (2, 5, 12)
    assert _rel(got, _unfused_attention(q, k, v, mask, 4, 0.5)) < UNFUSED_RTOL


def test_attention_reference_rejects_bad_shapes():
    from kernels.reference.fused import attention_ref
    q = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(ValueError, match="do not match with head_dim 3"):
        attention_ref(q, q, q, head_dim=3, scale=1.0)
    with pytest.raises(ValueError, match=r"mask \(2, 1, 1, 3\) does not broadcast"):
        attention_ref(q, q, q, np.zeros((2, 1, 1, 3), np.float32), head_dim=4, scale=1.0)


# --- numba kernels -------------------------------------------------------------------------------------

ATTENTION_SHAPES = [  # (B, Sq, Sk, H, D, Dv)
    (1, 1, 1, 1, 1, 1), (1, 16, 16, 12, 32, 32), (2, 7, 13, 3, 6, 6), (1, 130, 130, 2, 64, 64),
    (3, 5, 9, 4, 5, 3), (1, 33, 65, 12, 32, 32),
]


@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("mask_kind", MASK_SHAPES)
def test_numba_attention_matches_reference(shape, mask_kind, threads):
    from kernels.numba_cpu.fused import attention
    from kernels.reference.fused import attention_ref
    b, sq, sk, h, d, dv = shape
    q, k, v, mask = _attention_case("numba", *shape, mask_kind)
    want = attention_ref(q, k, v, mask, head_dim=d, scale=0.37)
    results = []
    for n in (1, 2):
        threads(n)
        results.append(attention(q, k, v, mask, d, 0.37))
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].shape == want.shape and results[0].dtype == np.float32
    assert _rel(results[0], want) < ATTENTION_RTOL


def test_numba_attention_masked_rows_and_other_dtypes():
    _numba_or_skip()
    run = registry.lookup("Attention", "dense", "numba")({"head_dim": 2, "scale": 1.0}, {})
    ref = registry.lookup("Attention", "dense", "reference")({"head_dim": 2, "scale": 1.0}, {})
    q, k, v, _ = _attention_case("masked", 1, 3, 4, 2, 2, 2, None)
    mask = np.full((1, 1, 3, 4), -3.4e38, np.float32)       # every position masked: equal weights
    np.testing.assert_allclose(run(q, k, v, mask)[0], ref(q, k, v, mask)[0], rtol=ATTENTION_RTOL, atol=1e-6)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    np.testing.assert_array_equal(run(q64, k64, v64)[0], ref(q64, k64, v64)[0])    # runs the reference


@pytest.mark.parametrize("rows, d", [(1, 1), (3, 7), (128, 384), (1000, 64)])
def test_numba_skip_layer_norm(rows, d, threads):
    rng = _rng("skipln", rows, d)
    x = rng.standard_normal((rows, d)).astype(np.float32) * 3 + 1
    skip = rng.standard_normal((rows, d)).astype(np.float32)
    g = rng.standard_normal(d).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    fused = registry.lookup("SkipLayerNormalization", "dense", "numba")({"epsilon": 1e-12}, {})
    want = registry.lookup("SkipLayerNormalization", "dense", "reference")({"epsilon": 1e-12}, {})(x, skip, g, b)[0]
    outs = []
    for n in (1, 2):
        threads(n)
        outs.append(fused(x, skip, g, b)[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], want, rtol=0, atol=SKIP_LN_ATOL * max(1.0, float(np.abs(want).max())))
    # broadcasting (a bias-like skip) falls back to the reference
    np.testing.assert_array_equal(fused(x, skip[:1], g, b)[0],
                                  registry.lookup("SkipLayerNormalization", "dense", "reference")(
                                      {"epsilon": 1e-12}, {})(x, skip[:1], g, b)[0])


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("m, k, n", [(1, 5, 7), (16, 64, 65), (33, 100, 200), (128, 384, 384)])
@pytest.mark.parametrize("use_vnni", [True, False])
def test_numba_int8_fused_activation_matches_reference(activation, m, k, n, use_vnni, threads):
    """The fused epilogue against the reference int8 Linear followed by the reference
    activation: the GEMM part is exact, so the only error is the numba activation formula's
    (ELEMENTWISE_RTOL / GELU_ATOL of tests/test_numba_ops.py; ReLU exact)."""
    from kernels.numba_cpu import int8, isa, vnni
    if use_vnni and not vnni.has_vnni():
        pytest.skip(f"the VNNI GEMM needs AVX-512 VNNI; numba compiles for {isa.describe()}")
    rng = _rng("int8-act", activation, m, k, n)
    t = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32))
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    plan = int8.Int8Plan("Linear", t, "dynamic", use_vnni=use_vnni)
    attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic", "activation": activation})
    want = registry.build("Linear", "int8", "reference", attrs, {1: t})(x, t, bias)[0]
    outs = []
    for nthreads in (1, 2):
        threads(nthreads)
        outs.append(int8.int8_linear(x, plan, bias, activation))
    np.testing.assert_array_equal(outs[0], outs[1])
    if activation == "relu":
        np.testing.assert_array_equal(outs[0], want)
    else:
        np.testing.assert_allclose(outs[0], want, rtol=GELU_RTOL, atol=GELU_ATOL)


def test_numba_int8_conv_fused_relu():
    _numba_or_skip()
    rng = _rng("conv-relu")
    t = pack_int8("w", rng.standard_normal((6, 2, 3, 3)).astype(np.float32))
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    attrs = registry.fill_attrs("Conv", {"act_quant": "dynamic", "group": 2, "pads": [1, 1, 1, 1]})
    fused = registry.build("Conv", "int8", "numba", {**attrs, "activation": "relu"}, {1: t})(x, t)[0]
    plain = registry.build("Conv", "int8", "numba", attrs, {1: t})(x, t)[0]
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))
    ref = registry.build("Conv", "int8", "reference", {**attrs, "activation": "relu"}, {1: t})(x, t)[0]
    np.testing.assert_array_equal(fused, ref)


def test_exp32_accuracy():
    _numba_or_skip()
    from numba import njit

    from kernels.numba_cpu.ops import _exp32

    @njit
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = _exp32(x[i])

    x = np.linspace(-87, 0, 200_001).astype(np.float32)
    out = np.empty_like(x)
    exp_all(x, out)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - want) / want) < 1.1e-7
    edge = np.array([-np.inf, -3.4e38, -88, np.nan, 0], np.float32)
    exp_all(edge, out[:5])
    np.testing.assert_array_equal(out[:5], [0, 0, 0, np.nan, 1])


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("act_quant", ["dynamic", "none"])
def test_sibling_linears_merge_exactly(backend, act_quant):
    """Three int8 Linears on one input (per-channel, per-tensor, asymmetric weights; one
    without bias) and a dense one: merged per layout, results identical to unmerged."""
    if backend == "numba":
        _numba_or_skip()
    rng = _rng("merge", act_quant)
    k = 20
    cfgs = [dict(per_channel=True), dict(per_channel=False), dict(per_channel=True, symmetric=False)]
    inits, nodes, outputs = {}, [], []
    for i, cfg in enumerate(cfgs + [None]):
        w = rng.standard_normal((7 + i, k)).astype(np.float32) + (0.5 if i == 2 else 0)
        inits[f"w{i}"] = dense_tensor(f"w{i}", w) if cfg is None else pack_int8(f"w{i}", w, **cfg)
        ins = ["x", f"w{i}"]
        if i != 1:
            inits[f"b{i}"] = dense_tensor(f"b{i}", rng.standard_normal(7 + i).astype(np.float32))
            ins.append(f"b{i}")
        attrs = {} if cfg is None else {"act_quant": act_quant}
        nodes.append(Node(f"fc{i}", "Linear", ins, [f"y{i}"], attrs))
        outputs.append(Value(f"y{i}", "float32", ("n", 7 + i)))
    g = Graph("t", [Value("x", "float32", ("n", k))], outputs, nodes, inits)
    g.validate()
    fused = fuse(g)
    assert [n.op for n in fused.nodes] == ["Linear", "Split", "Linear"]
    assert fused.initializers[fused.nodes[0].inputs[1]].shape == (7 + 8 + 9, k)
    x = rng.standard_normal((5, k)).astype(np.float32)
    want = runtime.InferenceSession(g, backend=backend, fuse=False).run(None, {"x": x})
    got = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})
    for a, b in zip(got, want):
        if act_quant == "dynamic" or backend == "reference":
            np.testing.assert_array_equal(a, b)
        else:      # weight-only float32 BLAS: a wider sgemm may block the sum differently
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m, k, n", [(4, 1, 16), (8, 0, 32), (4, 33, 80), (12, 128, 144)])
def test_f32_tile_gemm(m, k, n):
    """kernels/numba_cpu/f32_tile.py: C += A @ B on whole tiles (m % 4 == 0, n % 16 == 0),
    64- and 16-column tiles, K = 0 included; float32 FMAs, so within K float32 roundings."""
    _numba_or_skip()
    from kernels.numba_cpu.f32_tile import gemm_acc
    rng = _rng("tile", m, k, n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    want = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    gemm_acc(a, k, b, n, k, c, n, m, n)
    bound = (k + 1) * 2.0 ** -24 * (np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(want))
    assert np.all(np.abs(c - want) <= bound)


def _assert_merge_keeps_results(g, backend: str, quant: str, x: np.ndarray) -> None:
    """The fused (merged) graph gives the unfused one's outputs on x: the same bits for int8
    values or on the reference; float values within rounding (another row grouping may sum in
    another order)."""
    want = runtime.InferenceSession(g, backend=backend, fuse=False).run(None, {"x": x})
    got = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})
    for a, b in zip(got, want):
        if quant == "int8" or backend == "reference":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("quant", ["int8", "none"])
def test_sibling_csr_linears_merge_exactly(backend, quant):
    """Pruned Q/K/V-like Linears (csr, one row left empty, per-tensor and per-channel int8
    scales) merge into one csr Linear + Split with the results of the unmerged graph."""
    if backend == "numba":
        _numba_or_skip()
    from kernels.core.layouts import pack_csr
    rng = _rng("merge-csr", quant)
    k = 40
    inits, nodes, outputs = {}, [], []
    for i in range(3):
        w = rng.standard_normal((9 + i, k)).astype(np.float32)
        mask = rng.random(w.shape) < 0.2
        mask[0] = False                                    # an empty row
        inits[f"w{i}"] = pack_csr(f"w{i}", w, mask, quant=quant, per_channel=i != 1)
        inits[f"b{i}"] = dense_tensor(f"b{i}", rng.standard_normal(9 + i).astype(np.float32))
        attrs = {"act_quant": "dynamic"} if quant == "int8" else {}
        nodes.append(Node(f"fc{i}", "Linear", ["x", f"w{i}", f"b{i}"], [f"y{i}"], attrs))
        outputs.append(Value(f"y{i}", "float32", ("n", 9 + i)))
    g = Graph("t", [Value("x", "float32", ("n", k))], outputs, nodes, inits)
    g.validate()
    fused = fuse(g)
    assert [n.op for n in fused.nodes] == ["Linear", "Split"]
    merged = fused.initializers[fused.nodes[0].inputs[1]]
    assert merged.layout == "csr" and merged.shape == (30, k)
    _assert_merge_keeps_results(g, backend, quant, rng.standard_normal((6, k)).astype(np.float32))


@pytest.mark.parametrize("backend", ["reference", "numba", "native"])
@pytest.mark.parametrize("quant", ["int8", "none"])
def test_sibling_bsr_linears_merge_exactly(backend, quant):
    """Block-sparse Q/K/V-like Linears (4 x 4 blocks, a block row left empty, per-tensor and
    per-channel int8 scales) merge into one bsr Linear + Split with the unmerged graph's
    results; the merged weight keeps the block shape (native: the quad tiles)."""
    if backend == "numba":
        _numba_or_skip()
    if backend == "native" and registry.backend_status("native") is not None:
        pytest.skip(f"native: {registry.backend_status('native')}")
    from kernels.core.layouts import pack_bsr
    rng = _rng("merge-bsr", quant)
    k = 48
    inits, nodes, outputs = {}, [], []
    for i in range(3):
        w = rng.standard_normal((8 + 4 * i, k)).astype(np.float32)
        mask = np.kron(rng.random((w.shape[0] // 4, k // 4)) < 0.3, np.ones((4, 4), bool))
        mask[:4] = False                                   # an empty block row
        inits[f"w{i}"] = pack_bsr(f"w{i}", w, mask, block_shape=(4, 4), quant=quant, per_channel=i != 1)
        inits[f"b{i}"] = dense_tensor(f"b{i}", rng.standard_normal(8 + 4 * i).astype(np.float32))
        attrs = {"act_quant": "dynamic"} if quant == "int8" else {}
        nodes.append(Node(f"fc{i}", "Linear", ["x", f"w{i}", f"b{i}"], [f"y{i}"], attrs))
        outputs.append(Value(f"y{i}", "float32", ("n", 8 + 4 * i)))
    g = Graph("t", [Value("x", "float32", ("n", k))], outputs, nodes, inits)
    g.validate()
    fused = fuse(g)
    assert [n.op for n in fused.nodes] == ["Linear", "Split"]
    merged = fused.initializers[fused.nodes[0].inputs[1]]
    assert merged.layout == "bsr" and merged.shape == (36, k) and merged.params["block_shape"] == [4, 4]
    _assert_merge_keeps_results(g, backend, quant, rng.standard_normal((6, k)).astype(np.float32))


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_sibling_nm_linears_merge_exactly(backend):
    """2:4 int8 Linears (per-channel and per-tensor scales) merge with unchanged results."""
    if backend == "numba":
        _numba_or_skip()
    from runtime.convert.prune import nm_mask
    from kernels.core.layouts import pack_nm
    rng = _rng("merge-nm")
    k = 32
    inits, nodes, outputs = {}, [], []
    for i in range(3):
        w = rng.standard_normal((8 + i, k)).astype(np.float32)
        inits[f"w{i}"] = pack_nm(f"w{i}", w, nm_mask(w, 2, 4), quant="int8", per_channel=i != 1)
        nodes.append(Node(f"fc{i}", "Linear", ["x", f"w{i}"], [f"y{i}"], {"act_quant": "dynamic"}))
        outputs.append(Value(f"y{i}", "float32", ("n", 8 + i)))
    g = Graph("t", [Value("x", "float32", ("n", k))], outputs, nodes, inits)
    g.validate()
    fused = fuse(g)
    assert [n.op for n in fused.nodes] == ["Linear", "Split"]
    assert fused.initializers[fused.nodes[0].inputs[1]].layout == "nm"
    x = rng.standard_normal((5, k)).astype(np.float32)
    want = runtime.InferenceSession(g, backend=backend, fuse=False).run(None, {"x": x})
    got = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_split_views_match_the_reference(axis):
    from kernels.split_views import split_views_factory
    x = np.arange(2 * 6 * 9, dtype=np.float32).reshape(2, 6, 9)
    sizes = {-1: [4, 0, 5], 0: [1, 1], 1: [2, 4]}[axis]
    attrs = {"axis": axis, "split": sizes, "num_outputs": None}
    got = split_views_factory(attrs, {})(x)
    want = registry.lookup("Split", "dense", "reference")(attrs, {})(x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert np.shares_memory(g, x) or g.size == 0           # views, not copies
    with pytest.raises(ValueError, match="do not add up"):
        split_views_factory({"axis": axis, "split": [1, 1, 1, 1], "num_outputs": None}, {})(x)
