"""Sparse Linear / Conv kernels for the numba backend: layouts csr, bsr and nm.

Numerics are kernels/reference/packed.py's (docs/CONVERTER.md, "Numerics"); every kernel here
is tested against it (tests/test_numba_sparse.py). Shapes: X (M, K') rows of the GEMM input,
the weight's 2-D view W (N, K') (kernels.core.layouts.dense_view_2d), Y (M, N).

``act_quant``:

* ``"none"`` (float activations; float values, or weight-only int8 values dequantized once at
  plan time to float32 exactly as ``PackedTensor.to_dense``): Y = X @ W.T + b with a
  **float64 accumulator** per output element. Every product of two float32 is exact in
  float64, so only the summation order differs from the reference's BLAS; the result, rounded
  once to X's dtype, is the reference's within 1 ulp in practice (tests: FLOAT_ULPS,
  FLOAT64_SUM_ERR_PER_TERM).
* ``"dynamic"`` / ``"static"``: X is quantized to the same bits as kernels/numba_cpu/quant.py
  and the reference (the float64 quotient x / s, rint half to even, clip; s_x = max|x|/127
  per row or act_scale; see _quantize_u8); acc[m, n] = sum_k (qx[m, k] - z) * qw[n, k] is
  an **exact integer** (int32 in the fast paths, int64 in the portable one); the epilogue is
  the reference's, in float64 and in its order, Y = (s_w[n] * acc) * s_x[m] (+ b[n]),
  rounded once to X's dtype. So the result equals the reference **bit for bit**.

int32 exactness: sparse int8 weights are symmetric, |qw| <= 127, and |qx - z| <= 255, so
|acc| <= K' * 255 * 127 < 2^31 for K' <= MAX_INT32_K (66311). The fast paths use VNNI's u8 x
s8 form (docs/CONVERTER.md, "Integer GEMM"): activations are stored as u = qx + 128 in [0, 255], dot = sum_k u * qw,
and acc = dot - fix[n] with fix[n] = (128 + z) * sum_k qw[n, k] computed at plan time. int32
arithmetic wraps modulo 2^32 (vpdpbusd is the non-saturating form); the true acc fits int32,
so the wrapped result is exact. A larger K' takes the portable int64 path.

Plan time (the factory) converts every layout to one canonical row-wise form, ``RowsCSR``
(indptr int64, column indices int32, stored values int8 or float32; bsr blocks and nm groups
expanded into their rows, explicitly stored zeros kept), and, on first use, the structure of
the fast path an input needs (``SparsePlan.path``):

* ``Ell`` (csr, nm, bsr at M < BSR_QUADS_MIN_M or with R % 16 == 0; needs AVX512-VBMI):
  sliced ELLPACK over blocks of 16 output rows and segments of 128 columns. A 64-byte vector
  holds 4 stored values of each of the block's 16 rows, all in one segment (byte 4i + j:
  row i, its j-th value there; unused lanes 0). X is quantized into rows of u8; per (block,
  segment) the 128-byte segment of 4 activation rows is loaded once into 8 zmm, and each
  vector then costs one vpermi2b (fetch its 64 activations from the segment) and one
  vpdpbusd (64 products into 16 int32 lanes, lane i = row i) per activation row. No
  horizontal sums, no gathers, no transposes; the epilogue stores 16 consecutive outputs.
  M = 1 (the memory-bound vector case) streams each vector once: 2 bytes per lane, lanes
  ~60% full at 90% random sparsity. Measured ~0.5 ns per vector and activation row (2-core
  Zen 4, 1 thread).
* ``BlockQuadTiles`` / ``QuadTiles`` (bsr with C % 4 == 0, R % 16 != 0, M >= BSR_QUADS_MIN_M): X tiled
  as (K'/4, 16, 4) u8, so a block's 4-column quad of 16 activation rows is one 64-byte load
  and one vpdpbusd with the quad's 4 weights broadcast (lane = activation row). With R % 4
  == 0 (BlockQuadTiles) each load feeds 4 rows' accumulators; otherwise each row runs its list of
  quads (QuadTiles). The 16 x 16 output tiles are transposed in registers to Y.
* ``ValueGroups`` (csr / nm / bsr without VBMI): groups of 4 stored values of a row; X tiled as (K',
  16) u8 so column c of 16 activation rows is 16 bytes; per group the 4 columns are loaded,
  byte-transposed into quads and multiplied with one vpdpbusd. About half Ell's speed.

The portable path (any CPU, any K'): per output element a loop over the row's stored values,
int64 (integer modes) or float64 (act "none") accumulator.

Parallelism: over output rows (blocks of rows), in chunks (prange); one output element is
computed by one thread in a fixed order, so results do not depend on the thread count.
Below SERIAL_WORK multiply-adds the kernel runs on the calling thread.

The vector kernels use a small SIMD layer: ``i32x16``, an LLVM <16 x i32> value as a numba
type, and @intrinsic operations on it. An x86 instruction (vpdpbusd, vpermi2b) is emitted
only when numba's compilation target has the feature; otherwise the same operation is
emitted as portable LLVM IR (correct everywhere, slow), and ``path`` avoids the paths that
rely on it. Hot loops call only intrinsics: a call of an @njit helper with array arguments
costs an NRT incref/decref per array (measured ~40 ns), more than a whole Ell vector.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from kernels.core.layouts import PackedTensor, dense_view_2d, sparse_rows
from kernels.gemm_front import bias64, gemm_factory
from kernels.reference.conv_pool import conv_by_gemm
from kernels.reference.packed import act_params
from kernels.registry import register

from . import isa
from .vnni import quantize_shift

SPARSE_LAYOUTS = ("csr", "bsr", "nm")

# |acc| <= K' * 255 * 127 must stay below 2^31 for the int32 accumulators (module docstring)
MAX_INT32_K = (2 ** 31 - 1) // (255 * 127)
U8_SHIFT = 128       # u8 activations of the VNNI paths are qx + 128 (qx in [-128, 127])
TILE_M = 16          # activation rows per tile of the batched paths (16 int32 lanes of a zmm)
VEC_BYTES = 64       # one Ell vector (the byte lanes of a zmm)
SEGMENT = 128        # activation bytes one vpermi2b reads (two zmm)
# bsr with C % 4 == 0 takes the quad paths from this M (measured: from M ~ 16 they beat Ell,
# whose lanes a block pattern fills poorly unless R is a multiple of 16; Ell wins below)
BSR_QUADS_MIN_M = 8
# below this many stored-value x activation-row products (about 15 us of Ell on one core) a
# kernel runs on the calling thread: a parallel launch costs ~10-12 us with the OpenMP pool
# waiting passively (kernels/numba_cpu/__init__.py sets OMP_WAIT_POLICY=PASSIVE; ~2 us when it
# spins), more than splitting such a kernel saves
SERIAL_WORK = 1 << 20
PAR_CHUNKS = 64      # row chunks of a parallel kernel (a few per thread; see _nchunks)


# --- target features ---------------------------------------------------------------------------

# What numba compiles for (isa.py: this CPU, or the target QRT_NUMBA_ISA / NUMBA_CPU_NAME set).
HAS_VNNI = isa.has_vnni()
HAS_VBMI = isa.has_vbmi()
# Which path runs (a module attribute so that tests can force each one):
USE_ELL = HAS_VBMI    # its byte permute is one instruction only with VBMI

# The GEMM drivers below are plain @njit functions that call parallel ones; when they are
# loaded from numba's cache, the parallel runtime must already be up or LLVM cannot resolve
# its symbols ("Symbol not found: allocate_sched"). get_num_threads() starts it.
numba.get_num_threads()


# --- SIMD layer: <16 x i32> as a numba type ----------------------------------------------------------

class I32x16Type(types.Type):
    """An LLVM <16 x i32> vector (one zmm) held in a numba variable."""

    def __init__(self):
        super().__init__(name="qrt_sparse_i32x16")


i32x16 = I32x16Type()
_V16 = ir.VectorType(ir.IntType(32), 16)
_B64 = ir.VectorType(ir.IntType(8), 64)
_B16 = ir.VectorType(ir.IntType(8), 16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


def _data_ptr(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, value=arr).data


def _byte_ptr(builder, ptr, byte_off):
    """ptr + byte_off bytes, as an i8*."""
    return builder.gep(builder.bitcast(ptr, ir.IntType(8).as_pointer()), [byte_off])


def _load_at(context, builder, arrty, arr, byte_off, vty):
    p = _byte_ptr(builder, _data_ptr(context, builder, arrty, arr), byte_off)
    return builder.load(builder.bitcast(p, vty.as_pointer()), align=1)


def _as_i64(builder, v):
    return builder.zext(v, _I64) if v.type.width < 64 else v


def _splat32(builder, w):
    v = builder.insert_element(ir.Constant(_V16, ir.Undefined), w, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, [0] * 16))


def _dpbusd(builder, acc, a, b):
    """acc + per int32 lane the sum of its 4 products u8(a) * s8(b) (vpdpbusd, wrapping)."""
    if HAS_VNNI:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc, a, b])
    wide = ir.VectorType(_I32, 64)
    prod = builder.mul(builder.zext(builder.bitcast(a, _B64), wide), builder.sext(builder.bitcast(b, _B64), wide))
    out = acc
    for j in range(4):
        out = builder.add(out, builder.shuffle_vector(prod, ir.Constant(wide, ir.Undefined),
                                                      ir.Constant(_V16, [4 * i + j for i in range(16)])))
    return out


def _vpermi2b(builder, idx, lo, hi):
    """Per byte lane l, byte (idx[l] & 127) of the 128-byte table (lo, hi) (vpermi2b)."""
    if HAS_VBMI:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_B64, [_B64, _B64, _B64]),
                                            "llvm.x86.avx512.vpermi2var.qi.512")
        return builder.call(fn, [lo, idx, hi])
    # Portable form: the 128-byte table in a stack slot, one byte load per lane. (Indexing a
    # <128 x i8> value with a variable lane instead made LLVM spill the whole vector for every
    # lane: 2-3x the compile time of every kernel that uses it.)
    table = cgutils.alloca_once(builder, ir.ArrayType(ir.IntType(8), 128))
    base = builder.bitcast(table, _B64.as_pointer())
    builder.store(lo, base, align=1)
    builder.store(hi, builder.gep(base, [ir.Constant(_I32, 1)]), align=1)
    first = builder.bitcast(table, ir.IntType(8).as_pointer())
    out = ir.Constant(_B64, ir.Undefined)
    for i in range(64):
        j = builder.and_(builder.extract_element(idx, ir.Constant(_I32, i)), ir.Constant(ir.IntType(8), 127))
        byte = builder.load(builder.gep(first, [builder.zext(j, _I32)]))
        out = builder.insert_element(out, byte, ir.Constant(_I32, i))
    return out


@intrinsic
def _ld(typingctx, arr, i):
    """arr[i] of a C-contiguous 1-D array without numba's negative-index wraparound (hot loops
    index with signed ints known to be in range)."""
    def impl(context, builder, sig, args):
        return builder.load(builder.gep(_data_ptr(context, builder, sig.args[0], args[0]), [args[1]]))
    return arr.dtype(arr, types.intp), impl


@intrinsic
def _v_zero(typingctx):
    def impl(context, builder, sig, args):
        return ir.Constant(_V16, None)
    return i32x16(), impl


@intrinsic
def _v_add(typingctx, a, b):
    def impl(context, builder, sig, args):
        return builder.add(args[0], args[1])
    return i32x16(i32x16, i32x16), impl


@intrinsic
def _v_dot_q(typingctx, acc, xq, xoff, qidx, qw, j):
    """A quad step: acc + dpbusd(64 u8 of xq at byte xoff + 64 * qidx[j], qw[j] in every lane)."""
    def impl(context, builder, sig, args):
        accv, xa, xo, qa, wa, jj = args
        q = _as_i64(builder, builder.load(builder.gep(_data_ptr(context, builder, sig.args[3], qa), [jj])))
        w = builder.load(builder.gep(_data_ptr(context, builder, sig.args[4], wa), [jj]))
        xv = _load_at(context, builder, sig.args[1], xa, builder.add(xo, builder.shl(q, ir.Constant(_I64, 6))), _V16)
        return _dpbusd(builder, accv, xv, _splat32(builder, w))
    return i32x16(i32x16, xq, types.intp, qidx, qw, types.intp), impl


@intrinsic
def _v_load(typingctx, arr, byte_off):
    """64 bytes of arr's data at byte_off (unaligned)."""
    def impl(context, builder, sig, args):
        return _load_at(context, builder, sig.args[0], args[0], args[1], _V16)
    return i32x16(arr, types.intp), impl


