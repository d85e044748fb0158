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
// * the u8 x s8 products, exactly: vpmaddubsw (u8 x s8 pairs summed into int16) would
//   saturate, 2 * 255 * 128 > 32767. So each weight is split as w = 2 wh + wl, wh = w >> 1 in
//   [-64, 63], wl = w & 1 in {0, 1}: a pair of u * wh is at most 2 * 255 * 64 = 32640 in
//   magnitude and a pair of u * wl at most 510, both exact in int16; vpmaddwd with 2 (resp. 1)
//   sums each lane's two pairs into int32, and the lane gains 2 sum(u wh) + sum(u wl) =
//   sum(u w) over its 4 bytes. The split is done once per half-vector and shared by up to 4
//   activation rows, with the decoded index; per row it costs 2 vpmaddubsw + 2 vpmaddwd + 2
//   vpaddd, one op less than widening both operands to int16 for vpmaddwd (int8_gemm_avx2.cpp).
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

// One half-vector's index, decoded for the lookups: the permute / shuffle index and the select
// masks (the sign bit of each element: a float32 lane for vblendvps, a byte for vpblendvb).
struct HalfIndex {
    __m256i sel;
    __m256i m0, m1, m2;   // dword lanes: m0 (bit 3), m1 (bit 4); byte lanes: bits 4, 5, 6
};

// dword lanes: 8 index bytes (the quad 0..31 of each row), widened to one dword per lane.
// Byte lanes: 32 index bytes (the offset 0..127, or 0..63, of each weight). vpsllw shifts 16-bit words,
// but bit 7 of each byte only receives bits of the same byte, which is all vpblendvb reads.
template <bool kByte>
QRT_TARGET_AVX2 inline HalfIndex decode(const uint8_t* idx) {
    HalfIndex d;
    if constexpr (kByte) {
        d.sel = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
        d.m0 = _mm256_slli_epi16(d.sel, 3);
        d.m1 = _mm256_slli_epi16(d.sel, 2);
        d.m2 = _mm256_slli_epi16(d.sel, 1);
    } else {
        d.sel = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx)));
        d.m0 = _mm256_slli_epi32(d.sel, 28);
        d.m1 = _mm256_slli_epi32(d.sel, 27);
        d.m2 = d.m1;
    }
    return d;
}

QRT_TARGET_AVX2 inline __m256i blend_dword(__m256i a, __m256i b, __m256i mask) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b),
                                                _mm256_castsi256_ps(mask)));
}

// vpshufb of the 16 bytes t[16 j ..] (the same table in both 128-bit halves) by the offsets'
// low 4 bits; their bit 7 is clear (offsets < 128), so no byte is zeroed.
QRT_TARGET_AVX2 inline __m256i shuffle16(const uint8_t* t, int j, __m256i sel) {
    const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16 * j));   // windows: any byte
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), sel);
}

// The activations of the half-vector's lanes from the segment t (128 bytes of u, or 64 for
// kSeg64; 32-aligned).
template <bool kByte, bool kSeg64>
QRT_TARGET_AVX2 inline __m256i fetch(const uint8_t* t, const HalfIndex& d) {
    if constexpr (kByte) {
        const __m256i a0 = _mm256_blendv_epi8(shuffle16(t, 0, d.sel), shuffle16(t, 1, d.sel), d.m0);
        const __m256i a1 = _mm256_blendv_epi8(shuffle16(t, 2, d.sel), shuffle16(t, 3, d.sel), d.m0);
        if constexpr (kSeg64) return _mm256_blendv_epi8(a0, a1, d.m1);   // offsets < 64: bits 4 and 5
        const __m256i a2 = _mm256_blendv_epi8(shuffle16(t, 4, d.sel), shuffle16(t, 5, d.sel), d.m0);
        const __m256i a3 = _mm256_blendv_epi8(shuffle16(t, 6, d.sel), shuffle16(t, 7, d.sel), d.m0);
        return _mm256_blendv_epi8(_mm256_blendv_epi8(a0, a1, d.m1), _mm256_blendv_epi8(a2, a3, d.m1), d.m2);
    } else {
        const __m256i* q = reinterpret_cast<const __m256i*>(t);
        const __m256i p0 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q), d.sel);
        const __m256i p1 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q + 1), d.sel);
        const __m256i p2 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q + 2), d.sel);
        const __m256i p3 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q + 3), d.sel);
        return blend_dword(blend_dword(p0, p1, d.m0), blend_dword(p2, p3, d.m0), d.m1);
    }
}

