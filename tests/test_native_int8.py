"""native int8 Linear (csrc/int8_gemm*.cpp, kernels/native_cpu/int8.py) against the reference.

Every comparison is with the reference kernel of ("Linear", "int8") on the same packed weight,
never with another fast kernel. For act_quant "dynamic" and "static" the native kernel computes
the exact integer accumulator and the reference's float64 epilogue in the same order, so the
tolerance is zero (INT8_ATOL), on every code path the CPU has (AVX-512 VNNI, AVX2, scalar:
forced with _native.set_int8_isa) and for every thread count.

The fused epilogue activations (csrc/activation.h) are compared with the reference Linear
followed by the reference activation: ReLU exactly, the GELUs within GELU_RTOL / GELU_ATOL,
also in the far tails (against math.erfc), on every path with the same bits on all of them,
and through a session whose fusion pass folds a Gelu node into the Linear.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import platform
import subprocess
import sys
import zlib

import numpy as np
import pytest

from kernels import registry
from kernels.core import bounds
from tests.near_ties import near_tie_rows
from tests.linear_errors import assert_common_refusals
from kernels.core.layouts import pack_int8

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native
    ISAS = tuple(_native.int8_isas())            # fastest first; "scalar" always
    MAX_K_INT32 = bounds.MAX_K_INT32
else:  # pragma: no cover
    _native = None
    ISAS = ()
    MAX_K_INT32 = 1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# exact integer accumulation + the reference's float64 epilogue, same order: identical bits
INT8_ATOL = 0.0
# epilogue activations (csrc/activation.h) against the reference Linear followed by the reference
# activation, as tests/test_numba_ops.py: the GEMM part is exact, so the only error is the GELU
# formula's (erfc fit < 1.2e-7 relative + the final float32 rounding 6e-8: 1e-6 leaves room and
# is far below a wrong formula, tanh vs erf GELU differ by 1e-4); for x < -5 the reference's
# own 0.5 x (1 + erf(x / sqrt 2)) cancels (absolute error ~1e-16 |x|) while the kernel's erfc
# does not, hence the absolute floor. ReLU is exact.
GELU_RTOL = 1e-6
GELU_ATOL = 1e-12
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
# weight-only float32 matmul: each of the K products and K - 1 sums rounds to float32 (plus the
# bias add and the reference's own final rounding), so |error| <= (K + 2) * 2^-24 * sum |x w|
# + |b| terms: the classical worst-case bound of a recursive float32 dot product
WEIGHT_ONLY_ERR_PER_TERM = 2.0 ** -24

WEIGHT_CONFIGS = [{"per_channel": True, "symmetric": True}, {"per_channel": False, "symmetric": True},
                  {"per_channel": True, "symmetric": False}, {"per_channel": False, "symmetric": False}]
ACT_CONFIGS = [{"act_quant": "dynamic"}, {"act_quant": "static", "act_scale": 0.031, "act_zero_point": 0},
               {"act_quant": "static", "act_scale": 0.047, "act_zero_point": -7}]
# awkward shapes: M around the 4-row micro-tile, K around the 4-byte VNNI step and the
# 16/64-lane vectors, N around the 64-column panel
MS, KS, NS = (1, 3, 17, 128), (1, 5, 63, 64, 100, 384), (1, 7, 16, 65, 384)


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


def _run(backend, attrs, t, x, b):
    return registry.lookup("Linear", "int8", backend)(attrs, {1: t})(x, t, b)[0]


def _assert_same(got, ref, what):
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{what}: {got.shape} {got.dtype} vs {ref.shape} {ref.dtype}"
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN positions differ"
    ok = ~np.isnan(ref)
    err = np.max(np.abs(got[ok].astype(np.float64) - ref[ok]), initial=0.0)
    assert err <= INT8_ATOL, f"{what}: max |native - reference| = {err}"


def _fields(t):
    """The int8 layout's fields as _native.Int8Weight takes them: per-tensor values as (N,)."""
    n = t.shape[0]
    scale = np.ascontiguousarray(np.broadcast_to(t.fields["scale"], (n,)), np.float32)
    zp = t.fields.get("zero_point")
    zp = None if zp is None else np.ascontiguousarray(np.broadcast_to(zp, (n,)), np.int8)
    return np.ascontiguousarray(t.fields["qdata"]), scale, zp


def _binding_args(acfg):
    return acfg["act_quant"], acfg.get("act_scale", 1.0), acfg.get("act_zero_point", 0)


@pytest.fixture
def restore_native_state():
    """Tests that force a code path or a thread count put the previous ones back (the path may
    have been forced for the whole run with QRT_NATIVE_ISA)."""
    threads = _native.get_threads()
    forced = os.environ.get("QRT_NATIVE_ISA")
    yield
    _native.set_int8_isa(forced or "auto")
    _native.set_threads(threads)


# --- Linear against the reference --------------------------------------------------------------

