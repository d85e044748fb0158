// Sparse int8 Linear, AVX-512 VNNI kernels: ELL (byte / dword lanes) and quad tiles (batched M). Numerics and layouts: sparse_gemm.h.
// Compiled function by function for AVX-512 (target attributes): called only when cpuid says
// the CPU has it (sparse_gemm.cpp, sparse_path_available).
#include "sparse_gemm_kernels.h"

#if QRT_INT8_X86_SIMD

#include "simd.h"

#include <algorithm>
#include <chrono>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"      // see int8_gemm_avx512.cpp
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define QRT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni")))
// The ELL kernel is one template for both lane kinds, so it is compiled with VBMI allowed; only
// the byte-lane instantiation uses a VBMI instruction (vpermi2b, explicitly), and it runs only
// on CPUs that have VBMI. The dword-lane instantiation uses AVX-512F/BW/VNNI intrinsics only.
#define QRT_TARGET_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vbmi")))

namespace qrt {
namespace sparse_detail {

namespace {

QRT_TARGET_AVX512 inline __m512i zero() { return _mm512_setzero_si512(); }

// 16 outputs (output rows n0 .. n0 + 15, lane = row) of activation row mrow from their raw
// int32 sums: wrapping correction, then the reference's float64 epilogue, rounded once; lanes
// from N on are not stored. sw / corr / bias are padded to a multiple of 16 rows.
QRT_TARGET_AVX512 inline void store_rows16(__m512i raw, const Problem& p, int64_t n0, int64_t mrow) {
    const int64_t n = p.w->n;
    const __m512i t = _mm512_sub_epi32(raw, _mm512_loadu_si512(p.corr + n0));
    const __m512d sx = _mm512_set1_pd(p.ep.sx[mrow]);
    __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(t));
    __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(t, 1));
    lo = _mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(p.ep.sw + n0), lo), sx);
    hi = _mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(p.ep.sw + n0 + 8), hi), sx);
    if (p.ep.bias != nullptr) {
        lo = _mm512_add_pd(lo, _mm512_loadu_pd(p.ep.bias + n0));
        hi = _mm512_add_pd(hi, _mm512_loadu_pd(p.ep.bias + n0 + 8));
    }
    const __m512 v = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))),
                                                         _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
    const int64_t valid = std::min<int64_t>(16, n - n0);
    _mm512_mask_storeu_ps(p.y + mrow * n + n0, static_cast<__mmask16>((1u << valid) - 1), v);
}

// --- ELL ---------------------------------------------------------------------------------------

// The three vector kinds: byte lanes over 128-byte segments (two table registers per activation
// row, vpermi2b), byte lanes over 64-byte segments (one table register, vpermb: on Zen 4 a
// (permute, vpdpbusd) pair takes ~1.4 cycles against ~1.9, sparse_byte_segment), dword lanes
// over 128-byte segments (vpermi2d).
enum class Fetch { byte128, byte64, dword };

// The activations of one vector: lane bytes from the segment table (tlo, thi) = 128 bytes of u,
// or tlo = 64 bytes of u (byte64; thi unused).
template <Fetch kF>
QRT_TARGET_AVX512_VBMI inline __m512i ell_fetch(const uint8_t* idx, __m512i tlo, __m512i thi) {
    if constexpr (kF == Fetch::byte128) {
        return _mm512_permutex2var_epi8(tlo, _mm512_load_si512(idx), thi);                // byte b: u[idx[b]]
    } else if constexpr (kF == Fetch::byte64) {
        (void)thi;
        return _mm512_permutexvar_epi8(_mm512_load_si512(idx), tlo);                      // byte b: u[idx[b]]
    } else {
        const __m512i q = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(idx)));
        return _mm512_permutex2var_epi32(tlo, q, thi);                                     // lane i: quad idx[i]
    }
}

