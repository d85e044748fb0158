"""Bad input at run time, one table across backends and conversions (issue 16 item 4): each
case either works as onnxruntime does or fails with an error that names the input.

Models: tests/model_zoo.small_mlp_onnx (x[batch, 8] -> y, h) as fp32, dynamic / static int8,
int4 and 80% csr int8; a token model (ids[b, s] -> Gather from a 100-row table -> MatMul) with
the table fp32, int8 per row and int4 grouped."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from kernels import registry
from tests import model_zoo

BACKENDS = ["reference"] + [b for b in ("numba", "native") if registry.backend_status(b) is None]
MLP = {"fp32": {}, "int8": {"quant": "int8"}, "static int8": {"quant": "int8", "act": "static"},
       "int4": {"quant": "int4", "group_size": 8}, "csr int8": {"prune": "magnitude", "sparsity": 0.8, "quant": "int8"}}
TABLES = {"fp32 table": {"embed_quant": "none"}, "int8 table": {"embed_quant": "int8"},
          "int4 table": {"embed_quant": "int4", "group_size": 8}}


@pytest.fixture(scope="module")
def mlps():
    data = model_zoo.small_mlp_onnx()
    return {name: runtime.convert(data, **opts) for name, opts in MLP.items()}


@pytest.fixture(scope="module")
def token_models():
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    table, w = rng.standard_normal((100, 16)).astype(np.float32), rng.standard_normal((16, 4)).astype(np.float32)
    data = model_zoo.onnx_model(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "W"], ["y"], name="proj")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "W")])
    return {name: runtime.convert(data, quant="int8", **opts) for name, opts in TABLES.items()}


def _x(rows=4):
    return np.random.default_rng(3).standard_normal((rows, 8)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", list(MLP))
def test_nan_and_inf_stay_in_their_rows(mlps, model, backend):
    """A NaN makes its own row NaN (as onnxruntime); rows without bad values are the bits of a
    clean run (per-row activation quantization: one row's NaN cannot reach another)."""
    s = runtime.InferenceSession(mlps[model], backend)
    x = _x()
    bad = x.copy()
    bad[0, 3], bad[1, 2], bad[2, 1] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        y, h = s.run(None, {"x": bad})
    clean = s.run(None, {"x": x})
    assert np.isnan(y[0]).all()
    np.testing.assert_array_equal(y[3], clean[0][3])
    np.testing.assert_array_equal(h[3], clean[1][3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", list(MLP))
def test_batch_zero_gives_empty_outputs(mlps, model, backend):
    y, h = runtime.InferenceSession(mlps[model], backend).run(None, {"x": np.zeros((0, 8), np.float32)})
    assert (y.shape, h.shape, y.dtype) == ((0, 5), (0, 16), np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", list(MLP))
def test_any_memory_order_gives_the_same_bits(mlps, model, backend):
    s = runtime.InferenceSession(mlps[model], backend)
    x = _x(6)
    want = s.run(None, {"x": x})
    read_only = x.copy()
    read_only.flags.writeable = False
    strided = np.zeros((12, 16), np.float32)
    strided[::2, ::2] = x
    for variant in (np.asfortranarray(x), read_only, strided[::2, ::2]):
        for a, b in zip(s.run(None, {"x": variant}), want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_dtype_names_the_input(mlps, backend):
    """float64 for a float32 input is refused, as onnxruntime refuses it."""
    s = runtime.InferenceSession(mlps["int8"], backend)
    with pytest.raises(ValueError, match="input 'x': expected dtype float32, got float64"):
        s.run(None, {"x": _x().astype(np.float64)})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("table", list(TABLES))
def test_token_ids_out_of_range_name_the_input(token_models, table, backend):
    s = runtime.InferenceSession(token_models[table], backend)
    y = s.run(None, {"ids": np.array([[5, 99, -1]], np.int64)})[0]
    np.testing.assert_array_equal(y[0, 2], y[0, 1])          # -1 is the last row, as in onnxruntime
    for bad in (5473, -101):
        with pytest.raises(IndexError) as e:
            s.run(None, {"ids": np.array([[1, bad]], np.int64)})
        assert str(bad) in str(e.value) and "'ids'" in str(e.value), str(e.value)
