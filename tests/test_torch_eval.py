"""runtime/convert/torch_eval.py against the numpy reference kernels: op by op (awkward
attributes included) and whole imported models (digits MLP and CNN, small transformers)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kernels import registry  # noqa: E402
from runtime.convert.torch_eval import OPS, TorchGraph, as_tensor  # noqa: E402
from runtime.graph import Graph, Node, Value  # noqa: E402
from kernels.core.layouts import dense_tensor, pack_int8  # noqa: E402
from runtime.onnx_import import import_onnx  # noqa: E402
from runtime.session import InferenceSession  # noqa: E402

# The reference computes in float64 and rounds once; torch computes in float32 and rounds
# after every op. One op differs by a few float32 ulps (~1e-7 relative); a model of a few
# dozen ops accumulates ~1e-6. Errors are measured relative to the largest |reference| value.
OP_RTOL = 2e-6
MODEL_RTOL = 1e-5


def _close(got, want, rtol: float) -> None:
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind != "f":
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want)
        return
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    scale = max(float(np.nanmax(np.abs(want))) if want.size else 0.0, 1e-30)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    err = float(np.max(np.abs(got[finite] - want[finite]))) / scale if finite.any() else 0.0
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def _reference(op, attrs, inputs):
    run = registry.lookup(op, "dense", "reference")(registry.fill_attrs(op, attrs), {})
    return run(*inputs)


rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i64(*v):
    return np.array(v, dtype=np.int64)


# (op, attrs, inputs): the reference's awkward cases, one row each
CASES = [
    ("Add", {}, [f32(2, 3, 4), f32(4)]),
    ("Sub", {}, [f32(3, 1), f32(1, 5)]),
    ("Mul", {}, [f32(2, 3), np.float32(0.125).reshape(())]),
    ("Div", {}, [f32(4, 5), f32(5) + 3]),
    ("Div", {}, [i64(-7, 7, -7, 7, 5), i64(2, -2, -2, 2, 0)]),
    ("Mod", {}, [i64(-7, 7, -7, 7), i64(2, -2, 3, 0)]),
    ("Mod", {"fmod": 1}, [f32(6) * 5, np.full(6, 1.5, np.float32)]),
    ("Pow", {}, [np.abs(f32(3, 4)) + 0.1, np.float32(1.5).reshape(())]),
    ("Pow", {}, [i64(2, 3, -2, 2), i64(3, 0, 3, -1)]),
    ("Equal", {}, [i64(1, 2, 3), i64(1, 0, 3)]),
    ("Greater", {}, [f32(5), f32(5)]),
    ("GreaterOrEqual", {}, [i64(1, 2, 3), i64(2)]),
    ("Less", {}, [f32(5), f32(5)]),
    ("LessOrEqual", {}, [f32(5), f32(5)]),
    ("And", {}, [np.array([True, False, True]), np.array([True, True, False])]),
    ("Or", {}, [np.array([True, False, False]), np.array([True, True, False])]),
    ("Xor", {}, [np.array([True, False, False]), np.array([True, True, False])]),
    ("Not", {}, [np.array([True, False])]),
    ("Max", {}, [f32(3, 4), f32(4), f32(3, 1)]),
    ("Min", {}, [f32(3, 4), f32(4)]),
    ("Sum", {}, [f32(3, 4), f32(4), f32(1)]),
    ("Sqrt", {}, [np.abs(f32(7))]),
    ("Neg", {}, [f32(7)]),
    ("Abs", {}, [f32(7)]),
    ("Exp", {}, [f32(7)]),
    ("Log", {}, [np.abs(f32(7)) + 0.01]),
    ("Erf", {}, [f32(50)]),
    ("Relu", {}, [f32(50)]),
    ("Relu", {}, [i64(-3, 0, 4)]),
    ("Sigmoid", {}, [f32(50) * 10]),
    ("Tanh", {}, [f32(50)]),
    ("Reciprocal", {}, [f32(9) + 5]),
    ("Floor", {}, [f32(9) * 3]),
    ("Ceil", {}, [f32(9) * 3]),
    ("Identity", {}, [f32(2, 2)]),
    ("Gelu", {}, [f32(64) * 3]),
    ("Gelu", {"approximate": "tanh"}, [f32(64) * 3]),
    ("LeakyRelu", {"alpha": 0.2}, [f32(20)]),
    ("IsNaN", {}, [np.array([1.0, np.nan, -np.inf], np.float32)]),
    ("Sign", {}, [f32(9)]),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [f32(20) * 3]),
    ("HardSwish", {}, [f32(20) * 3]),
    ("CumSum", {}, [f32(3, 4), np.int64(1).reshape(())]),
    ("CumSum", {"exclusive": 1, "reverse": 1}, [f32(3, 4), np.int64(-1).reshape(())]),
    ("Clip", {}, [f32(20), np.float32(-0.5).reshape(()), np.float32(0.5).reshape(())]),
    ("Clip", {}, [f32(20), np.float32(0.5).reshape(()), np.float32(-0.5).reshape(())]),   # lo > hi
    ("Cast", {"to": "int64"}, [f32(20) * 4]),
    ("Cast", {"to": "bool"}, [np.array([0.0, -0.0, 2.0, np.nan], np.float32)]),
    ("Cast", {"to": "float32"}, [i64(3, -4)]),
    ("Where", {}, [np.array([[True], [False]]), f32(2, 3), np.float32(-3.4e38).reshape(())]),
    ("ReduceMean", {"axes": [1], "keepdims": 1}, [f32(3, 5, 2)]),
    ("ReduceMean", {"axes": [-1], "keepdims": 0}, [i64(-7, 2, 1).reshape(1, 3)]),
    ("ReduceSum", {"axes": None}, [f32(3, 4)]),
    ("ReduceSum", {"axes": [], "noop_with_empty_axes": 1}, [f32(3, 4)]),
    ("ReduceMax", {"axes": [0, 2], "keepdims": 0}, [f32(3, 4, 2)]),
    ("ReduceMin", {"axes": [1]}, [f32(3, 4)]),
    ("Softmax", {"axis": 1}, [f32(2, 7, 3) * 5]),
    ("LayerNormalization", {"axis": -1, "epsilon": 1e-5}, [f32(2, 5, 16), f32(16), f32(16)]),
    ("LayerNormalization", {"axis": 1, "epsilon": 1e-3}, [f32(2, 3, 4), f32(3, 4), None]),
    ("SkipLayerNormalization", {"epsilon": 1e-5}, [f32(2, 3, 8), f32(2, 3, 8), f32(8), f32(8)]),
    ("BatchNormalization", {}, [f32(2, 3, 4, 4), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.5]),
    ("MatMul", {}, [f32(2, 1, 3, 5), f32(4, 5, 6)]),
    ("MatMul", {}, [f32(5), f32(5, 3)]),
    ("Linear", {}, [f32(2, 3, 7), f32(5, 7), f32(5)]),
    ("Linear", {}, [f32(1, 7), f32(5, 7)]),
    ("Gemm", {"alpha": 0.5, "beta": 2.0, "transA": 1, "transB": 1}, [f32(4, 3), f32(5, 4), f32(5)]),
    ("Attention", {"head_dim": 4, "scale": 0.5}, [f32(2, 3, 8), f32(2, 5, 8), f32(2, 5, 8), f32(2, 1, 1, 5)]),
    ("DisentangledAttention", {"head_dim": 4, "scale": 0.5},
     [f32(2, 5, 8), f32(2, 5, 8), f32(2, 5, 8), f32(2, 1, 1, 5), f32(2, 7, 4),
      np.clip(np.arange(5)[:, None] - np.arange(5)[None, :] + 3, 0, 6)[None], f32(2, 7, 4),
      np.clip(np.arange(5)[None, :] - np.arange(5)[:, None] + 3, 0, 6)]),
    ("Conv", {"pads": [1, 1, 1, 1]}, [f32(2, 3, 6, 6), f32(4, 3, 3, 3), f32(4)]),
    ("Conv", {"strides": [2, 1], "pads": [0, 2, 1, 0], "dilations": [1, 2], "group": 2},
     [f32(1, 4, 7, 9), f32(6, 2, 3, 2), None]),
    ("Conv", {"pads": [2, 0], "strides": [3]}, [f32(2, 3, 11), f32(5, 3, 4), f32(5)]),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [f32(2, 3, 8, 8)]),
    ("MaxPool", {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1},
     [f32(1, 2, 7, 6)]),
    ("MaxPool", {"kernel_shape": [2], "dilations": [2]}, [f32(1, 2, 9)]),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [f32(1, 2, 6, 6)]),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1,
                     "ceil_mode": 1}, [f32(1, 2, 6, 6)]),
    ("GlobalAveragePool", {}, [f32(2, 3, 4, 5)]),
    ("Flatten", {"axis": 2}, [f32(2, 3, 4, 5)]),
    ("Flatten", {"axis": 0}, [f32(2, 3)]),
    ("Shape", {"start": 1, "end": -1}, [f32(2, 3, 4, 5)]),
    ("Reshape", {}, [f32(2, 3, 4), i64(0, -1, 2)]),
    ("Transpose", {"perm": [0, 2, 3, 1]}, [f32(2, 3, 4, 5)]),
    ("Transpose", {}, [f32(2, 3, 4)]),
    ("Unsqueeze", {"axes": [0, -1]}, [f32(3, 4)]),
    ("Squeeze", {"axes": [1]}, [f32(3, 1, 4, 1)]),
    ("Squeeze", {}, [f32(3, 1, 4, 1)]),
    ("Slice", {}, [f32(6, 7), i64(1, -2), i64(100, -9 ** 18), i64(0, 1), i64(2, -2)]),
    ("Slice", {}, [f32(6, 7), i64(-1), i64(-100), i64(0), i64(-3)]),
    ("Slice", {}, [f32(6, 7), i64(6), i64(1), i64(1), i64(-2)]),
    ("Slice", {}, [f32(6, 7), i64(2), i64(2), None, None]),
    ("Concat", {"axis": -1}, [f32(2, 3), f32(2, 0), f32(2, 4)]),
    ("Split", {"axis": 1, "num_outputs": 3}, [f32(2, 7)]),
    ("Split", {"axis": 0, "split": [1, 3]}, [f32(4, 2)]),
    ("Expand", {}, [f32(3, 1), i64(2, 1, 4)]),
    ("Tile", {}, [f32(2, 3), i64(2, 1)]),
    ("Range", {}, [np.int64(2).reshape(()), np.int64(-7).reshape(()), np.int64(-3).reshape(())]),
    ("Range", {}, [np.float32(0.5).reshape(()), np.float32(3.1).reshape(()), np.float32(0.7).reshape(())]),
    ("ConstantOfShape", {"value": 2.5, "dtype": "float32"}, [i64(2, 3)]),
    ("ConstantOfShape", {"value": 1, "dtype": "int64"}, [np.zeros(0, np.int64)]),
    ("Gather", {"axis": 0}, [f32(10, 4), i64(1, -1, 3, 3).reshape(2, 2)]),
    ("Gather", {"axis": 0}, [i64(5, 7, 9), np.int64(-1).reshape(())]),
    ("Gather", {"axis": 1}, [f32(3, 5, 2), i64(4, 0)]),
    ("GatherElements", {"axis": 1}, [f32(3, 4), i64(0, -1, 2, 1, 1, 0).reshape(3, 2)]),
    ("GatherND", {"batch_dims": 1}, [f32(2, 3, 4), i64(0, 2, 1, -1).reshape(2, 2, 1)]),
]


@pytest.mark.parametrize("op,attrs,inputs", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_op_matches_reference(op, attrs, inputs):
    want = _reference(op, attrs, inputs)
    got = OPS[op](registry.fill_attrs(op, attrs), *[None if x is None else as_tensor(x) for x in inputs])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _close(g, w, OP_RTOL)


def test_every_vocabulary_op_has_an_entry_and_a_case():
    from kernels.core.ops import OPS as VOCABULARY
    assert set(OPS) == set(VOCABULARY)
    assert set(VOCABULARY) <= {c[0] for c in CASES}


def _check_graph(graph: Graph, feeds: list[dict], rtol: float = MODEL_RTOL) -> None:
    sess = InferenceSession(graph, backend="reference")
    tg = TorchGraph(graph)
    for feed in feeds:
        want = sess.run(None, feed)
        with torch.no_grad():
            got = tg(feed)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _close(g, w, rtol)


def test_digits_mlp_matches_reference():
    from tests.digits import mlp_onnx
    data, x_tr, x_te, _ = mlp_onnx()
    _check_graph(import_onnx(data), [{"pixels": x_te[:1]}, {"pixels": x_te[:97]}])


def test_digits_cnn_matches_reference():
    from tests.digits import cnn_onnx
    data, x_tr, x_te, _ = cnn_onnx(epochs=2)
    g = import_onnx(data)
    assert {"Conv", "MaxPool", "Flatten", "Linear"} <= {n.op for n in g.nodes}
    _check_graph(g, [{"image": x_te[:1]}, {"image": x_te[:33]}])


class _TinyEncoder(torch.nn.Module):
    """Embedding + one pre-softmax-masked self-attention block + GELU FFN + LayerNorms +
    tanh pooler: the op mix of a BERT-like encoder, written out so no download is needed."""

    def __init__(self, vocab=50, d=32, heads=4, ffn=64):
        super().__init__()
        self.heads, self.d = heads, d
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Embedding(64, d)
        self.ln0 = torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.ln1 = torch.nn.LayerNorm(d)
        self.ff1, self.ff2 = torch.nn.Linear(d, ffn), torch.nn.Linear(ffn, d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.pool = torch.nn.Linear(d, d)

    def forward(self, ids, mask):
        b, s = ids.shape
        x = self.ln0(self.emb(ids) + self.pos(torch.arange(s).unsqueeze(0)))
        q, k, v = self.qkv(x).split(self.d, dim=-1)

        def heads(t):
            return t.reshape(b, s, self.heads, -1).transpose(1, 2)
        scores = heads(q) @ heads(k).transpose(-1, -2) / (self.d // self.heads) ** 0.5
        scores = scores + (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        ctx = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(b, s, self.d)
        x = self.ln1(x + self.proj(ctx))
        x = self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))
        return x, torch.tanh(self.pool(x[:, 0]))


def _token_feeds(vocab: int, shapes, seed: int = 0) -> list[dict]:
    from tests.model_zoo import bert_feeds
    return [bert_feeds(b, s, vocab=vocab, seed=seed + k) for k, (b, s) in enumerate(shapes)]


def test_small_transformer_matches_reference():
    from tests.model_zoo import export, randomize_
    torch.manual_seed(0)
    model = _TinyEncoder()
    randomize_(model, seed=2, scale=0.2)
    ids = torch.zeros(2, 8, dtype=torch.int64)
    data = export(model, (ids, torch.ones(2, 8, dtype=torch.int64)), input_names=["ids", "mask"],
                  output_names=["hidden", "pooled"],
                  dynamic_axes={"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}})
    g = import_onnx(data)
    assert {"LayerNormalization", "Gelu", "Softmax", "MatMul", "Gather"} <= {n.op for n in g.nodes}
    feeds = [{"ids": f["input_ids"], "mask": f["attention_mask"]} for f in _token_feeds(50, [(1, 5), (3, 11)])]
    _check_graph(g, feeds)


def test_bert_with_attention_mask_matches_reference():
    """transformers' BERT (eager attention), as MiniLM is exported: its mask path brings in
    Range, And, Where, Expand, Cast and the Shape-folded constants."""
    pytest.importorskip("transformers")
    from tests.model_zoo import bert, export
    model = bert()
    ex = _token_feeds(100, [(2, 8)])[0]
    data = export(model, (torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"])),
                  input_names=["input_ids", "attention_mask"], output_names=["hidden", "pooled"],
                  dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    g = import_onnx(data)
    _check_graph(g, _token_feeds(100, [(1, 4), (3, 13)], seed=5))


# ------------------------------------------------------------------- TorchGraph API ---

def _mlp_graph() -> Graph:
    r = np.random.default_rng(1)
    inits = {"w0": dense_tensor("w0", r.standard_normal((8, 4)).astype(np.float32)),
             "b0": dense_tensor("b0", r.standard_normal(8).astype(np.float32)),
             "w1": dense_tensor("w1", r.standard_normal((3, 8)).astype(np.float32))}
    nodes = [Node("l0", "Linear", ["x", "w0", "b0"], ["z0"]), Node("r0", "Relu", ["z0"], ["h0"]),
             Node("l1", "Linear", ["h0", "w1"], ["y"])]
    g = Graph("mlp", [Value("x", "float32", ("batch", 4))], [Value("y", "float32", ("batch", 3))], nodes, inits)
    g.validate()
    return g


def test_trainable_parameters_get_gradients_and_intermediates_are_returned():
    g = _mlp_graph()
    tg = TorchGraph(g, {"w0", "w1"})
    assert set(tg.params) == {"w0", "w1"} and "b0" in tg.constants
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    outs, vals = tg({"x": x}, keep=["z0", "h0"])
    assert set(vals) == {"z0", "h0"} and tuple(vals["z0"].shape) == (5, 8)
    outs[0].sum().backward()
    assert tg.params["w0"].grad is not None and float(tg.params["w0"].grad.abs().sum()) > 0
    # the parameters are copies: training them never writes the graph's arrays
    with torch.no_grad():
        tg.params["w0"].add_(1.0)
    assert not np.allclose(tg.weights()["w0"], g.initializers["w0"].fields["data"])


def test_unknown_op_raises_not_implemented_naming_it(monkeypatch):
    monkeypatch.delitem(OPS, "Relu")
    with pytest.raises(NotImplementedError, match="Relu"):
        TorchGraph(_mlp_graph())


def test_packed_weights_are_refused():
    g = _mlp_graph()
    w = np.asarray(g.initializers["w0"].fields["data"])
    g.initializers["w0"] = pack_int8("w0", w)
    with pytest.raises(ValueError, match="w0.*int8"):
        TorchGraph(g)


def test_bad_keep_and_missing_feed_are_errors():
    tg = TorchGraph(_mlp_graph())
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="nope"):
        tg({"x": x}, keep=["nope"])
    with pytest.raises(ValueError, match="'x'"):
        tg({})


def test_missing_torch_says_how_to_install(monkeypatch):
    import sys
    from runtime.convert.torch_eval import import_torch
    monkeypatch.setitem(sys.modules, "torch", None)      # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch: pip install torch==2\.13\.0"):
        import_torch()
