// HardSigmoid and HardSwish on float32, the reference's bits (kernels/reference/elementwise.py):
//
//   t = x * alpha + beta            two float32 roundings (no FMA: -ffp-contract=off)
//   s = min(max(t, 0), 1)           numpy's maximum / minimum: a NaN t stays NaN, max(-0, 0) = -0
//   HardSigmoid = s,  HardSwish = x * s (alpha = float32(1/6), beta = 0.5)
//
// numpy computes it in four passes with an array temporary each (MobileNetV3-sized activations:
// 0.25-1 ms per op, mostly fresh pages); here one pass, vectorised for the path's ISA.
#pragma once

#include <cstdint>

#include "int8_gemm.h"   // Int8Isa: the native backend's one ISA switch

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_HARD_X86 1
#include "simd.h"
#else
#define QRT_HARD_X86 0
#endif

namespace qrt {

#if QRT_HARD_X86
// s (or x * s with swish) for a vector of x, va / vb = alpha / beta in every lane: the spans
// below, and the kernels that apply HardSwish to their registers (int8_pointwise_conv.cpp).
// max(0, t) and min(1, lo) in this operand order are numpy's: vmaxps / vminps return the second
// operand when either is NaN or when they are equal, so NaN propagates and max(0, -0) is -0.
__attribute__((target("avx512f"))) inline __m512 hard_sigmoid16(__m512 v, __m512 va, __m512 vb, bool swish) {
    const __m512 s = _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_setzero_ps(),
                                                                       _mm512_add_ps(_mm512_mul_ps(v, va), vb)));
    return swish ? _mm512_mul_ps(v, s) : s;
}
__attribute__((target("avx2"))) inline __m256 hard_sigmoid8(__m256 v, __m256 va, __m256 vb, bool swish) {
    const __m256 s = _mm256_min_ps(_mm256_set1_ps(1.0f), _mm256_max_ps(_mm256_setzero_ps(),
                                                                       _mm256_add_ps(_mm256_mul_ps(v, va), vb)));
    return swish ? _mm256_mul_ps(v, s) : s;
}
#endif

// y[i] for i < count (y may be x). Runs on int8_current_isa()'s vector width with
// int8_get_threads() threads for large counts (the _isa form: explicit); the same bits anyway.
void hard_sigmoid(const float* x, float* y, int64_t count, float alpha, float beta, bool swish);
void hard_sigmoid_isa(const float* x, float* y, int64_t count, float alpha, float beta, bool swish, Int8Isa isa,
                      int threads);
// The same on the calling thread (a kernel's epilogue over the span it just wrote).
void hard_sigmoid_span(const float* x, float* y, int64_t count, float alpha, float beta, bool swish, Int8Isa isa);

}  // namespace qrt
