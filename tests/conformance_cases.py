"""The case table of the kernel conformance suite (tests/test_conformance.py).

``BUILDERS`` maps every (op, layout) that any backend registers to a builder of named
``Case``s: the node's attributes (op defaults filled in by registry.fill_attrs), its weights
(initializers, by input position: what a kernel factory gets) and its inputs (every input in
order, as a session passes them: the PackedTensor for a packed weight, the array of a dense
initializer, None for an absent optional input). A case draws its inputs from its own seeded
generator (``_rng``: the same arrays on every run, whatever the order of the cases).

Each case names its tolerance, the one every backend's kernel must meet against the
reference kernel of the same (op, layout) on the same inputs:

* ``EXACT``: np.array_equal (NaN positions included) wherever docs/CONVERTER.md "Numerics"
  and the kernels' module docstrings promise the reference's bits: the integer modes of every
  packed Linear / Conv (act_quant "dynamic" / "static": exact integer accumulation, the
  reference's float64 epilogue in its order), ReLU, the quantized embedding lookup, and
  every op that only moves data or does one IEEE operation per element.
* a named constant otherwise, defined below with the reasoning of the per-backend test it
  comes from (tests/test_native_int8.py, test_numba_sparse.py, test_numba_ops.py,
  test_fusion.py, test_native_int4_conv.py, test_triton_kernels.py).

A case may hold a different tolerance for one backend where that backend documents other
numerics (``Case.tol`` a dict: Triton's bsr float path rounds X and W to float16).
``REFUSALS`` lists the inputs a backend documents it does not take (it raises instead); the
suite checks that it does raise, with the documented message.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from kernels import registry
from kernels.core import layouts
from kernels.core.layouts import PackedTensor, dense_tensor, dense_view_2d
from runtime.convert import prune
from tests.sparse_cases import pack_sparse_case
from tests.test_fusion import ATTENTION_RTOL, GELU_ATOL, GELU_RTOL, MASK_SHAPES, SKIP_LN_ATOL, _attention_case

# --- tolerances ---------------------------------------------------------------------------------

# float32 unit roundoff: one rounding of a float32 operation is <= FP32_UNIT relative
FP32_UNIT = 2.0 ** -24
# A float32 GEMM against the reference's float64 one (weight-only int8 / int4 / sparse float
# paths, dense Linear and Conv): each of the K products and K - 1 sums rounds to float32 in
# whatever order (BLAS blocking, SIMD lanes), plus the bias add and the reference's own final
# rounding: |y - y_ref| <= (K + DOT_EXTRA_TERMS) * FP32_UNIT * (sum_k |x_k w_nk| + |b_n|), the
# classical worst-case bound of a float32 dot product (tests/test_native_int8.py
# WEIGHT_ONLY_ERR_PER_TERM with (K + 2); tests/test_triton_kernels.py _fp32_bound with (K + 3):
# the larger one). The numba kernels that accumulate in float64 are well inside it.
DOT_EXTRA_TERMS = 3
# GELU is Lipschitz with constant max |gelu'| = 1.129 (tests/test_triton_kernels.py): an error
# bound on a Linear / Conv output carries through the epilogue GELU with this factor.
GELU_LIPSCHITZ = 1.13
# Erf, Sigmoid, Exp, Log, Tanh, Pow in float32 against the float64 (or numpy float32) reference:
# erfc is a fit with relative error < 1.2e-7 and the final rounding adds 6e-8 (~2 float32 ulp);
# 1e-6 (8 ulp) leaves room and is far below a wrong formula (tanh vs erf Gelu differ by 1e-4).
ELEMENTWISE_RTOL = 1e-6
# Softmax: float64 exp and sum, one rounding; outputs below float32's normal range have fewer
# significant bits, hence the absolute floor.
SOFTMAX_RTOL = 1e-6
SOFTMAX_ATOL = float(np.finfo(np.float32).tiny)
# LayerNormalization / BatchNormalization: statistics and the affine step in float64, one
# rounding; outputs are O(1), so 1e-6 absolute covers results that cancel to ~0.
LAYERNORM_RTOL = 1e-6
LAYERNORM_ATOL = 1e-6
# MatMul / Gemm in float32 BLAS against the float64 product, as ||got - ref|| / ||ref||: the
# accumulation error grows like sqrt(K) * 6e-8; 1e-5 is far below a dropped bias or a wrong
# transpose (errors of order 1).
GEMM_REL_TOL = 1e-5


def _f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def _same_nan(got: np.ndarray, ref: np.ndarray, what: str) -> np.ndarray:
    """The positions where the reference is not NaN; AssertionError unless NaN positions agree."""
    gn, rn = np.isnan(got), np.isnan(ref)
    if not np.array_equal(gn, rn):
        i = tuple(int(v) for v in np.argwhere(gn != rn)[0])
        raise AssertionError(f"{what}: NaN positions differ ({int((gn != rn).sum())} elements); at {i}: "
                             f"got {got[i]!r}, reference {ref[i]!r}")
    return ~rn


class Tolerance:
    """How close a backend's output must be to the reference's. ``check`` returns the measured
    error (for reports) or raises AssertionError saying by how much it is off."""
    name = "?"

    def check(self, got: np.ndarray, ref: np.ndarray, case: "Case") -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Exact(Tolerance):
    name = "EXACT"

    def check(self, got, ref, case):
        floats = ref.dtype.kind in "fc"
        if np.array_equal(got, ref, equal_nan=floats):
            return 0.0
        diff = got != ref
        if floats:
            diff &= ~(np.isnan(got) & np.isnan(ref))
        i = tuple(int(v) for v in np.argwhere(diff)[0]) if diff.ndim else ()
        err = float(np.max(np.abs(_f64(got)[diff] - _f64(ref)[diff]))) if ref.dtype.kind in "fciub" else float("nan")
        raise AssertionError(f"not the reference's bits: {int(np.sum(diff))} of {ref.size} elements differ, "
                             f"max |got - ref| = {err:.6g}; at {i}: got {got[i]!r}, reference {ref[i]!r}")


class Close(Tolerance):
    """|got - ref| <= atol + rtol * |ref| element-wise; NaN and inf where the reference has them."""

    def __init__(self, name: str, rtol: float, atol: float):
        self.name, self.rtol, self.atol = name, rtol, atol

    def check(self, got, ref, case):
        ok = _same_nan(got, ref, self.name)
        g, r = _f64(got)[ok], _f64(ref)[ok]
        inf = np.isinf(r)
        if not np.array_equal(g[inf], r[inf]):
            raise AssertionError(f"{self.name}: infinities differ from the reference's")
        g, r = g[~inf], r[~inf]
        err = np.abs(g - r)
        bound = self.atol + self.rtol * np.abs(r)
        if np.any(err > bound):
            j = int(np.argmax(err - bound))
            raise AssertionError(f"{self.name}: {int(np.sum(err > bound))} elements beyond rtol={self.rtol:g}, "
                                 f"atol={self.atol:g}; worst: got {g[j]!r}, reference {r[j]!r}, "
                                 f"|diff| {err[j]:.3g} > {bound[j]:.3g}")
        return float(err.max(initial=0.0))


class NormRel(Tolerance):
    """||got - ref|| / ||ref|| <= tol (NaN positions must agree; the rest compared)."""

    def __init__(self, name: str, tol: float):
        self.name, self.tol = name, tol

    def check(self, got, ref, case):
        ok = _same_nan(got, ref, self.name)
        g, r = _f64(got)[ok], _f64(ref)[ok]
        rel = float(np.linalg.norm(g - r) / max(float(np.linalg.norm(r)), 1e-30))
        if not rel <= self.tol:
            raise AssertionError(f"{self.name}: ||got - ref|| / ||ref|| = {rel:.3g} > {self.tol:g}")
        return rel


class ScaledAtol(Tolerance):
    """|got - ref| <= atol * max(1, max|ref|) (tests/test_native_fused.py's SkipLayerNorm check)."""

    def __init__(self, name: str, atol: float):
        self.name, self.atol = name, atol

    def check(self, got, ref, case):
        ok = _same_nan(got, ref, self.name)
        g, r = _f64(got)[ok], _f64(ref)[ok]
        bound = self.atol * max(1.0, float(np.abs(r).max(initial=0.0)))
        err = float(np.abs(g - r).max(initial=0.0))
        if not err <= bound:
            raise AssertionError(f"{self.name}: max |got - ref| = {err:.3g} > {bound:.3g}")
        return err


def _gelu_terms(ref: np.ndarray) -> np.ndarray:
    """The epilogue GELU's own error (tests/test_fusion.py GELU_RTOL / GELU_ATOL)."""
    return GELU_RTOL * np.abs(_f64(ref)) + GELU_ATOL


class _BoundTolerance(Tolerance):
    """|got - ref| <= bound(case, ref) element-wise, through the case's epilogue activation:
    ReLU is 1-Lipschitz (the bound stands), a GELU multiplies it by GELU_LIPSCHITZ and adds its
    own rounding."""

    def bound(self, case: "Case") -> np.ndarray:
        raise NotImplementedError

    def check(self, got, ref, case):
        base = self.bound(case)
        if case.attrs.get("activation", "none") in ("gelu", "gelu_tanh"):
            base = GELU_LIPSCHITZ * base + _gelu_terms(ref)
        ok = _same_nan(got, ref, self.name)
        err = np.abs(_f64(got) - _f64(ref))
        bound = np.broadcast_to(base, err.shape)
        bad = ok & ~(err <= bound)
        if bad.any():
            i = tuple(int(v) for v in np.argwhere(bad)[0])
            raise AssertionError(f"{self.name}: {int(bad.sum())} elements beyond the bound; at {i}: got {got[i]!r}, "
                                 f"reference {ref[i]!r}, |diff| {err[i]:.3g} > {bound[i]:.3g}")
        return float(err[ok].max(initial=0.0))


def _weight_dense(w) -> np.ndarray:
    return w.to_dense() if isinstance(w, PackedTensor) else np.asarray(w)


def abs_terms(case: "Case") -> tuple[np.ndarray, int]:
    """(sum_k |x_k w_nk| + |b_n| in the output's shape, float64; K) of a Linear or Conv case:
    the scale of every dot-product error bound. Conv's sums come from the reference Conv on
    |X| and |W| in float64 (one im2col row per output position)."""
    from kernels.reference.conv_pool import conv_ref
    x, w = case.inputs[0], _weight_dense(case.inputs[1])
    b = case.inputs[2] if len(case.inputs) > 2 else None
    if case.op == "Linear":
        k = w.shape[1]
        s = np.abs(_f64(x)) @ np.abs(_f64(w)).T          # X (..., K) of any rank, K = 0 too
        if b is not None:
            s = s + np.abs(_f64(b))
        return s, k
    a = case.attrs
    s = conv_ref(np.abs(_f64(x)), np.abs(_f64(w)), None if b is None else np.abs(_f64(b)),
                 a["strides"], a["pads"], a["dilations"], int(a["group"] or 1))
    return s, int(np.prod(w.shape[1:]))


class DotBound(_BoundTolerance):
    """FP32_DOT: (K + DOT_EXTRA_TERMS) * FP32_UNIT * (sum |x w| + |b|) (see DOT_EXTRA_TERMS)."""
    name = "FP32_DOT"

    def bound(self, case):
        s, k = abs_terms(case)
        return (k + DOT_EXTRA_TERMS) * FP32_UNIT * s


class Fp16DotBound(_BoundTolerance):
    """FP16_DOT: Triton's bsr float path (act_quant "none") rounds X and W to float16 and
    accumulates in float32: tests/test_triton_kernels.py _fp16_bound, imported from there."""
    name = "FP16_DOT"

    def bound(self, case):
        from tests.test_triton_kernels import _fp16_bound
        x, w = case.inputs[0], _weight_dense(case.inputs[1])
        b = case.inputs[2] if len(case.inputs) > 2 else None
        x2 = np.asarray(x).reshape(-1, w.shape[1])
        return _fp16_bound(x2, w, b, weight_rounded=True).reshape(*np.shape(x)[:-1], w.shape[0])


class SumBound(_BoundTolerance):
    """FP32_SUM (reductions, pooling): a float32 sum of n terms in any order is within
    (n + 2) * FP32_UNIT * sum |x| of the float64 reference (the recursive-sum bound, plus a
    division and the final rounding); the sums of |x| are the reference op on |X| in float64."""
    name = "FP32_SUM"

    def __init__(self, n: int):
        self.n = n

    def bound(self, case):
        ref = registry.lookup(case.op, case.layout, "reference")(case.attrs, {})
        return (self.n + 2) * FP32_UNIT * ref(np.abs(_f64(case.inputs[0])))[0]


EXACT = Exact()
FP32_DOT = DotBound()
FP16_DOT = Fp16DotBound()
GELU = Close("GELU", GELU_RTOL, GELU_ATOL)
ELEMENTWISE = Close("ELEMENTWISE", ELEMENTWISE_RTOL, 0.0)
SOFTMAX = Close("SOFTMAX", SOFTMAX_RTOL, SOFTMAX_ATOL)
LAYERNORM = Close("LAYERNORM", LAYERNORM_RTOL, LAYERNORM_ATOL)
GEMM_REL = NormRel("GEMM_REL", GEMM_REL_TOL)
# Attention against the float64 reference: float32 q.k and p.v dot products and a float32
# softmax (tests/test_fusion.py ATTENTION_RTOL: measured worst ~6e-7, bound with 10x margin)
ATTENTION = NormRel("ATTENTION", ATTENTION_RTOL)
# SkipLayerNormalization: a float32 x + skip (as the Add), float64 statistics: one rounding of
# the output plus the E[x^2] - mean^2 cancellation (tests/test_fusion.py SKIP_LN_ATOL)
SKIP_LN = ScaledAtol("SKIP_LN", SKIP_LN_ATOL)


def gemm_tolerance(act_quant: str, activation: str) -> Tolerance:
    """A packed Linear / Conv: the integer modes are the reference's bits, ReLU included;
    through a GELU epilogue only the GELU's own rounding remains. Float activations
    (weight-only, float values, dense weights): the float32 dot-product bound."""
    if act_quant == "none":
        return FP32_DOT
    return GELU if activation in ("gelu", "gelu_tanh") else EXACT


# --- cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    op: str
    layout: str
    name: str
    attrs: dict[str, Any]            # op defaults filled in
    inputs: tuple                    # every input in order; weights as the session passes them
    weights: dict[int, PackedTensor]
    tol: Tolerance | dict[str, Tolerance]
    tags: frozenset = field(default_factory=frozenset)

    def tolerance(self, backend: str) -> Tolerance:
        if isinstance(self.tol, dict):
            return self.tol.get(backend, self.tol["*"])
        return self.tol

    @property
    def cost(self) -> int:
        """Multiply-adds of a Linear / Conv, else the input elements: what decides whether a
        case is small enough for Triton's interpreter."""
        if self.op in ("Linear", "Conv") and isinstance(self.inputs[1], PackedTensor):
            n, k = dense_view_2d(self.inputs[1].shape)
            x = np.asarray(self.inputs[0])
            rows = x.size // max(k, 1) if self.op == "Linear" else x.size // max(x.shape[1], 1)
            return rows * n * k
        return sum(int(np.size(a)) for a in self.inputs if isinstance(a, np.ndarray))


def _rng(*key) -> np.random.Generator:
    """A generator per case, reproducible across runs (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _case(op: str, layout: str, name: str, inputs, attrs=None, weights=(), tol: Any = EXACT, tags=()) -> Case:
    """A Case; ``weights``: the input positions that are initializers (a dense array there
    becomes a dense PackedTensor whose array is then the input, as in a session)."""
    inputs = list(inputs)
    w: dict[int, PackedTensor] = {}
    for p in weights:
        a = inputs[p] if p < len(inputs) else None
        if isinstance(a, PackedTensor):
            w[p] = a
        elif a is not None:
            t = dense_tensor(f"{op}.{name}.{p}", np.asarray(a))
            w[p] = t
            inputs[p] = t.fields["data"]
    return Case(op, layout, name, registry.fill_attrs(op, dict(attrs or {})), tuple(inputs), w, tol, frozenset(tags))


def randn(rng, *shape, scale=1.0, dtype=np.float32) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def gemm_input(rng, shape, dtype=np.float32, zero_rows=True) -> np.ndarray:
    """X of a GEMM: N(0, 1.5^2), every third row all zero (dynamic scale 1, q = 0) when there
    are more than two rows (tests/test_native_int8.py _input)."""
    x = (rng.standard_normal(shape) * 1.5).astype(dtype)
    if zero_rows and x.ndim >= 2 and x.size and x.reshape(-1, shape[-1]).shape[0] > 2:
        x.reshape(-1, shape[-1])[1::3] = 0
    return x


def with_specials(x: np.ndarray) -> np.ndarray:
    """x with extreme and signed-zero values planted at its start (tests/test_numba_ops.py)."""
    specials = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-6, -9.0, 9.0, -40.0, 40.0, -3e38, 3e38], np.float32)
    flat = x.reshape(-1)
    n = max(0, min(flat.size - 1, specials.size))  # at least one element stays random
    flat[:n] = specials[:n].astype(x.dtype)
    return x


ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh")   # the GEMM epilogues' (kernels/gemm_front.py)
# a Conv's also hard_swish (kernels/core/ops.py ACTIVATIONS: runtime/fuse.py fuses it into Convs,
# which run on the CPU backends)
CONV_ACTIVATIONS = ACTIVATIONS + ("hard_swish",)
# activation quantization modes a packed layout with integer values allows (docs/CONVERTER.md)
ACT_MODES = {
    "none": {"act_quant": "none"},
    "dynamic": {"act_quant": "dynamic"},
    "static_z0": {"act_quant": "static", "act_scale": 0.031, "act_zero_point": 0},
    "static_zneg": {"act_quant": "static", "act_scale": 0.047, "act_zero_point": -7},
}
STATIC_SATURATING = {"act_quant": "static", "act_scale": 0.01, "act_zero_point": 100}
WEIGHT_CONFIGS = {"pc-sym": {"per_channel": True, "symmetric": True},
                  "pt-sym": {"per_channel": False, "symmetric": True},
                  "pc-asym": {"per_channel": True, "symmetric": False},
                  "pt-asym": {"per_channel": False, "symmetric": False}}
# awkward (M, K, N): M = 1 and around the 4-row tiles, K not a multiple of any vector width
# (1, 3, 17, 33, 65, 100), N odd and around the 64-column panels
# (one shape of M >= 16 among every four consecutive, so each act_quant mode has one)
LINEAR_SHAPES = [(1, 1, 7), (17, 17, 33), (3, 3, 1), (1, 65, 17), (4, 17, 1), (33, 33, 17), (5, 100, 33), (2, 64, 65)]


def _bias(rng, n, with_bias):
    return rng.standard_normal(n).astype(np.float32) if with_bias else None


def _modes_by_activation() -> Iterator[tuple[int, str, dict, str]]:
    """(i, act_quant name, attrs, activation) for every mode x epilogue pair."""
    for i, ((qname, q), activation) in enumerate(itertools.product(ACT_MODES.items(), ACTIVATIONS)):
        yield i, qname, q, activation


def _linear(layout, name, x, t, bias, attrs, tol=None, tags=()):
    aq = attrs.get("act_quant", "none")
    tol = tol or gemm_tolerance(aq, attrs.get("activation", "none"))
    if layout == "bsr" and aq == "none":
        # Triton's bsr kernel takes float activations through its float16 path, for float and
        # for int8 values alike (kernels/triton_gpu/sparse.py)
        tol = {"*": tol, "triton": FP16_DOT}
    return _case("Linear", layout, name, (x, t, bias), attrs, (1, 2), tol, tags)


def _other_dtype_cases(layout, rng, t, modes):
    """X in float64 / float16: the reference's arithmetic on every backend that takes it."""
    k, n = t.shape[1], t.shape[0]
    for dtype, qname in zip((np.float64, np.float16), modes):
        x = gemm_input(rng, (9, k), dtype)
        yield _linear(layout, f"{np.dtype(dtype).name}-X-{qname}", x, t, _bias(rng, n, True), ACT_MODES[qname],
                      tags=("non_float32_x",))


# --- Linear, int8 ---------------------------------------------------------------------------------

def _int8_weight(rng, shape, cfg):
    w = rng.standard_normal(shape).astype(np.float32)
    if not cfg["symmetric"]:
        w += np.float32(0.7)          # an off-centre range, so the zero points are not 0
    return layouts.pack_int8("w", w, **cfg)


def linear_int8() -> Iterator[Case]:
    wnames = list(WEIGHT_CONFIGS)
    for i, qname, q, activation in _modes_by_activation():
        m, k, n = LINEAR_SHAPES[i % len(LINEAR_SHAPES)]
        wname = wnames[(i + i // 4) % 4]             # every weight config with every act_quant mode
        rng = _rng("Linear", "int8", i)
        t = _int8_weight(rng, (n, k), WEIGHT_CONFIGS[wname])
        b = _bias(rng, n, i % 3 != 0)
        yield _linear("int8", f"{qname}-{activation}-M{m}K{k}N{n}-{wname}-{'bias' if b is not None else 'nobias'}",
                      gemm_input(rng, (m, k)), t, b, {**q, "activation": activation})
    rng = _rng("Linear", "int8", "extra")
    t = _int8_weight(rng, (33, 40), WEIGHT_CONFIGS["pc-asym"])
    yield _linear("int8", "rank3-dynamic", gemm_input(rng, (2, 3, 40)), t, _bias(rng, 33, True), ACT_MODES["dynamic"])
    yield _linear("int8", "rank1-static", gemm_input(rng, (40,)), t, None, ACT_MODES["static_zneg"])
    yield _linear("int8", "rank4-none", gemm_input(rng, (2, 2, 2, 40)), t, _bias(rng, 33, True), ACT_MODES["none"])
    yield _linear("int8", "empty-M0-dynamic", gemm_input(rng, (0, 40)), t, _bias(rng, 33, True), ACT_MODES["dynamic"])
    yield _linear("int8", "empty-M0-none", gemm_input(rng, (0, 40)), t, None, ACT_MODES["none"])
    t = _int8_weight(rng, (65, 100), WEIGHT_CONFIGS["pt-asym"])
    yield _linear("int8", "tiles-M128-dynamic-gelu", gemm_input(rng, (128, 100)), t, _bias(rng, 65, True),
                  {**ACT_MODES["dynamic"], "activation": "gelu"})
    yield _linear("int8", "tiles-M33-none-relu", gemm_input(rng, (33, 100)), t, _bias(rng, 65, True),
                  {**ACT_MODES["none"], "activation": "relu"})
    t = _int8_weight(rng, (10, 768), WEIGHT_CONFIGS["pc-sym"])
    yield _linear("int8", "K768-static", gemm_input(rng, (3, 768)), t, None, ACT_MODES["static_z0"])
    t = _int8_weight(rng, (33, 96), WEIGHT_CONFIGS["pc-asym"])
    x = gemm_input(rng, (10, 96)) * 100
    x[1, 5] = 1e30                               # one huge value: every other dynamic q rounds to 0
    x[2] = -3.5                                  # constant row: q = -127 everywhere
    x[3, ::2] = 0.5 * 0.031                      # exact .5 ties: round half to even
    x[4, :] = np.float32(1e-40) * np.arange(96)  # float32 subnormals
    x[9] = np.linspace(-127.5, 127.5, 96) * np.float32(0.031)   # ties across the static range
    for qname in ("dynamic", "static_z0"):
        yield _linear("int8", f"extreme-values-{qname}", x, t, None, ACT_MODES[qname])
    yield _linear("int8", "saturating-static-relu", x, t, _bias(rng, 33, True),
                  {**STATIC_SATURATING, "activation": "relu"})
    xn = gemm_input(rng, (6, 96), zero_rows=False)
    xn[1, 3], xn[2, 0], xn[4, 95] = np.nan, np.inf, -np.inf
    for qname in ("dynamic", "static_zneg"):
        yield _linear("int8", f"nonfinite-{qname}", xn, t, None, ACT_MODES[qname])
    yield from _other_dtype_cases("int8", rng, t, ("dynamic", "static_zneg"))


# --- Linear, int4_grouped -------------------------------------------------------------------------

INT4_SHAPES = [  # (M, N, K, group_size): K not a multiple of the group (zero-padded last group)
    (1, 37, 100, 32), (3, 5, 64, 64), (17, 9, 40, 16), (1, 7, 70, 6), (4, 9, 31, 2), (2, 3, 1, 2), (1, 6, 101, 16),
    (2, 11, 97, 48), (7, 11, 33, 16), (3, 1, 17, 16), (5, 13, 71, 24), (9, 4, 160, 32), (17, 33, 200, 128),
]


def _int4_weight(rng, n, k, g, symmetric):
    w = rng.standard_normal((n, k)).astype(np.float32)
    if not symmetric:
        w += np.float32(0.4)
    return layouts.pack_int4_grouped("w", w, group_size=g, symmetric=symmetric)


def linear_int4() -> Iterator[Case]:
    for i, qname, q, activation in _modes_by_activation():
        m, n, k, g = INT4_SHAPES[i % len(INT4_SHAPES)]
        sym = i % 2 == 0
        rng = _rng("Linear", "int4_grouped", i)
        t = _int4_weight(rng, n, k, g, sym)
        b = _bias(rng, n, i % 3 != 0)
        yield _linear("int4_grouped", f"{qname}-{activation}-M{m}K{k}N{n}-g{g}-{'sym' if sym else 'asym'}"
                                      f"-{'bias' if b is not None else 'nobias'}",
                      gemm_input(rng, (m, k)), t, b, {**q, "activation": activation})
    rng = _rng("Linear", "int4_grouped", "extra")
    t = _int4_weight(rng, 12, 96, 32, False)
    yield _linear("int4_grouped", "rank3-none", gemm_input(rng, (2, 3, 96)), t, _bias(rng, 12, True), ACT_MODES["none"])
    yield _linear("int4_grouped", "rank1-none", gemm_input(rng, (96,)), t, None, ACT_MODES["none"])
    yield _linear("int4_grouped", "empty-M0-none", gemm_input(rng, (0, 96)), t, None, ACT_MODES["none"])
    yield _linear("int4_grouped", "rank3-dynamic", gemm_input(rng, (2, 3, 96)), t, None, ACT_MODES["dynamic"])
    yield _linear("int4_grouped", "M24-none-gelu_tanh", gemm_input(rng, (24, 96)), t, _bias(rng, 12, True),
                  {**ACT_MODES["none"], "activation": "gelu_tanh"})
    yield from _other_dtype_cases("int4_grouped", rng, t, ("dynamic", "static_z0"))


# --- Linear, csr / bsr / nm -----------------------------------------------------------------------

# (kind, N, K, block or n:m): 0% and 100% sparsity, empty rows, stored zeros, all-zero stored
# blocks, N = 1, K = 1, blocks of one row / column and blocks that are whole kernel tiles; K' = 300
# gives uint16 column indices, K' = 65600 int32 ones (the others uint8); n:m position codes of
# 1 (m = 2), 2 (m <= 4), 4 (m <= 16) and 8 bits (m <= 256)
CSR_PATTERNS = [("magnitude0.7", 33, 100), ("dense", 17, 33), ("all_pruned", 9, 17), ("empty_rows", 40, 65),
                ("explicit_zeros", 21, 60), ("magnitude0.7", 1, 64), ("magnitude0.5", 5, 1),
                ("magnitude0.95", 7, 300)]
BSR_PATTERNS = [("block0.7", 33, 136, (1, 4)), ("block0.5", 36, 100, (4, 4)), ("block0.6", 18, 72, (2, 8)),
                ("block0.5", 48, 17, (16, 1)), ("block0.5", 21, 30, (3, 2)), ("zero_blocks", 32, 64, (4, 4)),
                ("all_pruned", 8, 16, (1, 4)), ("dense", 7, 300, (1, 1)), ("block0.5", 20, 144, (1, 16)),
                ("block0.5", 20, 264, (4, 8)), ("block0.5", 48, 100, (16, 4)), ("block0.5", 48, 96, (16, 32))]
NM_PATTERNS = [((2, 4), 33, 100), ((1, 4), 16, 132), ((2, 8), 7, 64), ((3, 16), 5, 96),
               ((1, 2), 6, 10), ((5, 32), 3, 160), ((1, 3), 9, 33), ((2, 4), 1, 4)]
SPARSE_MS = (1, 3, 17, 33, 2, 5)


def _sparse_weight(rng, layout, pattern, quant):
    if layout == "csr":
        kind, n, k = pattern
        return pack_sparse_case(rng, "csr", n, k, kind, quant=quant), f"{kind}-N{n}K{k}"
    if layout == "bsr":
        kind, n, k, block = pattern
        return (pack_sparse_case(rng, "bsr", n, k, kind, quant=quant, block=block),
                f"{kind}-{block[0]}x{block[1]}-N{n}K{k}")
    nm, n, k = pattern
    t = pack_sparse_case(rng, "nm", n, k, quant=quant, nm=nm)
    return t, f"{nm[0]}of{nm[1]}-N{n}K{k}"


SPARSE_PATTERNS = {"csr": CSR_PATTERNS, "bsr": BSR_PATTERNS, "nm": NM_PATTERNS}


def _huge_k_weight(rng, layout):
    """K' = 65600 (> 65536 columns or block columns): int32 indices."""
    n, k = 2, 65600
    w = rng.standard_normal((n, k)).astype(np.float32)
    mask = rng.random((n, k)) < 0.002
    mask[:, -1] = True                              # the last column is stored: index 65599
    if layout == "csr":
        t = layouts.pack_csr("w", w, mask, quant="int8")
    else:
        t = layouts.pack_bsr("w", w, mask, block_shape=(1, 1), quant="int8")
    assert t.fields["indices"].dtype == np.int32
    return t


def sparse_linear(layout: str) -> Callable[[], Iterator[Case]]:
    def build() -> Iterator[Case]:
        patterns = SPARSE_PATTERNS[layout]
        for i, qname, q, activation in _modes_by_activation():
            for j in (0, 1):                          # each mode x epilogue on two patterns
                p = (2 * i + j) % len(patterns)
                rng = _rng("Linear", layout, i, j)
                t, pname = _sparse_weight(rng, layout, patterns[p], "int8")
                n, k = t.shape
                m = SPARSE_MS[(i + j) % len(SPARSE_MS)]
                b = _bias(rng, n, (i + j) % 3 != 0)
                yield _linear(layout, f"{qname}-{activation}-{pname}-M{m}-{'bias' if b is not None else 'nobias'}",
                              gemm_input(rng, (m, k)), t, b, {**q, "activation": activation})
        for p, pattern in enumerate(patterns[:3]):    # float values (quant "none"): act "none" only
            rng = _rng("Linear", layout, "float", p)
            t, pname = _sparse_weight(rng, layout, pattern, "none")
            n, k = t.shape
            yield _linear(layout, f"float-values-{pname}-{ACTIVATIONS[p]}", gemm_input(rng, (5, k)), t,
                          _bias(rng, n, p != 1), {**ACT_MODES["none"], "activation": ACTIVATIONS[p]})
        rng = _rng("Linear", layout, "extra")
        t, _ = _sparse_weight(rng, layout, patterns[0], "int8")
        n, k = t.shape
        yield _linear(layout, "rank3-static", gemm_input(rng, (2, 5, k)), t, _bias(rng, n, True),
                      ACT_MODES["static_zneg"])
        yield _linear(layout, "rank1-dynamic", gemm_input(rng, (k,)), t, None, ACT_MODES["dynamic"])
        yield _linear(layout, "empty-M0-dynamic", gemm_input(rng, (0, k)), t, _bias(rng, n, True), ACT_MODES["dynamic"])
        yield _linear(layout, "M40-static-saturating", gemm_input(rng, (40, k)) * 10, t, _bias(rng, n, True),
                      STATIC_SATURATING)
        yield from _other_dtype_cases(layout, rng, t, ("dynamic", "static_z0"))
        w = rng.standard_normal((12, 64)).astype(np.float32)      # one scale for the whole tensor
        opts = {"csr": {}, "bsr": {"block_shape": (2, 4)}, "nm": {"n": 2, "m": 4}}[layout]
        mask = {"csr": lambda: prune.magnitude_mask(w, 0.6), "bsr": lambda: prune.block_mask(w, 0.5, (2, 4)),
                "nm": lambda: prune.nm_mask(w, 2, 4)}[layout]()
        t = layouts.pack(layout, "w", w, mask, quant="int8", per_channel=False, **opts)
        for qname in ("dynamic", "none"):
            yield _linear(layout, f"per-tensor-scale-{qname}", gemm_input(rng, (5, 64)), t, _bias(rng, 12, True),
                          ACT_MODES[qname])
        if layout in ("csr", "bsr"):
            t = _huge_k_weight(rng, layout)
            for qname in ("dynamic", "none"):
                yield _linear(layout, f"int32-indices-K65600-{qname}", gemm_input(rng, (2, 65600)), t,
                              _bias(rng, 2, True), ACT_MODES[qname])
    return build


# --- Linear, dense ----------------------------------------------------------------------------------

def linear_dense() -> Iterator[Case]:
    shapes = [((1, 17), 5), ((17,), 5), ((2, 3, 33), 31), ((0, 17), 4), ((5, 0), 3), ((128, 100), 48),
              ((1, 300), 1), ((33, 65), 7)]
    for i, (xshape, n) in enumerate(shapes):
        for with_bias in (True, False):
            rng = _rng("Linear", "dense", i, with_bias)
            activation = ACTIVATIONS[(i + with_bias) % 4]
            k = xshape[-1]
            yield _linear("dense", f"x{xshape}-N{n}-{activation}-{'bias' if with_bias else 'nobias'}",
                          randn(rng, *xshape), randn(rng, n, k), _bias(rng, n, with_bias),
                          {"activation": activation}, tol=FP32_DOT)


# --- Conv -------------------------------------------------------------------------------------------

CONV_GEOMETRIES = [  # (x shape, w shape (M, C/group, *kernel), attrs)
    ((2, 4, 9, 9), (8, 4, 3, 3), {}),
    ((1, 8, 10, 7), (8, 4, 3, 3), {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 1]}),
    ((2, 8, 8, 8), (16, 2, 2, 2), {"group": 4, "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ((3, 4, 11), (4, 4, 4), {"strides": [3], "pads": [2, 1]}),                 # 1-D
    ((2, 5, 6, 7), (3, 5, 1, 1), {}),                                          # 1x1, M odd
    ((1, 6, 7, 7), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1], "dilations": [2, 1]}),   # depthwise
    ((1, 7, 5, 13), (7, 7, 2, 4), {"strides": [3, 1], "pads": [0, 2, 1, 0], "dilations": [1, 2]}),
    ((1, 2, 4, 4, 4), (4, 2, 2, 2, 2), {"strides": [1, 2, 1], "pads": [1, 0, 0, 0, 1, 1]}),   # 3-D
]


def _conv_weight(rng, layout, wshape, quant, i):
    w = rng.standard_normal(wshape).astype(np.float32)
    n, k = dense_view_2d(wshape)
    if layout == "dense":
        return w
    if layout == "int8":
        cfg = list(WEIGHT_CONFIGS.values())[i % 4]
        return layouts.pack_int8("w", w + (0 if cfg["symmetric"] else np.float32(0.7)), **cfg)
    if layout == "int4_grouped":
        return layouts.pack_int4_grouped("w", w, group_size=(4, 8, 2)[i % 3], symmetric=i % 2 == 1)
    w2 = w.reshape(n, k)
    if layout == "csr":
        mask = prune.magnitude_mask(w2, (0.5, 0.0, 0.8)[i % 3])
        if i % 3 == 2:
            mask[::3] = False                          # empty rows
        return layouts.pack_csr("w", w, mask.reshape(wshape), quant=quant)
    if layout == "bsr":
        blocks = [(2, 4), (1, 4), (2, 1), (1, 1)]
        r, c = next(b for b in blocks[i % 4:] + blocks if n % b[0] == 0 and k % b[1] == 0)
        mask = prune.block_mask(w2, 0.5, (r, c))
        return layouts.pack_bsr("w", w, mask.reshape(wshape), block_shape=(r, c), quant=quant)
    choices = [(2, 4), (1, 3), (2, 5), (1, 2)]
    nn, mm = next((c for c in choices[i % 4:] + choices if k % c[1] == 0), (1, k))
    return layouts.pack_nm("w", w, prune.nm_mask(w2, nn, mm).reshape(wshape), n=nn, m=mm, quant=quant)


def conv(layout: str) -> Callable[[], Iterator[Case]]:
    def build() -> Iterator[Case]:
        for i, (xs, ws, cattrs) in enumerate(CONV_GEOMETRIES):
            static = ("static_z0", "static_zneg")[i % 2]
            modes = ["none"] if layout == "dense" else ["none", "dynamic", static]
            for j, qname in enumerate(modes):
                rng = _rng("Conv", layout, i, qname)
                activation = CONV_ACTIVATIONS[(i + j) % len(CONV_ACTIVATIONS)]
                t = _conv_weight(rng, layout, ws, "int8", i + j)
                x = gemm_input(rng, xs, zero_rows=False)
                if xs[0] > 1:
                    x[1, :, :2] = 0                    # zero patches: dynamic scale 1
                b = _bias(rng, ws[0], (i + j) % 3 != 1)
                attrs = {**ACT_MODES[qname], **cattrs, "activation": activation}
                name = f"g{i}-{qname}-{activation}-{'bias' if b is not None else 'nobias'}"
                yield _case("Conv", layout, name, (x, t, b), attrs, (1, 2), gemm_tolerance(qname, activation))
        if layout in ("csr", "bsr", "nm"):             # float values: act "none" only
            for i in (0, 2):
                xs, ws, cattrs = CONV_GEOMETRIES[i]
                rng = _rng("Conv", layout, "float", i)
                t = _conv_weight(rng, layout, ws, "none", i)
                yield _case("Conv", layout, f"g{i}-float-values", (gemm_input(rng, xs), t, _bias(rng, ws[0], True)),
                            cattrs, (1, 2), FP32_DOT)
        if layout != "dense":                           # the saturating static range
            xs, ws, cattrs = CONV_GEOMETRIES[1]
            rng = _rng("Conv", layout, "saturating")
            t = _conv_weight(rng, layout, ws, "int8", 1)
            yield _case("Conv", layout, "g1-static-saturating", (gemm_input(rng, xs) * 10, t, None),
                        {**STATIC_SATURATING, **cattrs}, (1, 2), EXACT)
    return build


# --- Gather -----------------------------------------------------------------------------------------

# (layout, pack options): per row and per tensor, symmetric and with zero points, int4 groups
# that divide D and one that leaves a padded last group (D = 37) (tests/test_embedding_quant.py)
TABLE_CASES = [("int8", {}), ("int8", {"symmetric": False}), ("int8", {"per_channel": False}),
               ("int4_grouped", {"group_size": 8}), ("int4_grouped", {"group_size": 16, "symmetric": False}),
               ("int4_grouped", {"group_size": 64})]
# (index shape, dtype): any integer dtype, negatives counting from the end, empty and 0-d
INDEX_CASES = [((7,), np.int64), ((3, 5), np.int32), ((1,), np.uint8), ((0,), np.int64), ((2, 3), np.int16),
               ((), np.int64), ((4, 1, 2), np.uint32), ((2, 2), np.uint64), ((3,), np.int8)]


def _table(rng, layout, opts, v=50, d=37):
    """A (V, D) embedding table: rows of different norms, as in a real vocabulary, and an
    all-zero row (scale 1, q = 0). Sparse tables (a Linear weight shared with a Gather) have
    D = 36 so that 2 x 4 blocks and 2:4 groups tile them."""
    d = d if layout in ("int8", "int4_grouped", "csr") else 36
    w = (rng.standard_normal((v, d)) * rng.uniform(0.01, 2.0, (v, 1))).astype(np.float32)
    w[3] = 0.0
    if layout in ("int8", "int4_grouped"):
        return layouts.pack(layout, "table", w, **opts)
    if layout == "csr":
        return layouts.pack_csr("table", w, np.abs(w) > 0.5, quant="int8")
    if layout == "bsr":
        return layouts.pack_bsr("table", w, prune.block_mask(w, 0.5, (2, 4)), block_shape=(2, 4), quant="int8")
    return layouts.pack_nm("table", w, prune.nm_mask(w, 2, 4), n=2, m=4, quant="int8")


def _indices(rng, shape, dtype, v):
    lo = 0 if np.dtype(dtype).kind == "u" else -v
    idx = rng.integers(lo, v, size=shape).astype(dtype)
    if idx.size and lo < 0:
        idx.reshape(-1)[0] = -1
    return idx


def gather(layout: str) -> Callable[[], Iterator[Case]]:
    def build() -> Iterator[Case]:
        tables = [opts for lay, opts in TABLE_CASES if lay == layout] or [{}]
        for i, opts in enumerate(tables):
            for j, (shape, dtype) in enumerate(INDEX_CASES):
                if (i + j) % 2 and j not in (0, 3, 5):
                    continue                             # every index case on some table
                rng = _rng("Gather", layout, i, j)
                t = _table(rng, layout, opts)
                oname = "-".join(f"{k}={v}" for k, v in opts.items()) or "default"
                yield _case("Gather", layout, f"{oname}-idx{shape}-{np.dtype(dtype).name}",
                            (t, _indices(rng, shape, dtype, t.shape[0])), {"axis": 0}, (0,), EXACT)
        rng = _rng("Gather", layout, "axis1")
        t = _table(rng, layout, tables[0])
        yield _case("Gather", layout, "axis1", (t, np.array([[5, 0], [-1, 2]], np.int64)), {"axis": 1}, (0,), EXACT)
    return build


def gather_dense() -> Iterator[Case]:
    rng = _rng("Gather", "dense")
    table = randn(rng, 50, 37)
    yield _case("Gather", "dense", "embedding-int64", (table, _indices(rng, (3, 5), np.int64, 50)), {}, (0,))
    yield _case("Gather", "dense", "axis1-int32", (randn(rng, 4, 9, 2), _indices(rng, (2, 3), np.int32, 9)),
                {"axis": 1})
    yield _case("Gather", "dense", "scalar-index", (randn(rng, 6, 3), np.array(-2, np.int64)), {})
    yield _case("Gather", "dense", "int64-data-empty", (rng.integers(0, 9, (5, 4)), np.zeros((0,), np.int64)), {})


# --- Attention, SkipLayerNormalization, Split ---------------------------------------------------------

# (B, Sq, Sk, H, D, Dv): Sq != Sk, D and Dv not multiples of 4, 8 or 16, Sk across tile edges,
# Sq = 1 (decoding) (tests/test_native_fused.py ATTENTION_SHAPES, the small ones)
ATTENTION_SHAPES = [(1, 1, 1, 1, 1, 1), (2, 7, 13, 3, 6, 6), (3, 5, 9, 4, 5, 3), (2, 17, 31, 2, 17, 20),
                    (1, 13, 17, 3, 24, 8), (2, 6, 8, 2, 7, 9), (3, 1, 11, 2, 10, 24), (1, 16, 16, 4, 8, 8)]


def attention() -> Iterator[Case]:
    for i, shape in enumerate(ATTENTION_SHAPES):
        for j in (0, 1):
            mask_kind = MASK_SHAPES[(2 * i + j) % len(MASK_SHAPES)]
            b, sq, sk, h, d, dv = shape
            q, k, v, mask = _attention_case(("conformance", j), *shape, mask_kind)
            yield _case("Attention", "dense", f"B{b}Sq{sq}Sk{sk}H{h}D{d}Dv{dv}-mask-{mask_kind}", (q, k, v, mask),
                        {"head_dim": d, "scale": (0.37, 1.0)[j]}, (), ATTENTION)
    q, k, v, _ = _attention_case("masked", 2, 3, 20, 2, 5, 5, None)
    mask = np.zeros((2, 1, 3, 20), np.float32)
    mask[0, 0, 1] = -3.4e38                      # a row masked everywhere: equal weights
    mask[1, 0, :, 3:] = -3.4e38
    yield _case("Attention", "dense", "fully-masked-rows", (q, k, v, mask), {"head_dim": 5, "scale": 1.0}, (),
                ATTENTION)
    # softmax rows that are NaN: every score -inf (TorchScript's sdpa mask on a row of padding),
    # a NaN score, a +inf score; with nan_to_zero (sdpa's IsNaN + Where) they give zeros
    q, k, v, _ = _attention_case("nan-rows", 2, 4, 6, 2, 3, 3, None)
    mask = np.zeros((2, 1, 4, 6), np.float32)
    mask[0, 0, 1] = -np.inf
    mask[0, 0, 2, 4:] = -np.inf
    mask[1, 0, 2, 3] = np.nan
    mask[1, 0, 3, 0] = np.inf
    for flag in (0, 1):
        yield _case("Attention", "dense", f"nan-rows-nan_to_zero{flag}", (q, k, v, mask),
                    {"head_dim": 3, "scale": 0.7, "nan_to_zero": flag}, (), ATTENTION)
    q, k, v, mask = _attention_case("float64", 2, 3, 5, 2, 4, 4, "b1qs")
    yield _case("Attention", "dense", "float64", tuple(a.astype(np.float64) for a in (q, k, v, mask)),
                {"head_dim": 4, "scale": 0.5}, (), ATTENTION)
    for sq, sk in ((0, 4), (3, 0)):              # empty: no rows; no keys (the reference's empty sum)
        q, k, v, _ = _attention_case("empty", 1, sq, sk, 2, 3, 3, None)
        yield _case("Attention", "dense", f"empty-Sq{sq}-Sk{sk}", (q, k, v, None), {"head_dim": 3, "scale": 1.0},
                    (), ATTENTION)


def _deberta_index(rows: int, cols: int, span: int, buckets: int) -> np.ndarray:
    """DeBERTa's log-bucketed relative positions i - j (transformers' make_log_bucket_position with
    max_position = 4 * buckets),
    shifted by span and clipped to [0, 2 span): a (1, rows, cols) int64 index."""
    rel = np.arange(rows)[:, None] - np.arange(cols)[None, :]
    mid = buckets // 2
    absp = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float64)
    log_pos = np.ceil(np.log(absp / mid) / np.log((4 * buckets - 1) / mid) * (mid - 1)) + mid
    bucket = np.where(absp <= mid, rel, log_pos * np.sign(rel)).astype(np.int64)
    return np.clip(bucket + span, 0, 2 * span - 1)[None]


def disentangled_attention() -> Iterator[Case]:
    # (B, S, H, D, span, buckets): seq below and above the buckets (log buckets, clipped
    # indices), one head, a head size that is not a multiple of 16
    for b, sq, h, d, span, buckets in ((1, 8, 2, 16, 8, 8), (2, 37, 3, 20, 16, 16), (1, 70, 1, 32, 24, 24)):
        rng = _rng("DisentangledAttention", sq)
        q, k, v, _ = _attention_case(("disentangled", sq), b, sq, sq, h, d, d, None)
        pk, pq = randn(rng, h, 2 * span, d), randn(rng, h, 2 * span, d)
        c2p = _deberta_index(sq, sq, span, buckets)
        p2c = np.ascontiguousarray(np.clip(-(c2p[0] - span) + span, 0, 2 * span - 1).T)[None]
        mask = np.where(rng.random((b, 1, sq, sq)) < 0.25, np.float32(-3.4028235e38), np.float32(0))
        mask[0, 0, -1] = -3.4028235e38             # a row masked everywhere: equal weights
        scale = {"head_dim": d, "scale": float(1 / np.sqrt(3 * d))}
        name = f"B{b}S{sq}H{h}D{d}"
        yield _case("DisentangledAttention", "dense", f"{name}-both", (q, k, v, mask, pk, c2p, pq, p2c), scale, (),
                    ATTENTION)
        yield _case("DisentangledAttention", "dense", f"{name}-c2p-only", (q, k, v, None, pk, c2p, None, None), scale,
                    (), ATTENTION)
        yield _case("DisentangledAttention", "dense", f"{name}-p2c-only-int32", (q, k, v, mask, None, None, pq,
                                                                               p2c[0].astype(np.int32)), scale, (),
                    ATTENTION)
    q, k, v, _ = _attention_case("disentangled-f64", 1, 5, 5, 2, 4, 4, None)
    pk = randn(_rng("DisentangledAttention", "f64"), 2, 6, 4)
    c2p = _deberta_index(5, 5, 3, 4)
    yield _case("DisentangledAttention", "dense", "float64", (q.astype(np.float64), k.astype(np.float64),
                                                               v.astype(np.float64), None, pk.astype(np.float64), c2p,
                                                               None, None), {"head_dim": 4, "scale": 0.5}, (), ATTENTION)


def skip_layer_norm() -> Iterator[Case]:
    shapes = [(1, 1), (3, 7), (5, 8), (17, 23), (2, 1000), (37, 129), (2, 5, 24)]
    for i, shape in enumerate(shapes):
        rng = _rng("SkipLayerNormalization", i)
        d = shape[-1]
        x = randn(rng, *shape) * 3 + 1
        skip = randn(rng, *shape)
        g, b = randn(rng, d), randn(rng, d)
        inputs = (x, skip, g, b) if i % 3 else (x, skip, g)
        eps = (1e-12, 1e-5)[i % 2]
        yield _case("SkipLayerNormalization", "dense", f"{shape}-eps{eps:g}-{'bias' if len(inputs) == 4 else 'nobias'}",
                    inputs, {"epsilon": eps}, (2, 3), SKIP_LN)
    rng = _rng("SkipLayerNormalization", "broadcast")
    x = randn(rng, 2, 5, 24)
    yield _case("SkipLayerNormalization", "dense", "broadcast-skip", (x, randn(rng, 1, 5, 24), randn(rng, 24),
                                                                       randn(rng, 24)), {}, (2, 3), SKIP_LN)
    x64 = (x.astype(np.float64), randn(rng, 2, 5, 24, dtype=np.float64), randn(rng, 24), randn(rng, 24))
    yield _case("SkipLayerNormalization", "dense", "float64", x64, {}, (2, 3), SKIP_LN)


def split() -> Iterator[Case]:
    rng = _rng("Split")
    qkv = randn(rng, 2, 6, 24)
    yield _case("Split", "dense", "qkv-last-axis", (qkv,), {"axis": -1, "split": [8, 8, 8]})
    yield _case("Split", "dense", "axis0-uneven", (randn(rng, 3, 5),), {"axis": 0, "split": [1, 2]})
    yield _case("Split", "dense", "axis1-empty-part", (randn(rng, 2, 5, 3),), {"axis": 1, "split": [0, 3, 2]})
    yield _case("Split", "dense", "num-outputs-3-of-7", (randn(rng, 7, 4),), {"axis": 0, "num_outputs": 3})
    yield _case("Split", "dense", "rank1-odd", (randn(rng, 9),), {"axis": 0, "split": [4, 5]})
    yield _case("Split", "dense", "int64-axis-neg2", (rng.integers(-9, 9, (4, 6, 2)),), {"axis": -2, "split": [1, 5]})


# --- numba's dense float ops --------------------------------------------------------------------------

UNARY_SHAPES = [(), (1,), (7,), (3, 5, 17), (2, 3, 4, 33), (0,), (4, 0, 3), (70001,)]


def unary(op: str, tol: Tolerance, attrs=None, domain: str = "any", extra_sizes=()) -> Callable[[], Iterator[Case]]:
    """An element-wise op on float32 of every rank (0..4), odd sizes, empty tensors and one
    above the numba backend's parallel threshold, with extreme values planted; non-finite
    inputs; float64 input."""
    def build() -> Iterator[Case]:
        tag = "-".join(f"{k}={v}" for k, v in (attrs or {}).items())
        for shape in [*UNARY_SHAPES, *extra_sizes]:
            rng = _rng(op, tag, shape)
            x = with_specials(randn(rng, *shape, scale=4.0))
            if domain == "positive":
                x = np.abs(x)
            yield _case(op, "dense", f"{tag + '-' if tag else ''}{shape}", (x,), attrs, (), tol)
        x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], np.float32)
        yield _case(op, "dense", f"{tag + '-' if tag else ''}nonfinite", (x,), attrs, (), tol)
        yield _case(op, "dense", f"{tag + '-' if tag else ''}float64", (_rng(op, tag).standard_normal((3, 5)),),
                    attrs, (), tol)
    return build


