// Lane masks and lane picks for the float32 kernels' vectors, one definition for every kernel
// that needs them (depthwise_conv.cpp, f32_channel_gemm.cpp, int8_pointwise_conv.cpp). AVX2 has
// no mask registers: _mm256_maskload_ps / _maskstore_ps take a vector whose lanes are all ones or
// all zeros. The even / odd picks split a stride-2 row into its column phases.
#pragma once

#include <algorithm>
#include <cstdint>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include "simd.h"

namespace qrt {

// lane i all ones where i < count (count clamped to [0, 8])
__attribute__((target("avx2"))) inline __m256i lanes_below8(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(count, 0, 8))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// lane l all ones where bit l of m is set (bits 0 .. 7)
__attribute__((target("avx2"))) inline __m256i lanes_of_bits8(uint32_t m) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bit), bit);
}

// The even (odd) floats of the 16 at lo, hi, in order: a shuffle gives lo0 lo2 hi0 hi2 | lo4 lo6
// hi4 hi6, then the 64-bit pairs are put in order
__attribute__((target("avx2"))) inline __m256 even_lanes8(__m256 lo, __m256 hi) {
    const __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}
__attribute__((target("avx2"))) inline __m256 odd_lanes8(__m256 lo, __m256 hi) {
    const __m256 o = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

// The even (odd) floats of the 32 at lo, hi, in order
__attribute__((target("avx512f"))) inline __m512 even_lanes16(__m512 lo, __m512 hi) {
    return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), hi);
}
__attribute__((target("avx512f"))) inline __m512 odd_lanes16(__m512 lo, __m512 hi) {
    return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), hi);
}

}  // namespace qrt
#endif
