"""runtime.convert.prune: weight masks and channel surgery (docs/CONVERTER.md, "Pruning").

Masks are checked for exact counts (round(sparsity * count) pruned), their pattern, and
their ordering (nothing pruned is larger than anything kept). Channel pruning is checked on
the model zoo's MLP, CNN and a one-layer BERT: which layers it prunes, the reason for each
one it keeps, that the pruned graph validates and runs with the same interface, and - by
pruning channels that were zeroed beforehand - that exactly the right rows and columns went.
"""
import math

import numpy as np
import pytest

import runtime
from runtime.convert.prune import (REASON_FLATTEN_SPATIAL, REASON_MODEL_OUTPUT, ChannelPruneResult,
                                   block_mask, channel_prune, check_sparsity, global_magnitude_masks,
                                   magnitude_mask, nm_mask, random_mask, sparsity_of)
from runtime.graph import Graph, Node, Value
from kernels.core.layouts import dense_tensor

# Removing a channel whose weights are exactly zero changes only which zero terms a GEMM
# sums; the reference accumulates in float64 and rounds once, so the outputs agree to
# float32 rounding (a few ulp), far below the ~1e-1 change of removing a live channel.
SURGERY_REL_TOL = 1e-6

SHAPES = [(16, 32), (8, 3, 3, 3), (7,), (5, 13)]
SPARSITIES = [0.0, 0.3, 0.5, 0.9, 0.99]


def rng(seed=0):
    return np.random.default_rng(seed)


def rand(shape, seed=0, scale=1.0):
    return (scale * rng(seed).standard_normal(shape)).astype(np.float32)


def expected_pruned(sparsity, count):
    return int(round(sparsity * count))


def rel_err(got, want):
    want = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / max(np.linalg.norm(want), 1e-30))


# ------------------------------------------------------------------------- validation ----

@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_check_sparsity_refuses(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got"):
        check_sparsity(bad)


@pytest.mark.parametrize("fn", [
    lambda w, s: magnitude_mask(w, s),
    lambda w, s: global_magnitude_masks({"a": w}, s),
    lambda w, s: block_mask(w, s, (2, 2)),
    lambda w, s: random_mask(w, s, seed=0),
])
@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_every_mask_function_checks_sparsity(fn, bad):
    with pytest.raises(ValueError, match="sparsity must be in"):
        fn(rand((4, 4)), bad)


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fn", [
    lambda w: magnitude_mask(w, 0.5, name="fc1.weight"),
    lambda w: global_magnitude_masks({"fc1.weight": w, "other": rand((4, 4))}, 0.5),
    lambda w: nm_mask(w, 2, 4, name="fc1.weight"),
    lambda w: block_mask(w, 0.5, (2, 2), name="fc1.weight"),
    lambda w: random_mask(w, 0.5, seed=0, name="fc1.weight"),
])
def test_non_finite_weights_refused_with_name(fn, poison):
    w = rand((4, 8))
    w[1, 3] = poison
    with pytest.raises(ValueError, match=r"fc1\.weight contains non-finite"):
        fn(w)


def test_sparsity_of():
    assert sparsity_of(np.ones((3, 4), bool)) == 0.0
    assert sparsity_of(np.zeros((3, 4), bool)) == 1.0
    m = np.ones(8, bool)
    m[:2] = False
    assert sparsity_of(m) == 0.25
    assert sparsity_of(np.ones((0, 4), bool)) == 0.0


# ---------------------------------------------------------------------------- magnitude ----

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_magnitude_mask_count_and_order(shape, sparsity):
    w = rand(shape, seed=len(shape))
    mask = magnitude_mask(w, sparsity)
    assert mask.shape == w.shape and mask.dtype == bool
    assert (~mask).sum() == expected_pruned(sparsity, w.size)
    if 0 < mask.sum() < w.size:
        assert np.abs(w[~mask]).max() <= np.abs(w[mask]).min()


