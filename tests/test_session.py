"""InferenceSession: the onnxruntime-shaped API, feed validation, backends, planning.

Models are tiny ONNX graphs built with onnx.helper (no torch), converted in memory.
"""
from __future__ import annotations

import weakref

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import runtime  # noqa: E402
from kernels import registry  # noqa: E402
from runtime import InferenceSession  # noqa: E402
from runtime.convert import from_onnx  # noqa: E402
from runtime.graph import Graph, Node, Value  # noqa: E402

from tests.model_zoo import onnx_model as _model  # noqa: E402
from tests.model_zoo import small_mlp_numpy as mlp_numpy  # noqa: E402
from tests.model_zoo import small_mlp_onnx as mlp_onnx  # noqa: E402

RNG = np.random.default_rng(0)


def two_input_onnx() -> bytes:
    """a[batch, 4] and b[batch, 4] -> y = (a + b) * a."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("Mul", ["s", "a"], ["y"], name="mul")]
    return _model(nodes, [helper.make_tensor_value_info("a", f, ["batch", 4]),
                          helper.make_tensor_value_info("b", f, ["batch", 4])],
                  [helper.make_tensor_value_info("y", f, ["batch", 4])])


def chain_onnx(depth: int = 6) -> bytes:
    """x[batch, 8] -> depth x (Relu, Neg) alternating -> Softmax -> y: a chain whose every
    intermediate is read exactly once, by the next node."""
    f = TensorProto.FLOAT
    nodes, x = [], "x"
    for k in range(depth):
        nodes.append(helper.make_node("Relu" if k % 2 == 0 else "Neg", [x], [f"t{k}"], name=f"n{k}"))
        x = f"t{k}"
    nodes.append(helper.make_node("Softmax", [x], ["y"], axis=-1, name="softmax"))
    return _model(nodes, [helper.make_tensor_value_info("x", f, ["batch", 8])],
                  [helper.make_tensor_value_info("y", f, ["batch", 8])])


@pytest.fixture(scope="module")
def mlp_graph():
    return from_onnx(mlp_onnx(), name="mlp")


@pytest.fixture(scope="module")
def mlp(mlp_graph):
    return InferenceSession(mlp_graph, backend="reference")


@pytest.fixture(scope="module")
def two():
    return InferenceSession(from_onnx(two_input_onnx()), backend="reference")


def feed(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 8), dtype=np.float32)


# --------------------------------------------------------------------------- the API -----

def test_run_all_outputs_matches_numpy(mlp):
    x = feed(3)
    y, h = mlp.run(None, {"x": x})
    want_y, want_h = mlp_numpy(x)
    assert y.dtype == np.float32 and h.dtype == np.float32
    assert y.shape == (3, 5) and h.shape == (3, 16)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5)


def test_run_named_outputs(mlp):
    x = feed(4)
    want_y, want_h = mlp_numpy(x)
    (h,) = mlp.run(["h"], {"x": x})
    np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5)
    (y,) = mlp.run(["y"], {"x": x})
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    h2, y2 = mlp.run(["h", "y"], {"x": x})  # order as asked, not as declared
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(y2, y)
    assert mlp.run([], {"x": x}) == []


def test_get_inputs_outputs(mlp):
    (i,) = mlp.get_inputs()
    assert (i.name, i.shape, i.dtype, i.type) == ("x", ["batch", 8], "float32", "tensor(float)")
    outs = mlp.get_outputs()
    assert [(o.name, o.shape, o.dtype, o.type) for o in outs] == [
        ("y", ["batch", 5], "float32", "tensor(float)"), ("h", ["batch", 16], "float32", "tensor(float)")]
    # the lists are copies: mutating them does not change the session
    mlp.get_inputs().clear()
    assert len(mlp.get_inputs()) == 1


def test_node_args_match_onnxruntime(mlp):
    ort = pytest.importorskip("onnxruntime")
    for data, sess in ((mlp_onnx(), mlp), (two_input_onnx(), None)):
        sess = sess or InferenceSession(from_onnx(data), backend="reference")
        ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        for ours, theirs in ((sess.get_inputs(), ref.get_inputs()), (sess.get_outputs(), ref.get_outputs())):
            assert [(a.name, list(a.shape), a.type) for a in ours] == \
                   [(a.name, list(a.shape), a.type) for a in theirs]


def test_results_match_onnxruntime(mlp):
    ort = pytest.importorskip("onnxruntime")
    ref = ort.InferenceSession(mlp_onnx(), providers=["CPUExecutionProvider"])
    x = feed(5)
    for g, w in zip(mlp.run(None, {"x": x}), ref.run(None, {"x": x})):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch(mlp, batch):
    x = feed(batch, seed=batch)
    y, h = mlp.run(None, {"x": x})
    assert y.shape == (batch, 5) and h.shape == (batch, 16)
    want_y, _ = mlp_numpy(x)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)


def test_dynamic_batch_interleaved_in_one_session(mlp):
    xs = [feed(b, seed=b) for b in (1, 7, 64, 7, 1)]
    for x in xs:
        np.testing.assert_allclose(mlp.run(["y"], {"x": x})[0], mlp_numpy(x)[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- feed checks -----

def _err(sess, feeds, *fragments, exc=ValueError, output_names=None):
    with pytest.raises(exc) as info:
        sess.run(output_names, feeds)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_missing_input(two):
    a = np.ones((2, 4), np.float32)
    # names the missing input, what it expects, and what was given
    _err(two, {"a": a}, "missing input 'b'", "float32", "[batch, 4]", "'a'")
    _err(two, {}, "missing input 'a'", "float32", "empty")


def test_unknown_input(two):
    a = np.ones((2, 4), np.float32)
    _err(two, {"a": a, "b": a, "c": a}, "unknown input 'c'", "a, b")


def test_wrong_dtype(mlp):
    _err(mlp, {"x": feed(2).astype(np.float64)}, "'x'", "float32", "float64")
    _err(mlp, {"x": feed(2).astype(np.int64)}, "'x'", "float32", "int64")


def test_python_list_feed_is_converted_then_checked(two):
    # a list becomes float64 by numpy's rules: refused, not silently cast
    _err(two, {"a": [[1.0] * 4], "b": [[1.0] * 4]}, "'a'", "float32", "float64")


def test_wrong_rank(mlp):
    _err(mlp, {"x": np.ones((2, 8, 1), np.float32)}, "'x'", "rank 2", "rank 3", "[batch, 8]", "[2, 8, 1]")
    _err(mlp, {"x": np.ones(8, np.float32)}, "'x'", "rank 2", "rank 1")


def test_fixed_dim_mismatch(mlp):
    _err(mlp, {"x": np.ones((2, 9), np.float32)}, "'x'", "dimension 1", "must be 8", "got 9")


def test_symbolic_dim_mismatch_between_inputs(two):
    msg = _err(two, {"a": np.ones((3, 4), np.float32), "b": np.ones((5, 4), np.float32)},
               "'batch'", "'a'", "'b'")
    assert "3" in msg and "5" in msg


def test_unknown_output_name(mlp):
    _err(mlp, {"x": feed(1)}, "unknown output 'nope'", "y", "h", output_names=["nope"])
    # an intermediate value is not an output
    _err(mlp, {"x": feed(1)}, "unknown output", output_names=[mlp._graph.nodes[0].outputs[0]])


@pytest.mark.parametrize("bad", [[("x", None)], None, "x", 3])
def test_feeds_not_a_dict(mlp, bad):
    with pytest.raises(TypeError, match="input_feed"):
        mlp.run(None, bad)


def test_no_error_leaves_the_session_unusable(mlp):
    with pytest.raises(ValueError):
        mlp.run(None, {"x": np.ones((2, 9), np.float32)})
    x = feed(2)
    np.testing.assert_allclose(mlp.run(["y"], {"x": x})[0], mlp_numpy(x)[0], rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------- backends -----

def test_available_backends_lists_every_backend():
    avail = runtime.available_backends()
    assert list(avail) == list(registry.BACKENDS)
    for name, reason in avail.items():
        assert reason is None or (isinstance(reason, str) and reason.strip()), (name, reason)
    assert avail["reference"] is None


def test_reference_backend_plan(mlp, mlp_graph):
    plan = InferenceSession(mlp_graph, backend="reference", fuse=False).plan
    assert [(p.name, p.op) for p in plan] == [(n.name, n.op) for n in mlp_graph.nodes]
    assert [p.op for p in plan] == ["Linear", "Relu", "Linear", "Softmax"]
    # fused (the default): the Relu becomes the first Linear's epilogue (runtime/fuse.py)
    assert [(p.name, p.op) for p in mlp.plan] == [(n.name, n.op) for n in mlp_graph.nodes if n.op != "Relu"]
    for p in plan + mlp.plan:
        assert p.layout == "dense" and p.backend == "reference"
    assert mlp.backend == "reference"


def test_auto_backend_plan_uses_available_backends(mlp_graph):
    sess = InferenceSession(mlp_graph)
    assert sess.backend == "auto"
    avail = runtime.available_backends()
    for p in sess.plan:
        assert p.backend in registry.AUTO_ORDER and avail[p.backend] is None
    x = feed(3)
    np.testing.assert_allclose(sess.run(["y"], {"x": x})[0], mlp_numpy(x)[0], rtol=1e-4, atol=1e-5)


def test_unknown_backend(mlp_graph):
    with pytest.raises(ValueError) as info:
        InferenceSession(mlp_graph, backend="tpu")
    msg = str(info.value)
    assert "'tpu'" in msg
    for name in registry.BACKENDS:
        assert name in msg


@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_unavailable_backend_is_refused_with_the_reason(mlp_graph, backend):
    reason = runtime.available_backends()[backend]
    if reason is None:
        pytest.skip(f"{backend} is available here")
    with pytest.raises(ValueError) as info:
        InferenceSession(mlp_graph, backend=backend)
    assert backend in str(info.value) and reason in str(info.value)


def test_disabled_backend_is_unavailable_with_the_reason_and_auto_goes_without_it(mlp_graph, monkeypatch):
    """QRT_DISABLE_BACKENDS (the sanitizer run sets numba, whose JIT under ASan takes minutes):
    the named backends report why, "auto" plans without them, the reference cannot be disabled."""
    monkeypatch.setenv("QRT_DISABLE_BACKENDS", "numba, native,reference")
    monkeypatch.setattr(registry, "_STATUS", {})     # statuses are cached per process
    avail = runtime.available_backends()
    assert avail["numba"] == avail["native"] == "disabled by QRT_DISABLE_BACKENDS"
    assert avail["reference"] is None
    sess = InferenceSession(mlp_graph)
    assert {p.backend for p in sess.plan} == {"reference"}
    with pytest.raises(ValueError, match="disabled by QRT_DISABLE_BACKENDS"):
        InferenceSession(mlp_graph, backend="numba")


# -------------------------------------------------------------------------- planning -----

def _last_uses(sess) -> dict[int, int]:
    last = {}
    for k, step in enumerate(sess._steps):
        for s in step.ins:
            last[s] = k
    return last


@pytest.mark.parametrize("model", ["mlp", "chain", "two"])
def test_each_intermediate_is_freed_once_after_its_last_use(model):
    data = {"mlp": mlp_onnx, "chain": chain_onnx, "two": two_input_onnx}[model]()
    graph = from_onnx(data)
    sess = InferenceSession(graph, backend="reference")
    slots = sess._slots
    constants = {slots[n] for n in graph.initializers}
    outputs = {slots[v.name] for v in graph.outputs}
    transient = {s for n, s in slots.items() if n and s not in constants and s not in outputs}
    assert transient, "the model should have intermediates"
    freed = [s for step in sess._steps for s in step.frees]
    assert sorted(freed) == sorted(transient)  # each exactly once, and nothing else
    last = _last_uses(sess)
    for k, step in enumerate(sess._steps):
        for s in step.frees:
            assert last.get(s, k) == k  # freed right after its last reader, not later


def test_intermediates_are_released_during_run():
    """Watch the arrays themselves: while node k runs, every intermediate whose last reader
    came before k must already be garbage (numpy arrays support weak references)."""
    graph = from_onnx(chain_onnx(depth=8))
    sess = InferenceSession(graph, backend="reference")
    last = _last_uses(sess)
    out_slots = {sess._slots[v.name] for v in graph.outputs}
    refs: dict[int, weakref.ref] = {}
    checked = []

    def wrap(k, run, outs):
        def step(*args):
            for s, r in refs.items():
                if s not in out_slots and last[s] < k - 1:
                    # the session's loop variable still holds step k-1's results tuple
                    assert r() is None, f"slot {s} (last read by step {last[s]}) still alive at step {k}"
                    checked.append(s)
            results = run(*args)
            for s, r in zip(outs, results):
                refs[s] = weakref.ref(r)
            return results
        return step

    sess._steps = [st._replace(run=wrap(k, st.run, st.outs)) for k, st in enumerate(sess._steps)]
    x = feed(16)
    sess.run(None, {"x": x})
    assert len(set(checked)) >= 5
    assert all(r() is None for s, r in refs.items() if s not in out_slots)


def test_repeated_runs_are_identical(mlp):
    x = feed(9)
    first = mlp.run(None, {"x": x})
    for _ in range(3):
        again = mlp.run(None, {"x": x})
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
    # results of an earlier run are not overwritten by a later one (no shared output buffers)
    y0 = first[0].copy()
    mlp.run(None, {"x": feed(9, seed=99)})
    np.testing.assert_array_equal(first[0], y0)


def test_inputs_are_not_modified(mlp, two):
    x = feed(6)
    keep = x.copy()
    x.flags.writeable = False
    y, _ = mlp.run(None, {"x": x})
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(y, mlp_numpy(keep)[0], rtol=1e-5, atol=1e-6)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    a0, b0 = a.copy(), b.copy()
    a.flags.writeable = b.flags.writeable = False
    (out,) = two.run(None, {"a": a, "b": b})
    np.testing.assert_array_equal(out, (a0 + b0) * a0)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_non_contiguous_inputs(mlp):
    big = feed(10)
    x = big[::2]  # strided view
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(mlp.run(["y"], {"x": x})[0], mlp_numpy(np.ascontiguousarray(x))[0],
                               rtol=1e-5, atol=1e-6)
    xf = np.asfortranarray(feed(4))
    np.testing.assert_allclose(mlp.run(["y"], {"x": xf})[0], mlp_numpy(xf)[0], rtol=1e-5, atol=1e-6)


def test_outputs_are_owned_by_the_caller():
    """An output that is an input passed through (Identity), a view of it (Reshape) or a
    constant is still a fresh, writeable array, as onnxruntime returns."""
    f = TensorProto.FLOAT
    data = _model(
        [helper.make_node("Identity", ["x"], ["same"], name="id"),
         helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape")],
        [helper.make_tensor_value_info("x", f, ["batch", 4])],
        [helper.make_tensor_value_info("same", f, ["batch", 4]),
         helper.make_tensor_value_info("flat", f, ["n"]),
         helper.make_tensor_value_info("const", f, [3])],
        [numpy_helper.from_array(np.array([-1], np.int64), "shape"),
         numpy_helper.from_array(np.arange(3, dtype=np.float32), "const")])
    sess = InferenceSession(from_onnx(data), backend="reference")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    same, flat, const = sess.run(None, {"x": x})
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(flat, x.reshape(-1))
    np.testing.assert_array_equal(const, [0, 1, 2])
    for out in (same, flat, const):
        assert out.flags.writeable and not np.shares_memory(out, x)
        out[...] = -1
    np.testing.assert_array_equal(x, np.arange(8, dtype=np.float32).reshape(2, 4))
    np.testing.assert_array_equal(sess.run(["const"], {"x": x})[0], [0, 1, 2])


# ---------------------------------------------------------------------- construction -----

def test_session_from_path_and_from_graph_agree(tmp_path, mlp_graph, mlp):
    path = tmp_path / "mlp.qrt"
    runtime.save(mlp_graph, path)
    x = feed(11)
    for sess in (InferenceSession(path, backend="reference"), InferenceSession(str(path), backend="reference")):
        assert [(i.name, i.shape, i.dtype) for i in sess.get_inputs()] == \
               [(i.name, i.shape, i.dtype) for i in mlp.get_inputs()]
        for a, b in zip(sess.run(None, {"x": x}), mlp.run(None, {"x": x})):
            np.testing.assert_array_equal(a, b)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(OSError):
        InferenceSession(tmp_path / "nope.qrt")


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_threads_are_rejected(mlp_graph, threads):
    with pytest.raises(ValueError, match="threads"):
        InferenceSession(mlp_graph, backend="reference", threads=threads)


def test_threads(mlp_graph):
    assert InferenceSession(mlp_graph, backend="reference", threads=2).threads == 2
    assert InferenceSession(mlp_graph, backend="reference").threads >= 1


# ------------------------------------------------------------ shape-only value cache -----

def _shape_graph() -> Graph:
    """y = x + ConstantOfShape(Shape(x)) * 2 (shape-only), z = Shape(Reshape(x, target))
    (target is an input: its *values* give the shape, so z must never come from the cache),
    s = Shape(x) (an output that is a cached value)."""
    from kernels.core.layouts import dense_tensor
    two = dense_tensor("two", np.array(2.0, np.float32))
    nodes = [Node("shape", "Shape", ["x"], ["s"]),
             Node("ones", "ConstantOfShape", ["s"], ["c"], {"value": 1.0, "dtype": "float32"}),
             Node("twice", "Mul", ["c", "two"], ["c2"]),
             Node("add", "Add", ["x", "c2"], ["y"]),
             Node("reshape", "Reshape", ["x", "target"], ["r"]),
             Node("rshape", "Shape", ["r"], ["z"])]
    g = Graph("shapes", [Value("x", "float32", ("a", "b")), Value("target", "int64", (2,))],
              [Value("y", "float32", ("a", "b")), Value("z", "int64", (2,)), Value("s", "int64", (2,))],
              nodes, {"two": two})
    g.validate()
    return g


def test_shape_only_values_are_cached_per_input_shape():
    sess = InferenceSession(_shape_graph(), backend="reference")
    assert len(sess._steps) == 6 and len(sess._shape_cache.value_steps) == 3          # add, reshape, rshape: not shape-only
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for target, want_z in (([3, 2], [3, 2]), ([6, 1], [6, 1]), ([1, 6], [1, 6])):
        y, z, s = sess.run(None, {"x": x, "target": np.array(target, np.int64)})
        np.testing.assert_array_equal(y, x + 2)
        np.testing.assert_array_equal(z, want_z)       # value-shaped: recomputed every run
        np.testing.assert_array_equal(s, [2, 3])
        s[0] = 99                                      # the caller's copy, not the cache's
    assert len(sess._shape_cache) == 1
    x2 = np.ones((4, 1), np.float32)
    y, z, s = sess.run(None, {"x": x2, "target": np.array([2, 2], np.int64)})
    np.testing.assert_array_equal(y, x2 + 2)
    np.testing.assert_array_equal(s, [4, 1])
    assert len(sess._shape_cache) == 2


def test_profile_times_every_planned_node(mlp):
    x = np.ones((3, 8), np.float32)
    prof = mlp.profile({"x": x}, repeats=3)
    assert [p for p, _ in prof] == mlp.plan
    assert all(t >= 0 for _, t in prof)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        mlp.profile({"x": x}, repeats=0)


@pytest.mark.parametrize("backend", ["reference", "numba", "native"])
def test_sessions_of_one_file_share_their_prepared_weights(tmp_path, backend):
    """issue 16: many sessions of one file in one process prepare (repack) each weight once;
    a file with other weights of the same shapes gets its own; the shared plans go with the
    last session holding them."""
    import gc

    from kernels import gemm_front
    if registry.backend_status(backend) is not None:
        pytest.skip(registry.backend_status(backend))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    a, b = tmp_path / "a.qrt", tmp_path / "b.qrt"
    import onnx
    from_onnx(mlp_onnx(), a, quant="int8")
    other = onnx.load_from_string(mlp_onnx())          # the same model with other weights
    for t in other.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5 + 0.01, t.name))
    from_onnx(other.SerializeToString(), b, quant="int8")
    gc.collect()
    before = len(gemm_front._SHARED)
    s1 = InferenceSession(a, backend=backend, plan="off")
    y1 = s1.run(None, {"x": x})
    one = len(gemm_front._SHARED) - before
    assert one >= 2                                     # the MLP's Linear layers
    s2 = InferenceSession(a, backend=backend, plan="off")
    assert len(gemm_front._SHARED) - before == one      # nothing prepared again
    for got, want in zip(s2.run(None, {"x": x}), y1):
        np.testing.assert_array_equal(got, want)
    s3 = InferenceSession(b, backend=backend, plan="off")   # other bytes: its own plans
    assert len(gemm_front._SHARED) - before == 2 * one
    assert not np.array_equal(s3.run(None, {"x": x})[0], y1[0])
    del s1, s2, s3
    gc.collect()
    assert len(gemm_front._SHARED) == before


def test_a_feed_that_needs_more_memory_than_is_left_is_refused_before_running(tmp_path, monkeypatch):
    """issue 16: the estimate (the widest layer's output over every row) against the memory
    this process may still use; refused with MemoryError naming the need, nothing run."""
    from runtime import feeds
    path = tmp_path / "m.qrt"
    from_onnx(mlp_onnx(), path, quant="int8")
    sess = InferenceSession(path)
    x = np.ones((1000, 8), np.float32)                     # 1000 rows x 16 (the widest Linear) x 4 B
    monkeypatch.setattr(feeds, "MEMORY_CHECK_BYTES", 0)
    monkeypatch.setattr(feeds, "available_memory", lambda: 10_000)
    ran = []
    monkeypatch.setattr(runtime.session, "execute", lambda *a, **k: ran.append(1))
    with pytest.raises(MemoryError, match=r"needs at least 0\.0 GiB \(1,000 rows x 16 values of the widest layer\) "
                                          r"for feeds of shape 1000x8, more than the 0\.0 GiB"):
        sess.run(None, {"x": x})
    assert ran == []
    monkeypatch.setattr(feeds, "available_memory", lambda: 1 << 40)
    sess.run(None, {"x": x})
    assert ran == [1]
