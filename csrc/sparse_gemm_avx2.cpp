// Sparse int8 Linear, AVX2 kernels (CPUs without AVX-512 VNNI): ELL with byte or dword lanes,
// pairs and quad tiles (batched M).
// Numerics and layouts: sparse_gemm.h.
// Compiled function by function for AVX2 (target attributes): called only when cpuid says the
// CPU has it (sparse_gemm.cpp, sparse_path_available).
//
// The ELL vectors built at pack time serve unchanged: a vector (16 output rows x 4 weights of
// each, in one 128-byte segment of K) is read as two halves of 8 rows, each one ymm of 8 int32
// lanes (lane = output row). Per half-vector and activation row:
//
// * the lanes' activations, without a gather (vpgatherdd is microcoded on AMD and, on Intel,
//   several times slower since the GDS microcode mitigation): AVX2 has no two-table permute
//   (vpermi2b / vpermi2d), so each lane's bytes are looked up in the segment's 128 bytes of u
//   by a permute within each part of the segment, then a binary tree of selects on the
//   remaining index bits:
//     dword lanes: vpermd on each 32-byte quarter (quad index bits 0-2), vblendvps on bits 3
//                  and 4: 4 permutes + 3 blends for 8 quads;
//     byte lanes:  vpshufb on each 16-byte part, broadcast to both 128-bit halves (offset
//                  bits 0-3), vpblendvb on bits 4, 5 and 6: 8 shuffles + 7 blends for 32 bytes
//                  of a 128-byte segment, 4 shuffles + 3 blends (bits 4 and 5) of a 64-byte one
//                  (the segment sparse_byte_segment picks wherever the int8 path is AVX2-class).
// * the u8 x s8 products, exactly, by one of three steps (csrc/sparse_ell_half.h): "split"
//   (any weight: w = 2 (w >> 1) + (w & 1), two vpmaddubsw that cannot saturate), "signed_pairs"
//   (a weight without -128, ell_no_min: vpmaddubsw(|qx|, sign(qx) w), the dense AVX2 tile's
//   step, 6 operations a row and nothing per half-vector) and, on the avx_vnni path, "vnni"
//   (one vpdpbusd a row; sparse_gemm_avxvnni.cpp compiles the same loops for AVX-VNNI).
//
// int32 exactness: the lanes and the correction wrap modulo 2^32 (vpaddd, vpsubd); the true
// |acc| <= K * 255 * 128 < 2^31 for K <= kMaxKInt32, which sparse_path_available requires of
// every vector path, so the wrapped result is the exact accumulator.
//
// Then the correction and the shared AVX2 epilogue (int8_detail::epilogue8_avx2), 8 outputs of
// one activation row at a time. Rows are handled in groups of 4 (then 3, 2, 1): each group
// reads the block's vectors once per half.
#include "sparse_gemm_kernels.h"

#if QRT_INT8_X86_SIMD

#include "simd.h"

#include <algorithm>
#include <cstring>