// The weights' halves: wh = w >> 1 (arithmetic; AVX2 has no byte shift, so as the logical
// shift of w ^ 0x80, rebiased by 64) and wl = w & 1.
QRT_TARGET_AVX2 inline void split_weights(__m256i w, __m256i& wh, __m256i& wl) {
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    const __m256i shifted = _mm256_and_si256(_mm256_srli_epi16(_mm256_xor_si256(w, bias), 1), _mm256_set1_epi8(0x7F));
    wh = _mm256_sub_epi8(shifted, _mm256_set1_epi8(0x40));
    wl = _mm256_and_si256(w, _mm256_set1_epi8(1));
}

// acc + sum over each lane's 4 bytes of x * w, from the split weights (exact, see the top).
QRT_TARGET_AVX2 inline __m256i dot4(__m256i acc, __m256i x, __m256i wh, __m256i wl) {
    const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(x, wh), _mm256_set1_epi16(2));
    const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(x, wl), _mm256_set1_epi16(1));
    return _mm256_add_epi32(acc, _mm256_add_epi32(hi, lo));
}

// 8 outputs (output rows n0 .. n0 + 7, lane = row) of activation row mrow from their raw int32
// sums: the wrapping correction corr (p.corr for sums of u * w, p.corr_signed for sums of
// qx * w), then the shared epilogue; rows from N on are not stored. corr / sw / bias are
// padded to whole 16-row blocks, so the 8-lane loads stay inside.
QRT_TARGET_AVX2 inline void store_rows8(__m256i raw, const Problem& p, int64_t n0, int64_t mrow, const int32_t* corr) {
    const int64_t n = p.w->n;
    const __m256i acc = _mm256_sub_epi32(raw, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + n0)));
    const __m256 v = int8_detail::epilogue8_avx2(acc, _mm256_loadu_pd(p.ep.sw + n0), _mm256_loadu_pd(p.ep.sw + n0 + 4),
                                                 p.ep.sx[mrow], p.ep.bias == nullptr ? nullptr : p.ep.bias + n0);
    float* out = p.y + mrow * n + n0;
    const int64_t valid = std::min<int64_t>(8, n - n0);
    if (valid == 8) {
        _mm256_storeu_ps(out, v);
    } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        std::memcpy(out, tmp, static_cast<size_t>(valid) * sizeof(float));
    }
}

QRT_TARGET_AVX2 inline bool half_is_zero(const int8_t* val) {
    const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(val));
    return _mm256_testz_si256(w, w) != 0;
}