def test_magnitude_mask_zero_sparsity_keeps_everything():
    assert magnitude_mask(rand((6, 6)), 0.0).all()


def test_magnitude_mask_small_array_high_sparsity():
    w = rand((10, 10))
    mask = magnitude_mask(w, 0.99)
    assert mask.sum() == 1 and np.abs(w[mask])[0] == np.abs(w).max()
    # 0.99 * 12 = 11.88 rounds to 12: the counting rule is applied as written
    assert (~magnitude_mask(rand((3, 4)), 0.99)).sum() == 12


def test_magnitude_mask_ties_are_deterministic():
    w = np.ones((4, 4), np.float32)
    mask = magnitude_mask(w, 0.25)
    assert (~mask).ravel()[:4].all() and mask.ravel()[4:].all()   # earlier in C order first
    assert np.array_equal(mask, magnitude_mask(w.copy(), 0.25))


def test_magnitude_mask_uses_absolute_value():
    w = np.array([[-5.0, 0.1, 3.0, -0.2]], np.float32)
    assert magnitude_mask(w, 0.5).tolist() == [[True, False, True, False]]


# ------------------------------------------------------------------------------- global ----

def test_global_magnitude_one_threshold_across_layers():
    weights = {"small": rand((16, 16), seed=1, scale=0.1), "large": rand((16, 16), seed=2, scale=1.0),
               "conv": rand((4, 2, 3, 3), seed=3, scale=0.5)}
    masks = global_magnitude_masks(weights, 0.5)
    assert list(masks) == list(weights)
    total = sum(w.size for w in weights.values())
    assert sum((~m).sum() for m in masks.values()) == expected_pruned(0.5, total)
    for name, w in weights.items():
        assert masks[name].shape == w.shape
    kept = np.concatenate([np.abs(w[masks[n]]) for n, w in weights.items()])
    pruned = np.concatenate([np.abs(w[~masks[n]]) for n, w in weights.items()])
    assert pruned.max() <= kept.min()
    # the layer of large weights keeps more than the layer of small ones
    assert sparsity_of(masks["large"]) < 0.5 < sparsity_of(masks["small"])


def test_global_magnitude_zero_and_empty():
    masks = global_magnitude_masks({"a": rand((3, 3)), "b": rand((2, 5))}, 0.0)
    assert all(m.all() for m in masks.values())
    assert global_magnitude_masks({}, 0.5) == {}


# ----------------------------------------------------------------------------------- N:M ----

@pytest.mark.parametrize("shape,n,m", [((8, 16), 2, 4), ((4, 2, 2, 2), 2, 4), ((3, 16), 3, 8),
                                       ((5, 12), 1, 4), ((6, 8), 1, 2)])
def test_nm_mask_pattern(shape, n, m):
    w = rand(shape, seed=7)                       # continuous draws: no ties
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape
    rows = w.shape[0]
    groups_w = np.abs(w.reshape(rows, -1)).reshape(rows, -1, m)
    groups_m = mask.reshape(rows, -1).reshape(rows, -1, m)
    assert (groups_m.sum(-1) == n).all()          # exactly n kept in every group of every row
    kept_min = np.where(groups_m, groups_w, np.inf).min(-1)
    pruned_max = np.where(groups_m, -np.inf, groups_w).max(-1)
    assert (pruned_max <= kept_min).all()          # the n largest of each group are the kept ones
    assert math.isclose(sparsity_of(mask), 1 - n / m)


def test_nm_mask_groups_run_along_the_input_dim():
    w = np.array([[1, 2, 3, 4, 40, 30, 20, 10]], np.float32)
    assert nm_mask(w, 2, 4).tolist() == [[False, False, True, True, True, True, False, False]]


@pytest.mark.parametrize("n,m", [(4, 4), (5, 4), (0, 4), (-1, 4)])
def test_nm_mask_needs_n_below_m(n, m):
    with pytest.raises(ValueError, match=rf"0 < n < m, got n={n}, m={m}"):
        nm_mask(rand((4, 8)), n, m)