#define QRT_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace qrt {
namespace sparse_detail {

namespace {

#define QRT_ELL_TARGET QRT_TARGET_AVX2
#include "sparse_ell_half.h"
#undef QRT_ELL_TARGET

// r[i] = row i of an 8 x 8 matrix of 32-bit elements; afterwards r[j] = column j.
QRT_TARGET_AVX2 inline void transpose8x8_epi32(__m256i* r) {
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

}  // namespace

void ell_blocks_avx2(const Problem& p, int64_t b0, int64_t b1, EllStep step) {
    switch (step) {
#if QRT_INT8_AVX_VNNI
        case EllStep::vnni: ell_blocks_avx_vnni(p, b0, b1); break;
#endif
        case EllStep::signed_pairs: ell_blocks_step<EllStep::signed_pairs>(p, b0, b1); break;
        default: ell_blocks_step<EllStep::split>(p, b0, b1); break;
    }
}

// --- pairs: activation rows in lanes ------------------------------------------------------------
//
// For M >= kPairsMinM the lanes hold activation rows instead of output rows, so no lane needs a
// lookup: a tile of 16 activation rows is transposed once into xt (K, 16) int16 = qx, and an
// output row's stored weights are taken two at a time, (c1, w1), (c2, w2): vpunpck{l,h}wd of
// xt[c1] and xt[c2] interleaves the two columns per activation row, and vpmaddwd against the
// broadcast int16 pair (w1, w2) adds qx[m, c1] w1 + qx[m, c2] w2 into lane m, exactly (int16
// products, int32 sums). Per pair: 2 loads, 2 unpacks, 2 vpmaddwd, 2 vpaddd for 32
// multiply-adds. A work item takes up to two tiles (sparse_gemm.cpp, kPairsMaxTiles), so each
// pair's column indices and weight broadcast serve 32 activation rows. The rows' sums are kept
// as int32 (8 output rows x 16 activation rows a tile) and go through the epilogue of
// pairs_store, 4 outputs of one activation row at a time.

// 16 columns k0 .. k0 + 15 of the tile's 16 rows of u at a time: a 16 x 16 byte transpose in
// four unpack stages (bytes, words, dwords, qwords), then each column widened to 16 int16 qx
// = u - 128 and stored whole. (The scalar loop it replaces wrote one int16 at a stride of 32
// bytes per step: a 16-row call at K = 768 on a 16-row weight, one thread, X as AVX2, 10.2 ->
// 7.2 us.)
QRT_TARGET_AVX2 void pairs_transpose_avx2(const Problem& p, int64_t t, int16_t* xt) {
    int16_t* dst = xt + t * p.ldu * kSparseTileRows;
    const uint8_t* src = p.u + t * kSparseTileRows * p.ldu;   // rows >= M hold 128: qx = 0
    const __m256i bias = _mm256_set1_epi16(128);
    for (int64_t k0 = 0; k0 < p.ldu; k0 += 16) {   // ldu: a multiple of kSparseSegment
        __m128i a[16], b[16];
        for (int r = 0; r < 16; ++r) a[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + r * p.ldu + k0));
        for (int i = 0; i < 8; ++i) {   // rows 2i, 2i + 1 interleaved: columns 0-7 / 8-15
            b[2 * i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
            b[2 * i + 1] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
        }
        for (int g = 0; g < 4; ++g) {   // rows 4g .. 4g + 3: a[4g + j] holds columns 4j .. 4j + 3
            a[4 * g] = _mm_unpacklo_epi16(b[4 * g], b[4 * g + 2]);
            a[4 * g + 1] = _mm_unpackhi_epi16(b[4 * g], b[4 * g + 2]);
            a[4 * g + 2] = _mm_unpacklo_epi16(b[4 * g + 1], b[4 * g + 3]);
            a[4 * g + 3] = _mm_unpackhi_epi16(b[4 * g + 1], b[4 * g + 3]);
        }
        for (int h = 0; h < 2; ++h)     // rows 8h .. 8h + 7: b[8h + j] holds columns 2j, 2j + 1
            for (int j = 0; j < 4; ++j) {
                b[8 * h + 2 * j] = _mm_unpacklo_epi32(a[8 * h + j], a[8 * h + 4 + j]);
                b[8 * h + 2 * j + 1] = _mm_unpackhi_epi32(a[8 * h + j], a[8 * h + 4 + j]);
            }
        for (int j = 0; j < 8; ++j) {   // columns 2j and 2j + 1, rows 0-7 then 8-15
            const __m128i c0 = _mm_unpacklo_epi64(b[j], b[8 + j]);
            const __m128i c1 = _mm_unpackhi_epi64(b[j], b[8 + j]);
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (k0 + 2 * j) * kSparseTileRows),
                               _mm256_sub_epi16(_mm256_cvtepu8_epi16(c0), bias));
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (k0 + 2 * j + 1) * kSparseTileRows),
                               _mm256_sub_epi16(_mm256_cvtepu8_epi16(c1), bias));
        }
    }
}

// One pair (the j-th of a row): l / h += its two columns' qx times its two weights. A column's
// 16 int16 are 32 bytes at x + 32 c; with kX4 the stored index is 4 c and the address x + 8 (4 c)
// is the load's own scaled-index form, without a shift per column.
template <bool kX4>
QRT_TARGET_AVX2 inline void pair_step(const int16_t* x, const uint16_t* col, const int32_t* pw, int64_t j, __m256i& l,
                                      __m256i& h) {
    constexpr size_t kStride = kX4 ? 8 : 32;   // bytes per unit of the stored index
    const char* xb = reinterpret_cast<const char*>(x);
    const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + col[2 * j] * kStride));
    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + col[2 * j + 1] * kStride));
    const __m256i wv = _mm256_set1_epi32(pw[j]);
    l = _mm256_add_epi32(l, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), wv));
    h = _mm256_add_epi32(h, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), wv));
}

