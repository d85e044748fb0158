// Float32 attention, AVX2 + FMA kernels (CPUs without AVX-512): the AVX-512 ones of
// attention.cpp in 8 lanes. Numerics: attention.h. Compiled for AVX2/FMA with target
// attributes (no -march); attention.cpp calls them only when cpuid says the CPU has both.
//
// No mask registers on AVX2: the tails of a row (sk % 8 elements) use vmaskmovps loads and
// stores (the lanes past the end are neither read nor written, so a mask row that is the
// caller's own array is safe) and the padded lanes are kept out of the maximum and the sum
// by blends.
#include "attention.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#include "simd.h"

#include <algorithm>
#include <limits>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"      // accumulator arrays set in unrolled loops
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define QRT_F_AVX2 __attribute__((target("avx2,fma")))

namespace qrt {
namespace fused_detail {

namespace {

// exp32 (attention.h) in 8 lanes: the operations of exp32_avx512, with 2^n built in the
// exponent field instead of vscalefps (n >= -126 here, and n <= 0 for x <= 0; n is capped at
// 127 so that x > 88 cannot build a wrong exponent, a case softmax never produces).
QRT_F_AVX2 inline __m256 exp32_avx2(__m256 x) {
    // max(kExpMin, x): the second operand is returned when either is NaN, so NaN stays NaN
    const __m256 xc = _mm256_max_ps(_mm256_set1_ps(kExpMin), x);
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(kLog2e), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    __m256 p = _mm256_set1_ps(kExpPoly[0]);
    for (int t = 1; t < 6; ++t) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[t]));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    // min(n, 127): a NaN n gives 127 (second operand), p is NaN then anyway
    const __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(n, _mm256_set1_ps(127.0f))), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));   // p * 2^n, exact
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ);
    return _mm256_andnot_ps(under, y);
}

// lanes [0, left) all ones (left >= 1; 8 or more: all lanes)
QRT_F_AVX2 inline __m256i tail_mask(int64_t left) {
    const int l = static_cast<int>(std::min<int64_t>(left, 8));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Fixed reduction trees of 8 lanes: (l0 . l4, l1 . l5, l2 . l6, l3 . l7), then pairs.
QRT_F_AVX2 inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

QRT_F_AVX2 inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// C (MR, NV*8) = A (MR, kd) @ B (kd, NV*8): MR x NV accumulators in registers, A broadcast
// element by element, B rows loaded as vectors; the sum over p runs in order (FMA each term),
// as tile_avx512, so S comes out with the AVX-512 path's bits.
template <int MR, int NV>
QRT_F_AVX2 inline void tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kd, float* c,
                            int64_t ldc) {
    __m256 acc[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < NV; ++t) acc[r][t] = _mm256_setzero_ps();
    for (int64_t p = 0; p < kd; ++p) {
        __m256 bv[NV];
#pragma GCC unroll 2
        for (int t = 0; t < NV; ++t) bv[t] = _mm256_loadu_ps(b + p * ldb + 8 * t);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m256 ar = _mm256_broadcast_ss(a + r * lda + p);
#pragma GCC unroll 2
            for (int t = 0; t < NV; ++t) acc[r][t] = _mm256_fmadd_ps(ar, bv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < NV; ++t) _mm256_storeu_ps(c + r * ldc + 8 * t, acc[r][t]);
}

constexpr int kMr = 6;      // rows of a tile: 6 x 2 accumulators + 2 B vectors + 1 A of 16 registers

template <int NV>
QRT_F_AVX2 void tile_rows(int rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kd, float* c,
                          int64_t ldc) {
    switch (rows) {
        case 6: tile<6, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 5: tile<5, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 4: tile<4, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 3: tile<3, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 2: tile<2, NV>(a, lda, b, ldb, kd, c, ldc); break;
        default: tile<1, NV>(a, lda, b, ldb, kd, c, ldc); break;
    }
}

}  // namespace

// Column panels of 16 outer (B's panel stays in L1 while every row tile passes over it), one
// 8-column panel at the end when n8 % 16 == 8.
QRT_F_AVX2 void gemm_avx2(int64_t m, int64_t n8, int64_t kd, const float* a, int64_t lda, const float* b,
                          int64_t ldb, float* c, int64_t ldc) {
    for (int64_t j = 0; j < n8; j += 16) {
        const bool two = n8 - j >= 16;
        for (int64_t i = 0; i < m; i += kMr) {
            const int rows = static_cast<int>(std::min<int64_t>(kMr, m - i));
            if (two)
                tile_rows<2>(rows, a + i * lda, lda, b + j, ldb, kd, c + i * ldc + j, ldc);
            else
                tile_rows<1>(rows, a + i * lda, lda, b + j, ldb, kd, c + i * ldc + j, ldc);
        }
    }
}