// A block's first pass (kPrefetch) asks for the vectors this far ahead: its vectors come from
// L3 or memory there (a model streams each Linear's weights once per call; the later passes
// find them in L1 / L2). 16 vectors = 2 KB ahead in each of the two streams. Only for M >=
// kEllPrefetchMinRows: MiniLM's 24 80% Linears one after the other, 2 threads, Zen 4, us, without
// / with: M = 128 3027 / 2925, 2966 / 2901, 3199 / 3132; M = 32 1070 / 980, 1111 / 1101; at
// M = 16 486 / 492, at M = 1 150 / 155 (one pass or two: the hardware prefetcher keeps up, the
// prefetch instructions cost).
constexpr int64_t kEllPrefetchAhead = 16;
constexpr int64_t kEllPrefetchMinRows = 32;

// (integer addresses: near the end, vector v is past the arrays, where a prefetch is harmless
// but a pointer would not be valid C++)
template <int64_t kIdx>
QRT_TARGET_AVX512 inline void ell_prefetch(const uint8_t* idx, const int8_t* val, int64_t v) {
    const auto at = [v](const void* base, int64_t bytes) {
        return reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>(v * bytes));
    };
    _mm_prefetch(at(idx, kIdx), _MM_HINT_T0);
    _mm_prefetch(at(val, 64), _MM_HINT_T0);
}

// Block b (output rows 16 b ..), activation rows m0 .. m0 + ROWS - 1. ROWS = 4 (or 8 with
// one-register tables): one vector's indices and weights feed that many rows (8 table
// registers); ROWS = 1: two accumulators, alternating, for vpdpbusd's latency.
template <Fetch kF, int ROWS, bool kPrefetch = false>
QRT_TARGET_AVX512_VBMI void ell_block(const Problem& p, int64_t b, int64_t m0) {
    static_assert(ROWS == 1 || ROWS == 4 || (ROWS == 8 && kF == Fetch::byte64), "8 table registers at most");
    static_assert(!kPrefetch || ROWS > 1, "the first pass of M >= kEllPrefetchMinRows rows");
    const SparseInt8Weight& w = *p.w;
    constexpr int64_t kIdx = kF == Fetch::dword ? 16 : 64;
    constexpr bool kTwo = kF != Fetch::byte64;   // two table registers per activation row
    const uint8_t* idx = w.ell_idx.get();
    const int8_t* val = w.ell_val.get();
    const int64_t* sp = w.sptr.data() + b * w.nseg;
    const int64_t seg = w.seg, ldu = p.ldu;
    __m512i acc[ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) acc[r] = zero();
    __m512i a1 = zero();   // ROWS = 1: the second, alternating accumulator
    for (int64_t s = 0; s < w.nseg; ++s) {
        int64_t v = sp[s];
        const int64_t v1 = sp[s + 1];
        if (v == v1) continue;
        const uint8_t* t = p.u + m0 * ldu + s * seg;
        if constexpr (ROWS > 1) {
            __m512i tl[ROWS], th[ROWS];
#pragma GCC unroll 8
            for (int r = 0; r < ROWS; ++r) {
                tl[r] = _mm512_load_si512(t + r * ldu);
                th[r] = kTwo ? _mm512_load_si512(t + r * ldu + 64) : tl[r];
            }
            for (; v < v1; ++v) {
                if constexpr (kPrefetch) ell_prefetch<kIdx>(idx, val, v + kEllPrefetchAhead);
                const uint8_t* iv = idx + v * kIdx;
                const __m512i wv = _mm512_load_si512(val + v * 64);
#pragma GCC unroll 8
                for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], ell_fetch<kF>(iv, tl[r], th[r]), wv);
            }
        } else {
            const __m512i tl = _mm512_load_si512(t), th = kTwo ? _mm512_load_si512(t + 64) : tl;
            for (; v + 2 <= v1; v += 2) {
                acc[0] = _mm512_dpbusd_epi32(acc[0], ell_fetch<kF>(idx + v * kIdx, tl, th), _mm512_load_si512(val + v * 64));
                a1 = _mm512_dpbusd_epi32(a1, ell_fetch<kF>(idx + (v + 1) * kIdx, tl, th),
                                         _mm512_load_si512(val + (v + 1) * 64));
            }
            if (v < v1)
                acc[0] = _mm512_dpbusd_epi32(acc[0], ell_fetch<kF>(idx + v * kIdx, tl, th), _mm512_load_si512(val + v * 64));
        }
    }
    const int64_t n0 = b * kSparseBlockRows;
    if constexpr (ROWS > 1) {
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) store_rows16(acc[r], p, n0, m0 + r);
    } else {
        // int32 addition wraps like the lanes themselves: the sum is still exact modulo 2^32
        store_rows16(_mm512_add_epi32(acc[0], a1), p, n0, m0);
    }
}

