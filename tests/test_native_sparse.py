"""native sparse int8 Linear (csrc/sparse_gemm*.cpp, kernels/native_cpu/sparse.py) against the
reference.

Every comparison is with the reference kernel of ("Linear", layout) on the same packed weight,
never with another fast kernel. For act_quant "dynamic" and "static" the native kernels compute
the exact integer accumulator and the reference's float64 epilogue in the same order, so the
tolerance is zero (INT8_ATOL), on every code path: the scalar path, the AVX-512 ELL with byte
(over 64- and 128-byte segments) and dword lanes and quad tiles of 1 and 4 rows, the AVX2 ELL
kernel ("ell_avx2") with each of those (forced with the packing options and ``path=``), on every ISA the CPU has
(``_native.set_int8_isa``), for 1 and 2 threads. Weights are packed by
kernels.core.layouts from fresh random weights and masks of runtime.convert.prune.
"""
from __future__ import annotations

import concurrent.futures
import os
import zlib

import numpy as np
import pytest

from kernels import registry
from tests.linear_errors import assert_common_refusals
from kernels.core import layouts
from runtime.convert import prune
from tests.sparse_cases import pack_sparse_case

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native
    from kernels.native_cpu.sparse import pack_sparse
    ISAS = tuple(_native.int8_isas())            # fastest first; "scalar" always
    VNNI = "avx512_vnni" in ISAS                 # the AVX-512 kernels: "ell", "quad_tiles"
    AVX2 = "avx2" in ISAS                        # the AVX2 kernel: "ell_avx2"
    VECTOR = VNNI or AVX2
    # byte-lane ELL is built everywhere but on VNNI CPUs without VBMI (csrc/sparse_gemm.h)
    BYTE_LANES = _native.sparse_has_vbmi() or not VNNI
    # (lanes, segment): byte lanes over 64- and 128-byte segments and over sliding 64-byte
    # windows (segment 0) (sparse_byte_segment picks one per CPU; all are forced here), dword
    # lanes over 128
    BYTE_FORMS = (("byte", 64), ("byte", 128), ("byte", 0))
    LANES = (BYTE_FORMS if _native.sparse_has_vbmi() else ()) + (("dword", -1),)   # AVX-512 ELL
    AVX2_LANES = (BYTE_FORMS if BYTE_LANES else ()) + (("dword", -1),)
else:  # pragma: no cover
    _native = None
    ISAS, VNNI, AVX2, VECTOR, BYTE_LANES, LANES, AVX2_LANES = (), False, False, False, False, (), ()

from kernels.core.bounds import MAX_K_INT32  # vector paths up to here

# exact integer accumulation + the reference's float64 epilogue, same order: identical bits
INT8_ATOL = 0.0
# act_quant "none" is a float32 BLAS matmul of the densified weight (sparse.py docstring):
# each of the K products and K - 1 sums rounds to float32, the classical bound of a recursive
# float32 dot product, (K + 2) * 2^-24 * sum |x w| (+ the bias and the reference's own rounding)
WEIGHT_ONLY_ERR_PER_TERM = 2.0 ** -24

STATIC = {"act_quant": "static", "act_scale": 0.037, "act_zero_point": -7}
ACTS = {"dynamic": {"act_quant": "dynamic"}, "static": STATIC,
        "static_z0": {"act_quant": "static", "act_scale": 0.05, "act_zero_point": 0}}
MS = (1, 3, 17, 128)