def gelu() -> Iterator[Case]:
    yield from unary("Gelu", GELU)()
    yield from unary("Gelu", GELU, {"approximate": "tanh"})()


def softmax() -> Iterator[Case]:
    for shape, axis in [((1, 1), -1), ((3, 17), -1), ((2, 3, 5, 129), -1), ((2, 3, 5, 129), 1), ((4, 7), 0),
                        ((2, 3, 5), -2), ((9,), 0), ((0, 5), -1), ((5, 0), -1), ((300, 257), -1)]:
        rng = _rng("Softmax", shape, axis)
        yield _case("Softmax", "dense", f"{shape}-axis{axis}", (randn(rng, *shape, scale=5.0),), {"axis": axis},
                    (), SOFTMAX)
    rng = _rng("Softmax", "masked")
    x = randn(rng, 6, 33)
    x[0, 5:] = -np.inf                           # attention masks: -inf or float32's lowest
    x[1, :] = np.finfo(np.float32).min           # fully masked: uniform
    x[2, ::2] += np.finfo(np.float32).min
    x[3, :] = -np.inf                            # fully masked with -inf: NaN row
    x[4, 7] = np.nan                             # a NaN poisons its row only
    x[5, 3] = np.inf
    yield _case("Softmax", "dense", "masked-rows", (x,), {}, (), SOFTMAX)
    yield _case("Softmax", "dense", "float64", (rng.standard_normal((3, 8)),), {}, (), SOFTMAX)