// softmax_row_avx512's job on 8 lanes: whole vectors, then the tail through masks.
QRT_F_AVX2 float softmax_row_avx2(float* s, int64_t sk, float scale, const float* mrow) {
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const int64_t sk8 = sk / 8 * 8;
    for (int64_t j = 0; j < sk8; j += 8) {
        __m256 t = _mm256_loadu_ps(s + j);
        t = mrow != nullptr ? _mm256_fmadd_ps(t, vscale, _mm256_loadu_ps(mrow + j)) : _mm256_mul_ps(t, vscale);
        _mm256_storeu_ps(s + j, t);
        vmax = _mm256_max_ps(t, vmax);      // NaN t: vmax kept (second operand)
    }
    const __m256i k = tail_mask(sk - sk8);
    const __m256 kf = _mm256_castsi256_ps(k);
    if (sk8 < sk) {
        __m256 t = _mm256_maskload_ps(s + sk8, k);
        t = mrow != nullptr ? _mm256_fmadd_ps(t, vscale, _mm256_maskload_ps(mrow + sk8, k)) : _mm256_mul_ps(t, vscale);
        _mm256_maskstore_ps(s + sk8, k, t);
        vmax = _mm256_blendv_ps(vmax, _mm256_max_ps(t, vmax), kf);
    }
    const __m256 m = _mm256_set1_ps(hmax8(vmax));
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t j = 0; j < sk8; j += 8) {
        const __m256 e = exp32_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    if (sk8 < sk) {
        const __m256 e = exp32_avx2(_mm256_sub_ps(_mm256_maskload_ps(s + sk8, k), m));
        _mm256_maskstore_ps(s + sk8, k, e);
        vsum = _mm256_add_ps(vsum, _mm256_and_ps(e, kf));     // padded lanes add +0
    }
    return hsum8(vsum);
}

QRT_F_AVX2 void exp_avx2(const float* x, float* y, int64_t n) {
    const int64_t n8 = n / 8 * 8;
    for (int64_t i = 0; i < n8; i += 8) _mm256_storeu_ps(y + i, exp32_avx2(_mm256_loadu_ps(x + i)));
    if (n8 < n) {
        const __m256i k = tail_mask(n - n8);
        _mm256_maskstore_ps(y + n8, k, exp32_avx2(_mm256_maskload_ps(x + n8, k)));
    }
}

// 8 rows of 8 floats transposed in registers (the unpack / shuffle / permute network), then
// stored as 8 rows of t.
QRT_F_AVX2 inline void transpose8x8(const float* a, int64_t lda, float* t, int64_t ldt) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(a + i * lda);
    __m256 u[8];
    for (int i = 0; i < 8; i += 2) {
        u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);        // a0 b0 a1 b1 | a4 b4 a5 b5
        u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);    // a2 b2 a3 b3 | a6 b6 a7 b7
    }
    __m256 v[8];
    for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));      // a0 b0 c0 d0 | a4 ..
        v[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));  // a1 b1 c1 d1 | a5 ..
        v[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));  // a2 .. | a6 ..
        v[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));  // a3 .. | a7 ..
    }
    // v[0..3]: columns 0-3 (low half) and 4-7 (high half) of rows 0-3; v[4..7] of rows 4-7
    for (int c = 0; c < 4; ++c) {
        _mm256_storeu_ps(t + c * ldt, _mm256_permute2f128_ps(v[c], v[c + 4], 0x20));
        _mm256_storeu_ps(t + (c + 4) * ldt, _mm256_permute2f128_ps(v[c], v[c + 4], 0x31));
    }
}

QRT_F_AVX2 void transpose_avx2(const float* a, int64_t lda, int64_t rows, int64_t cols, float* t, int64_t ldt) {
    const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    for (int64_t r = 0; r < r8; r += 8)
        for (int64_t c = 0; c < c8; c += 8) transpose8x8(a + r * lda + c, lda, t + c * ldt + r, ldt);
    for (int64_t r = 0; r < rows; ++r) {            // the edges: rows past r8, columns past c8
        const int64_t c0 = r < r8 ? c8 : 0;
        for (int64_t c = c0; c < cols; ++c) t[c * ldt + r] = a[r * lda + c];
    }
}

}  // namespace fused_detail
}  // namespace qrt

#else

#include <stdexcept>

namespace qrt {
namespace fused_detail {
void gemm_avx2(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t) {
    throw std::logic_error("attention AVX2 kernel called on a build without x86 SIMD");
}
float softmax_row_avx2(float*, int64_t, float, const float*) {
    throw std::logic_error("attention AVX2 kernel called on a build without x86 SIMD");
}
void exp_avx2(const float*, float*, int64_t) {
    throw std::logic_error("attention AVX2 kernel called on a build without x86 SIMD");
}
void transpose_avx2(const float*, int64_t, int64_t, int64_t, float*, int64_t) {
    throw std::logic_error("attention AVX2 kernel called on a build without x86 SIMD");
}
}  // namespace fused_detail
}  // namespace qrt

#endif