def _rng(*key) -> np.random.Generator:
    """A fresh generator per test case, reproducible across runs (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _x(rng, shape, dtype=np.float32):
    x = (rng.standard_normal(shape) * 1.5).astype(dtype)
    if x.ndim >= 2 and x.shape[0] > 2:
        x[1] = 0                                  # an all-zero row: s_x = 1, qx = 0
    return x


def _reference(t, attrs, x, bias=None):
    return registry.lookup("Linear", t.layout, "reference")(registry.fill_attrs("Linear", attrs), {1: t})(x, t, bias)[0]


def _assert_same(got, ref, what):
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{what}: {got.shape} {got.dtype} vs {ref.shape} {ref.dtype}"
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN positions differ"
    ok = ~np.isnan(ref)
    err = np.max(np.abs(got[ok].astype(np.float64) - ref[ok]), initial=0.0)
    assert err <= INT8_ATOL, f"{what}: max |native - reference| = {err}"


def _binding_args(attrs):
    return attrs["act_quant"], attrs.get("act_scale", 1.0), attrs.get("act_zero_point", 0)


def _variants(t):
    """(label, packed weight, path, isa) for every code path this weight and CPU can take:
    the scalar path on every ISA, on the canonical rows and on the ELL vectors (what it reads
    once ELL is built); on AVX2 the AVX2 ELL kernel with each lane kind, the pairs and, for
    bsr with whole column quads and no -128 weight, the AVX2 quad tiles of 1 and 4 rows (and,
    where the CPU has AVX-VNNI, the ELL and tiles with their vpdpbusd steps, and the pairs, on
    the avx_vnni path); on
    AVX-512 VNNI, ELL with each lane kind and quad tiles of 1 and 4 rows (4: N % 4 == 0)."""
    out = [(f"scalar/{isa}", pack_sparse(t, lanes="none", quad_rows=0), "scalar", isa) for isa in ISAS]
    auto = pack_sparse(t, quad_rows=0)
    out += [(f"scalar-{auto.lanes}{auto.segment}/{isa}", auto, "scalar", isa) for isa in ISAS if auto.lanes != "none"]
    if BYTE_LANES:   # the scalar path on the ELL vectors of either byte segment
        out += [(f"scalar-byte{seg}", pack_sparse(t, lanes="byte", quad_rows=0, segment=seg), "scalar", "scalar")
                for _, seg in BYTE_FORMS]
    if AVX2:
        for lanes, seg in AVX2_LANES:
            out.append((f"ell_avx2-{lanes}{seg}", pack_sparse(t, lanes=lanes, quad_rows=0, pairs=0, segment=seg),
                        "ell_avx2", "avx2"))
            if "avx_vnni" in ISAS:   # the same loops with the vpdpbusd step (sparse_gemm_avxvnni.cpp)
                out.append((f"ell_avx2-{lanes}{seg}/avx_vnni", out[-1][1], "ell_avx2", "avx_vnni"))
        out.append(("pairs_avx2", pack_sparse(t, lanes="none", quad_rows=0, pairs=1), "pairs_avx2", "avx2"))
        if "avx_vnni" in ISAS:   # the same kernel, chosen there from M = 12 (kPairsMinMVnni)
            out.append(("pairs_avx2/avx_vnni", out[-1][1], "pairs_avx2", "avx_vnni"))
        if _whole_quads(t):
            for g in ((1, 4) if t.shape[0] % 4 == 0 else (1,)):
                out.append((f"quad_tiles_avx2-{g}", pack_sparse(t, lanes="none", quad_rows=g, pairs=0),
                            "quad_tiles_avx2", "avx2"))
                if "avx_vnni" in ISAS:   # the same tiles with the vpdpbusd step (sparse_gemm_avxvnni.cpp)
                    out.append((f"quad_tiles_avx2-{g}/avx_vnni", pack_sparse(t, lanes="none", quad_rows=g, pairs=0),
                                "quad_tiles_avx2", "avx_vnni"))
    if not VNNI:
        return out
    for lanes, seg in LANES:
        out.append((f"ell-{lanes}{seg}", pack_sparse(t, lanes=lanes, quad_rows=0, segment=seg), "ell", "avx512_vnni"))
    quad_rows = (1, 4) if t.shape[0] % 4 == 0 else (1,)
    for g in quad_rows:
        out.append((f"quad_tiles-{g}", pack_sparse(t, lanes="none", quad_rows=g), "quad_tiles", "avx512_vnni"))
    return out


def _whole_quads(t) -> bool:
    """bsr blocks made of whole aligned column quads without a -128 weight: the AVX2 quad tiles
    take it (csrc/sparse_gemm.h)."""
    return (t.layout == "bsr" and t.params["block_shape"][1] % 4 == 0
            and not (np.asarray(t.fields["qdata"]) == -128).any())


@pytest.fixture
def restore_native_state():
    """Tests that force a code path or a thread count put the previous ones back (the path may
    have been forced for the whole run with QRT_NATIVE_ISA)."""
    threads = _native.get_threads()
    forced = os.environ.get("QRT_NATIVE_ISA")
    yield
    _native.set_int8_isa(forced or "auto")
    _native.set_threads(threads)


# --- every layout, pattern and awkward shape, through the registered kernel ----------------------

SPARSE_CASES = [  # (layout, kind, block, nm, N, K)
    ("csr", "magnitude0.7", None, None, 33, 200),
    ("csr", "magnitude0.9", None, None, 64, 700),
    ("csr", "magnitude0.95", None, None, 16, 130),
    ("csr", "dense", None, None, 17, 100),               # 0% sparsity
    ("csr", "all_pruned", None, None, 9, 70),            # 100%
    ("csr", "empty_rows", None, None, 40, 130),
    ("csr", "explicit_zeros", None, None, 20, 60),
    ("csr", "magnitude0.7", None, None, 1, 63),          # N = 1
    ("csr", "magnitude0.5", None, None, 5, 1),           # K = 1
    ("bsr", "block", (1, 4), None, 33, 136),
    ("bsr", "block", (4, 4), None, 36, 204),
    ("bsr", "block", (16, 1), None, 48, 90),
    ("bsr", "block", (1, 16), None, 20, 144),
    ("bsr", "block", (2, 8), None, 18, 72),
    ("bsr", "block", (4, 8), None, 20, 264),
    ("bsr", "block", (16, 4), None, 48, 100),
    ("bsr", "block", (3, 2), None, 21, 30),
    ("bsr", "block", (1, 1), None, 7, 45),
    ("bsr", "zero_blocks", (4, 4), None, 32, 64),        # all-zero stored blocks
    ("bsr", "dense", (4, 4), None, 16, 36),
    ("bsr", "all_pruned", (1, 4), None, 8, 16),
    ("nm", "nm", None, (2, 4), 33, 200),
    ("nm", "nm", None, (1, 4), 16, 132),
    ("nm", "nm", None, (2, 8), 7, 64),
    ("nm", "nm", None, (3, 16), 5, 96),                  # 4-bit position codes
    ("nm", "nm", None, (1, 2), 6, 10),                   # 1-bit codes
    ("nm", "nm", None, (5, 32), 4, 160),                 # 8-bit codes
]


def _case_id(c):
    layout, kind, block, nm, n, k = c
    extra = f"{block[0]}x{block[1]}" if block else (f"{nm[0]}of{nm[1]}" if nm else "")
    return f"{layout}-{kind}{extra}-N{n}-K{k}"


@pytest.mark.parametrize("case", SPARSE_CASES, ids=_case_id)
@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_sparse_linear_matches_reference(case, act):
    """The registered ("Linear", layout, "native") kernel on its automatic path, every M, with
    and without bias."""
    layout, kind, block, nm, n, k = case
    rng = _rng("linear", case, act)
    t = pack_sparse_case(rng, layout, n, k, kind, block=block or (1, 4), nm=nm or (2, 4))
    bias = rng.standard_normal(n).astype(np.float32)
    run = registry.lookup("Linear", layout, "native")(registry.fill_attrs("Linear", ACTS[act]), {1: t})
    for m in MS:
        x = _x(rng, (m, k))
        b = bias if (m + n) % 2 else None
        _assert_same(run(x, t, b)[0], _reference(t, ACTS[act], x, b), f"{_case_id(case)} M={m} bias={b is not None}")


@pytest.mark.parametrize("case", SPARSE_CASES, ids=_case_id)
def test_every_path_exact_and_fully_written(case, restore_native_state):
    """Every code path (_variants) into a poisoned output buffer: all elements written, the
    reference's bits, for M across the 4-row ELL groups and the 16-row tiles; M = 45 also takes
    the AVX-512 ELL kernel's prefetching first pass (M >= 32), then 8-, 4- and 1-row passes."""
    layout, kind, block, nm, n, k = case
    rng = _rng("paths", case)
    t = pack_sparse_case(rng, layout, n, k, kind, block=block or (1, 4), nm=nm or (2, 4))
    bias = rng.standard_normal(n)
    for m in (1, 5, 17, 45):
        x = _x(rng, (m, k))
        for act in ("dynamic", "static"):
            ref = _reference(t, ACTS[act], x, bias)
            for label, w, path, isa in _variants(t):
                _native.set_int8_isa(isa)
                out = np.full((m, n), np.nan, np.float32)      # poisoned: an unwritten element fails
                got = _native.sparse_int8_linear(w, x, bias, *_binding_args(ACTS[act]), out=out, path=path)
                assert np.shares_memory(got, out)
                _assert_same(out, ref, f"{_case_id(case)} {label} M={m} {act}")


@pytest.mark.parametrize("case", [c for c in SPARSE_CASES if c[4] % 16 or c[0] == "bsr"], ids=_case_id)
def test_fused_activation_is_the_activation_afterwards(case, restore_native_state):
    """activation= applies the activation to each block of outputs right after the kernel wrote
    it (csrc/sparse_gemm.h): the bits of apply_activation on the whole output afterwards, on every
    path (ELL blocks, quad tiles and pairs cover different rectangles of Y; N here is not a
    multiple of 16, or the blocks are bsr), for M across the 16-row tiles, 1 and 2 threads,
    into a poisoned output (every element written once, activated once)."""
    layout, kind, block, nm, n, k = case
    rng = _rng("fused-act", case)
    t = pack_sparse_case(rng, layout, n, k, kind, block=block or (1, 4), nm=nm or (2, 4))
    bias = rng.standard_normal(n)
    for m in (1, 17, 33):
        x = _x(rng, (m, k))
        for label, w, path, isa in _variants(t):
            _native.set_int8_isa(isa)
            plain = _native.sparse_int8_linear(w, x, bias, path=path)
            for act in ("relu", "gelu", "gelu_tanh"):
                want = plain.copy()
                _native.apply_activation(want, act)
                for threads in (1, 2):
                    _native.set_threads(threads)
                    out = np.full((m, n), np.nan, np.float32)
                    _native.sparse_int8_linear(w, x, bias, out=out, path=path, activation=act)
                    np.testing.assert_array_equal(out, want, err_msg=f"{_case_id(case)} {label} M={m} {act} t={threads}")
    with pytest.raises(ValueError, match="activation = 'tanh', expected one of none, relu, gelu, gelu_tanh"):
        _native.sparse_int8_linear(w, x, bias, activation="tanh")