@pytest.mark.parametrize("wcfg", WEIGHT_CONFIGS, ids=lambda c: f"pc{int(c['per_channel'])}-sym{int(c['symmetric'])}")
@pytest.mark.parametrize("acfg", ACT_CONFIGS, ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
def test_linear_matches_reference_on_every_path(wcfg, acfg, restore_native_state):
    """Every (M, K, N) of the shape lists, with and without bias, on every code path."""
    for k in KS:
        for n in NS:
            rng = _rng("lin", str(wcfg), str(acfg), k, n)
            t = _weight(rng, (n, k), **wcfg)
            bias = rng.standard_normal(n).astype(np.float32)
            run = registry.lookup("Linear", "int8", "native")(acfg, {1: t})
            for m in MS:
                x = _input(rng, (m, k), zero_rows=m > 2)
                b = bias if (m + n) % 2 else None
                ref = _run("reference", acfg, t, x, b)
                for isa in ISAS:
                    _native.set_int8_isa(isa)
                    _assert_same(run(x, t, b)[0], ref, f"{isa} M={m} K={k} N={n} bias={b is not None}")


def test_every_path_is_tested_here():
    """The CPU's best path is the one auto picks, and scalar is always available."""
    assert ISAS[-1] == "scalar"
    assert _native.int8_isa() == (os.environ.get("QRT_NATIVE_ISA") or ISAS[0])
    from kernels.native_cpu import cpu_features
    f = cpu_features()
    assert ("avx512_vnni" in ISAS) == bool(f["avx512_vnni"] and f["avx512bw"] and f["avx512f"])
    assert ("avx2" in ISAS) == (f["avx2"] and f["fma"])     # the AVX2 path uses FMA (activation.h)
    # AVX-VNNI (VEX vpdpbusd, csrc/int8_gemm_avxvnni.cpp): offered exactly where the CPU has it,
    # ahead of avx2 and behind avx512_vnni; where it is offered, every test here runs it
    assert ("avx_vnni" in ISAS) == bool(f["avx_vnni"] and f["avx2"] and f["fma"])
    # AMX (csrc/int8_gemm_amx.cpp): needs the AVX-512 path beside it and, on Linux >= 5.16, the
    # process's permission for the tile state, which the extension asks for
    amx_cpu = bool(f["amx_int8"] and f["avx512_vnni"] and f["avx512bw"] and f["avx512f"])
    if "amx" in ISAS:
        assert amx_cpu
    elif amx_cpu and sys.platform == "linux":
        assert tuple(int(p) for p in platform.release().split(".")[:2]) < (5, 16), "AMX CPU, tiles not granted"
    order = ["amx", "avx512_vnni", "avx_vnni", "avx2", "scalar"]
    assert list(ISAS) == [i for i in order if i in ISAS]


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU has no AMX-INT8 tiles (or the OS did not grant them)")
@pytest.mark.parametrize("acfg", ACT_CONFIGS, ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
def test_amx_tile_edges(acfg, restore_native_state):
    """The AMX path's own edges (csrc/int8_gemm_amx.cpp): tiles of 16 rows, of kAmxMinRows = 8
    to 15 rows (the rows read past M are dropped) and of fewer (the AVX-512 tile); K over
    several 64-byte chunks with a tail (the zero-filled steps of the panel), N over two panels
    with a part-panel; an asymmetric weight, a bias and a fused GELU. The reference's bits."""
    rng = _rng("amx-edges")
    gelu = registry.fill_attrs("Linear", {**acfg, "activation": "gelu"})
    for k in (3, 64, 200, 1100):
        t = _weight(rng, (130, k), symmetric=False)
        fused = registry.build("Linear", "int8", "native", gelu, {1: t})
        for m in (7, 8, 15, 16, 23, 24, 40):
            x = _input(rng, (m, k), zero_rows=True)
            b = rng.standard_normal(130)
            ref = _run("reference", acfg, t, x, b)
            _native.set_int8_isa("avx512_vnni")
            want = fused(x, t, b)[0]
            _native.set_int8_isa("amx")
            _assert_same(_run("native", acfg, t, x, b), ref, f"amx M={m} K={k}")
            assert _same_bits(fused(x, t, b)[0], want), f"amx + GELU differs from avx512_vnni: M={m} K={k}"


@pytest.mark.parametrize("isa, other", [("avx_vnni", "avx2"), ("avx512_vnni", "avx2")])
def test_six_row_tile_heights(isa, other, restore_native_state):
    """The AVX-VNNI and AVX-512 VNNI tiles are 6 rows tall (kAvxVnniMR, kAvx512MR in
    csrc/int8_gemm.h), the AVX2 ones 4: every last-tile height 1..6 (M = 1..13), K with a tail,
    N over a part panel, with and without the fused GELU: the reference's bits, and the GELU
    the other path's bits."""
    if isa not in ISAS or other not in ISAS:
        pytest.skip(f"this CPU does not run both {isa} and {other}")
    rng = _rng("six-row-heights", isa)
    acfg = ACT_CONFIGS[0]
    gelu = registry.fill_attrs("Linear", {**acfg, "activation": "gelu"})
    for k in (5, 100):
        t = _weight(rng, (70, k), symmetric=False)
        fused = registry.build("Linear", "int8", "native", gelu, {1: t})
        for m in range(1, 14):
            x = _input(rng, (m, k), zero_rows=m > 2)
            b = rng.standard_normal(70)
            ref = _run("reference", acfg, t, x, b)
            _native.set_int8_isa(other)
            want = fused(x, t, b)[0]
            _native.set_int8_isa(isa)
            _assert_same(_run("native", acfg, t, x, b), ref, f"{isa} M={m} K={k}")
            assert _same_bits(fused(x, t, b)[0], want), f"{isa} + GELU differs from {other}: M={m} K={k}"


def test_non_contiguous_input_and_bias_dtypes():
    rng = _rng("layouts")
    t = _weight(rng, (20, 30), symmetric=False)
    x = _input(rng, (9, 60))[:, ::2]                   # strided view: copied by the wrapper
    for b in (rng.standard_normal(20), rng.standard_normal(20).astype(np.float16), None):
        for acfg in ACT_CONFIGS:
            _assert_same(_run("native", acfg, t, x, b), _run("reference", acfg, t, x, b), f"{acfg} {getattr(b, 'dtype', None)}")


@pytest.mark.parametrize("k", [37, 150])
def test_quantization_near_ties_is_the_reference_division(k, restore_native_state):
    """The vector quantizers estimate x / s by a float32 multiply and divide only near a
    half-integer (csrc/int8_gemm_avx2.cpp, quantize8). The near ties that real rows hold
    (tests/near_ties.py), and every (n + 1/2) s of a static scale with its neighbours; rows
    long enough (37) for the vector loop, and (150) for the dynamic four-vector steps
    (quantize64_steps, quantize32_steps) too, with near ties in each step. Every path
    must give the reference's integers."""
    x = near_tie_rows(_rng("near-ties"), k, 200, list(range(1, k - 8, 64)))
    t = pack_int8("w", np.eye(k, dtype=np.float32) + np.float32(0.01))
    for acfg in ACT_CONFIGS:
        xs = x
        if acfg["act_quant"] == "static":
            s = np.float64(acfg["act_scale"])
            ties = (np.arange(-130, 130) + 0.5) * s
            near = np.concatenate([ties, np.nextafter(ties.astype(np.float32), np.float32(np.inf)),
                                   np.nextafter(ties.astype(np.float32), np.float32(-np.inf))]).astype(np.float32)
            xs = np.resize(near, (len(near) // k + 1) * k).reshape(-1, k)
        ref = _run("reference", acfg, t, xs, None)
        for isa in ISAS:
            _native.set_int8_isa(isa)
            _assert_same(_run("native", acfg, t, xs, None), ref, f"{isa} {acfg}")


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the reference's x / inf
def test_linear_extreme_values_and_saturation(restore_native_state):
    """Activations far outside the static range saturate at -128 / 127 as the reference does;
    one huge value per row makes every other dynamic q round to 0; exact .5 ties round to
    even; rows holding NaN or inf come out as the reference's (NaN rows, or finite after
    static clipping); subnormal rows keep their tiny scale."""
    rng = _rng("extreme")
    t = _weight(rng, (65, 96), symmetric=False)
    x = _input(rng, (10, 96)) * 100
    x[1, 5] = 1e30
    x[2] = -3.5                                  # constant row: q = -127 everywhere
    x[3, ::2] = 0.5 * 0.031                      # exact .5 ties: round half to even
    x[4, :] = np.float32(1e-40) * np.arange(96)  # float32 subnormals
    x[6, 7] = np.nan
    x[7, 1] = -np.inf
    x[8, 3] = np.inf
    x[9] = np.linspace(-127.5, 127.5, 96) * np.float32(0.031)   # ties across the static range
    for isa in ISAS:
        _native.set_int8_isa(isa)
        for acfg in ACT_CONFIGS:
            _assert_same(_run("native", acfg, t, x, None), _run("reference", acfg, t, x, None), f"{isa} {acfg}")


@pytest.mark.parametrize("k", [MAX_K_INT32, MAX_K_INT32 + 7])
def test_int32_accumulator_bound(k, restore_native_state):
    """The largest |acc| = K * 255 * 255: static z = -128 with x far above range (qx - z = 255)
    and an all-positive asymmetric weight row (zero point -128, qw = 127). At K = kMaxKInt32 the
    vector paths' wrapping int32 arithmetic must still be exact; above it every path runs the
    scalar int64 kernel."""
    w = np.full((3, k), 5.0, np.float32)
    w[1, ::2] = 0.0                               # zero point -128 with mixed q
    w[2] = np.linspace(-1, 4, k, dtype=np.float32)
    t = pack_int8("w", w, symmetric=False)
    x = np.full((2, k), 1e3, np.float32)
    x[1, ::3] = -1e3
    acfg = {"act_quant": "static", "act_scale": 0.5, "act_zero_point": -128}
    ref = _run("reference", acfg, t, x, None)
    assert abs(float(ref[0, 0])) > 2.0 ** 31 * float(t.fields["scale"][0]) * 0.5 * 0.99   # |acc| near 2^31
    for isa in ISAS:
        _native.set_int8_isa(isa)
        _assert_same(_run("native", acfg, t, x, None), ref, f"{isa} K={k}")


# --- outputs, threads, paths -------------------------------------------------------------------

def test_output_fully_written(restore_native_state):
    """Poisoned output buffers (out=): every element of the edge tiles (M % 4, N % 64) written."""
    rng = _rng("poison")
    for m, n, k in [(1, 1, 1), (33, 65, 100), (5, 200, 7), (4, 64, 64), (130, 130, 33)]:
        t = _weight(rng, (n, k), symmetric=m % 2 == 0)
        w = _native.Int8Weight(*_fields(t))
        x = _input(rng, (m, k))
        b = rng.standard_normal(n).astype(np.float32)
        ref = _run("reference", {"act_quant": "dynamic"}, t, x, b)
        for isa in ISAS:
            _native.set_int8_isa(isa)
            out = np.full((m, n), np.nan, np.float32)
            got = _native.int8_linear(w, x, b, "dynamic", out=out)
            assert got is out or np.shares_memory(got, out)
            assert np.all(np.isfinite(out)), f"unwritten elements M={m} N={n} {isa}"
            _assert_same(out, ref, f"M={m} N={n} K={k} {isa}")


@pytest.mark.parametrize("m, k, n", [(128, 384, 384), (1, 768, 3072), (17, 1000, 200), (300, 64, 65)],
                         ids=["square", "gemv", "edges", "many-rows"])
def test_thread_count_does_not_change_results(m, k, n, restore_native_state):
    """Shapes above the parallel threshold (csrc/int8_gemm.cpp kParallelMinMacs): 1 and 2
    threads (and 3, uneven) give the reference's bits on every path."""
    rng = _rng("threads", m, k, n)
    for wcfg in (WEIGHT_CONFIGS[0], WEIGHT_CONFIGS[3]):
        t = _weight(rng, (n, k), **wcfg)
        w = _native.Int8Weight(*_fields(t))
        b = rng.standard_normal(n).astype(np.float32)
        x = _input(rng, (m, k), zero_rows=True)
        for acfg in ACT_CONFIGS:
            ref = _run("reference", acfg, t, x, b)
            for isa in ISAS[:2]:                # the scalar path is slow at these sizes
                _native.set_int8_isa(isa)
                for threads in (1, 2, 3):
                    _native.set_threads(threads)
                    _assert_same(_native.int8_linear(w, x, b, *_binding_args(acfg)), ref,
                                 f"{wcfg} {acfg} {isa} threads={threads}")


def test_concurrent_calls_from_python_threads():
    """The kernel runs without the GIL; calls from several Python threads on one packed weight
    each get their own, correct result."""
    rng = _rng("concurrent")
    t = _weight(rng, (300, 200), symmetric=False)
    run = registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: t})
    xs = [_input(rng, (40 + i, 200)) for i in range(8)]
    want = [_run("reference", {"act_quant": "dynamic"}, t, x, None) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: run(x, t, None)[0], xs))
    for i, (g, r) in enumerate(zip(got, want)):
        _assert_same(g, r, f"call {i}")


@pytest.mark.parametrize("threads", [2, 3, 16])
def test_work_pool_runs_every_item_once(threads):
    """csrc/work_pool.h: items claimed by the caller and whichever workers are awake; every item
    runs exactly once, also with more threads than cores, with items of very uneven length,
    and with several Python threads calling at once (each call its own job)."""
    for items, spin in ((1, 0), (2, 0), (7, 1000), (5000, 0), (300, 20000)):
        counts = _native.work_pool_counts(items, threads, spin)
        assert counts.shape == (items,) and (counts == 1).all(), (items, threads, spin)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _native.work_pool_counts(400 + i, threads, 500), range(12)))
    assert all(r.shape == (400 + i,) and (r == 1).all() for i, r in enumerate(results))


