"""numba sparse (csr, bsr, nm) and int4_grouped Linear / Conv against the reference kernels.

Every comparison is with the reference kernel of the same (op, layout) on the same packed
weight (registry.lookup(op, layout, "reference")), never with another fast kernel. Weights are
packed by kernels.core.layouts from fresh random weights and masks of runtime.convert.prune.

Tolerances (why these values):

* act_quant "dynamic" / "static": the kernels compute the exact integer accumulator and the
  reference's float64 epilogue in the same order, so the results are identical bits
  (compared with np.array_equal).
* act_quant "none": both sides sum exact float64 products (a product of two float32 is exact
  in float64) in float64, in different orders, and round once to the output dtype. Each
  order's float64 sum is within K * 2^-53 * sum|x w| of the exact one (the classical bound of
  a recursive sum), so the two sums differ by at most FLOAT64_SUM_ERR_PER_TERM * K *
  sum|x w|, and rounding each to the output dtype can put them one ulp apart: FLOAT_ULPS
  units of the output's eps relative to |ref|.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from kernels import registry
from kernels.core import layouts
from tests.sparse_cases import pack_sparse_case

_REASON = registry.backend_status("numba")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"numba backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.numba_cpu import int4 as int4_mod
    from kernels.numba_cpu import sparse
    from kernels.numba_cpu.quant import quantize_rows_dynamic, quantize_static

# two float64 summation orders, each within K * 2^-53 * sum|x w| of the exact sum
FLOAT64_SUM_ERR_PER_TERM = 2.0 ** -52
# the two float64 sums may round to adjacent values of the output dtype
FLOAT_ULPS = 1.0

STATIC = {"act_quant": "static", "act_scale": 0.037, "act_zero_point": -7}
ACTS = {"none": {"act_quant": "none"}, "dynamic": {"act_quant": "dynamic"}, "static": STATIC,
        "static_z0": {"act_quant": "static", "act_scale": 0.05, "act_zero_point": 0}}


def _rng(*key) -> np.random.Generator:
    """A fresh generator per test case, reproducible across runs (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _kernels(op, t, attrs):
    full = registry.fill_attrs(op, attrs)
    return (registry.lookup(op, t.layout, "reference")(full, {1: t}),
            registry.lookup(op, t.layout, "numba")(full, {1: t}))


def _float_tol(x2, t, ref, k):
    """Allowed |y - ref| for act "none" (module docstring)."""
    dense = np.abs(t.to_dense().reshape(t.shape[0], -1).astype(np.float64))
    mag = np.abs(x2.astype(np.float64)) @ dense.T
    eps = np.finfo(ref.dtype).eps
    return FLOAT_ULPS * eps * np.abs(ref.astype(np.float64)) + FLOAT64_SUM_ERR_PER_TERM * k * mag


def _assert_linear(t, attrs, x, bias=None):
    ref_run, fast_run = _kernels("Linear", t, attrs)
    y_ref = ref_run(x, t, bias)[0]
    y = fast_run(x, t, bias)[0]
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    if attrs.get("act_quant", "none") != "none":
        assert np.array_equal(y, y_ref), f"max |diff| {np.max(np.abs(y.astype(np.float64) - y_ref))}"
        return y
    k = t.to_dense().reshape(t.shape[0], -1).shape[1]
    x2 = x.reshape(-1, k)
    tol = _float_tol(x2, t, y_ref.reshape(-1, t.shape[0]), k)
    if bias is not None:
        tol = tol + np.finfo(y_ref.dtype).eps * np.abs(np.asarray(bias, np.float64))
    err = np.abs(y.reshape(tol.shape).astype(np.float64) - y_ref.reshape(tol.shape))
    assert np.all(err <= tol), f"max err/tol {np.max(err / np.maximum(tol, 1e-300))}"
    return y


def _x(rng, shape, dtype=np.float32):
    x = (rng.standard_normal(shape) * 1.5).astype(dtype)
    if x.ndim >= 2 and x.shape[0] > 2:
        x[1] = 0                                  # an all-zero row: s_x = 1, qx = 0
    return x


# --- Linear: every layout, pattern, mode and awkward shape ----------------------------------------

SPARSE_CASES = [  # (layout, kind, block, nm, N, K)
    ("csr", "magnitude0.7", None, None, 33, 200),
    ("csr", "magnitude0.9", None, None, 64, 700),
    ("csr", "magnitude0.95", None, None, 16, 144),
    ("csr", "dense", None, None, 17, 100),
    ("csr", "all_pruned", None, None, 9, 70),
    ("csr", "empty_rows", None, None, 40, 130),
    ("csr", "explicit_zeros", None, None, 20, 60),
    ("csr", "magnitude0.7", None, None, 1, 64),           # N = 1
    ("csr", "magnitude0.5", None, None, 5, 1),            # K = 1
    ("bsr", "block", (1, 4), None, 33, 136),
    ("bsr", "block", (4, 4), None, 36, 200),
    ("bsr", "block", (2, 8), None, 18, 72),
    ("bsr", "block", (16, 1), None, 48, 90),
    ("bsr", "block", (1, 16), None, 20, 144),
    ("bsr", "block", (3, 2), None, 21, 30),
    ("bsr", "zero_blocks", (4, 4), None, 32, 64),
    ("bsr", "all_pruned", (1, 4), None, 8, 16),
    ("nm", "nm", None, (2, 4), 33, 200),
    ("nm", "nm", None, (1, 4), 16, 132),
    ("nm", "nm", None, (2, 8), 7, 64),
]


def _case_id(c):
    layout, kind, block, nm, n, k = c
    extra = f"{block[0]}x{block[1]}" if block else (f"{nm[0]}of{nm[1]}" if nm else "")
    return f"{layout}-{kind}{extra}-N{n}-K{k}"


@pytest.mark.parametrize("case", SPARSE_CASES, ids=_case_id)
@pytest.mark.parametrize("act", ["none", "dynamic", "static"])
@pytest.mark.parametrize("m", [1, 2, 16, 33])
def test_sparse_linear_matches_reference(case, act, m):
    layout, kind, block, nm, n, k = case
    rng = _rng("linear", case, act, m)
    t = pack_sparse_case(rng, layout, n, k, kind, quant="int8", block=block or (1, 4), nm=nm or (2, 4))
    bias = rng.standard_normal(n).astype(np.float32)
    _assert_linear(t, ACTS[act], _x(rng, (m, k)), bias)


# --- every kernel path, serial and parallel, with a poisoned output ---------------------------

PATH_CASES = [  # (path, layout, block, M) -- the layout/M that reaches the path
    ("ell", "csr", None, 1), ("ell", "csr", None, 33), ("ell", "nm", None, 6),
    ("ell", "bsr", (16, 1), 20), ("ell", "bsr", (1, 4), 3),
    ("value_groups", "csr", None, 1), ("value_groups", "csr", None, 33), ("value_groups", "bsr", (2, 2), 17),
    ("block_quad_tiles", "bsr", (4, 8), 17), ("block_quad_tiles", "bsr", (8, 4), 40),
    ("quad_tiles", "bsr", (1, 4), 16), ("quad_tiles", "bsr", (2, 8), 33),
    ("int64", "csr", None, 5),
]


@pytest.fixture
def force_path(monkeypatch):
    """Make ``path`` the one SparsePlan takes, on any CPU. Ell is the path of targets with
    AVX-512 VBMI; on others (AVX2-only CPUs, or QRT_NUMBA_ISA=avx2) it is forced and runs its
    portable form (sparse._vpermi2b: one byte load per lane instead of vpermi2b, and the
    portable vpdpbusd), so the Ell algorithm is checked from every machine; ValueGroups is what such a
    CPU takes by itself, and is forced here on VBMI targets."""
    def force(path):
        if path == "ell":
            monkeypatch.setattr(sparse, "USE_ELL", True)
        if path == "value_groups":
            monkeypatch.setattr(sparse, "USE_ELL", False)
        if path == "int64":
            monkeypatch.setattr(sparse, "MAX_INT32_K", 8)
    return force


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: f"{c[0]}-{c[1]}{c[2] or ''}-M{c[3]}")
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_every_path_exact_and_fully_written(case, parallel, act, force_path, monkeypatch):
    path, layout, block, m = case
    force_path(path)
    monkeypatch.setattr(sparse, "SERIAL_WORK", 0 if parallel else 1 << 62)
    rng = _rng("path", case, parallel, act)
    n, k = 48, 264
    t = pack_sparse_case(rng, layout, n, k, block=block or (1, 4))
    gemm = sparse.SparsePlan(t, **ACTS[act])
    assert gemm.path(m) == path
    x = _x(rng, (m, k))
    bias = rng.standard_normal(n)
    out = np.full((m, n), np.nan, np.float32)       # poisoned: an unwritten element fails
    gemm(x, bias, out)
    ref_run, _ = _kernels("Linear", t, ACTS[act])
    assert np.array_equal(out, ref_run(x, t, bias)[0])


