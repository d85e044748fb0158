"""Calibration (runtime/convert/calibrate.py): feed sources, activation collection, the four
range estimators and the (scale, zero point) they turn into (docs/CONVERTER.md, Numerics)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.convert import from_onnx
from runtime.convert.calibrate import (METHODS, CalibFeeds, calibrate, collect_inputs, feeds_from_iterable,
                                       load_calib_npz, random_feeds, range_entropy, range_minmax, range_mse,
                                       range_percentile, scale_zero_point)
from runtime.session import InferenceSession
from tests import model_zoo

RANGE_FNS = [range_minmax, range_percentile, range_mse, range_entropy]

# lo and hi land on -128 and 127 up to the rounding of the zero point to an integer (half a
# step) and float error: "within 1" leaves room for both.
END_TOLERANCE_STEPS = 1.0


def _fake_quant(x, lo, hi):
    s, z = scale_zero_point(lo, hi)
    q = np.clip(np.rint(x / s) + z, -128, 127)
    return (q - z) * s


def _mse(x, lo, hi):
    return float(np.mean((_fake_quant(x, lo, hi) - x) ** 2))


# ------------------------------------------------------------------------- ranges ---------

def test_minmax_is_exact():
    x = np.random.default_rng(0).normal(0.3, 2.0, 5000)
    assert range_minmax(x) == (x.min(), x.max())


def test_percentile_clips_a_few_huge_outliers():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(100_000), [500.0, -400.0, 900.0]])
    lo, hi = range_percentile(x, 99.9)
    assert hi < 10 and lo > -10                      # far inside [min, max] = [-400, 900]
    assert 2.5 < hi and lo < -2.5                    # but still covers the bulk
    assert range_percentile(x, 100.0) == range_minmax(x)


def test_mse_beats_minmax_on_heavy_tails():
    x = np.random.default_rng(2).laplace(size=50_000)   # all samples searched (< max_samples)
    lo, hi = range_mse(x)
    mlo, mhi = range_minmax(x)
    assert _mse(x, lo, hi) <= _mse(x, mlo, mhi)
    assert hi < 0.99 * mhi                              # it did clip the tail


def test_mse_keeps_about_the_full_range_on_uniform_data():
    x = np.random.default_rng(3).uniform(-1, 1, 50_000)
    lo, hi = range_mse(x)
    assert lo <= -0.95 and hi >= 0.95


def test_entropy_threshold_on_gaussian_is_a_few_sigma():
    sigma = 1.7
    x = np.random.default_rng(4).normal(0.0, sigma, 200_000)
    lo, hi = range_entropy(x)
    assert 2.5 * sigma <= hi <= 5 * sigma
    assert 2.5 * sigma <= -lo <= 5 * sigma


def test_entropy_on_relu_output_ignores_the_spike_at_zero():
    # half the values are exactly 0: they must not drag the threshold down
    x = np.maximum(np.random.default_rng(5).standard_normal(200_000), 0)
    lo, hi = range_entropy(x)
    assert lo == 0.0 and 2.5 <= hi <= x.max()


@pytest.mark.parametrize("fn", RANGE_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("data", ["gauss", "post_relu", "positive", "negative", "zeros", "constant"])
def test_ranges_always_contain_zero(fn, data):
    rng = np.random.default_rng(6)
    x = {"gauss": rng.standard_normal(20_000),
         "post_relu": np.maximum(rng.standard_normal(20_000), 0),
         "positive": 3.0 + rng.random(20_000),
         "negative": -2.0 - rng.random(20_000),
         "zeros": np.zeros(100),
         "constant": np.full(100, 0.25)}[data]
    lo, hi = fn(x)
    assert isinstance(lo, float) and isinstance(hi, float)
    assert lo <= 0.0 <= hi
    if data == "positive":
        assert lo == 0.0 and hi > 3.0
    if data == "negative":
        assert hi == 0.0 and lo < -2.0


@pytest.mark.parametrize("fn", RANGE_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", ["empty", "nan", "inf"])
def test_ranges_refuse_empty_and_non_finite_samples(fn, bad):
    x = {"empty": np.zeros(0), "nan": np.array([1.0, np.nan, 2.0]), "inf": np.array([1.0, -np.inf])}[bad]
    with pytest.raises(ValueError, match="no samples" if bad == "empty" else "NaN or Inf"):
        fn(x)


@pytest.mark.parametrize("lo,hi", [(-1.0, 1.0), (-0.3, 7.9), (0.0, 5.0), (-5.0, 0.0), (-1e-4, 3e-5),
                                   (-1000.0, 0.001)])
def test_scale_zero_point_maps_the_ends_and_zero_exactly(lo, hi):
    s, z = scale_zero_point(lo, hi)
    assert isinstance(s, float) and isinstance(z, int) and not isinstance(z, bool)
    assert s > 0 and -128 <= z <= 127
    assert abs((lo / s + z) - (-128)) <= END_TOLERANCE_STEPS
    assert abs((hi / s + z) - 127) <= END_TOLERANCE_STEPS
    q0 = np.clip(np.rint(0.0 / s) + z, -128, 127)
    assert (q0 - z) * s == 0.0                      # zero is a grid point


def test_scale_zero_point_of_an_empty_range_and_a_range_missing_zero():
    assert scale_zero_point(0.0, 0.0) == (1.0, 0)
    assert scale_zero_point(2.0, 5.0) == scale_zero_point(0.0, 5.0)     # lo <= 0 forced
    assert scale_zero_point(0.0, 5.0)[1] == -128
    assert scale_zero_point(-5.0, 0.0)[1] == 127
    with pytest.raises(ValueError, match="not finite"):
        scale_zero_point(-np.inf, 1.0)


# ------------------------------------------------------------------------- feeds ----------

@pytest.fixture(scope="module")
def mlp_graph():
    return from_onnx(model_zoo.small_mlp_onnx())       # x [batch, 8] -> y [batch, 5], h [batch, 16]


def _ids_model_graph(vocab: int = 37):
    """input_ids int64 [batch, seq] -> Gather on an initializer table (vocab, 8); attention_mask
    int64 [batch, seq] -> Cast -> Unsqueeze -> Mul; token_type_ids int64 [batch, seq] (added as
    float); then a Linear: y [batch, seq, 4]."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    table = rng.standard_normal((vocab, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["emb"], name="embed"),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"], name="unsq"),
             helper.make_node("Mul", ["emb", "mask3"], ["masked"], name="mul"),
             helper.make_node("Cast", ["token_type_ids"], ["ttf"], to=TensorProto.FLOAT, name="cast_tt"),
             helper.make_node("Unsqueeze", ["ttf", "axes"], ["tt3"], name="unsq_tt"),
             helper.make_node("Add", ["masked", "tt3"], ["hidden"], name="add_tt"),
             helper.make_node("MatMul", ["hidden", "W"], ["mm"], name="proj/MatMul"),
             helper.make_node("Add", ["mm", "B"], ["y"], name="proj/Add")]
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    i64 = TensorProto.INT64
    data = model_zoo.onnx_model(
        nodes, [helper.make_tensor_value_info(n, i64, ["batch", "seq"])
                for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])], inits)
    return from_onnx(data)