// acc + vpdpbusd(x, w) updated in place. Inline asm because GCC 12 compiles the intrinsic in
// the windows loop with a register copy per accumulator and vector (see dpbusd_bcst below).
QRT_TARGET_AVX512 inline void dpbusd_into(__m512i& acc, __m512i x, __m512i w) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}

// The same over sliding windows (sparse_gemm.h): vector v's table is the 64 bytes of each
// activation row from woff[v], loaded with the vector (one unaligned load per row and vector,
// where fixed segments load theirs once per segment); vpermb as for 64-byte segments.
template <int ROWS, bool kPrefetch = false>
QRT_TARGET_AVX512_VBMI void ell_block_windows(const Problem& p, int64_t b, int64_t m0) {
    static_assert(ROWS == 1 || ROWS == 4 || ROWS == 8, "8 rows at most");
    const SparseInt8Weight& w = *p.w;
    const uint8_t* idx = w.ell_idx.get();
    const int8_t* val = w.ell_val.get();
    const int32_t* woff = w.woff.get();
    const int64_t ldu = p.ldu;
    const uint8_t* u = p.u + m0 * ldu;
    const int64_t v0 = w.sptr[b], v1 = w.sptr[b + 1];
    int64_t v = v0;
    if constexpr (ROWS > 1) {
        // named accumulators, not an array: GCC 12 copied an array of them through other
        // registers around every vpdpbusd here (16 extra moves a vector at 8 rows)
        __m512i a0 = zero(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (; v < v1; ++v) {
            if constexpr (kPrefetch) ell_prefetch<64>(idx, val, v + kEllPrefetchAhead);
            const __m512i iv = _mm512_load_si512(idx + v * 64);
            const __m512i wv = _mm512_load_si512(val + v * 64);
            const uint8_t* t = u + woff[v];
// (a macro: a lambda would not carry the function's target attributes)
#define QRT_ROW(r) _mm512_permutexvar_epi8(iv, _mm512_loadu_si512(t + (r) * ldu))
            dpbusd_into(a0, QRT_ROW(0), wv);
            dpbusd_into(a1, QRT_ROW(1), wv);
            dpbusd_into(a2, QRT_ROW(2), wv);
            dpbusd_into(a3, QRT_ROW(3), wv);
            if constexpr (ROWS == 8) {
                dpbusd_into(a4, QRT_ROW(4), wv);
                dpbusd_into(a5, QRT_ROW(5), wv);
                dpbusd_into(a6, QRT_ROW(6), wv);
                dpbusd_into(a7, QRT_ROW(7), wv);
            }
#undef QRT_ROW
        }
        const int64_t n0 = b * kSparseBlockRows;
        store_rows16(a0, p, n0, m0);
        store_rows16(a1, p, n0, m0 + 1);
        store_rows16(a2, p, n0, m0 + 2);
        store_rows16(a3, p, n0, m0 + 3);
        if constexpr (ROWS == 8) {
            store_rows16(a4, p, n0, m0 + 4);
            store_rows16(a5, p, n0, m0 + 5);
            store_rows16(a6, p, n0, m0 + 6);
            store_rows16(a7, p, n0, m0 + 7);
        }
    } else {
        __m512i a0 = zero(), a1 = a0;   // two accumulators, alternating (vpdpbusd's latency)
#define QRT_VEC(v) _mm512_permutexvar_epi8(_mm512_load_si512(idx + (v) * 64), _mm512_loadu_si512(u + woff[v]))
        for (; v + 2 <= v1; v += 2) {
            dpbusd_into(a0, QRT_VEC(v), _mm512_load_si512(val + v * 64));
            dpbusd_into(a1, QRT_VEC(v + 1), _mm512_load_si512(val + (v + 1) * 64));
        }
        if (v < v1) dpbusd_into(a0, QRT_VEC(v), _mm512_load_si512(val + v * 64));
#undef QRT_VEC
        store_rows16(_mm512_add_epi32(a0, a1), p, b * kSparseBlockRows, m0);   // wrapping, as the lanes
    }
}

QRT_TARGET_AVX512_VBMI void ell_blocks_windows(const Problem& p, int64_t b0, int64_t b1, int64_t m_lo, int64_t m_hi) {
    for (int64_t b = b0; b < b1; ++b) {
        int64_t m0 = m_lo;
        if (m_hi - m_lo >= kEllPrefetchMinRows) {
            ell_block_windows<8, true>(p, b, m0);
            m0 += 8;
        }
        for (; m0 + 8 <= m_hi; m0 += 8) ell_block_windows<8>(p, b, m0);
        for (; m0 + 4 <= m_hi; m0 += 4) ell_block_windows<4>(p, b, m0);
        for (; m0 < m_hi; ++m0) ell_block_windows<1>(p, b, m0);
    }
}

template <Fetch kF>
QRT_TARGET_AVX512_VBMI void ell_blocks(const Problem& p, int64_t b0, int64_t b1, int64_t m_lo, int64_t m_hi) {
    for (int64_t b = b0; b < b1; ++b) {
        // the block's first pass prefetches its vectors (kEllPrefetchAhead), the others reuse them
        constexpr int kRows = kF == Fetch::byte64 ? 8 : 4;
        int64_t m0 = m_lo;
        if (m_hi - m_lo >= kEllPrefetchMinRows) {
            ell_block<kF, kRows, true>(p, b, m0);
            m0 += kRows;
        }
        if constexpr (kRows == 8)
            for (; m0 + 8 <= m_hi; m0 += 8) ell_block<kF, 8>(p, b, m0);
        for (; m0 + 4 <= m_hi; m0 += 4) ell_block<kF, 4>(p, b, m0);
        for (; m0 < m_hi; ++m0) ell_block<kF, 1>(p, b, m0);
    }
}

}  // namespace