def test_path_choice():
    rng = _rng("choice")
    csr = sparse.SparsePlan(pack_sparse_case(rng, "csr", 16, 64), "dynamic")
    assert csr.path(1) == ("ell" if sparse.HAS_VBMI else "value_groups")
    assert sparse.SparsePlan(pack_sparse_case(rng, "csr", 16, 64, quant="none"), "none").path(4) == "f64"
    b44 = sparse.SparsePlan(pack_sparse_case(rng, "bsr", 16, 64, block=(4, 4)), "dynamic")
    assert b44.path(sparse.BSR_QUADS_MIN_M) == "block_quad_tiles"
    assert b44.path(1) == ("ell" if sparse.HAS_VBMI else "value_groups")


@pytest.mark.parametrize("layout,block", [("csr", None), ("bsr", (4, 4)), ("bsr", (1, 16)), ("nm", None)])
@pytest.mark.parametrize("act", ["none", "dynamic"])
@pytest.mark.parametrize("m", [1, 16, 40])
def test_thread_count_does_not_change_results(layout, block, act, m, monkeypatch):
    monkeypatch.setattr(sparse, "SERIAL_WORK", 0)
    rng = _rng("threads", layout, block, act, m)
    t = pack_sparse_case(rng, layout, 64, 256, quant="int8", block=block or (1, 4))
    _, fast = _kernels("Linear", t, ACTS[act])
    x = _x(rng, (m, 256))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = fast(x, t, None)[0]
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        y2 = fast(x, t, None)[0]
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(y1, y2)