// Half h (rows 16 b + 8 h ..) of block b, activation rows m0 .. m0 + ROWS - 1. Named
// accumulators, not an array: GCC 12 copies an array of vectors through the stack on every
// step (int8_gemm_avx512.cpp).
template <bool kByte, bool kSeg64, bool kWin, int ROWS>
QRT_TARGET_AVX2 void ell_half(const Problem& p, int64_t b, int h, int64_t m0) {
    static_assert(ROWS >= 1 && ROWS <= 4, "one accumulator per activation row");
    const SparseInt8Weight& w = *p.w;
    constexpr int64_t kIdx = kByte ? 64 : 16;       // index bytes per vector
    const uint8_t* idx = w.ell_idx.get() + h * (kIdx / 2);
    const int8_t* val = w.ell_val.get() + h * 32;
    const int64_t* sp = w.sptr.data() + b * w.nseg;
    const int64_t ldu = p.ldu;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t s = 0; s < w.nseg; ++s) {
        const uint8_t* seg = p.u + m0 * ldu + s * w.seg;
        // a segment's vectors are as many as the fullest of 16 rows needs, and every row fills
        // a prefix of them: the ones past this half's fullest row are all 0 here, skipped
        // (windows: one run of vectors per block, in window order, none skipped)
        int64_t v1 = sp[s + 1];
        while (!kWin && v1 > sp[s] && half_is_zero(val + (v1 - 1) * 64)) --v1;
        for (int64_t v = sp[s]; v < v1; ++v) {
            const uint8_t* t = kWin ? p.u + m0 * ldu + w.woff[v] : seg;
            const HalfIndex d = decode<kByte>(idx + v * kIdx);
            __m256i wh, wl;
            split_weights(_mm256_load_si256(reinterpret_cast<const __m256i*>(val + v * 64)), wh, wl);
            a0 = dot4(a0, fetch<kByte, kSeg64>(t, d), wh, wl);
            if constexpr (ROWS > 1) a1 = dot4(a1, fetch<kByte, kSeg64>(t + ldu, d), wh, wl);
            if constexpr (ROWS > 2) a2 = dot4(a2, fetch<kByte, kSeg64>(t + 2 * ldu, d), wh, wl);
            if constexpr (ROWS > 3) a3 = dot4(a3, fetch<kByte, kSeg64>(t + 3 * ldu, d), wh, wl);
        }
    }
    const int64_t n0 = b * kSparseBlockRows + 8 * h;
    store_rows8(a0, p, n0, m0, p.corr);
    if constexpr (ROWS > 1) store_rows8(a1, p, n0, m0 + 1, p.corr);
    if constexpr (ROWS > 2) store_rows8(a2, p, n0, m0 + 2, p.corr);
    if constexpr (ROWS > 3) store_rows8(a3, p, n0, m0 + 3, p.corr);
}

template <bool kByte, bool kSeg64, bool kWin = false>
void ell_blocks(const Problem& p, int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
        for (int h = 0; h < 2; ++h) {
            if (b * kSparseBlockRows + 8 * h >= p.w->n) break;   // a half of padding rows only
            int64_t m0 = 0;
            for (; m0 + 4 <= p.m; m0 += 4) ell_half<kByte, kSeg64, kWin, 4>(p, b, h, m0);
            switch (p.m - m0) {
                case 3: ell_half<kByte, kSeg64, kWin, 3>(p, b, h, m0); break;
                case 2: ell_half<kByte, kSeg64, kWin, 2>(p, b, h, m0); break;
                case 1: ell_half<kByte, kSeg64, kWin, 1>(p, b, h, m0); break;
                default: break;
            }
        }
    }
}

}  // namespace

void ell_blocks_avx2(const Problem& p, int64_t b0, int64_t b1) {
    if (p.w->windows)
        ell_blocks<true, true, true>(p, b0, b1);
    else if (p.w->lanes == EllLanes::byte && p.w->seg == kSparseSegmentNarrow)
        ell_blocks<true, true>(p, b0, b1);
    else if (p.w->lanes == EllLanes::byte)
        ell_blocks<true, false>(p, b0, b1);
    else
        ell_blocks<false, false>(p, b0, b1);
}