void ell_blocks_avx512(const Problem& p, int64_t b0, int64_t b1, int64_t m_lo, int64_t m_hi) {
    if (p.w->windows)
        ell_blocks_windows(p, b0, b1, m_lo, m_hi);
    else if (p.w->lanes == EllLanes::dword)
        ell_blocks<Fetch::dword>(p, b0, b1, m_lo, m_hi);
    else if (p.w->seg == kSparseSegmentNarrow)
        ell_blocks<Fetch::byte64>(p, b0, b1, m_lo, m_hi);
    else
        ell_blocks<Fetch::byte128>(p, b0, b1, m_lo, m_hi);
}

namespace {

// 8 independent (permute, vpdpbusd) chains; the asm statement makes each index look new every
// iteration, so the permutes are not hoisted out of the loop.
template <bool kTwo>
QRT_TARGET_AVX512_VBMI __m512i permute_pairs(int64_t iters, __m512i tl, __m512i th, __m512i w) {
    __m512i acc[8], ix[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        acc[i] = zero();
        ix[i] = _mm512_set1_epi8(static_cast<char>(9 * i + 5));
    }
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
            __m512i x = ix[i];
            asm volatile("" : "+v"(x));
            const __m512i f = kTwo ? _mm512_permutex2var_epi8(tl, x, th) : _mm512_permutexvar_epi8(x, tl);
            acc[i] = _mm512_dpbusd_epi32(acc[i], f, w);
        }
    }
    __m512i sum = acc[0];
#pragma GCC unroll 8
    for (int i = 1; i < 8; ++i) sum = _mm512_add_epi32(sum, acc[i]);
    return sum;
}

}  // namespace

QRT_TARGET_AVX512_VBMI double permute_pair_ns_avx512(bool two_tables) {
    constexpr int64_t kIters = 2048;   // 16 K pairs: ~8 us on Zen 4
    const __m512i tl = _mm512_set1_epi8(3), th = _mm512_set1_epi8(5), w = _mm512_set1_epi8(1);
    const auto t0 = std::chrono::steady_clock::now();
    const __m512i r = two_tables ? permute_pairs<true>(kIters, tl, th, w) : permute_pairs<false>(kIters, tl, th, w);
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    volatile int sink = _mm_cvtsi128_si32(_mm512_castsi512_si128(r));   // keep the loop's result alive
    (void)sink;
    return ns / (kIters * 8.0);
}