# --- integer bounds --------------------------------------------------------------------------

def test_int32_accumulator_at_its_bound():
    """K' = MAX_INT32_K with every (qx - z) * qw at its maximum 255 * 127: |acc| = K' * 255 *
    127 < 2^31, the int32 paths are exact; one more column takes the int64 path, also exact."""
    for k in (sparse.MAX_INT32_K, sparse.MAX_INT32_K + 1):
        w = np.ones((2, k), np.float32)
        w[1] = -1
        t = layouts.pack("csr", "w", w, np.ones((2, k), bool), quant="int8")     # qw = +-127
        attrs = {"act_quant": "static", "act_scale": 0.01, "act_zero_point": -128}
        x = np.full((1, k), 2.56, np.float32)                     # rint(256) - 128 -> qx = 127
        assert (sparse.SparsePlan(t, **attrs).path(1) == "int64") == (k > sparse.MAX_INT32_K)
        y = _assert_linear(t, attrs, x)
        assert abs(float(y[0, 0]) - k * 255 * 127 * 0.01 / 127) <= 1e-5 * abs(float(y[0, 0]))


def test_fast_quantizer_equals_quant_py():
    rng = _rng("quant")
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((9, 257)) * rng.choice([1e-30, 1.0, 3e4], (9, 1))).astype(dtype)
        x[0, :6] = [63.5, -63.5, 0.5, -0.0, 127.0, 1.5]      # ties (round half to even) and max
        x[2] = 0                                              # all-zero row: scale 1
        x[3] = -0.0
        x[4] = np.linspace(-1e-38, 1e-38, 257)                # 1 / s overflows float32
        x[5, 7] = 3e-45                                       # one denormal
        q, s = np.empty(x.shape, np.int8), np.empty(9)
        quantize_rows_dynamic(x, q, s)
        u, s2 = sparse._quantize_u8(x, True, 1.0, 0, 300)
        assert np.array_equal(q, u[:, :257].astype(np.int16) - 128) and np.array_equal(s, s2)
        assert np.all(u[:, 257:] == 128)                      # padding: qx = 0
        quantize_static(x, q, 0.023, 5)
        u3, s3 = sparse._quantize_u8(x, False, 0.023, 5, 257)
        assert np.array_equal(q, u3.astype(np.int16) - 128) and np.all(s3 == 0.023)


