"""ONNX importer: opset and op checks, constant and shape folding, fusions.

Each fusion test builds the exporter's op-by-op form with onnx.helper, checks the fused op
is what the IR holds, and checks the result against onnxruntime on the same model.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

import runtime
from runtime.convert import from_onnx
from runtime.errors import UnsupportedModelError
from tests import model_zoo

ort = pytest.importorskip("onnxruntime")

FP32_REL_TOL = 1e-4  # same bound as the model equivalence tests (see there for why)

rng = np.random.default_rng(0)


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    return model_zoo.onnx_model(nodes, inputs, outputs, inits, opset)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def check_against_ort(data: bytes, feeds: dict) -> runtime.graph.Graph:
    graph = from_onnx(data)
    got = runtime.InferenceSession(graph).run(None, feeds)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.linalg.norm(g - w) <= FP32_REL_TOL * max(np.linalg.norm(w), 1e-30)
    return graph


def test_unsupported_ops_are_all_listed():
    nodes = [helper.make_node("Det", ["x"], ["d"], name="det_a"),
             helper.make_node("Det", ["x"], ["d2"], name="det_b"),
             helper.make_node("Hardmax", ["x"], ["h"], name="hard_1"),
             helper.make_node("Relu", ["x"], ["y"], name="ok")]
    data = make_model(nodes, [f32("x", [3, 3])], [f32("y", [3, 3]), f32("d", []), f32("d2", []), f32("h", [3, 3])])
    with pytest.raises(UnsupportedModelError) as e:
        from_onnx(data)
    msg = str(e.value)
    assert "2 unsupported op type(s)" in msg
    assert "Det: det_a, det_b" in msg and "Hardmax: hard_1" in msg and "Relu" not in msg


@pytest.mark.parametrize("opset", [12, 29])
def test_opset_outside_supported_range_is_refused(opset):
    data = make_model([helper.make_node("Relu", ["x"], ["y"])], [f32("x", [2])], [f32("y", [2])], opset=opset) \
        if opset <= 28 else _raw_model_with_opset(opset)
    with pytest.raises(UnsupportedModelError, match=f"opset {opset}; qrt imports opsets 13 to 28"):
        from_onnx(data)


def _raw_model_with_opset(opset):
    """A model claiming an opset newer than the onnx package's checker knows."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t", [f32("x", [2])], [f32("y", [2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def test_opset_23_model_with_conv_pool_and_reshape_matches_onnxruntime():
    """Ops whose schema changed after opset 21 (types only: bfloat16, float4/8, int2)."""
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("HardSwish", ["p"], ["h"]),
             helper.make_node("Flatten", ["h"], ["y"], axis=1)]
    data = make_model(nodes, [f32("x", [1, 2, 6, 6])], [f32("y", [1, 36])],
                      [numpy_helper.from_array(w, "w")], opset=23)
    check_against_ort(data, {"x": rng.standard_normal((1, 2, 6, 6), dtype=np.float32)})


def test_onnx_attention_is_not_taken_for_qrts_fused_attention():
    """Opset 23's Attention has other inputs and attributes than qrt's fused op of that name:
    refused by name, with what it is, never imported as qrt's."""
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2)]
    data = make_model(nodes, [f32("q", [1, 4, 8]), f32("k", [1, 4, 8]), f32("v", [1, 4, 8])], [f32("y", [1, 4, 8])],
                      opset=23)
    with pytest.raises(UnsupportedModelError, match="Attention \\(the ONNX op, not qrt's fused Attention"):
        from_onnx(data)


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "DisentangledAttention"])
def test_a_node_named_like_a_fused_op_is_refused(op):
    # qrt's fused ops exist only in sessions (runtime/fuse.py): a model's node of that name is
    # someone else's op, refused by name
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [f32("x", [2])], [f32("y", [2])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()  # unchecked
    with pytest.raises(UnsupportedModelError, match=f"{op} \\(the ONNX op, not qrt's fused"):
        from_onnx(data)


@pytest.mark.parametrize("opset", [13, 21, 28])
def test_opset_bounds_are_accepted(opset):
    data = make_model([helper.make_node("Relu", ["x"], ["y"])], [f32("x", [2])], [f32("y", [2])], opset=opset)
    check_against_ort(data, {"x": rng.standard_normal(2, dtype=np.float32)})


@pytest.mark.parametrize("trans_b,alpha,beta", [(1, 1.0, 1.0), (0, 0.5, 2.0)])
def test_gemm_with_constant_weight_becomes_linear(trans_b, alpha, beta):
    w = rng.standard_normal((6, 5) if trans_b else (5, 6), dtype=np.float32)
    c = rng.standard_normal(6, dtype=np.float32)
    data = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b, alpha=alpha, beta=beta)],
                      [f32("x", ["batch", 5])], [f32("y", ["batch", 6])], [const("w", w), const("c", c)])
    graph = check_against_ort(data, {"x": rng.standard_normal((3, 5), dtype=np.float32)})
    (node,) = graph.nodes
    assert node.op == "Linear" and graph.initializers[node.inputs[1]].shape == (6, 5)


