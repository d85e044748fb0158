"""Triton backend (kernels/triton_gpu) against the reference kernels.

Without a GPU these run in Triton's interpreter on torch CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), at small sizes: M in {1, 5, 33} (a partial
row tile, and for the weight-only kernel both its GEMV and its tl.dot branch), K not a
multiple of any block, N odd, all-zero rows. Every comparison is with the reference kernel
of the same (op, layout) on the same packed weight (registry.build(..., "reference", ...)),
never with another fast kernel, and every buffer the backend allocates (outputs, quantized
activations, scales, row sums) is poisoned first (the ``poisoned_buffers`` fixture), so an
element a kernel forgets to write fails.

Tolerances, per numerics (kernels/triton_gpu module docstrings):

* int8 activations (int8 layout, bsr with quant "int8"): the quantization and the epilogue
  are the reference's float64 operations and the GEMM is exact, so the result is the
  reference's bits: INT8_ATOL = 0 (ReLU included, it is exact).
* fused GELUs: float64 formulas rounded once; the erf / exp implementations (libdevice on the
  GPU, math.erf / numpy here) may differ by a few float64 ulps, which can move the float32
  rounding by one ulp (GELU_RTOL); where 1 + erf or 1 + tanh cancels (y < -5) both sides
  carry an absolute error of a few 2^-53 |y| (GELU_ATOL, |y| < 100 here).
* weight-only fp32 (int4_grouped, int8 with act_quant "none"): the kernel's weight is the
  reference's float32 dequantized weight exactly; float32 products and sums give
  |Y - Y_ref| <= (K + 3) * FP32_UNIT * (sum_k |x_k w_k| + |b|) (the float32 dot product
  bound, plus the reference's own rounding to float32).
* float16 paths (bsr float values, weight-only "fp16"): X (and for bsr W) rounded to float16,
  |dv| <= FP16_UNIT |v| + FP16_HALF_SUBNORMAL, plus the float32 accumulation as above.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from kernels import registry
from kernels.core.bounds import MAX_K_INT32
from kernels.core.layouts import dense_tensor, pack_bsr, pack_int4_grouped, pack_int8

_REASON = registry.backend_status("triton")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend unavailable: {_REASON}")

if _REASON is None:
    import torch

    from kernels.triton_gpu import DEVICE, int4, sparse
    from kernels.triton_gpu import _common as triton_common
else:  # pragma: no cover
    torch = triton_common = int4 = sparse = DEVICE = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# exact integer GEMM + the reference's float64 quantization and epilogue: the same bits
INT8_ATOL = 0.0
# GELU in float64 rounded to float32: a few float64 ulps of difference between erf / exp
# implementations may flip the float32 rounding by one ulp (2^-23 relative; 2^-22 covers a
# result just above a power of two); the absolute term covers the cancellation of 1 + erf
# (or 1 + tanh) for y < -5, ~4 * 2^-53 * |y| on either side, with |y| < 100 in these tests
GELU_RTOL = 2.0 ** -22
GELU_ATOL = 1e-13
# GELU is Lipschitz with constant max |gelu'| = 1.129 (at y = 2.12; the tanh form's is the
# same to 3 digits): an error bound on the Linear's output carries through with this factor
GELU_LIPSCHITZ = 1.13
# float32 unit roundoff: one rounding of a float32 operation is <= FP32_UNIT relative
FP32_UNIT = 2.0 ** -24
# float16: relative unit roundoff, and half the smallest subnormal step (2^-24) for values
# that round into float16's subnormal range
FP16_UNIT = 2.0 ** -11
FP16_HALF_SUBNORMAL = 2.0 ** -25

MS = (1, 5, 33)
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
WEIGHT_CONFIGS = [{"per_channel": True, "symmetric": True}, {"per_channel": False, "symmetric": True},
                  {"per_channel": True, "symmetric": False}, {"per_channel": False, "symmetric": False}]
ACT_CONFIGS = [{"act_quant": "dynamic"}, {"act_quant": "static", "act_scale": 0.031, "act_zero_point": 0},
               {"act_quant": "static", "act_scale": 0.047, "act_zero_point": -7}]


def _rng(*key) -> np.random.Generator:
    """A fresh generator per test case, reproducible across runs (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Every buffer the backend allocates starts poisoned: NaN for floats, a nonzero pattern
    for integers (a forgotten K-padding column of qx, or an unwritten row sum, then changes
    the result)."""
    if _REASON is not None:
        yield
        return
    real = triton_common.alloc

    def alloc(shape, dtype):
        t = real(shape, dtype)
        t.fill_(float("nan") if dtype.is_floating_point else 77)
        return t
    monkeypatch.setattr(triton_common, "alloc", alloc)
    yield


def _x(rng, m, k, zero_rows=True):
    x = (rng.standard_normal((m, k)) * 1.5).astype(np.float32)
    if zero_rows and m > 2:
        x[1::3] = 0                       # all-zero rows: dynamic scale 1, q = 0
    return x


def _attrs(**attrs):
    return registry.fill_attrs("Linear", attrs)


def _reference(layout, attrs, t, x, b):
    return registry.build("Linear", layout, "reference", _attrs(**attrs), {1: t})(x, t, b)[0]


def _triton(layout, attrs, t, x, b, planned_bias=True):
    """Through registry.build, as a session calls it; the bias as the planned initializer
    (uploaded once) or as a fresh array (uploaded by the call)."""
    weights = {1: t}
    if b is not None and planned_bias:
        bt = dense_tensor("b", b)
        weights[2] = bt
        b = bt.fields["data"]
    run = registry.build("Linear", layout, "triton", _attrs(**attrs), weights)
    (y,) = run(torch.from_numpy(x).to(DEVICE), t, b)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.device.type == torch.device(DEVICE).type
    return y.cpu().numpy()


def _assert_exact(got, ref, what):
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN positions differ"
    ok = ~np.isnan(ref)
    err = np.max(np.abs(got[ok].astype(np.float64) - ref[ok]), initial=0.0)
    assert err <= INT8_ATOL, f"{what}: max |triton - reference| = {err}"


def _assert_within(got, ref, bound, what):
    """|got - ref| <= bound elementwise (bound an array or a scalar), no NaN anywhere."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    assert not np.isnan(got).any() and not np.isnan(ref).any(), f"{what}: NaN in the output"
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    bad = err > bound
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} elements beyond the bound; at {i}: got {got[i]!r}, "
                             f"reference {ref[i]!r}, |diff| {err[i]:.3g} > {np.broadcast_to(bound, err.shape)[i]:.3g}")


