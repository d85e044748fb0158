// Internal to the sparse int8 Linear (sparse_gemm.cpp, sparse_gemm_avx512.cpp and
// sparse_gemm_avx2.cpp): what one call hands its kernels. Numerics and layouts: sparse_gemm.h.
#pragma once

#include <cstdint>

#include "int8_gemm_kernels.h"
#include "sparse_gemm.h"

namespace qrt {
namespace sparse_detail {

// How the 256-bit ELL kernel multiplies (sparse_ell_half.h): split weights (any weight, sums of
// u * w), signed pairs (no ELL weight is -128, sums of qx * w) or one vpdpbusd (the avx_vnni
// path, sums of u * w).
enum class EllStep { split, signed_pairs, vnni };

// One call, after the prologue (activations quantized).
struct Problem {
    const SparseInt8Weight* w;
    const uint8_t* u;          // (mpad, ldu) u8 = qx + 128; 128 from K on and in rows >= M
    int64_t ldu;               // a multiple of kSparseSegment (ELL tables, 16-quad transposes)
    int64_t m;                 // rows of X and Y
    const int32_t* corr;       // (npad,) (128 + z) * rowsum[n] wrapped to int32
    const int32_t* corr_signed;  // (npad,) z * rowsum[n] wrapped: for kernels summing qx * w;
                                 // on the pairs path z * rowsum[n] - 2^31 (pairs_store's offset)
    int8_detail::Epilogue ep;  // sw = w.scale, sx (mpad,), bias (npad,) or nullptr
    float* y;                  // (M, N)
};

#if QRT_INT8_X86_SIMD
// ELL blocks [b0, b1), activation rows [m_lo, m_hi) (byte lanes need VBMI).
void ell_blocks_avx512(const Problem& p, int64_t b0, int64_t b1, int64_t m_lo, int64_t m_hi);
// Nanoseconds per (byte permute, vpdpbusd) pair in a short register-only loop: vpermi2b (two
// tables) or vpermb (one). Needs AVX-512 VBMI + VNNI.
double permute_pair_ns_avx512(bool two_tables);
// Quad tiles: activation tile t (rows 16 t ..) of u transposed into xq + t * k4p * 64 bytes,
// (k4p, 16, 4) u8 with k4p = ldu / 4.
void quad_tile_transpose_avx512(const uint8_t* u, int64_t ldu, int64_t t, uint8_t* xq);
// Quad tiles: output rows [16 blk, 16 blk + 16) x activation tile t, from xq as above.
void quad_tile_avx512(const Problem& p, const uint8_t* xq, int64_t blk, int64_t t);
// AVX2: ELL blocks [b0, b1), every activation row, byte or dword lanes (no VBMI needed), with
// the step the driver (sparse_int8_linear_isa) picks, which also sets the correction its sums
// need (sparse_ell_half.h).
void ell_blocks_avx2(const Problem& p, int64_t b0, int64_t b1, EllStep step);
// AVX2 quad tiles: activation tile t (rows 16 t ..) of u as qx = u ^ 0x80 (narrow weights: u
// itself), transposed into
// xq + t * k4p * 64 bytes, (k4p, 16, 4) int8 with k4p = ldu / 4 (the AVX-512 tiles' layout).
void quad_tile_transpose_avx2(const uint8_t* u, int64_t ldu, int64_t t, uint8_t* xq, bool narrow);
// AVX2 quad tiles: output rows [16 blk, 16 blk + 16) x activation tile t, from xq as above
// (vnni: the AVX-VNNI step, from a tile transposed as narrow, u itself; any weight).
void quad_tile_avx2(const Problem& p, const uint8_t* xq, int64_t blk, int64_t t, bool vnni);
#if QRT_INT8_AVX_VNNI
// The AVX-VNNI ELL (sparse_gemm_avxvnni.cpp): ell_blocks_avx2's loops with one vpdpbusd a row.
void ell_blocks_avx_vnni(const Problem& p, int64_t b0, int64_t b1);
// The AVX-VNNI quad tiles' sums (sparse_gemm_avxvnni.cpp): raw[h][r] = sum u * w of output row
// n0 + r (rows from nrows on: 0) against activation rows 8 h .. 8 h + 7 of the tile at xt.
void quad_raw_avx_vnni(const SparseInt8Weight& w, const int8_t* xt, int64_t n0, int64_t nrows,
                       __m256i (*raw)[kSparseBlockRows]);
#endif
// AVX2 pairs: activation tile t (rows 16 t ..) of u as qx, transposed into
// xt + t * ldu * 16: (ldu, 16) int16, 0 in rows >= M.
void pairs_transpose_avx2(const Problem& p, int64_t t, int16_t* xt);
// AVX2 pairs: output rows [8 blk, 8 blk + 8) x activation tiles t .. t + tiles - 1 (tiles 1 or 2),
// from xt as above.
void pairs_block_avx2(const Problem& p, const int16_t* xt, int64_t blk, int64_t t, int tiles);
#endif

}  // namespace sparse_detail
}  // namespace qrt
