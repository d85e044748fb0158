// Sigmoid on float32. Numerics: sigmoid.h.
#include "sigmoid.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "activation.h"   // act_detail: the float32 exponential's constants and parts
#include "work_pool.h"

#if QRT_ACT_X86_SIMD   // activation.h: x86 with GCC or clang (simd.h included there)
#define QRT_SIGMOID_AVX2 __attribute__((target("avx2,fma")))
#define QRT_SIGMOID_AVX512 __attribute__((target("avx512f")))
#endif

namespace qrt {

namespace {

using namespace act_detail;

// Elements per work item, and the count from which the threads share them.
constexpr int64_t kChunk = 16384;
constexpr int64_t kParallelMin = int64_t(1) << 16;
constexpr float kSigmoidArgMin = -104.0f;
// exp_parts' p is never zeroed here: a >= -104 keeps n >= -151, and e^a there rounds to 0 (or
// the least subnormal) through the two scalings themselves
constexpr int32_t kNoZero = -1000;

float sigmoid_scalar(float x) {
    const float neg = -std::fabs(x);
    const float a = neg > kSigmoidArgMin ? neg : kSigmoidArgMin;   // maxps's rule: NaN -> -104
    const float k = std::fma(a, kLog2eF, kMagicF);
    const float n = k - kMagicF;
    const float r = std::fma(-n, kLn2LoF, std::fma(-n, kLn2HiF, a));
    const int32_t ni = static_cast<int32_t>(float_bits(k) - float_bits(kMagicF));
    const ExpParts e = exp_parts(r, ni, kNoZero);
    const float ex = (e.p * e.scale1) * e.scale2;
    const float y = (x < 0.0f ? ex : 1.0f) / (1.0f + ex);
    return x != x ? x : y;
}

using SpanFn = void (*)(const float*, float*, int64_t);

// kSilu: x * sigmoid(x), one float32 product after the sigmoid's value (the Mul op's bits)
template <bool kSilu>
void span_scalar(const float* x, float* y, int64_t count) {
    for (int64_t i = 0; i < count; ++i) y[i] = kSilu ? x[i] * sigmoid_scalar(x[i]) : sigmoid_scalar(x[i]);
}

#if QRT_ACT_X86_SIMD
// The same operations on 8 lanes (activation.h's exp_parts_avx2); 4 vectors side by side, so the
// polynomial's chain does not leave the FMA pipes waiting.
QRT_SIGMOID_AVX2 inline __m256 sigmoid8(__m256 x) {
    const __m256 neg = _mm256_or_ps(x, _mm256_set1_ps(-0.0f));   // -|x|
    const __m256 a = _mm256_max_ps(neg, _mm256_set1_ps(kSigmoidArgMin));   // NaN -> -104 (second operand)
    const __m256 magic = _mm256_set1_ps(kMagicF);
    const __m256 k = _mm256_fmadd_ps(a, _mm256_set1_ps(kLog2eF), magic);
    const __m256 n = _mm256_sub_ps(k, magic);
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2LoF), _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2HiF), a));
    const __m256i ni = _mm256_sub_epi32(_mm256_castps_si256(k), _mm256_castps_si256(magic));
    __m256 p, scale1, scale2;
    exp_parts_avx2(r, ni, kNoZero, p, scale1, scale2);
    const __m256 ex = _mm256_mul_ps(_mm256_mul_ps(p, scale1), scale2);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 num = _mm256_blendv_ps(one, ex, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
    const __m256 y = _mm256_div_ps(num, _mm256_add_ps(one, ex));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

template <bool kSilu>
QRT_SIGMOID_AVX2 inline __m256 value8(__m256 x) {
    return kSilu ? _mm256_mul_ps(x, sigmoid8(x)) : sigmoid8(x);
}

template <bool kSilu>
QRT_SIGMOID_AVX2 void span_avx2(const float* x, float* y, int64_t count) {
    int64_t i = 0;
    for (; i + 32 <= count; i += 32) {
        const __m256 v0 = value8<kSilu>(_mm256_loadu_ps(x + i)), v1 = value8<kSilu>(_mm256_loadu_ps(x + i + 8));
        const __m256 v2 = value8<kSilu>(_mm256_loadu_ps(x + i + 16)), v3 = value8<kSilu>(_mm256_loadu_ps(x + i + 24));
        _mm256_storeu_ps(y + i, v0);
        _mm256_storeu_ps(y + i + 8, v1);
        _mm256_storeu_ps(y + i + 16, v2);
        _mm256_storeu_ps(y + i + 24, v3);
    }
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(y + i, value8<kSilu>(_mm256_loadu_ps(x + i)));
    span_scalar<kSilu>(x + i, y + i, count - i);
}

QRT_SIGMOID_AVX512 inline __m512 sigmoid16(__m512 x) {
    const __m512 neg = _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(static_cast<int32_t>(0x80000000u))));
    const __m512 a = _mm512_max_ps(neg, _mm512_set1_ps(kSigmoidArgMin));
    const __m512 magic = _mm512_set1_ps(kMagicF);
    const __m512 k = _mm512_fmadd_ps(a, _mm512_set1_ps(kLog2eF), magic);
    const __m512 n = _mm512_sub_ps(k, magic);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2LoF), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2HiF), a));
    const __m512i ni = _mm512_sub_epi32(_mm512_castps_si512(k), _mm512_castps_si512(magic));
    __m512 p, scale1, scale2;
    exp_parts_avx512(r, ni, kNoZero, p, scale1, scale2);
    const __m512 ex = _mm512_mul_ps(_mm512_mul_ps(p, scale1), scale2);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), one, ex);
    const __m512 y = _mm512_div_ps(num, _mm512_add_ps(one, ex));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}