def _gelu_bound(ref):
    return GELU_RTOL * np.abs(ref.astype(np.float64)) + GELU_ATOL


def _abs_terms(x, w, b):
    """sum_k |x_k w_k| + |b|, (M, N) float64: the scale of every dot-product error bound."""
    s = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    return s if b is None else s + np.abs(b.astype(np.float64))


def _fp32_bound(x, w, b):
    return (x.shape[1] + 3) * FP32_UNIT * _abs_terms(x, w, b)


def _fp16_bound(x, w, b, weight_rounded):
    """Rounding X (and W if ``weight_rounded``) to float16, then a float32 dot (module docstring)."""
    ax, aw = np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64))
    ex = FP16_UNIT * ax + FP16_HALF_SUBNORMAL
    ew = FP16_UNIT * aw + FP16_HALF_SUBNORMAL if weight_rounded else FP32_UNIT * aw
    rounding = ex @ aw.T + ax @ ew.T + ex @ ew.T
    return rounding + 2 * (x.shape[1] + 3) * FP32_UNIT * _abs_terms(x, w, b) * (1 + 2 * FP16_UNIT)


def _dense(t):
    return t.to_dense().reshape(t.shape[0], -1)


def _check_activated(got, ref, activation, base_bound, what):
    """ReLU keeps a bound on the Linear (1-Lipschitz); the GELUs multiply it by GELU_LIPSCHITZ
    and add their own rounding."""
    if activation in ("gelu", "gelu_tanh"):
        _assert_within(got, ref, GELU_LIPSCHITZ * base_bound + _gelu_bound(ref), what)
    else:
        _assert_within(got, ref, base_bound, what)


# --- the backend ----------------------------------------------------------------------------------