def layer_norm() -> Iterator[Case]:
    cases = [((1, 7), -1, "full"), ((3, 5, 17), -1, "full"), ((2, 3, 4, 33), -1, "nobias"),
             ((2, 3, 4, 33), -2, "full"), ((2, 3, 4, 5), 1, "broadcast"), ((4, 6), 0, "full"),
             ((5, 1), -1, "full"), ((0, 8), -1, "full"), ((130, 768), -1, "full"), ((1000, 70), -1, "nobias")]
    for i, (shape, axis, affine) in enumerate(cases):
        rng = _rng("LayerNormalization", i)
        x = randn(rng, *shape, scale=3.0) + np.float32(rng.uniform(-50, 50))   # mean far from 0
        dshape = shape[axis % len(shape):]
        scale, bias = randn(rng, *dshape), randn(rng, *dshape)
        if affine == "broadcast":                # (1, ..., D_last) and a scalar-like bias
            scale = randn(rng, *((1,) * (len(dshape) - 1) + dshape[-1:]))
            bias = randn(rng, 1)
        inputs = (x, scale) if affine == "nobias" else (x, scale, bias)
        eps = (1e-5, 1e-12)[i % 2]
        yield _case("LayerNormalization", "dense", f"{shape}-axis{axis}-{affine}-eps{eps:g}", inputs,
                    {"axis": axis, "epsilon": eps}, (1, 2), LAYERNORM)