template <bool kSilu>
QRT_SIGMOID_AVX512 inline __m512 value16(__m512 x) {
    return kSilu ? _mm512_mul_ps(x, sigmoid16(x)) : sigmoid16(x);
}

template <bool kSilu>
QRT_SIGMOID_AVX512 void span_avx512(const float* x, float* y, int64_t count) {
    int64_t i = 0;
    for (; i + 64 <= count; i += 64) {
        const __m512 v0 = value16<kSilu>(_mm512_loadu_ps(x + i)), v1 = value16<kSilu>(_mm512_loadu_ps(x + i + 16));
        const __m512 v2 = value16<kSilu>(_mm512_loadu_ps(x + i + 32)), v3 = value16<kSilu>(_mm512_loadu_ps(x + i + 48));
        _mm512_storeu_ps(y + i, v0);
        _mm512_storeu_ps(y + i + 16, v1);
        _mm512_storeu_ps(y + i + 32, v2);
        _mm512_storeu_ps(y + i + 48, v3);
    }
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(y + i, value16<kSilu>(_mm512_loadu_ps(x + i)));
    span_scalar<kSilu>(x + i, y + i, count - i);
}
#endif

template <bool kSilu>
SpanFn span_fn(Int8Isa isa) {
#if QRT_ACT_X86_SIMD
    if (int8_isa_is_avx512_class(isa)) return span_avx512<kSilu>;
    if (int8_isa_is_avx2_class(isa)) return span_avx2<kSilu>;
#endif
    (void)isa;
    return span_scalar<kSilu>;
}

}  // namespace

void sigmoid_f32_isa(const float* x, float* y, int64_t count, Int8Isa isa, int threads) {
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("sigmoid: path ") + int8_isa_name(isa) + " is not supported");
    if (count <= 0) return;
    const SpanFn span = span_fn<false>(isa);
    const int nt = count >= kParallelMin ? threads : 1;
    parallel_items((count + kChunk - 1) / kChunk, nt, [&](int64_t item) {
        const int64_t lo = item * kChunk;
        span(x + lo, y + lo, std::min(kChunk, count - lo));
    });
}

void silu_span(float* y, int64_t count, Int8Isa isa) {
    if (count > 0) span_fn<true>(isa)(y, y, count);   // in place: each vector is read before it is written
}

void sigmoid_f32(const float* x, float* y, int64_t count) {
    sigmoid_f32_isa(x, y, count, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
