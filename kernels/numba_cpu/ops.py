"""Float32 fast paths for the ops a float model spends time on outside the quantized GEMMs.

The numpy reference (kernels/reference) is the spec: it computes float ops in float64 and
rounds once. These kernels take float32 in and give float32 out, and are tested against it.
Any other input dtype (float16, float64, integers) runs the reference kernel unchanged, so
semantics never depend on the backend.

Registered, all on the ``dense`` layout:

* ``Linear`` (dense fp32 weight), ``MatMul``, ``Gemm``, ``Conv``: BLAS sgemm, the
  backend-neutral factories of kernels/blas_ops.py (the native backend registers them too).
* ``LayerNormalization``, ``Softmax``: numba row kernels (below).
* ``Gelu`` (both forms), ``Erf``, ``Sigmoid``, ``Relu``: numba element-wise kernels (below).
  Relu is exact; it is here because np.maximum(x, 0), the reference, is ~4x slower than a
  plain loop (0.76 vs 0.20 ms for 512 x 3072 on the Zen 5 test machine, one thread).

Not registered, because the reference is already numpy in the input dtype and a wrapper
would only add a call: Add/Sub/Mul/Div (np.add... on float32 operands give float32), Where
(np.where), Gather on a dense table (np.take, an embedding lookup; a quantized table has
its kernel in gather.py), Transpose/Reshape, and Tanh (np.tanh is
vectorised by numpy, ~0.4 ns per element; a float64 tanh through ``_exp64`` is slower).

Numerics of the numba kernels (float32 in and out, float64 inside):

* Every transcendental goes through ``_exp64``, a float64 exp written out in arithmetic
  (Cody-Waite range reduction by ln 2, degree-9 Taylor polynomial, 2^n assembled from its
  bits): numba has no SVML here, so a libm call (math.exp, math.erf) would keep every loop
  scalar (math.erf: ~10 ns per element); arithmetic vectorises with AVX-512 (~0.6 ns).
  Relative error < 1e-11 for x in [-708, 709] (< 1e-13 more where a row kernel's "reassoc"
  reorders the range reduction); exp(x) is 0 below -708 and inf above 709, both far outside
  float32's range.
* erfc(x) is Numerical Recipes' ``erfcc`` (Chebyshev fit, fractional error < 1.2e-7 for
  every x), erf(x) is its complement for |x| >= 0.5 and the Taylor series (through x^19)
  below, so both are accurate relative to their own value: ~1 float32 ulp before the final
  rounding. Gelu uses 0.5 * x * erfc(-x / sqrt 2) = 0.5 * x * (1 + erf(x / sqrt 2)) and the
  tanh form x / (1 + exp(-2u)) = 0.5 * x * (1 + tanh u): neither cancels for negative x, so
  the tiny outputs there stay accurate relative to their size. The erf-form Gelu evaluates
  that fit mostly in float32 (16 lanes; ``_gelu_erf_value``): only z = |x| / sqrt 2 and the
  exponent -z^2 + fit(t) are float64 (z^2 ~ 80 must keep its low bits), exp's polynomial is
  float32: relative error < 4e-7, 1.4x faster than all-float64 (0.27 vs 0.37 ms for 196608
  elements, one thread); it is 30-40% of a fused Linear + GELU at BERT's FFN shapes.
* LayerNormalization: one pass per row for the statistics, sum and sum of squares in float64
  accumulators, var = max(E[x^2] - mean^2, 0) (the float64 cancellation error is
  ~1e-16 * mean^2 / var, negligible for float32 data); the affine step per element in
  float64, rounded once to float32.
* Softmax: row maximum (float32, exact in any order), exp(x - max) and its sum in float64,
  output exp(x - max) * (1 / sum) recomputed per element and rounded once (recomputing exp
  is cheaper than a float64 scratch row).

Threads: a kernel runs on numba's pool (``set_threads``) only when its input has at least
``PARALLEL_MIN_ELEMENTS`` elements (``RELU_PARALLEL_MIN_ELEMENTS`` for Relu, which is memory
bound at ~0.13 ns per element) and no BLAS GEMM ran in the last ``BLAS_QUIET_SECONDS``;
waking the pool costs 2 us with one thread and 10-100 us with two on a busy 2-core
machine, more than a small op. Work is split by rows (row ops) or by fixed blocks of ``ELEMENTWISE_BLOCK``
elements, each done by one thread with the same code, so the result is bit for bit the same
for any thread count. OpenBLAS (the GEMMs) uses its own thread pool, not numba's, and makes
no such promise: how it splits a GEMM over threads, and so which of its micro-kernels (main or
edge, each with its own summation order) computes an output element, depends on the thread
count and on the kernel it picks for the CPU (measured on an AVX2-only Zen 3: 825 of 21376
elements of a Linear differed by up to 6e-5 between 1 and 2 threads). So the fp32 Linear,
MatMul, Gemm and Conv agree across thread counts within float32 rounding (GEMM_REL_TOL in
tests/test_numba_ops.py), not bit for bit; every kernel written here does.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels.reference._common import normalize_axis, prod
from kernels.blas_activity import blas_recently_called  # (fused.py imports it from here too)
from kernels import blas_ops
from kernels.fused_dispatch import reference_of as _reference
from kernels.registry import register

F32 = np.dtype(np.float32)

# Below this many elements a kernel runs on the calling thread only (see module docstring),
# and also above it when a BLAS GEMM ran just before (BLAS_QUIET_SECONDS: on 2 cores, parallel
# element-wise kernels between OpenBLAS GEMMs made both thread pools contend, fp32
# MiniLM-dims BERT, seq 128: 108 ms per run vs 26 ms with these ops serial). Without BLAS
# around (int8 and sparse models), GELU on a 128 x 1536 FFN output (~0.3 ms on one thread)
# is worth two threads.
PARALLEL_MIN_ELEMENTS = 1 << 15
RELU_PARALLEL_MIN_ELEMENTS = 1 << 20
# Below this many elements Relu calls the reference (np.maximum): numba's call overhead
# (~1 us) is more than the whole op there.
RELU_NUMPY_MAX_ELEMENTS = 1 << 12
# Element-wise kernels split their flat input into blocks of this many elements, one thread
# per block; the split does not depend on the thread count.
ELEMENTWISE_BLOCK = 1 << 14

# numba options of every kernel: cached on disk (a new process loads instead of compiling);
# error_model="numpy" makes x / 0 inf or nan as in numpy instead of raising, which also lets
# loops with a division vectorise; "contract" lets LLVM fuse a * b + c into one FMA (a
# compile-time choice, so it cannot depend on the thread count).
_ELEMENTWISE = dict(cache=True, error_model="numpy", fastmath={"contract"})
# row reductions also allow "reassoc" so sums vectorise: the order of a row's sum is then
# LLVM's, but fixed by the compiled code, the same for every row and every thread count.
_ROWS = dict(cache=True, error_model="numpy", fastmath={"contract", "reassoc"})
# scalar helpers, inlined into the kernel (numba IR inlining) so its loop vectorises.
_INLINE = dict(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")

# --- float64 exp / erf / erfc in plain arithmetic ---------------------------------------------

_LOG2E = 1.4426950408889634
# ln 2 split in two (fdlibm): _LN2_HI has 32 significant bits, so n * _LN2_HI is exact for
# |n| <= 1023 and r = x - n ln 2 loses nothing to cancellation.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_EXP_MIN = -708.0   # below: 0 (the exact value is subnormal in float64, 0 in float32)
_EXP_MAX = 709.0    # above: inf (exp(709) = 8.2e307; float32 overflowed long before)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
# below this |x|, erf uses its Taylor series (1 - erfc would lose relative accuracy)
_ERF_SERIES_MAX = 0.5


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose IEEE bits are the int64 ``bits`` (a bit cast, no conversion)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(**_INLINE)
def _exp64(x):
    """exp(x) for float64 x; relative error < 1e-11 on [-708, 709], 0 below, inf above."""
    xc = min(max(x, _EXP_MIN), _EXP_MAX)
    n = np.floor(xc * _LOG2E + 0.5)
    r = (xc - n * _LN2_HI) - n * _LN2_LO          # |r| <= ln2 / 2
    # Taylor series of e^r through r^9: truncation error r^10 / 10! < 1e-11 for |r| <= 0.347
    p = 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    y = p * _f64_from_bits((np.int64(n) + 1023) << 52)     # p * 2^n, n in [-1021, 1023]
    y = 0.0 if x < _EXP_MIN else y
    y = np.inf if x > _EXP_MAX else y
    return x if x != x else y                     # NaN in, NaN out


@njit(**_INLINE)
def _erfc64(x):
    """erfc(x) for float64 x: Numerical Recipes erfcc, fractional error < 1.2e-7 everywhere."""
    z = abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -0.82215223 + t * 0.17087277
    poly = 1.48851587 + t * poly
    poly = -1.13520398 + t * poly
    poly = 0.27886807 + t * poly
    poly = -0.18628806 + t * poly
    poly = 0.09678418 + t * poly
    poly = 0.37409196 + t * poly
    poly = 1.00002368 + t * poly
    r = t * _exp64(-z * z - 1.26551223 + t * poly)
    return r if x >= 0.0 else 2.0 - r


@njit(**_INLINE)
def _erf64(x):
    """erf(x) for float64 x, relative error ~1.2e-7 (see the module docstring)."""
    # Taylor: erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)); through n = 9 the
    # truncation error is < 1e-14 relative for |x| < 0.5
    x2 = x * x
    s = -1.0 / (362880.0 * 19.0)
    s = s * x2 + 1.0 / (40320.0 * 17.0)
    s = s * x2 - 1.0 / (5040.0 * 15.0)
    s = s * x2 + 1.0 / (720.0 * 13.0)
    s = s * x2 - 1.0 / (120.0 * 11.0)
    s = s * x2 + 1.0 / (24.0 * 9.0)
    s = s * x2 - 1.0 / (6.0 * 7.0)
    s = s * x2 + 1.0 / (2.0 * 5.0)
    s = s * x2 - 1.0 / 3.0
    s = s * x2 + 1.0
    series = _TWO_OVER_SQRT_PI * x * s
    tail = 1.0 - _erfc64(abs(x))
    tail = tail if x >= 0.0 else -tail
    return series if abs(x) < _ERF_SERIES_MAX else tail


# --- element-wise kernels ------------------------------------------------------------------
# Which function a unary kernel applies (named, passed as an int so one compiled driver
# serves all of them; each has its own loop, so every loop vectorises).
GELU_ERF, GELU_TANH, ERF, SIGMOID, RELU = 0, 1, 2, 3, 4


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 bits of the int64 ``bits`` (a bit cast)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], llvm_ir.IntType(32)), llvm_ir.FloatType())
    return types.float32(types.int64), codegen


@njit(**_INLINE)
def _exp_reduced32(r, n):
    """e^r * 2^n as float32, for float32 |r| <= ln2 / 2 and integral n >= -126 (a float):
    Taylor polynomial through r^7 (truncation < 1.2e-7 relative) times 2^n from its bits."""
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _f32_from_bits((np.int64(n) + 127) << 23)


# float32 exp: 16 lanes instead of _exp64's 8 (the attention softmax; erf Gelu's last step)
_LOG2E_F = np.float32(_LOG2E)
# ln 2 in two float32 parts (Cephes expf): n * _LN2_HI_F is exact for |n| <= 2^8
_LN2_HI_F = np.float32(0.693359375)
_LN2_LO_F = np.float32(-2.12194440e-4)
_EXP32_MIN = np.float32(-87.3)     # below: 0 (exp(-87.3) ~ 1.2e-38, the smallest normal float32)


@njit(**_INLINE)
def _exp32(x):
    """exp(x) for float32 x <= 0 (a softmax argument): relative error < 1.1e-7 measured on
    [-87, 0] (tests/test_fusion.py); 0 below _EXP32_MIN and for -inf; NaN stays NaN."""
    xc = max(x, _EXP32_MIN)
    n = np.floor(xc * _LOG2E_F + np.float32(0.5))
    y = _exp_reduced32((xc - n * _LN2_HI_F) - n * _LN2_LO_F, n)
    y = np.float32(0.0) if x < _EXP32_MIN else y
    return x if x != x else y


@njit(**_INLINE)
def _exp_f64_arg(a):
    """exp(a) as float32 for a float64 argument a <= 0: n = round(a / ln 2) and
    r = a - n ln 2 in float64 (a large |a| keeps its low bits), the rest _exp_reduced32;
    0 below -87.3 (under float32's normal range)."""
    n = np.floor(a * _LOG2E + 0.5)
    y = _exp_reduced32(np.float32((a - n * _LN2_HI) - n * _LN2_LO), max(n, -126.0))
    return np.float32(0.0) if a < -87.3 else y


@njit(**_INLINE)
def _gelu_erf_value(v):
    """GELU, erf form, of float32 v (float32 result): x Phi(x) with Phi from Numerical Recipes'
    erfcc, mostly in float32 (16 lanes, 1.4x faster than the float64 form): z = |v| / sqrt 2
    and the exponent -z^2 + fit(t) in float64, since z^2 ~ 80 must not lose its low bits
    (exp would inherit their error: 8e-6 relative at x = -11), the rest in float32.
    Relative error < 4e-7 where the result is a normal float32 (tests/test_numba_ops.py)."""
    z64 = np.float64(abs(v)) * _INV_SQRT2
    z = np.float32(z64)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)
    poly = np.float32(-0.82215223) + t * np.float32(0.17087277)
    poly = np.float32(1.48851587) + t * poly
    poly = np.float32(-1.13520398) + t * poly
    poly = np.float32(0.27886807) + t * poly
    poly = np.float32(-0.18628806) + t * poly
    poly = np.float32(0.09678418) + t * poly
    poly = np.float32(0.37409196) + t * poly
    poly = np.float32(1.00002368) + t * poly
    poly = np.float32(-1.26551223) + t * poly
    erfc_z = t * _exp_f64_arg(np.float64(poly) - z64 * z64)
    half = np.float32(0.5) * erfc_z
    return v * (half if v < 0 else np.float32(1.0) - half)