# --- Conv -------------------------------------------------------------------------------------

# --- int4_grouped -----------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["none", "dynamic"])
def test_int4_threads_and_ranks(act, monkeypatch):
    monkeypatch.setattr(int4_mod, "SERIAL_WORK", 0)
    rng = _rng("int4t", act)
    t = layouts.pack("int4_grouped", "w", rng.standard_normal((40, 96)).astype(np.float32), group_size=32)
    _, fast = _kernels("Linear", t, ACTS[act])
    x = _x(rng, (2, 3, 96))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = fast(x, t, None)[0]
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        y2 = fast(x, t, None)[0]
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(y1, y2) and y1.shape == (2, 3, 40)
    _assert_linear(t, ACTS[act], x)
    _assert_linear(t, ACTS[act], x[0, 0])                  # rank 1


# --- bad input --------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_a_reason():
    rng = _rng("bad")
    t = pack_sparse_case(rng, "csr", 8, 16)
    tf = pack_sparse_case(rng, "csr", 8, 16, quant="none")
    factory = registry.lookup("Linear", "csr", "numba")
    run = factory(registry.fill_attrs("Linear", {"act_quant": "dynamic"}), {1: t})
    with pytest.raises(ValueError, match="does not match"):
        run(np.zeros((2, 15), np.float32), t, None)
    with pytest.raises(ValueError, match="does not match"):
        run(np.zeros((2, 16), np.int32), t, None)
    with pytest.raises(ValueError, match="bias has shape"):
        run(np.zeros((2, 16), np.float32), t, np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="stores float values"):
        factory(registry.fill_attrs("Linear", {"act_quant": "dynamic"}), {1: tf})
    with pytest.raises(ValueError, match="act_scale"):
        factory(registry.fill_attrs("Linear", {"act_quant": "static"}), {1: t})
    with pytest.raises(ValueError, match="act_zero_point"):
        factory(registry.fill_attrs("Linear", {"act_quant": "static", "act_scale": 0.1,
                                               "act_zero_point": 300}), {1: t})
    with pytest.raises(TypeError, match="packed layout"):
        factory(registry.fill_attrs("Linear", {}), {1: np.zeros((8, 16), np.float32)})
    conv = registry.lookup("Conv", "csr", "numba")(registry.fill_attrs("Conv", {"group": 3}), {1: t})
    with pytest.raises(ValueError, match="do not match"):
        conv(np.zeros((1, 16, 4, 4), np.float32), t, None)
    t4 = layouts.pack("int4_grouped", "w", rng.standard_normal((8, 16)).astype(np.float32), group_size=4)
    run4 = registry.lookup("Linear", "int4_grouped", "numba")(registry.fill_attrs("Linear", {}), {1: t4})
    with pytest.raises(ValueError, match="does not match"):
        run4(np.zeros((2, 17), np.float32), t4, None)


def test_the_weight_is_bound_at_plan_time():
    """The weight slot of run is not read (kernels/registry.py): run(x, other) computes with the
    planned weight, on numba as on the reference, so the planner can swap whole kernels."""
    rng = _rng("afresh")
    t1, t2 = pack_sparse_case(rng, "csr", 8, 32), pack_sparse_case(rng, "csr", 8, 32)
    attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic"})
    run = registry.lookup("Linear", "csr", "numba")(attrs, {1: t1})
    ref1 = registry.lookup("Linear", "csr", "reference")(attrs, {1: t1})
    x = _x(rng, (3, 32))
    assert np.array_equal(run(x, t2, None)[0], ref1(x, t1, None)[0])
    assert np.array_equal(ref1(x, t2, None)[0], ref1(x, t1, None)[0])


# --- a converted model in a session ------------------------------------------------------------