def test_nm_mask_needs_k_multiple_of_m():
    with pytest.raises(ValueError, match=r"K'=10.*m=4"):
        nm_mask(rand((4, 10)), 2, 4)
    with pytest.raises(ValueError, match=r"K'=9"):        # a Conv's K' = C * kh * kw
        nm_mask(rand((4, 1, 3, 3)), 2, 4)


# --------------------------------------------------------------------------------- block ----

@pytest.mark.parametrize("shape,block", [((8, 12), (2, 4)), ((8, 4, 2, 2), (2, 4)), ((6, 6), (3, 1)),
                                         ((4, 8), (4, 8))])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_block_mask_pattern(shape, block, sparsity):
    w = rand(shape, seed=11)
    mask = block_mask(w, sparsity, block)
    assert mask.shape == w.shape
    r, c = block
    v, mv = w.reshape(shape[0], -1), mask.reshape(shape[0], -1)
    nb_r, nb_c = v.shape[0] // r, v.shape[1] // c
    bm = mv.reshape(nb_r, r, nb_c, c)
    assert (bm == bm[:, :1, :, :1]).all()          # constant within each block
    kept_blocks = bm[:, 0, :, 0]
    nblocks = nb_r * nb_c
    assert (~kept_blocks).sum() == expected_pruned(sparsity, nblocks)
    assert abs(sparsity_of(mask) - sparsity) <= 1 / nblocks + 1e-12   # within one block
    norms = np.sqrt((v.astype(np.float64).reshape(nb_r, r, nb_c, c) ** 2).sum(axis=(1, 3)))
    if 0 < kept_blocks.sum() < nblocks:
        assert norms[~kept_blocks].max() <= norms[kept_blocks].min()


def test_block_mask_1x1_is_magnitude_mask():
    w = rand((8, 8), seed=5)
    assert np.array_equal(block_mask(w, 0.6, (1, 1)), magnitude_mask(w, 0.6))


def test_block_mask_must_tile():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(8, 12\)"):
        block_mask(rand((8, 12)), 0.5, (3, 4))
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(8, 18\)"):      # 4-D: the 2-D view is named
        block_mask(rand((8, 2, 3, 3)), 0.5, (2, 5))
    with pytest.raises(ValueError, match="block_shape"):
        block_mask(rand((8, 12)), 0.5, (0, 4))


# -------------------------------------------------------------------------------- random ----

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_random_mask_count(shape, sparsity):
    mask = random_mask(rand(shape), sparsity, seed=3)
    assert mask.shape == shape and (~mask).sum() == expected_pruned(sparsity, int(np.prod(shape)))


def test_random_mask_seeded():
    w = rand((32, 32))
    a, b, c = random_mask(w, 0.5, seed=1), random_mask(w, 0.5, seed=1), random_mask(w, 0.5, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# ===================================================================== channel pruning ====

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from runtime.convert import from_onnx  # noqa: E402  (after the importorskips)
from tests import model_zoo  # noqa: E402


@pytest.fixture(scope="module")
def mlp_bytes():
    return model_zoo.export(model_zoo.mlp(), (torch.randn(3, 20),), input_names=["x"], output_names=["y"],
                            dynamic_axes={"x": {0: "batch"}})


@pytest.fixture(scope="module")
def cnn_bytes():
    return model_zoo.export(model_zoo.cnn(), (torch.randn(2, 3, 16, 16),), input_names=["x"],
                            output_names=["y"], dynamic_axes={"x": {0: "batch"}})


@pytest.fixture(scope="module")
def bert_bytes():
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    return model_zoo.export(model_zoo.bert(layers=1), (ids, mask), input_names=["input_ids", "attention_mask"],
                            output_names=["last_hidden_state", "pooler_output"],
                            dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                          "attention_mask": {0: "batch", 1: "seq"}})