@njit(**_INLINE)
def _gelu_tanh_value(v):
    """GELU, tanh form, of float64 v: v / (1 + exp(-2u)) = 0.5 v (1 + tanh u)."""
    u = _SQRT_2_OVER_PI * (v + 0.044715 * (v * v * v))
    return v / (1.0 + _exp64(-2.0 * u))


@njit(**_ELEMENTWISE)
def _unary_span(x, out, kind):
    """out = f(x) for flat float32 x, out (distinct arrays: with out = x, LLVM's overlap check
    would send the loop down its scalar path); f chosen by ``kind``. (Callers pass slices
    rather than bounds: an index from range(n) is known non-negative, which lets the loop
    vectorise.)"""
    if kind == GELU_ERF:
        for i in range(x.size):
            out[i] = _gelu_erf_value(x[i])
    elif kind == GELU_TANH:
        for i in range(x.size):
            out[i] = _gelu_tanh_value(np.float64(x[i]))
    elif kind == ERF:
        for i in range(x.size):
            out[i] = _erf64(np.float64(x[i]))
    elif kind == SIGMOID:
        for i in range(x.size):
            v = np.float64(x[i])
            e = _exp64(-abs(v))                   # never overflows
            out[i] = (1.0 if v >= 0.0 else e) / (1.0 + e)
    elif kind == RELU:
        for i in range(x.size):
            v = x[i]
            out[i] = np.float32(0.0) if v < 0.0 else v   # NaN stays NaN, as np.maximum