def matmul() -> Iterator[Case]:
    for ashape, bshape in [((17,), (17, 5)), ((3, 17), (17,)), ((1, 17), (17, 9)), ((2, 1, 5, 33), (3, 33, 7)),
                           ((4, 0), (0, 6)), ((2, 4, 8, 16), (2, 4, 16, 8)), ((33, 65), (65, 1))]:
        rng = _rng("MatMul", ashape, bshape)
        yield _case("MatMul", "dense", f"{ashape}x{bshape}", (randn(rng, *ashape), randn(rng, *bshape)), {}, (),
                    GEMM_REL)
    rng = _rng("MatMul", "int")
    yield _case("MatMul", "dense", "int32", (rng.integers(-5, 5, (3, 4)).astype(np.int32),
                                             rng.integers(-5, 5, (4, 2)).astype(np.int32)), {}, (), EXACT)


def gemm() -> Iterator[Case]:
    m, k, n = 5, 19, 7
    for i, (ta, tb, cshape) in enumerate(itertools.product((0, 1), (0, 1), (None, (7,), (5, 7), (1, 1)))):
        rng = _rng("Gemm", i)
        a = randn(rng, *((k, m) if ta else (m, k)))
        b = randn(rng, *((n, k) if tb else (k, n)))
        inputs = (a, b) if cshape is None else (a, b, randn(rng, *cshape))
        alpha, beta = ((1.0, 1.0), (0.5, -2.0))[i % 2]
        yield _case("Gemm", "dense", f"tA{ta}-tB{tb}-C{cshape}-alpha{alpha}-beta{beta}", inputs,
                    {"alpha": alpha, "beta": beta, "transA": ta, "transB": tb}, (), GEMM_REL)


