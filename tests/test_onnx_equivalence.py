"""ONNX import + reference session vs onnxruntime on the same ONNX bytes.

Models: an MLP, a small CNN (BatchNorm folded into Conv), and a 2-layer BERT encoder from
transformers (random weights) exported by both torch exporters and at an opset where
LayerNorm is decomposed, run at several batch sizes and sequence lengths with attention
masks that mask real positions.
"""
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import runtime
from runtime.convert import from_onnx
from tests import model_zoo

# fp32 equivalence: ||qrt - ort|| / ||ort|| per output. 1e-4 leaves room for the different
# summation orders of numpy's BLAS and MLAS (~1e-6 relative per GEMM, compounding over
# layers and through softmax/LayerNorm), and is far below any real bug (a dropped bias or
# a wrong mask gives errors of order 1e-2 or more).
FP32_REL_TOL = 1e-4


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    want = want.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - want) / max(np.linalg.norm(want), 1e-30))


def compare(onnx_bytes: bytes, feeds_list, *, roundtrip_dir=None) -> float:
    graph = from_onnx(onnx_bytes)
    if roundtrip_dir is not None:  # through the file, as users run it
        path = roundtrip_dir / "model.qrt"
        runtime.save(graph, path)
        sess = runtime.InferenceSession(path, backend="reference")
    else:
        sess = runtime.InferenceSession(graph, backend="reference")
    ref = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for feeds in feeds_list:
        want = ref.run(None, feeds)
        got = sess.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            worst = max(worst, rel_err(g, w))
    assert worst <= FP32_REL_TOL, worst
    return worst