# Linear/Conv epilogue activations (kernels/core/ops.py ACTIVATIONS) as _unary_span kinds, for the
# GEMM kernels that apply them tile by tile (ACT_NONE: no activation).
ACT_NONE = -1
ACTIVATION_KINDS = {"none": ACT_NONE, "relu": RELU, "gelu": GELU_ERF, "gelu_tanh": GELU_TANH}


@njit(**_ELEMENTWISE)
def activate_rows(y, r0, r1, c0, c1, kind):
    """y[r0:r1, c0:c1] = f(y[r0:r1, c0:c1]) in place for a 2-D float y: the Linear/Conv
    epilogue activations with _unary_span's scalar functions (the same formulas as the
    Relu/Gelu kernels; to an ulp, as vector and scalar code may fuse multiply-adds differently). In-place loops of their own (one load
    and one store per element, no overlap check); nothing for ACT_NONE."""
    if kind == ACT_NONE:
        return
    for r in range(r0, r1):
        row = y[r, c0:c1]
        if kind == GELU_ERF:
            for i in range(row.size):
                row[i] = _gelu_erf_value(row[i])
        elif kind == GELU_TANH:
            for i in range(row.size):
                row[i] = _gelu_tanh_value(np.float64(row[i]))
        elif kind == RELU:
            for i in range(row.size):
                v = row[i]
                row[i] = 0.0 if v < 0.0 else v