def run(graph, feeds):
    return runtime.InferenceSession(graph, backend="reference").run(None, feeds)


def weight(graph, node_name, k=1):
    node = next(n for n in graph.nodes if n.name == node_name)
    return np.asarray(graph.initializers[node.inputs[k]].to_dense())


def set_init(graph, name, array):
    graph.initializers[name] = dense_tensor(name, np.ascontiguousarray(array, np.float32))


def node_named(graph, name):
    return next(n for n in graph.nodes if n.name == name)


MLP_LAYERS = ["/0/Gemm", "/2/Gemm", "/4/Gemm", "/6/Gemm", "/8/Gemm"]


def test_mlp_half(mlp_bytes):
    graph = from_onnx(mlp_bytes)
    before = {n: weight(graph, n).shape for n in MLP_LAYERS}
    result = channel_prune(graph, 0.5)
    assert isinstance(result, ChannelPruneResult)
    assert [r.name for r in result.layers] == MLP_LAYERS
    for name in MLP_LAYERS[:4]:
        r = result[name]
        assert r.reason is None and r.pruned
        assert r.channels_after == r.channels_before - expected_pruned(0.5, r.channels_before)
        assert weight(graph, name).shape[0] == r.channels_after
        assert weight(graph, name, 2).shape == (r.channels_after,)
    # each consumer lost the columns its producer lost
    for prod, cons in zip(MLP_LAYERS[:4], MLP_LAYERS[1:]):
        assert result[prod].consumers == (cons,)
        assert weight(graph, cons).shape[1] == result[prod].channels_after
    last = result["/8/Gemm"]
    assert not last.pruned and "Softmax" in last.reason and "mixes channels" in last.reason
    assert weight(graph, "/8/Gemm").shape == (before["/8/Gemm"][0], 8)   # outputs kept, inputs shrank
    assert graph.outputs[0].shape == ("batch", 10)
    x = rng(1).standard_normal((5, 20)).astype(np.float32)
    (y,) = run(graph, {"x": x})
    assert y.shape == (5, 10) and np.allclose(y.sum(-1), 1, atol=1e-5)
    assert "4 of 5 layers pruned" in str(result)
    assert result.to_dict()["layers"][0]["removed"] == list(result["/0/Gemm"].removed)


def test_mlp_sparsity_zero_changes_nothing(mlp_bytes):
    graph = from_onnx(mlp_bytes)
    x = rng(2).standard_normal((4, 20)).astype(np.float32)
    want = run(graph, {"x": x})[0]
    inits = dict(graph.initializers)
    result = channel_prune(graph, 0.0)
    assert not result.pruned and all(r.channels_after == r.channels_before for r in result.layers)
    assert all(graph.initializers[k] is v for k, v in inits.items())
    assert np.array_equal(run(graph, {"x": x})[0], want)


