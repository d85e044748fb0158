// int4_grouped weight-only Linear, AVX2 + FMA tile (group_size % 16 == 0). Numerics and the
// summation order: int4_gemm.h. Compiled for AVX2/FMA with target attributes (no -march);
// int4_gemm.cpp calls it only when cpuid says the CPU has both.
//
// The AVX-512 tile (int4_gemm_avx512.cpp) in 8 lanes: one 8-byte step holds 16 weights of one
// group, its 8 low nibbles the even elements and its 8 high nibbles the odd ones, matching
// xs's per-16 (evens, odds) order. With 16 ymm registers the 4 x 4 work item of int4_linear
// does not fit in one pass (16 accumulators alone), so it is split:
//   - 1 X row: 1 x 4 weight rows, 4 accumulators + 8 unpacked weight vectors + 2 of X;
//   - 2..4 X rows: two passes of MR x 2 weight rows, <= 8 accumulators + 4 weight vectors
//     + 2 of X (the weights are unpacked once per pass and used by every row of X).
// Each accumulator still sums one output's products in the same order whatever the split, so
// M = 1 and batched rows give the same bits.
#include "int4_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "simd.h"

#include <algorithm>

#define QRT_TARGET_AVX2_INT4 __attribute__((target("avx2,fma")))

namespace qrt {
namespace int4_detail {

namespace {

// The 8 lanes in the fixed order of int4_gemm.h: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
QRT_TARGET_AVX2_INT4 inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// MR rows of X x NC weight rows starting at column c0 of the 4-column item (columns past nr
// repeat the last valid weight row; their sums are not stored by the caller).
template <int MR, int NC, bool kSymmetric>
QRT_TARGET_AVX2_INT4 void tile(const Int4Weight& w, const float* xs, int64_t ldx, int64_t n0, int64_t nr, int c0,
                               float* out) {
    static_assert(MR * NC <= 8 && NC <= 4, "at most 8 ymm accumulators (see the file comment)");
    const int64_t row_bytes = w.kp() / 2, steps_per_group = w.group_size / kInt4Avx2Step;
    const uint8_t* q[NC];
    const float* s[NC];
    const int32_t* z[NC];
    for (int c = 0; c < NC; ++c) {
        const int64_t n = n0 + std::min<int64_t>(c0 + c, nr - 1);
        q[c] = w.qdata.data() + n * row_bytes;
        s[c] = w.scale.data() + n * w.groups;
        z[c] = w.zero_point.data() + n * w.groups;
    }
    __m256 acc[MR][NC];
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi32(0xF);
    for (int64_t j = 0; j < w.groups; ++j) {
        __m256 sv[NC];
        __m256i zv[NC];
        for (int c = 0; c < NC; ++c) {
            sv[c] = _mm256_set1_ps(s[c][j]);
            zv[c] = _mm256_set1_epi32(z[c][j]);
        }
        for (int64_t step = j * steps_per_group; step < (j + 1) * steps_per_group; ++step) {
            __m256 we[NC], wo[NC];
            for (int c = 0; c < NC; ++c) {
                const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q[c] + step * 8)));
                __m256i lo, hi;
                if (kSymmetric) {   // sign-extend the two's complement nibbles
                    lo = _mm256_srai_epi32(_mm256_slli_epi32(v, 28), 28);
                    hi = _mm256_srai_epi32(_mm256_slli_epi32(v, 24), 28);
                } else {
                    lo = _mm256_sub_epi32(_mm256_and_si256(v, low4), zv[c]);
                    hi = _mm256_sub_epi32(_mm256_srli_epi32(v, 4), zv[c]);
                }
                // float32(q - zp) * scale: exactly PackedTensor.to_dense()'s value
                we[c] = _mm256_mul_ps(_mm256_cvtepi32_ps(lo), sv[c]);
                wo[c] = _mm256_mul_ps(_mm256_cvtepi32_ps(hi), sv[c]);
            }
            for (int r = 0; r < MR; ++r) {
                const __m256 xe = _mm256_loadu_ps(xs + r * ldx + step * 16);
                const __m256 xo = _mm256_loadu_ps(xs + r * ldx + step * 16 + 8);
                for (int c = 0; c < NC; ++c) {
                    acc[r][c] = _mm256_fmadd_ps(we[c], xe, acc[r][c]);
                    acc[r][c] = _mm256_fmadd_ps(wo[c], xo, acc[r][c]);
                }
            }
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NC; ++c) out[r * 4 + c0 + c] = hsum8(acc[r][c]);
}

template <int MR, bool kSymmetric>
void pairs(const Int4Weight& w, const float* xs, int64_t ldx, int64_t n0, int64_t nr, float* acc) {
    tile<MR, 2, kSymmetric>(w, xs, ldx, n0, nr, 0, acc);
    if (nr > 2) tile<MR, 2, kSymmetric>(w, xs, ldx, n0, nr, 2, acc);
}

template <bool kSymmetric>
void tile_sym(const Int4Weight& w, const float* xs, int64_t ldx, int64_t mr, int64_t n0, int64_t nr, float* acc) {
    switch (mr) {
        case 1:
            if (nr > 2) return tile<1, 4, kSymmetric>(w, xs, ldx, n0, nr, 0, acc);
            return tile<1, 2, kSymmetric>(w, xs, ldx, n0, nr, 0, acc);
        case 2: return pairs<2, kSymmetric>(w, xs, ldx, n0, nr, acc);
        case 3: return pairs<3, kSymmetric>(w, xs, ldx, n0, nr, acc);
        default: return pairs<4, kSymmetric>(w, xs, ldx, n0, nr, acc);
    }
}

}  // namespace

void tile_avx2(const Int4Weight& w, const float* xs, int64_t ldx, int64_t mr, int64_t n0, int64_t nr, float* acc) {
    if (w.symmetric) tile_sym<true>(w, xs, ldx, mr, n0, nr, acc);
    else tile_sym<false>(w, xs, ldx, mr, n0, nr, acc);
}

}  // namespace int4_detail
}  // namespace qrt

#else

#include <stdexcept>

namespace qrt {
namespace int4_detail {
void tile_avx2(const Int4Weight&, const float*, int64_t, int64_t, int64_t, int64_t, float*) {
    throw std::logic_error("int4 AVX2 tile called on a build without x86 SIMD");
}
}  // namespace int4_detail
}  // namespace qrt

#endif