def test_work_pool_under_concurrent_callers():
    """csrc/work_pool.cpp keeps a few job slots and reuses them, its claims tagged with the job:
    several C++ threads calling at once, back to back, with random item and thread counts (so a
    slot is rewritten while a worker may still be reading its previous job, and workers sleep and
    wake), run every item exactly once. Without the job's tag on each range's end, a worker
    pairing an exhausted range of the old job with the new job's end ran an item twice: the
    short-job loops below, at 40% of their length, found 1 to 9 such items in each of 10 runs of a
    build with that bug (the long-job loop in none of 10: it alone would not catch it)."""
    assert _native.work_pool_stress(1, 1_000_000, max_items=8, max_threads=3, max_spin=20, seed=1) == 0
    assert _native.work_pool_stress(2, 500_000, max_items=8, max_threads=4, max_spin=20, seed=2) == 0
    assert _native.work_pool_stress(4, 20_000, seed=3) == 0


@pytest.mark.parametrize("threads", [2, 3])
def test_work_pool_takes_its_own_range_first(threads):
    """csrc/work_pool.h: the items are split into one contiguous range per participant, which
    works through its own range (front to back) before it takes what is left of the others'. So
    on quiet cores every call gives the same items to the same thread (a GEMM's weight panels
    stay in that core's L2). With one shared counter, a worker that joined took the items after
    the caller's first ones, outside its range, and only later reached its own."""
    items, spin = 600, 2000
    for _ in range(5):
        order = _native.work_pool_order(items, threads, spin)
        assert (order[:, 0] >= 0).all() and (order[:, 0] < threads).all()
        for slot in range(threads):
            mine = np.flatnonzero(order[:, 0] == slot)
            seq = mine[np.argsort(order[mine, 1])]             # the items in the order it ran them
            lo, hi = items * slot // threads, items * (slot + 1) // threads
            own = (seq >= lo) & (seq < hi)
            first_foreign = int(np.argmin(own)) if not own.all() else len(seq)
            assert own[:first_foreign].all() and not own[first_foreign:].any(), (slot, seq[:20])
            assert (np.diff(seq[:first_foreign]) > 0).all(), slot   # its range front to back


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs this process may use")
def test_move_thread_off_moves_and_keeps_the_affinity():
    """csrc/work_pool.cpp, move_off: the calling thread lands on another CPU it may use, and its
    affinity set afterwards is the one it had (it may run anywhere again)."""
    allowed = os.sched_getaffinity(0)
    cpu = _native.thread_cpu()
    assert cpu in allowed
    landed = _native.move_thread_off(cpu)
    assert landed in allowed and landed != cpu
    assert os.sched_getaffinity(0) == allowed
    with pytest.raises(ValueError, match="cpu must be >= 0"):
        _native.move_thread_off(-1)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs this process may use")