def _save(tmp_path, name="calib.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_load_calib_npz_batches_samples_along_the_batch_axis(tmp_path, mlp_graph):
    x = np.random.default_rng(8).standard_normal((70, 8)).astype(np.float32)
    feeds = load_calib_npz(_save(tmp_path, x=x), mlp_graph)
    assert isinstance(feeds, CalibFeeds) and not feeds.is_random and "70 sample" in feeds.source
    assert [f["x"].shape for f in feeds] == [(32, 8), (32, 8), (6, 8)]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x)
    assert len(load_calib_npz(_save(tmp_path, x=x), mlp_graph, batch_size=7)) == 10
    sess = InferenceSession(mlp_graph, backend="reference")
    for f in feeds:
        sess.run(None, f)


def test_load_calib_npz_one_whole_input_per_sample(tmp_path, mlp_graph):
    x = np.random.default_rng(9).standard_normal((5, 3, 8)).astype(np.float32)   # 5 samples of [3, 8]
    feeds = load_calib_npz(_save(tmp_path, x=x), mlp_graph)
    assert len(feeds) == 5 and all(f["x"].shape == (3, 8) for f in feeds)
    np.testing.assert_array_equal(feeds[2]["x"], x[2])


def test_load_calib_npz_with_several_inputs(tmp_path):
    g = _ids_model_graph(vocab=37)
    rng = np.random.default_rng(10)
    arrays = {"input_ids": rng.integers(0, 37, (40, 6)), "attention_mask": np.ones((40, 6), np.int64),
              "token_type_ids": np.zeros((40, 6), np.int64)}
    feeds = load_calib_npz(_save(tmp_path, **arrays), g)
    assert [f["input_ids"].shape[0] for f in feeds] == [32, 8]
    sess = InferenceSession(g, backend="reference")
    assert sess.run(None, feeds[1])[0].shape == (8, 6, 4)


