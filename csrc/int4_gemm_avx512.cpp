// int4_grouped weight-only Linear, AVX-512 tile (group_size % 32 == 0). Numerics: int4_gemm.h.
// Compiled for AVX-512 with target attributes; int4_gemm.cpp calls it only when cpuid says the
// CPU has AVX-512F/BW.
#include "int4_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "simd.h"

#include <algorithm>

#define QRT_TARGET_AVX512_INT4 __attribute__((target("avx512f,avx512bw")))

namespace qrt {
namespace int4_detail {

namespace {

// MR rows of X x 4 weight rows (rows past nr repeat the last valid one; their sums are not
// stored). One 16-byte step holds 32 weights of one group (g % 32 == 0): the 16 low nibbles are
// the even elements, the 16 high nibbles the odd ones, matching xs's (evens, odds) order.
template <int MR, bool kSymmetric>
QRT_TARGET_AVX512_INT4 void tile(const Int4Weight& w, const float* xs, int64_t ldx, int64_t n0, int64_t nr,
                                 float* out) {
    const int64_t row_bytes = w.kp() / 2, steps_per_group = w.group_size / 32;
    const uint8_t* q[4];
    const float* s[4];
    const int32_t* z[4];
    for (int c = 0; c < 4; ++c) {
        const int64_t n = n0 + std::min<int64_t>(c, nr - 1);
        q[c] = w.qdata.data() + n * row_bytes;
        s[c] = w.scale.data() + n * w.groups;
        z[c] = w.zero_point.data() + n * w.groups;
    }
    __m512 acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
    const __m512i low4 = _mm512_set1_epi32(0xF);
    for (int64_t j = 0; j < w.groups; ++j) {
        __m512 sv[4];
        __m512i zv[4];
        for (int c = 0; c < 4; ++c) {
            sv[c] = _mm512_set1_ps(s[c][j]);
            zv[c] = _mm512_set1_epi32(z[c][j]);
        }
        for (int64_t step = j * steps_per_group; step < (j + 1) * steps_per_group; ++step) {
            __m512 we[4], wo[4];
            for (int c = 0; c < 4; ++c) {
                const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q[c] + step * 16)));
                __m512i lo, hi;
                if (kSymmetric) {   // sign-extend the two's complement nibbles
                    lo = _mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28);
                    hi = _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 28);
                } else {
                    lo = _mm512_sub_epi32(_mm512_and_si512(v, low4), zv[c]);
                    hi = _mm512_sub_epi32(_mm512_srli_epi32(v, 4), zv[c]);
                }
                // float32(q - zp) * scale: exactly PackedTensor.to_dense()'s value
                we[c] = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), sv[c]);
                wo[c] = _mm512_mul_ps(_mm512_cvtepi32_ps(hi), sv[c]);
            }
            for (int r = 0; r < MR; ++r) {
                const __m512 xe = _mm512_loadu_ps(xs + r * ldx + step * 32);
                const __m512 xo = _mm512_loadu_ps(xs + r * ldx + step * 32 + 16);
                for (int c = 0; c < 4; ++c) {
                    acc[r][c] = _mm512_fmadd_ps(we[c], xe, acc[r][c]);
                    acc[r][c] = _mm512_fmadd_ps(wo[c], xo, acc[r][c]);
                }
            }
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < 4; ++c) out[r * 4 + c] = _mm512_reduce_add_ps(acc[r][c]);
}

template <bool kSymmetric>
void tile_sym(const Int4Weight& w, const float* xs, int64_t ldx, int64_t mr, int64_t n0, int64_t nr, float* acc) {
    switch (mr) {
        case 1: return tile<1, kSymmetric>(w, xs, ldx, n0, nr, acc);
        case 2: return tile<2, kSymmetric>(w, xs, ldx, n0, nr, acc);
        case 3: return tile<3, kSymmetric>(w, xs, ldx, n0, nr, acc);
        default: return tile<4, kSymmetric>(w, xs, ldx, n0, nr, acc);
    }
}

}  // namespace

void tile_avx512(const Int4Weight& w, const float* xs, int64_t ldx, int64_t mr, int64_t n0, int64_t nr, float* acc) {
    if (w.symmetric) tile_sym<true>(w, xs, ldx, mr, n0, nr, acc);
    else tile_sym<false>(w, xs, ldx, mr, n0, nr, acc);
}

}  // namespace int4_detail
}  // namespace qrt

#else

#include <stdexcept>

namespace qrt {
namespace int4_detail {
void tile_avx512(const Int4Weight&, const float*, int64_t, int64_t, int64_t, int64_t, float*) {
    throw std::logic_error("int4 AVX-512 tile called on a build without x86 SIMD");
}
}  // namespace int4_detail
}  // namespace qrt

#endif