def test_mlp_surgery_removes_exactly_the_zeroed_channels(mlp_bytes):
    """Zero some output channels (weight row and bias) so they rank lowest; pruning them must
    leave the model's output unchanged, which it does only if the right rows AND the right
    consumer columns were removed. Relu, Gelu and Tanh map 0 to 0; Sigmoid maps it to 0.5,
    so after /6/Gemm the consumer's columns are zeroed too."""
    graph = from_onnx(mlp_bytes)
    r = rng(3)
    chosen = {}
    for prod, cons in zip(MLP_LAYERS[:4], MLP_LAYERS[1:]):
        node = node_named(graph, prod)
        w, b = weight(graph, prod).copy(), weight(graph, prod, 2).copy()
        n = w.shape[0]
        idx = np.sort(r.choice(n, size=expected_pruned(0.5, n), replace=False))
        w[idx], b[idx] = 0, 0
        set_init(graph, node.inputs[1], w)
        set_init(graph, node.inputs[2], b)
        chosen[prod] = tuple(int(i) for i in idx)
        if prod == "/6/Gemm":
            cnode = node_named(graph, cons)
            cw = weight(graph, cons).copy()
            cw[:, idx] = 0
            set_init(graph, cnode.inputs[1], cw)
    x = r.standard_normal((6, 20)).astype(np.float32)
    want = run(graph, {"x": x})[0]
    result = channel_prune(graph, 0.5)
    for prod, idx in chosen.items():
        assert result[prod].removed == idx
    got = run(graph, {"x": x})[0]
    assert rel_err(got, want) <= SURGERY_REL_TOL
    # and pruning live channels does change the output (the check above has teeth)
    fresh = from_onnx(mlp_bytes)
    channel_prune(fresh, 0.5)
    assert rel_err(run(fresh, {"x": x})[0], run(from_onnx(mlp_bytes), {"x": x})[0]) > 1e-3


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_channel_ranking_by_norm(mlp_bytes, norm):
    graph = from_onnx(mlp_bytes)
    w = weight(graph, "/0/Gemm").astype(np.float64)
    scores = np.abs(w).sum(1) if norm == "l1" else np.sqrt((w * w).sum(1))
    result = channel_prune(graph, 0.25, norm=norm, select=lambda n: n.name == "/0/Gemm")
    assert [r.name for r in result.layers] == ["/0/Gemm"]        # select limits the candidates
    removed = np.array(result["/0/Gemm"].removed)
    kept = np.setdiff1d(np.arange(64), removed)
    assert removed.size == 16 and scores[removed].max() <= scores[kept].min()
    assert weight(graph, "/2/Gemm").shape == (48, 48)            # consumer columns follow
    assert weight(graph, "/2/Gemm", 1).shape[0] == 48            # its rows were not selected


def test_channel_prune_bad_arguments_leave_graph_alone(mlp_bytes):
    graph = from_onnx(mlp_bytes)
    inits = dict(graph.initializers)
    with pytest.raises(ValueError, match="sparsity must be in"):
        channel_prune(graph, 1.0)
    with pytest.raises(ValueError, match="norm must be"):
        channel_prune(graph, 0.5, norm="l3")
    w = weight(graph, "/4/Gemm").copy()
    w[0, 0] = np.nan
    name = node_named(graph, "/4/Gemm").inputs[1]
    set_init(graph, name, w)
    inits[name] = graph.initializers[name]
    with pytest.raises(ValueError, match=rf"{name}.*non-finite"):
        channel_prune(graph, 0.5)
    assert all(graph.initializers[k] is v for k, v in inits.items())   # nothing was lost


CNN = "/body/body.{}/Conv"


def test_cnn(cnn_bytes):
    graph = from_onnx(cnn_bytes)
    x = rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    result = channel_prune(graph, 0.5)
    r0, r3, r7, r10 = (result[CNN.format(i)] for i in (0, 3, 7, 10))
    assert not r0.pruned and "group=4" in r0.reason                 # producer of the grouped conv
    assert not r3.pruned and "group=4" in r3.reason                 # the grouped conv itself
    assert r7.pruned and (r7.channels_before, r7.channels_after) == (24, 12)
    assert r7.consumers == (CNN.format(10),)                        # through Relu and AveragePool
    assert weight(graph, CNN.format(7)).shape == (12, 16, 3, 3)
    # the last conv: Relu -> GlobalAveragePool -> Flatten -> Linear reads channel j as column j
    assert r10.pruned and (r10.channels_before, r10.channels_after) == (32, 16)
    assert r10.consumers == ("/body/body.15/Gemm",)
    assert weight(graph, CNN.format(10)).shape == (16, 12, 1, 1)
    assert weight(graph, "/body/body.15/Gemm").shape == (10, 16)
    assert result["/body/body.15/Gemm"].reason == REASON_MODEL_OUTPUT
    (y,) = run(graph, {"x": x})
    assert y.shape == (2, 10)


