"""int8 GEMM on AVX-512 VNNI (vpdpbusd) or AVX2 (vpmaddubsw), plus the portable numba GEMM
that gives the same bits.

    Y[m, n] = float(s_x[m] * s_w[n] * acc[m, n] + b[n])     acc = sum_k (qx - z_x)(qw - z_w)

The numerics are kernels/reference/packed.py's (docs/CONVERTER.md, "Numerics"); this module
only changes how the exact integer ``acc`` is obtained and where the epilogue runs.

u8 x s8 (docs/CONVERTER.md, "Integer GEMM"): vpdpbusd multiplies unsigned bytes by signed bytes, four at a time, into
int32 lanes. Activations are stored shifted, u = qx + 128 in [0, 255], weights as their raw
int8 ``qdata`` (zero point not subtracted), so the kernel computes

    raw[m, n] = sum_k u[m, k] qw[n, k] = sum_k qx qw + 128 colsum[n],    colsum[n] = sum_k qw[n, k]

and the epilogue recovers the reference accumulator by expanding the zero points:

    acc[m, n] = raw[m, n] - col_corr[n] - z_w[n] * row_corr[m]
    col_corr[n] = (128 + z_x) * colsum[n]         (plan time)
    row_corr[m] = sum_k qx[m, k] - K * z_x         (computed while quantizing row m)

(z_x = 0 for dynamic activations; z_w = 0 for symmetric weights: the term is applied anyway,
two vector ops per 16 outputs against K / 4 vpdpbusd, so one kernel serves both).

int32 overflow: vpdpbusd wraps (the saturating form is vpdpbusds), and so do the epilogue's
int32 subtractions, so every intermediate is exact modulo 2^32 and the result is exact
whenever the true |acc| < 2^31. |qx - z_x| <= 255 and |qw - z_w| <= 255, so |acc| <=
K * 255 * 255, below 2^31 for K <= MAX_K_INT32 = 33025. Larger K goes to the portable GEMM,
which accumulates in int64.

Epilogue, in float64 in the reference's order, rounded once to the output dtype:
``((s_w[n] * float64(acc)) * s_x[m]) + b[n]`` (no FMA contraction: neither llvmlite's
fmul/fadd below nor numba without fastmath sets the ``contract`` flag). Both paths therefore
give the reference's bits exactly: the integer is exact and the float operations are the same.

Data layouts (all zero-padded, so the kernel has no K or N edge cases):

* weights: ``panels`` int8 (NP, K4, PANEL, 4), K4 = ceil(K / 4), NP = ceil(N / PANEL): per
  panel of PANEL = 64 output columns, per k4 step, each column's 4 consecutive k (one int32
  lane of vpdpbusd). Padded k and padded columns hold 0.
* activations: ``u`` uint8 (M, 4 * K4), plain rows: the micro-kernel reads MR row streams
  4 bytes at a time, and the quantizer's stores stay contiguous, so they vectorize (writing
  MR-row interleaved tiles instead made quantization several times slower, measured). Padded k hold 128 (qx = 0), which meets a 0 weight anyway.
  The portable GEMM reads the same ``u`` and the weight as plain int8 rows (N, 4 * K4).

The micro-kernel is one numba ``@intrinsic`` that emits the whole K loop and the epilogue in
LLVM IR: MR x NV accumulators of <16 x i32> kept in registers as loop phis, NV weight vectors
loaded per k4 step, each activation word broadcast to 16 lanes; one variant per tile height
1..MR, so the M % MR edge costs only its rows (and M = 1 is a GEMV at memory speed). Measured
on the 2-core Zen 5 this project benchmarks on: ~450 GOP/s per core with data in L1, 95-98%
of a register-only vpdpbusd loop (~460 GOP/s per core: one 512-bit vpdpbusd per cycle), for
every tile from 4x64 to 8x48 and 16x16, so the simplest, 4x64, is used; the raw GEMM (no
quantization or epilogue) runs at 430-450 GOP/s per core on the benchmark shapes with the
weight panel (K x 64 bytes, up to 704 KiB) re-read from L2, so there is no K blocking.

Threads (numba prange): a Linear with enough rows (MIN_ROWS_PER_BLOCK per block, two blocks
per thread) splits its rows over threads, each quantizing its own rows and multiplying them by
every panel, in one parallel region; fewer rows quantize first and split the panels
(panel_gemm). Work below PARALLEL_MIN_MACS (PARALLEL_MIN_MACS_GEMV for one row) runs on the
calling thread. Each output tile is
computed by one thread in a fixed order, so results do not depend on the thread count.
GOMP_SPINCOUNT (set in kernels/numba_cpu/__init__.py) keeps numba's OpenMP workers spinning briefly between calls.

AVX2 (no vpdpbusd): the same panels, viewed as uint8, select the AVX2 tile (_raw_ymm: 16
columns per K loop, |qx| x sign(qx) qw by vpmaddubsw, exact for weights without -128;
docs/CONVERTER.md, "Integer GEMM"). It reads rows of qx then |qx| (signed_rows) and sums
qx qw, so its col_corr is z_x colsum. Per core it runs at the C++ AVX2 tile's speed. Narrow
weights (every |qw| <= NARROW_INT8_QMAX, the converter's weight_bits=7), viewed uint8 and 3-D
(narrow_panels), select _raw_ymm(kind="narrow"): vpmaddubsw on u itself, like the VNNI tile's rows
and col_corr.

AVX-VNNI (Intel client CPUs from Alder Lake, Zen 5 laptops: vpdpbusd on ymm, no AVX-512): the
same int8 panels viewed 3-D (vnni256_panels) select _raw_ymm(kind="vnni"), the zmm tile's
arithmetic on 8 lanes, with 12 accumulators where the registers allow (_YMM_GROUPS).

The LLVM intrinsics exist only on targets with those instructions: the functions that contain
them are compiled on their first call for the panel type used, and callers reach them only
when ``has_vnni()`` (int8 panels), ``isa.has_vnni256()`` (int8 3-D) or ``isa.has_avx2()`` (uint8
panels) says so.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from kernels.core import config

from . import isa
from .ops import activate_rows

MR = 4                    # rows per micro-tile
NV = 4                    # 16-lane int32 vectors per micro-tile row
PANEL = 16 * NV           # output columns per weight panel
NO_VNNI_ENV = "QRT_NUMBA_NO_VNNI"            # "1": no vpdpbusd tile (zmm or ymm) even on a VNNI CPU

_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"

# (OpenMP wait policy and spin count: kernels/numba_cpu/__init__.py sets both, once.)


def has_vnni() -> bool:
    """True when numba's compile target (isa.py: this CPU unless QRT_NUMBA_ISA says otherwise)
    has AVX-512 VNNI and QRT_NUMBA_NO_VNNI is not 1. Read at each call (cheap): kernels decide
    once, when a session plans."""
    if config.get(NO_VNNI_ENV) == "1":
        return False
    return isa.has_vnni()


def has_vnni256() -> bool:
    """True when numba's target may emit vpdpbusd on ymm (isa.has_vnni256: AVX-VNNI, or AVX-512
    VNNI with VL) and QRT_NUMBA_NO_VNNI is not 1."""
    if config.get(NO_VNNI_ENV) == "1":
        return False
    return isa.has_vnni256()


def padded_sizes(m: int, n: int, k: int) -> tuple[int, int, int]:
    """(MT, NP, K4): micro-tiles of rows, weight panels, k4 steps for an (M, N, K) GEMM."""
    return -(-m // MR), -(-n // PANEL), -(-k // 4)


# --- weights ------------------------------------------------------------------------------------

def pack_weight_panels(q: np.ndarray) -> np.ndarray:
    """int8 (N, K) raw qdata -> int8 panels (NP, K4, PANEL, 4), zero-padded (module docstring)."""
    n, k = q.shape
    _, np_, k4 = padded_sizes(1, n, k)
    w = np.zeros((np_ * PANEL, k4 * 4), np.int8)
    w[:n, :k] = q
    return np.ascontiguousarray(w.reshape(np_, PANEL, k4, 4).transpose(0, 2, 1, 3))


def pack_weight_rows(q: np.ndarray) -> np.ndarray:
    """int8 (N, K) -> int8 (N, 4 * K4), K zero-padded: the portable GEMM's weight."""
    n, k = q.shape
    w = np.zeros((n, -(-k // 4) * 4), np.int8)
    w[:, :k] = q
    return w


# --- activations: quantize + shift, one pass ---------------------------------------------------

@intrinsic
def _absmax_f32(typingctx, x, off, n):
    """max |x[off:off + n]| of a float32 array as float64, by the bit patterns with the sign
    cleared (integer order is float order there; a NaN, the largest pattern, propagates as in
    np.max): 16 values a step in portable LLVM vector IR, then the n % 16 last one by one."""
    sig = types.float64(x, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        xa, off, n = args
        xd = builder.bitcast(builder.gep(context.make_array(signature.args[0])(context, builder, xa).data, [off]),
                             _I32.as_pointer())
        steps = builder.sdiv(n, _c64(16))
        mask16 = ir.Constant(_V16I32, [0x7FFFFFFF] * 16)

        def body(kk, acc):
            v = builder.load(_vec_ptr(builder, xd, builder.mul(kk, _c64(16)), _V16I32), align=4)
            b = builder.and_(v, mask16)
            return [builder.select(builder.icmp_signed(">", b, acc[0]), b, acc[0])]

        (top,) = _k_loop(builder, "absmax.k", steps, body, _V16I32, 1)
        smax = _intrinsic_fn(builder, "llvm.vector.reduce.smax.v16i32", _I32, [_V16I32])
        vec_top = builder.call(smax, [top])

        def tail(jj, acc):
            at = builder.add(builder.mul(steps, _c64(16)), jj)
            b = builder.and_(builder.load(builder.gep(xd, [at]), align=4), ir.Constant(_I32, 0x7FFFFFFF))
            return [builder.select(builder.icmp_signed(">", b, acc[0]), b, acc[0])]

        (tail_top,) = _k_loop(builder, "absmax.tail", builder.sub(n, builder.mul(steps, _c64(16))), tail, _I32, 1)
        best = builder.select(builder.icmp_signed(">", tail_top, vec_top), tail_top, vec_top)
        return builder.fpext(builder.bitcast(best, ir.FloatType()), ir.DoubleType())

    return sig, codegen


def _row_amax(x, i):
    """max_k |x[i, k]| as float64 (numba only)."""


@overload(_row_amax, inline="always")
def _row_amax_impl(x, i):
    # The maximum is taken over the bit patterns with the sign bit cleared: for non-negative
    # floats integer order is float order, and an integer max reduction vectorizes where a
    # float one (NaN rules) does not. A NaN has the largest pattern, so it propagates as in
    # the reference's np.max.
    if x.dtype == types.float32:
        ity, mask = np.int32, np.int32(0x7FFFFFFF)
    elif x.dtype == types.float64:
        ity, mask = np.int64, np.int64(0x7FFFFFFFFFFFFFFF)
    else:
        return None
    fty = np.float32 if x.dtype == types.float32 else np.float64
    if x.dtype == types.float32 and x.layout == "C" and x.ndim == 2:
        # the same maximum in one vector loop (_absmax_f32): the loop below spent ~0.18 ns a
        # value, its view and box arrays included (X, 768 values: 140 -> 49 ns)
        return lambda x, i: _absmax_f32(x, i * x.shape[1], x.shape[1])

    def amax(x, i):
        bits = x[i].view(ity)
        top = ity(0)
        for j in range(x.shape[1]):
            top = max(top, bits[j] & mask)
        box = np.empty(1, ity)
        box[0] = top
        return np.float64(box.view(fty)[0])
    return amax


@njit(cache=True, inline="always")
def _quantize_span(x, i, u, s, lo, z, j0, j1):
    """Columns j0 .. j1 - 1 of row i: u[i, j] = qx + 128 with qx = clip(rint(x / s) + z, lo, 127)
    in float64 (the reference's formula with its true division). Returns (sum qx, whether a
    value is NaN)."""
    zf = np.float64(z)
    rs = 0
    nan = False
    for j in range(j0, j1):
        v = np.float64(x[i, j])
        nan |= np.isnan(v)
        r = np.rint(v / s) + zf
        # clip with explicit selects, not min/max: NaN -> 127, never an undefined float -> int
        r = r if r <= 127.0 else 127.0  # noqa: FURB136
        qi = np.int32(r if r >= lo else lo)  # noqa: FURB136
        rs += qi
        u[i, j] = np.uint8(qi + 128)
    return rs, nan


@njit(cache=True, inline="always")
def _pad_row(u, i, k):
    """u[i, k:] = 128 (qx = 0): the padding columns of the GEMM's k steps."""
    for j in range(k, u.shape[1]):
        u[i, j] = np.uint8(128)


@njit(cache=True, inline="always")
def _quantize_row(x, i, u, s, lo, z):
    """Row i: u[i, k] = qx + 128 with qx = clip(rint(x / s) + z, lo, 127) in float64 (the
    reference's formula with its true division: x * (1 / s) rounds differently near .5; a
    scalar multiply plus an exactness check measured slower than the division, the vector
    one of _quantize_steps_dynamic is 3x faster), 128 (qx = 0) for the padding k >= K.
    Returns (sum_k qx - K * z, whether the row holds a NaN). The rows that
    _quantize_row_dynamic_fast and _quantize_row_static_fast cannot take."""
    k = x.shape[1]
    rs, nan = _quantize_span(x, i, u, s, lo, z, 0, k)
    _pad_row(u, i, k)
    return rs - np.int64(k) * z, nan


@njit(cache=True, inline="always")
def row_scale_dynamic(amax):
    """s = max|x| / 127, 1.0 for an all-zero row (quant.quantize_rows_dynamic). A row holding
    a NaN or an infinity gets s = NaN: the reference's output row is all NaN there (its
    float64 accumulation meets the NaN of x / s), and s_x = NaN makes the epilogue's row NaN,
    whatever integers the NaN quantized to."""
    if amax == 0.0:
        return 1.0
    s = amax / 127.0
    return s if s < np.inf else np.nan


# The float32 estimate of x / s (csrc/int8_gemm_kernels.h, kTieWindow): y = fl(x * fl(1 / s))
# rounds as the reference's float64 quotient unless y lies within this much of a half-integer.
_TIE_WINDOW = 0.5 - 2.0 ** -12
_F32_TINY = float(np.finfo(np.float32).tiny)     # 1 / s must be a normal float32 for the estimate
_F32_MAX = float(np.finfo(np.float32).max)


class _QuantSteps:
    """What both quantizer step loops set up (_quantize_steps_dynamic, _quantize_steps_static):
    pointers to x[x_off] (float32) and u[u_off] (uint8), the rint / fabs intrinsics, inv and s
    splatted, and the tie test of the float32 estimate y against its rounding r."""

    def __init__(self, context, builder, x_type, xa, x_off, u_type, ua, u_off, inv, s64):
        self.builder = builder
        self.xd = builder.gep(context.make_array(x_type)(context, builder, xa).data, [x_off])
        self.ud = builder.gep(context.make_array(u_type)(context, builder, ua).data, [u_off])
        self.rint32 = _intrinsic_fn(builder, "llvm.rint.v16f32", _V16F32, [_V16F32])
        self.rint64 = _intrinsic_fn(builder, "llvm.rint.v16f64", _V16F64, [_V16F64])
        self.fabs = _intrinsic_fn(builder, "llvm.fabs.v16f32", _V16F32, [_V16F32])
        self.vinv = _splat(builder, inv, _V16F32)
        self.vs = _splat(builder, s64, _V16F64)
        self.window = ir.Constant(_V16F32, [_TIE_WINDOW] * 16)

    def load(self, at):
        return self.builder.load(_vec_ptr(self.builder, self.xd, at, _V16F32), align=4)

    def store(self, at, q):
        """u[at ..] = q + 128 as bytes (q int32 lanes in [-128, 127])."""
        b = self.builder
        ub = b.trunc(b.add(q, ir.Constant(_V16I32, [128] * 16)), ir.VectorType(_I8, 16))
        b.store(ub, _vec_ptr(b, self.ud, at, ir.VectorType(_I8, 16)), align=1)

    def quotient(self, v):
        """rint(float64(v) / s): the reference's rounding, for the steps with a tie."""
        b = self.builder
        return b.call(self.rint64, [b.fdiv(b.fpext(v, _V16F64), self.vs)])

    def fast_or_exact(self, tie, fast_q, exact):
        """fast_q, or where ``tie`` holds the int32 lanes exact() emits, out of line."""
        b = self.builder
        fast = b.block
        with b.if_then(tie, likely=False):
            exact_q = exact()
            slow = b.block
        q = b.phi(_V16I32)
        q.add_incoming(fast_q, fast)
        q.add_incoming(exact_q, slow)
        return q

    def tie(self, y, r):
        """i1: some lane of y lies within 2^-12 of a half-integer (its rounding r may differ
        from the reference's float64 quotient's)."""
        b = self.builder
        near = b.fcmp_ordered(">", b.call(self.fabs, [b.fsub(y, r)]), self.window)
        return b.icmp_unsigned("!=", b.bitcast(near, _I16), ir.Constant(_I16, 0))


@intrinsic
def _quantize_steps_dynamic(typingctx, x, x_off, steps, inv, s, u, u_off):
    """``steps`` x 16 values of a dynamic row, x[x_off ..] -> u[u_off ..] = q + 128; returns sum q.
    Portable LLVM vector IR (two ymm a step on AVX2, one zmm on AVX-512). Each step estimates
    q = rint(x * inv) in float32 and, where a value lies near a half-integer (about 1 step in
    130), takes the reference's float64 x / s instead. Only for rows whose s = max|x| / 127 is
    finite with inv = fl32(1 / s) normal: then x has no NaN and |x * inv| <= 127 (1 + 2^-23),
    so the estimate needs no clamp (the division's path clamps, as the reference)."""
    sig = types.int64(x, types.intp, types.intp, types.float32, types.float64, u, types.intp)

    def codegen(context, builder, signature, args):
        xa, x_off, steps, inv, s64, ua, u_off = args
        qs = _QuantSteps(context, builder, signature.args[0], xa, x_off, signature.args[5], ua, u_off, inv, s64)
        hi, lo = ir.Constant(_V16F64, [127.0] * 16), ir.Constant(_V16F64, [-127.0] * 16)

        def body(kk, acc):
            at = builder.mul(kk, _c64(16))
            v = qs.load(at)
            y = builder.fmul(v, qs.vinv)
            r = builder.call(qs.rint32, [y])

            def exact():                  # the reference's float64 division, clamped
                d = qs.quotient(v)
                d = builder.select(builder.fcmp_ordered(">", d, hi), hi, d)
                d = builder.select(builder.fcmp_ordered("<", d, lo), lo, d)
                return builder.fptosi(d, _V16I32)
            q = qs.fast_or_exact(qs.tie(y, r), builder.fptosi(r, _V16I32), exact)
            qs.store(at, q)
            return [builder.add(acc[0], q)]   # int32 lanes: |q| <= 127, K / 16 values each

        (final,) = _k_loop(builder, "quant.k", steps, body, _V16I32, 1)
        reduce_add = _intrinsic_fn(builder, "llvm.vector.reduce.add.v16i32", _I32, [_V16I32])
        return builder.sext(builder.call(reduce_add, [final]), _I64)

    return sig, codegen


# Static rows clamp the estimate to +-STATIC_CLAMP before rounding: beyond it every zero point
# in [-128, 127] clips qx to the same end as the reference's quotient (|z| <= 128, so
# rint(x / s) + z lies outside [-128, 127] there), and inside it |y| <= 256 keeps the estimate's
# error (2^-23 relative, 2^-15 absolute) within the tie window's margin.
_STATIC_CLAMP = 256.0


@intrinsic
def _quantize_steps_static(typingctx, x, x_off, steps, inv, s, z, u, u_off):
    """``steps`` x 16 values of a static row (scale s, zero point z in [-128, 127]),
    x[x_off ..] -> u[u_off ..] = qx + 128 with qx = clip(rint(x / s) + z, -128, 127); returns
    (sum qx, number of NaN lanes). Like _quantize_steps_dynamic: the float32 estimate
    y = x * inv (inv = fl32(1 / s), a normal float32), clamped to +-_STATIC_CLAMP (a NaN to
    +_STATIC_CLAMP: qx 127, as the reference's clip gives a NaN), z added to the integers and
    the sum clamped; a step with a value near a half-integer takes the reference's float64
    division and clip instead (csrc/int8_gemm_kernels.h does the same for the native rows)."""
    sig = types.UniTuple(types.int64, 2)(x, types.intp, types.intp, types.float32, types.float64, types.int64,
                                         u, types.intp)

    def codegen(context, builder, signature, args):
        xa, x_off, steps, inv, s64, z, ua, u_off = args
        qs = _QuantSteps(context, builder, signature.args[0], xa, x_off, signature.args[6], ua, u_off, inv, s64)
        vz = _splat(builder, builder.trunc(z, _I32), _V16I32)
        vzf = _splat(builder, builder.sitofp(z, ir.DoubleType()), _V16F64)
        clamp_hi = ir.Constant(_V16F32, [_STATIC_CLAMP] * 16)
        clamp_lo = ir.Constant(_V16F32, [-_STATIC_CLAMP] * 16)
        qhi, qlo = ir.Constant(_V16I32, [127] * 16), ir.Constant(_V16I32, [-128] * 16)
        hi, lo = ir.Constant(_V16F64, [127.0] * 16), ir.Constant(_V16F64, [-128.0] * 16)
        one = ir.Constant(_V16I32, [1] * 16)
        zero = ir.Constant(_V16I32, None)

        def body(kk, acc):
            at = builder.mul(kk, _c64(16))
            v = qs.load(at)
            nan = builder.fcmp_unordered("uno", v, v)
            y = builder.fmul(v, qs.vinv)
            y = builder.select(builder.fcmp_unordered(">", y, clamp_hi), clamp_hi, y)     # NaN too
            y = builder.select(builder.fcmp_ordered("<", y, clamp_lo), clamp_lo, y)
            r = builder.call(qs.rint32, [y])
            fq = builder.add(builder.fptosi(r, _V16I32), vz)
            fq = builder.select(builder.icmp_signed(">", fq, qhi), qhi, fq)
            fq = builder.select(builder.icmp_signed("<", fq, qlo), qlo, fq)

            def exact():                  # the reference's float64 division and clip
                d = builder.fadd(qs.quotient(v), vzf)
                d = builder.select(builder.fcmp_ordered("<=", d, hi), d, hi)     # NaN -> 127
                d = builder.select(builder.fcmp_ordered(">=", d, lo), d, lo)
                return builder.fptosi(d, _V16I32)
            q = qs.fast_or_exact(qs.tie(y, r), fq, exact)
            qs.store(at, q)
            return [builder.add(acc[0], q), builder.add(acc[1], builder.select(nan, one, zero))]

        total, nans = _k_loop(builder, "squant.k", steps, body, _V16I32, 2)
        reduce_add = _intrinsic_fn(builder, "llvm.vector.reduce.add.v16i32", _I32, [_V16I32])
        out = [builder.sext(builder.call(reduce_add, [total]), _I64), builder.sext(builder.call(reduce_add, [nans]), _I64)]
        return context.make_tuple(builder, signature.return_type, out)

    return sig, codegen


def _quantize_row_static_fast(x, i, u, s, z):
    """(sum qx - K z, whether the row holds a NaN) of row i quantized into u (numba only)."""


@overload(_quantize_row_static_fast, inline="always")
def _quantize_row_static_fast_impl(x, i, u, s, z):
    # float32 C-contiguous rows, as the dynamic ones: the float64 division alone took about
    # 0.45 ns a value (benchmarks/RESULTS.md, "Static rows on numba without a division").
    if not _vector_rows(x, u):
        return lambda x, i, u, s, z: _quantize_row(x, i, u, s, -128.0, z)

    def impl(x, i, u, s, z):
        inv = 1.0 / s
        if not (_F32_TINY <= abs(inv) <= _F32_MAX) or not (-128 <= z <= 127):
            return _quantize_row(x, i, u, s, -128.0, z)
        k = x.shape[1]
        steps = k // 16
        rs, nans = _quantize_steps_static(x, i * k, steps, np.float32(inv), s, z, u, i * u.shape[1])
        rt, nan = _quantize_span(x, i, u, s, -128.0, z, 16 * steps, k)
        _pad_row(u, i, k)
        return rs + rt - np.int64(k) * z, nan or nans > 0
    return impl


def _vector_rows(x, u) -> bool:
    """Numba types that the 16-value quantizer steps take: float32 C-contiguous 2-D rows of x
    into C-contiguous uint8 u."""
    return (isinstance(x, types.Array) and x.dtype == types.float32 and x.layout == "C" and x.ndim == 2
            and isinstance(u, types.Array) and u.dtype == types.uint8 and u.layout == "C")


def _quantize_row_dynamic_fast(x, i, u, s):
    """sum qx of row i quantized into u (dynamic scale s), or None (numba only)."""


@overload(_quantize_row_dynamic_fast, inline="always")
def _quantize_row_dynamic_fast_impl(x, i, u, s):
    # float32 C-contiguous rows: 16 values a step by the float32 estimate, each step with a
    # value near a half-integer (about 1 in 130) and the row's last K % 16 by the division. The
    # division alone took ~0.45 ns a value, a fifth to a third of a numba int8 Linear at
    # M = 16 (X: (16, 384, 384) 6.4 of 18.5 us).
    if not _vector_rows(x, u):
        return lambda x, i, u, s: _quantize_row(x, i, u, s, -127.0, 0)[0]

    def impl(x, i, u, s):
        inv = 1.0 / s
        if not (_F32_TINY <= abs(inv) <= _F32_MAX):   # not a normal float32 (quant_estimate_ok)
            return _quantize_row(x, i, u, s, -127.0, 0)[0]
        k = x.shape[1]
        xb = i * k
        ub = i * u.shape[1]
        inv32 = np.float32(inv)
        steps = k // 16
        rs = _quantize_steps_dynamic(x, xb, steps, inv32, s, u, ub)
        rs += _quantize_span(x, i, u, s, -127.0, 0, 16 * steps, k)[0]
        _pad_row(u, i, k)
        return rs
    return impl


@njit(cache=True, inline="always")
def quantize_row_dynamic(x, i, u, sx, row_corr):
    """Row i of x -> row i of u, sx, row_corr (dynamic); also used by the fused Conv im2col."""
    s = row_scale_dynamic(_row_amax(x, i))
    sx[i] = s
    row_corr[i] = _quantize_row_dynamic_fast(x, i, u, s)


@njit(cache=True, inline="always")
def quantize_row_static(x, i, u, s, z, sx, row_corr):
    """Row i of x -> row i of u, sx, row_corr (static s, z); also used by the Conv im2col."""
    # a NaN in x makes the reference's row NaN (rint(NaN) survives clip); +-inf clips to a
    # finite qx, as there
    row_corr[i], nan = _quantize_row_static_fast(x, i, u, s, z)
    sx[i] = np.nan if nan else s


@njit(cache=True, parallel=True)
def _quantize_shift_dynamic_parallel(x, u, sx, row_corr):
    for i in prange(x.shape[0]):
        quantize_row_dynamic(x, i, u, sx, row_corr)


@njit(cache=True)
def _quantize_shift_dynamic_serial(x, u, sx, row_corr):
    for i in range(x.shape[0]):
        quantize_row_dynamic(x, i, u, sx, row_corr)


@njit(cache=True, parallel=True)
def _quantize_shift_static_parallel(x, u, s, z, sx, row_corr):
    for i in prange(x.shape[0]):
        quantize_row_static(x, i, u, s, z, sx, row_corr)


@njit(cache=True)
def _quantize_shift_static_serial(x, u, s, z, sx, row_corr):
    for i in range(x.shape[0]):
        quantize_row_static(x, i, u, s, z, sx, row_corr)


# Below this many elements one thread quantizes as fast as two (~0.45 ns per element on one
# core; a parallel region costs a few microseconds with the workers spinning, GOMP_SPINCOUNT):
# measured 16 x 768 at 6.5 us serial, 4.5 us parallel.
PARALLEL_MIN_QUANT = 1 << 13


@njit(cache=True)
def quantize_shift_dynamic(x, u, sx, row_corr):
    """x (M, K) float32/float64 -> u (M, Kp) uint8 = qx + 128 (k >= K: 128), sx (M,) float64,
    row_corr (M,) int64 = sum_k qx. qx and sx are exactly
    kernels/numba_cpu/quant.quantize_rows_dynamic's: s = max|x| / 127 (1.0 for an all-zero
    row), qx = clip(rint(x / s), -127, 127), in float64 (rows with NaN/inf: row_scale_dynamic)."""
    if x.size >= PARALLEL_MIN_QUANT and x.shape[0] > 1:
        _quantize_shift_dynamic_parallel(x, u, sx, row_corr)
    else:
        _quantize_shift_dynamic_serial(x, u, sx, row_corr)


@njit(cache=True)
def quantize_shift_static(x, u, s, z, sx, row_corr):
    """x (M, K) float -> u (M, Kp) uint8 = qx + 128 (k >= K: 128), sx (M,) = s (NaN for a row
    holding a NaN), row_corr (M,) int64 = sum_k qx - K * z, where
    qx = clip(rint(x / s) + z, -128, 127) in float64, exactly kernels/numba_cpu/quant.quantize_static."""
    if x.size >= PARALLEL_MIN_QUANT and x.shape[0] > 1:
        _quantize_shift_static_parallel(x, u, np.float64(s), np.int64(z), sx, row_corr)
    else:
        _quantize_shift_static_serial(x, u, np.float64(s), np.int64(z), sx, row_corr)


@njit(cache=True)
def quantize_shift(x, kp, static, s, z):
    """Allocate and fill (u (M, kp) uint8, sx (M,) float64, row_corr (M,) int64) for X (M, K):
    dynamic per-row scales, or static (s, z) when ``static``."""
    m = x.shape[0]
    u = np.empty((m, kp), np.uint8)
    sx = np.empty(m, np.float64)
    row_corr = np.empty(m, np.int64)
    if static:
        quantize_shift_static(x, u, s, z, sx, row_corr)
    else:
        quantize_shift_dynamic(x, u, sx, row_corr)
    return u, sx, row_corr


# --- the rows the AVX2 tile reads ----------------------------------------------------------------

def signed_rows(u, panels):
    """The activation rows the tile for ``panels`` reads (numba only): u itself for the VNNI
    tile (int8 panels); for the AVX2 tile (uint8 panels) a new (M, 2 Kp) uint8 array whose row
    i is qx (int8 bytes) then |qx| (uint8, 128 for -128), filled by fill_signed_rows."""


def _signed_tile(panels) -> bool:
    """Whether numba type ``panels`` selects the signed AVX2 tile (4-D uint8 panels), which
    reads signed rows; the VNNI tile (int8) and the narrow AVX2 tile (uint8 viewed 3-D, see
    narrow_panels) read u itself."""
    return panels.dtype == types.uint8 and panels.ndim == 4


def narrow_panels(panels: np.ndarray) -> np.ndarray:
    """int8 panels (NP, K4, PANEL, 4) of a weight with every |qw| <= NARROW_INT8_QMAX, as the view
    that selects the narrow AVX2 tile (_raw_ymm(kind="narrow")): the same bytes as uint8 (NP, K4,
    PANEL * 4). The tile is chosen at compile time from the array type, so the view is the
    switch (module docstring)."""
    np_, k4 = panels.shape[:2]
    return panels.view(np.uint8).reshape(np_, k4, PANEL * 4)


def vnni256_panels(panels: np.ndarray) -> np.ndarray:
    """int8 panels (NP, K4, PANEL, 4) as the view that selects the 256-bit vpdpbusd tile
    (_raw_ymm(kind="vnni")): the same bytes, int8 (NP, K4, PANEL * 4); see narrow_panels."""
    np_, k4 = panels.shape[:2]
    return panels.reshape(np_, k4, PANEL * 4)


@overload(signed_rows, inline="always")
def _signed_rows_impl(u, panels):
    if _signed_tile(panels):
        return lambda u, panels: np.empty((u.shape[0], 2 * u.shape[1]), np.uint8)
    return lambda u, panels: u


def fill_signed_rows(u, panels, us, lo, hi):
    """Rows lo .. hi - 1 of u (qx + 128) -> us (numba only; nothing for int8 panels)."""


@overload(fill_signed_rows, inline="always")
def _fill_signed_rows_impl(u, panels, us, lo, hi):
    if _signed_tile(panels):
        def fill(u, panels, us, lo, hi):
            kp = u.shape[1]
            for i in range(lo, hi):
                for j in range(kp):
                    v = u[i, j]
                    us[i, j] = v ^ np.uint8(128)                               # qx as a byte
                    us[i, kp + j] = v - np.uint8(128) if v >= 128 else np.uint8(128) - v   # |qx|
        return fill
    return lambda u, panels, us, lo, hi: None


# --- the VNNI micro-kernel ------------------------------------------------------------------

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16I32 = ir.VectorType(_I32, 16)
_V16F64 = ir.VectorType(ir.DoubleType(), 16)
_V16F32 = ir.VectorType(ir.FloatType(), 16)


def _c64(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def _splat(builder, scalar, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _vec_ptr(builder, base, offset, vty):
    return builder.bitcast(builder.gep(base, [offset]), vty.as_pointer())


_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_V32I8 = ir.VectorType(_I8, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V8I32 = ir.VectorType(_I32, 8)
_PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
_PMADDWD = "llvm.x86.avx2.pmadd.wd"
_PSIGNB = "llvm.x86.avx2.psign.b"
# AVX-VNNI's vpdpbusd on ymm (VEX; LLVM emits the EVEX form where AVX-512 VL + VNNI exist)
_VPDPBUSD256 = "llvm.x86.avx512.vpdpbusd.256"


def _intrinsic_fn(builder, name, ret, args):
    fn = builder.module.globals.get(name)
    return fn if fn is not None else ir.Function(builder.module, ir.FunctionType(ret, args), name)


def _k_loop(builder, name, k4, body, acc_type, count):
    """Emit ``for kk in range(k4)`` with ``count`` accumulator phis of acc_type (zero at
    entry): body(kk, accs) -> new accs. Returns the accumulators after the loop."""
    zero = ir.Constant(acc_type, None)
    pre = builder.block
    loop = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", k4, _c64(0)), loop, done)
    builder.position_at_end(loop)
    kk = builder.phi(_I64)
    acc = [builder.phi(acc_type) for _ in range(count)]
    new = body(kk, acc)
    kn = builder.add(kk, _c64(1))
    kk.add_incoming(_c64(0), pre)
    kk.add_incoming(kn, builder.block)
    for a, v in zip(acc, new):
        a.add_incoming(zero, pre)
        a.add_incoming(v, builder.block)
    end = builder.block
    builder.cbranch(builder.icmp_signed("<", kn, k4), loop, done)
    builder.position_at_end(done)
    final = [builder.phi(acc_type) for _ in range(count)]
    for f, v in zip(final, new):
        f.add_incoming(zero, pre)
        f.add_incoming(v, end)
    return final


def _raw_vnni(builder, a, lda, b, k4, rows):
    """sum_k u qw by vpdpbusd: rows x NV accumulators <16 x i32> (columns 16 j .. 16 j + 15)."""
    fn = _intrinsic_fn(builder, _VPDPBUSD, _V16I32, [_V16I32] * 3)

    def body(kk, acc):
        bstep = builder.mul(kk, _c64(4 * PANEL))
        # unaligned loads (align=1): panels start on any byte offset of a numpy buffer
        wv = [builder.load(_vec_ptr(builder, b, builder.add(bstep, _c64(64 * j)), _V16I32), align=1)
              for j in range(NV)]
        astep = builder.mul(kk, _c64(4))
        new = []
        for r in range(rows):
            off = builder.add(builder.mul(_c64(r), lda), astep)
            word = builder.load(builder.bitcast(builder.gep(a, [off]), _I32.as_pointer()), align=1)
            bcast = _splat(builder, word, _V16I32)        # 4 u8 of row r, in every lane
            new.extend(builder.call(fn, [acc[r * NV + j], bcast, wv[j]]) for j in range(NV))
        return new

    final = _k_loop(builder, "vnni.k4", k4, body, _V16I32, rows * NV)
    return [final[r * NV:(r + 1) * NV] for r in range(rows)]


# ymm vectors (8 columns each) per K loop of the 256-bit tiles, by tile height. The AVX2 tiles
# keep 2 per row (rows x 2 accumulators, the weight and broadcast vectors, and vpmaddubsw /
# vpmaddwd temporaries fill the 16 registers). The 256-bit vpdpbusd tile has no temporaries but
# needs more accumulator chains: vpdpbusd has a latency of 5 cycles and issues 2 a cycle, so
# fewer than 10 independent accumulators leave it waiting (4 x 16 ran at 82-86% of the peak in
# the C++ tile, RESULTS.md "The Xeon as smaller CPUs"); 12 (4 rows x 3 vectors, 3 rows x 4) is
# what the registers hold beside a broadcast and the weights, which vpdpbusd may read from memory.
# A lone row takes the whole panel step in one loop (8 accumulators: a GEMV reads the weight
# once, in order, as the C++ tile's row1_panel).
_YMM_GROUPS = {"avx2": {1: (8,), 2: (2, 2, 2, 2), 3: (2, 2, 2, 2), 4: (2, 2, 2, 2)},
               "vnni": {1: (8,), 2: (4, 4), 3: (4, 4), 4: (3, 3, 2)}}


def _raw_ymm(builder, a, lda, b, k4, rows, kind):
    """The 256-bit tiles: rows x 8 accumulators <8 x i32> (columns 8 j .. 8 j + 7), one K loop
    per group of _YMM_GROUPS columns. ``kind``:

    * "signed" (AVX2): sum_k qx qw (not u qw: the epilogue's col_corr is z_x colsum), from the
      rows signed_rows made (qx, then |qx|): |qx| (u8) times sign(qx) qw (vpsignb, s8) by
      vpmaddubsw, then vpmaddwd against ones into int32; a pair of products is at most
      2 * 128 * 127 < 2^15, never saturated (the weight holds no -128: Int8Group checks).
    * "narrow" (AVX2, every |qw| <= NARROW_INT8_QMAX = 63): sum_k u qw, vpmaddubsw on
      u = qx + 128 itself, a pair at most 2 * 255 * 63 < 2^15; no vpsignb, one broadcast per row
      and k step, rows half as long; col_corr (128 + z_x) colsum, as the VNNI tile's.
    * "vnni" (AVX-VNNI, or AVX-512 VNNI on ymm): sum_k u qw by one 256-bit vpdpbusd per row and
      vector, exact for every byte (u8 x s8 into int32, no intermediate int16); the zmm tile's
      rows and col_corr."""
    avx2 = kind != "vnni"
    if avx2:
        maddubs = _intrinsic_fn(builder, _PMADDUBSW, _V16I16, [_V32I8, _V32I8])
        maddwd = _intrinsic_fn(builder, _PMADDWD, _V8I32, [_V16I16, _V16I16])
        ones = ir.Constant(_V16I16, [1] * 16)
    else:
        dpbusd = _intrinsic_fn(builder, _VPDPBUSD256, _V8I32, [_V8I32] * 3)
    psign = _intrinsic_fn(builder, _PSIGNB, _V32I8, [_V32I8, _V32I8]) if kind == "signed" else None
    half = builder.ashr(lda, _c64(1))          # signed: a row is qx (Kp bytes), then |qx|

    def splat_word(off):
        word = builder.load(builder.bitcast(builder.gep(a, [off]), _I32.as_pointer()), align=1)
        return _splat(builder, word, _V8I32)

    out = [[None] * (PANEL // 8) for _ in range(rows)]
    v0 = 0
    for g in _YMM_GROUPS["avx2" if avx2 else "vnni"][rows]:
        def body(kk, acc, v0=v0, g=g):
            kstep = builder.mul(kk, _c64(4 * PANEL))
            wv = [builder.load(_vec_ptr(builder, b, builder.add(kstep, _c64(32 * (v0 + i))), _V32I8), align=1)
                  for i in range(g)]
            astep = builder.mul(kk, _c64(4))
            new = []
            for r in range(rows):
                off = builder.add(builder.mul(_c64(r), lda), astep)
                x = splat_word(off)
                if not avx2:
                    new.extend(builder.call(dpbusd, [acc[g * r + i], x, builder.bitcast(wv[i], _V8I32)])
                               for i in range(g))
                    continue
                x = builder.bitcast(x, _V32I8)
                ax = x if kind == "narrow" else builder.bitcast(splat_word(builder.add(off, half)), _V32I8)
                for i in range(g):
                    p = builder.call(maddubs, [ax, wv[i] if kind == "narrow" else builder.call(psign, [wv[i], x])])
                    new.append(builder.add(acc[g * r + i], builder.call(maddwd, [p, ones])))
            return new

        final = _k_loop(builder, f"ymm.{kind}.v{v0}", k4, body, _V8I32, rows * g)
        for r in range(rows):
            for i in range(g):
                out[r][v0 + i] = final[g * r + i]
        v0 += g
    return out


def _make_tile(rows: int):
    """An @intrinsic computing a rows x PANEL output tile (rows <= MR), K loop and epilogue:

        tile(u, a_off, lda, panels, b_off, k4, y, y_off, ldy,
             col_corr, zw, sw, bias, n_off, row_corr, sx, m_off)

    u: uint8 activations, row r of the tile at a_off + r * lda (elements); panels: the tile's
    panel at b_off, whose array type selects the kernel (numba compiles one specialisation per
    type, so no instruction set is emitted where it is not used): int8 -> zmm vpdpbusd
    (AVX-512 VNNI), int8 3-D (vnni256_panels) -> ymm vpdpbusd (AVX-VNNI), uint8 (the same int8
    bytes viewed unsigned) -> the AVX2 vpmaddubsw kernels (_raw_ymm; the signed one's col_corr
    is z_x colsum). k4: k4 steps; y: output (float32 or float64), row r
    at y_off + r * ldy, PANEL columns written; col_corr int32, zw int32, sw float64, bias
    float64: padded per-column arrays read at n_off; row_corr int64 and sx float64 per row,
    read at m_off. The zero-point term zw[n] * row_corr[m] is always applied (zw = 0 for
    symmetric weights): 2 vector ops per 16 outputs, against K / 4 vpdpbusd."""

    @intrinsic
    def tile(typingctx, u, a_off, lda, panels, b_off, k4, y, y_off, ldy,
             col_corr, zw, sw, bias, n_off, row_corr, sx, m_off):
        intp = types.intp
        sig = types.void(u, intp, intp, panels, intp, intp, y, intp, intp,
                         col_corr, zw, sw, bias, intp, row_corr, sx, intp)
        # the panel's array type picks the tile (compile time): int8 4-D the zmm VNNI tile, int8
        # 3-D (vnni256_panels) the ymm VNNI one, uint8 4-D the signed AVX2 one, uint8 3-D
        # (narrow_panels) the narrow AVX2 one
        ymm = None if panels.dtype == types.int8 and panels.ndim == 4 else \
            "vnni" if panels.dtype == types.int8 else "narrow" if panels.ndim == 3 else "signed"

        def codegen(context, builder, signature, args):
            a_off, lda, b_off, k4, y_off, ldy, n_off, m_off = (args[i] for i in (1, 2, 4, 5, 7, 8, 13, 16))
            data = [context.make_array(t)(context, builder, v).data if isinstance(t, types.Array) else None
                    for t, v in zip(signature.args, args)]
            a = builder.gep(data[0], [a_off])
            b = builder.gep(data[3], [b_off])
            if ymm is not None:
                final, lanes = _raw_ymm(builder, a, lda, builder.bitcast(b, _I8.as_pointer()), k4, rows, ymm), 8
            else:
                final, lanes = _raw_vnni(builder, a, lda, b, k4, rows), 16

            # epilogue: exact int32 correction, then float64 in the reference's order
            vi32, vf64 = ir.VectorType(_I32, lanes), ir.VectorType(ir.DoubleType(), lanes)
            out_f32 = signature.args[6].dtype == types.float32
            vty = ir.VectorType(ir.FloatType(), lanes) if out_f32 else vf64
            col = []
            for j in range(PANEL // lanes):
                nj = builder.add(n_off, _c64(lanes * j))
                col.append([builder.load(_vec_ptr(builder, data[i], nj, t), align=a_)
                            for i, t, a_ in ((9, vi32, 4), (10, vi32, 4), (11, vf64, 8), (12, vf64, 8))])
            ydata = builder.gep(data[6], [y_off])
            for r in range(rows):
                mr_ = builder.add(m_off, _c64(r))
                sxr = _splat(builder, builder.load(builder.gep(data[15], [mr_])), vf64)
                rcr = _splat(builder, builder.trunc(builder.load(builder.gep(data[14], [mr_])), _I32), vi32)
                yrow = builder.mul(_c64(r), ldy)
                for j in range(PANEL // lanes):
                    cc, zwv, swv, bv = col[j]
                    t = builder.sub(final[r][j], cc)                    # wraps: exact mod 2^32
                    t = builder.sub(t, builder.mul(zwv, rcr))
                    f = builder.fmul(swv, builder.sitofp(t, vf64))      # s_w * acc
                    f = builder.fadd(builder.fmul(f, sxr), bv)           # * s_x + b
                    if out_f32:
                        f = builder.fptrunc(f, vty)
                    ptr = _vec_ptr(builder, ydata, builder.add(yrow, _c64(lanes * j)), vty)
                    builder.store(f, ptr, align=4 if out_f32 else 8)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"panel_tile_{rows}x{PANEL}"
    return tile


# one intrinsic per tile height: an edge tile of M % MR rows costs only its rows
_tile1, _tile2, _tile3, _tile4 = (_make_tile(rows) for rows in range(1, 5))
assert MR == 4, "_tile_dispatch below has one branch per tile height 1..MR"


@njit(cache=True, inline="always")
def _tile_dispatch(rows, u, i0, panels, p, y, y_off, ldy, col_corr, zw, sw, bias, row_corr, sx):
    lda = u.shape[1]
    k4 = panels.shape[1]
    b_off = p * k4 * PANEL * 4
    n_off = p * PANEL
    if rows == 4:
        _tile4(u, i0 * lda, lda, panels, b_off, k4, y, y_off, ldy, col_corr, zw, sw, bias, n_off, row_corr, sx, i0)
    elif rows == 3:
        _tile3(u, i0 * lda, lda, panels, b_off, k4, y, y_off, ldy, col_corr, zw, sw, bias, n_off, row_corr, sx, i0)
    elif rows == 2:
        _tile2(u, i0 * lda, lda, panels, b_off, k4, y, y_off, ldy, col_corr, zw, sw, bias, n_off, row_corr, sx, i0)
    else:
        _tile1(u, i0 * lda, lda, panels, b_off, k4, y, y_off, ldy, col_corr, zw, sw, bias, n_off, row_corr, sx, i0)


@njit(cache=True)
def _panel_tiles(p, t_lo, t_hi, u, panels, y, col_corr, zw, sw, bias, row_corr, sx):
    """Micro-tiles t_lo .. t_hi - 1 (rows MR * t ...) of panel p, top to bottom. The last
    panel, when N is not a multiple of PANEL, is computed into a scratch tile and its valid
    columns copied."""
    m = u.shape[0]
    n = y.shape[1]
    width = min(PANEL, n - p * PANEL)
    if width == PANEL:
        for t in range(t_lo, t_hi):
            i0 = t * MR
            rows = min(MR, m - i0)
            _tile_dispatch(rows, u, i0, panels, p, y, i0 * n + p * PANEL, n,
                           col_corr, zw, sw, bias, row_corr, sx)
        return
    scratch = np.empty((MR, PANEL), y.dtype)
    for t in range(t_lo, t_hi):
        i0 = t * MR
        rows = min(MR, m - i0)
        _tile_dispatch(rows, u, i0, panels, p, scratch, 0, PANEL, col_corr, zw, sw, bias, row_corr, sx)
        for r in range(rows):
            for c in range(width):
                y[i0 + r, p * PANEL + c] = scratch[r, c]


@njit(cache=True)
def _gemm_item(item, row_blocks, u, panels, y, col_corr, zw, sw, bias, row_corr, sx, act):
    """Work item = (row block, panel). The epilogue activation ``act`` (ops.ACTIVATION_KINDS)
    runs on the item's block of y right after its tiles, while the block is in L1/L2, with
    ops.activate_rows (the numba Relu/Gelu kernels' code). Once per item, not per 4 x 64
    tile: per tile, the calls cost 6x the activation itself."""
    np_ = panels.shape[0]
    tiles = (u.shape[0] + MR - 1) // MR
    per_block = (tiles + row_blocks - 1) // row_blocks
    blk = item // np_
    p = item - blk * np_
    t_lo, t_hi = blk * per_block, min(tiles, (blk + 1) * per_block)
    _panel_tiles(p, t_lo, t_hi, u, panels, y, col_corr, zw, sw, bias, row_corr, sx)
    activate_rows(y, t_lo * MR, min(u.shape[0], t_hi * MR), p * PANEL, min(y.shape[1], (p + 1) * PANEL), act)


# Each output tile is computed by one thread, start to end, in a fixed order: the result does
# not depend on the thread count or on how items are split.
@njit(cache=True, parallel=True)
def _panel_gemm_parallel(u, panels, y, col_corr, zw, sw, bias, row_corr, sx, row_blocks, act):
    for item in prange(row_blocks * panels.shape[0]):
        _gemm_item(item, row_blocks, u, panels, y, col_corr, zw, sw, bias, row_corr, sx, act)


@njit(cache=True)
def _panel_gemm_serial(u, panels, y, col_corr, zw, sw, bias, row_corr, sx, row_blocks, act):
    for item in range(row_blocks * panels.shape[0]):
        _gemm_item(item, row_blocks, u, panels, y, col_corr, zw, sw, bias, row_corr, sx, act)


@njit(cache=True, parallel=True)
def _panel_linear_row_blocks(x, static, s, z, u, us, sx, row_corr, panels, y, col_corr, zw, sw, bias, blocks, act):
    """Linear with the rows split over threads: each block of rows is quantized, then
    multiplied by every panel, by one thread. One parallel region per call (quantization
    needs no barrier before the GEMM), each thread's rows stay in its caches; every thread
    streams the whole weight, so this is for M large enough to reuse each panel many times."""
    tiles = (x.shape[0] + MR - 1) // MR
    per_block = (tiles + blocks - 1) // blocks
    for blk in prange(blocks):
        t_lo = blk * per_block
        t_hi = min(tiles, t_lo + per_block)
        for i in range(t_lo * MR, min(x.shape[0], t_hi * MR)):
            if static:
                quantize_row_static(x, i, u, s, z, sx, row_corr)
            else:
                quantize_row_dynamic(x, i, u, sx, row_corr)
        fill_signed_rows(u, panels, us, t_lo * MR, min(x.shape[0], t_hi * MR))
        for p in range(panels.shape[0]):
            _panel_tiles(p, t_lo, t_hi, us, panels, y, col_corr, zw, sw, bias, row_corr, sx)
        activate_rows(y, t_lo * MR, min(x.shape[0], t_hi * MR), 0, y.shape[1], act)


# Below this many multiply-adds one thread is as fast as two (measured with the workers
# spinning, GOMP_SPINCOUNT: M = 16, K = N = 384, 2.4 M: 13.0 us serial, 13.8 us parallel; 7.1 M:
# 42 vs 23 us; a GEMV M = 1, K = 768, N = 3072, 2.4 M: 41 vs 23 us). Without the spin (workers
# parked, e.g. OMP_WAIT_POLICY=PASSIVE) the break-even on that VM was ~16 M.
PARALLEL_MIN_MACS = 1 << 21
# A lone row (a GEMV: each weight byte read once, no reuse) gains from two threads sooner: on
# the Xeon masked to AVX-VNNI (RESULTS.md, "numba's AVX-VNNI tile"), K x N = 384 x 1152
# (0.44 M) 9.7 us serial, 7.6 parallel; 768 x 2304 (1.8 M) 27 vs 14 us; 384 x 384 (0.15 M,
# below this) 5.3 either way.
PARALLEL_MIN_MACS_GEMV = 1 << 18
# work items per thread the N-split driver aims for, so that uneven items still split evenly
ITEMS_PER_THREAD = 4
# row blocks per thread of the row-split Linear driver, and the fewest rows per block: a
# block re-reads each weight panel once per MR rows, so it needs enough rows to amortise
# streaming the whole weight through every core
ROW_BLOCKS_PER_THREAD = 2
MIN_ROWS_PER_BLOCK = 32
# The pool size (fixed when numba starts), not numba.get_num_threads(): that call would make
# these functions uncacheable, and a few extra work items cost nothing when fewer threads run.
# (A cached compilation keeps the value it was compiled with; it only shapes the work split.)
POOL_THREADS = numba.config.NUMBA_NUM_THREADS


@njit(cache=True)
def panel_gemm(u, sx, row_corr, panels, y, col_corr, zw, sw, bias, act):
    """y (M, N) = act(epilogue(u (M, Kp) uint8 @ panels)) (module docstring): col_corr, zw int32,
    sw, bias float64, all padded to NP * PANEL; row_corr int64 (M,), sx float64 (M,); act an
    ops.ACTIVATION_KINDS value (ACT_NONE: none). int8 panels: requires has_vnni(), int8 3-D
    (vnni256_panels) isa.has_vnni256(); uint8 panels (the AVX2 tile): has_avx2() and no -128
    weight byte; K <= MAX_K_INT32 for both.
    Compiled on the first call."""
    m = u.shape[0]
    np_, k4 = panels.shape[0], panels.shape[1]
    us = signed_rows(u, panels)
    fill_signed_rows(u, panels, us, 0, m)
    u = us
    if POOL_THREADS <= 1 or m * np_ * PANEL * k4 * 4 < (PARALLEL_MIN_MACS_GEMV if m == 1 else PARALLEL_MIN_MACS):
        _panel_gemm_serial(u, panels, y, col_corr, zw, sw, bias, row_corr, sx, 1, act)
    else:
        tiles = (m + MR - 1) // MR
        row_blocks = min(tiles, max(1, (ITEMS_PER_THREAD * POOL_THREADS + np_ - 1) // np_))
        _panel_gemm_parallel(u, panels, y, col_corr, zw, sw, bias, row_corr, sx, row_blocks, act)


@njit(cache=True)
def panel_linear(x, static, s, z, panels, y, col_corr, zw, sw, bias, act):
    """Linear in one call: quantize X (M, K), then the panel GEMM (VNNI or AVX2 tile) into y. Large problems with
    enough rows split the rows over threads, quantization included (one parallel region);
    others quantize on the calling thread and split the panels (panel_gemm)."""
    m = x.shape[0]
    np_, k4 = panels.shape[0], panels.shape[1]
    blocks = min(ROW_BLOCKS_PER_THREAD * POOL_THREADS, m // MIN_ROWS_PER_BLOCK)
    if POOL_THREADS > 1 and blocks >= POOL_THREADS and m * np_ * PANEL * k4 * 4 >= PARALLEL_MIN_MACS:
        u = np.empty((m, k4 * 4), np.uint8)
        sx = np.empty(m, np.float64)
        row_corr = np.empty(m, np.int64)
        _panel_linear_row_blocks(x, static, np.float64(s), np.int64(z), u, signed_rows(u, panels), sx, row_corr,
                                 panels, y, col_corr, zw, sw, bias, blocks, act)
        return
    u, sx, row_corr = quantize_shift(x, k4 * 4, static, s, z)
    panel_gemm(u, sx, row_corr, panels, y, col_corr, zw, sw, bias, act)


# --- the portable GEMM ----------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _portable_gemm_parallel(u, w, y, col_corr, zw, sw, bias, row_corr, sx):
    m, kp = u.shape
    n = y.shape[1]
    nb = (n + PANEL - 1) // PANEL
    for item in prange(m * nb):
        i = item // nb
        c0 = (item - i * nb) * PANEL
        for c in range(c0, min(n, c0 + PANEL)):
            raw = np.int64(0)
            for k in range(kp):
                raw += np.int64(np.int32(u[i, k]) * np.int32(w[c, k]))
            acc = raw - col_corr[c] - zw[c] * row_corr[i]
            y[i, c] = (sw[c] * np.float64(acc)) * sx[i] + bias[c]


@njit(cache=True)
def portable_gemm(u, sx, row_corr, w, y, col_corr, zw, sw, bias, act):
    """The same result as panel_gemm, bit for bit, in plain loops: u (M, Kp) uint8, w (N, Kp)
    int8 (K zero-padded), col_corr, zw int64 (N,), sw, bias float64 (N,), row_corr int64 (M,),
    sx float64 (M,). Accumulates in int64, so any K is exact."""
    _portable_gemm_parallel(u, w, y, col_corr, zw, sw, bias, row_corr, sx)
    activate_rows(y, 0, y.shape[0], 0, y.shape[1], act)


@njit(cache=True)
def portable_linear(x, static, s, z, w, y, col_corr, zw, sw, bias, act):
    """panel_linear's twin on the portable GEMM."""
    u, sx, row_corr = quantize_shift(x, w.shape[1], static, s, z)
    portable_gemm(u, sx, row_corr, w, y, col_corr, zw, sw, bias, act)