namespace {

// The sums of one (row block, tile) through the epilogue: lo_r[r] / hi_r[r] hold output row
// n0 + r over the tile's 16 activation rows (lanes: rows 0-3, 8-11 / 4-7, 12-15). Per 4 output
// rows and half, a 4 x 4 transpose of 64-bit lanes (8 shuffles) leaves vectors whose 64-bit
// lane i is output row n + i and whose two 32-bit halves are two activation rows. Each half
// becomes float64 without a shuffle: the correction subtracted here is p.corr_signed = z * rowsum
// - 2^31, so a half holds the exact accumulator plus 2^31 as an unsigned 32-bit value v, and
// the float64 with high word 0x43300000 and low word v is 2^52 + v exactly; minus 2^52 + 2^31
// it is the accumulator (the value vcvtdq2pd gives). Then the shared epilogue's operations in
// its order, ((s_w * acc) * s_x) + b, rounded once to float32: the same bits. (The previous form,
// two 8 x 8 transposes of 32-bit lanes and vcvtdq2pd / vextracti128 / vinsertf128 per 8
// outputs, was 10 shuffle-port operations per 8 outputs against 6 here; a near-empty (1536,
// 384) weight at M = 128, X as AVX2, one thread: 116-120 -> 108-115 us.) kFull: all 16
// activation rows and 8 output rows exist, so no bound is tested (the test-laden form of the
// loop, with the rows' addresses recomputed per store, was slower than the previous epilogue).
template <bool kFull>
QRT_TARGET_AVX2 inline void pairs_store_t(const Problem& p, const __m256i* lo_r, const __m256i* hi_r, int64_t n0, int64_t t) {
    const int64_t n = p.w->n, m0 = t * kSparseTileRows, mrows = kFull ? 16 : std::min<int64_t>(kSparseTileRows, p.m - m0);
    const int64_t valid = kFull ? 8 : std::min<int64_t>(8, n - n0);
    const __m256i high = _mm256_set1_epi64x(0x4330000000000000LL);
    const __m256d offset = _mm256_set1_pd(4503601774854144.0);   // 2^52 + 2^31
    const double* sx = p.ep.sx + m0;
    float* y0 = p.y + m0 * n;
    for (int g = 0; g < 2; ++g) {
        if (!kFull && 4 * g >= valid) break;
        const int64_t nc = n0 + 4 * g, cols = kFull ? 4 : std::min<int64_t>(4, valid - 4 * g);
        const __m256d sw = _mm256_loadu_pd(p.ep.sw + nc);
        const double* bias = p.ep.bias == nullptr ? nullptr : p.ep.bias + nc;
        const __m256d b = bias == nullptr ? _mm256_setzero_pd() : _mm256_loadu_pd(bias);
        for (int h = 0; h < 2; ++h) {
            const __m256i* src = (h == 0 ? lo_r : hi_r) + 4 * g;
            __m256i a[4];
            for (int i = 0; i < 4; ++i) a[i] = _mm256_sub_epi32(src[i], _mm256_set1_epi32(p.corr_signed[nc + i]));
            const __m256i t0 = _mm256_unpacklo_epi64(a[0], a[1]), t1 = _mm256_unpackhi_epi64(a[0], a[1]);
            const __m256i t2 = _mm256_unpacklo_epi64(a[2], a[3]), t3 = _mm256_unpackhi_epi64(a[2], a[3]);
            const __m256i q[4] = {_mm256_permute2x128_si256(t0, t2, 0x20), _mm256_permute2x128_si256(t1, t3, 0x20),
                                  _mm256_permute2x128_si256(t0, t2, 0x31), _mm256_permute2x128_si256(t1, t3, 0x31)};
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
                const int64_t r0 = (j & 1) * 2 + (j >> 1) * 8 + 4 * h;   // q[j]: activation rows r0 (low halves), r0 + 1
#pragma GCC unroll 2
                for (int e = 0; e < 2; ++e) {
                    if (!kFull && r0 + e >= mrows) break;
                    const __m256i bits = e == 0 ? _mm256_blend_epi32(q[j], high, 0xAA)
                                                : _mm256_or_si256(_mm256_srli_epi64(q[j], 32), high);
                    const __m256d acc = _mm256_sub_pd(_mm256_castsi256_pd(bits), offset);
                    __m256d v = _mm256_mul_pd(_mm256_mul_pd(sw, acc), _mm256_broadcast_sd(sx + r0 + e));
                    if (bias != nullptr) v = _mm256_add_pd(v, b);
                    const __m128 f = _mm256_cvtpd_ps(v);
                    float* out = y0 + (r0 + e) * n + nc;
                    if (kFull || cols == 4) {
                        _mm_storeu_ps(out, f);
                    } else {
                        alignas(16) float tmp[4];
                        _mm_store_ps(tmp, f);
                        std::memcpy(out, tmp, static_cast<size_t>(cols) * sizeof(float));
                    }
                }
            }
        }
    }
}