def test_work_pool_worker_leaves_the_callers_cpu():
    """A pool worker does not run a job on its caller's CPU (work_pool.cpp, "keeping a worker
    off its caller's CPU"): Linux may wake it there (wake-affine), and there it could only take
    turns with the caller. In a child process: the caller pinned to one CPU, the sleeping worker
    put on the same CPU (free to run elsewhere); after one job the worker must have left that
    CPU. Without the two mechanisms it stays wherever the scheduler woke it, often the caller's
    CPU (15 of 20 runs failed with them disabled)."""
    code = ("import os, sys, time\n"
            "from kernels.native_cpu import _native\n"
            "allowed = sorted(os.sched_getaffinity(0))\n"
            "before = set(os.listdir('/proc/self/task'))\n"
            "_native.work_pool_counts(100, 2, 100)\n"
            "(worker,) = [int(t) for t in set(os.listdir('/proc/self/task')) - before]\n"
            "c = allowed[0]\n"
            "os.sched_setaffinity(0, {c})\n"
            "os.sched_setaffinity(worker, {c})\n"
            "_native.work_pool_counts(100, 2, 100)\n"       # the worker runs on c, then sleeps there
            "time.sleep(0.05)\n"
            "os.sched_setaffinity(worker, set(allowed))\n"
            "def cpu(tid):\n"
            "    return int(open(f'/proc/self/task/{tid}/stat').read().rsplit(')', 1)[1].split()[36])\n"
            "assert cpu(worker) == c, cpu(worker)\n"
            "assert (_native.work_pool_counts(200, 2, 20000) == 1).all()\n"
            "for _ in range(200):\n"
            "    if cpu(worker) != c:\n"
            "        break\n"
            "    time.sleep(0.005)\n"
            "print(cpu(worker), _native.work_pool_moves())\n"
            "sys.exit(0 if cpu(worker) != c else 1)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout, done.stderr)


def test_work_pool_after_fork():
    """A forked child (multiprocessing, Ray workers) has none of the parent's pool threads:
    its first parallel GEMM must run (on a fresh pool), not wait for them."""
    _native.work_pool_counts(100, 2, 100)                   # the parent's pool is started
    code = ("import os, sys\n"
            "from kernels.native_cpu import _native\n"
            "_native.work_pool_counts(100, 2, 100)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    ok = (_native.work_pool_counts(1000, 2, 100) == 1).all()\n"
            "    os._exit(0 if ok else 1)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60)
    assert done.returncode == 0


def test_set_threads_hook_and_isa_override(restore_native_state):
    import kernels.native_cpu as native
    assert registry.thread_setter("native") is native.set_threads
    native.set_threads(1)
    assert _native.get_threads() == 1
    native.set_threads(3)
    assert _native.get_threads() == 3
    with pytest.raises(ValueError, match="unknown int8 path"):
        _native.set_int8_isa("avx9000")
    for missing in {"amx", "avx512_vnni", "avx_vnni"} - set(ISAS):
        with pytest.raises(ValueError, match=f"int8 path '{missing}' is not supported by this CPU"):
            _native.set_int8_isa(missing)
    for isa in ISAS:
        _native.set_int8_isa(isa)
        assert _native.int8_isa() == isa
    _native.set_int8_isa("auto")
    assert _native.int8_isa() == ISAS[0]     # the fixture restores a QRT_NATIVE_ISA override


def _subprocess(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_isa_environment_variable_in_subprocess():
    """QRT_NATIVE_ISA=scalar forces the scalar path (its output is the reference's, compared in
    the parent); a value this CPU cannot run makes the backend unavailable with the reason."""
    code = r"""
import numpy as np, sys
from kernels import registry
from kernels.native_cpu import _native
from kernels.core.layouts import pack_int8
assert registry.backend_status("native") is None and _native.int8_isa() == "scalar", _native.int8_isa()
rng = np.random.default_rng(7)
t = pack_int8("w", rng.standard_normal((65, 100)).astype(np.float32), symmetric=False)
x = rng.standard_normal((17, 100)).astype(np.float32)
y = registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: t})(x, t, None)[0]
sys.stdout.write(y.tobytes().hex())
"""
    res = _subprocess(code, {"QRT_NATIVE_ISA": "scalar"})
    assert res.returncode == 0, res.stderr[-3000:]
    y = np.frombuffer(bytes.fromhex(res.stdout), np.float32).reshape(17, 65)
    rng = np.random.default_rng(7)
    t = pack_int8("w", rng.standard_normal((65, 100)).astype(np.float32), symmetric=False)
    x = rng.standard_normal((17, 100)).astype(np.float32)
    _assert_same(y, _run("reference", {"act_quant": "dynamic"}, t, x, None), "QRT_NATIVE_ISA=scalar")

    res = _subprocess("import runtime; print(runtime.available_backends()['native'])", {"QRT_NATIVE_ISA": "sse1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "QRT_NATIVE_ISA=sse1" in res.stdout and "unknown int8 path" in res.stdout, res.stdout


# --- fused epilogue activation ----------------------------------------------------------------

def _linear_then_activation_ref(attrs, t, x, b, activation):
    """The definition: the reference Linear, then the activation op's reference kernel
    (kernels.registry.build adds it: the reference factory does not fuse)."""
    full = registry.fill_attrs("Linear", {**attrs, "activation": activation})
    return registry.build("Linear", "int8", "reference", full, {1: t})(x, t, b)[0]


def _assert_activation_close(got, want, activation, what):
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32, what
    if activation == "relu":                     # exact, down to the sign of zero
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), what
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=GELU_RTOL,
                                   atol=GELU_ATOL, err_msg=what)


def _same_bits(a, b):
    """Identical float32 arrays, NaNs included (NaN payloads are not compared)."""
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("acfg", ACT_CONFIGS[:2], ids=lambda c: c["act_quant"])
def test_fused_activation_matches_reference_on_every_path(activation, acfg, restore_native_state):
    """The fused kernel (as a session builds it: registry.build with the "activation"
    attribute) against the reference Linear then the reference activation, on the awkward
    shapes, every code path giving the same bits."""
    attrs = registry.fill_attrs("Linear", {**acfg, "activation": activation})
    for k in KS:
        for n in NS:
            rng = _rng("act", activation, str(acfg), k, n)
            t = _weight(rng, (n, k), symmetric=(k + n) % 2 == 0)
            bias = rng.standard_normal(n).astype(np.float32)
            run = registry.build("Linear", "int8", "native", attrs, {1: t})
            for m in MS:
                x = _input(rng, (m, k), zero_rows=m > 2)
                b = bias if (m + n) % 2 else None
                want = _linear_then_activation_ref(acfg, t, x, b, activation)
                outs = []
                for isa in ISAS:
                    _native.set_int8_isa(isa)
                    outs.append(run(x, t, b)[0])
                    _assert_activation_close(outs[-1], want, activation, f"{activation} {isa} M={m} K={k} N={n}")
                assert all(_same_bits(o, outs[0]) for o in outs), f"paths differ: M={m} K={k} N={n}"


def test_fused_activation_registered_as_fused():
    """build() must not add a second activation after the native kernel."""
    factory = registry.lookup("Linear", "int8", "native")
    assert set(factory.fused_activations) == set(ACTIVATIONS)
    t = _weight(_rng("bad-act"), (4, 8))
    with pytest.raises(ValueError, match="activation must be one of"):
        factory({"act_quant": "dynamic", "activation": "swish"}, {1: t})
    with pytest.raises(ValueError, match="activation = 'swish'"):
        _native.int8_linear(_native.Int8Weight(*_fields(t)), np.zeros((2, 8), np.float32), activation="swish")


def _through_bias(values, isa, activation):
    """act(values) computed by the fused kernel: a Linear with an all-zero weight gives
    Y = float32(0 + bias) = bias exactly, so the bias reaches the activation unchanged."""
    n = values.size
    w = _native.Int8Weight(np.zeros((n, 3), np.int8), np.ones(n, np.float32))
    x = _rng("through-bias").standard_normal((2, 3)).astype(np.float32)
    _native.set_int8_isa(isa)
    y = _native.int8_linear(w, x, values, "dynamic", activation=activation)
    assert _same_bits(y[0], y[1])
    return y[0]


def _gelu_tanh_exact(v: float) -> float:
    """0.5 v (1 + tanh u) as v / (1 + exp(-2u)), which does not cancel for v < 0."""
    u = math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)
    return v / (1.0 + math.exp(-2.0 * u)) if -2.0 * u < 700 else 0.0 * v


def test_fused_gelu_tails_accurate(restore_native_state):
    """Beyond the reference's own accuracy (tests/test_numba_ops.py's tail test, same points):
    against math.erfc in float64, relative 1e-6 wherever the result is a normal float32,
    absolute 1e-12 below; the tanh form against its non-cancelling float64 formula."""
    x = np.concatenate([np.linspace(-12, 12, 20001), np.geomspace(1e-30, 1e-2, 50),
                        -np.geomspace(1e-30, 1e-2, 50), [-14.0, -13.5, 20.0, 1e4, -1e4, 3e38, -3e38]]).astype(np.float32)
    xs = x.astype(np.float64).tolist()
    exact = {"gelu": np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in xs]),
             "gelu_tanh": np.array([_gelu_tanh_exact(v) for v in xs])}
    tiny = np.finfo(np.float32).tiny
    for activation, want in exact.items():
        outs = []
        for isa in ISAS:
            got = _through_bias(x, isa, activation).astype(np.float64)
            keep = np.abs(want) > tiny                       # float32 normal range
            rel = np.abs(got - want)[keep] / np.abs(want)[keep]
            assert rel.max() <= GELU_RTOL, (activation, isa, rel.max(), x[keep][rel.argmax()])
            assert np.max(np.abs(got - want)[~keep]) <= GELU_ATOL, (activation, isa)
            outs.append(got)
        assert all(np.array_equal(o, outs[0]) for o in outs), activation


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the reference's inf * 0
def test_fused_activation_nonfinite_and_signed_zero(restore_native_state):
    """NaN, +-inf and -0.0 reach the activation as the reference's kernels see them: the same
    values (NaN where the reference's inf * 0 gives NaN), and ReLU(-0.0) = +0.0 as np.maximum."""
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38], np.float32)
    for activation in ACTIVATIONS:
        op, attrs = registry.EPILOGUE_OPS[activation]
        want = registry.lookup(op, "dense", "reference")(registry.fill_attrs(op, attrs), {})(x)[0]
        for isa in ISAS:
            got = _through_bias(x, isa, activation)
            assert np.array_equal(np.isnan(got), np.isnan(want)), (activation, isa, got, want)
            ok = ~np.isnan(want) & (np.abs(want) > GELU_ATOL)
            assert np.array_equal(got[ok], want[ok]), (activation, isa, got, want)
            assert np.all(np.abs(got[~ok & ~np.isnan(want)]) <= GELU_ATOL), (activation, isa, got, want)
            if activation == "relu":
                assert _same_bits(got, want), (isa, got, want)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_activation_threads_and_poisoned_output(activation, restore_native_state):
    """Above the parallel threshold: 1 and 2 threads give the same bits on each vector path
    (and the reference's within tolerance); every element of a poisoned out= is written."""
    rng = _rng("act-threads", activation)
    for m, k, n in [(128, 384, 384), (33, 100, 200)]:
        t = _weight(rng, (n, k), symmetric=False)
        w = _native.Int8Weight(*_fields(t))
        x = _input(rng, (m, k), zero_rows=True)
        b = rng.standard_normal(n).astype(np.float32)
        want = _linear_then_activation_ref({"act_quant": "dynamic"}, t, x, b, activation)
        for isa in ISAS:
            _native.set_int8_isa(isa)
            outs = []
            for threads in (1, 2):
                _native.set_threads(threads)
                out = np.full((m, n), np.nan, np.float32)
                _native.int8_linear(w, x, b, "dynamic", out=out, activation=activation)
                assert not np.any(np.isnan(out)), f"unwritten elements {isa} threads={threads}"
                outs.append(out)
            assert _same_bits(outs[0], outs[1]), f"{activation} {isa} M={m}: threads change the result"
            _assert_activation_close(outs[0], want, activation, f"{activation} {isa} M={m}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_apply_activation_binding(activation, restore_native_state):
    """_native.apply_activation (the weight-only path's activation) gives the fused epilogue's
    bits, on every path, for any length (vector tails), and refuses what it cannot write."""
    x = (_rng("apply", activation).standard_normal(1001) * 4).astype(np.float32)
    want = _through_bias(x, ISAS[0], activation)
    for isa in ISAS:
        _native.set_int8_isa(isa)
        for size in (0, 1, 7, 8, 9, 1001):
            y = x[:size].copy()
            _native.apply_activation(y, activation)
            assert _same_bits(y, want[:size]), (isa, size)
    y2 = x[:1000].reshape(10, 100).copy()
    _native.apply_activation(y2, activation)          # any shape, in place
    assert _same_bits(y2.ravel(), want[:1000])
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.apply_activation(np.zeros((4, 4), np.float32)[:, ::2], activation)
    with pytest.raises(TypeError, match="float32"):
        _native.apply_activation(np.zeros(4), activation)
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _native.apply_activation(read_only, activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_apply_activation_split_over_threads_keeps_the_bits(activation, restore_native_state):
    """Large arrays are split over the native threads (chunks of 16 K elements; ReLU from 1 M,
    the GELUs from 32 K): the bits of one thread, whatever the thread count, on every path,
    ragged last chunk included."""
    n = (1 << 20) + 4099
    x = (_rng("apply-threads", activation).standard_normal(n) * 4).astype(np.float32)
    x[::977] = np.nan
    for isa in ISAS:
        _native.set_int8_isa(isa)
        outs = []
        for threads in (1, 2, 3):
            _native.set_threads(threads)
            y = x.copy()
            _native.apply_activation(y, activation)
            outs.append(y)
        assert all(_same_bits(o, outs[0]) for o in outs[1:]), isa
        _native.set_threads(1)
        head = x[:1001].copy()
        _native.apply_activation(head, activation)
        assert _same_bits(outs[0][:1001], head), isa


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_only_and_other_dtypes_apply_the_activation(activation, dtype):
    """The paths that do not run the fused GEMM still apply the activation: weight-only
    (BLAS, then the native activation in place) and float64 X (reference arithmetic)."""
    rng = _rng("act-other", activation, str(dtype))
    t = _weight(rng, (65, 40))
    x = _input(rng, (5, 40)).astype(dtype)
    b = rng.standard_normal(65).astype(np.float32)
    for acfg in ({"act_quant": "none"}, {"act_quant": "dynamic"}):
        attrs = registry.fill_attrs("Linear", {**acfg, "activation": activation})
        got = registry.build("Linear", "int8", "native", attrs, {1: t})(x, t, b)[0]
        plain = _run("native", acfg, t, x, b)        # the same Linear without activation
        op, act_attrs = registry.EPILOGUE_OPS[activation]
        want = registry.lookup(op, "dense", "reference")(registry.fill_attrs(op, act_attrs), {})(plain)[0]
        assert got.dtype == x.dtype
        if dtype == np.float64 or activation == "relu":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=GELU_RTOL, atol=GELU_ATOL)


@pytest.mark.parametrize("act_op, attrs", [("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Relu", {})],
                         ids=["gelu", "gelu_tanh", "relu"])
def test_session_fuses_linear_and_activation(act_op, attrs):
    """An int8 Linear -> Gelu graph: the session's fusion pass (runtime/fuse.py) folds the
    Gelu into the Linear's activation, the native kernel runs it fused, and the result is the
    reference session's (unfused, fuse=False) within the GELU tolerance."""
    import runtime
    from runtime.graph import Graph, Node, Value
    rng = _rng("session-act", act_op, str(attrs))
    k, n = 96, 130
    t = _weight(rng, (n, k), symmetric=False)
    b = rng.standard_normal(n).astype(np.float32)
    from kernels.core.layouts import dense_tensor
    nodes = [Node("fc", "Linear", ["x", "w", "b"], ["h"], {"act_quant": "dynamic"}),
             Node("act", act_op, ["h"], ["y"], dict(attrs))]
    g = Graph("t", [Value("x", "float32", ("m", k))], [Value("y", "float32", ("m", n))], nodes,
              {"w": t, "b": dense_tensor("b", b)})
    g.validate()
    native = runtime.InferenceSession(g, backend="native")
    ref = runtime.InferenceSession(g, backend="reference", fuse=False)
    steps = [(p.op, p.backend) for p in native.plan]
    assert steps == [("Linear", "native")], steps               # the Gelu is gone: fused
    for m in (1, 17):
        x = _input(rng, (m, k))
        got, want = native.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        _assert_activation_close(got, want, "relu" if act_op == "Relu" else "gelu", f"{act_op} {attrs} M={m}")


# --- weight-only --------------------------------------------------------------------------------

def test_weight_only_linear_within_float32_bound():
    rng = _rng("weight-only")
    for wcfg in WEIGHT_CONFIGS:
        for m, k, n in [(1, 3, 10), (16, 768, 65), (33, 100, 200)]:
            t = _weight(rng, (n, k), **wcfg)
            x = _input(rng, (m, k))
            b = rng.standard_normal(n).astype(np.float32)
            got = _run("native", {"act_quant": "none"}, t, x, b)
            ref = _run("reference", {"act_quant": "none"}, t, x, b)
            bound = (np.abs(x.astype(np.float64)) @ np.abs(t.to_dense().astype(np.float64)).T + np.abs(b)) \
                * (k + 2) * WEIGHT_ONLY_ERR_PER_TERM
            assert got.dtype == np.float32
            assert np.all(np.abs(got.astype(np.float64) - ref) <= bound + np.spacing(np.abs(ref))), f"{wcfg} {m} {k} {n}"


# --- errors -------------------------------------------------------------------------------------

def test_bad_inputs_to_the_binding_are_refused_with_a_reason():
    rng = _rng("bad-binding")
    t = _weight(rng, (10, 20), symmetric=False)
    q, s, zp = _fields(t)
    w = _native.Int8Weight(q, s, zp)
    assert (w.n, w.k, w.has_zero_point) == (10, 20, True) and w.nbytes > q.nbytes
    x = _input(rng, (3, 20))
    good = _native.int8_linear(w, x, None, "dynamic")
    cases = [
        # (exception, message pattern, call)
        (TypeError, "X must have dtype float32, got float64", lambda: _native.int8_linear(w, x.astype(np.float64))),
        (TypeError, "X must be a numpy array", lambda: _native.int8_linear(w, x.tolist())),
        (ValueError, "X must be C-contiguous", lambda: _native.int8_linear(w, np.asfortranarray(x))),
        (ValueError, r"X has shape \(3, 21\), expected \(M, 20\)", lambda: _native.int8_linear(w, np.zeros((3, 21), np.float32))),
        (ValueError, r"X has shape \(20,\), expected \(M, 20\)", lambda: _native.int8_linear(w, x[0])),
        (ValueError, r"X has shape \(3, 0\)", lambda: _native.int8_linear(w, np.zeros((3, 0), np.float32))),
        (ValueError, r"bias has shape \(11,\), expected \(10,\)", lambda: _native.int8_linear(w, x, np.zeros(11, np.float32))),
        (ValueError, r"bias has shape \(0,\)", lambda: _native.int8_linear(w, x, np.zeros(0, np.float32))),
        (TypeError, "bias must have dtype float32 or float64, got int32", lambda: _native.int8_linear(w, x, np.zeros(10, np.int32))),
        (ValueError, "act_quant = 'none'", lambda: _native.int8_linear(w, x, None, "none")),
        (ValueError, "act_scale", lambda: _native.int8_linear(w, x, None, "static", 0.0, 0)),
        (ValueError, "act_scale", lambda: _native.int8_linear(w, x, None, "static", float("nan"), 0)),
        (ValueError, "act_zero_point", lambda: _native.int8_linear(w, x, None, "static", 0.1, 128)),
        (ValueError, r"out has shape \(3, 11\)", lambda: _native.int8_linear(w, x, out=np.zeros((3, 11), np.float32))),
        (TypeError, "out must have dtype float32", lambda: _native.int8_linear(w, x, out=np.zeros((3, 10)))),
        (TypeError, "qdata must have dtype int8, got int16", lambda: _native.Int8Weight(q.astype(np.int16), s, zp)),
        (ValueError, r"qdata has shape \(20,\), expected \(N, K\)", lambda: _native.Int8Weight(q[0].copy(), s, zp)),
        (ValueError, "qdata must be C-contiguous", lambda: _native.Int8Weight(q[:, ::2], s, zp)),
        (ValueError, r"qdata has shape \(0, 20\)", lambda: _native.Int8Weight(q[:0], s[:0], None)),
        (ValueError, r"qdata has shape \(10, 0\)", lambda: _native.Int8Weight(q[:, :0].copy(), s, None)),
        (ValueError, r"scale has shape \(1,\), expected \(10,\)", lambda: _native.Int8Weight(q, s[:1].copy(), zp)),
        (TypeError, "scale must have dtype float32, got float64", lambda: _native.Int8Weight(q, s.astype(np.float64), zp)),
        (ValueError, r"scale\[3\] = .*expected finite and > 0", lambda: _native.Int8Weight(q, np.where(np.arange(10) == 3, -1, s).astype(np.float32), zp)),
        (TypeError, "zero_point must have dtype int8, got uint8", lambda: _native.Int8Weight(q, s, zp.view(np.uint8))),
        (ValueError, r"zero_point has shape \(9,\)", lambda: _native.Int8Weight(q, s, zp[:9].copy())),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()
    read_only = np.zeros((3, 10), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _native.int8_linear(w, x, out=read_only)
    # nothing is lost: the weight still works, X was not touched
    assert np.array_equal(_native.int8_linear(w, x, None, "dynamic"), good)
    # equal dtypes that are other dtype objects (file reader, views) are accepted; a
    # byte-swapped float32 is not float32 for the kernel
    assert np.array_equal(_native.int8_linear(w, x.view(np.dtype("<f4").newbyteorder("=")), None), good)
    assert _native.Int8Weight(q.view(np.dtype("i1").newbyteorder("<")), s, zp).n == 10
    with pytest.raises(TypeError, match="X must have dtype float32, got >f4"):
        _native.int8_linear(w, x.astype(">f4"))
    # no rows is not an error: Y (0, N), as the reference
    assert _native.int8_linear(w, np.zeros((0, 20), np.float32)).shape == (0, 10)


def test_bad_inputs_to_the_kernel_are_refused_with_a_reason():
    rng = _rng("bad")
    t = _weight(rng, (10, 20))
    assert_common_refusals("int8", "native", t)
    with pytest.raises(ValueError, match="act_zero_point"):
        registry.lookup("Linear", "int8", "native")({"act_quant": "static", "act_scale": 1.0, "act_zero_point": 300}, {1: t})
    with pytest.raises(ValueError, match="layout 'int8'"):
        from kernels.core.layouts import pack_int4_grouped
        t4 = pack_int4_grouped("w", rng.standard_normal((10, 20)).astype(np.float32))
        registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: t4})
    with pytest.raises(TypeError, match="packed layout"):
        registry.lookup("Linear", "int8", "native")({"act_quant": "dynamic"}, {1: np.zeros((10, 20), np.float32)})


# --- through a session --------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_session_on_converted_int8_mlp(act, tmp_path):
    """A converted model written to a .qrt file and loaded back (zero-copy fields, whose dtype
    objects are the reader's own instances), on backend="native", "auto" and "reference"."""
    pytest.importorskip("onnx")
    import runtime
    from tests.model_zoo import small_mlp_onnx
    rng = _rng("session", act)
    calib = [{"x": _input(rng, (64, 8))}] if act == "static" else None
    path = tmp_path / "mlp_int8.qrt"
    graph = runtime.convert(small_mlp_onnx(), path, quant="int8", act=act, calib=calib)
    assert any(n.op == "Linear" and n.attrs.get("act_quant") == act for n in graph.nodes)
    native = runtime.InferenceSession(str(path), backend="native")
    auto = runtime.InferenceSession(str(path), backend="auto")
    ref = runtime.InferenceSession(graph, backend="reference")
    assert any(p.layout == "int8" and p.backend == "native" for p in native.plan), native.plan
    assert all(p.backend == "native" for p in auto.plan if p.op == "Linear" and p.layout == "int8"), auto.plan
    for batch in (1, 5, 64):
        x = _input(rng, (batch, 8))
        (y, h), (y_ref, h_ref) = native.run(None, {"x": x}), ref.run(None, {"x": x})
        assert np.array_equal(h, h_ref)          # int8 Linear + Relu: exact
        # Softmax may run on another backend's kernel with its own (documented) rounding
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)
        assert np.array_equal(auto.run(None, {"x": x})[1], h_ref)