// --- quad tiles, batched M -----------------------------------------------------------------------

namespace {

// Transpose of a 16 x 16 matrix of 32-bit elements, r[i] = row i, in place. Each of the 4
// rounds swaps bit s of the row index with bit s of the column index (vpermt2d on the row
// pairs i, i + s); after all four, element (i, c) sits at (c, i). The rows are loaded into named
// registers and the rounds written out: an array indexed in loops would live on the stack.
#define QRT_PAIR(a, b, lo, hi)                          \
    {                                                    \
        const __m512i ta = a, tb = b;                    \
        a = _mm512_permutex2var_epi32(ta, lo, tb);       \
        b = _mm512_permutex2var_epi32(ta, hi, tb);       \
    }

QRT_TARGET_AVX512 inline void transpose16(__m512i* r) {
    __m512i r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3], r4 = r[4], r5 = r[5], r6 = r[6], r7 = r[7];
    __m512i r8 = r[8], r9 = r[9], r10 = r[10], r11 = r[11], r12 = r[12], r13 = r[13], r14 = r[14], r15 = r[15];
    // round s: row i (bit s clear) keeps its columns c without bit s and takes row i + s's
    // columns c - s; row i + s takes row i's columns c + s and keeps its own with bit s
    __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    QRT_PAIR(r0, r8, lo, hi) QRT_PAIR(r1, r9, lo, hi) QRT_PAIR(r2, r10, lo, hi) QRT_PAIR(r3, r11, lo, hi)
    QRT_PAIR(r4, r12, lo, hi) QRT_PAIR(r5, r13, lo, hi) QRT_PAIR(r6, r14, lo, hi) QRT_PAIR(r7, r15, lo, hi)
    lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    QRT_PAIR(r0, r4, lo, hi) QRT_PAIR(r1, r5, lo, hi) QRT_PAIR(r2, r6, lo, hi) QRT_PAIR(r3, r7, lo, hi)
    QRT_PAIR(r8, r12, lo, hi) QRT_PAIR(r9, r13, lo, hi) QRT_PAIR(r10, r14, lo, hi) QRT_PAIR(r11, r15, lo, hi)
    lo = _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    hi = _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    QRT_PAIR(r0, r2, lo, hi) QRT_PAIR(r1, r3, lo, hi) QRT_PAIR(r4, r6, lo, hi) QRT_PAIR(r5, r7, lo, hi)
    QRT_PAIR(r8, r10, lo, hi) QRT_PAIR(r9, r11, lo, hi) QRT_PAIR(r12, r14, lo, hi) QRT_PAIR(r13, r15, lo, hi)
    lo = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    hi = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    QRT_PAIR(r0, r1, lo, hi) QRT_PAIR(r2, r3, lo, hi) QRT_PAIR(r4, r5, lo, hi) QRT_PAIR(r6, r7, lo, hi)
    QRT_PAIR(r8, r9, lo, hi) QRT_PAIR(r10, r11, lo, hi) QRT_PAIR(r12, r13, lo, hi) QRT_PAIR(r14, r15, lo, hi)
    r[0] = r0, r[1] = r1, r[2] = r2, r[3] = r3, r[4] = r4, r[5] = r5, r[6] = r6, r[7] = r7;
    r[8] = r8, r[9] = r9, r[10] = r10, r[11] = r11, r[12] = r12, r[13] = r13, r[14] = r14, r[15] = r15;
}

#undef QRT_PAIR

}  // namespace