_GOOD_X = np.zeros((10, 8), np.float32)


def _bad_cases():
    nan = _GOOD_X.copy()
    nan[3, 2] = nan[4, 4] = np.nan
    inf = _GOOD_X.copy()
    inf[0, 0] = np.inf
    return {
        "missing name": ({"input": _GOOD_X}, r"missing 'x'.*unexpected 'input'.*model's inputs are: 'x' \(float32"),
        "extra array": ({"x": _GOOD_X, "labels": np.zeros(10)}, r"unexpected 'labels'"),
        "wrong fixed dim": ({"x": np.zeros((10, 7), np.float32)}, r"'x'.*dimension 1 = 8, got 7"),
        "wrong rank": ({"x": np.zeros((10, 2, 3, 8), np.float32)}, r"'x'.*rank 4.*expected rank 2"),
        "wrong dtype": ({"x": _GOOD_X.astype(np.float64)}, r"'x' has dtype float64.*float32"),
        "nan": ({"x": nan}, r"'x' contains 2 NaN"),
        "inf": ({"x": inf}, r"'x' contains 1 Inf"),
        "zero samples": ({"x": np.zeros((0, 8), np.float32)}, r"zero samples"),
        "scalar": ({"x": np.float32(1.0)}, r"'x' is a scalar"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_load_calib_npz_refuses_bad_data(tmp_path, mlp_graph, case):
    arrays, pattern = _bad_cases()[case]
    with pytest.raises(ValueError, match=pattern):
        load_calib_npz(_save(tmp_path, **arrays), mlp_graph)


def test_load_calib_npz_refuses_unequal_sample_counts(tmp_path):
    g = _ids_model_graph()
    arrays = {"input_ids": np.zeros((10, 6), np.int64), "attention_mask": np.ones((9, 6), np.int64),
              "token_type_ids": np.zeros((10, 6), np.int64)}
    with pytest.raises(ValueError, match=r"different sample counts.*'attention_mask': 9"):
        load_calib_npz(_save(tmp_path, **arrays), g)


def test_load_calib_npz_refuses_mismatched_symbolic_dims(tmp_path):
    g = _ids_model_graph()
    arrays = {"input_ids": np.zeros((10, 6), np.int64), "attention_mask": np.ones((10, 5), np.int64),
              "token_type_ids": np.zeros((10, 6), np.int64)}
    with pytest.raises(ValueError, match=r"'seq'"):
        load_calib_npz(_save(tmp_path, **arrays), g)


def test_load_calib_npz_refuses_files_that_are_not_npz(tmp_path, mlp_graph):
    text = tmp_path / "calib.npz"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_calib_npz(text, mlp_graph)
    npy = tmp_path / "x.npy"
    np.save(npy, _GOOD_X)
    with pytest.raises(ValueError, match=r"single array \(.npy\)"):
        load_calib_npz(npy, mlp_graph)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(_save(tmp_path, x=_GOOD_X).read_bytes()[:100])
    with pytest.raises(ValueError, match="calibration data"):
        load_calib_npz(truncated, mlp_graph)
    with pytest.raises(ValueError, match="no such file"):
        load_calib_npz(tmp_path / "absent.npz", mlp_graph)


def test_feeds_from_iterable(mlp_graph):
    rng = np.random.default_rng(11)
    feeds = feeds_from_iterable((({"x": rng.standard_normal((b, 8)).astype(np.float32)}) for b in (1, 4)), mlp_graph)
    assert isinstance(feeds, CalibFeeds) and len(feeds) == 2 and not feeds.is_random
    with pytest.raises(ValueError, match=r"feed 1: missing 'x'.*unexpected 'X'"):
        feeds_from_iterable([{"x": _GOOD_X}, {"X": _GOOD_X}], mlp_graph)
    with pytest.raises(ValueError, match=r"feed 0: array 'x' has dtype float64"):
        feeds_from_iterable([{"x": np.zeros((2, 8))}], mlp_graph)
    with pytest.raises(ValueError, match=r"feed 0: array 'x' does not fit the model's input: expected rank 2 .*got rank 1"):
        feeds_from_iterable([{"x": np.zeros(2, np.float32)}], mlp_graph)
    with pytest.raises(ValueError, match=r"feed 0: array 'x' contains 1 NaN"):
        feeds_from_iterable([{"x": np.array([[np.nan] + [0] * 7], np.float32)}], mlp_graph)
    with pytest.raises(ValueError, match=r"feed 0: expected a dict"):
        feeds_from_iterable([_GOOD_X], mlp_graph)
    with pytest.raises(ValueError, match=r"no feeds"):
        feeds_from_iterable([], mlp_graph)


def test_random_feeds_index_embedding_tables_and_run():
    g = _ids_model_graph(vocab=37)
    feeds = random_feeds(g, n_batches=3, batch=5, seq=11, seed=1)
    assert isinstance(feeds, CalibFeeds) and feeds.is_random and "random" in feeds.source
    assert len(feeds) == 3
    ids = np.concatenate([f["input_ids"].ravel() for f in feeds])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 37
    assert len(np.unique(ids)) > 10                                # really random, not zeros
    for f in feeds:
        assert f["input_ids"].shape == f["attention_mask"].shape == (5, 11)
        m = f["attention_mask"]
        assert set(np.unique(m)) <= {0, 1} and (m[:, 0] == 1).all()
        assert (np.diff(m, axis=1) <= 0).all()                    # ones, then trailing zeros
        assert (f["token_type_ids"] == 0).all()
    sess = InferenceSession(g, backend="reference")
    for f in feeds:
        assert np.isfinite(sess.run(None, f)[0]).all()
    assert random_feeds(g, dims={"seq": 3})[0]["input_ids"].shape == (8, 3)


def test_random_feeds_float_inputs(mlp_graph):
    feeds = random_feeds(mlp_graph, n_batches=2, batch=64)
    x = feeds[0]["x"]
    assert x.shape == (64, 8) and x.dtype == np.float32 and 0.5 < x.std() < 1.5
    assert not np.array_equal(feeds[0]["x"], feeds[1]["x"])
    np.testing.assert_array_equal(random_feeds(mlp_graph, batch=64)[0]["x"], x)   # seeded


# --------------------------------------------------------------- collect + calibrate ------

def _snapshot(g):
    return (len(g.nodes), [v.name for v in g.outputs], [v.name for v in g.inputs], [n.name for n in g.nodes],
            [dict(n.attrs) for n in g.nodes])


def test_collect_inputs_returns_the_activations_and_leaves_the_graph_alone(mlp_graph):
    before = _snapshot(mlp_graph)
    x = np.random.default_rng(12).standard_normal((20, 8)).astype(np.float32)
    feeds = feeds_from_iterable([{"x": x[:12]}, {"x": x[12:]}], mlp_graph)
    vals = collect_inputs(mlp_graph, feeds, ["x", "h", "z1"])    # input, existing output, hidden
    assert _snapshot(mlp_graph) == before
    np.testing.assert_array_equal(vals["x"], x.ravel())
    _, h = model_zoo.small_mlp_numpy(x)
    np.testing.assert_allclose(vals["h"], h.ravel(), rtol=1e-5, atol=1e-5)
    assert vals["z1"].dtype == np.float32 and vals["z1"].shape == (20 * 16,)
    with pytest.raises(ValueError, match="nowhere"):
        collect_inputs(mlp_graph, feeds, ["nowhere"])


def test_collect_inputs_subsamples_but_keeps_the_extremes(mlp_graph):
    x = np.random.default_rng(13).standard_normal((4000, 8)).astype(np.float32)
    feeds = load_calib_npz(_save_tmp(x), mlp_graph, batch_size=1000)
    vals = collect_inputs(mlp_graph, feeds, ["z1"], max_values=1000)
    full = collect_inputs(mlp_graph, feeds, ["z1"])["z1"]
    assert full.size == 4000 * 16 and vals["z1"].size <= 1000
    assert vals["z1"].min() == full.min() and vals["z1"].max() == full.max()


def _save_tmp(x):
    import tempfile
    d = tempfile.mkdtemp()
    p = f"{d}/c.npz"
    np.savez(p, x=x)
    return p


@pytest.mark.parametrize("method", METHODS)
def test_calibrate_small_mlp(mlp_graph, method):
    before = _snapshot(mlp_graph)
    feeds = random_feeds(mlp_graph, n_batches=3, batch=16)
    layers = [n.name for n in mlp_graph.nodes if n.op == "Linear"]
    assert len(layers) == 2
    params = calibrate(mlp_graph, feeds, layers, method=method)
    assert set(params) == set(layers)
    for scale, zp in params.values():
        assert isinstance(scale, float) and np.isfinite(scale) and scale > 0
        assert isinstance(zp, int) and -128 <= zp <= 127
    assert params["fc2/MatMul"][1] == -128          # its input h is post-ReLU: lo = 0
    assert _snapshot(mlp_graph) == before


def test_calibrate_minmax_matches_the_data(mlp_graph):
    x = np.random.default_rng(14).standard_normal((50, 8)).astype(np.float32)
    feeds = feeds_from_iterable([{"x": x}], mlp_graph)
    params = calibrate(mlp_graph, feeds, ["fc1/MatMul"], method="minmax")
    assert params["fc1/MatMul"] == scale_zero_point(float(x.min()), float(x.max()))


def test_calibrate_refuses_bad_requests(mlp_graph):
    feeds = random_feeds(mlp_graph, n_batches=1)
    with pytest.raises(ValueError, match=r"unknown calibration method 'kl'.*minmax, percentile, mse, entropy"):
        calibrate(mlp_graph, feeds, ["fc1/MatMul"], method="kl")
    with pytest.raises(ValueError, match=r"no node named 'fc9'"):
        calibrate(mlp_graph, feeds, ["fc9"])
    with pytest.raises(ValueError, match=r"'relu' is a Relu"):
        calibrate(mlp_graph, feeds, ["relu"])
    with pytest.raises(ValueError, match=r"percentile must be"):
        calibrate(mlp_graph, feeds, ["fc1/MatMul"], method="percentile", percentile=20)


def test_calibrate_conv_and_shared_inputs():
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(15)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["img", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["img", "W2"], ["c2"], name="conv2")]
    f = TensorProto.FLOAT
    g = from_onnx(model_zoo.onnx_model(
        nodes, [helper.make_tensor_value_info("img", f, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("c1", f, ["n", 4, 6, 6]), helper.make_tensor_value_info("c2", f, ["n", 2, 6, 6])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]))
    convs = [n.name for n in g.nodes if n.op == "Conv"]
    params = calibrate(g, random_feeds(g, n_batches=2, batch=4), convs, method="entropy")
    assert len(params) == 2 and params[convs[0]] == params[convs[1]]   # one input, one range


def test_load_calib_npz_with_a_fixed_batch_dim(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(16).standard_normal((8, 3)).astype(np.float32)
    f = TensorProto.FLOAT
    g = from_onnx(model_zoo.onnx_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")],
        [helper.make_tensor_value_info("x", f, [2, 8])], [helper.make_tensor_value_info("y", f, [2, 3])],
        [numpy_helper.from_array(w, "W")]))
    feeds = load_calib_npz(_save(tmp_path, x=np.ones((6, 8), np.float32)), g)
    assert [fd["x"].shape for fd in feeds] == [(2, 8)] * 3            # b samples per feed
    feeds = load_calib_npz(_save(tmp_path, x=np.ones((4, 2, 8), np.float32)), g)
    assert [fd["x"].shape for fd in feeds] == [(2, 8)] * 4            # one whole input per sample
    with pytest.raises(ValueError, match=r"5 samples is not a multiple of the model's fixed batch size 2"):
        load_calib_npz(_save(tmp_path, x=np.ones((5, 8), np.float32)), g)