@intrinsic
def _v_dot_w(typingctx, acc, xv, wq, j):
    """acc + dpbusd(xv, wq[j] in every lane)."""
    def impl(context, builder, sig, args):
        accv, x, wa, jj = args
        w = builder.load(builder.gep(_data_ptr(context, builder, sig.args[2], wa), [jj]))
        return _dpbusd(builder, accv, x, _splat32(builder, w))
    return i32x16(i32x16, i32x16, wq, types.intp), impl


@intrinsic
def _v_dot_value_groups(typingctx, acc, xt, xoff, cols, gw, g):
    """The ValueGroups step: acc[m] += sum_i s8(w_i) * u8(x[m, c_i]), i < 4, for the 16 rows m of a tile.

    xt: u8 tiles, column c of the tile at byte xoff + 16 * c (16 rows); cols[4g .. 4g+3] the
    group's columns c_i, gw[g] its 4 values w_i packed in an int32 (little endian). The 4
    columns are loaded (16 bytes each), concatenated and byte-transposed so lane m holds the
    quad (x[m, c_0], .., x[m, c_3]); one vpdpbusd then multiplies every lane by w."""
    def impl(context, builder, sig, args):
        accv, xa, xo, ca, wa, gg = args
        cptr = _data_ptr(context, builder, sig.args[3], ca)
        first = builder.shl(gg, ir.Constant(_I64, 2))
        rows = []
        for i in range(4):
            c = _as_i64(builder, builder.load(builder.gep(cptr, [builder.add(first, ir.Constant(_I64, i))])))
            rows.append(_load_at(context, builder, sig.args[1], xa,
                                 builder.add(xo, builder.shl(c, ir.Constant(_I64, 4))), _B16))
        ab = builder.shuffle_vector(rows[0], rows[1], ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
        cd = builder.shuffle_vector(rows[2], rows[3], ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
        # byte 4m + i of the result = byte m of column i, which sits at 16 i + m in (ab, cd)
        quads = builder.shuffle_vector(ab, cd, ir.Constant(ir.VectorType(_I32, 64),
                                                          [16 * i + m for m in range(16) for i in range(4)]))
        w = builder.load(builder.gep(_data_ptr(context, builder, sig.args[4], wa), [gg]))
        return _dpbusd(builder, accv, builder.bitcast(quads, _V16), _splat32(builder, w))
    return i32x16(i32x16, xt, types.intp, cols, gw, types.intp), impl


@intrinsic
def _v_dot(typingctx, acc, a, b):
    """acc + dpbusd(a as 64 u8, b as 64 s8)."""
    def impl(context, builder, sig, args):
        return _dpbusd(builder, *args)
    return i32x16(i32x16, i32x16, i32x16), impl


@intrinsic
def _v_perm(typingctx, idx, lo, hi):
    """vpermi2b on registers: byte lane l = byte (idx[l] & 127) of the table (lo, hi)."""
    def impl(context, builder, sig, args):
        iv, lo, hi = (builder.bitcast(a, _B64) for a in args)
        return builder.bitcast(_vpermi2b(builder, iv, lo, hi), _V16)
    return i32x16(i32x16, i32x16, i32x16), impl


def _concat(builder, vectors):
    """Concatenate equal-length vectors (a tree of shufflevectors)."""
    while len(vectors) > 1:
        n = vectors[0].type.count
        mask = ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))
        vectors = [builder.shuffle_vector(vectors[i], vectors[i + 1], mask) for i in range(0, len(vectors), 2)]
    return vectors[0]


