"""numba int8 Linear / Conv (kernels/numba_cpu/int8.py, vnni.py) against the reference.

Every comparison is with the reference kernel of the same (op, "int8") on the same packed
weight, never with another fast kernel. For act_quant "dynamic" and "static" the numba kernels
compute the exact integer accumulator and the reference's float64 epilogue in the same order,
so the tolerance is zero (INT8_ATOL). Weight-only ("none") float32 Linear accumulates in
float32 (WEIGHT_ONLY_ERR_PER_TERM).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from kernels import registry  # noqa: E402
from tests.near_ties import near_tie_rows  # noqa: E402
from tests.linear_errors import assert_common_refusals  # noqa: E402
from kernels.core.bounds import MAX_K_INT32  # noqa: E402
from kernels.core.layouts import pack_int8  # noqa: E402

_REASON = registry.backend_status("numba")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"numba backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.numba_cpu import int8, isa, vnni
    HAS_VNNI = vnni.has_vnni()
    HAS_VNNI256 = vnni.has_vnni256()
    HAS_AVX2 = isa.has_avx2()
else:  # pragma: no cover
    HAS_VNNI = HAS_VNNI256 = HAS_AVX2 = False
# Int8Plan's switches for each GEMM tile, in its order of preference (a later one only where
# the earlier ones are off)
ZMM_VNNI = {"use_vnni": True}
YMM_VNNI = {"use_vnni": False, "use_vnni256": True}
AVX2_TILE = {"use_vnni": False, "use_vnni256": False, "use_avx2": True}
PORTABLE = {"use_vnni": False, "use_vnni256": False, "use_avx2": False}
# the GEMM paths this target can run
PATHS = [p for p, ok in ((ZMM_VNNI, HAS_VNNI), (YMM_VNNI, HAS_VNNI256), (AVX2_TILE, HAS_AVX2), (PORTABLE, True)) if ok]

# exact integer accumulation + the reference's float64 epilogue, same order: identical bits
INT8_ATOL = 0.0
# weight-only float32 matmul: each of the K products and K - 1 sums rounds to float32 (plus the
# bias add and the reference's own final rounding), so |error| <= (K + 2) * 2^-24 * sum |x w|
# + |b| terms: the classical worst-case bound of a recursive float32 dot product
WEIGHT_ONLY_ERR_PER_TERM = 2.0 ** -24

WEIGHT_CONFIGS = [{"per_channel": True, "symmetric": True}, {"per_channel": False, "symmetric": True},
                  {"per_channel": True, "symmetric": False}, {"per_channel": False, "symmetric": False}]
ACT_CONFIGS = [{"act_quant": "dynamic"}, {"act_quant": "static", "act_scale": 0.031, "act_zero_point": 0},
               {"act_quant": "static", "act_scale": 0.047, "act_zero_point": -7}]
MS, KS, NS = (1, 3, 16, 33), (1, 3, 64, 100, 768), (1, 10, 64, 65, 200)


def _rng(*key) -> np.random.Generator:
    """A fresh generator per test case, reproducible across runs (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _weight(rng, shape, **cfg):
    w = rng.standard_normal(shape).astype(np.float32)
    if not cfg.get("symmetric", True):
        w += np.float32(0.7)          # an off-centre range, so the zero points are not 0
    return pack_int8("w", w, **cfg)


def _input(rng, shape, zero_rows=False):
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    if zero_rows and x.ndim >= 2:
        x.reshape(-1, shape[-1])[::3] = 0        # all-zero rows: s = 1, q = 0
    return x


def _run(op, backend, attrs, t, x, b):
    return registry.lookup(op, "int8", backend)(attrs, {1: t})(x, t, b)[0]


def _assert_same(got, ref, what):
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{what}: {got.shape} {got.dtype} vs {ref.shape} {ref.dtype}"
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN positions differ"
    ok = ~np.isnan(ref)
    err = np.max(np.abs(got[ok].astype(np.float64) - ref[ok]), initial=0.0)
    assert err <= INT8_ATOL, f"{what}: max |numba - reference| = {err}"


# --- Linear ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("wcfg", WEIGHT_CONFIGS, ids=lambda c: f"pc{int(c['per_channel'])}-sym{int(c['symmetric'])}")
@pytest.mark.parametrize("acfg", ACT_CONFIGS, ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
@pytest.mark.parametrize("k", KS)
def test_linear_matches_reference(wcfg, acfg, k):
    for n in NS:
        rng = _rng("lin", str(wcfg), str(acfg), k, n)
        t = _weight(rng, (n, k), **wcfg)
        b = rng.standard_normal(n).astype(np.float32) if n % 2 == 0 else None
        for m in MS:
            x = _input(rng, (m, k), zero_rows=m > 2)
            _assert_same(_run("Linear", "numba", acfg, t, x, b), _run("Linear", "reference", acfg, t, x, b),
                         f"M={m} K={k} N={n} bias={b is not None}")


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the reference's x / inf
def test_linear_extreme_values_and_saturation():
    """Activations far outside the static range saturate at -128 / 127 as the reference does;
    one huge value per row makes every other dynamic q round to 0; rows holding NaN or inf
    come out as the reference's (NaN rows, or finite after static clipping)."""
    rng = _rng("extreme")
    t = _weight(rng, (65, 96), symmetric=False)
    x = _input(rng, (8, 96)) * 100
    x[1, 5] = 1e30
    x[2] = -3.5                                  # constant row: q = -127 everywhere
    x[3, ::2] = 0.5 * 0.031                      # exact .5 ties: round half to even
    x[6, 7] = np.nan
    x[7, 1] = -np.inf
    for acfg in ACT_CONFIGS:
        _assert_same(_run("Linear", "numba", acfg, t, x, None), _run("Linear", "reference", acfg, t, x, None), str(acfg))


@pytest.mark.parametrize("k", [37, 150])
def test_dynamic_quantization_near_ties_is_the_reference_division(k):
    """Dynamic rows are quantized 16 values a step by a float32 estimate, and a step with a
    value near a half-integer by the reference's float64 division (vnni._quantize_steps_dynamic).
    The near ties real rows hold (tests/near_ties.py), in every 16-value step and in the
    K % 16 tail. Every row must give the reference's integers."""
    x = near_tie_rows(_rng("near-ties", k), k, 100, list(range(1, k - 8, 16)) + [k - 7])
    t = pack_int8("w", np.eye(k, dtype=np.float32) + np.float32(0.01))
    acfg = {"act_quant": "dynamic"}
    _assert_same(_run("Linear", "numba", acfg, t, x, None), _run("Linear", "reference", acfg, t, x, None), f"K={k}")


@pytest.mark.parametrize("k", [MAX_K_INT32 if _REASON is None else 1, MAX_K_INT32 + 7 if _REASON is None else 1])
def test_int32_accumulator_bound(k):
    """The largest |acc| = K * 255 * 255: static z = -128 with x far above range (qx - z = 255)
    and an all-positive asymmetric weight row (zero point -128, qw = 127). At K = MAX_K_INT32
    the VNNI kernel's wrapping int32 arithmetic must still be exact; above it the plan routes
    to the portable int64 GEMM."""
    w = np.full((3, k), 5.0, np.float32)
    w[1, ::2] = 0.0                               # zero point -128 with mixed q
    w[2] = np.linspace(-1, 4, k, dtype=np.float32)
    t = pack_int8("w", w, symmetric=False)
    x = np.full((2, k), 1e3, np.float32)
    x[1, ::3] = -1e3
    acfg = {"act_quant": "static", "act_scale": 0.5, "act_zero_point": -128}
    plan = int8.Int8Plan("Linear", t, **acfg)
    assert plan.groups[0].use_vnni == (HAS_VNNI and k <= MAX_K_INT32)
    ref = _run("Linear", "reference", acfg, t, x, None)
    assert abs(float(ref[0, 0])) > 0
    _assert_same(int8.int8_linear(x, plan), ref, f"K={k}")


def test_fused_quantization_equals_quant_py():
    """The fused quantize + u8 shift gives exactly kernels/numba_cpu/quant.py's q and scale
    (serial and parallel drivers, float32 and float64 rows, all-zero rows, K % 4 != 0)."""
    from kernels.numba_cpu import quant
    rng = _rng("fused-quant")
    for m, k in [(1, 5), (7, 100), (64, 768), (300, 97)]:        # both sides of PARALLEL_MIN_QUANT
        for dtype in (np.float32, np.float64):
            x = _input(rng, (m, k), zero_rows=True).astype(dtype)
            kp = -(-k // 4) * 4
            u = np.full((m, kp), 7, np.uint8)
            sx, rc = np.full(m, np.nan), np.full(m, -1, np.int64)
            vnni.quantize_shift_dynamic(x, u, sx, rc)
            q, s = np.empty((m, k), np.int8), np.empty(m)
            quant.quantize_rows_dynamic(x, q, s)
            assert np.array_equal(u[:, :k].astype(np.int64) - 128, q) and np.all(u[:, k:] == 128)
            assert np.array_equal(sx, s) and np.array_equal(rc, q.astype(np.int64).sum(1))
            for scale, z in ((0.02, 0), (0.013, -100), (0.5, 127)):
                vnni.quantize_shift_static(x, u, scale, z, sx, rc)
                quant.quantize_static(x, q, scale, z)
                assert np.array_equal(u[:, :k].astype(np.int64) - 128, q) and np.all(u[:, k:] == 128)
                assert np.all(sx == scale)
                assert np.array_equal(rc, q.astype(np.int64).sum(1) - k * z)


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the reference's NaN / s
@pytest.mark.parametrize("k", [37, 150])
def test_static_quantization_near_ties_is_the_reference_division(k):
    """Static rows are quantized 16 values a step by a float32 estimate clamped to +-256, and a
    step with a value near a half-integer by the reference's float64 division
    (vnni._quantize_steps_static). Every (n + 1/2) s across and beyond the clip range with its
    float32 neighbours, spread over every step and the K % 16 tail, with NaN (those rows
    only flagged), +-inf and values far out of range, for zero points at both ends; a scale whose 1 / s is no normal
    float32 takes the division throughout. The integers, row sums and NaN flags must be
    quant.quantize_static's."""
    from kernels.numba_cpu import quant
    rng = _rng("static-ties", k)
    kp = -(-k // 4) * 4
    for scale, z in ((0.02, 0), (0.013, -128), (0.7, 127), (3e-39, 5), (np.float64(1 / 3), -37)):
        ties = (np.arange(-390, 390) + 0.5) * np.float64(scale)
        near = np.concatenate([ties, np.nextafter(ties.astype(np.float32), np.float32(np.inf)),
                               np.nextafter(ties.astype(np.float32), np.float32(-np.inf))]).astype(np.float32)
        x = np.resize(rng.permutation(near), (len(near) // k + 4) * k).reshape(-1, k)
        x[-4, 3] = np.nan
        x[-3, k - 1] = np.nan                     # in the tail
        x[-2, 1], x[-2, 20] = np.inf, -np.inf
        x[-1, :] = np.float32(1e30) * np.sign(x[-1])
        u = np.full((len(x), kp), 7, np.uint8)
        sx, rc = np.full(len(x), -1.0), np.full(len(x), -1, np.int64)
        q = np.empty(x.shape, np.int8)
        for quantize in (vnni._quantize_shift_static_serial, vnni._quantize_shift_static_parallel):
            quantize(x, u, np.float64(scale), np.int64(z), sx, rc)
            quant.quantize_static(x, q, scale, z)
            # a row holding a NaN is NaN in the output (sx = NaN) whatever its integers
            ok = ~np.isnan(x).any(1)
            bad = np.argwhere(u[ok, :k].astype(np.int64) - 128 != q[ok])
            assert not len(bad), f"s={scale} z={z}: {len(bad)} values differ, first at {bad[0]}"
            assert np.all(u[:, k:] == 128)
            assert np.array_equal(rc[ok], q[ok].astype(np.int64).sum(1) - k * z)
            assert np.all(np.isnan(sx[~ok])) and np.all(sx[ok] == scale)
    acfg = {"act_quant": "static", "act_scale": 0.013, "act_zero_point": -128}
    t = pack_int8("w", np.eye(k, dtype=np.float32) + np.float32(0.01))
    x = np.resize(near, (len(near) // k) * k).reshape(-1, k)
    _assert_same(_run("Linear", "numba", acfg, t, x, None), _run("Linear", "reference", acfg, t, x, None), f"K={k}")


def test_writeable_bias_is_read_every_call():
    rng = _rng("bias-cache")
    t = _weight(rng, (20, 30))
    run = registry.lookup("Linear", "int8", "numba")({"act_quant": "dynamic"}, {1: t})
    x = _input(rng, (3, 30))
    b = np.zeros(20, np.float32)
    y0 = run(x, t, b)[0]
    b += 1
    assert np.array_equal(run(x, t, b)[0], _run("Linear", "reference", {"act_quant": "dynamic"}, t, x, b))
    assert not np.array_equal(y0, run(x, t, b)[0])
    b.flags.writeable = False                    # an initializer: converted once, then cached
    for _ in range(2):
        _assert_same(run(x, t, b)[0], _run("Linear", "reference", {"act_quant": "dynamic"}, t, x, b), "read-only bias")


def test_output_fully_written():
    """Poisoned output buffers: every element of the edge tiles (M % MR, N % PANEL) written."""
    rng = _rng("poison")
    for path in PATHS:
        for m, n, k in [(1, 1, 1), (33, 65, 100), (5, 200, 7), (4, 64, 64), (3, 130, 260), (2, 64, 9)]:
            t = _weight(rng, (n, k), symmetric=m % 2 == 0)
            plan = int8.Int8Plan("Linear", t, "dynamic", **path)
            gemm = plan.groups[0]
            x = _input(rng, (m, k))
            b = rng.standard_normal(n).astype(np.float32)
            for dtype in (np.float32, np.float64):
                out = np.full((m, n), np.nan, dtype)
                gemm(x.astype(dtype), gemm.bias64(b), out)
                ref = _run("Linear", "reference", {"act_quant": "dynamic"}, t, x.astype(dtype), b)
                assert np.all(np.isfinite(out)), f"unwritten elements M={m} N={n} path={path}"
                _assert_same(out, ref, f"M={m} N={n} K={k} path={path} {dtype}")


@pytest.mark.skipif(not HAS_VNNI, reason="no VNNI path here (numba's target lacks AVX-512 VNNI: an older CPU, QRT_NUMBA_ISA or QRT_NUMBA_NO_VNNI=1); the portable path is tested everywhere")
def test_vnni_and_portable_identical():
    rng = _rng("vnni-vs-portable")
    for wcfg in WEIGHT_CONFIGS:
        for acfg in ACT_CONFIGS:
            t = _weight(rng, (200, 300), **wcfg)
            x = _input(rng, (37, 300), zero_rows=True)
            b = rng.standard_normal(200).astype(np.float32)
            fast = int8.int8_linear(x, int8.Int8Plan("Linear", t, **acfg, use_vnni=True), b)
            slow = int8.int8_linear(x, int8.Int8Plan("Linear", t, **acfg, **PORTABLE), b)
            assert int8.Int8Plan("Linear", t, **acfg).groups[0].use_vnni
            assert np.array_equal(fast, slow), f"{wcfg} {acfg}"


def test_forced_fallback_env_in_subprocess():
    """QRT_NUMBA_NO_VNNI=1: has_vnni() and has_vnni256() are False, the registered kernel takes
    no vpdpbusd tile (the AVX2 tile where numba's target has AVX2, else the portable GEMM), and
    its output is the reference's (the parent process compares against the same bits)."""
    code = r"""
import numpy as np, sys
from kernels import registry
from kernels.numba_cpu import vnni, int8
from kernels.core.layouts import pack_int8
assert not vnni.has_vnni() and not vnni.has_vnni256()
rng = np.random.default_rng(7)
t = pack_int8("w", rng.standard_normal((65, 100)).astype(np.float32), symmetric=False)
x = rng.standard_normal((17, 100)).astype(np.float32)
g = int8.Int8Plan("Linear", t, "dynamic").groups[0]
assert not g.use_vnni and not g.use_vnni256
y = registry.lookup("Linear", "int8", "numba")({"act_quant": "dynamic"}, {1: t})(x, t, None)[0]
np.save(sys.argv[1], y)
"""
    out = os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), f"qrt_novnni_{os.getpid()}.npy")
    env = dict(os.environ, QRT_NUMBA_NO_VNNI="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code, out], env=env, cwd=root, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    try:
        y = np.load(out)
    finally:
        os.unlink(out)
    rng = np.random.default_rng(7)
    t = pack_int8("w", rng.standard_normal((65, 100)).astype(np.float32), symmetric=False)
    x = rng.standard_normal((17, 100)).astype(np.float32)
    _assert_same(y, _run("Linear", "reference", {"act_quant": "dynamic"}, t, x, None), "forced fallback")
    _assert_same(y, _run("Linear", "numba", {"act_quant": "dynamic"}, t, x, None), "fallback vs this process")


@pytest.mark.parametrize("m, k, n", [(203, 768, 200), (33, 768, 1000), (70, 1000, 250), (1, 768, 1000)],
                         ids=["row-split", "panel-split", "row-split-edges", "gemv-panel-split"])
def test_linear_parallel_paths(m, k, n):
    """Shapes large enough for the parallel drivers (vnni.PARALLEL_MIN_MACS): rows split over
    threads with quantization inside (many rows), panels split (few rows); every config, against
    the reference and against one thread."""
    rng = _rng("parallel", m, k, n)
    before = numba.get_num_threads()
    try:
        for wcfg in (WEIGHT_CONFIGS[0], WEIGHT_CONFIGS[3]):
            t = _weight(rng, (n, k), **wcfg)
            b = rng.standard_normal(n).astype(np.float32)
            x = _input(rng, (m, k), zero_rows=True)
            for acfg in ACT_CONFIGS:
                run = registry.lookup("Linear", "int8", "numba")(acfg, {1: t})
                numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
                got = run(x, t, b)[0]
                _assert_same(got, _run("Linear", "reference", acfg, t, x, b), f"{wcfg} {acfg}")
                numba.set_num_threads(1)
                assert np.array_equal(run(x, t, b)[0], got)
    finally:
        numba.set_num_threads(before)


def test_thread_count_does_not_change_results():
    rng = _rng("threads")
    t = _weight(rng, (200, 768))
    x = _input(rng, (33, 768))
    run = registry.lookup("Linear", "int8", "numba")({"act_quant": "dynamic"}, {1: t})
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            outs.append(run(x, t, None)[0])
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(outs[0], outs[1])


def test_weight_only_linear_within_float32_bound():
    rng = _rng("weight-only")
    for wcfg in WEIGHT_CONFIGS:
        for m, k, n in [(1, 3, 10), (16, 768, 65), (33, 100, 200)]:
            t = _weight(rng, (n, k), **wcfg)
            x = _input(rng, (m, k))
            b = rng.standard_normal(n).astype(np.float32)
            got = _run("Linear", "numba", {"act_quant": "none"}, t, x, b)
            ref = _run("Linear", "reference", {"act_quant": "none"}, t, x, b)
            bound = (np.abs(x.astype(np.float64)) @ np.abs(t.to_dense().astype(np.float64)).T + np.abs(b)) \
                * (k + 2) * WEIGHT_ONLY_ERR_PER_TERM
            assert got.dtype == np.float32
            assert np.all(np.abs(got.astype(np.float64) - ref) <= bound + np.spacing(np.abs(ref))), f"{wcfg} {m} {k} {n}"
    x64 = _input(rng, (4, 100)).astype(np.float64)
    t = _weight(rng, (12, 100))
    np.testing.assert_allclose(_run("Linear", "numba", {"act_quant": "none"}, t, x64, None),
                               _run("Linear", "reference", {"act_quant": "none"}, t, x64, None), rtol=1e-13, atol=1e-13)


# --- Conv -----------------------------------------------------------------------------------------

# --- errors ---------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_a_reason():
    rng = _rng("bad")
    t = _weight(rng, (10, 20))
    assert_common_refusals("int8", "numba", t)
    with pytest.raises(ValueError, match="act_zero_point"):
        registry.lookup("Linear", "int8", "numba")({"act_quant": "static", "act_scale": 1.0, "act_zero_point": 300}, {1: t})
    with pytest.raises(ValueError, match="layout 'int8'"):
        from kernels.core.layouts import pack_int4_grouped
        t4 = pack_int4_grouped("w", rng.standard_normal((10, 20)).astype(np.float32))
        registry.lookup("Linear", "int8", "numba")({"act_quant": "dynamic"}, {1: t4})
    tc = _weight(rng, (6, 2, 3, 3))
    conv = registry.lookup("Conv", "int8", "numba")({"act_quant": "dynamic", "group": 2}, {1: tc})
    with pytest.raises(ValueError, match="do not match"):
        conv(np.zeros((1, 3, 5, 5), np.float32), tc, None)


# --- through a session ----------------------------------------------------------------------------

def test_session_on_converted_int8_mlp():
    pytest.importorskip("onnx")
    import runtime
    from tests.model_zoo import small_mlp_onnx
    graph = runtime.convert(small_mlp_onnx(), quant="int8")
    fast = runtime.InferenceSession(graph, backend="numba")
    ref = runtime.InferenceSession(graph, backend="reference")
    assert any(p.layout == "int8" and p.backend == "numba" for p in fast.plan), fast.plan
    rng = _rng("session")
    for batch in (1, 5, 64):
        x = _input(rng, (batch, 8))
        (y, h), (y_ref, h_ref) = fast.run(None, {"x": x}), ref.run(None, {"x": x})
        assert np.array_equal(h, h_ref)          # int8 Linear + Relu: exact
        # Softmax may run on another backend's kernel with its own (documented) rounding
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)


# weight bytes of each case: (values, has -128, max |q| <= 63)
AVX2_CASES = {"avx2-tile": ([-127, 127, -126, 0, 1], False, False),
              "has-minus-128": ([-127, 127, -126, 0, 1], True, False),
              "narrow-tile": ([-63, 63, -62, 0, 1], False, True)}


@pytest.mark.skipif(not HAS_AVX2, reason="numba's target has no AVX2 (QRT_NUMBA_ISA=generic)")
@pytest.mark.parametrize("case", list(AVX2_CASES))
@pytest.mark.parametrize("m,k", [(1, 1), (5, 37), (17, 256), (3, MAX_K_INT32)])
def test_avx2_tile_exact_at_the_int8_extremes(case, m, k):
    """The AVX2 tile (vnni._raw_ymm(kind="signed")) multiplies |qx| by sign(qx) qw with
    vpmaddubsw: exact because a pair of products is at most 2 * 128 * 127 and the weight holds
    no -128; a weight with -128 (where vpsignb would wrap) must take the portable GEMM; a narrow
    weight (every |qw| <= 63) takes vnni._raw_ymm(kind="narrow"), vpmaddubsw on u = qx + 128
    itself (a pair at most 2 * 255 * 63). Raw qdata at the extremes against activations at qx = -128 and 127 (u = 0
    and 255; static z = 0 and -128, and dynamic): any saturation or wrap changes the integers,
    hence the bits."""
    values, q_min, narrow = AVX2_CASES[case]
    rng = _rng("avx2-tile", case, m, k)
    n = 70
    q = rng.choice(np.array(values, np.int8), size=(n, k)).astype(np.int8)
    q.reshape(-1)[0] = values[0]                    # the extreme is there even at K = 1
    if q_min:
        q[::3, ::2] = -128
    t = pack_int8("w", np.zeros((n, k), np.float32))
    t.fields["qdata"][...] = q
    t.fields["scale"][...] = np.float32(0.01)
    x = np.where(rng.random((m, k)) < 0.5, np.float32(-1e4), np.float32(1e4))
    x[0, ::2] = 0.0
    for acfg in ({"act_quant": "static", "act_scale": 0.5, "act_zero_point": 0},
                 {"act_quant": "static", "act_scale": 0.5, "act_zero_point": -128},
                 {"act_quant": "dynamic"}):
        plan = int8.Int8Plan("Linear", t, **acfg, **AVX2_TILE)
        assert plan.groups[0].use_avx2 == (not q_min) and plan.groups[0].narrow == narrow
        _assert_same(int8.int8_linear(x, plan), _run("Linear", "reference", acfg, t, x, None),
                     f"{case} M={m} K={k} {acfg}")


@pytest.mark.skipif(not HAS_AVX2, reason="numba's target has no AVX2 (QRT_NUMBA_ISA=generic)")
@pytest.mark.parametrize("acfg", [{"act_quant": "dynamic"}, {"act_quant": "static", "act_scale": 0.047, "act_zero_point": -7}],
                         ids=["dynamic", "static"])
def test_narrow_weights_give_the_reference_bits(acfg):
    """7-bit weights (pack_int8(qmax=63), the converter's weight_bits=7) on the AVX2 path: the
    narrow tile at one row, an edge tile, and enough rows for the row-block driver
    (vnni.panel_linear), with a bias: the reference's bits."""
    rng = _rng("narrow", acfg["act_quant"])
    n, k = 130, 260
    t = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32), qmax=63)
    plan = int8.Int8Plan("Linear", t, **acfg, **AVX2_TILE)
    assert plan.groups[0].narrow
    b = rng.standard_normal(n).astype(np.float32)
    for m in (1, 17, 300):
        x = _input(rng, (m, k))
        _assert_same(int8.int8_linear(x, plan, b), _run("Linear", "reference", acfg, t, x, b), f"narrow M={m} {acfg}")


@pytest.mark.skipif(not HAS_VNNI256, reason="numba's target has no 256-bit vpdpbusd (no AVX-VNNI, no AVX-512 VNNI)")
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 9, 40])
@pytest.mark.parametrize("k", [1, 37, 256])
def test_ymm_vnni_tile_every_height_at_the_int8_extremes(m, k):
    """The 256-bit vpdpbusd tile (vnni._raw_ymm(kind="vnni")) groups its columns per tile height
    (vnni._YMM_GROUPS: 8, 4 + 4 and 3 + 3 + 2 vectors per K loop): every height 1..MR and its
    edges, with raw weight bytes at -128 and 127 (which the AVX2 tile cannot take) against
    activations at qx = -128 and 127 (u = 0 and 255). A column group written to the wrong
    output vector, a row dropped or a saturating product changes the integers, hence the
    bits."""
    rng = _rng("ymm-vnni", m, k)
    n = 200
    q = rng.choice(np.array([-128, 127, -127, 0, 1, 126], np.int8), size=(n, k)).astype(np.int8)
    q.reshape(-1)[0] = -128
    t = pack_int8("w", np.zeros((n, k), np.float32))
    t.fields["qdata"][...] = q
    t.fields["scale"][...] = np.float32(0.01)
    x = np.where(rng.random((m, k)) < 0.5, np.float32(-1e4), np.float32(1e4))
    x[:, ::3] = rng.standard_normal((m, len(range(0, k, 3)))).astype(np.float32)
    for acfg in ({"act_quant": "static", "act_scale": 0.5, "act_zero_point": -128},
                 {"act_quant": "static", "act_scale": 0.031, "act_zero_point": 5},
                 {"act_quant": "dynamic"}):
        plan = int8.Int8Plan("Linear", t, **acfg, **YMM_VNNI)
        assert plan.groups[0].use_vnni256 and plan.groups[0].weight.ndim == 3
        _assert_same(int8.int8_linear(x, plan), _run("Linear", "reference", acfg, t, x, None),
                     f"ymm vnni M={m} K={k} {acfg}")


def test_ymm_vnni_tile_is_the_default_where_avx_vnni_is_the_best(tmp_path):
    """QRT_NUMBA_ISA=avx_vnni (an Alder Lake target: AVX-VNNI, no AVX-512) in a child process:
    the default plan takes the 256-bit vpdpbusd tile, compiled in its VEX form, and its output
    is the reference's. Skipped where the CPU has no AVX-VNNI (the tile's arithmetic is tested
    above on AVX-512 VNNI machines, in its EVEX form)."""
    import llvmlite.binding as llb
    if not llb.get_host_cpu_features().get("avxvnni", False):
        pytest.skip("this CPU has no AVX-VNNI (QRT_NUMBA_ISA=avx_vnni cannot run here)")
    code = r"""
import numpy as np, re, sys
from kernels import registry
from kernels.numba_cpu import int8, isa, vnni
from kernels.core.layouts import pack_int8
assert registry.backend_status("numba") is None, registry.backend_status("numba")
assert not vnni.has_vnni() and vnni.has_vnni256(), isa.describe()
rng = np.random.default_rng(11)
t = pack_int8("w", rng.standard_normal((130, 300)).astype(np.float32), symmetric=False)
x = rng.standard_normal((19, 300)).astype(np.float32)
g = int8.Int8Plan("Linear", t, "dynamic").groups[0]
assert g.use_vnni256 and not g.use_avx2
y = registry.lookup("Linear", "int8", "numba")({"act_quant": "dynamic"}, {1: t})(x, t, None)[0]
asm = "".join(vnni.panel_linear.inspect_asm(s) for s in vnni.panel_linear.signatures)
assert re.search(r"\{vex\}\s*vpdpbusd\s+%ymm", asm) and "zmm" not in asm, "no VEX ymm vpdpbusd in the tile"
np.save(sys.argv[1], y)
"""
    out = str(tmp_path / "y.npy")
    # a fresh numba cache: numba shows no assembly for code it loaded from its cache
    env = dict(os.environ, QRT_NUMBA_ISA="avx_vnni", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "QRT_NUMBA_NO_VNNI"):
        env.pop(k, None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code, out], env=env, cwd=root, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    y = np.load(out)
    rng = np.random.default_rng(11)
    t = pack_int8("w", rng.standard_normal((130, 300)).astype(np.float32), symmetric=False)
    x = rng.standard_normal((19, 300)).astype(np.float32)
    _assert_same(y, _run("Linear", "reference", {"act_quant": "dynamic"}, t, x, None), "avx_vnni target")
