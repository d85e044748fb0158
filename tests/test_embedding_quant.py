"""Quantized embedding tables: Gather on an int8 / int4_grouped table, and the converter that
writes them (kernels/reference/packed_gather.py, kernels/numba_cpu/gather.py,
kernels/native_cpu/gather.py + csrc/embedding_gather.cpp, runtime/convert/pipeline.py
find_embeddings / _pack_embeddings).

Every backend must give the reference's bits: the lookup is float32(q - zp) * scale of the
gathered rows, the same float32 product PackedTensor.to_dense() evaluates, so there is no
tolerance for the kernels. The converted models are compared with their fp32 originals with
the tolerances below.
"""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from kernels import registry
from kernels.core import layouts as L
from runtime.convert.pipeline import find_embeddings
from tests import model_zoo

CPU_BACKENDS = ("reference", "numba", "native")

# End to end, int8 tables and an int8 Linear (dynamic activations) against fp32: the table's
# error is at most half a step, max|row| / 254 per element (0.4% of a row's largest value),
# and the Linear adds its own; a cosine of 0.999 leaves a wide margin at these sizes.
INT8_MIN_COSINE = 0.999
# int4 weights and tables: steps 18x coarser (max|group| / 14 half-step).
INT4_MIN_COSINE = 0.98

# (layout, pack options): per row and per tensor, symmetric and with zero points, int4 groups
# that divide D and one that leaves a padded last group (D = 37 below)
TABLE_CASES = [
    ("int8", {}),
    ("int8", {"symmetric": False}),
    ("int8", {"per_channel": False}),
    ("int4_grouped", {"group_size": 8}),
    ("int4_grouped", {"group_size": 16, "symmetric": False}),
    ("int4_grouped", {"group_size": 64}),
]


def _table(layout: str, opts: dict, v: int = 50, d: int = 37, seed: int = 0) -> L.PackedTensor:
    rng = np.random.default_rng(seed)
    # rows of different norms, as in a real vocabulary (rare tokens have small rows)
    w = (rng.standard_normal((v, d)) * rng.uniform(0.01, 2.0, (v, 1))).astype(np.float32)
    w[3] = 0.0                                    # an all-zero row (scale 1, q = 0)
    return L.pack(layout, "table", w, **opts)


def _kernel(backend: str, t: L.PackedTensor, axis: int = 0):
    reason = registry.backend_status(backend)
    if reason is not None:
        pytest.skip(f"backend {backend} unavailable: {reason}")
    return registry.lookup("Gather", t.layout, backend)(registry.fill_attrs("Gather", {"axis": axis}), {0: t})