def relu() -> Iterator[Case]:
    # numba's kernel runs from 4096 elements (RELU_NUMPY_MAX_ELEMENTS) and in parallel from 2^20
    yield from unary("Relu", EXACT, extra_sizes=[(3, 1500), ((1 << 20) + 5,)])()
    rng = _rng("Relu", "int")
    yield _case("Relu", "dense", "int32", (rng.integers(-5, 5, (4, 7)).astype(np.int32),))


# --- the reference-only ops (no fast kernel yet: a builder so that one added later is tested) ----------

def _ops_with(build_one: Callable[[str], Iterator[Case]], ops) -> dict:
    return {(op, "dense"): (lambda op=op: build_one(op)) for op in ops}


def binary_arith(op: str) -> Iterator[Case]:
    rng = _rng(op)
    yield _case(op, "dense", "float32-broadcast", (randn(rng, 3, 1, 5), randn(rng, 4, 5) + 3), {}, ())
    yield _case(op, "dense", "float32-scalar", (randn(rng, 7), np.array(1.7, np.float32)), {}, ())
    yield _case(op, "dense", "empty", (randn(rng, 0, 3), randn(rng, 3)), {}, ())
    a = rng.integers(-20, 20, (2, 9)).astype(np.int32)
    b = rng.integers(1, 6, (9,)).astype(np.int32) * rng.choice([-1, 1], 9).astype(np.int32)
    yield _case(op, "dense", "int32-both-signs", (a, b), {}, ())