@pytest.mark.parametrize("opts", [
    {"prune": "magnitude", "sparsity": 0.7, "quant": "int8"},
    {"prune": "magnitude", "sparsity": 0.7, "quant": "int8", "act": "static"},
    {"prune": "block", "sparsity": 0.5, "block": (1, 4), "quant": "int8"},
    {"prune": "nm", "quant": "int8"},
    {"prune": "magnitude", "sparsity": 0.7, "quant": "none"},
    {"quant": "int4", "group_size": 2},
    {"prune": "magnitude", "sparsity": 0.5, "quant": "int4", "group_size": 4, "symmetric": False},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_session_on_converted_mlp(opts):
    pytest.importorskip("onnx")
    import runtime
    from tests.model_zoo import small_mlp_onnx
    graph = runtime.convert(small_mlp_onnx(), **opts)
    fast = runtime.InferenceSession(graph, backend="numba")
    ref = runtime.InferenceSession(graph, backend="reference")
    layouts_used = {p.layout for p in fast.plan if p.op == "Linear"}
    assert all(p.backend == "numba" for p in fast.plan if p.op == "Linear"), fast.plan
    assert layouts_used & {"csr", "bsr", "nm", "int4_grouped"}, layouts_used
    integer = all(n.attrs.get("act_quant", "none") != "none" for n in graph.nodes if n.op == "Linear")
    rng = _rng("session", tuple(opts.items()))
    for batch in (1, 5, 64):
        x = _x(rng, (batch, 8))
        (y, h), (y_ref, h_ref) = fast.run(None, {"x": x}), ref.run(None, {"x": x})
        if integer:
            assert np.array_equal(h, h_ref)            # exact Linear, then Relu
        else:
            np.testing.assert_allclose(h, h_ref, rtol=4 * np.finfo(np.float32).eps, atol=1e-6)
        # Softmax may run on another backend's kernel with its own (documented) rounding
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


def _corruptions(t):
    """Copies of a valid sparse tensor with one index field made invalid, as a hostile file
    would have them if the loader's checks were bypassed (e.g. a tensor built in code)."""
    out = []
    for f in [f for f in ("indptr", "indices", "meta") if f in t.fields]:
        a = t.fields[f]
        for k, value in enumerate((-1, 10 ** 6, int(a.max()) + 1 if a.size else 1, 0, 255)):
            b = a.astype(np.int64).copy()
            b.reshape(-1)[(k * 7) % b.size] = value
            if np.iinfo(a.dtype).min <= value <= np.iinfo(a.dtype).max:
                out.append((f"{f}={value}", b.astype(a.dtype)))
        if f == "indptr" and a.size > 2:
            out.append(("indptr not monotone", np.concatenate([a[:1], a[2:3], a[1:2], a[3:]]).astype(a.dtype)))
            out.append(("indptr too short", a[:-1]))
    made = [(name, layouts.PackedTensor(t.name, t.layout, t.dtype, t.shape, {**t.fields, f: b}, dict(t.params)))
            for (name, b), f in ((c, c[0].split("=")[0].split(" ")[0]) for c in out)]
    return [(name, bad) for name, bad in made if not _valid(bad)]      # some edits leave it valid


def _valid(t) -> bool:
    try:
        t.check()
        return True
    except (ValueError, KeyError, IndexError, TypeError):
        return False


@pytest.mark.parametrize("layout", ["csr", "bsr", "nm"])
@pytest.mark.parametrize("act", ["none", "dynamic"])
def test_tensors_that_bypassed_the_loader_are_refused_not_read_out_of_bounds(layout, act):
    """Defense in depth (issue 16): the numba kernels index without bounds checks, so the plan
    re-runs the layout's check; every corrupted index field is refused with a ValueError that
    names the weight (once: 2 SIGSEGV and 43 silent accepts of 95 such tensors)."""
    t = pack_sparse_case(_rng("bypass", layout), layout, 16, 32, quant="int8" if act != "none" else "none")
    cases = _corruptions(t)
    assert len(cases) >= 2
    for name, bad in cases:
        with pytest.raises(ValueError, match=r"weight 'w' is not a valid"):
            registry.lookup("Linear", layout, "numba")(registry.fill_attrs("Linear", ACTS[act]), {1: bad})
