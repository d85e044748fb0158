"""Element-wise ops: numpy broadcasting (the same as ONNX multidirectional broadcasting).

dtypes follow ONNX: both operands of a binary op share one dtype T and the output is T
(comparisons and logic ops give bool). Where a result is computed in float64 for accuracy
(Pow, Erf, Gelu) it is cast back to the input dtype, and every constant is cast to the input
dtype first, so float32 in is float32 out under numpy 1.x value-based casting and numpy 2
(NEP 50) alike.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ._common import erf64, is_int, reference_kernel

# --- binary arithmetic ------------------------------------------------------------------------


@reference_kernel("Add")
def add_ref(a, b):
    """A + B; A, B of one dtype T, broadcast; output T."""
    return np.add(a, b)


@reference_kernel("Sub")
def sub_ref(a, b):
    """A - B; A, B of one dtype T, broadcast; output T."""
    return np.subtract(a, b)


@reference_kernel("Mul")
def mul_ref(a, b):
    """A * B; A, B of one dtype T, broadcast; output T."""
    return np.multiply(a, b)


@reference_kernel("Div")
def div_ref(a, b):
    """A / B; A, B of one dtype T, broadcast; output T.

    Integer division truncates toward zero (C, onnxruntime), unlike numpy's floor division:
    -7 / 2 = -3. Integer division by zero is undefined in ONNX; here it gives 0.
    """
    if not is_int(a.dtype):
        return np.divide(a, b)
    with np.errstate(divide="ignore", over="ignore"):
        q = np.floor_divide(a, b)
        r = np.remainder(a, b)
    # floor and truncation differ when the division is inexact and the signs differ
    return q + ((r != 0) & ((a < 0) != (b < 0))).astype(q.dtype)


@reference_kernel("Mod", extra_attrs={"fmod": 0})
def mod_ref(a, b, fmod=0):
    """A mod B; A, B of one dtype T, broadcast; output T.

    fmod=0 (the only form kernels.core.ops lists): the result has the sign of the divisor, like
    Python's % (np.mod): -7 mod 2 = 1. fmod=1: C fmod, the sign of the dividend: -7 mod 2 = -1
    (ONNX requires fmod=1 for float inputs; honoured here if the node carries it).
    Integer mod by zero is undefined in ONNX; here it gives 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.fmod(a, b) if fmod else np.mod(a, b)


@reference_kernel("Pow")
def pow_ref(a, b):
    """A ** B; base A of dtype T, exponent B of any numeric dtype, broadcast; output T.

    Float base: computed in float64 and rounded once to T. Integer base with a non-negative
    integer exponent: exact integer power (wraps on overflow, as C integer arithmetic would).
    Any other integer-base case (negative or float exponent) is computed in float64 and
    truncated toward zero: 2 ** -1 = 0, 2 ** 0.5 = 1.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        via_float = np.power(np.asarray(a, np.float64), np.asarray(b, np.float64))
        if not is_int(a.dtype):
            return via_float.astype(a.dtype)
        if not is_int(b.dtype):
            return np.trunc(via_float).astype(a.dtype)
        exact = np.power(a, np.maximum(b, 0).astype(a.dtype))
        return np.where(b >= 0, exact, np.trunc(via_float).astype(a.dtype))


# --- comparisons and logic (bool out) -------------------------------------------------------


@reference_kernel("Equal")
def equal_ref(a, b):
    """A == B; A, B of one dtype, broadcast; output bool."""
    return np.equal(a, b)


@reference_kernel("Greater")
def greater_ref(a, b):
    """A > B; A, B of one dtype, broadcast; output bool."""
    return np.greater(a, b)


@reference_kernel("GreaterOrEqual")
def greater_or_equal_ref(a, b):
    """A >= B; A, B of one dtype, broadcast; output bool."""
    return np.greater_equal(a, b)


@reference_kernel("Less")
def less_ref(a, b):
    """A < B; A, B of one dtype, broadcast; output bool."""
    return np.less(a, b)


@reference_kernel("LessOrEqual")
def less_or_equal_ref(a, b):
    """A <= B; A, B of one dtype, broadcast; output bool."""
    return np.less_equal(a, b)


@reference_kernel("And")
def and_ref(a, b):
    """A and B; bool, broadcast; output bool."""
    return np.logical_and(a, b)


@reference_kernel("Or")
def or_ref(a, b):
    """A or B; bool, broadcast; output bool."""
    return np.logical_or(a, b)


@reference_kernel("Xor")
def xor_ref(a, b):
    """A xor B; bool, broadcast; output bool."""
    return np.logical_xor(a, b)


@reference_kernel("IsNaN")
def is_na_n_ref(x):   # the registry derives the name from the op: "IsNaN" -> is_na_n
    """isnan(X); float T; output bool, same shape."""
    return np.isnan(x)


@reference_kernel("Not")
def not_ref(x):
    """not X; bool; output bool, same shape."""
    return np.logical_not(x)


# --- variadic ---------------------------------------------------------------------------------
# One input returns it unchanged (an alias: outputs are read-only). Pairwise left-to-right in
# dtype T, which is also the order onnxruntime uses.


@reference_kernel("Max")
def max_ref(*xs):
    """Element-wise maximum of 1..n inputs of one dtype T, all broadcast together; output T."""
    return functools.reduce(np.maximum, xs)


@reference_kernel("Min")
def min_ref(*xs):
    """Element-wise minimum of 1..n inputs of one dtype T, all broadcast together; output T."""
    return functools.reduce(np.minimum, xs)


@reference_kernel("Sum")
def sum_ref(*xs):
    """Element-wise sum of 1..n inputs of one dtype T, all broadcast together; output T."""
    return functools.reduce(np.add, xs)


# --- unary ------------------------------------------------------------------------------------


@reference_kernel("Sqrt")
def sqrt_ref(x):
    """sqrt(X); float T; output T (NaN for negative inputs)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