# the AVX2 tile each weight takes (csrc/int8_gemm_avx2.cpp): its extreme bytes, and max |qw|
AVX2_TILES = {"maddubs-tile": ([-127, 127, -126, 0, 1], 127), "widening-tile": ([-127, 127, -126, 0, 1, -128], 128),
              "narrow-tile": ([-63, 63, -62, 0, 1], 63)}


@pytest.mark.parametrize("tile", list(AVX2_TILES))
@pytest.mark.parametrize("k", [1, 4, 37, 256, MAX_K_INT32])
def test_avx2_tiles_exact_at_the_int8_extremes(tile, k, restore_native_state):
    """The AVX2 path has three tiles (csrc/int8_gemm_avx2.cpp): vpmaddubsw on |qx| x sign(qx) qw,
    exact because a pair of products is at most 2 * 128 * 127; the int16-widening one for
    weights holding -128 (where vpsignb would wrap); and for narrow weights (every |qw| <= 63)
    vpmaddubsw on u = qx + 128 directly, a pair at most 2 * 255 * 63. Raw qdata at the extremes
    against activations at qx = -128 and 127 (u = 0 and 255; static, z = 0 and z = -128): any
    saturation or sign wrap changes the integers, hence the bits."""
    if "avx2" not in ISAS:
        pytest.skip("no AVX2 on this CPU")
    values, max_abs = AVX2_TILES[tile]
    rng = _rng("avx2-tiles", tile, k)
    n = 70
    q = rng.choice(np.array(values[:5], np.int8), size=(n, k)).astype(np.int8)
    q.reshape(-1)[0] = values[0]                    # the extreme is there even at K = 1
    if tile == "widening-tile":
        q[::3, ::2] = -128
    w = _native.Int8Weight(q, np.full(n, 0.01, np.float32), None)
    assert w.has_q_min == (tile == "widening-tile")
    assert w.max_abs_q == max_abs
    t = pack_int8("w", np.zeros((n, k), np.float32))    # the reference's layout, then the same qdata
    t.fields["qdata"][...] = q
    t.fields["scale"][...] = np.float32(0.01)
    x = np.where(rng.random((5, k)) < 0.5, np.float32(-1e4), np.float32(1e4))   # tiles of 4 and 1 rows
    x[1, ::2] = 0.0
    for acfg in ({"act_quant": "static", "act_scale": 0.5, "act_zero_point": 0},
                 {"act_quant": "static", "act_scale": 0.5, "act_zero_point": -128},
                 {"act_quant": "dynamic"}):
        ref = _run("reference", acfg, t, x, None)
        _native.set_int8_isa("avx2")
        got = _native.int8_linear(w, x, None, *_binding_args(acfg))
        _assert_same(got, ref, f"avx2 {tile} K={k} {acfg}")