def test_probe_and_registered_kernels():
    from kernels import triton_gpu
    assert triton_gpu.probe() is None
    assert triton_gpu.DEVICE in ("cuda", "cpu")
    triton_gpu.set_threads(3)                          # a no-op, but callable
    have = {layout for (op, layout, _) in registry.kernels("triton") if op == "Linear"}
    assert {"int8", "int4_grouped", "bsr"} <= have
    for layout in ("int8", "int4_grouped", "bsr"):
        factory = registry.lookup("Linear", layout, "triton")
        assert set(factory.fused_activations) == set(ACTIVATIONS)


@pytest.mark.skipif(_REASON is None and DEVICE == "cuda", reason="a CUDA GPU is visible: probe() is None without the interpreter")
def test_probe_names_the_reason_without_gpu_or_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from kernels import registry; import kernels.triton_gpu as t; "
            "print(t.probe()); print(registry.backend_status('triton'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    want = ("no CUDA GPU on this machine (no NVIDIA device found); TRITON_INTERPRET=1 runs the kernels in "
            "Triton's CPU interpreter, for testing")
    assert lines == [want, want]


def test_probe_without_a_gpu_says_so_whatever_is_installed(monkeypatch):
    """Without a GPU the reason is the GPU, not a package (issue 17): the same line with
    torch or triton missing; with a GPU, the import error."""
    from kernels import triton_gpu
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_gpu, "nvidia_gpu_visible", lambda: False)
    monkeypatch.setattr(triton_gpu, "_IMPORT_ERROR", "triton is not installed")
    assert triton_gpu.probe().startswith("no CUDA GPU on this machine")
    monkeypatch.setattr(triton_gpu, "nvidia_gpu_visible", lambda: True)
    assert triton_gpu.probe() == "triton is not installed"
    monkeypatch.setattr(triton_gpu, "_IMPORT_ERROR", None)
    monkeypatch.setattr(triton_gpu, "DEVICE", "cpu")
    assert "torch.cuda.is_available() is False" in triton_gpu.probe()


# --- int8 weights, int8 activations ---------------------------------------------------------------

@pytest.mark.parametrize("wcfg", WEIGHT_CONFIGS, ids=lambda c: f"pc{int(c['per_channel'])}-sym{int(c['symmetric'])}")
@pytest.mark.parametrize("acfg", ACT_CONFIGS, ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
def test_int8_linear_is_the_reference(wcfg, acfg):
    """Every M, K not a multiple of the K tile, N odd, zero rows, with and without bias: exact."""
    for k, n in ((45, 7), (130, 33)):
        rng = _rng("int8", str(wcfg), str(acfg), k, n)
        w = rng.standard_normal((n, k)).astype(np.float32)
        if not wcfg["symmetric"]:
            w += np.float32(0.7)                       # an off-centre range: nonzero zero points
        t = pack_int8("w", w, **wcfg)
        bias = rng.standard_normal(n).astype(np.float32)
        for m in MS:
            x = _x(rng, m, k)
            b = bias if (m + n) % 2 else None
            _assert_exact(_triton("int8", acfg, t, x, b), _reference("int8", acfg, t, x, b),
                          f"int8 {wcfg} {acfg} M={m} K={k} N={n}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("acfg", ACT_CONFIGS[::2], ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
def test_int8_fused_activation(activation, acfg):
    """The epilogue activation against the reference Linear followed by the reference op."""
    rng = _rng("int8-act", activation, str(acfg))
    k, n = 45, 33
    t = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32) * 3)
    b = rng.standard_normal(n).astype(np.float32)
    attrs = {**acfg, "activation": activation}
    for m in MS:
        x = _x(rng, m, k)
        got, ref = _triton("int8", attrs, t, x, b), _reference("int8", attrs, t, x, b)
        if activation == "relu":
            _assert_exact(got, ref, f"{activation} M={m}")
        else:
            _assert_within(got, ref, _gelu_bound(ref), f"{activation} {acfg} M={m}")


@pytest.mark.parametrize("acfg", ACT_CONFIGS, ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
def test_int8_non_finite_rows_as_the_reference(acfg):
    """Dynamic: a NaN or inf makes its output row NaN; static: NaN does, inf saturates."""
    rng = _rng("nonfinite", str(acfg))
    k, n = 40, 9
    t = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32))
    x = _x(rng, 6, k, zero_rows=False)
    x[1, 3], x[2, 0], x[4, k - 1] = np.nan, np.inf, -np.inf
    got, ref = _triton("int8", acfg, t, x, None), _reference("int8", acfg, t, x, None)
    assert np.isnan(ref[1]).all()
    _assert_exact(got, ref, f"non-finite {acfg}")