def _transpose_block(context, builder, sig, args, order):
    """Load a 16 x 16 block of bytes (row i at byte src_off + i * src_stride), reorder its
    256 bytes by ``order`` (output byte -> 16 i + c of row i, column c) and store them
    contiguously at byte dst_off of the destination."""
    qa, so, ss, da, do = args
    base = _byte_ptr(builder, _data_ptr(context, builder, sig.args[0], qa), so)
    rows = [builder.load(builder.bitcast(builder.gep(base, [builder.mul(ss, ir.Constant(_I64, i))]),
                                         _B16.as_pointer()), align=1) for i in range(16)]
    block = _concat(builder, rows)
    out = builder.shuffle_vector(block, ir.Constant(block.type, ir.Undefined),
                                 ir.Constant(ir.VectorType(_I32, 256), order))
    dst = _byte_ptr(builder, _data_ptr(context, builder, sig.args[3], da), do)
    builder.store(out, builder.bitcast(dst, out.type.as_pointer()), align=1)
    return context.get_dummy_value()


# ValueGroups tiles: output byte 16 c + i = row i, column c (column c's 16 rows contiguous)
_ORDER_T = [16 * i + c for c in range(16) for i in range(16)]
# quad tiles: output byte 64 j + 4 i + c = row i, column 4 j + c (quad j: 16 rows x 4 bytes)
_ORDER_Q = [16 * i + 4 * j + c for j in range(4) for i in range(16) for c in range(4)]


@intrinsic
def _v_transpose16(typingctx, q, src_off, src_stride, dst, dst_off):
    """16 x 16 block of q -> 16 columns of 16 u8 (the ValueGroups tile layout)."""
    def impl(context, builder, sig, args):
        return _transpose_block(context, builder, sig, args, _ORDER_T)
    return types.none(q, types.intp, types.intp, dst, types.intp), impl


@intrinsic
def _v_quads16(typingctx, q, src_off, src_stride, dst, dst_off):
    """16 x 16 block of q -> 4 column quads of 16 rows x 4 u8 (the quad tile layout)."""
    def impl(context, builder, sig, args):
        return _transpose_block(context, builder, sig, args, _ORDER_Q)
    return types.none(q, types.intp, types.intp, dst, types.intp), impl


@intrinsic
def _v_transpose_out(typingctx, src, src_off, src_stride, dst, dst_off, dst_stride):
    """Transpose a 16 x 16 block of src's element type (row i at byte src_off + i *
    src_stride) into dst (row c at byte dst_off + c * dst_stride)."""
    def impl(context, builder, sig, args):
        sa, so, ss, da, do, ds = args
        ety = context.get_value_type(sig.args[0].dtype)
        vty = ir.VectorType(ety, 16)
        base = _byte_ptr(builder, _data_ptr(context, builder, sig.args[0], sa), so)
        rows = [builder.load(builder.bitcast(builder.gep(base, [builder.mul(ss, ir.Constant(_I64, i))]),
                                             vty.as_pointer()), align=1) for i in range(16)]
        block = _concat(builder, rows)
        dbase = _byte_ptr(builder, _data_ptr(context, builder, sig.args[3], da), do)
        for c in range(16):
            col = builder.shuffle_vector(block, ir.Constant(block.type, ir.Undefined),
                                         ir.Constant(ir.VectorType(_I32, 16), [16 * i + c for i in range(16)]))
            p = builder.gep(dbase, [builder.mul(ds, ir.Constant(_I64, c))])
            builder.store(col, builder.bitcast(p, vty.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(src, types.intp, types.intp, dst, types.intp, types.intp), impl


_F64x16 = ir.VectorType(ir.DoubleType(), 16)


def _splat_any(builder, v, vty):
    x = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(x, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _epilogue_store(context, builder, acc, fixv, swv, sxv, bv, has_bias, dst_ty, dst, dst_off, nvalid=None):
    """y = (s_w * (acc - fix)) * s_x (+ b) on 16 lanes in float64, in the reference's order
    (separate multiplies and add: no contraction), rounded once to dst's dtype and stored at
    byte dst_off (only lanes < nvalid when given: a masked store). acc - fix is int32
    arithmetic (wrapping; exact, module docstring)."""
    a = builder.sub(acc, fixv)
    y = builder.fmul(builder.fmul(swv, builder.sitofp(a, _F64x16)), sxv)
    y = builder.select(has_bias, builder.fadd(y, bv), y)
    ety = context.get_value_type(dst_ty.dtype)
    if ety != ir.DoubleType():
        y = builder.fptrunc(y, ir.VectorType(ety, 16))
    p = builder.bitcast(_byte_ptr(builder, _data_ptr(context, builder, dst_ty, dst), dst_off), y.type.as_pointer())
    if nvalid is None:
        builder.store(y, p, align=1)
        return
    lanes = ir.Constant(_V16, list(range(16)))
    mask = builder.icmp_signed("<", lanes, _splat_any(builder, builder.trunc(nvalid, _I32), _V16))
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [y.type, y.type.as_pointer(), _I32, mask.type]),
        f"llvm.masked.store.v16{'f32' if ety == ir.FloatType() else 'f64'}.p0")
    builder.call(fn, [y, p, ir.Constant(_I32, 1), mask])


@intrinsic
def _v_epi_tile(typingctx, acc, fix, sw, sx, sx_off, bias, has_bias, dst, dst_off):
    """Epilogue of one output row n over a tile of 16 activation rows (lane = m): scalars
    fix[n], s_w[n], b[n], s_x[sx_off : sx_off + 16]; 16 values stored at byte dst_off."""
    def impl(context, builder, sig, args):
        accv, f, w, sxa, so, bb, hb, da, do = args
        fixv = _splat_any(builder, builder.trunc(f, _I32), _V16)
        sxp = builder.gep(_data_ptr(context, builder, sig.args[3], sxa), [so])
        sxv = builder.load(builder.bitcast(sxp, _F64x16.as_pointer()), align=1)
        _epilogue_store(context, builder, accv, fixv, _splat_any(builder, w, _F64x16), sxv,
                        _splat_any(builder, bb, _F64x16), hb, sig.args[7], da, do)
        return context.get_dummy_value()
    return types.none(i32x16, types.int64, types.float64, sx, types.intp, types.float64, types.boolean,
                      dst, types.intp), impl


@intrinsic
def _v_epi_rows(typingctx, acc, fix, sw, bias, has_bias, r, sx, dst, dst_off, nvalid):
    """Epilogue of 16 output rows r .. r+15 (lane = row) for one activation row: fix, s_w and
    bias read at r (arrays padded to a multiple of 16), scalar s_x; lanes < nvalid stored at
    byte dst_off."""
    def impl(context, builder, sig, args):
        accv, fa, wa, ba, hb, rr, sxs, da, do, nv = args

        def vec(arrty, arr, vty):
            p = builder.gep(_data_ptr(context, builder, arrty, arr), [rr])
            return builder.load(builder.bitcast(p, vty.as_pointer()), align=1)
        fixv = builder.trunc(vec(sig.args[1], fa, ir.VectorType(_I64, 16)), _V16)
        _epilogue_store(context, builder, accv, fixv, vec(sig.args[2], wa, _F64x16),
                        _splat_any(builder, sxs, _F64x16), vec(sig.args[3], ba, _F64x16), hb,
                        sig.args[7], da, do, nv)
        return context.get_dummy_value()
    return types.none(i32x16, fix, sw, bias, types.boolean, types.intp, types.float64, dst, types.intp,
                      types.intp), impl


# --- plan-time structures ------------------------------------------------------------------------

class RowsCSR:
    """Canonical row-wise form of a sparse weight's 2-D view (N, K').

    indptr int64 (N+1,), cols int32 (nnz,) ascending within a row, values int8 (integer
    modes: the stored symmetric int8) or float32 (act "none": stored floats, or the int8
    values dequantized as PackedTensor.to_dense does: float32(q) * scale, one rounding)."""

    def __init__(self, n: int, k: int, indptr: np.ndarray, cols: np.ndarray, values: np.ndarray):
        self.n, self.k = n, k
        self.indptr = np.ascontiguousarray(indptr, np.int64)
        self.cols = np.ascontiguousarray(cols, np.int32)
        self.values = np.ascontiguousarray(values)

    def rows(self, r0: int, r1: int) -> RowsCSR:
        """Rows [r0, r1) (a Conv group)."""
        a, b = int(self.indptr[r0]), int(self.indptr[r1])
        return RowsCSR(r1 - r0, self.k, self.indptr[r0:r1 + 1] - a, self.cols[a:b], self.values[a:b])


def _rows_csr(t: PackedTensor, want_int: bool) -> RowsCSR:
    """RowsCSR of a csr / bsr / nm tensor (values int8 if want_int, else float32), from the
    layouts table's canonical row form (kernels/core/layouts.py sparse_rows).

    The tensor's own layout check runs first, although the loader ran it: the kernels below
    index with these arrays without bounds checks, so a tensor that reached them any other way
    (built in code, or a loader bug) must not make them read outside the activations."""
    try:
        t.check()
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"weight {t.name!r} is not a valid {t.layout} tensor: {e}") from None
    n, k = dense_view_2d(t.shape)
    indptr, cols, vals = sparse_rows(t)
    if want_int:
        values = vals.astype(np.int8)
    elif "qdata" in t.fields:
        rows_of = np.repeat(np.arange(n), np.diff(indptr))
        scale = np.broadcast_to(t.fields["scale"].astype(np.float32).reshape(-1), (n,))
        values = vals.astype(np.float32) * scale[rows_of]       # float32 * float32: one rounding
    else:
        values = vals.astype(np.float32)
    return RowsCSR(n, k, indptr, cols, values)