@pytest.mark.parametrize("acfg", ACT_CONFIGS, ids=["dynamic", "static-z0", "static-z-7"])
def test_narrow_weights_give_the_reference_bits_on_every_path(acfg, restore_native_state):
    """7-bit weights (pack_int8(qmax=63), the converter's weight_bits=7) take the AVX2 narrow
    tile: with a bias, every epilogue activation, tile heights 1-4 (a lone row: the whole-panel
    K loop) and 1 and 2 threads, on every path this CPU has (AVX2 forced too), the reference's
    bits."""
    rng = _rng("narrow", acfg["act_quant"], acfg.get("act_zero_point"))
    for n, k in ((65, 100), (16, 384), (130, 36)):
        t = _weight(rng, (n, k), qmax=63)
        assert np.abs(t.fields["qdata"]).max() == 63
        assert _native.Int8Weight(t.fields["qdata"], t.fields["scale"], None).max_abs_q == 63
        b = rng.standard_normal(n).astype(np.float32)
        x = _input(rng, (11, k), zero_rows=True)
        for m in (1, 5, 11):                     # a single row takes the whole-panel K loop (row1_panel)
            ref = _run("reference", acfg, t, x[:m], b)
            for isa in ISAS:
                _native.set_int8_isa(isa)
                for threads in (1, 2):
                    _native.set_threads(threads)
                    _assert_same(_run("native", acfg, t, x[:m], b), ref, f"narrow {isa} {threads}t M={m} {(n, k)} {acfg}")
        for act in ACTIVATIONS:
            run = registry.build("Linear", "int8", "native", registry.fill_attrs("Linear", {**acfg, "activation": act}),
                                 {1: t})
            want = _linear_then_activation_ref(acfg, t, x, b, act)
            for isa in ISAS:
                _native.set_int8_isa(isa)
                _assert_activation_close(run(x, t, b)[0], want, act, f"narrow {isa} {act} {(n, k)} {acfg}")


def test_weight_beyond_the_cache_gets_large_row_blocks_and_the_same_bits(restore_native_state):
    """A packed weight above 4 MB (csrc/int8_gemm.cpp kStreamedWeightBytes) is multiplied in
    large row blocks (the weight streamed once, not once per 256 KB of rows): still the
    reference's bits on every path, 1 and 2 threads, with rows left over in the last tile."""
    rng = _rng("big-weight")
    t = _weight(rng, (600, 7000))                  # 10 panels x 7000 x 64 bytes: 4.5 MB packed
    x = _input(rng, (41, 7000))
    b = rng.standard_normal(600).astype(np.float32)
    ref = _run("reference", {"act_quant": "dynamic"}, t, x, b)
    for isa in ISAS:
        _native.set_int8_isa(isa)
        for threads in (1, 2):
            _native.set_threads(threads)
            _assert_same(_run("native", {"act_quant": "dynamic"}, t, x, b), ref, f"{isa} threads={threads}")