// --- pairs: activation rows in lanes ------------------------------------------------------------
//
// For M >= kPairsMinM the lanes hold activation rows instead of output rows, so no lane needs a
// lookup: a tile of 16 activation rows is transposed once into xt (K, 16) int16 = qx, and an
// output row's stored weights are taken two at a time, (c1, w1), (c2, w2): vpunpck{l,h}wd of
// xt[c1] and xt[c2] interleaves the two columns per activation row, and vpmaddwd against the
// broadcast int16 pair (w1, w2) adds qx[m, c1] w1 + qx[m, c2] w2 into lane m, exactly (int16
// products, int32 sums). Per pair: 2 loads, 2 unpacks, 2 vpmaddwd, 2 vpaddd for 32
// multiply-adds; the rows' sums are kept as int32 (8 output rows x 16 activation rows) and
// go through the shared epilogue 8 outputs of one activation row at a time.

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

// One pair (the j-th of a row): l / h += its two columns' qx times its two weights.
QRT_TARGET_AVX2 inline void pair_step(const int16_t* x, const uint16_t* col, const int32_t* pw, int64_t j, __m256i& l,
                                      __m256i& h) {
    const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(x + col[2 * j] * kSparseTileRows));
    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(x + col[2 * j + 1] * kSparseTileRows));
    const __m256i wv = _mm256_set1_epi32(pw[j]);
    l = _mm256_add_epi32(l, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), wv));
    h = _mm256_add_epi32(h, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), wv));
}

QRT_TARGET_AVX2 void pairs_block_avx2(const Problem& p, const int16_t* xt, int64_t blk, int64_t t) {
    const SparseInt8Weight& w = *p.w;
    const int16_t* x = xt + t * p.ldu * kSparseTileRows;
    const int64_t n = w.n, n0 = blk * 8, rows = std::min<int64_t>(8, n - n0);
    alignas(32) int32_t raw[8][kSparseTileRows] = {};
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t j0 = w.pptr[n0 + r], j1 = w.pptr[n0 + r + 1];
        const uint16_t* col = w.pcol.data() + 2 * j0;
        const int32_t* pw = w.pw.get() + j0;
        __m256i lo = _mm256_setzero_si256(), hi = lo;   // lanes: rows 0-3, 8-11 / 4-7, 12-15
        __m256i lo2 = lo, hi2 = lo;                      // the odd pairs: two independent chains
        const int64_t count = j1 - j0;
        int64_t j = 0;
        for (; j + 2 <= count; j += 2) {
            pair_step(x, col, pw, j, lo, hi);
            pair_step(x, col, pw, j + 1, lo2, hi2);
        }
        if (j < count) pair_step(x, col, pw, j, lo, hi);
        lo = _mm256_add_epi32(lo, lo2);
        hi = _mm256_add_epi32(hi, hi2);
        int32_t* o = raw[r];
        _mm_store_si128(reinterpret_cast<__m128i*>(o), _mm256_castsi256_si128(lo));
        _mm_store_si128(reinterpret_cast<__m128i*>(o + 4), _mm256_castsi256_si128(hi));
        _mm_store_si128(reinterpret_cast<__m128i*>(o + 8), _mm256_extracti128_si256(lo, 1));
        _mm_store_si128(reinterpret_cast<__m128i*>(o + 12), _mm256_extracti128_si256(hi, 1));
    }
    // sum qx * w - z * rowsum = the exact accumulator (wrapping int32, as every vector path)
    const int64_t m0 = t * kSparseTileRows, mrows = std::min<int64_t>(kSparseTileRows, p.m - m0);
    for (int64_t i = 0; i < mrows; ++i)
        store_rows8(_mm256_setr_epi32(raw[0][i], raw[1][i], raw[2][i], raw[3][i], raw[4][i], raw[5][i], raw[6][i],
                                      raw[7][i]),
                    p, n0, m0 + i, p.corr_signed);
}

// --- quad tiles: activation rows in lanes, 4 consecutive k per lane ---------------------------
//
// For bsr weights made of whole aligned column quads (sparse_gemm.h, "Quad tiles"): the quads
// list of each group of G output rows, against a tile of 16 activation rows transposed once into
// (K/4, 16, 4) bytes of qx, 8 rows (one ymm) per half.

namespace {

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