QRT_TARGET_AVX2 inline void pairs_store(const Problem& p, const __m256i* lo_r, const __m256i* hi_r, int64_t n0, int64_t t) {
    if (p.m - t * kSparseTileRows >= kSparseTileRows && p.w->n - n0 >= 8)
        pairs_store_t<true>(p, lo_r, hi_r, n0, t);
    else
        pairs_store_t<false>(p, lo_r, hi_r, n0, t);
}

// kTiles consecutive tiles t .. t + kTiles - 1 against the block's 8 output rows: each pair's
// column indices and weights are loaded once for all of them.
template <bool kX4, int kTiles>
QRT_TARGET_AVX2 void pairs_block(const Problem& p, const int16_t* xt, int64_t blk, int64_t t) {
    const SparseInt8Weight& w = *p.w;
    const int16_t* x = xt + t * p.ldu * kSparseTileRows;
    const int64_t n = w.n, n0 = blk * 8, rows = std::min<int64_t>(8, n - n0);
    // per tile and output row r, its sums over the tile's 16 activation rows; rows >= `rows` stay 0
    __m256i lo_r[kTiles][8], hi_r[kTiles][8];
    for (int q = 0; q < kTiles; ++q)
        for (int r = 0; r < 8; ++r) lo_r[q][r] = hi_r[q][r] = _mm256_setzero_si256();
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t j0 = w.pptr[n0 + r], j1 = w.pptr[n0 + r + 1];
        const uint16_t* col = w.pcol.data() + 2 * j0;
        const int32_t* pw = w.pw.get() + j0;
        const int64_t count = j1 - j0;
        if constexpr (kTiles == 1) {
            __m256i lo = _mm256_setzero_si256(), hi = lo;   // lanes: rows 0-3, 8-11 / 4-7, 12-15
            __m256i lo2 = lo, hi2 = lo;                      // the odd pairs: two independent chains
            int64_t j = 0;
            for (; j + 2 <= count; j += 2) {
                pair_step<kX4>(x, col, pw, j, lo, hi);
                pair_step<kX4>(x, col, pw, j + 1, lo2, hi2);
            }
            if (j < count) pair_step<kX4>(x, col, pw, j, lo, hi);
            lo_r[0][r] = _mm256_add_epi32(lo, lo2);
            hi_r[0][r] = _mm256_add_epi32(hi, hi2);
        } else {
            __m256i lo[kTiles], hi[kTiles];
            for (int q = 0; q < kTiles; ++q) lo[q] = hi[q] = _mm256_setzero_si256();
            for (int64_t j = 0; j < count; ++j)
                for (int q = 0; q < kTiles; ++q) pair_step<kX4>(x + q * p.ldu * kSparseTileRows, col, pw, j, lo[q], hi[q]);
            for (int q = 0; q < kTiles; ++q) {
                lo_r[q][r] = lo[q];
                hi_r[q][r] = hi[q];
            }
        }
    }
    for (int q = 0; q < kTiles; ++q) pairs_store(p, lo_r[q], hi_r[q], n0, t + q);
}

}  // namespace