QRT_TARGET_AVX512 void quad_tile_transpose_avx512(const uint8_t* u, int64_t ldu, int64_t t, uint8_t* xq) {
    // 16 rows x 16 quads (64 bytes of each row) per step: transposed, quad j of the 16 rows is
    // one 64-byte vector (lane i = row 16 t + i)
    const int64_t k4p = ldu / 4;
    const uint8_t* rows = u + t * kSparseTileRows * ldu;
    uint8_t* dst = xq + t * k4p * 64;
    for (int64_t q0 = 0; q0 < k4p; q0 += 16) {
        alignas(64) __m512i r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(rows + i * ldu + 4 * q0);
        transpose16(r);
        for (int j = 0; j < 16; ++j) _mm512_store_si512(dst + (q0 + j) * 64, r[j]);
    }
}

namespace {

// The raw sums of output row n over the 16 activation rows of a tile (lane i = row m0 + i)
// through the reference's epilogue, ((s_w[n] * acc) * s_x[m]) + b[n] in float64, rounded once;
// returned as the float32 bits of 16 lanes.
QRT_TARGET_AVX512 inline __m512i tile_epilogue(__m512i raw, const Problem& p, int64_t n, __m512d sx_lo, __m512d sx_hi) {
    const __m512i a = _mm512_sub_epi32(raw, _mm512_set1_epi32(p.corr[n]));
    const __m512d sw = _mm512_set1_pd(p.ep.sw[n]);
    __m512d lo = _mm512_mul_pd(_mm512_mul_pd(sw, _mm512_cvtepi32_pd(_mm512_castsi512_si256(a))), sx_lo);
    __m512d hi = _mm512_mul_pd(_mm512_mul_pd(sw, _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(a, 1))), sx_hi);
    if (p.ep.bias != nullptr) {
        const __m512d b = _mm512_set1_pd(p.ep.bias[n]);
        lo = _mm512_add_pd(lo, b);
        hi = _mm512_add_pd(hi, b);
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_castps_si256(_mm512_cvtpd_ps(lo))),
                              _mm256_castps_si256(_mm512_cvtpd_ps(hi)), 1);
}

// acc + vpdpbusd(x as u8, the int8 weight dword *w broadcast to all lanes), with the broadcast
// folded into the instruction's memory operand. Inline asm because GCC 12 compiles the
// intrinsic in these loops with two register copies per accumulator and step (measured: the
// G = 4 tile loop ran at ~3.5 cycles per quad instead of ~2).
QRT_TARGET_AVX512 inline __m512i dpbusd_bcst(__m512i acc, __m512i x, const int32_t* w) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
    return acc;
}

