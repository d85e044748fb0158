"""A register-blocked float32 micro-kernel for numba: C (4 x 16*NV) += A (4 x K) @ B (K x 16*NV).

numba's auto-vectorised loops keep the accumulator row in memory (one load and one store per
multiply-add vector: the attention loops ran at ~50 GFLOP/s per core, L1-bound). This
@intrinsic emits the K loop in LLVM IR with the 4 x NV accumulators of <16 x float> as loop
phis, so they stay in zmm registers: each k step loads NV vectors of B's row k, broadcasts
A's 4 values of column k, and issues 4 * NV fused multiply-adds (llvm.fma.v16f32, one
rounding each).

Arrays are C-contiguous float32 (any rank, addressed flat through their data pointer):
  A: row r of the tile at a_off + r * lda, element k at + k;
  B: row k at b_off + k * ldb, 16 * NV contiguous columns;
  C: row r at c_off + r * ldc, 16 * NV contiguous columns, read and written (C += A B).
The caller pads so that every tile is whole (4 rows, 16 * NV columns): kernels/numba_cpu/
fused.py keeps its scratch buffers padded with zeros.

Numerics: float32 products and sums, each FMA rounding once, k in increasing order per
output element: fixed by the code, so the same for any thread count.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .vnni import _c64, _splat, _vec_ptr

MR = 4                     # rows of a tile
LANES = 16                 # float32 per zmm
_F32 = ir.FloatType()
_V16F32 = ir.VectorType(_F32, LANES)
_FMA = "llvm.fma.v16f32"


def _make_tile(nv: int):
    """The @intrinsic for a 4 x (16 * nv) tile: tile(a, a_off, lda, b, b_off, ldb, k, c, c_off, ldc)."""

    @intrinsic
    def tile(typingctx, a, a_off, lda, b, b_off, ldb, kdim, c, c_off, ldc):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (a, b, c)):
            return None
        intp = types.intp
        sig = types.void(a, intp, intp, b, intp, intp, intp, c, intp, intp)

        def codegen(context, builder, signature, args):
            a_off, lda, b_off, ldb, kdim, c_off, ldc = (args[i] for i in (1, 2, 4, 5, 6, 8, 9))
            pa, pb, pc = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 7))
            fma = builder.module.globals.get(_FMA)
            if fma is None:
                fma = ir.Function(builder.module, ir.FunctionType(_V16F32, [_V16F32] * 3), _FMA)
            crow = [builder.add(c_off, builder.mul(_c64(r), ldc)) for r in range(MR)]
            init = [[builder.load(_vec_ptr(builder, pc, builder.add(crow[r], _c64(LANES * j)), _V16F32), align=4)
                     for j in range(nv)] for r in range(MR)]
            arow = [builder.gep(pa, [builder.add(a_off, builder.mul(_c64(r), lda))]) for r in range(MR)]
            pre = builder.block
            loop = builder.append_basic_block("f32tile.k")
            done = builder.append_basic_block("f32tile.store")
            builder.cbranch(builder.icmp_signed(">", kdim, _c64(0)), loop, done)
            builder.position_at_end(loop)
            kk = builder.phi(ir.IntType(64))
            acc = [[builder.phi(_V16F32) for _ in range(nv)] for _ in range(MR)]
            brow = builder.add(b_off, builder.mul(kk, ldb))
            bv = [builder.load(_vec_ptr(builder, pb, builder.add(brow, _c64(LANES * j)), _V16F32), align=4) for j in range(nv)]
            new = []
            for r in range(MR):
                av = _splat(builder, builder.load(builder.gep(arow[r], [kk]), align=4), _V16F32)
                new.append([builder.call(fma, [av, bv[j], acc[r][j]]) for j in range(nv)])
            kn = builder.add(kk, _c64(1))
            kk.add_incoming(_c64(0), pre)
            kk.add_incoming(kn, loop)
            for r in range(MR):
                for j in range(nv):
                    acc[r][j].add_incoming(init[r][j], pre)
                    acc[r][j].add_incoming(new[r][j], loop)
            builder.cbranch(builder.icmp_signed("<", kn, kdim), loop, done)
            builder.position_at_end(done)
            final = [[builder.phi(_V16F32) for _ in range(nv)] for _ in range(MR)]   # phis first
            for r in range(MR):
                for j in range(nv):
                    final[r][j].add_incoming(init[r][j], pre)
                    final[r][j].add_incoming(new[r][j], loop)
            for r in range(MR):
                for j in range(nv):
                    builder.store(final[r][j], _vec_ptr(builder, pc, builder.add(crow[r], _c64(LANES * j)), _V16F32), align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"f32_tile_4x{LANES * nv}"
    return tile


_tile16 = _make_tile(1)
_tile64 = _make_tile(4)


@njit(cache=True)
def gemm_acc(a, lda, b, ldb, kdim, c, ldc, m, n):
    """C[:m, :n] += A[:m, :kdim] @ B[:kdim, :n] for C-contiguous float32 arrays addressed flat
    with leading dimensions lda, ldb, ldc (elements); m a multiple of MR, n of LANES (the
    caller pads). 64-column tiles, then 16-column tiles for the rest."""
    n64 = n - n % (4 * LANES)
    for r0 in range(0, m, MR):
        for c0 in range(0, n64, 4 * LANES):
            _tile64(a, r0 * lda, lda, b, c0, ldb, kdim, c, r0 * ldc + c0, ldc)
        for c0 in range(n64, n, LANES):
            _tile16(a, r0 * lda, lda, b, c0, ldb, kdim, c, r0 * ldc + c0, ldc)