QRT_TARGET_AVX2 void pairs_block_avx2(const Problem& p, const int16_t* xt, int64_t blk, int64_t t, int tiles) {
    const bool x4 = p.w->pcol_x4();
    if (tiles == 2)
        x4 ? pairs_block<true, 2>(p, xt, blk, t) : pairs_block<false, 2>(p, xt, blk, t);
    else
        x4 ? pairs_block<true, 1>(p, xt, blk, t) : pairs_block<false, 1>(p, xt, blk, t);
}

// --- quad tiles: activation rows in lanes, 4 consecutive k per lane ---------------------------
//
// For bsr weights made of whole aligned column quads (sparse_gemm.h, "Quad tiles"): the quads
// list of each group of G output rows, against a tile of 16 activation rows transposed once into
// (K/4, 16, 4) bytes of qx, 8 rows (one ymm) per half.

namespace {

#define QRT_QUAD_TARGET QRT_TARGET_AVX2
#include "sparse_quad_half.h"
#undef QRT_QUAD_TARGET

}  // namespace

QRT_TARGET_AVX2 void quad_tile_transpose_avx2(const uint8_t* u, int64_t ldu, int64_t t, uint8_t* xq, bool narrow) {
    // 8 rows x 8 quads (32 bytes of each row) per step, transposed as 32-bit elements: quad j of
    // the 8 rows is one 32-byte vector; u ^ 0x80 = qx as int8 (narrow weights: u as it is)
    const int64_t k4p = ldu / 4;   // a multiple of 32: ldu is a multiple of kSparseSegment
    const __m256i flip = _mm256_set1_epi8(narrow ? 0 : static_cast<char>(0x80));
    uint8_t* dst = xq + t * k4p * 64;
    for (int h = 0; h < 2; ++h) {
        const uint8_t* rows = u + (t * kSparseTileRows + 8 * h) * ldu;
        for (int64_t q0 = 0; q0 < k4p; q0 += 8) {
            __m256i r[8];
            for (int i = 0; i < 8; ++i)
                r[i] = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(rows + i * ldu + 4 * q0)), flip);
            transpose8x8_epi32(r);
            for (int j = 0; j < 8; ++j)
                _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (q0 + j) * 64 + 32 * h), r[j]);
        }
    }
}

QRT_TARGET_AVX2 void quad_tile_avx2(const Problem& p, const uint8_t* xq, int64_t blk, int64_t t, bool vnni) {
    const SparseInt8Weight& w = *p.w;
    const int64_t n0 = blk * kSparseBlockRows, m0 = t * kSparseTileRows;
    const int64_t nrows = std::min<int64_t>(kSparseBlockRows, w.n - n0);   // a multiple of G
    const int8_t* xt = reinterpret_cast<const int8_t*>(xq + t * (p.ldu / 4) * 64);
    // raw[h][r]: output row n0 + r, lane i = activation row m0 + 8 h + i (sum u * w, or qx * w)
    __m256i raw[2][kSparseBlockRows];
    const bool unsigned_sums = vnni || w.quads_narrow;
#if QRT_INT8_AVX_VNNI
    if (vnni)
        quad_raw_avx_vnni(w, xt, n0, nrows, raw);
    else
#endif
    if (w.quads_narrow)
        quad_raw<QuadStep::narrow>(w, xt, n0, nrows, raw);
    else
        quad_raw<QuadStep::signed_pairs>(w, xt, n0, nrows, raw);
    // the exact accumulators through store_rows8, 8 output rows of one activation row at a time
    // (an 8 x 8 transpose per quarter of the tile)
    const int64_t mrows = std::min<int64_t>(kSparseTileRows, p.m - m0);
    const int32_t* corr = unsigned_sums ? p.corr : p.corr_signed;   // sums of u * w, or of qx * w
    for (int og = 0; og < 2 && 8 * og < nrows; ++og) {
        for (int h = 0; h < 2 && 8 * h < mrows; ++h) {
            __m256i c[8];
            for (int r = 0; r < 8; ++r) c[r] = raw[h][8 * og + r];
            transpose8x8_epi32(c);   // c[i]: activation row m0 + 8 h + i, lane = output row n0 + 8 og + lane
            for (int i = 0; i < 8 && 8 * h + i < mrows; ++i) store_rows8(c[i], p, n0 + 8 * og, m0 + 8 * h + i, corr);
        }
    }
}

}  // namespace sparse_detail
}  // namespace qrt

#endif  // QRT_INT8_X86_SIMD