def compare(op: str) -> Iterator[Case]:
    rng = _rng(op)
    a = rng.integers(-3, 3, (4, 5)).astype(np.float32)
    yield _case(op, "dense", "float32-ties-broadcast", (a, a[1:2]), {}, ())
    yield _case(op, "dense", "int64", (rng.integers(-3, 3, (7,)), rng.integers(-3, 3, (1,))), {}, ())


def logic(op: str) -> Iterator[Case]:
    rng = _rng(op)
    yield _case(op, "dense", "bool-broadcast", (rng.random((3, 4)) < 0.5, rng.random((4,)) < 0.5), {}, ())


def variadic(op: str) -> Iterator[Case]:
    rng = _rng(op)
    yield _case(op, "dense", "one-input", (randn(rng, 3, 4),), {}, ())
    yield _case(op, "dense", "three-broadcast", (randn(rng, 3, 1), randn(rng, 4), randn(rng, 2, 3, 4)), {}, ())
    yield _case(op, "dense", "int32", (rng.integers(-9, 9, (5,)).astype(np.int32),
                                       rng.integers(-9, 9, (5,)).astype(np.int32)), {}, ())


def simple_unary(op: str) -> Iterator[Case]:
    """The IEEE-exact unary ops (one correctly rounded operation or none)."""
    rng = _rng(op)
    x = with_specials(randn(rng, 3, 17, scale=4.0))
    if op in ("Sqrt",):
        x[0, 0] = -1.0                           # NaN
    yield _case(op, "dense", "float32", (x,), {}, ())
    yield _case(op, "dense", "empty", (randn(rng, 0, 4),), {}, ())
    if op in ("Neg", "Abs", "Identity"):
        yield _case(op, "dense", "int32", (rng.integers(-9, 9, (6,)).astype(np.int32),), {}, ())