@njit(**_ELEMENTWISE)
def _unary_serial(x, out, kind):
    _unary_span(x, out, kind)


@njit(parallel=True, **_ELEMENTWISE)
def _unary_parallel(x, out, kind):
    n = x.size
    for b in prange((n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        lo = b * ELEMENTWISE_BLOCK
        hi = min(lo + ELEMENTWISE_BLOCK, n)
        _unary_span(x[lo:hi], out[lo:hi], kind)


def _unary(x: np.ndarray, kind: int) -> np.ndarray:
    """f(x) for float32 x of any shape (a new C-order float32 array)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, F32)
    if flat.size >= (RELU_PARALLEL_MIN_ELEMENTS if kind == RELU else PARALLEL_MIN_ELEMENTS) and not blas_recently_called():
        _unary_parallel(flat, out, kind)
    elif flat.size:
        _unary_serial(flat, out, kind)
    return out.reshape(x.shape)


# --- row kernels: LayerNormalization, Softmax -------------------------------------------------

@njit(**_ROWS)
def _layer_norm_rows(x, scale, bias, eps, out):
    """x (R, D) float32 -> out (R, D) float32; scale, bias (D,) float32."""
    d = x.shape[1]
    for i in range(x.shape[0]):
        s = 0.0
        q = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            s += v
            q += v * v
        mean = s / d
        var = max(q / d - mean * mean, 0.0)
        rstd = 1.0 / np.sqrt(var + eps)
        for j in range(d):
            out[i, j] = (np.float64(x[i, j]) - mean) * rstd * np.float64(scale[j]) + np.float64(bias[j])


@njit(**_ROWS)
def _layer_norm_serial(x, scale, bias, eps, out):
    _layer_norm_rows(x, scale, bias, eps, out)


@njit(parallel=True, **_ROWS)
def _layer_norm_parallel(x, scale, bias, eps, out):
    for i in prange(x.shape[0]):
        _layer_norm_rows(x[i:i + 1], scale, bias, eps, out[i:i + 1])


@njit(**_ROWS)
def _softmax_rows(x, out):
    """Softmax of each row of x (R, D) float32 -> out (R, D) float32."""
    d = x.shape[1]
    d8 = d - d % 8
    for i in range(x.shape[0]):
        # maximum: exact in any order; 8 running maxima because a max reduction does not
        # vectorise without assuming no NaN. A NaN is skipped here but makes the sum, and so
        # the whole row, NaN, as in the reference.
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
        for j in range(0, d8, 8):
            m0 = max(m0, x[i, j])
            m1 = max(m1, x[i, j + 1])
            m2 = max(m2, x[i, j + 2])
            m3 = max(m3, x[i, j + 3])
            m4 = max(m4, x[i, j + 4])
            m5 = max(m5, x[i, j + 5])
            m6 = max(m6, x[i, j + 6])
            m7 = max(m7, x[i, j + 7])
        m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
        for j in range(d8, d):
            m = max(m, x[i, j])
        m64 = np.float64(m)
        s = 0.0
        for j in range(d):
            s += _exp64(np.float64(x[i, j]) - m64)
        inv = 1.0 / s
        for j in range(d):
            out[i, j] = _exp64(np.float64(x[i, j]) - m64) * inv


@njit(**_ROWS)
def _softmax_serial(x, out):
    _softmax_rows(x, out)


@njit(parallel=True, **_ROWS)
def _softmax_parallel(x, out):
    for i in prange(x.shape[0]):
        _softmax_rows(x[i:i + 1], out[i:i + 1])


# --- wrappers (the registered kernel factories) ------------------------------------------------

def _is_f32(*arrays) -> bool:
    return all(a is None or a.dtype == F32 for a in arrays)


# Linear, MatMul, Gemm and Conv on float32: BLAS sgemm (kernels/blas_ops.py), shared with the
# native backend
for _op in blas_ops.FACTORIES:
    register(_op, "numba")(blas_ops.FACTORIES[_op])


@register("LayerNormalization", "numba")
def layer_normalization_factory(attrs: dict, weights: dict):
    """LayerNorm over axes [axis, rank): a row kernel on the (R, D) view for any axis, since
    the normalised axes are always the trailing ones (D = prod(shape[axis:]))."""
    ref = _reference("LayerNormalization", attrs, weights)
    axis, eps = int(attrs["axis"]), float(attrs["epsilon"])
    prepared = {}  # (input index, D-shape) -> (source array, contiguous float32 (D,))

    def affine(index, array, dshape):
        """scale or bias broadcast to D as flat float32 (cached for the initializer)."""
        key = (index, dshape)
        hit = prepared.get(key)
        if hit is not None and hit[0] is array:
            return hit[1]
        flat = np.ascontiguousarray(np.broadcast_to(array, dshape), dtype=F32).reshape(-1)
        if index in weights and weights[index].fields.get("data") is array:
            prepared[key] = (array, flat)
        return flat

    def run(x, scale, bias=None):
        if not _is_f32(x, scale, bias) or x.ndim == 0:
            return ref(x, scale, bias)
        k = normalize_axis(axis, x.ndim)
        dshape = x.shape[k:]
        try:
            s = affine(1, scale, dshape)
            b = affine(2, bias, dshape) if bias is not None else np.zeros(prod(dshape), F32)
        except ValueError:
            return ref(x, scale, bias)   # not broadcastable: the reference raises
        x2 = np.ascontiguousarray(x).reshape(prod(x.shape[:k]), prod(dshape))
        out = np.empty(x2.shape, F32)
        if x2.size >= PARALLEL_MIN_ELEMENTS and not blas_recently_called():
            _layer_norm_parallel(x2, s, b, eps, out)
        elif x2.size:
            _layer_norm_serial(x2, s, b, eps, out)
        return (out.reshape(x.shape),)
    return run


@register("Softmax", "numba")
def softmax_factory(attrs: dict, weights: dict):
    """Softmax along one axis (opset 13); another axis than the last is moved there and back."""
    ref = _reference("Softmax", attrs, weights)
    axis = int(attrs["axis"])

    def rows(x):
        x2 = np.ascontiguousarray(x).reshape(prod(x.shape[:-1]), x.shape[-1])
        out = np.empty(x2.shape, F32)
        if x2.size >= PARALLEL_MIN_ELEMENTS and not blas_recently_called():
            _softmax_parallel(x2, out)
        elif x2.size:
            _softmax_serial(x2, out)
        return out.reshape(x.shape)

    def run(x):
        if not _is_f32(x) or x.ndim == 0:
            return ref(x)
        k = normalize_axis(axis, x.ndim)
        if k == x.ndim - 1:
            return (rows(x),)
        y = rows(np.moveaxis(x, k, -1))
        return (np.ascontiguousarray(np.moveaxis(y, -1, k)),)
    return run


def _unary_factory(op: str, kind: int):
    def factory(attrs: dict, weights: dict):
        ref = _reference(op, attrs, weights)

        def run(x):
            if not _is_f32(x) or (kind == RELU and x.size < RELU_NUMPY_MAX_ELEMENTS):
                return ref(x)
            return (_unary(x, kind),)
        return run
    factory.__name__ = factory.__qualname__ = f"{op.lower()}_factory"
    factory.__doc__ = f"{op}: numba element-wise kernel, float32 in and out, float64 inside."
    return factory


@register("Gelu", "numba")
def gelu_factory(attrs: dict, weights: dict):
    """GELU, erf form (approximate='none') or tanh form; float32 in and out."""
    ref = _reference("Gelu", attrs, weights)   # checks ``approximate``
    kind = GELU_TANH if attrs["approximate"] == "tanh" else GELU_ERF

    def run(x):
        if not _is_f32(x):
            return ref(x)
        return (_unary(x, kind),)
    return run


register("Erf", "numba")(_unary_factory("Erf", ERF))
register("Sigmoid", "numba")(_unary_factory("Sigmoid", SIGMOID))
register("Relu", "numba")(_unary_factory("Relu", RELU))
