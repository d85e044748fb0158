// HardSigmoid / HardSwish on float32. Numerics: hard_sigmoid.h.
#include "hard_sigmoid.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "work_pool.h"

namespace qrt {

namespace {

// Elements per work item, and the count from which the threads share them.
constexpr int64_t kChunk = 16384;
constexpr int64_t kParallelMin = int64_t(1) << 16;

// numpy's maximum(t, 0) then minimum(., 1): NaN propagates, ties keep the first operand
#define QRT_HARD_BODY                                                                          \
    for (int64_t i = 0; i < count; ++i) {                                                      \
        const float v = x[i];                                                                  \
        const float t = v * alpha + beta;                                                      \
        const float lo = (t >= 0.0f || t != t) ? t : 0.0f;                                     \
        const float s = (lo <= 1.0f || lo != lo) ? lo : 1.0f;                                  \
        y[i] = swish ? v * s : s;                                                              \
    }

using SpanFn = void (*)(const float*, float*, int64_t, float, float, bool);

void span_scalar(const float* x, float* y, int64_t count, float alpha, float beta, bool swish) { QRT_HARD_BODY }
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
// The same operations on whole vectors (hard_sigmoid.h's hard_sigmoid8 / 16); the tail through
// the scalar body. (The compiler's vectorisation of the scalar body kept a compare and a blend per
// select: about a cycle an element.)
__attribute__((target("avx2"))) void span_avx2(const float* x, float* y, int64_t count, float alpha, float beta,
                                               bool swish) {
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(y + i, hard_sigmoid8(_mm256_loadu_ps(x + i), va, vb, swish));
    x += i, y += i, count -= i;
    QRT_HARD_BODY
}
__attribute__((target("avx512f"))) void span_avx512(const float* x, float* y, int64_t count, float alpha, float beta,
                                                    bool swish) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(y + i, hard_sigmoid16(_mm512_loadu_ps(x + i), va, vb, swish));
    x += i, y += i, count -= i;
    QRT_HARD_BODY
}
#endif
#undef QRT_HARD_BODY

SpanFn span_fn(Int8Isa isa) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    if (int8_isa_is_avx512_class(isa)) return span_avx512;
    if (int8_isa_is_avx2_class(isa)) return span_avx2;
#endif
    (void)isa;
    return span_scalar;
}

}  // namespace

void hard_sigmoid_isa(const float* x, float* y, int64_t count, float alpha, float beta, bool swish, Int8Isa isa,
                      int threads) {
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("hard_sigmoid: path ") + int8_isa_name(isa) + " is not supported");
    if (count <= 0) return;
    const SpanFn span = span_fn(isa);
    const int nt = count >= kParallelMin ? threads : 1;
    parallel_items((count + kChunk - 1) / kChunk, nt, [&](int64_t item) {
        const int64_t lo = item * kChunk;
        span(x + lo, y + lo, std::min(kChunk, count - lo), alpha, beta, swish);
    });
}

void hard_sigmoid_span(const float* x, float* y, int64_t count, float alpha, float beta, bool swish, Int8Isa isa) {
    if (count > 0) span_fn(isa)(x, y, count, alpha, beta, swish);
}

void hard_sigmoid(const float* x, float* y, int64_t count, float alpha, float beta, bool swish) {
    hard_sigmoid_isa(x, y, count, alpha, beta, swish, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