def _bits(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.float32
    return np.ascontiguousarray(a).view(np.uint32)


# --- kernels: every backend gives the reference's bits ---------------------------------------

@pytest.mark.isa
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout,opts", TABLE_CASES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("index_shape", [(7,), (3, 5), (1,), (0,)])
def test_lookup_is_the_dequantized_rows_bit_for_bit(backend, layout, opts, index_dtype, index_shape):
    t = _table(layout, opts)
    rng = np.random.default_rng(1)
    idx = rng.integers(-50, 50, size=index_shape).astype(index_dtype)   # negatives count from the end
    if idx.size:
        idx.reshape(-1)[0] = -1
    (got,) = _kernel(backend, t)(t, idx)
    want = t.to_dense()[np.where(idx < 0, idx + 50, idx)]
    assert got.shape == index_shape + (37,) and got.dtype == np.float32
    assert np.array_equal(_bits(got), _bits(want))
    (ref,) = _kernel("reference", t)(t, idx)
    assert np.array_equal(_bits(got), _bits(ref))


@pytest.mark.isa
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout,opts", TABLE_CASES[:1] + TABLE_CASES[3:4])
def test_the_table_is_bound_at_plan_time(backend, layout, opts):
    """The table slot of run is not read (kernels/registry.py): another table there changes nothing."""
    planned, other = _table(layout, opts, seed=0), _table(layout, opts, seed=5)
    idx = np.array([4, -2, 0], np.int64)
    (got,) = _kernel(backend, planned)(other, idx)
    assert np.array_equal(_bits(got), _bits(planned.to_dense()[[4, 48, 0]]))


@pytest.mark.isa
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout,opts", [TABLE_CASES[0], TABLE_CASES[3]])
def test_other_axis_runs_the_reference(backend, layout, opts):
    t = _table(layout, opts)
    idx = np.array([[36, 0], [-1, 5]], np.int64)
    (got,) = _kernel(backend, t, axis=1)(t, idx)
    assert np.array_equal(_bits(got), _bits(np.take(t.to_dense(), idx, axis=1)))


@pytest.mark.isa
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout,opts", [TABLE_CASES[0], TABLE_CASES[4]])
@pytest.mark.parametrize("bad,value", [([0, 50, 1], 50), ([-51], -51), ([2, 1 << 40], 1 << 40)])
def test_out_of_range_index_is_an_index_error(backend, layout, opts, bad, value):
    t = _table(layout, opts)
    run = _kernel(backend, t)
    with pytest.raises(IndexError, match=rf"index {value} is out of bounds for axis 0 with size 50 "
                                         rf"\(indices.flat\[{bad.index(value)}\] of table 'table'"):
        run(t, np.array(bad, np.int64))
    huge = np.array([1, np.iinfo(np.uint64).max], np.uint64)      # no wrap to a valid -1
    with pytest.raises(IndexError, match=f"index {np.iinfo(np.uint64).max} is out of bounds"):
        run(t, huge)
    with pytest.raises(TypeError, match="indices must be an integer array"):
        run(t, np.array([1.0, 2.0]))


@pytest.mark.isa
def test_numba_kernels_write_every_element():
    if registry.backend_status("numba") is not None:
        pytest.skip(f"numba unavailable: {registry.backend_status('numba')}")
    from kernels.numba_cpu import gather as nb
    for layout, opts in TABLE_CASES:
        t = _table(layout, opts)
        plan = nb.TablePlan(t)
        idx = np.array([5, -1, 3, 5], np.int64)
        out = np.full((4, 37), np.nan, np.float32)          # poisoned: an unwritten element fails
        if layout == "int8":
            nb._gather_int8_rows(plan.qdata, plan.scale, plan.zp, plan.has_zp, idx, out)
        else:
            nb._gather_int4_rows(plan.qdata, plan.scale, plan.zp, plan.has_zp, plan.group_size, 37, idx, out)
        assert np.array_equal(_bits(out), _bits(t.to_dense()[[5, 49, 3, 5]])), (layout, opts)


@pytest.mark.isa
def test_native_binding_writes_every_element_and_checks_its_arguments():
    if registry.backend_status("native") is not None:
        pytest.skip(f"native unavailable: {registry.backend_status('native')}")
    from kernels.native_cpu import _native
    from kernels.native_cpu.gather import TablePlan
    for layout, opts in TABLE_CASES:
        t = _table(layout, opts)
        p = TablePlan(t)
        for idx in (np.array([5, -1, 3, 5], np.int32), np.array([5, -1, 3, 5], np.int64)):
            out = np.full((4, 37), np.nan, np.float32)
            if layout == "int8":
                bad = _native.gather_int8_rows(p.qdata, p.scale, p.zero_point, idx, out)
            else:
                bad = _native.gather_int4_rows(p.qdata, p.scale, p.zero_point, 37, p.group_size, idx, out)
            assert bad == -1
            assert np.array_equal(_bits(out), _bits(t.to_dense()[[5, 49, 3, 5]])), (layout, opts)
    p = TablePlan(_table("int8", {}))
    out = np.full((2, 37), np.nan, np.float32)
    assert _native.gather_int8_rows(p.qdata, p.scale, None, np.array([1, 50], np.int64), out) == 1
    assert np.isnan(out).all()                              # nothing written before the check
    with pytest.raises(TypeError, match="indices must have dtype int32 or int64"):
        _native.gather_int8_rows(p.qdata, p.scale, None, np.array([1], np.int16), np.empty((1, 37), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        _native.gather_int8_rows(p.qdata, p.scale, None, np.array([1], np.int64), np.empty((2, 37), np.float32))
    with pytest.raises(ValueError, match="scale has shape"):
        _native.gather_int8_rows(p.qdata, p.scale[:3], None, np.array([1], np.int64), np.empty((1, 37), np.float32))
    with pytest.raises(ValueError, match="qdata has shape"):
        _native.gather_int4_rows(np.zeros((50, 3), np.uint8), np.ones((50, 1), np.float32), None, 37, 8,
                                 np.array([1], np.int64), np.empty((1, 37), np.float32))


@pytest.mark.parametrize("v,d,n", [(60, 37, 4000), (7, 20000, 5)])
def test_native_gather_on_the_work_pool_is_the_same_for_any_thread_count(v, d, n):
    # above the parallel threshold (n * d >= 65536 elements): blocks of rows (442 rows of 37;
    # one row of 20,000 at a time) go to the work pool; every thread count must write every
    # row with the table's bits, remainders of the last block included
    if registry.backend_status("native") is not None:
        pytest.skip(f"native unavailable: {registry.backend_status('native')}")
    from kernels.native_cpu import _native
    from kernels.native_cpu.gather import TablePlan
    idx = np.random.default_rng(1).integers(-v, v, n).astype(np.int64)
    before = _native.get_threads()
    try:
        for layout, opts in TABLE_CASES:
            t = _table(layout, opts, v=v, d=d)
            p = TablePlan(t)
            want = _bits(t.to_dense()[idx])
            for nt in (1, 2, 3):
                _native.set_threads(nt)
                out = np.full((n, d), np.nan, np.float32)
                if layout == "int8":
                    bad = _native.gather_int8_rows(p.qdata, p.scale, p.zero_point, idx, out)
                else:
                    bad = _native.gather_int4_rows(p.qdata, p.scale, p.zero_point, d, p.group_size, idx, out)
                assert bad == -1
                assert np.array_equal(_bits(out), want), (layout, opts, nt)
    finally:
        _native.set_threads(before)


def test_reference_takes_a_sparse_table():
    # a Linear weight shared with a Gather may be packed sparse; the same definition covers it
    w = np.random.default_rng(2).standard_normal((12, 8)).astype(np.float32)
    t = L.pack("csr", "table", w, np.abs(w) > 0.5, quant="int8")
    idx = np.array([[11, 0], [-3, 4]])
    (got,) = _kernel("reference", t)(t, idx)
    assert np.array_equal(_bits(got), _bits(t.to_dense()[[[11, 0], [9, 4]]]))


# --- the converter ------------------------------------------------------------------------------

V, D, TYPES, OUT = 256, 64, 3, 8


def _embedding_model(nan_in_word: bool = False) -> tuple[bytes, dict[str, np.ndarray]]:
    """ids and ids2 both look up ``word`` (one table, two Gathers), type_ids looks up ``types``;
    the sum goes through a Linear (MatMul + Add). Returns (ONNX bytes, {name: fp32 array})."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    arrays = {"word": (rng.standard_normal((V, D)) * rng.uniform(0.05, 1.0, (V, 1))).astype(np.float32),
              "types": rng.standard_normal((TYPES, D)).astype(np.float32),
              "w": (rng.standard_normal((D, OUT)) / np.sqrt(D)).astype(np.float32),
              "b": rng.standard_normal(OUT).astype(np.float32)}
    if nan_in_word:
        arrays["word"][5, 2] = np.nan
    nodes = [helper.make_node("Gather", ["word", "ids"], ["e1"], name="word_lookup"),
             helper.make_node("Gather", ["word", "ids2"], ["e2"], name="word_lookup_again"),
             helper.make_node("Gather", ["types", "type_ids"], ["e3"], name="type_lookup"),
             helper.make_node("Add", ["e1", "e2"], ["s1"], name="add1"),
             helper.make_node("Add", ["s1", "e3"], ["s2"], name="add2"),
             helper.make_node("MatMul", ["s2", "w"], ["mm"], name="proj"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="proj_bias")]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("ids", "ids2", "type_ids")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", OUT])
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    return model_zoo.onnx_model(nodes, ids, [y], inits), arrays


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(-V, V, (2, 6)), "ids2": rng.integers(0, V, (2, 6)),
            "type_ids": rng.integers(0, TYPES, (2, 6))}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _outputs(graph, backend: str = "auto") -> list[np.ndarray]:
    sess = runtime.InferenceSession(graph, backend=backend)
    return [sess.run(None, _feeds(s))[0] for s in range(3)]


def test_find_embeddings_packs_a_shared_table_once():
    data, _ = _embedding_model()
    found = find_embeddings(runtime.convert(data))
    assert [(e.table, e.nodes, e.shape) for e in found] == [
        ("word", ["word_lookup", "word_lookup_again"], (V, D)), ("types", ["type_lookup"], (TYPES, D))]


def test_int8_tables_make_a_smaller_file_with_close_outputs(tmp_path):
    data, arrays = _embedding_model()
    fp32 = runtime.convert(data, tmp_path / "fp32.qrt")
    lines = []
    q = runtime.convert(data, tmp_path / "int8.qrt", quant="int8", progress=lines.append)
    for name in ("word", "types"):
        t = q.initializers[name]
        assert t.layout == "int8" and t.params == {"per_channel": True, "symmetric": True}
        assert t.fields["scale"].shape == (arrays[name].shape[0],)          # one scale per row
    assert (tmp_path / "int8.qrt").stat().st_size < 0.5 * (tmp_path / "fp32.qrt").stat().st_size
    # the report: one row per table, bytes, and the table's own dequantization error
    rows = {r["name"]: r for r in q.metadata["report"]["embeddings"]}
    assert rows["word"]["nodes"] == ["word_lookup", "word_lookup_again"] and rows["word"]["layout"] == "int8"
    assert rows["word"]["bytes"] == V * D + 4 * V and rows["word"]["fp32_bytes"] == V * D * 4
    step = np.abs(arrays["word"]).max(axis=1) / 127
    assert 0 < rows["word"]["max_abs_error"] <= step.max() / 2 * (1 + 1e-6)
    assert rows["word"]["sqnr_db"] > 30
    assert q.metadata["report"]["totals"]["embedding_bytes"] == sum(r["bytes"] for r in rows.values())
    assert any(line.startswith("[embedding 1/2] word 256x64: int8") for line in lines)
    assert any("embedding table" in line and "max abs err" in line for line in lines)   # the report table
    # end to end, loaded back from the file, on every CPU backend
    want = _outputs(fp32)
    loaded = runtime.InferenceSession(str(tmp_path / "int8.qrt"))
    assert [p.layout for p in loaded.plan if p.op == "Gather"] == ["int8", "int8", "int8"]
    for backend in CPU_BACKENDS:
        if registry.backend_status(backend) is not None:
            continue
        got = _outputs(str(tmp_path / "int8.qrt"), backend)
        assert min(_cosine(g, w) for g, w in zip(got, want)) >= INT8_MIN_COSINE, backend


@pytest.mark.parametrize("pattern,kept", [("word", "word"), ("word_lookup_again", "word"),
                                          ("type_*", "types"), ("typ*", "types")])
def test_keep_fp32_excludes_a_table(pattern, kept):
    data, arrays = _embedding_model()
    q = runtime.convert(data, quant="int8", keep_fp32=[pattern])
    assert q.initializers[kept].layout == "dense"
    assert np.array_equal(q.initializers[kept].fields["data"], arrays[kept])
    other = ({"word", "types"} - {kept}).pop()
    assert q.initializers[other].layout == "int8"
    (linear,) = [n for n in q.nodes if n.op == "Linear"]
    assert q.initializers[linear.inputs[1]].layout == "int8"
    row = next(r for r in q.metadata["report"]["embeddings"] if r["name"] == kept)
    assert row["layout"] == "dense" and row["note"] == f"kept fp32 (--keep-fp32 {pattern})"


def test_patterns_that_match_nothing_or_only_a_table_for_pruning_are_refused():
    data, _ = _embedding_model()
    with pytest.raises(ValueError, match="matches no layer or embedding table.*embedding tables are: word, types"):
        runtime.convert(data, quant="int8", keep_fp32=["nothing*"])
    # tables are never pruned: --skip / --layer-sparsity name layers only
    with pytest.raises(ValueError, match=r"skip \(--skip\) pattern 'word' matches no layer"):
        runtime.convert(data, quant="int8", prune="magnitude", sparsity=0.5, skip=["word"])


@pytest.mark.parametrize("options,layout,zero_point", [
    ({"quant": "int4", "group_size": 16, "embed_quant": "int4"}, "int4_grouped", False),
    ({"quant": "int4", "group_size": 32, "symmetric": False, "embed_quant": "int4"}, "int4_grouped", True),
    ({"quant": "int4", "group_size": 32}, "int8", False),          # auto: int8 tables under int4 layers
    ({"quant": "int8", "embed_quant": "none"}, "dense", False),
    ({"quant": "int8", "symmetric": False}, "int8", True),
    ({"quant": "int8", "per_channel": False}, "int8", False),
    ({"quant": "int8", "prune": "magnitude", "sparsity": 0.5}, "int8", False),
])
def test_int4_asymmetric_and_pruned_conversions(options, layout, zero_point):
    data, arrays = _embedding_model()
    # against the same model unquantized (pruned alike, when pruned: the mask is magnitude's,
    # the same with or without quantization), so the floor measures the quantization
    fp32 = runtime.convert(data, **{k: v for k, v in options.items() if k in ("prune", "sparsity")})
    q = runtime.convert(data, **options)
    for name in ("word", "types"):
        t = q.initializers[name]
        assert t.layout == layout and ("zero_point" in t.fields) == zero_point
        if layout == "dense":
            continue
        if layout == "int4_grouped":
            assert t.params["group_size"] == options["group_size"]
            assert t.fields["scale"].shape == (arrays[name].shape[0], D // options["group_size"])
        else:
            assert t.fields["scale"].shape == (arrays[name].shape[0],)      # per row, even per_channel=False
            assert np.count_nonzero(t.fields["qdata"]) > 0.9 * t.fields["qdata"].size   # never pruned
    floor = INT4_MIN_COSINE if options["quant"] == "int4" else INT8_MIN_COSINE
    got, want = _outputs(q), _outputs(fp32)
    assert min(_cosine(g, w) for g, w in zip(got, want)) >= floor


def test_a_table_with_nan_is_refused_unless_kept_fp32(tmp_path):
    data, _ = _embedding_model(nan_in_word=True)
    with pytest.raises(ValueError, match="embedding table 'word' .* has 1 NaN/Inf value"):
        runtime.convert(data, tmp_path / "m.qrt", quant="int8")
    assert not (tmp_path / "m.qrt").exists()
    q = runtime.convert(data, quant="int8", keep_fp32=["word"])
    assert q.initializers["word"].layout == "dense" and q.initializers["types"].layout == "int8"


def test_quant_none_leaves_tables_fp32():
    data, _ = _embedding_model()
    q = runtime.convert(data, prune="magnitude", sparsity=0.5)
    assert {q.initializers[n].layout for n in ("word", "types")} == {"dense"}
    assert q.metadata["report"]["embeddings"] == []


def test_torch_embedding_model():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 24)
            self.fc = nn.Linear(24, 5)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    m = Tagger()
    model_zoo.randomize_(m, seed=4)
    ids = torch.randint(0, 40, (2, 7))
    data = model_zoo.export(m, (ids,), input_names=["ids"], output_names=["y"],
                            dynamic_axes={"ids": {0: "batch", 1: "seq"}})
    q = runtime.convert(data, quant="int8")
    (e,) = find_embeddings(runtime.convert(data))
    assert q.initializers[e.table].layout == "int8" and e.shape == (40, 24)
    feeds = {"ids": np.random.default_rng(0).integers(0, 40, (3, 9))}
    with torch.no_grad():
        want = m(torch.from_numpy(feeds["ids"])).numpy()
    (got,) = runtime.InferenceSession(q).run(None, feeds)
    assert _cosine(got, want) >= INT8_MIN_COSINE