def test_int8_refuses_k_beyond_exact_int32():
    k = MAX_K_INT32 + 1
    t = pack_int8("w", np.ones((1, k), np.float32))
    with pytest.raises(ValueError, match="too large for the exact int32"):
        registry.build("Linear", "int8", "triton", _attrs(act_quant="dynamic"), {1: t})


@pytest.mark.parametrize("wcfg", WEIGHT_CONFIGS[::3], ids=lambda c: f"pc{int(c['per_channel'])}-sym{int(c['symmetric'])}")
@pytest.mark.parametrize("activation", ("none", "gelu"))
def test_int8_weight_only(wcfg, activation):
    """act_quant "none": the weight-only kernel (GEMV branch for M < 16, tl.dot above)."""
    rng = _rng("int8-wo", str(wcfg), activation)
    k, n = 70, 19
    w = rng.standard_normal((n, k)).astype(np.float32) + (0 if wcfg["symmetric"] else np.float32(0.5))
    t = pack_int8("w", w, **wcfg)
    b = rng.standard_normal(n).astype(np.float32)
    attrs = {"act_quant": "none", "activation": activation}
    for m in MS:
        x = _x(rng, m, k)
        got, ref = _triton("int8", attrs, t, x, b), _reference("int8", attrs, t, x, b)
        _check_activated(got, ref, activation, _fp32_bound(x, _dense(t), b), f"int8 weight-only M={m}")


# --- int4_grouped ---------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", (16, 32, 64, 6), ids=lambda g: f"g{g}")
@pytest.mark.parametrize("symmetric", (True, False), ids=("sym", "asym"))
def test_int4_linear(group_size, symmetric):
    """K not a multiple of the group (zero-padded groups); g = 16, 32: one group per K tile;
    64: several tiles per group; 6: per-element group gather."""
    rng = _rng("int4", group_size, symmetric)
    k, n = 100, 21
    w = rng.standard_normal((n, k)).astype(np.float32) + (0 if symmetric else np.float32(0.4))
    t = pack_int4_grouped("w", w, group_size=group_size, symmetric=symmetric)
    b = rng.standard_normal(n).astype(np.float32)
    for m in MS:
        x = _x(rng, m, k)
        activation = ("none", "relu", "gelu_tanh")[m % 3]
        attrs = {"activation": activation}
        got, ref = _triton("int4_grouped", attrs, t, x, b, planned_bias=m != 5), _reference("int4_grouped", attrs, t, x, b)
        _check_activated(got, ref, activation, _fp32_bound(x, _dense(t), b), f"int4 g={group_size} M={m}")


@pytest.mark.parametrize("layout", ("int4_grouped", "int8"))
def test_weight_only_fp16_dot(layout):
    """The "fp16" dot (QRT_TRITON_WEIGHT_ONLY_DOT): X rounded to float16, exact integer weights,
    float32 scales after each tile's dot (int4) or once at the end (int8 per-row)."""
    rng = _rng("fp16-dot", layout)
    k, n = 96, 13
    w = rng.standard_normal((n, k)).astype(np.float32)
    t = pack_int4_grouped("w", w, group_size=32) if layout == "int4_grouped" else pack_int8("w", w)
    plan = int4.Int4Plan(t, dot="fp16")
    assert plan.dot == "fp16"
    b = rng.standard_normal(n).astype(np.float32)
    for m in MS:
        x = _x(rng, m, k)
        out = triton_common.alloc((m, n), torch.float32)
        plan(torch.from_numpy(x).to(DEVICE), triton_common.upload(b), 0, out)
        ref = _reference(layout, {}, t, x, b)
        _assert_within(out.cpu().numpy(), ref, _fp16_bound(x, _dense(t), b, weight_rounded=False),
                       f"{layout} fp16 dot M={m}")


def test_int4_refuses_integer_activations():
    t = pack_int4_grouped("w", np.ones((4, 32), np.float32), group_size=32)
    with pytest.raises(ValueError, match="weight-only"):
        registry.build("Linear", "int4_grouped", "triton", _attrs(act_quant="dynamic"), {1: t})


# --- bsr ----------------------------------------------------------------------------------------