def _group_rows(rc: RowsCSR, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's stored entries padded to a multiple of ``size`` (value 0, column = the
    row's last column: in range and cache-warm). Returns (group pointers int64 (N+1,),
    columns int32, values int8), the entries in row order."""
    counts = np.diff(rc.indptr)
    groups = -(-counts // size)
    gptr = np.zeros(rc.n + 1, np.int64)
    np.cumsum(groups, out=gptr[1:])
    total = int(gptr[-1]) * size
    last = np.zeros(rc.n, np.int32)
    if rc.cols.size:
        last = np.where(counts > 0, rc.cols[np.maximum(rc.indptr[1:] - 1, 0)], 0).astype(np.int32)
    cols = np.repeat(last, groups * size)
    vals = np.zeros(total, np.int8)
    rows = np.repeat(np.arange(rc.n), counts)
    dest = gptr[:-1][rows] * size + (np.arange(rc.cols.size) - rc.indptr[:-1][rows])
    cols[dest] = rc.cols
    vals[dest] = rc.values
    return gptr, np.ascontiguousarray(cols, np.int32), vals


class ValueGroups:
    """Groups of 4 stored values per row (the path without VBMI): gptr int64 (N+1,), cols int32
    (4 * groups,), gw int32 (groups,) = the group's 4 int8 values packed, lane i = value i."""

    def __init__(self, rc: RowsCSR):
        self.gptr, self.cols, vals = _group_rows(rc, 4)
        self.gw = vals.view(np.int32)