def _assert_on_1_and_2_threads(w, x, bias, attrs, ref, what):
    """sparse_int8_linear of packed w into a NaN-poisoned output, on 1 and 2 threads: the
    reference's bits (every output written, none depending on the split)."""
    for threads in (1, 2):
        _native.set_threads(threads)
        out = np.full((x.shape[0], w.n), np.nan, np.float32)
        _native.sparse_int8_linear(w, x, bias, *_binding_args(attrs), out=out)
        _assert_same(out, ref, f"{what} threads={threads}")


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2")
@pytest.mark.parametrize("case", SPARSE_CASES, ids=_case_id)
def test_avx2_kernel_on_awkward_shapes(case, restore_native_state):
    """The AVX2 kernels (csrc/sparse_gemm_avx2.cpp) with the ISA forced to "avx2": the automatic
    path must be "ell_avx2" for ELL weights without pairs, and for a weight with pairs
    "pairs_avx2" from M = 8 ("ell_avx2" below; asserted, so that a fall back to another path
    fails here), or "quad_tiles_avx2" from M = 4 where quads were built, for each lane kind and the auto packing, M = 1 to 33 (the 4-row groups, their
    3 / 2 / 1 row remainders, 16-row tiles and their edges), dynamic and static activations
    (z != 0 and z = 0), with and without bias, 1 and 2 threads, into poisoned outputs: the
    reference's bits."""
    layout, kind, block, nm, n, k = case
    rng = _rng("avx2", case)
    t = pack_sparse_case(rng, layout, n, k, kind, block=block or (1, 4), nm=nm or (2, 4))
    bias = rng.standard_normal(n)
    weights = [(f"{lanes}{seg}", pack_sparse(t, lanes=lanes, quad_rows=0, pairs=0, segment=seg)) for lanes, seg in AVX2_LANES]
    weights.append(("auto", pack_sparse(t, pairs=0)))
    weights.append(("pairs", pack_sparse(t, pairs=1)))
    quads = _whole_quads(t)          # auto packing builds quads too: from M = 8 they run
    _native.set_int8_isa("avx2")
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 33):
        x = _x(rng, (m, k))
        for act in ACTS:
            b = bias if (m + len(act)) % 2 else None
            ref = _reference(t, ACTS[act], x, b)
            for lanes, w in weights:
                if quads and lanes in ("auto", "pairs") and m >= 4:
                    path = "quad_tiles_avx2"
                else:
                    path = "pairs_avx2" if lanes == "pairs" and m >= 8 else "ell_avx2"
                assert w.path(m) == path, (lanes, w.lanes, m)
                _assert_on_1_and_2_threads(w, x, b, ACTS[act], ref, f"{_case_id(case)} {path}-{lanes} M={m} {act}")


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2")
@pytest.mark.parametrize("block,n,k", [((4, 4), 36, 136), ((1, 4), 17, 260), ((8, 4), 32, 64)])
def test_avx2_quad_tiles_on_seven_bit_weights(block, n, k, restore_native_state):
    """7-bit values (every |q| <= 63, the converter's weight_bits=7) take the narrow quad tiles
    (vpmaddubsw on u = qx + 128, no sign step; corrected by (128 + z) rowsum): the reference's
    bits for M = 4 to 33, dynamic and static activations, 1 and 2 threads; one 64 turns them
    back into the signed tiles, with the same results."""
    rng = _rng("quads-narrow", block, n, k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    mask = prune.block_mask(w, 0.7, block)
    t = layouts.pack("bsr", "w", w, mask, quant="int8", block_shape=block, qmax=63)
    assert np.abs(np.asarray(t.fields["qdata"])).max() == 63
    wide_q = np.array(t.fields["qdata"])
    wide_q.reshape(-1)[np.flatnonzero(wide_q.reshape(-1))[0]] = 64
    wide = layouts.PackedTensor(t.name, t.layout, t.dtype, t.shape, {**t.fields, "qdata": wide_q}, dict(t.params))
    narrow_w, wide_w = pack_sparse(t), pack_sparse(wide)
    assert narrow_w.quads_narrow and not wide_w.quads_narrow
    _native.set_int8_isa("avx2")
    for m in (4, 7, 16, 33):
        x = _x(rng, (m, k))
        for act in ACTS:
            for tt, pw in ((t, narrow_w), (wide, wide_w)):
                assert pw.path(m) == "quad_tiles_avx2"
                ref = _reference(tt, ACTS[act], x)
                _assert_on_1_and_2_threads(pw, x, None, ACTS[act], ref, f"{block} M={m} {act} narrow={pw.quads_narrow}")


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2")
def test_avx2_quad_tiles_refuse_a_minus_128_weight(restore_native_state):
    """The AVX2 quad tiles multiply |qx| by sign(qx) w (vpsignb), exact only while no quad weight
    is -128 (whose negation does not fit int8): such a weight is not offered the path (auto
    takes the pairs, a forced path is refused), and its results stay the reference's."""
    rng = _rng("quads-min")
    t = pack_sparse_case(rng, "bsr", 32, 128, block=(4, 4))
    q = np.array(t.fields["qdata"])
    q.reshape(-1)[5] = -128
    t = layouts.PackedTensor(t.name, t.layout, t.dtype, t.shape, {**t.fields, "qdata": q}, dict(t.params))
    w = pack_sparse(t, pairs=1)
    assert w.quad_rows == 4
    _native.set_int8_isa("avx2")
    assert w.path(16) == "pairs_avx2"
    x = _x(rng, (16, 128))
    with pytest.raises(ValueError, match="sparse path 'quad_tiles_avx2' is not available"):
        _native.sparse_int8_linear(w, x, path="quad_tiles_avx2")
    _assert_same(_native.sparse_int8_linear(w, x), _reference(t, ACTS["dynamic"], x), "pairs with a -128 weight")
    ok = pack_sparse(pack_sparse_case(rng, "bsr", 32, 128, block=(4, 4)), pairs=1)
    assert ok.path(16) == "quad_tiles_avx2"


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2")
@pytest.mark.parametrize("k", [16384, 16385, 16400])
def test_avx2_pairs_column_forms(k, restore_native_state):
    """The pairs store 4 x column (the loads' x8 addressing) up to K = 16384 (column 16383:
    65532) and the column itself beyond (4 x 16384 does not fit uint16): both give the
    reference's bits, the last columns included, on 1 and 2 threads and over 2 activation tiles."""
    rng = _rng("pairs-cols", k)
    t = pack_sparse_case(rng, "csr", 16, k, kind="magnitude0.9")
    q = np.array(t.fields["qdata"])
    idx = np.array(t.fields["indices"])
    q[idx >= k - 4] = 127                            # the highest columns weigh most
    t = layouts.PackedTensor(t.name, t.layout, t.dtype, t.shape, {**t.fields, "qdata": q}, dict(t.params))
    w = pack_sparse(t, lanes="none", quad_rows=0, pairs=1)
    assert w.pairs_col_x4 == (k <= 16384)
    x = _x(rng, (32, k))
    ref = _reference(t, ACTS["dynamic"], x)
    for isa in ["avx2"] + (["avx_vnni"] if "avx_vnni" in ISAS else []):
        _native.set_int8_isa(isa)
        assert w.path(32) == "pairs_avx2"
        _assert_on_1_and_2_threads(w, x, None, ACTS["dynamic"], ref, f"pairs K={k} {isa}")


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2")
@pytest.mark.parametrize("minus_128", [False, True])
def test_avx2_ell_steps(minus_128, restore_native_state):
    """The AVX2 ELL kernel multiplies with the signed step (|qx| x sign(qx) w, vpmaddubsw) where
    no ELL weight is -128, else with the split step (w = 2 (w >> 1) + (w & 1)), and on the
    avx_vnni path with vpdpbusd (csrc/sparse_ell_half.h): each gives the reference's bits, on
    every ELL form, for M across the 4-row groups, dynamic and static (z != 0: the signed step's
    sums are of qx * w, corrected by z rowsum), 1 and 2 threads."""
    rng = _rng("ell-steps", minus_128)
    t = pack_sparse_case(rng, "csr", 40, 300, "magnitude0.8")
    q = np.array(t.fields["qdata"])
    if minus_128:
        q.reshape(-1)[::7] = -128                # many lanes and pairs of lanes at -128
        t = layouts.PackedTensor(t.name, t.layout, t.dtype, t.shape, {**t.fields, "qdata": q}, dict(t.params))
    assert (q == -128).any() == minus_128
    isas = ["avx2"] + (["avx_vnni"] if "avx_vnni" in ISAS else [])
    for lanes, seg in AVX2_LANES:
        w = pack_sparse(t, lanes=lanes, quad_rows=0, pairs=0, segment=seg)
        assert w.ell_no_min == (not minus_128)
        for m in (1, 3, 4, 9):
            x = _x(rng, (m, 300))
            for act in ("dynamic", "static"):
                ref = _reference(t, ACTS[act], x)
                for isa in isas:
                    _native.set_int8_isa(isa)
                    assert w.path(m) == "ell_avx2"
                    _assert_on_1_and_2_threads(w, x, None, ACTS[act], ref, f"{lanes}{seg} {isa} M={m} {act}")


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2")
def test_avx2_pairs_on_every_participant(restore_native_state):
    """The pairs path on several threads: up to 32 activation rows (2 tiles) every participant
    transposes its own copy of the activations when its first item needs it, above that one
    shared copy (csrc/sparse_gemm.cpp, kPairsOwnCopyTiles). The weight is large enough for the
    call to go parallel (its work counted 3x, above kParallelMinWork); every M across the tile
    edges on 1, 2 and 3 threads gives the reference's bits (a copy left untransposed for one
    participant, or a tile taken from another's copy, fails it)."""
    rng = _rng("pairs-threads")
    t = pack_sparse_case(rng, "csr", 384, 384, "magnitude0.9")
    w = pack_sparse(t, lanes="none", quad_rows=0, pairs=1)
    for isa in ["avx2"] + (["avx_vnni"] if "avx_vnni" in ISAS else []):
        _native.set_int8_isa(isa)
        for m in (8, 16, 17, 32, 33, 48):
            x = _x(rng, (m, 384))
            ref = _reference(t, ACTS["dynamic"], x)
            for threads in (1, 2, 3):
                _native.set_threads(threads)
                _assert_same(_native.sparse_int8_linear(w, x, path="pairs_avx2"), ref,
                             f"pairs {isa} M={m} threads={threads}")


def test_automatic_path_choice(restore_native_state):
    """What auto packs and runs: ELL for every layout (byte lanes where they are denser and
    supported, dword lanes for 4-column blocks), plus quad tiles for bsr with C % 4 == 0. On
    AVX-512 VNNI the quad tiles are taken from M = 8 (4-row quads, R % 4 == 0) or M = 12 (1-row
    quads), ELL below; on AVX2 the AVX2 ELL kernel below M = 8 and the pairs kernel from there
    where pairs were built (auto: where the int8 path is avx2 at pack time), or for every M
    without ELL, and the AVX2 quad tiles from M = 4 for bsr with whole column quads; scalar
    on the scalar ISA and for a weight without either on AVX2."""
    rng = _rng("choice")
    case = pack_sparse_case(rng, "csr", 32, 256, "magnitude0.9")
    csr = pack_sparse(case)
    b44 = pack_sparse(pack_sparse_case(rng, "bsr", 32, 256, block=(4, 4)))
    b14 = pack_sparse(pack_sparse_case(rng, "bsr", 32, 256, block=(1, 4)))
    b161 = pack_sparse(pack_sparse_case(rng, "bsr", 32, 256, block=(16, 1)))
    assert (b44.quad_rows, b44.lanes) == (4, "dword")
    assert b14.quad_rows == 1 and b14.lanes == "dword"
    assert b161.quad_rows == 0 and csr.quad_rows == 0
    assert csr.lanes == ("byte" if BYTE_LANES else "dword")
    everything = (csr, b44, b14, b161)
    _native.set_int8_isa("auto")
    assert csr.path(1) == ("ell" if VNNI else "ell_avx2" if AVX2 else "scalar")
    if VNNI:
        _native.set_int8_isa("avx512_vnni")
        assert csr.path(1) == csr.path(128) == ("ell" if csr.lanes in dict(LANES) else "scalar")
        assert b44.path(1) == b44.path(7) == "ell" and b44.path(8) == b44.path(128) == "quad_tiles"
        assert b14.path(11) == "ell" and b14.path(12) == "quad_tiles"
        assert b161.path(1) == b161.path(128) == ("ell" if b161.lanes in dict(LANES) else "scalar")
    if AVX2:
        _native.set_int8_isa("avx2")
        assert {w.path(m) for w in everything for m in (1, 3)} == {"ell_avx2"}
        assert {w.path(m) for w in (csr, b161) for m in (4, 7)} == {"ell_avx2"}
        for w in (csr, b161):
            assert {w.path(m) for m in (8, 12, 128)} == {"pairs_avx2" if w.npairs >= 0 else "ell_avx2"}
        for w in (b44, b14):             # whole column quads: the AVX2 quad tiles from M = 4
            assert {w.path(m) for m in (4, 7, 8, 12, 128)} == {"quad_tiles_avx2"}
        with_pairs = pack_sparse(case, pairs=1)
        assert (with_pairs.path(7), with_pairs.path(8)) == ("ell_avx2", "pairs_avx2")
        assert pack_sparse(case, lanes="none", quad_rows=0, pairs=1).path(1) == "pairs_avx2"
        assert pack_sparse(case, lanes="none", quad_rows=0, pairs=0).path(1) == "scalar"
        if "avx_vnni" in ISAS:           # its ELL step is one vpdpbusd: ELL up to M = 11
            _native.set_int8_isa("avx_vnni")
            assert (with_pairs.path(11), with_pairs.path(12)) == ("ell_avx2", "pairs_avx2")
            _native.set_int8_isa("avx2")
        per_row = np.diff(case.fields["indptr"].astype(np.int64))
        assert pack_sparse(case, pairs=0).npairs == -1 and with_pairs.npairs == int(((per_row + 1) // 2).sum())
    _native.set_int8_isa("scalar")
    assert {w.path(m) for w in everything for m in (1, 128)} == {"scalar"}


def window_vectors(indptr: np.ndarray, indices: np.ndarray, n: int, k: int) -> int:
    """Vectors of byte-lane ELL over sliding 64-byte windows (csrc/sparse_gemm.cpp,
    ell_build_windows), counted independently: per block of 16 rows, each window starts at the
    lowest column any row still has to place (at most round_up(K, 64) - 64) and takes up to 4
    of each row's next columns below its start + 64."""
    last = -(-k // 64) * 64 - 64
    total = 0
    for b in range(0, n, 16):
        cols = [list(indices[indptr[r]:indptr[r + 1]]) for r in range(b, min(n, b + 16))]
        while any(cols):
            start = min(min(min(c) for c in cols if c), last)
            cols = [c[sum(1 for col in c[:4] if col < start + 64):] for c in cols]
            total += 1
    return total


def test_byte_lane_segment_choice(restore_native_state):
    """Byte lanes are built over the segment sparse_byte_segment() names for the int8 path at
    pack time (sliding windows, 0, on AVX2-class and scalar paths; on AVX-512 VNNI and AMX 64 or
    windows, by the permute probe; where that is 64, a weight whose 64-byte form needs
    sparse_segment_tolerance(its 128-byte vectors) x the vectors or more takes windows: M = 1
    streams every vector) unless forced; dword lanes always over 128 bytes; the vector counts
    follow the segment (each vector is 4 weights of 16 rows inside one segment) or, for windows,
    the greedy windows (window_vectors: each starts at the lowest column still to place)."""
    rng = _rng("segment")
    cases = [pack_sparse_case(rng, "csr", 48, 300, "magnitude0.8"),     # 64 needs 1.07x the vectors
             pack_sparse_case(rng, "csr", 48, 512, "magnitude0.95")]    # 64 needs 1.6x
    for case in cases:
        n, k = case.shape
        ip, ix = case.fields["indptr"].astype(np.int64), case.fields["indices"].astype(np.int64)
        rows = np.repeat(np.arange(n), np.diff(ip))

        def vectors(seg):
            if seg == 0:
                return window_vectors(ip, ix, n, k)
            counts = np.zeros((n, -(-k // seg)), np.int64)
            np.add.at(counts, (rows, ix // seg), 1)
            return int(np.ceil(counts.reshape(n // 16, 16, -1).max(1) / 4).sum())

        for isa in ISAS:
            _native.set_int8_isa(isa)
            expected = _native.sparse_byte_segment()
            avx512 = isa in ("avx512_vnni", "amx")     # the AMX path's sparse kernels are AVX-512's
            assert expected == 0 if not avx512 else expected in (64, 0)
            tolerance = _native.sparse_segment_tolerance(vectors(128))
            if avx512 and expected == 64 and vectors(64) >= tolerance * vectors(128):
                expected = 0
            if BYTE_LANES:
                auto = pack_sparse(case, lanes="byte", quad_rows=0)
                assert (auto.segment, auto.ell_vectors) == (expected, vectors(expected)), (isa, vectors(64), vectors(128))
        if BYTE_LANES:
            for seg in (64, 128, 0):
                w = pack_sparse(case, lanes="byte", quad_rows=0, segment=seg)
                assert (w.lanes, w.segment, w.windows, w.ell_vectors) == ("byte", seg, seg == 0, vectors(seg))
            assert vectors(0) < vectors(128) < vectors(64)   # the windows follow the rows: the fewest vectors
    ratios = [pack_sparse(c, lanes="byte", quad_rows=0, segment=64).ell_vectors
              / pack_sparse(c, lanes="byte", quad_rows=0, segment=128).ell_vectors for c in cases] if BYTE_LANES else [1, 2]
    assert ratios[0] < 1.2 <= ratios[1], ratios   # both sides of the rule are exercised
    assert pack_sparse(cases[0], lanes="dword", quad_rows=0, segment=64).segment == 128
    assert pack_sparse(cases[0], lanes="none", quad_rows=0).segment == 0
    two, one = _native.sparse_permute_probe()
    if VNNI and _native.sparse_has_vbmi():
        assert two > 0 and one > 0
    else:
        assert (two, one) == (0.0, 0.0)
        assert _native.sparse_segment_tolerance(1) == 1.2      # no probe: the fixed rule
    assert 1.2 <= _native.sparse_segment_tolerance(1) <= 2.0
    assert _native.sparse_segment_tolerance((1 << 20) // 128 + 1) == 1.2   # above 1 MiB of vectors: the fixed rule


@pytest.mark.parametrize("layout,block", [("csr", None), ("bsr", (4, 4)), ("bsr", (1, 4)), ("bsr", (16, 1)),
                                          ("nm", None)])
def test_thread_count_does_not_change_results(layout, block, restore_native_state):
    """Sizes above the parallel threshold (csrc/sparse_gemm.cpp kParallelMinWork), every path:
    1, 2 and 3 threads give the reference's bits."""
    rng = _rng("threads", layout, block)
    t = pack_sparse_case(rng, layout, 512, 768, "magnitude0.7" if layout == "csr" else "block0.5", block=block or (1, 4))
    bias = rng.standard_normal(512).astype(np.float32)
    variants = _variants(t)
    for m in (1, 16, 40):
        x = _x(rng, (m, 768))
        ref = _reference(t, STATIC, x, bias)
        for label, w, path, isa in variants:
            _native.set_int8_isa(isa)
            for threads in (1, 2, 3):
                _native.set_threads(threads)
                got = _native.sparse_int8_linear(w, x, bias, *_binding_args(STATIC), path=path)
                _assert_same(got, ref, f"{layout}{block or ''} {label} M={m} threads={threads}")


def test_concurrent_calls_from_python_threads():
    """The kernel runs without the GIL; calls from several Python threads on one packed weight
    each get their own, correct result."""
    rng = _rng("concurrent")
    t = pack_sparse_case(rng, "csr", 300, 200)
    run = registry.lookup("Linear", "csr", "native")({"act_quant": "dynamic"}, {1: t})
    xs = [_x(rng, (3 + 7 * i, 200)) for i in range(8)]
    want = [_reference(t, ACTS["dynamic"], x) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: run(x, t, None)[0], xs))
    for i, (g, r) in enumerate(zip(got, want)):
        _assert_same(g, r, f"call {i}")


# --- numerics at the edges --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the reference's x / inf
def test_extreme_values_and_saturation(restore_native_state):
    """Static saturation at -128 / 127, one huge value per dynamic row, .5 ties, NaN / inf rows
    (NaN rows, or finite after static clipping), subnormal rows, on every path."""
    rng = _rng("extreme")
    t = pack_sparse_case(rng, "bsr", 32, 96, block=(4, 4))
    x = _x(rng, (10, 96)) * 100
    x[1, 5] = 1e30
    x[2] = -3.5
    x[3, ::2] = 0.5 * 0.037                      # exact .5 ties under the static scale
    x[4, :] = np.float32(1e-40) * np.arange(96)
    x[6, 7] = np.nan
    x[7, 1] = -np.inf
    x[8, 3] = np.inf
    x[9] = np.linspace(-127.5, 127.5, 96) * np.float32(0.037)
    for act in ("dynamic", "static", "static_z0"):
        ref = _reference(t, ACTS[act], x)
        for label, w, path, isa in _variants(t):
            _native.set_int8_isa(isa)
            _assert_same(_native.sparse_int8_linear(w, x, None, *_binding_args(ACTS[act]), path=path), ref,
                         f"{label} {act}")


@pytest.mark.parametrize("k", [MAX_K_INT32 - 1, MAX_K_INT32 + 7])
def test_int32_accumulator_bound(k, restore_native_state):
    """The largest |acc|: static z = -128 with x far above range (qx - z = 255) and qw = +-127
    everywhere: K * 255 * 127. Up to kMaxKInt32 the vector paths' wrapping int32 arithmetic is
    exact; above it every path is the scalar int64 one (auto picks it)."""
    k -= k % 4                                   # 4-column blocks
    w = np.ones((4, k), np.float32)
    w[1] = -1
    w[2, ::2] = -1
    t_csr = layouts.pack("csr", "w", w, np.ones((4, k), bool), quant="int8")
    t_bsr = layouts.pack("bsr", "w", w, np.ones((4, k), bool), quant="int8", block_shape=(4, 4))
    x = np.full((2, k), 1e3, np.float32)
    x[1, ::3] = -1e3
    attrs = {"act_quant": "static", "act_scale": 0.5, "act_zero_point": -128}
    for t in (t_csr, t_bsr):
        ref = _reference(t, attrs, x)
        assert abs(float(ref[0, 0])) > 0.95 * k * 255 * 127 * float(t.fields["scale"][0]) * 0.5
        for label, wp, path, isa in _variants(t):
            _native.set_int8_isa(isa)
            if k > MAX_K_INT32 and path != "scalar":
                with pytest.raises(ValueError, match="not available"):
                    _native.sparse_int8_linear(wp, x, None, *_binding_args(attrs), path=path)
                continue
            _assert_same(_native.sparse_int8_linear(wp, x, None, *_binding_args(attrs), path=path), ref,
                         f"{t.layout} {label} K={k}")
        _native.set_int8_isa("auto")
        auto = pack_sparse(t)
        assert (auto.path(2) == "scalar") == (k > MAX_K_INT32 or not VECTOR)
        _assert_same(_native.sparse_int8_linear(auto, x, None, *_binding_args(attrs)), ref, f"{t.layout} auto K={k}")


# --- shapes, dtypes, modes ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(70,), (5, 70), (2, 3, 70), (2, 2, 2, 70), (0, 70)],
                         ids=["rank1", "rank2", "rank3", "rank4", "empty"])
@pytest.mark.parametrize("layout", ["csr", "bsr", "nm"])
def test_input_ranks(shape, layout):
    """X (..., K) of any rank, including no rows at all (Y (0, N), as the reference)."""
    rng = _rng("ranks", shape, layout)
    t = pack_sparse_case(rng, layout, 36, 70 if layout != "nm" else 72, block=(4, 2))
    k = t.shape[1]
    shape = shape[:-1] + (k,)
    x = _x(rng, shape)
    b = rng.standard_normal(36).astype(np.float32)
    run = registry.lookup("Linear", layout, "native")({"act_quant": "dynamic"}, {1: t})
    got = run(x, t, b)[0]
    assert got.shape == shape[:-1] + (36,)
    _assert_same(got, _reference(t, ACTS["dynamic"], x, b), f"{shape}")


def test_non_contiguous_input_bias_dtypes_and_other_float_dtypes():
    """A strided X is copied by the wrapper; float64 / float16 biases; float64 / float16 X run
    the reference's arithmetic (sparse.py docstring)."""
    rng = _rng("layouts")
    t = pack_sparse_case(rng, "csr", 20, 30)
    run = registry.lookup("Linear", "csr", "native")(STATIC, {1: t})
    x = _x(rng, (9, 60))[:, ::2]
    for b in (rng.standard_normal(20), rng.standard_normal(20).astype(np.float16), None):
        _assert_same(run(x, t, b)[0], _reference(t, STATIC, x, b), f"{getattr(b, 'dtype', None)}")
    for dtype in (np.float64, np.float16):
        xd = _x(rng, (4, 30)).astype(dtype)
        _assert_same(run(xd, t, None)[0], _reference(t, STATIC, xd), f"{dtype}")


@pytest.mark.parametrize("quant", ["none", "int8"])
@pytest.mark.parametrize("layout", ["csr", "bsr", "nm"])
def test_act_none_within_float32_bound(quant, layout):
    """act_quant "none" (float values, or weight-only int8): float32 BLAS on the densified
    weight, within WEIGHT_ONLY_ERR_PER_TERM of the reference."""
    rng = _rng("none", quant, layout)
    t = pack_sparse_case(rng, layout, 32, 96, quant=quant, block=(4, 4))
    run = registry.lookup("Linear", layout, "native")({"act_quant": "none"}, {1: t})
    x = _x(rng, (7, 96))
    b = rng.standard_normal(32).astype(np.float32)
    got, ref = run(x, t, b)[0], _reference(t, {"act_quant": "none"}, x, b)
    bound = (np.abs(x.astype(np.float64)) @ np.abs(t.to_dense().astype(np.float64)).T + np.abs(b)) \
        * (96 + 2) * WEIGHT_ONLY_ERR_PER_TERM
    assert got.dtype == np.float32
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound + np.spacing(np.abs(ref)))


def test_per_tensor_scale():
    rng = _rng("per-tensor")
    w = rng.standard_normal((24, 64)).astype(np.float32)
    t = layouts.pack("csr", "w", w, prune.magnitude_mask(w, 0.6), quant="int8", per_channel=False)
    assert t.fields["scale"].shape == (1,)
    x = _x(rng, (5, 64))
    run = registry.lookup("Linear", "csr", "native")({"act_quant": "dynamic"}, {1: t})
    _assert_same(run(x, t, None)[0], _reference(t, ACTS["dynamic"], x), "per-tensor")


# --- errors ---------------------------------------------------------------------------------------

def _csr_fields(rng):
    t = pack_sparse_case(rng, "csr", 6, 20, "magnitude0.5")
    f = t.fields
    return (np.ascontiguousarray(f["indptr"]), np.ascontiguousarray(f["indices"]), np.ascontiguousarray(f["qdata"]),
            np.ascontiguousarray(np.broadcast_to(f["scale"], (6,)), np.float32))


def test_bad_weights_are_refused_with_a_reason():
    rng = _rng("bad-weights")
    ip, ix, q, s = _csr_fields(rng)
    shape = (6, 20)
    good = _native.sparse_int8_csr(ip, ix, q, s, shape)
    assert (good.n, good.k, good.nnz) == (6, 20, q.size) and good.nbytes > q.nbytes

    def with_value(a, i, v):
        a = a.copy()
        a[i] = v
        return a
    row0 = int(ip[1]) - int(ip[0])
    assert row0 >= 2
    cases = [
        (TypeError, "indptr must have dtype int32 or int64, got float64", lambda: _native.sparse_int8_csr(ip.astype(np.float64), ix, q, s, shape)),
        (TypeError, "indptr must be a numpy array", lambda: _native.sparse_int8_csr(ip.tolist(), ix, q, s, shape)),
        (TypeError, "indices must have dtype uint8, uint16, int32 or int64, got int8", lambda: _native.sparse_int8_csr(ip, ix.astype(np.int8), q, s, shape)),
        (ValueError, "indices must be C-contiguous", lambda: _native.sparse_int8_csr(ip, np.repeat(ix, 2)[::2], q, s, shape)),
        (ValueError, r"indptr has 6 entries, expected N \+ 1 = 7", lambda: _native.sparse_int8_csr(ip[:-1].copy(), ix, q, s, shape)),
        (ValueError, r"indptr\[0\] = 1, expected 0", lambda: _native.sparse_int8_csr(with_value(ip, 0, 1), ix, q, s, shape)),
        (ValueError, "indptr decreases at row 1", lambda: _native.sparse_int8_csr(with_value(ip, 2, 0), ix, q, s, shape)),
        (ValueError, r"indptr\[-1\] = .* but .* entries are stored", lambda: _native.sparse_int8_csr(with_value(ip, 6, ip[6] - 1), ix, q, s, shape)),
        (ValueError, r"indices\[0\] = 20 is out of range \[0, 20\)", lambda: _native.sparse_int8_csr(ip, with_value(ix, 0, 20), q, s, shape)),
        (ValueError, r"indices\[0\] = -1 is out of range", lambda: _native.sparse_int8_csr(ip.astype(np.int64), with_value(ix.astype(np.int32), 0, -1), q, s, shape)),
        (ValueError, "indices of row 0 are not strictly increasing", lambda: _native.sparse_int8_csr(ip, with_value(ix, 1, ix[0]), q, s, shape)),
        (TypeError, "qdata must have dtype int8, got uint8", lambda: _native.sparse_int8_csr(ip, ix, q.view(np.uint8), s, shape)),
        (ValueError, r"qdata has shape \(\d+,\), expected \(\d+,\) \(one per index\)", lambda: _native.sparse_int8_csr(ip, ix, q[:-1].copy(), s, shape)),
        (ValueError, r"scale has shape \(1,\), expected \(6,\)", lambda: _native.sparse_int8_csr(ip, ix, q, s[:1].copy(), shape)),
        (TypeError, "scale must have dtype float32, got float64", lambda: _native.sparse_int8_csr(ip, ix, q, s.astype(np.float64), shape)),
        (ValueError, r"scale\[2\] = .*expected finite and > 0", lambda: _native.sparse_int8_csr(ip, ix, q, with_value(s, 2, np.nan), shape)),
        (ValueError, r"shape \(0, 20\) must have N >= 1", lambda: _native.sparse_int8_csr(ip[:1].copy(), ix[:0], q[:0], s[:0], (0, 20))),
        (ValueError, "lanes = 'wide'", lambda: _native.sparse_int8_csr(ip, ix, q, s, shape, lanes="wide")),
        (ValueError, "quad_rows must be", lambda: _native.sparse_int8_csr(ip, ix, q, s, shape, quad_rows=3)),
        (ValueError, "pairs must be -1 \\(auto\\), 0 or 1, got 2", lambda: _native.sparse_int8_csr(ip, ix, q, s, shape, pairs=2)),
        (ValueError, r"segment must be -1 \(auto\), 0 \(sliding windows\), 64 or 128, got 32", lambda: _native.sparse_int8_csr(ip, ix, q, s, shape, segment=32)),
        (ValueError, r"quads of 4 rows need N % 4 == 0", lambda: _native.sparse_int8_csr(ip, ix, q, s, shape, quad_rows=4)),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()
    if not BYTE_LANES:
        with pytest.raises(ValueError, match="VBMI"):
            _native.sparse_int8_csr(ip, ix, q, s, shape, lanes="byte")
    else:
        assert _native.sparse_int8_csr(ip, ix, q, s, shape, lanes="byte").lanes == "byte"
    # nothing is lost: the weight packed before still gives the reference's bits
    t = pack_sparse_case(_rng("bad-weights"), "csr", 6, 20, "magnitude0.5")
    x = _x(rng, (3, 20))
    _assert_same(_native.sparse_int8_linear(good, x), _reference(t, ACTS["dynamic"], x), "after errors")


def test_bad_bsr_and_nm_weights_are_refused_with_a_reason():
    rng = _rng("bad-bsr-nm")
    t = pack_sparse_case(rng, "bsr", 8, 16, block=(2, 4))
    f = t.fields
    ip, ix, q = np.ascontiguousarray(f["indptr"]), np.ascontiguousarray(f["indices"]), np.ascontiguousarray(f["qdata"])
    s = np.ascontiguousarray(np.broadcast_to(f["scale"], (8,)), np.float32)
    assert ix.size >= 1
    bad_ix = ix.copy()
    bad_ix[0] = 4                                 # K / C = 4 block columns
    with pytest.raises(ValueError, match=r"indices\[0\] = 4 is out of range \[0, 4\) \(block column\)"):
        _native.sparse_int8_bsr(ip, bad_ix, q, s, (8, 16))
    with pytest.raises(ValueError, match=r"qdata has shape \(\d+, 3, 4\): block_shape"):
        _native.sparse_int8_bsr(ip, ix, np.zeros((ix.size, 3, 4), np.int8), s, (8, 16))
    with pytest.raises(ValueError, match=r"qdata has shape \(\d+, 8\), expected \(nb, R, C\)"):
        _native.sparse_int8_bsr(ip, ix, q.reshape(ix.size, 8), s, (8, 16))
    with pytest.raises(ValueError, match="indices has"):
        _native.sparse_int8_bsr(ip, ix[:-1].copy(), q, s, (8, 16))
    with pytest.raises(ValueError, match=r"indptr has 3 entries, expected N / R \+ 1 = 5"):
        _native.sparse_int8_bsr(ip[:3].copy(), ix, q, s, (8, 16))

    tn = pack_sparse_case(rng, "nm", 4, 16, nm=(2, 4))       # 2-bit codes, 8 per row: 2 bytes
    meta, qn = np.ascontiguousarray(tn.fields["meta"]), np.ascontiguousarray(tn.fields["qdata"])
    sn = np.ascontiguousarray(np.broadcast_to(tn.fields["scale"], (4,)), np.float32)
    assert _native.sparse_int8_nm(meta, qn, sn, (4, 16), 2, 4).nnz == 32
    swapped = meta.copy()
    swapped[0, 0] = 0b0001_1011                   # group 0 positions (3, 2): not ascending
    with pytest.raises(ValueError, match="meta row 0, group 0: positions are not strictly ascending"):
        _native.sparse_int8_nm(swapped, qn, sn, (4, 16), 2, 4)
    tn3 = pack_sparse_case(rng, "nm", 2, 12, nm=(1, 3))      # m = 3: 2-bit codes, so position 3 is encodable
    m3 = np.ascontiguousarray(tn3.fields["meta"]).copy()
    m3[1, 0] = (m3[1, 0] & ~np.uint8(3)) | np.uint8(3)
    with pytest.raises(ValueError, match="meta row 1, group 0 holds position 3, not < m = 3"):
        _native.sparse_int8_nm(m3, np.ascontiguousarray(tn3.fields["qdata"]), np.ones(2, np.float32), (2, 12), 1, 3)
    tn5 = pack_sparse_case(rng, "nm", 2, 12, nm=(1, 4))      # 3 codes of 2 bits: bits 6..7 unused
    m5 = np.ascontiguousarray(tn5.fields["meta"]).copy()
    m5[0, 0] |= np.uint8(0x80)
    with pytest.raises(ValueError, match="meta row 0: the unused trailing bits"):
        _native.sparse_int8_nm(m5, np.ascontiguousarray(tn5.fields["qdata"]), np.ones(2, np.float32), (2, 12), 1, 4)
    with pytest.raises(ValueError, match=r"meta has shape \(4, 1\), expected \(4, 2\)"):
        _native.sparse_int8_nm(meta[:, :1].copy(), qn, sn, (4, 16), 2, 4)
    with pytest.raises(ValueError, match=r"n:m must satisfy"):
        _native.sparse_int8_nm(meta, qn, sn, (4, 16), 4, 4)
    with pytest.raises(ValueError, match="m = 5 does not divide K = 16"):
        _native.sparse_int8_nm(meta, qn, sn, (4, 16), 2, 5)
    with pytest.raises(TypeError, match="meta must have dtype uint8, got int8"):
        _native.sparse_int8_nm(meta.view(np.int8), qn, sn, (4, 16), 2, 4)


def _native_from_fields(layout, fields, t):
    """The binding called on (possibly malformed) fields of ``t``'s layout."""
    n, k = t.shape
    scale = np.ascontiguousarray(np.broadcast_to(t.fields["scale"], (n,)), np.float32)
    if layout == "csr":
        return _native.sparse_int8_csr(fields["indptr"], fields["indices"], fields["qdata"], scale, (n, k))
    if layout == "bsr":
        return _native.sparse_int8_bsr(fields["indptr"], fields["indices"], fields["qdata"], scale, (n, k))
    return _native.sparse_int8_nm(fields["meta"], fields["qdata"], scale, (n, k), t.params["n"], t.params["m"])


def test_fuzzed_weights_raise_or_match_the_reference():
    """Malformed fields (a random byte flipped, truncated, another dtype, shuffled, empty, not
    contiguous): the binding either raises TypeError / ValueError, or accepts a weight that is
    valid and gives the reference's bits on every path. Never a crash, never a wrong answer."""
    from kernels.reference.packed import PackedPlan, packed_linear_ref
    from kernels.core.layouts import PackedTensor
    rng = _rng("fuzz")
    base = {"csr": pack_sparse_case(rng, "csr", 12, 40), "bsr": pack_sparse_case(rng, "bsr", 12, 40, block=(2, 4)),
            "nm": pack_sparse_case(rng, "nm", 6, 16, nm=(2, 4))}
    dtypes = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float32)
    accepted = 0
    for i in range(600):
        layout = ("csr", "bsr", "nm")[i % 3]
        t = base[layout]
        fields = {name: np.array(a, copy=True) for name, a in t.fields.items() if name != "scale"}
        name = sorted(fields)[int(rng.integers(len(fields)))]
        a = fields[name]
        op = int(rng.integers(6))
        if op == 0 and a.size:                          # one random byte
            a.view(np.uint8).reshape(-1)[int(rng.integers(a.nbytes))] = int(rng.integers(256))
        elif op == 1 and a.shape[0]:                    # truncated
            a = a[:-1].copy()
        elif op == 2:                                   # another dtype
            a = a.astype(dtypes[int(rng.integers(len(dtypes)))])
        elif op == 3:                                   # shuffled
            a = rng.permutation(a.reshape(-1)).reshape(a.shape)
        elif op == 4:                                   # empty
            a = np.zeros((0,) + a.shape[1:], a.dtype)
        else:                                           # not contiguous
            a = np.repeat(a, 2, axis=-1)[..., ::2]
        fields[name] = a
        try:
            w = _native_from_fields(layout, fields, t)
        except (TypeError, ValueError):
            continue
        accepted += 1
        t2 = PackedTensor(t.name, layout, t.dtype, t.shape, {**fields, "scale": t.fields["scale"]}, t.params)
        x = _x(rng, (3, t.shape[1]))
        ref = packed_linear_ref(x, PackedPlan(t2, "dynamic"))
        for path in ("auto", "scalar"):
            _assert_same(_native.sparse_int8_linear(w, x, path=path), ref, f"fuzz {i} {layout} {name} op {op} {path}")
    assert accepted > 0            # some mutations are harmless (a value byte): those are compared


def test_bad_calls_are_refused_with_a_reason(restore_native_state):
    rng = _rng("bad-calls")
    ip, ix, q, s = _csr_fields(rng)
    w = _native.sparse_int8_csr(ip, ix, q, s, (6, 20), lanes="none", quad_rows=0)
    x = _x(rng, (3, 20))
    good = _native.sparse_int8_linear(w, x)
    cases = [
        (TypeError, "X must have dtype float32, got float64", lambda: _native.sparse_int8_linear(w, x.astype(np.float64))),
        (TypeError, "X must be a numpy array", lambda: _native.sparse_int8_linear(w, x.tolist())),
        (ValueError, "X must be C-contiguous", lambda: _native.sparse_int8_linear(w, np.asfortranarray(x))),
        (ValueError, r"X has shape \(3, 21\), expected \(M, 20\)", lambda: _native.sparse_int8_linear(w, np.zeros((3, 21), np.float32))),
        (ValueError, r"X has shape \(20,\)", lambda: _native.sparse_int8_linear(w, x[0])),
        (ValueError, r"bias has shape \(7,\), expected \(6,\)", lambda: _native.sparse_int8_linear(w, x, np.zeros(7, np.float32))),
        (TypeError, "bias must have dtype float32 or float64, got int32", lambda: _native.sparse_int8_linear(w, x, np.zeros(6, np.int32))),
        (ValueError, "act_quant = 'none'", lambda: _native.sparse_int8_linear(w, x, None, "none")),
        (ValueError, "act_scale", lambda: _native.sparse_int8_linear(w, x, None, "static", 0.0, 0)),
        (ValueError, "act_zero_point", lambda: _native.sparse_int8_linear(w, x, None, "static", 0.1, -129)),
        (ValueError, r"out has shape \(3, 7\)", lambda: _native.sparse_int8_linear(w, x, out=np.zeros((3, 7), np.float32))),
        (TypeError, "out must have dtype float32", lambda: _native.sparse_int8_linear(w, x, out=np.zeros((3, 6)))),
        (ValueError, "path = 'fast'", lambda: _native.sparse_int8_linear(w, x, path="fast")),
        (ValueError, "sparse path 'ell' is not available", lambda: _native.sparse_int8_linear(w, x, path="ell")),
        (ValueError, "sparse path 'quad_tiles' is not available", lambda: _native.sparse_int8_linear(w, x, path="quad_tiles")),
        (ValueError, "sparse path 'ell_avx2' is not available", lambda: _native.sparse_int8_linear(w, x, path="ell_avx2")),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()
    read_only = np.zeros((3, 6), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _native.sparse_int8_linear(w, x, out=read_only)
    if VECTOR:                                    # a built structure, but an ISA that cannot run it
        wq = _native.sparse_int8_csr(ip, ix, q, s, (6, 20), lanes="dword")
        _native.set_int8_isa("scalar")
        for path in ("ell", "ell_avx2", "pairs_avx2"):
            with pytest.raises(ValueError, match=f"sparse path '{path}' is not available for this weight on 'scalar'"):
                _native.sparse_int8_linear(wq, x, path=path)
        if VNNI and AVX2:                         # each vector path runs on its own ISA only
            _native.set_int8_isa("avx2")
            with pytest.raises(ValueError, match="sparse path 'ell' is not available for this weight on 'avx2'"):
                _native.sparse_int8_linear(wq, x, path="ell")
            _native.set_int8_isa("avx512_vnni")
            with pytest.raises(ValueError, match="sparse path 'ell_avx2' is not available for this weight on 'avx512"):
                _native.sparse_int8_linear(wq, x, path="ell_avx2")
        _native.set_int8_isa("auto")
    assert np.array_equal(_native.sparse_int8_linear(w, x), good)
    assert _native.sparse_int8_linear(w, np.zeros((0, 20), np.float32)).shape == (0, 6)


def test_bad_inputs_to_the_kernel_are_refused_with_a_reason():
    rng = _rng("bad-kernel")
    t = pack_sparse_case(rng, "csr", 10, 20)
    assert_common_refusals("csr", "native", t)
    with pytest.raises(ValueError, match="stores float values"):
        registry.lookup("Linear", "csr", "native")({"act_quant": "dynamic"}, {1: pack_sparse_case(rng, "csr", 10, 20, quant="none")})
    with pytest.raises(ValueError, match="layouts"):
        registry.lookup("Linear", "csr", "native")({"act_quant": "dynamic"}, {1: layouts.pack("int8", "w", np.ones((4, 4)))})
    with pytest.raises(TypeError, match="packed layout"):
        registry.lookup("Linear", "csr", "native")({"act_quant": "dynamic"}, {1: np.zeros((10, 20), np.float32)})


# --- through a session ----------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [
    {"prune": "magnitude", "sparsity": 0.7, "quant": "int8"},
    {"prune": "magnitude", "sparsity": 0.7, "quant": "int8", "act": "static"},
    {"prune": "block", "sparsity": 0.5, "block": (1, 4), "quant": "int8"},
    # fc2's weight (5, 16) is not tiled by 4 x 4: pruned layer fc1 only (fc2 stays dense int8)
    {"prune": "block", "sparsity": 0.5, "block": (4, 4), "quant": "int8", "layer_sparsity": {"fc2/MatMul": 0.0}},
    {"prune": "nm", "quant": "int8"},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_session_on_converted_pruned_mlp(opts, tmp_path):
    """A pruned, quantized model written to a .qrt file and loaded back (zero-copy read-only
    fields), on backend="native" and "auto" against "reference": the sparse Linears run native
    and give the reference's bits."""
    pytest.importorskip("onnx")
    import runtime
    from tests.model_zoo import small_mlp_onnx
    rng = _rng("session", tuple(opts.items()))
    if opts.get("act") == "static":
        opts = {**opts, "calib": [{"x": _x(rng, (64, 8))}]}
    path = tmp_path / "mlp_sparse.qrt"
    graph = runtime.convert(small_mlp_onnx(), path, **opts)
    native = runtime.InferenceSession(str(path), backend="native")
    auto = runtime.InferenceSession(str(path), backend="auto")
    ref = runtime.InferenceSession(graph, backend="reference")
    sparse_nodes = [p for p in native.plan if p.op == "Linear" and p.layout in ("csr", "bsr", "nm")]
    assert sparse_nodes and all(p.backend == "native" for p in sparse_nodes), native.plan
    assert all(p.backend == "native" for p in auto.plan if p.op == "Linear" and p.layout in ("csr", "bsr", "nm"))
    for batch in (1, 5, 64):
        x = _x(rng, (batch, 8))
        (y, h), (y_ref, h_ref) = native.run(None, {"x": x}), ref.run(None, {"x": x})
        assert np.array_equal(h, h_ref)          # exact sparse int8 Linear, then Relu
        # Softmax may run on another backend's kernel with its own (documented) rounding
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)
        assert np.array_equal(auto.run(None, {"x": x})[1], h_ref)