def _bsr_mask(rng, n, k, block_shape, keep, empty_block_rows=True):
    """A block mask (whole blocks kept or pruned) with the given kept fraction; every other
    block row emptied when asked (block rows 1, 3, ...)."""
    r, c = block_shape
    blocks = rng.random((n // r, k // c)) < keep
    if empty_block_rows:
        blocks[1::2] = False
    return np.repeat(np.repeat(blocks, r, axis=0), c, axis=1)


# (block_shape, N, K): aligned tiles (16 x 32 and 32 x 64: tile = block), small blocks merged
# into 16 x 32 tiles (1 x 4), and odd blocks (3 x 5) straddling tile edges
BSR_SHAPES = [((16, 32), 48, 96), ((32, 64), 64, 128), ((1, 4), 21, 44), ((3, 5), 21, 45)]


@pytest.mark.parametrize("shape", BSR_SHAPES, ids=lambda s: f"{s[0][0]}x{s[0][1]}")
@pytest.mark.parametrize("acfg", ACT_CONFIGS[:1] + [{"act_quant": "static", "act_scale": 0.04, "act_zero_point": 5}],
                         ids=lambda c: f"{c['act_quant']}{c.get('act_zero_point', '')}")
@pytest.mark.parametrize("keep", (0.5, 0.0), ids=("half", "empty"))
def test_bsr_int8(shape, acfg, keep):
    """int8 values, int8 activations: exact; empty block rows, and 100% empty weights."""
    block_shape, n, k = shape
    rng = _rng("bsr-int8", shape, str(acfg), keep)
    mask = _bsr_mask(rng, n, k, block_shape, keep)
    per_channel = block_shape[0] != 1
    t = pack_bsr("w", rng.standard_normal((n, k)).astype(np.float32), mask, block_shape=block_shape,
                 quant="int8", per_channel=per_channel)
    b = rng.standard_normal(n).astype(np.float32)
    for m in MS:
        x = _x(rng, m, k)
        activation = ("none", "relu")[m % 2]
        attrs = {**acfg, "activation": activation}
        _assert_exact(_triton("bsr", attrs, t, x, b), _reference("bsr", attrs, t, x, b),
                      f"bsr int8 {block_shape} {acfg} keep={keep} M={m}")


@pytest.mark.parametrize("shape", BSR_SHAPES, ids=lambda s: f"{s[0][0]}x{s[0][1]}")
@pytest.mark.parametrize("quant", ("none", "int8"))
@pytest.mark.parametrize("keep", (0.5, 0.0), ids=("half", "empty"))
def test_bsr_float_path(shape, quant, keep):
    """act_quant "none": float values (or int8 values dequantized) as float16, fp32 accumulation."""
    block_shape, n, k = shape
    rng = _rng("bsr-f16", shape, quant, keep)
    mask = _bsr_mask(rng, n, k, block_shape, keep)
    t = pack_bsr("w", rng.standard_normal((n, k)).astype(np.float32), mask, block_shape=block_shape, quant=quant)
    b = rng.standard_normal(n).astype(np.float32)
    for m in MS:
        x = _x(rng, m, k)
        activation = ("gelu", "none", "relu")[m % 3]
        attrs = {"act_quant": "none", "activation": activation}
        got, ref = _triton("bsr", attrs, t, x, b), _reference("bsr", attrs, t, x, b)
        _check_activated(got, ref, activation, _fp16_bound(x, _dense(t), b, weight_rounded=True),
                         f"bsr {quant} {block_shape} keep={keep} M={m}")


@pytest.mark.parametrize("shape", BSR_SHAPES, ids=lambda s: f"{s[0][0]}x{s[0][1]}")
def test_bsr_repack_tiles_hold_exactly_the_stored_blocks(shape):
    """Rebuilt from its tiles, the weight is the stored one; a tile exists iff a stored block
    meets it; aligned block shapes fill their tiles completely."""
    block_shape, n, k = shape
    rng = _rng("repack", shape)
    mask = _bsr_mask(rng, n, k, block_shape, 0.4)
    t = pack_bsr("w", rng.standard_normal((n, k)).astype(np.float32), mask, block_shape=block_shape, quant="int8")
    plan = sparse.SparsePlan(t, "dynamic")
    bn, bk = plan.bn, plan.bk
    tiles, ptr, tk = (a.cpu().numpy() for a in (plan.tiles, plan.tile_ptr, plan.tile_k))
    nt, kt = -(-n // bn), -(-k // bk)
    dense = np.zeros((nt * bn, kt * bk), np.int64)
    for tn in range(nt):
        assert np.all(np.diff(tk[ptr[tn]:ptr[tn + 1]]) > 0), "K-tiles ascending within a tile row"
        for j in range(ptr[tn], ptr[tn + 1]):
            dense[tn * bn:(tn + 1) * bn, tk[j] * bk:(tk[j] + 1) * bk] = tiles[j]
    q = np.rint(_dense(t) / np.asarray(t.fields["scale"], np.float32)[:, None]).astype(np.int64)
    np.testing.assert_array_equal(dense[:n, :k], q)
    assert not dense[n:].any() and not dense[:, k:].any()
    kept = np.zeros((nt * bn, kt * bk), bool)
    kept[:n, :k] = mask
    occupied = kept.reshape(nt, bn, kt, bk).any(axis=(1, 3))
    assert plan.ntiles == int(occupied.sum())
    if block_shape[0] % bn == 0 and block_shape[1] % bk == 0:
        assert plan.tile_fill == 1.0


def test_bsr_kernel_tile_prefers_block_aligned_tiles():
    assert sparse.kernel_tile((32, 64), int8=True) == (32, 64)
    assert sparse.kernel_tile((64, 256), int8=True) == (64, 128)
    assert sparse.kernel_tile((16, 16), int8=True) == (16, 32)        # int8 mma needs K >= 32
    assert sparse.kernel_tile((16, 16), int8=False) == (16, 16)
    assert sparse.kernel_tile((1, 4), int8=False) == (16, 32)


def test_bsr_refusals():
    rng = _rng("bsr-refuse")
    w = rng.standard_normal((16, 32)).astype(np.float32)
    t = pack_bsr("w", w, None, block_shape=(16, 32))
    with pytest.raises(ValueError, match="stores float values"):
        registry.build("Linear", "bsr", "triton", _attrs(act_quant="dynamic"), {1: t})
    big = pack_bsr("w", w * 1e5, None, block_shape=(16, 32))
    with pytest.raises(ValueError, match="float16's range"):
        registry.build("Linear", "bsr", "triton", _attrs(), {1: big})


# --- inputs ---------------------------------------------------------------------------------------

def test_numpy_input_batched_shape_and_empty_batch():
    rng = _rng("inputs")
    k, n = 37, 11
    t = pack_int8("w", rng.standard_normal((n, k)).astype(np.float32))
    run = registry.build("Linear", "int8", "triton", _attrs(act_quant="dynamic"), {1: t})
    x = (rng.standard_normal((2, 3, k))).astype(np.float32)
    (y_np,) = run(x, t, None)                                     # numpy X: uploaded
    (y_t,) = run(torch.from_numpy(x).to(DEVICE), t, None)
    assert isinstance(y_np, torch.Tensor) and tuple(y_np.shape) == (2, 3, n)
    ref = _reference("int8", {"act_quant": "dynamic"}, t, x, None)
    _assert_exact(y_np.cpu().numpy(), ref, "numpy X")
    _assert_exact(y_t.cpu().numpy(), ref, "torch X")
    (y0,) = run(torch.zeros((0, k), dtype=torch.float32, device=DEVICE), t, None)
    assert tuple(y0.shape) == (0, n)


def test_the_weight_is_bound_at_plan_time():
    """The weight slot of run is not read (kernels/registry.py): another tensor there changes nothing."""
    rng = _rng("other-weight")
    t1 = pack_int8("w1", rng.standard_normal((7, 20)).astype(np.float32))
    t2 = pack_int8("w2", rng.standard_normal((9, 20)).astype(np.float32))
    b1 = rng.standard_normal(7).astype(np.float32)
    run = registry.build("Linear", "int8", "triton", _attrs(act_quant="dynamic"), {1: t1})
    x = _x(rng, 5, 20)
    _assert_exact(run(torch.from_numpy(x).to(DEVICE), t2, b1)[0].cpu().numpy(),
                  _reference("int8", {"act_quant": "dynamic"}, t1, x, b1), "bound weight")


def test_bad_inputs_are_refused_with_the_reason():
    rng = _rng("bad")
    t = pack_int8("w", rng.standard_normal((5, 16)).astype(np.float32))
    run = registry.build("Linear", "int8", "triton", _attrs(act_quant="dynamic"), {1: t})
    with pytest.raises(ValueError, match=r"X \(3, 15\) does not match packed weight 'w'"):
        run(torch.zeros((3, 15), device=DEVICE), t, None)
    with pytest.raises(ValueError, match="X must be float32, got torch.float64"):
        run(torch.zeros((3, 16), dtype=torch.float64, device=DEVICE), t, None)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(5,\)"):
        run(torch.zeros((3, 16), device=DEVICE), t, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        registry.lookup("Linear", "int8", "triton")({"act_quant": "dynamic", "activation": "tanh"}, {1: t})
    with pytest.raises(ValueError, match="act_scale"):
        registry.build("Linear", "int8", "triton", _attrs(act_quant="static"), {1: t})
    with pytest.raises(TypeError, match="packed layout"):
        registry.build("Linear", "int8", "triton", _attrs(act_quant="dynamic"), {1: np.ones((5, 16), np.float32)})
    with pytest.raises(ValueError, match="takes layout 'int8', got 'dense'"):
        registry.build("Linear", "int8", "triton", _attrs(act_quant="dynamic"), {1: dense_tensor("w", np.ones((5, 16), np.float32))})


# --- a session on this backend ----------------------------------------------------------------------

def test_session_on_triton_keeps_values_on_the_device():
    """InferenceSession(backend="triton"): the Linears (int8 + fused ReLU, bsr int8) run here on
    device tensors with the reference's bits; the Add (no triton kernel) runs on the host;
    numpy and torch feeds, numpy and device outputs."""
    from runtime import InferenceSession
    from runtime.graph import Graph, Node, Value

    rng = _rng("session")
    w1 = pack_int8("w1", rng.standard_normal((32, 40)).astype(np.float32))
    w2 = pack_bsr("w2", rng.standard_normal((16, 32)).astype(np.float32), rng.random((16, 32)) < 0.5,
                  block_shape=(16, 32), quant="int8")
    b1 = dense_tensor("b1", rng.standard_normal(32).astype(np.float32))
    g = Graph("t", [Value("x", "float32", ("n", 40))], [Value("y", "float32", ("n", 16)), Value("z", "float32", ("n", 16))],
              [Node("fc1", "Linear", ["x", "w1", "b1"], ["h"], {"act_quant": "dynamic"}),
               Node("relu", "Relu", ["h"], ["r"]),
               Node("fc2", "Linear", ["r", "w2"], ["y"], {"act_quant": "dynamic"}),
               Node("twice", "Add", ["y", "y"], ["z"])],
              {"w1": w1, "w2": w2, "b1": b1})
    g.validate()
    x = _x(rng, 5, 40)
    want = InferenceSession(g, backend="reference").run(None, {"x": x})
    sess = InferenceSession(g, backend="triton")
    assert {p.name: p.backend for p in sess.plan if p.op == "Linear"} == {"fc1": "triton", "fc2": "triton"}
    got = sess.run(None, {"x": x})
    assert all(isinstance(a, np.ndarray) for a in got)
    for a, b in zip(got, want):
        _assert_exact(a, b, "session output")
    dev = sess.run(None, {"x": torch.from_numpy(x).to(DEVICE)}, {"device_outputs": True})
    assert isinstance(dev[0], torch.Tensor)
    _assert_exact(dev[0].cpu().numpy(), want[0], "device output")
    assert sess.host_transfers == 1                     # the Add reads fc2's device output


def test_kernel_globals_compare_equal_to_themselves():
    """Triton re-checks a kernel's global tl.constexpr values with == at every launch on a GPU
    (not in the interpreter): a NaN global fails every launch ("Global variable _NAN has
    changed ... from constexpr[nan] to constexpr[nan]", seen on an H200). No module of the
    backend may hold one."""
    import importlib
    import pkgutil

    import triton.language as tl

    import kernels.triton_gpu as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, value in vars(mod).items():
            if isinstance(value, tl.constexpr):
                assert value == value, f"{mod.__name__}.{name} = {value!r} never compares equal to itself"  # noqa: PLR0124