class Ell:
    """Sliced ELLPACK (csr, nm; bsr at small M): rows in blocks of 16, columns in segments of
    128. A block's stored values in segment s fill ceil(max_i count_i / 4) vectors of 64
    bytes; byte 4i + j of the block's v-th vector in s holds value 4v + j of row i of the
    block in that segment (0 where row i has fewer), so dword lane i of a vpdpbusd is row i.

    sptr int64 (blocks * nseg + 1,): the vectors of (block b, segment s) are
    [sptr[b * nseg + s], sptr[b * nseg + s + 1]); vidx u8 (V, 64): column & 127; vval int8
    (V, 64): the stored value (0 in unused lanes)."""

    def __init__(self, rc: RowsCSR):
        n, nseg = rc.n, max(1, -(-rc.k // SEGMENT))
        nblk = -(-n // TILE_M)
        counts = np.diff(rc.indptr)
        rows = np.repeat(np.arange(n), counts)
        seg = rc.cols.astype(np.int64) // SEGMENT
        key = rows * nseg + seg                                  # (row, segment), ascending
        cnt = np.bincount(key, minlength=n * nseg)
        first = np.concatenate([[0], np.cumsum(cnt)])[:-1]
        rank = np.arange(key.size) - first[key]                  # position within (row, segment)
        cnt_b = np.zeros((nblk * TILE_M, nseg), np.int64)
        cnt_b[:n] = cnt.reshape(n, nseg)
        nv = -(-cnt_b.reshape(nblk, TILE_M, nseg).max(axis=1) // 4)   # vectors per (block, segment)
        vstart = np.concatenate([[0], np.cumsum(nv.reshape(-1))])
        self.sptr = np.ascontiguousarray(vstart, np.int64)      # vectors of (block, segment)
        self.nblk = nblk
        self.vidx = np.zeros((int(vstart[-1]), VEC_BYTES), np.uint8)
        self.vval = np.zeros((int(vstart[-1]), VEC_BYTES), np.int8)
        v = vstart[(rows // TILE_M) * nseg + seg] + rank // 4
        byte = 4 * (rows % TILE_M) + rank % 4
        self.vidx[v, byte] = rc.cols & (SEGMENT - 1)
        self.vval[v, byte] = rc.values
        self.nseg = nseg


class BlockQuadTiles:
    """bsr with C % 4 == 0 and R % 4 == 0 (batched): bptr int64 (N/R+1,), qcol int32 (nb,)
    = the block's first column quad (column / 4), wq int32 (nb * R * C/4,): the block's
    values, row-major, 4 per int32."""

    def __init__(self, t: PackedTensor):
        r, c = (int(b) for b in t.params["block_shape"])
        self.r, self.c4 = r, c // 4
        self.bptr = t.fields["indptr"].astype(np.int64)
        self.qcol = (t.fields["indices"].astype(np.int64) * self.c4).astype(np.int32)
        self.wq = np.ascontiguousarray(t.fields["qdata"], np.int8).reshape(-1).view(np.int32)


class QuadTiles:
    """Per row, the column quads (4 consecutive columns from a multiple of 4) that hold its
    stored values (batched bsr with C % 4 == 0, R % 4 != 0): qptr int64 (N+1,), qidx int32
    (quad index = column / 4), qw int32 (the quad's 4 values, 0 where nothing is stored)."""

    def __init__(self, rc: RowsCSR):
        rows = np.repeat(np.arange(rc.n), np.diff(rc.indptr))
        key = rows.astype(np.int64) * (-(-rc.k // 4)) + rc.cols // 4
        uniq, inverse = np.unique(key, return_inverse=True)
        wq = np.zeros((uniq.size, 4), np.int8)
        wq[inverse, rc.cols % 4] = rc.values
        nq = -(-rc.k // 4)
        self.qptr = np.zeros(rc.n + 1, np.int64)
        np.cumsum(np.bincount(uniq // nq, minlength=rc.n), out=self.qptr[1:])
        self.qidx = (uniq % nq).astype(np.int32)
        self.qw = wq.reshape(-1).view(np.int32)


# --- activations --------------------------------------------------------------------------------

@njit(cache=True)
def _quantize_u8(x, dynamic, act_scale, act_zero_point, kpad):
    """x (M, K) float32/float64 -> (u (M, kpad) u8 = qx + 128, padding columns 128 (qx = 0);
    s_x (M,) float64): the dense int8 kernels' quantizer (vnni.quantize_shift), bit for bit
    the reference's, NaN and inf rows included."""
    u, s_x, _ = quantize_shift(x, kpad, not dynamic, act_scale, act_zero_point)
    return u, s_x


@njit(cache=True)
def _pack_tiles_t(u, k):
    """u (M, >= K) u8 -> xt (T, K, 16) u8 (the ValueGroups tiles: column c of 16 activation rows
    contiguous); rows >= M of the last tile are 128 (qx = 0). Whole 16 x 16 blocks go through
    one in-register transpose."""
    m, ld = u.shape
    ntiles = (m + TILE_M - 1) // TILE_M
    xt = np.empty((ntiles, k, TILE_M), np.uint8)
    kfull = k - k % 16
    for t in range(ntiles):
        c_rest = 0
        if (t + 1) * TILE_M <= m:
            for c0 in range(0, kfull, 16):
                _v_transpose16(u, t * TILE_M * ld + c0, ld, xt, (t * k + c0) * TILE_M)
            c_rest = kfull
        for kk in range(c_rest, k):
            for i in range(TILE_M):
                mm = t * TILE_M + i
                xt[t, kk, i] = u[mm, kk] if mm < m else np.uint8(U8_SHIFT)
    return xt


@njit(cache=True)
def _pack_tiles_quads(u, k):
    """u (M, >= K) u8 -> xq (T, ceil(K/4), 16, 4) u8 (quad j of activation row m at
    [t, j, m, :]); columns >= K and rows >= M are 128 (qx = 0). Whole 16 x 16 blocks go
    through one in-register transpose."""
    m, ld = u.shape
    ntiles = (m + TILE_M - 1) // TILE_M
    k4 = (k + 3) // 4
    xq = np.empty((ntiles, k4, TILE_M, 4), np.uint8)
    kfull = k - k % 16
    for t in range(ntiles):
        c_rest = 0
        if (t + 1) * TILE_M <= m:
            for c0 in range(0, kfull, 16):
                _v_quads16(u, t * TILE_M * ld + c0, ld, xq, (t * k4 + c0 // 4) * TILE_M * 4)
            c_rest = kfull
        for kk in range(c_rest, 4 * k4):
            for i in range(TILE_M):
                mm = t * TILE_M + i
                v = np.uint8(U8_SHIFT)
                if mm < m and kk < k:
                    v = u[mm, kk]
                xq[t, kk >> 2, i, kk & 3] = v
    return xq


# --- epilogue helpers ----------------------------------------------------------------------------

@njit(cache=True)
def _copy_t(yt, out, r0, r1):
    """out[:, r0:r1] = yt[:r1 - r0, :M].T (the batched paths compute one output row per
    tile); whole 16 x 16 blocks are transposed in registers."""
    m, n = out.shape
    mpad = yt.shape[1]
    isz = out.itemsize
    for m0 in range(0, mpad, TILE_M):
        rb = r0
        if m0 + TILE_M <= m:
            while rb + TILE_M <= r1:
                _v_transpose_out(yt, ((rb - r0) * mpad + m0) * isz, mpad * isz, out, (m0 * n + rb) * isz, n * isz)
                rb += TILE_M
        for mm in range(m0, min(m, m0 + TILE_M)):
            for r in range(rb, r1):
                out[mm, r] = yt[r - r0, mm]


@njit(cache=True)
def _pad16(a, n):
    """a (n,) float64 zero-padded to a multiple of 16."""
    out = np.zeros((n + TILE_M - 1) // TILE_M * TILE_M, np.float64)
    out[:n] = a[:n]
    return out


@njit(cache=True, inline="always")
def _chunk_bounds(c, nchunks, n):
    return c * n // nchunks, (c + 1) * n // nchunks


# --- Ell: small M int8 ----------------------------------------------------------------------------

@njit(cache=True)
def _ell_chunk(xs, nseg, sptr, vidx, vval, fix, s_w, s_x, bias, has_bias, out, b0, b1):
    """Row blocks [b0, b1) (lane i of an accumulator = row 16 b + i). Activation rows go 4
    at a time: per (block, segment) their four 128-byte segment tables (8 zmm) are loaded
    once and each vector's indices and values feed 4 permutes and 4 dot products; the rows
    left over go one at a time (two accumulators for the vpdpbusd latency)."""
    m, n = out.shape
    rowb = xs.shape[1]
    isz = out.itemsize
    for blk in range(b0, b1):
        r = blk * TILE_M
        nv = min(TILE_M, n - r)
        s0 = blk * nseg
        mg = 0
        while mg + 4 <= m:
            a0 = _v_zero()
            a1 = _v_zero()
            a2 = _v_zero()
            a3 = _v_zero()
            for s in range(nseg):
                v0, v1 = sptr[s0 + s], sptr[s0 + s + 1]
                if v1 > v0:
                    base = mg * rowb + s * SEGMENT
                    t0l = _v_load(xs, base)
                    t0h = _v_load(xs, base + 64)
                    t1l = _v_load(xs, base + rowb)
                    t1h = _v_load(xs, base + rowb + 64)
                    t2l = _v_load(xs, base + 2 * rowb)
                    t2h = _v_load(xs, base + 2 * rowb + 64)
                    t3l = _v_load(xs, base + 3 * rowb)
                    t3h = _v_load(xs, base + 3 * rowb + 64)
                    for v in range(v0, v1):
                        iv = _v_load(vidx, v * VEC_BYTES)
                        wv = _v_load(vval, v * VEC_BYTES)
                        a0 = _v_dot(a0, _v_perm(iv, t0l, t0h), wv)
                        a1 = _v_dot(a1, _v_perm(iv, t1l, t1h), wv)
                        a2 = _v_dot(a2, _v_perm(iv, t2l, t2h), wv)
                        a3 = _v_dot(a3, _v_perm(iv, t3l, t3h), wv)
            _v_epi_rows(a0, fix, s_w, bias, has_bias, r, s_x[mg], out, (mg * n + r) * isz, nv)
            _v_epi_rows(a1, fix, s_w, bias, has_bias, r, s_x[mg + 1], out, ((mg + 1) * n + r) * isz, nv)
            _v_epi_rows(a2, fix, s_w, bias, has_bias, r, s_x[mg + 2], out, ((mg + 2) * n + r) * isz, nv)
            _v_epi_rows(a3, fix, s_w, bias, has_bias, r, s_x[mg + 3], out, ((mg + 3) * n + r) * isz, nv)
            mg += 4
        while mg < m:
            a0 = _v_zero()
            a1 = _v_zero()
            for s in range(nseg):
                v0, v1 = sptr[s0 + s], sptr[s0 + s + 1]
                if v1 > v0:
                    base = mg * rowb + s * SEGMENT
                    tl = _v_load(xs, base)
                    th = _v_load(xs, base + 64)
                    v = v0
                    while v + 2 <= v1:
                        a0 = _v_dot(a0, _v_perm(_v_load(vidx, v * VEC_BYTES), tl, th), _v_load(vval, v * VEC_BYTES))
                        a1 = _v_dot(a1, _v_perm(_v_load(vidx, (v + 1) * VEC_BYTES), tl, th),
                                    _v_load(vval, (v + 1) * VEC_BYTES))
                        v += 2
                    if v < v1:
                        a0 = _v_dot(a0, _v_perm(_v_load(vidx, v * VEC_BYTES), tl, th), _v_load(vval, v * VEC_BYTES))
            _v_epi_rows(_v_add(a0, a1), fix, s_w, bias, has_bias, r, s_x[mg], out, (mg * n + r) * isz, nv)
            mg += 1


@njit(cache=True, parallel=True)
def _ell_par(xs, nseg, sptr, vidx, vval, fix, s_w, s_x, bias, has_bias, out, nchunks):
    nblk = (sptr.shape[0] - 1) // nseg
    for c in prange(nchunks):
        b0, b1 = _chunk_bounds(c, nchunks, nblk)
        _ell_chunk(xs, nseg, sptr, vidx, vval, fix, s_w, s_x, bias, has_bias, out, b0, b1)


@njit(cache=True)
def _gemm_ell(x, dynamic, act_scale, act_zero_point, nseg, sptr, vidx, vval, fix, s_w,
              bias, has_bias, out, nchunks):
    """Ell GEMM: fix, s_w, bias padded to a multiple of 16 rows."""
    xs, s_x = _quantize_u8(x, dynamic, act_scale, act_zero_point, nseg * SEGMENT)
    if nchunks <= 1:
        _ell_chunk(xs, nseg, sptr, vidx, vval, fix, s_w, s_x, bias, has_bias, out, 0, (sptr.shape[0] - 1) // nseg)
    else:
        _ell_par(xs, nseg, sptr, vidx, vval, fix, s_w, s_x, bias, has_bias, out, nchunks)


# --- ValueGroups: batched int8 ---------------------------------------------------------------------------

@njit(cache=True)
def _value_groups_chunk(xt, gptr, cols, gw, fix, s_w, s_x, bias, has_bias, out, r0, r1):
    """Rows [r0, r1): per row and activation tile, the row's groups with 4 accumulators; the
    16 results (lane = activation row) go to a transposed buffer, copied to out at the end."""
    ntiles, k = xt.shape[0], xt.shape[1]
    yt = np.empty((r1 - r0, ntiles * TILE_M), out.dtype)
    for r in range(r0, r1):
        g0, g1 = gptr[r], gptr[r + 1]
        for t in range(ntiles):
            xoff = t * k * TILE_M
            a0 = _v_zero()
            a1 = _v_zero()
            a2 = _v_zero()
            a3 = _v_zero()
            g = g0
            while g + 4 <= g1:
                a0 = _v_dot_value_groups(a0, xt, xoff, cols, gw, g)
                a1 = _v_dot_value_groups(a1, xt, xoff, cols, gw, g + 1)
                a2 = _v_dot_value_groups(a2, xt, xoff, cols, gw, g + 2)
                a3 = _v_dot_value_groups(a3, xt, xoff, cols, gw, g + 3)
                g += 4
            while g < g1:
                a0 = _v_dot_value_groups(a0, xt, xoff, cols, gw, g)
                g += 1
            _v_epi_tile(_v_add(_v_add(a0, a1), _v_add(a2, a3)), fix[r], s_w[r], s_x, t * TILE_M,
                        bias[r], has_bias, yt, ((r - r0) * yt.shape[1] + t * TILE_M) * yt.itemsize)
    _copy_t(yt, out, r0, r1)


@njit(cache=True, parallel=True)
def _value_groups_par(xt, gptr, cols, gw, fix, s_w, s_x, bias, has_bias, out, nchunks):
    n = gptr.shape[0] - 1
    for c in prange(nchunks):
        r0, r1 = _chunk_bounds(c, nchunks, n)
        _value_groups_chunk(xt, gptr, cols, gw, fix, s_w, s_x, bias, has_bias, out, r0, r1)


@njit(cache=True)
def _gemm_value_groups(x, dynamic, act_scale, act_zero_point, gptr, cols, gw, fix, s_w, bias, has_bias, out, nchunks):
    u, s_x = _quantize_u8(x, dynamic, act_scale, act_zero_point, x.shape[1])
    xt = _pack_tiles_t(u, x.shape[1])
    s_x = _pad16(s_x, s_x.shape[0])
    if nchunks <= 1:
        _value_groups_chunk(xt, gptr, cols, gw, fix, s_w, s_x, bias, has_bias, out, 0, gptr.shape[0] - 1)
    else:
        _value_groups_par(xt, gptr, cols, gw, fix, s_w, s_x, bias, has_bias, out, nchunks)


# --- bsr quads: batched int8 -------------------------------------------------------------------

@njit(cache=True)
def _quad_tiles_chunk(xq, qptr, qidx, qw, fix, s_w, s_x, bias, has_bias, out, r0, r1):
    """Rows [r0, r1) from their column quads (QuadTiles), 4 accumulators per row."""
    ntiles, k4 = xq.shape[0], xq.shape[1]
    yt = np.empty((r1 - r0, ntiles * TILE_M), out.dtype)
    for r in range(r0, r1):
        j0, j1 = qptr[r], qptr[r + 1]
        for t in range(ntiles):
            xoff = t * k4 * TILE_M * 4
            a0 = _v_zero()
            a1 = _v_zero()
            a2 = _v_zero()
            a3 = _v_zero()
            j = j0
            while j + 4 <= j1:
                a0 = _v_dot_q(a0, xq, xoff, qidx, qw, j)
                a1 = _v_dot_q(a1, xq, xoff, qidx, qw, j + 1)
                a2 = _v_dot_q(a2, xq, xoff, qidx, qw, j + 2)
                a3 = _v_dot_q(a3, xq, xoff, qidx, qw, j + 3)
                j += 4
            while j < j1:
                a0 = _v_dot_q(a0, xq, xoff, qidx, qw, j)
                j += 1
            _v_epi_tile(_v_add(_v_add(a0, a1), _v_add(a2, a3)), fix[r], s_w[r], s_x, t * TILE_M,
                        bias[r], has_bias, yt, ((r - r0) * yt.shape[1] + t * TILE_M) * yt.itemsize)
    _copy_t(yt, out, r0, r1)


@njit(cache=True, parallel=True)
def _quad_tiles_par(xq, qptr, qidx, qw, fix, s_w, s_x, bias, has_bias, out, nchunks):
    n = qptr.shape[0] - 1
    for c in prange(nchunks):
        r0, r1 = _chunk_bounds(c, nchunks, n)
        _quad_tiles_chunk(xq, qptr, qidx, qw, fix, s_w, s_x, bias, has_bias, out, r0, r1)


@njit(cache=True)
def _gemm_quad_tiles(x, dynamic, act_scale, act_zero_point, qptr, qidx, qw, fix, s_w, bias, has_bias, out, nchunks):
    u, s_x = _quantize_u8(x, dynamic, act_scale, act_zero_point, x.shape[1])
    xq = _pack_tiles_quads(u, x.shape[1])
    s_x = _pad16(s_x, s_x.shape[0])
    if nchunks <= 1:
        _quad_tiles_chunk(xq, qptr, qidx, qw, fix, s_w, s_x, bias, has_bias, out, 0, qptr.shape[0] - 1)
    else:
        _quad_tiles_par(xq, qptr, qidx, qw, fix, s_w, s_x, bias, has_bias, out, nchunks)


@njit(cache=True)
def _block_quad_tiles_chunk(xq, r, c4, bptr, qcol, wq, fix, s_w, s_x, bias, has_bias, out, br0, br1):
    """Block rows [br0, br1) of a bsr weight with R % 4 == 0: rows go 4 at a time, each
    64-byte activation quad loaded once for the 4 rows' accumulators."""
    ntiles, k4 = xq.shape[0], xq.shape[1]
    r0, r1 = br0 * r, br1 * r
    yt = np.empty((r1 - r0, ntiles * TILE_M), out.dtype)
    rowb = yt.shape[1] * yt.itemsize
    bstride = r * c4
    for br in range(br0, br1):
        b0, b1 = bptr[br], bptr[br + 1]
        for i0 in range(0, r, 4):
            row = br * r + i0
            for t in range(ntiles):
                xoff = t * k4 * TILE_M * 4
                a0 = _v_zero()
                a1 = _v_zero()
                a2 = _v_zero()
                a3 = _v_zero()
                for b in range(b0, b1):
                    q0 = np.int64(_ld(qcol, b))
                    w0 = b * bstride + i0 * c4
                    for j in range(c4):
                        xv = _v_load(xq, xoff + (q0 + j) * (TILE_M * 4))
                        a0 = _v_dot_w(a0, xv, wq, w0 + j)
                        a1 = _v_dot_w(a1, xv, wq, w0 + c4 + j)
                        a2 = _v_dot_w(a2, xv, wq, w0 + 2 * c4 + j)
                        a3 = _v_dot_w(a3, xv, wq, w0 + 3 * c4 + j)
                off = (row - r0) * rowb + t * TILE_M * yt.itemsize
                _v_epi_tile(a0, fix[row], s_w[row], s_x, t * TILE_M, bias[row], has_bias, yt, off)
                _v_epi_tile(a1, fix[row + 1], s_w[row + 1], s_x, t * TILE_M, bias[row + 1], has_bias, yt, off + rowb)
                _v_epi_tile(a2, fix[row + 2], s_w[row + 2], s_x, t * TILE_M, bias[row + 2], has_bias, yt, off + 2 * rowb)
                _v_epi_tile(a3, fix[row + 3], s_w[row + 3], s_x, t * TILE_M, bias[row + 3], has_bias, yt, off + 3 * rowb)
    _copy_t(yt, out, r0, r1)


@njit(cache=True, parallel=True)
def _block_quad_tiles_par(xq, r, c4, bptr, qcol, wq, fix, s_w, s_x, bias, has_bias, out, nchunks):
    nbr = bptr.shape[0] - 1
    for c in prange(nchunks):
        br0, br1 = _chunk_bounds(c, nchunks, nbr)
        _block_quad_tiles_chunk(xq, r, c4, bptr, qcol, wq, fix, s_w, s_x, bias, has_bias, out, br0, br1)


@njit(cache=True)
def _gemm_block_quad_tiles(x, dynamic, act_scale, act_zero_point, r, c4, bptr, qcol, wq, fix, s_w, bias, has_bias, out, nchunks):
    u, s_x = _quantize_u8(x, dynamic, act_scale, act_zero_point, x.shape[1])
    xq = _pack_tiles_quads(u, x.shape[1])
    s_x = _pad16(s_x, s_x.shape[0])
    if nchunks <= 1:
        _block_quad_tiles_chunk(xq, r, c4, bptr, qcol, wq, fix, s_w, s_x, bias, has_bias, out, 0, bptr.shape[0] - 1)
    else:
        _block_quad_tiles_par(xq, r, c4, bptr, qcol, wq, fix, s_w, s_x, bias, has_bias, out, nchunks)


# --- portable paths ------------------------------------------------------------------------------

@njit(cache=True)
def _int64_chunk(qxz, indptr, cols, vals, s_w, s_x, bias, has_bias, out, r0, r1):
    """Rows [r0, r1) of out (M, N); qxz (M, K) int16 = qx - z; int64 accumulators, exact for
    any K'."""
    m = qxz.shape[0]
    for r in range(r0, r1):
        j0, j1 = indptr[r], indptr[r + 1]
        for mm in range(m):
            acc = np.int64(0)
            for j in range(j0, j1):
                acc += np.int64(_ld(vals, j)) * np.int64(qxz[mm, _ld(cols, j)])
            y = (s_w[r] * np.float64(acc)) * s_x[mm]
            if has_bias:
                y += bias[r]
            out[mm, r] = y


@njit(cache=True, parallel=True)
def _int64_par(qxz, indptr, cols, vals, s_w, s_x, bias, has_bias, out, nchunks):
    n = indptr.shape[0] - 1
    for c in prange(nchunks):
        r0, r1 = _chunk_bounds(c, nchunks, n)
        _int64_chunk(qxz, indptr, cols, vals, s_w, s_x, bias, has_bias, out, r0, r1)


@njit(cache=True)
def _gemm_int64(x, dynamic, act_scale, act_zero_point, indptr, cols, vals, s_w, bias, has_bias, out, nchunks):
    u, s_x = _quantize_u8(x, dynamic, act_scale, act_zero_point, x.shape[1])
    qxz = u.astype(np.int16) - np.int16(U8_SHIFT + (0 if dynamic else act_zero_point))
    if nchunks <= 1:
        _int64_chunk(qxz, indptr, cols, vals, s_w, s_x, bias, has_bias, out, 0, indptr.shape[0] - 1)
    else:
        _int64_par(qxz, indptr, cols, vals, s_w, s_x, bias, has_bias, out, nchunks)


@njit(cache=True)
def _f64_chunk(x, indptr, cols, vals, bias, has_bias, out, r0, r1):
    """Rows [r0, r1) of out (M, N) = x @ W.T (+ b), float64 accumulators."""
    m = x.shape[0]
    for r in range(r0, r1):
        j0, j1 = indptr[r], indptr[r + 1]
        for mm in range(m):
            acc = 0.0
            for j in range(j0, j1):
                acc += np.float64(x[mm, _ld(cols, j)]) * np.float64(_ld(vals, j))
            if has_bias:
                acc += bias[r]
            out[mm, r] = acc


@njit(cache=True, parallel=True)
def _f64_par(x, indptr, cols, vals, bias, has_bias, out, nchunks):
    n = indptr.shape[0] - 1
    for c in prange(nchunks):
        r0, r1 = _chunk_bounds(c, nchunks, n)
        _f64_chunk(x, indptr, cols, vals, bias, has_bias, out, r0, r1)


# --- the plan ------------------------------------------------------------------------------------

def _nchunks(rows: int, work: int) -> int:
    """Row chunks for prange: 1 (the calling thread) for small work, else PAR_CHUNKS, which
    prange's static schedule spreads over the threads (not the thread count itself:
    numba.get_num_threads() costs ~1 us from Python and makes an @njit caller uncacheable).
    Results do not depend on it."""
    return 1 if work < SERIAL_WORK else max(1, min(rows, PAR_CHUNKS))


class SparsePlan:
    """A csr / bsr / nm weight prepared once (plan time) for Y = act(X) @ W.T (+ b).

    act_quant "none": RowsCSR with float32 values. The integer modes: RowsCSR with int8
    values, float64 scales s_w (N,), fix = (128 + z) * rowsum (N,) int64, and the structures
    of the fast paths (Ell, ValueGroups, BlockQuadTiles, QuadTiles), each built on its first use and kept."""

    def __init__(self, weight: PackedTensor, act_quant: str = "none", act_scale: Any = None,
                 act_zero_point: Any = 0, *, op: str = "Linear", rows: RowsCSR | None = None,
                 scale: np.ndarray | None = None):
        if weight.layout not in SPARSE_LAYOUTS:
            raise ValueError(f"{op}: layout {weight.layout!r} is not a sparse layout {SPARSE_LAYOUTS}")
        self.weight, self.act_quant, self.op = weight, act_quant, op
        self.act_scale, self.act_zero_point = act_params(op, act_quant, act_scale, act_zero_point)
        self.integer = act_quant != "none"
        if self.integer and weight.params.get("quant", "none") != "int8":
            raise ValueError(f"{op}: act_quant={act_quant!r} needs integer weights, but {weight.layout} "
                             f"weight {weight.name!r} stores float values (quant='none'); use act_quant='none'")
        self.whole = rows is None          # all rows of the weight (not a Conv group's slice)
        self.rc = rows if rows is not None else _rows_csr(weight, self.integer)
        self.n, self.k = self.rc.n, self.rc.k
        self.bias_dummy = np.zeros(1, np.float64)
        self._built: dict[str, Any] = {}
        self._runners: dict[Any, Callable] = {}     # by path name and by M
        if not self.integer:
            return
        if scale is None:
            scale = np.broadcast_to(weight.fields["scale"].astype(np.float64).reshape(-1), (self.n,))
        self.s_w = np.ascontiguousarray(scale, np.float64)
        csum = np.concatenate([[0], np.cumsum(self.rc.values, dtype=np.int64)])
        rowsum = csum[self.rc.indptr[1:]] - csum[self.rc.indptr[:-1]]
        # padded to a multiple of 16 rows: Ell's epilogue reads 16 rows at a time
        npad = -(-self.n // TILE_M) * TILE_M
        self.fix = np.zeros(npad, np.int64)
        self.fix[:self.n] = (U8_SHIFT + self.act_zero_point) * rowsum
        self.s_w = np.concatenate([self.s_w, np.ones(npad - self.n)])
        self.zero_bias = np.zeros(npad, np.float64)
        self.dynamic = act_quant == "dynamic"
        bs = weight.params.get("block_shape", (1, 4))
        self.block_shape = (int(bs[0]), int(bs[1]))

    def rows_slice(self, r0: int, r1: int) -> SparsePlan:
        """The plan of output rows [r0, r1) (a Conv group)."""
        return SparsePlan(self.weight, self.act_quant, self.act_scale, self.act_zero_point, op=self.op,
                          rows=self.rc.rows(r0, r1), scale=self.s_w[r0:r1] if self.integer else None)

    def conv_groups(self, group: int) -> list[SparsePlan]:
        """Per-group sub-plans, built once per group count."""
        key = f"groups{group}"
        if key not in self._built:
            mg = self.n // group
            self._built[key] = [self] if group == 1 else [self.rows_slice(g * mg, (g + 1) * mg)
                                                          for g in range(group)]
        return self._built[key]

    def structure(self, name: str):
        """The fast-path structure ``name`` (Ell, ValueGroups, BlockQuadTiles, QuadTiles), built on first use."""
        if name not in self._built:
            self._built[name] = {"ell": lambda: Ell(self.rc), "value_groups": lambda: ValueGroups(self.rc),
                                 "block_quad_tiles": lambda: BlockQuadTiles(self.weight),
                                 "quad_tiles": lambda: QuadTiles(self.rc)}[name]()
        return self._built[name]

    def path(self, m: int) -> str:
        """The kernel an M-row input runs: "f64" | "int64" | "ell" | "value_groups" | "block_quad_tiles" | "quad_tiles"."""
        if not self.integer:
            return "f64"
        if self.k > MAX_INT32_K:
            return "int64"
        r, c = self.block_shape
        if self.weight.layout == "bsr" and c % 4 == 0 and r % TILE_M != 0 and m >= BSR_QUADS_MIN_M:
            return "block_quad_tiles" if (r % 4 == 0 and self.whole) else "quad_tiles"
        return "ell" if USE_ELL else "value_groups"

    def __call__(self, x: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """x (M, K') C-contiguous float32/float64 -> out (M, N) = act(x) @ W.T (+ bias),
        rounded to out's dtype. bias float64 (N,) or None."""
        run = self._runners.get(x.shape[0])
        if run is None:
            path = self.path(x.shape[0])
            run = self._runners.get(path) or self._runner(path)
            self._runners[path] = self._runners[x.shape[0]] = run
        run(x, bias, out)
        return out

    def _runner(self, path: str) -> Callable:
        """run(x, bias, out) for ``path`` with the plan's arrays bound (the per-call Python
        work is a few attribute-free calls: small layers are dominated by it)."""
        rc = self.rc
        nnz_rows = max(rc.cols.size, self.n)
        if path == "f64":
            def run(x, bias, out):
                has_bias = bias is not None
                b = bias if has_bias else self.bias_dummy
                nch = _nchunks(self.n, nnz_rows * x.shape[0])
                if nch <= 1:
                    _f64_chunk(x, rc.indptr, rc.cols, rc.values, b, has_bias, out, 0, self.n)
                else:
                    _f64_par(x, rc.indptr, rc.cols, rc.values, b, has_bias, out, nch)
            return run
        quant = (self.dynamic, self.act_scale, self.act_zero_point)
        npad = self.zero_bias.shape[0]
        if path == "int64":
            def launch(x, b, hb, out, nch):
                _gemm_int64(x, *quant, rc.indptr, rc.cols, rc.values, self.s_w, b, hb, out, nch)
            rows = self.n
        else:
            st = self.structure(path)
            if path == "ell":
                rows = st.nblk

                def launch(x, b, hb, out, nch):
                    _gemm_ell(x, *quant, st.nseg, st.sptr, st.vidx, st.vval, self.fix, self.s_w, b, hb, out, nch)
            elif path == "value_groups":
                rows = self.n

                def launch(x, b, hb, out, nch):
                    _gemm_value_groups(x, *quant, st.gptr, st.cols, st.gw, self.fix, self.s_w, b, hb, out, nch)
            elif path == "block_quad_tiles":
                rows = st.bptr.shape[0] - 1

                def launch(x, b, hb, out, nch):
                    _gemm_block_quad_tiles(x, *quant, st.r, st.c4, st.bptr, st.qcol, st.wq, self.fix, self.s_w, b, hb, out, nch)
            else:
                rows = self.n

                def launch(x, b, hb, out, nch):
                    _gemm_quad_tiles(x, *quant, st.qptr, st.qidx, st.qw, self.fix, self.s_w, b, hb, out, nch)

        def run(x, bias, out):
            if bias is None:
                b, hb = self.zero_bias, False
            elif bias.shape[0] == npad:
                b, hb = bias, True
            else:                      # Ell's epilogue reads 16 rows at a time: pad
                b, hb = self.zero_bias.copy(), True
                b[:self.n] = bias
            launch(x, b, hb, out, _nchunks(rows, nnz_rows * x.shape[0]))
        return run


# --- Linear / Conv wrappers --------------------------------------------------------------------

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_float(dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def sparse_linear(x: np.ndarray, gemm: SparsePlan, bias=None) -> np.ndarray:
    """Y = act(X) @ W.T + bias with a csr / bsr / nm weight. X (..., K) float, Y (..., N) in
    X's dtype (numerics: module docstring)."""
    if type(x) is not np.ndarray:
        x = np.asarray(x)
    if x.dtype not in _KERNEL_DTYPES or x.ndim < 1 or x.shape[-1] != gemm.k:
        w = gemm.weight
        if not _is_float(x.dtype) or x.ndim < 1 or x.shape[-1] != gemm.k:
            raise ValueError(f"Linear: X {x.shape} ({x.dtype}) does not match packed weight "
                             f"{w.name!r} of shape {w.shape} (need float X (..., K))")
    if len(gemm.weight.shape) != 2:
        raise ValueError(f"Linear: packed weight {gemm.weight.name!r} has shape {gemm.weight.shape}, expected (N, K)")
    b = bias64(bias, gemm.n, "Linear")
    kdtype = x.dtype if x.dtype in _KERNEL_DTYPES else np.dtype(np.float64)
    x2 = x.reshape(-1, gemm.k)
    if not x2.flags.c_contiguous or x2.dtype != kdtype:
        x2 = np.ascontiguousarray(x2, kdtype)
    out = np.empty((x2.shape[0], gemm.n), kdtype)
    if x2.shape[0]:
        gemm(x2, b, out)
    if x.ndim != 2:
        out = out.reshape(*x.shape[:-1], gemm.n)
    return out if out.dtype == x.dtype else out.astype(x.dtype)


def packed_conv(x: np.ndarray, gemm, bias=None, strides=None, pads=None, dilations=None,
                group: int = 1) -> np.ndarray:
    """Conv with a packed weight (csr / bsr / nm here, int4_grouped in int4.py):
    kernels.reference.conv_pool.conv_by_gemm (im2col, float64 patches) with the layout's GEMM
    plan per group (``gemm.conv_groups(group)``: a sub-plan of the group's rows); dynamic
    quantization is per patch, as the reference. X (N, C, *spatial), W logical
    (M, C/group, *kernel); Y (N, M, *out) in X's dtype."""
    wshape = gemm.weight.shape
    x = np.asarray(x)
    nsp = x.ndim - 2
    m, cg = wshape[:2]
    if not _is_float(x.dtype) or len(wshape) != x.ndim or x.shape[1] != cg * group or m % group:
        raise ValueError(f"Conv: X {x.shape} ({x.dtype}), packed weight {gemm.weight.name!r} {wshape} and "
                         f"group={group} do not match (need float X, W (M, C/group, *kernel), group | M)")
    subs = gemm.conv_groups(group)
    mg = m // group

    def gemm_rows(cols, rows):
        sub = subs[rows.start // mg]
        out = np.empty((cols.shape[0], sub.n), np.float64)
        if cols.shape[0]:
            sub(np.ascontiguousarray(cols, np.float64), None, out)
        return out

    y = conv_by_gemm(x, wshape, strides, pads, dilations, group, gemm_rows)
    b = bias64(bias, m, "Conv")
    if b is not None:
        y += b.reshape((m,) + (1,) * nsp)
    return y.astype(x.dtype)


# --- registration ------------------------------------------------------------------------------

def packed_factory(op: str, fn: Callable, plan=None):
    """Kernel factory for (op, packed layout, "numba") on kernels/gemm_front.py: prepares the
    weight once with ``plan`` (SparsePlan here, Int4Plan in int4.py), then each call is
    ``fn(x, gemm, bias)`` (Linear) or ``fn(x, gemm, bias, strides=, pads=, dilations=, group=)``
    (Conv)."""
    plan = plan or SparsePlan
    if op == "Conv":
        def compute(x, g, bias, a):
            return fn(x, g, bias, **a.conv)
    else:
        def compute(x, g, bias, a):
            return fn(x, g, bias)
    return gemm_factory(op, lambda w, a, _: plan(w, **a.quant, op=op), compute, name=f"{fn.__name__}_factory")


for _layout in SPARSE_LAYOUTS:
    register("Linear", "numba", _layout)(packed_factory("Linear", sparse_linear))
    register("Conv", "numba", _layout)(packed_factory("Conv", packed_conv))