// Output rows [n0, n0 + rows) of the tile xt into out[0 .. rows), G rows per quad group.
// Named accumulators, not an array: GCC 12 copies an array of __m512i through the stack on
// every step (int8_gemm_avx512.cpp).
template <int G>
QRT_TARGET_AVX512 void tile_rows(const Problem& p, const uint8_t* xt, int64_t n0, int64_t rows, __m512d sx_lo,
                                 __m512d sx_hi, __m512i* out) {
    const SparseInt8Weight& w = *p.w;
    const uint16_t* qcol = w.qcol.data();
    const int32_t* qw = reinterpret_cast<const int32_t*>(w.qw.get());   // (nquads, G) weight dwords
    for (int64_t r0 = 0; r0 < rows; r0 += G) {
        const int64_t grp = (n0 + r0) / G;
        const int64_t q1 = w.qptr[grp + 1];
        int64_t q = w.qptr[grp];
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        if constexpr (G == 4) {
            // one activation quad (16 rows x 4 bytes) feeds the group's 4 output rows; even and
            // odd quads into separate accumulators (8 chains: vpdpbusd's latency is ~4 cycles,
            // two issue per cycle), summed (wrapping) at the end
            __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (; q + 2 <= q1; q += 2) {
                const __m512i xv = _mm512_load_si512(xt + int64_t(qcol[q]) * 64);
                const __m512i xw = _mm512_load_si512(xt + int64_t(qcol[q + 1]) * 64);
                a0 = dpbusd_bcst(a0, xv, qw + q * 4);
                a1 = dpbusd_bcst(a1, xv, qw + q * 4 + 1);
                a2 = dpbusd_bcst(a2, xv, qw + q * 4 + 2);
                a3 = dpbusd_bcst(a3, xv, qw + q * 4 + 3);
                b0 = dpbusd_bcst(b0, xw, qw + q * 4 + 4);
                b1 = dpbusd_bcst(b1, xw, qw + q * 4 + 5);
                b2 = dpbusd_bcst(b2, xw, qw + q * 4 + 6);
                b3 = dpbusd_bcst(b3, xw, qw + q * 4 + 7);
            }
            if (q < q1) {
                const __m512i xv = _mm512_load_si512(xt + int64_t(qcol[q]) * 64);
                a0 = dpbusd_bcst(a0, xv, qw + q * 4);
                a1 = dpbusd_bcst(a1, xv, qw + q * 4 + 1);
                a2 = dpbusd_bcst(a2, xv, qw + q * 4 + 2);
                a3 = dpbusd_bcst(a3, xv, qw + q * 4 + 3);
            }
            out[r0] = tile_epilogue(_mm512_add_epi32(a0, b0), p, n0 + r0, sx_lo, sx_hi);
            out[r0 + 1] = tile_epilogue(_mm512_add_epi32(a1, b1), p, n0 + r0 + 1, sx_lo, sx_hi);
            out[r0 + 2] = tile_epilogue(_mm512_add_epi32(a2, b2), p, n0 + r0 + 2, sx_lo, sx_hi);
            out[r0 + 3] = tile_epilogue(_mm512_add_epi32(a3, b3), p, n0 + r0 + 3, sx_lo, sx_hi);
        } else {
            // one row: four accumulators over consecutive quads, summed (wrapping) at the end
            for (; q + 4 <= q1; q += 4) {
                a0 = dpbusd_bcst(a0, _mm512_load_si512(xt + int64_t(qcol[q]) * 64), qw + q);
                a1 = dpbusd_bcst(a1, _mm512_load_si512(xt + int64_t(qcol[q + 1]) * 64), qw + q + 1);
                a2 = dpbusd_bcst(a2, _mm512_load_si512(xt + int64_t(qcol[q + 2]) * 64), qw + q + 2);
                a3 = dpbusd_bcst(a3, _mm512_load_si512(xt + int64_t(qcol[q + 3]) * 64), qw + q + 3);
            }
            for (; q < q1; ++q) a0 = dpbusd_bcst(a0, _mm512_load_si512(xt + int64_t(qcol[q]) * 64), qw + q);
            const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
            out[r0] = tile_epilogue(sum, p, n0 + r0, sx_lo, sx_hi);
        }
    }
}

}  // namespace

QRT_TARGET_AVX512 void quad_tile_avx512(const Problem& p, const uint8_t* xq, int64_t blk, int64_t t) {
    const SparseInt8Weight& w = *p.w;
    const int64_t n0 = blk * kSparseBlockRows, m0 = t * kSparseTileRows;
    const int64_t nrows = std::min<int64_t>(kSparseBlockRows, w.n - n0);   // a multiple of G
    const uint8_t* xt = xq + t * (p.ldu / 4) * 64;
    const __m512d sx_lo = _mm512_loadu_pd(p.ep.sx + m0), sx_hi = _mm512_loadu_pd(p.ep.sx + m0 + 8);
    alignas(64) __m512i out[16];   // out[r]: output row n0 + r, lane i = activation row m0 + i (float bits)
    for (int64_t r = nrows; r < 16; ++r) out[r] = _mm512_setzero_si512();
    if (w.quad_rows == 4)
        tile_rows<4>(p, xt, n0, nrows, sx_lo, sx_hi, out);
    else
        tile_rows<1>(p, xt, n0, nrows, sx_lo, sx_hi, out);
    transpose16(out);   // out[i]: activation row m0 + i, lane r = output row n0 + r
    const __mmask16 cols = static_cast<__mmask16>((1u << nrows) - 1);
    const int64_t mrows = std::min<int64_t>(kSparseTileRows, p.m - m0);
    for (int64_t i = 0; i < mrows; ++i)
        _mm512_mask_storeu_ps(p.y + (m0 + i) * w.n + n0, cols, _mm512_castsi512_ps(out[i]));
}

}  // namespace sparse_detail
}  // namespace qrt

#endif  // QRT_INT8_X86_SIMD