def test_cnn_surgery_removes_exactly_the_zeroed_filters(cnn_bytes):
    graph = from_onnx(cnn_bytes)
    r = rng(5)
    chosen = {}
    for i in (7, 10):     # both followed by Relu (0 -> 0) and pooling (0 -> 0)
        node = node_named(graph, CNN.format(i))
        w, b = weight(graph, node.name).copy(), weight(graph, node.name, 2).copy()
        idx = np.sort(r.choice(w.shape[0], size=w.shape[0] // 2, replace=False))
        w[idx], b[idx] = 0, 0
        set_init(graph, node.inputs[1], w)
        set_init(graph, node.inputs[2], b)
        chosen[node.name] = tuple(int(j) for j in idx)
    x = r.standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = run(graph, {"x": x})[0]
    result = channel_prune(graph, 0.5)
    for name, idx in chosen.items():
        assert result[name].removed == idx
    assert rel_err(run(graph, {"x": x})[0], want) <= SURGERY_REL_TOL


def test_bert_ffn_pruned_attention_reported(bert_bytes):
    graph = from_onnx(bert_bytes)
    feeds = model_zoo.bert_feeds(2, 8, seed=1)
    before = run(graph, feeds)
    result = channel_prune(graph, 0.5)
    layer = "/m/encoder/layer.0/"
    ffn = result[layer + "intermediate/dense/MatMul"]
    assert ffn.pruned and (ffn.channels_before, ffn.channels_after) == (128, 64)
    assert ffn.consumers == (layer + "output/dense/MatMul",)
    assert weight(graph, layer + "output/dense/MatMul").shape == (64, 64)
    for qkv in ("query", "key", "value"):
        r = result[layer + f"attention/self/{qkv}/MatMul"]
        assert not r.pruned and "Reshape" in r.reason and "mixes channels" in r.reason
    for residual in ("attention/output/dense/MatMul", "output/dense/MatMul"):
        r = result[layer + residual]
        assert not r.pruned and "Add" in r.reason and "residual" in r.reason
    pooler = result["/m/pooler/dense/Gemm"]
    assert REASON_MODEL_OUTPUT in pooler.reason and "pooler_output" in pooler.reason
    assert [r.name for r in result.pruned] == [ffn.name]
    after = run(graph, feeds)
    assert [a.shape for a in after] == [b.shape for b in before]
    assert all(np.isfinite(a).all() for a in after)


# -------------------------------------------------------------- hand-built rule graphs ----

def linear_graph(extra_nodes=(), outputs=("y",), out_shapes=None, n_hidden=6, k=4, n_out=3,
                 hidden_dtype=np.float32, share_consumer=False, extra_inits=None):
    """x (batch, k) -> fc1 (n_hidden) -> Relu -> h -> fc2 (n_out) -> y, plus extra nodes."""
    r = rng(9)
    inits = {"w1": r.standard_normal((n_hidden, k)).astype(hidden_dtype),
             "b1": r.standard_normal(n_hidden).astype(np.float32),
             "w2": r.standard_normal((n_out, n_hidden)).astype(np.float32),
             "b2": r.standard_normal(n_out).astype(np.float32), **(extra_inits or {})}
    nodes = [Node("fc1", "Linear", ["x", "w1", "b1"], ["z1"]), Node("relu", "Relu", ["z1"], ["h"]),
             Node("fc2", "Linear", ["h", "w2", "b2"], ["y"]), *extra_nodes]
    if share_consumer:
        nodes.append(Node("fc2b", "Linear", ["h", "w2"], ["y2"]))
    out_shapes = out_shapes or {}
    g = Graph("t", [Value("x", "float32", ("batch", k))],
              [Value(o, "float32", out_shapes.get(o)) for o in outputs], nodes,
              {name: dense_tensor(name, a) for name, a in inits.items()})
    g.validate()
    return g


def test_rule_intermediate_value_is_model_output():
    g = linear_graph(outputs=("y", "h"))
    r = channel_prune(g, 0.5)["fc1"]
    assert not r.pruned and REASON_MODEL_OUTPUT in r.reason and "'h'" in r.reason


@pytest.mark.parametrize("op,reason", [("Add", "residual"), ("Mul", "mixes channels"),
                                       ("Softmax", "mixes channels"), ("Concat", "mixes channels")])
def test_rule_mixing_consumer(op, reason):
    if op in ("Add", "Mul"):
        extra = Node("mix", op, ["h", "h"], ["m"])
    elif op == "Concat":
        extra = Node("mix", op, ["h", "x"], ["m"], {"axis": -1})
    else:
        extra = Node("mix", op, ["h"], ["m"])
    g = linear_graph([extra], outputs=("y", "m"))
    r = channel_prune(g, 0.5)["fc1"]
    assert not r.pruned and f"output feeds {op} 'mix'" in r.reason and reason in r.reason
    assert np.asarray(g.initializers["w1"].to_dense()).shape == (6, 4)


def test_rule_two_consumers_both_lose_columns():
    extra = [Node("fc3", "Linear", ["h", "w3"], ["y3"])]
    g = linear_graph(extra, outputs=("y", "y3"), extra_inits={"w3": rand((2, 6), seed=4)})
    x = rng(6).standard_normal((3, 4)).astype(np.float32)
    result = channel_prune(g, 0.5)
    r = result["fc1"]
    assert r.pruned and set(r.consumers) == {"fc2", "fc3"}
    assert g.initializers["w2"].shape == (3, 3) and g.initializers["w3"].shape == (2, 3)
    assert [a.shape for a in run(g, {"x": x})] == [(3, 3), (3, 2)]


def test_rule_shared_consumer_weight():
    g = linear_graph(share_consumer=True, outputs=("y", "y2"))
    r = channel_prune(g, 0.5)["fc1"]
    assert not r.pruned and "shared" in r.reason and "w2" in r.reason


def test_rule_weight_not_dense_fp32():
    g = linear_graph(hidden_dtype=np.float16)
    r = channel_prune(g, 0.5)["fc1"]
    assert not r.pruned and "not a dense fp32 initializer" in r.reason


def test_rule_keeps_at_least_one_channel():
    g = linear_graph(n_hidden=4)
    r = channel_prune(g, 0.99)["fc1"]             # round(0.99 * 4) = 4, capped at N - 1
    assert r.channels_after == 1 and len(r.removed) == 3
    assert g.initializers["w2"].shape == (3, 1)


def test_rule_flatten_with_unknown_spatial_size():
    """Conv -> Relu -> Flatten -> Linear: channel j is a block of H*W columns whose size the
    graph does not state, so the conv is reported, not guessed at."""
    r = rng(8)
    inits = {"cw": r.standard_normal((4, 3, 3, 3)).astype(np.float32), "cb": r.standard_normal(4).astype(np.float32),
             "lw": r.standard_normal((5, 4 * 6 * 6)).astype(np.float32)}
    nodes = [Node("conv", "Conv", ["x", "cw", "cb"], ["c"], {"pads": [1, 1, 1, 1]}),
             Node("relu", "Relu", ["c"], ["r"]), Node("flat", "Flatten", ["r"], ["f"], {"axis": 1}),
             Node("fc", "Linear", ["f", "lw"], ["y"])]
    g = Graph("t", [Value("x", "float32", ("batch", 3, 6, 6))], [Value("y", "float32", ("batch", 5))], nodes,
              {k: dense_tensor(k, v) for k, v in inits.items()})
    result = channel_prune(g, 0.5)
    assert REASON_FLATTEN_SPATIAL in result["conv"].reason and not result["conv"].pruned
    assert g.initializers["cw"].shape == (4, 3, 3, 3)
    x = rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert run(g, {"x": x})[0].shape == (2, 5)