def test_mlp_matches_onnxruntime(tmp_path):
    m = model_zoo.mlp()
    data = model_zoo.export(m, (torch.randn(3, 20),), input_names=["x"], output_names=["y"],
                            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    rng = np.random.default_rng(0)
    compare(data, [{"x": rng.standard_normal((b, 20), dtype=np.float32)} for b in (1, 3, 17)],
            roundtrip_dir=tmp_path)
    ops = {n.op for n in from_onnx(data).nodes}
    assert "Linear" in ops and "Gelu" in ops and "MatMul" not in ops and "Erf" not in ops


def test_cnn_matches_onnxruntime(tmp_path):
    m = model_zoo.cnn()
    data = model_zoo.export(m, (torch.randn(2, 3, 15, 17),), input_names=["image"], output_names=["logits"],
                            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    rng = np.random.default_rng(1)
    compare(data, [{"image": rng.standard_normal((b, 3, 15, 17), dtype=np.float32)} for b in (1, 4)],
            roundtrip_dir=tmp_path)
    ops = [n.op for n in from_onnx(data).nodes]
    assert "BatchNormalization" not in ops, "BatchNorm should be folded into the Conv before it"


BERT_SHAPES = [(1, 1), (1, 16), (2, 7), (3, 32)]


@pytest.fixture(scope="module")
def bert_model():
    return model_zoo.bert()


@pytest.fixture(scope="module")
def bert_default_attention():
    """transformers' default attention (sdpa): its export zeroes NaN softmax rows with IsNaN +
    Where, which qrt imports (unfused: the session's Attention fusion matches the eager form)."""
    m = model_zoo.bert(attn_implementation=None)
    assert m.m.config._attn_implementation == "sdpa"
    return m


def _bert_bytes(model, **kw):
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    return model_zoo.export(model, (ids, mask), input_names=["input_ids", "attention_mask"],
                            output_names=["last_hidden_state", "pooler_output"],
                            dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                          "attention_mask": {0: "batch", 1: "seq"}}, **kw)


@pytest.mark.parametrize("exporter", ["torchscript-opset17", "torchscript-opset14", "dynamo-opset18"])
def test_bert_matches_onnxruntime(bert_model, exporter, tmp_path):
    kw = {"torchscript-opset17": dict(opset=17), "torchscript-opset14": dict(opset=14),
          "dynamo-opset18": dict(opset=18, dynamo=True)}[exporter]
    if kw.get("dynamo"):
        pytest.importorskip("onnxscript")
    data = _bert_bytes(bert_model, **kw)
    feeds = [model_zoo.bert_feeds(b, s, seed=b * 100 + s) for b, s in BERT_SHAPES]
    err = compare(data, feeds, roundtrip_dir=tmp_path)
    print(f"BERT {exporter}: worst relative error vs onnxruntime {err:.2e}")
    graph = from_onnx(data)
    ops = [n.op for n in graph.nodes]
    assert ops.count("LayerNormalization") == 5, "decomposed LayerNorms should be fused"
    assert ops.count("Linear") == 2 * 6 + 1 and "Erf" not in ops


@pytest.mark.parametrize("exporter", ["torchscript-opset17", "dynamo-opset18"])
def test_bert_default_attention_matches_onnxruntime(bert_default_attention, exporter, tmp_path):
    kw = {"torchscript-opset17": dict(opset=17), "dynamo-opset18": dict(opset=18, dynamo=True)}[exporter]
    if kw.get("dynamo"):
        pytest.importorskip("onnxscript")
    data = _bert_bytes(bert_default_attention, **kw)
    feeds = [model_zoo.bert_feeds(b, s, seed=b * 100 + s) for b, s in BERT_SHAPES]
    err = compare(data, feeds, roundtrip_dir=tmp_path)
    print(f"BERT sdpa {exporter}: worst relative error vs onnxruntime {err:.2e}")
    ops = [n.op for n in from_onnx(data).nodes]
    assert "IsNaN" in ops or exporter != "torchscript-opset17"
    assert ops.count("Linear") == 2 * 6 + 1


def test_bert_mask_changes_output(bert_model):
    """The mask must matter: masking a real token changes the unmasked positions' output."""
    graph = from_onnx(_bert_bytes(bert_model))
    sess = runtime.InferenceSession(graph)
    feeds = model_zoo.bert_feeds(1, 10, seed=5)
    feeds["attention_mask"][:] = 1
    full = sess.run(["last_hidden_state"], feeds)[0]
    feeds["attention_mask"][0, 7:] = 0
    masked = sess.run(["last_hidden_state"], feeds)[0]
    assert rel_err(masked[0, :7], full[0, :7]) > 1e-3


def test_from_torch_matches_torch():
    m = model_zoo.mlp()
    x = torch.randn(5, 20)
    graph = runtime.convert.from_torch(m, (x,), input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    sess = runtime.InferenceSession(graph)
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    assert rel_err(got, want) <= FP32_REL_TOL
    assert sess.get_inputs()[0].shape == ["batch", 20]


@pytest.mark.parametrize("dynamo", [False, True])
def test_from_torch_names_inputs_and_outputs_readably(dynamo, capfd):
    """Without input_names / output_names: the forward's parameter names, and output /
    output_i, not the TorchScript exporter's 'onnx::Gemm_0' and '18' (issue 17); the
    exporter's chatter (warnings, progress lines) stays out of the output."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, tokens, scale):
            h = self.fc(tokens)
            return h * scale, torch.relu(h)
    m = Two()
    x, s = torch.randn(3, 8), torch.randn(3, 4)
    capfd.readouterr()
    graph = runtime.convert.from_torch(m, (x, s), dynamo=dynamo)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [v.name for v in graph.inputs] == ["tokens", "scale"]
    if not dynamo:        # the dynamo exporter names outputs itself (after the op that made them)
        assert [v.name for v in graph.outputs] == ["output_0", "output_1"]
    got = runtime.InferenceSession(graph).run(None, {"tokens": x.numpy(), "scale": s.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in m(x, s)]
    for g, w in zip(got, want):
        assert rel_err(g, w) <= FP32_REL_TOL
    one = runtime.convert.from_torch(torch.nn.Linear(8, 2), (x,))
    assert [v.name for v in one.outputs] == ["output"] and [v.name for v in one.inputs] == ["input"]


def test_ops_of_common_exports_match_onnxruntime(tmp_path):
    """The ops transformers' and torchvision's default exports add beyond BERT's eager form:
    IsNaN (sdpa attention), CumSum (RoBERTa / XLM-R position ids), Sign (DeBERTa),
    HardSigmoid / HardSwish (MobileNetV3), each against onnxruntime on the same file."""
    from onnx import TensorProto, helper, numpy_helper
    f, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    nodes = [helper.make_node("IsNaN", ["x"], ["nan"]),
             helper.make_node("Sign", ["x"], ["sign"]),
             helper.make_node("HardSigmoid", ["x"], ["hsig"], alpha=0.3, beta=0.4),
             helper.make_node("HardSwish", ["x"], ["hswish"]),
             helper.make_node("CumSum", ["x", "axis"], ["csum"]),
             helper.make_node("CumSum", ["x", "axis"], ["csum_ex_rev"], exclusive=1, reverse=1),
             helper.make_node("CumSum", ["ids", "axis"], ["pos"])]
    data = model_zoo.onnx_model(
        nodes, [helper.make_tensor_value_info("x", f, ["b", 6]), helper.make_tensor_value_info("ids", i64, ["b", 6])],
        [helper.make_tensor_value_info(n, t, ["b", 6]) for n, t in
         (("nan", b), ("sign", f), ("hsig", f), ("hswish", f), ("csum", f), ("csum_ex_rev", f), ("pos", i64))],
        [numpy_helper.from_array(np.array(1, np.int64), "axis")], opset=14)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 6)) * 4).astype(np.float32)
    x[0, 1], x[1, 2], x[2, 3] = np.nan, 0.0, -3.0          # NaN, a zero, HardSwish's knee
    ids = (rng.random((3, 6)) < 0.7).astype(np.int64)
    assert compare(data, [{"x": x, "ids": ids}], roundtrip_dir=tmp_path) <= FP32_REL_TOL