def test_matmul_add_becomes_linear_with_bias_either_side():
    w = rng.standard_normal((5, 6), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])]
    data = make_model(nodes, [f32("x", ["batch", "seq", 5])], [f32("y", ["batch", "seq", 6])],
                      [const("w", w), const("b", b)])
    graph = check_against_ort(data, {"x": rng.standard_normal((2, 3, 5), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Linear"] and len(graph.nodes[0].inputs) == 3


# the three ways exporters associate 0.5 * x * (1 + erf(x / sqrt(2)))
GELU_FORMS = {
    "x*(1+erf)*0.5": [("Mul", ["x", "e1"], "m"), ("Mul", ["m", "half"], "y")],
    "x*((1+erf)*0.5)": [("Mul", ["e1", "half"], "m"), ("Mul", ["x", "m"], "y")],
    "(x*0.5)*(1+erf)": [("Mul", ["x", "half"], "m"), ("Mul", ["m", "e1"], "y")],
}


@pytest.mark.parametrize("form", sorted(GELU_FORMS))
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_erf_gelu_is_fused(form, scale_op):
    c = np.float32(np.sqrt(2.0) if scale_op == "Div" else 1 / np.sqrt(2.0))
    nodes = [helper.make_node(scale_op, ["x", "c"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"])]
    nodes += [helper.make_node(op, ins, [out]) for op, ins, out in GELU_FORMS[form]]
    data = make_model(nodes, [f32("x", ["n", 7])], [f32("y", ["n", 7])],
                      [const("c", c), const("one", np.float32(1)), const("half", np.float32(0.5))])
    graph = check_against_ort(data, {"x": 3 * rng.standard_normal((4, 7), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Gelu"]


@pytest.mark.parametrize("form", sorted(GELU_FORMS))
@pytest.mark.parametrize("swapped", [False, True])
def test_tanh_gelu_is_fused(form, swapped):
    # GPT-2's gelu_new as TorchScript exports it: tanh(sqrt(2/pi) * (x + 0.044715 * x^3)),
    # with the constants on either side of their Muls / Adds
    def mul(a, b, out):
        return helper.make_node("Mul", [b, a] if swapped else [a, b], [out])
    nodes = [helper.make_node("Pow", ["x", "three"], ["p"]), mul("p", "k", "pk"),
             helper.make_node("Add", ["pk", "x"] if swapped else ["x", "pk"], ["a"]), mul("a", "c", "s"),
             helper.make_node("Tanh", ["s"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"])]
    nodes += [helper.make_node(op, ins, [out]) for op, ins, out in GELU_FORMS[form]]
    data = make_model(nodes, [f32("x", ["n", 7])], [f32("y", ["n", 7])],
                      [const("three", np.float32(3)), const("k", np.float32(0.044715)),
                       const("c", np.float32(np.sqrt(2 / np.pi))), const("one", np.float32(1)),
                       const("half", np.float32(0.5))])
    graph = check_against_ort(data, {"x": 3 * rng.standard_normal((4, 7), dtype=np.float32)})
    assert [(n.op, n.attrs.get("approximate")) for n in graph.nodes] == [("Gelu", "tanh")]


def test_tanh_with_other_constants_is_not_gelu():
    # 0.5 x (1 + tanh(0.7 (x + 0.044715 x^3))) is not GELU: left as written
    nodes = [helper.make_node("Pow", ["x", "three"], ["p"]), helper.make_node("Mul", ["p", "k"], ["pk"]),
             helper.make_node("Add", ["x", "pk"], ["a"]), helper.make_node("Mul", ["a", "c"], ["s"]),
             helper.make_node("Tanh", ["s"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["x", "e1"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    data = make_model(nodes, [f32("x", [4, 7])], [f32("y", [4, 7])],
                      [const("three", np.float32(3)), const("k", np.float32(0.044715)), const("c", np.float32(0.7)),
                       const("one", np.float32(1)), const("half", np.float32(0.5))])
    graph = check_against_ort(data, {"x": rng.standard_normal((4, 7), dtype=np.float32)})
    assert "Gelu" not in [n.op for n in graph.nodes] and "Tanh" in [n.op for n in graph.nodes]


def test_erf_not_fused_when_intermediate_is_reused():
    """If another node reads 1 + erf, fusing would drop a value someone needs."""
    nodes = [helper.make_node("Div", ["x", "c"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["x", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"]), helper.make_node("Relu", ["e1"], ["z"])]
    data = make_model(nodes, [f32("x", [4, 7])], [f32("y", [4, 7]), f32("z", [4, 7])],
                      [const("c", np.float32(np.sqrt(2))), const("one", np.float32(1)), const("half", np.float32(0.5))])
    graph = check_against_ort(data, {"x": rng.standard_normal((4, 7), dtype=np.float32)})
    assert "Gelu" not in [n.op for n in graph.nodes]


def test_constant_subgraphs_and_identities_fold():
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Sqrt", ["ab"], ["r"]),
             helper.make_node("Identity", ["x"], ["xi"]), helper.make_node("Mul", ["xi", "r"], ["y"]),
             helper.make_node("Dropout", ["y"], ["yd"])]
    data = make_model(nodes, [f32("x", [3])], [f32("yd", [3])],
                      [const("a", np.float32([1, 2, 3])), const("b", np.float32([3, 2, 1]))])
    graph = check_against_ort(data, {"x": rng.standard_normal(3, dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Mul"]


def _reshape_model(batch, seq):
    """x (batch, seq, 12) -> view(batch, seq, 3, 4) through a Shape/Gather/Concat chain."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Gather", ["s", "i1"], ["t"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
             helper.make_node("Unsqueeze", ["t", "ax"], ["t1"]),
             helper.make_node("Concat", ["b1", "t1", "tail"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3])]
    inits = [const("i0", np.int64(0)), const("i1", np.int64(1)), const("ax", np.int64([0])),
             const("tail", np.int64([3, 4]))]
    return make_model(nodes, [f32("x", [batch, seq, 12])], [f32("y", [batch, 3, seq, 4])], inits)


def test_shape_chain_on_symbolic_dims_folds_to_constant_reshape():
    data = _reshape_model("batch", "seq")
    graph = check_against_ort(data, {"x": rng.standard_normal((2, 5, 12), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Reshape", "Transpose"]
    target = graph.initializers[graph.nodes[0].inputs[1]].to_dense()
    assert target.tolist() == [0, 0, 3, 4]
    # still right at other sizes: the folded target copies batch and seq from the input
    sess = runtime.InferenceSession(graph)
    x = rng.standard_normal((3, 9, 12), dtype=np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x.reshape(3, 9, 3, 4).transpose(0, 2, 1, 3))


def test_shape_chain_on_static_dims_folds_away():
    graph = check_against_ort(_reshape_model(2, 5), {"x": rng.standard_normal((2, 5, 12), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Reshape", "Transpose"]
    assert graph.initializers[graph.nodes[0].inputs[1]].to_dense().tolist() in ([2, 5, 3, 4], [0, 0, 3, 4])


def _split_then_view_model(split: str) -> bytes:
    """x (b, s, W) -> Split along the last axis -> the last part viewed as [b, s, -1, 4] with b
    and s read off that part's Shape (GPT-2's head split), then Transpose(0, 2, 1, 3).
    ``split``: "input" (sizes [12, 12] as the second input, W = 24), "even" (opset 18's
    num_outputs = 2, W = 24) or "uneven" (num_outputs = 3 of W = 26: parts 9, 9, 8)."""
    parts = {"input": 2, "even": 2, "uneven": 3}[split]
    width = 26 if split == "uneven" else 24
    outs = [f"p{k}" for k in range(parts)]
    last = outs[-1]
    split_node = (helper.make_node("Split", ["x", "sizes"], outs, axis=2) if split == "input"
                  else helper.make_node("Split", ["x"], outs, axis=2, num_outputs=parts))
    nodes = [split_node,
             helper.make_node("Shape", [last], ["sh"]),
             helper.make_node("Gather", ["sh", "i0"], ["b"], axis=0),
             helper.make_node("Gather", ["sh", "i1"], ["t"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
             helper.make_node("Unsqueeze", ["t", "ax"], ["t1"]),
             helper.make_node("Concat", ["b1", "t1", "tail"], ["shape"], axis=0),
             helper.make_node("Reshape", [last, "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3])]
    inits = [const("i0", np.int64(0)), const("i1", np.int64(1)), const("ax", np.int64([0])),
             const("tail", np.int64([-1, 4]))] + ([const("sizes", np.int64([12, 12]))] if split == "input" else [])
    heads = (width - 9 * (parts - 1) if split == "uneven" else 12) // 4
    return make_model(nodes, [f32("x", ["b", "s", width])], [f32("y", ["b", heads, "s", 4])], inits,
                      opset=17 if split == "input" else 18)


@pytest.mark.parametrize("split", ["input", "even", "uneven"])
def test_split_parts_keep_their_shapes_for_folding(split):
    # the parts' symbolic shapes let the view's target fold: [0, 0, -1, 4] (b and s copied)
    data = _split_then_view_model(split)
    for shape in [(2, 5), (1, 3)]:
        graph = check_against_ort(data, {"x": rng.standard_normal(shape + (26 if split == "uneven" else 24,),
                                                                  dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Split", "Reshape", "Transpose"]
    assert graph.initializers[graph.nodes[1].inputs[1]].to_dense().tolist() == [0, 0, -1, 4]


def test_view_with_minus_one_keeps_the_symbolic_dim_it_stands_for():
    # x (b, s, 8) -> view(-1, s, 8) (GPT-2 flattens input_ids so) -> view(b, -1, 2, 4) with b
    # read off the first view: its -1 is b, so the second target folds to [0, -1, 2, 4]
    nodes = [helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Gather", ["sx", "i1"], ["s"], axis=0),
             helper.make_node("Unsqueeze", ["s", "ax"], ["s1"]),
             helper.make_node("Concat", ["m1", "s1", "eight"], ["t1"], axis=0),
             helper.make_node("Reshape", ["x", "t1"], ["v"]),
             helper.make_node("Shape", ["v"], ["sv"]),
             helper.make_node("Gather", ["sv", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
             helper.make_node("Concat", ["b1", "m1", "tail"], ["t2"], axis=0),
             helper.make_node("Reshape", ["v", "t2"], ["y"])]
    inits = [const("i0", np.int64(0)), const("i1", np.int64(1)), const("ax", np.int64([0])),
             const("m1", np.int64([-1])), const("eight", np.int64([8])), const("tail", np.int64([2, 4]))]
    data = make_model(nodes, [f32("x", ["b", "s", 8])], [f32("y", ["b", "s2", 2, 4])], inits)
    for shape in [(2, 5, 8), (3, 1, 8)]:
        graph = check_against_ort(data, {"x": rng.standard_normal(shape, dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Reshape", "Reshape"]
    assert graph.initializers[graph.nodes[1].inputs[1]].to_dense().tolist() == [0, -1, 2, 4]


def test_concat_of_one_input_is_that_input():
    # GPT-2's key / value cache exported without a past: Concat(k) along the sequence axis
    nodes = [helper.make_node("Concat", ["x"], ["c"], axis=-2), helper.make_node("Relu", ["c"], ["y"])]
    data = make_model(nodes, [f32("x", ["b", 3])], [f32("y", ["b", 3])])
    graph = check_against_ort(data, {"x": rng.standard_normal((2, 3), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Relu"]


def _swap_through_3d_model(swapped: bool) -> bytes:
    """x (b, 2, s, 4) -> Reshape [-1, s, 4] -> Transpose(0, 2, 1) -> Reshape [b, 2, 4, s]: how the
    dynamo exporter writes x.transpose(-2, -1); with swapped=False the last Reshape asks for
    [b, 2, s, 4] instead (a different tensor: the elements are in the transposed order)."""
    def dims(name):
        return [helper.make_node("Shape", ["x"], [f"{name}_all"]),
                helper.make_node("Slice", [f"{name}_all", f"{name}_s", f"{name}_e"], [name])]
    last = ["lead", "d", "s"] if swapped else ["lead", "s", "d"]
    nodes = (dims("s") + dims("lead") + dims("d")
             + [helper.make_node("Concat", ["m1", "s", "d"], ["t3"], axis=0),
                helper.make_node("Reshape", ["x", "t3"], ["x3"]),
                helper.make_node("Transpose", ["x3"], ["x3t"], perm=[0, 2, 1]),
                helper.make_node("Concat", last, ["t4"], axis=0),
                helper.make_node("Reshape", ["x3t", "t4"], ["y"])])
    inits = [const("m1", np.array([-1], np.int64))]
    for name, (a, b) in {"s": (-2, -1), "lead": (0, -2), "d": (-1, 4)}.items():
        inits += [const(f"{name}_s", np.array([a], np.int64)), const(f"{name}_e", np.array([b], np.int64))]
    out = ["b", 2, 4, "s"] if swapped else ["b", 2, "s", 4]
    return make_model(nodes, [f32("x", ["b", 2, "s", 4])], [f32("y", out)], inits)


@pytest.mark.parametrize("swapped", [True, False])
def test_transpose_written_through_3d_becomes_one_transpose(swapped):
    data = _swap_through_3d_model(swapped)
    for shape in [(2, 2, 5, 4), (1, 2, 1, 4)]:
        graph = check_against_ort(data, {"x": rng.standard_normal(shape, dtype=np.float32)})
    ops = [n.op for n in graph.nodes]
    if swapped:
        assert ops == ["Transpose"] and graph.nodes[0].attrs["perm"] == [0, 1, 3, 2]
    else:
        assert "Transpose" in ops and ops.count("Reshape") == 2     # not a swap: left as written


def test_runtime_shape_ops_still_work_when_not_foldable():
    """Range over a dynamic length cannot fold; it runs as a shape op at run time."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
             helper.make_node("Squeeze", ["s"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "rf"], ["y"])]
    data = make_model(nodes, [f32("x", ["b", "n"])], [f32("y", ["b", "n"])],
                      [const("zero", np.int64(0)), const("one", np.int64(1))])
    for shape in [(1, 1), (2, 6)]:
        check_against_ort(data, {"x": rng.standard_normal(shape, dtype=np.float32)})


def test_conv_batchnorm_is_folded():
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    bn = [rng.standard_normal(4, dtype=np.float32) for _ in range(3)] + [rng.random(4, dtype=np.float32) + 0.5]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-3)]
    data = make_model(nodes, [f32("x", ["n", 3, 8, 8])], [f32("y", ["n", 4, 8, 8])],
                      [const("w", w)] + [const(k, a) for k, a in zip("gbmv", bn)])
    graph = check_against_ort(data, {"x": rng.standard_normal((2, 3, 8, 8), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Conv"]


def test_layer_norm_decomposed_is_fused():
    g, b = rng.standard_normal(8, dtype=np.float32), rng.standard_normal(8, dtype=np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
             helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["z"]),
             helper.make_node("Mul", ["z", "g"], ["zg"]),
             helper.make_node("Add", ["zg", "b"], ["y"])]
    data = make_model(nodes, [f32("x", ["n", 8])], [f32("y", ["n", 8])],
                      [const("two", np.float32(2)), const("eps", np.float32(1e-5)), const("g", g), const("b", b)],
                      opset=13)
    graph = check_against_ort(data, {"x": rng.standard_normal((5, 8), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["LayerNormalization"]


@pytest.mark.parametrize("opset", [13, 18])
def test_axes_moved_between_attributes_and_inputs(opset):
    """Split sizes, Squeeze/Unsqueeze and ReduceMean axes are inputs or attributes depending on
    the opset; the IR holds them as attributes either way."""
    axes_attr = opset < 18
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
             helper.make_node("Split", ["x"], ["c", "d", "e"], axis=1,
                              **({} if opset < 18 else {"num_outputs": 3})),
             helper.make_node("Unsqueeze", ["a", "ax0"], ["a1"]),
             helper.make_node("Squeeze", ["a1", "ax0"], ["a2"]),
             (helper.make_node("ReduceMean", ["b"], ["m"], axes=[1], keepdims=1) if axes_attr else
              helper.make_node("ReduceMean", ["b", "ax1"], ["m"], keepdims=1)),
             helper.make_node("Add", ["a2", "m"], ["y0"]),
             helper.make_node("Concat", ["y0", "c", "d", "e"], ["y"], axis=1)]
    data = make_model(nodes, [f32("x", ["n", 6])], [f32("y", ["n", 8])],
                      [const("sizes", np.int64([2, 4])), const("ax0", np.int64([0])), const("ax1", np.int64([1]))],
                      opset=opset)
    graph = check_against_ort(data, {"x": rng.standard_normal((3, 6), dtype=np.float32)})
    split = [n for n in graph.nodes if n.op == "Split"]
    assert split[0].attrs["split"] == [2, 4] and split[1].attrs["num_outputs"] == 3
    assert all(len(n.inputs) == 1 for n in graph.nodes if n.op in ("Split", "Squeeze", "Unsqueeze", "ReduceMean"))


def test_runtime_computed_axes_are_refused_clearly():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Unsqueeze", ["x", "s"], ["y"])]
    data = make_model(nodes, [f32("x", ["n"])], [f32("y", ["a", "b"])])
    with pytest.raises(UnsupportedModelError, match="axes must be a constant"):
        from_onnx(data)


def test_axes_computed_from_constants_are_folded_first():
    nodes = [helper.make_node("Cast", ["ax32"], ["ax"], to=TensorProto.INT64),
             helper.make_node("Unsqueeze", ["x", "ax"], ["y"])]
    data = make_model(nodes, [f32("x", ["n"])], [f32("y", [1, "n"])], [const("ax32", np.int32([0]))])
    graph = check_against_ort(data, {"x": rng.standard_normal(4, dtype=np.float32)})
    assert [(n.op, n.attrs) for n in graph.nodes] == [("Unsqueeze", {"axes": [0]})]


def test_constant_subgraph_that_cannot_run_is_a_clear_error():
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"], name="bad_add"), helper.make_node("Add", ["x", "ab"], ["y"])]
    data = make_model(nodes, [f32("x", [3])], [f32("y", [3])],
                      [const("a", np.float32([1, 2, 3])), const("b", np.float32([1, 2]))])
    with pytest.raises(UnsupportedModelError, match=r"node 'bad_add' \(Add\) fails on its constant inputs"):
        from_onnx(data)


def test_weight_shared_by_two_matmuls_is_stored_once():
    w = rng.standard_normal((5, 5), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    data = make_model(nodes, [f32("x", ["n", 5])], [f32("y", ["n", 5])], [const("w", w)])
    graph = check_against_ort(data, {"x": rng.standard_normal((3, 5), dtype=np.float32)})
    assert [n.op for n in graph.nodes] == ["Linear", "Relu", "Linear"]
    assert graph.nodes[0].inputs[1] == graph.nodes[2].inputs[1] and len(graph.initializers) == 1