@reference_kernel("Neg")
def neg_ref(x):
    """-X; signed T; output T (integer minimum wraps to itself)."""
    return np.negative(x)


@reference_kernel("Abs")
def abs_ref(x):
    """|X|; numeric T; output T."""
    return np.abs(x)


@reference_kernel("Exp")
def exp_ref(x):
    """exp(X); float T; output T."""
    with np.errstate(over="ignore"):
        return np.exp(x)


@reference_kernel("Log")
def log_ref(x):
    """log(X); float T; output T (-inf at 0, NaN below)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


@reference_kernel("Erf")
def erf_ref(x):
    """erf(X); float T; output T. Computed in float64 with math.erf, rounded once to T."""
    return erf64(x).astype(x.dtype)


@reference_kernel("Relu")
def relu_ref(x):
    """max(X, 0); numeric T; output T."""
    return np.maximum(x, np.zeros((), x.dtype))


@reference_kernel("Sigmoid")
def sigmoid_ref(x):
    """1 / (1 + exp(-X)); float T; output T.

    Stable form: exp is only taken of -|X|, so it never overflows for large |X|.
    """
    e = np.exp(-np.abs(x))
    one = np.ones((), x.dtype)
    return np.where(x >= 0, one / (one + e), e / (one + e))


@reference_kernel("Tanh")
def tanh_ref(x):
    """tanh(X); float T; output T."""
    return np.tanh(x)


@reference_kernel("Reciprocal")
def reciprocal_ref(x):
    """1 / X; float T; output T (inf at 0)."""
    with np.errstate(divide="ignore"):
        return np.divide(np.ones((), x.dtype), x)


@reference_kernel("Floor")
def floor_ref(x):
    """floor(X); float T; output T."""
    return np.floor(x)


@reference_kernel("Ceil")
def ceil_ref(x):
    """ceil(X); float T; output T."""
    return np.ceil(x)


@reference_kernel("Identity")
def identity_ref(x):
    """X itself (not a copy: outputs are read-only); any dtype and shape."""
    return x


# --- activations with attributes ---------------------------------------------------------------

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_APPROXIMATIONS = ("none", "tanh")


def _check_gelu(attrs):
    if attrs["approximate"] not in _GELU_APPROXIMATIONS:
        raise ValueError(f"Gelu: approximate must be one of {_GELU_APPROXIMATIONS}, "
                         f"got {attrs['approximate']!r}")


@reference_kernel("Gelu", check=_check_gelu)
def gelu_ref(x, approximate="none"):
    """GELU; float T; output T. Computed in float64, rounded once to T.

    approximate="none": 0.5 * x * (1 + erf(x / sqrt(2)))                       (exact form)
    approximate="tanh": 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    """
    x64 = np.asarray(x, np.float64)
    if approximate == "tanh":
        y = 0.5 * x64 * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x64 + 0.044715 * x64 ** 3)))
    else:
        y = 0.5 * x64 * (1.0 + erf64(x64 / _SQRT_2))
    return y.astype(x.dtype)


@reference_kernel("Sign")
def sign_ref(x):
    """-1, 0 or 1 by the sign of X (NaN stays NaN); numeric T; output T."""
    return np.sign(x)


@reference_kernel("HardSigmoid")
def hard_sigmoid_ref(x, alpha=0.2, beta=0.5):
    """max(0, min(1, alpha X + beta)) in T (alpha, beta rounded to T first: ONNX's float
    attributes are float32); float T; output T."""
    t = x * np.asarray(alpha, x.dtype) + np.asarray(beta, x.dtype)
    return np.minimum(np.maximum(t, np.zeros((), x.dtype)), np.ones((), x.dtype))


@reference_kernel("HardSwish")
def hard_swish_ref(x):
    """X * HardSigmoid(X) with alpha = 1/6, beta = 0.5 (ONNX's definition); float T; output T."""
    return x * hard_sigmoid_ref(x, 1.0 / 6.0, 0.5)


@reference_kernel("CumSum")
def cum_sum_ref(x, axis, exclusive=0, reverse=0):
    """Running sums of X along ``axis`` (a scalar int tensor, negative counts from the end), in
    T, first element first (last first when reverse); exclusive: each sum leaves its own
    element out (0 at the start). Output T, X's shape."""
    a = np.asarray(axis)
    if a.size != 1 or a.dtype.kind not in "iu":
        raise ValueError(f"CumSum: axis must be one integer, got {a!r}")
    ax = int(a.reshape(-1)[0])
    if not -x.ndim <= ax < x.ndim:
        raise ValueError(f"CumSum: axis {ax} is out of range for rank {x.ndim}")
    y = np.flip(x, ax) if reverse else x
    if exclusive:
        head = np.zeros_like(np.take(y, [0], axis=ax))
        y = np.concatenate([head, np.take(y, np.arange(y.shape[ax] - 1), axis=ax)], axis=ax)
    y = np.cumsum(y, axis=ax, dtype=x.dtype)
    return np.ascontiguousarray(np.flip(y, ax) if reverse else y)


@reference_kernel("LeakyRelu")
def leaky_relu_ref(x, alpha=0.01):
    """X if X >= 0 else alpha * X; float T; output T (alpha rounded to T first, as ONNX's
    float attribute is float32)."""
    return np.where(x >= 0, x, x * np.asarray(alpha, x.dtype))


@reference_kernel("Clip")
def clip_ref(x, lo=None, hi=None):
    """min(max(X, lo), hi); X numeric T, lo and hi optional scalars (0-d or one element) of T,
    None meaning no bound; output T. If lo > hi every element becomes hi (ONNX)."""
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo, x.dtype).reshape(()))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi, x.dtype).reshape(()))
    return y


def _check_cast(attrs):
    try:
        np.dtype(attrs["to"])
    except TypeError:
        raise ValueError(f"Cast: 'to' must be a numpy dtype name, got {attrs['to']!r}") from None


@reference_kernel("Cast", required=("to",), check=_check_cast)
def cast_ref(x, to):
    """X converted to dtype ``to`` (a numpy dtype name, e.g. "float32", "int64", "bool").

    Float -> int truncates toward zero (numpy astype, C casts); NaN, inf and out-of-range
    values are undefined in ONNX and here give whatever numpy gives. Anything -> bool is
    X != 0 (NaN -> True). Float narrowing (float64 -> float32 -> float16) rounds to nearest even.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(np.dtype(to))


@reference_kernel("Where")
def where_ref(cond, x, y):
    """X where cond else Y; cond bool, X and Y of one dtype T, all three broadcast; output T."""
    return np.where(cond, x, y)