REFERENCE_ONLY_EXACT_UNARY = ("Sqrt", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Identity")


def transcendental(op: str) -> Iterator[Case]:
    """Exp, Log, Tanh: numpy's float32 libm in the reference; a fast kernel within ELEMENTWISE."""
    rng = _rng(op)
    x = randn(rng, 4, 33, scale=4.0)
    if op == "Log":
        x = np.abs(x)
        x[0, 0] = 0.0                            # -inf
    yield _case(op, "dense", "float32", (x,), {}, (), ELEMENTWISE)
    yield _case(op, "dense", "nonfinite", (np.array([np.nan, np.inf, -np.inf, 1.0], np.float32),), {}, (), ELEMENTWISE)


def reduce_cases(op: str) -> Iterator[Case]:
    rng = _rng(op)
    x = randn(rng, 3, 4, 5)
    tol = EXACT if op in ("ReduceMax", "ReduceMin") else None
    for axes, keep, noop in ((None, 1, 0), ([1], 0, 0), ([-1, 0], 1, 0), ([], 1, 1), ([2], 1, 0)):
        n = x.size if not axes else int(np.prod([x.shape[a] for a in axes]))
        yield _case(op, "dense", f"axes{axes}-keep{keep}-noop{noop}", (x,),
                    {"axes": axes, "keepdims": keep, "noop_with_empty_axes": noop}, (), tol or SumBound(n))
    yield _case(op, "dense", "int32", (rng.integers(-9, 9, (4, 6)).astype(np.int32),), {"axes": [1]}, (), EXACT)
    yield _case(op, "dense", "empty-axis", (randn(rng, 2, 0, 3),), {"axes": [1]}, (), tol or SumBound(1))


def pools() -> dict:
    def max_pool():
        rng = _rng("MaxPool")
        yield _case("MaxPool", "dense", "3x3-s2-p1-ceil", (randn(rng, 1, 2, 7, 9),),
                    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1})
        yield _case("MaxPool", "dense", "dilated", (randn(rng, 2, 3, 8, 8),),
                    {"kernel_shape": [2, 2], "dilations": [2, 2]})
        yield _case("MaxPool", "dense", "int8-1d", (rng.integers(-128, 127, (1, 2, 11)).astype(np.int8),),
                    {"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
        # a ResNet stem's pool (numba's plane kernel on its threads), NaN and -inf inputs, padding
        # only windows (pads as wide as the kernel), asymmetric pads, a 1 x 1 window
        yield _case("MaxPool", "dense", "resnet-stem", (randn(rng, 1, 8, 56, 56),),
                    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
        special = randn(rng, 2, 2, 6, 7)
        special[0, 0, 1, 1], special[0, 1, 4, 5], special[1, 0, 0, 0] = np.nan, -np.inf, np.inf
        yield _case("MaxPool", "dense", "nan-inf", (special,), {"kernel_shape": [2, 3], "strides": [1, 2]})
        yield _case("MaxPool", "dense", "pad-only-windows", (randn(rng, 1, 1, 3, 3),),
                    {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [2, 2, 2, 2]})
        yield _case("MaxPool", "dense", "asymmetric-pads-ceil", (randn(rng, 1, 3, 10, 7),),
                    {"kernel_shape": [3, 2], "strides": [3, 2], "pads": [0, 1, 2, 0], "dilations": [2, 1],
                     "ceil_mode": 1})
        yield _case("MaxPool", "dense", "1x1", (randn(rng, 2, 3, 4, 5),), {"kernel_shape": [1, 1]})

    def average_pool():
        rng = _rng("AveragePool")
        for inc in (0, 1):
            yield _case("AveragePool", "dense", f"3x3-p1-ceil-include{inc}", (randn(rng, 1, 2, 7, 9),),
                        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
                         "count_include_pad": inc}, (), SumBound(9))
        yield _case("AveragePool", "dense", "1d", (randn(rng, 2, 3, 10),), {"kernel_shape": [4]}, (), SumBound(4))

    def global_average_pool():
        rng = _rng("GlobalAveragePool")
        yield _case("GlobalAveragePool", "dense", "2d", (randn(rng, 2, 3, 5, 7),), {}, (), SumBound(35))
        yield _case("GlobalAveragePool", "dense", "1d", (randn(rng, 2, 3, 5),), {}, (), SumBound(5))

    return {("MaxPool", "dense"): max_pool, ("AveragePool", "dense"): average_pool,
            ("GlobalAveragePool", "dense"): global_average_pool}


def _shape_ops() -> dict:
    def c(op, name, inputs, attrs=None, weights=(), tol=EXACT):
        return _case(op, "dense", name, inputs, attrs, weights, tol)
    i64 = lambda *v: np.array(v, np.int64)   # noqa: E731

    def shape():
        x = randn(_rng("Shape"), 2, 3, 4)
        yield c("Shape", "all", (x,))
        yield c("Shape", "start1-end-neg1", (x,), {"start": 1, "end": -1})
        yield c("Shape", "clamped", (x,), {"start": -9, "end": 9})

    def reshape():
        x = randn(_rng("Reshape"), 2, 3, 4)
        yield c("Reshape", "zero-and-infer", (x, i64(0, -1)), {}, (1,))
        yield c("Reshape", "allowzero-empty", (randn(_rng("Reshape", 0), 0, 4), i64(0, 2, 2)), {"allowzero": 1}, (1,))
        # constant targets (initializers: the CPU backends' views resolve them once), a strided
        # input (numpy copies, as the reference), run-time targets (allowzero=1: DeBERTa's dynamo
        # export, values as they are; allowzero=0: the reference)
        yield c("Reshape", "constant-target", (x, i64(0, 0, 2, -1)), {}, (1,))
        yield c("Reshape", "constant-target-allowzero", (x, i64(-1, 4)), {"allowzero": 1}, (1,))
        yield c("Reshape", "strided-input", (np.ascontiguousarray(x.transpose(2, 0, 1))[::2], i64(0, -1)), {}, (1,))
        yield c("Reshape", "runtime-allowzero", (x, i64(2, -1, 3)), {"allowzero": 1})
        yield c("Reshape", "runtime", (x, i64(0, -1)), {})

    def flatten():
        x = randn(_rng("Flatten"), 2, 3, 4)
        for axis in (0, 1, -1, 3):
            yield c("Flatten", f"axis{axis}", (x,), {"axis": axis})

    def transpose():
        x = randn(_rng("Transpose"), 2, 3, 4)
        yield c("Transpose", "reverse", (x,))
        yield c("Transpose", "perm", (x,), {"perm": [1, 2, 0]})

    def unsqueeze():
        yield c("Unsqueeze", "axes-0-neg1", (randn(_rng("Unsqueeze"), 3, 4),), {"axes": [0, -1]})

    def squeeze():
        x = randn(_rng("Squeeze"), 1, 3, 1, 4)
        yield c("Squeeze", "all", (x,))
        yield c("Squeeze", "axis2", (x,), {"axes": [2]})

    def slice_():
        x = randn(_rng("Slice"), 5, 6, 7)
        yield c("Slice", "steps-and-negatives", (x, i64(1, -1), i64(4, -8), i64(0, 2), i64(2, -2)), {}, (1, 2, 3, 4))
        yield c("Slice", "clamped-sentinels", (x, i64(0), i64(np.iinfo(np.int64).max)), {}, (1, 2))
        yield c("Slice", "empty", (x, i64(3), i64(3), i64(1)), {}, (1, 2, 3))

    def concat():
        rng = _rng("Concat")
        yield c("Concat", "axis1-with-empty", (randn(rng, 2, 3), randn(rng, 2, 0), randn(rng, 2, 4)), {"axis": 1})
        yield c("Concat", "one-input-axis-neg1", (randn(rng, 3, 2),), {"axis": -1})

    def expand():
        yield c("Expand", "both-ways", (randn(_rng("Expand"), 3, 1), i64(2, 1, 4)), {}, (1,))

    def tile():
        yield c("Tile", "repeats", (randn(_rng("Tile"), 2, 3), i64(2, 1)), {}, (1,))

    def range_():
        yield c("Range", "int64", (np.array(10, np.int64), np.array(-3, np.int64), np.array(-3, np.int64)), {},
                (0, 1, 2))
        yield c("Range", "float32", (np.array(0.5, np.float32), np.array(3.0, np.float32), np.array(0.3, np.float32)),
                {}, (0, 1, 2))
        yield c("Range", "empty", (np.array(5, np.int32), np.array(1, np.int32), np.array(1, np.int32)), {}, (0, 1, 2))

    def constant_of_shape():
        yield c("ConstantOfShape", "float32", (i64(2, 3),), {"value": 1.5}, (0,))
        yield c("ConstantOfShape", "int64-0d", (np.zeros((0,), np.int64),), {"value": 7, "dtype": "int64"}, (0,))

    def gather_elements():
        rng = _rng("GatherElements")
        x = randn(rng, 3, 4)
        yield c("GatherElements", "axis1-negative", (x, rng.integers(-4, 4, (3, 2))), {"axis": 1})
        yield c("GatherElements", "axis0", (x, rng.integers(-3, 3, (2, 4)).astype(np.int32)), {"axis": 0})
        # DeBERTa's relative-position gather: (B*H, S, 2*span) along the last axis by a (B*H, S, S)
        # index, large enough for the native kernel's threads
        rel = randn(rng, 12, 40, 160)
        yield c("GatherElements", "deberta-last-axis", (rel, rng.integers(-160, 160, (12, 40, 40))), {"axis": -1})
        # a middle axis (inner > 1), int32 indices
        y = randn(rng, 2, 5, 3, 4)
        yield c("GatherElements", "axis1-inner", (y, rng.integers(-5, 5, (2, 7, 3, 4)).astype(np.int32)), {"axis": 1})
        # other axes shorter than data's: the reference's case
        yield c("GatherElements", "shorter-axes", (y, rng.integers(0, 3, (1, 2, 3, 2))), {"axis": 2})

    def gather_nd():
        rng = _rng("GatherND")
        x = randn(rng, 2, 3, 4)
        yield c("GatherND", "batch0", (x, rng.integers(-2, 2, (5, 2))), {})
        yield c("GatherND", "batch1", (x, rng.integers(0, 3, (2, 1))), {"batch_dims": 1})

    return {("Shape", "dense"): shape, ("Reshape", "dense"): reshape, ("Flatten", "dense"): flatten,
            ("Transpose", "dense"): transpose, ("Unsqueeze", "dense"): unsqueeze, ("Squeeze", "dense"): squeeze,
            ("Slice", "dense"): slice_, ("Concat", "dense"): concat, ("Expand", "dense"): expand,
            ("Tile", "dense"): tile, ("Range", "dense"): range_, ("ConstantOfShape", "dense"): constant_of_shape,
            ("GatherElements", "dense"): gather_elements, ("GatherND", "dense"): gather_nd}


def _misc_ops() -> dict:
    def mod():
        rng = _rng("Mod")
        a = rng.integers(-20, 20, (3, 7)).astype(np.int32)
        b = (rng.integers(1, 5, (7,)) * rng.choice([-1, 1], 7)).astype(np.int32)
        yield _case("Mod", "dense", "int32-sign-of-divisor", (a, b), {})
        yield _case("Mod", "dense", "float32-fmod", (randn(_rng("Mod", 1), 4, 5) * 10, randn(_rng("Mod", 2), 5) + 3),
                    {"fmod": 1})

    def pow_():
        rng = _rng("Pow")
        yield _case("Pow", "dense", "float32", (np.abs(randn(rng, 3, 5)) + 0.1, randn(rng, 5)), {}, (), ELEMENTWISE)
        yield _case("Pow", "dense", "int32-int-exponent", (rng.integers(-4, 5, (6,)).astype(np.int32),
                                                          rng.integers(-1, 4, (6,)).astype(np.int32)), {})

    def not_():
        yield _case("Not", "dense", "bool", (_rng("Not").random((3, 4)) < 0.5,), {})

    def is_nan():
        yield _case("IsNaN", "dense", "specials", (with_specials(randn(_rng("IsNaN"), 3, 17)),), {})

    def sign():
        rng = _rng("Sign")
        yield _case("Sign", "dense", "float32", (with_specials(randn(rng, 3, 17)),), {})
        yield _case("Sign", "dense", "int32", (rng.integers(-3, 4, (9,)).astype(np.int32),), {})

    def hard_sigmoid():
        rng = _rng("HardSigmoid")
        yield _case("HardSigmoid", "dense", "default", (with_specials(randn(rng, 3, 17, scale=5.0)),), {})
        yield _case("HardSigmoid", "dense", "alpha-beta", (randn(rng, 4, 5, scale=5.0),), {"alpha": 0.3, "beta": 0.4})

    def hard_swish():
        yield _case("HardSwish", "dense", "float32", (with_specials(randn(_rng("HardSwish"), 3, 17, scale=5.0)),), {})

    def cum_sum():
        rng = _rng("CumSum")
        x = randn(rng, 3, 4, 5)
        for axis in (0, -1, 1):
            for exclusive in (0, 1):
                for reverse in (0, 1):
                    yield _case("CumSum", "dense", f"axis{axis}-ex{exclusive}-rev{reverse}",
                                (x, np.array(axis, np.int64)), {"exclusive": exclusive, "reverse": reverse}, (1,))
        yield _case("CumSum", "dense", "int32", (rng.integers(-9, 9, (2, 6)).astype(np.int32), np.array([1], np.int32)), {}, (1,))

    def leaky_relu():
        rng = _rng("LeakyRelu")
        yield _case("LeakyRelu", "dense", "default-alpha", (with_specials(randn(rng, 3, 17, scale=4.0)),), {})
        yield _case("LeakyRelu", "dense", "alpha0.2", (randn(rng, 5),), {"alpha": 0.2})

    def clip():
        rng = _rng("Clip")
        x = randn(rng, 4, 9, scale=3.0)
        lo, hi = np.array(-1.0, np.float32), np.array(0.5, np.float32)
        yield _case("Clip", "dense", "no-bounds", (x,), {})
        yield _case("Clip", "dense", "lo-hi", (x, lo, hi), {}, (1, 2))
        yield _case("Clip", "dense", "hi-only", (x, None, hi), {}, (2,))
        yield _case("Clip", "dense", "lo-above-hi", (x, hi, lo), {}, (1, 2))

    def cast():
        rng = _rng("Cast")
        x = randn(rng, 3, 7, scale=100.0)
        for to in ("int32", "float16", "bool", "int64"):
            yield _case("Cast", "dense", f"float32-to-{to}", (x,), {"to": to})
        yield _case("Cast", "dense", "int64-to-float32", (rng.integers(-1 << 40, 1 << 40, (5,)),), {"to": "float32"})

    def where():
        rng = _rng("Where")
        yield _case("Where", "dense", "broadcast", (rng.random((3, 1)) < 0.5, randn(rng, 3, 4), randn(rng, 4)), {})

    def batch_norm():
        rng = _rng("BatchNormalization")
        for shape in ((2, 3, 4, 5), (1, 4, 7)):
            c = shape[1]
            yield _case("BatchNormalization", "dense", f"{shape}", (randn(rng, *shape), randn(rng, c), randn(rng, c),
                                                                    randn(rng, c), np.abs(randn(rng, c)) + 0.5),
                        {}, (1, 2, 3, 4), LAYERNORM)

    return {("Mod", "dense"): mod, ("Pow", "dense"): pow_, ("Not", "dense"): not_, ("LeakyRelu", "dense"): leaky_relu,
            ("IsNaN", "dense"): is_nan, ("Sign", "dense"): sign, ("HardSigmoid", "dense"): hard_sigmoid,
            ("HardSwish", "dense"): hard_swish, ("CumSum", "dense"): cum_sum,
            ("Clip", "dense"): clip, ("Cast", "dense"): cast, ("Where", "dense"): where,
            ("BatchNormalization", "dense"): batch_norm}


# --- the table ------------------------------------------------------------------------------------------

PACKED = ("int8", "int4_grouped", "csr", "bsr", "nm")

BUILDERS: dict[tuple[str, str], Callable[[], Iterator[Case]]] = {
    ("Linear", "int8"): linear_int8,
    ("Linear", "int4_grouped"): linear_int4,
    **{("Linear", lay): sparse_linear(lay) for lay in ("csr", "bsr", "nm")},
    ("Linear", "dense"): linear_dense,
    **{("Conv", lay): conv(lay) for lay in ("dense", *PACKED)},
    **{("Gather", lay): gather(lay) for lay in PACKED},
    ("Gather", "dense"): gather_dense,
    ("Attention", "dense"): attention,
    ("DisentangledAttention", "dense"): disentangled_attention,
    ("SkipLayerNormalization", "dense"): skip_layer_norm,
    ("Split", "dense"): split,
    ("Softmax", "dense"): softmax,
    ("LayerNormalization", "dense"): layer_norm,
    ("MatMul", "dense"): matmul,
    ("Gemm", "dense"): gemm,
    ("Gelu", "dense"): gelu,
    ("Erf", "dense"): unary("Erf", ELEMENTWISE),
    ("Sigmoid", "dense"): unary("Sigmoid", ELEMENTWISE),
    ("Relu", "dense"): relu,
    **_ops_with(binary_arith, ("Add", "Sub", "Mul", "Div")),
    **_ops_with(compare, ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual")),
    **_ops_with(logic, ("And", "Or", "Xor")),
    **_ops_with(variadic, ("Max", "Min", "Sum")),
    **_ops_with(simple_unary, REFERENCE_ONLY_EXACT_UNARY),
    **_ops_with(transcendental, ("Exp", "Log", "Tanh")),
    **_ops_with(reduce_cases, ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")),
    **pools(),
    **_shape_ops(),
    **_misc_ops(),
}

_CACHE: dict[tuple[str, str], list[Case]] = {}


def cases(op: str, layout: str) -> list[Case]:
    """The cases of (op, layout), built once per process; KeyError if the table has none."""
    key = (op, layout)
    if key not in _CACHE:
        built = list(BUILDERS[key]())
        names = [c.name for c in built]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise AssertionError(f"{key}: case names repeat: {sorted(dup)}")
        _CACHE[key] = built
    return _CACHE[key]


def case(op: str, layout: str, name: str) -> Case:
    return next(c for c in cases(op, layout) if c.name == name)


# --- documented refusals ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """Inputs a backend documents it does not take: building or running its kernel raises
    ``raises`` matching ``match`` (and the suite checks that it does)."""
    backend: str
    op: str
    layouts: tuple[str, ...]
    when: Callable[[Case], bool]
    raises: type
    match: str
    why: str


REFUSALS = [
    Refusal("triton", "Linear", ("int4_grouped",), lambda c: c.attrs["act_quant"] != "none", ValueError, "weight-only",
            "kernels/triton_gpu/int4.py: int4 is weight-only (act_quant 'none')"),
    Refusal("triton", "Linear", ("int8", "int4_grouped", "bsr"), lambda c: "non_float32_x" in c.tags, ValueError,
            "must be float32", "kernels/triton_gpu/_common.py rows_of: the Triton kernels read float32 X"),
]


def refusal(backend: str, c: Case) -> Refusal | None:
    for r in REFUSALS:
        if r.backend == backend and r.op == c.op and c.layout in r.layouts and r.when(c):
            return r
    return None
