// float32 binary ops and row means. Numerics: elementwise_f32.h.
#include "elementwise_f32.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "work_pool.h"

namespace qrt {

namespace {

// Elements per work item, and the count from which the threads share them.
constexpr int64_t kChunk = 16384;
constexpr int64_t kParallelMin = int64_t(1) << 16;

// One span of one row: y[j] = a[j] op b[j] with sa / sb the operands' strides (0: one value).
// Written once, compiled for each width (the compiler vectorises the unit-stride forms).
#define QRT_BINARY_BODY                                                                    \
    switch (op) {                                                                          \
        case BinaryOp::add: for (int64_t j = 0; j < n; ++j) y[j] = a[j * sa] + b[j * sb]; break; \
        case BinaryOp::sub: for (int64_t j = 0; j < n; ++j) y[j] = a[j * sa] - b[j * sb]; break; \
        case BinaryOp::mul: for (int64_t j = 0; j < n; ++j) y[j] = a[j * sa] * b[j * sb]; break; \
        default: for (int64_t j = 0; j < n; ++j) y[j] = a[j * sa] / b[j * sb]; break;      \
    }

// sixteen float64 running sums, lane l of element j with j % 16 == l (the tail's elements
// go to lanes 0, 1, ... in order), then halving: s[l] += s[l + 8], s[l] += s[l + 4], ... The
// lanes make the loop vector code (two float64 vectors of 8 on AVX-512, four of 4 on AVX2) where
// four scalar sums were latency bound (4.6 G floats/s, one thread on X); the same source on every
// path, so the same bits.
#define QRT_MEAN_BODY                                                                      \
    double s[16] = {};                                                                     \
    int64_t j = 0;                                                                         \
    for (; j + 16 <= n; j += 16) {                                                         \
        _Pragma("GCC unroll 16") for (int l = 0; l < 16; ++l) s[l] += static_cast<double>(x[j + l]); \
    }                                                                                      \
    for (int l = 0; j < n; ++j, ++l) s[l] += static_cast<double>(x[j]);                   \
    for (int half = 8; half >= 1; half /= 2) {                                             \
        _Pragma("GCC unroll 8") for (int l = 0; l < half; ++l) s[l] += s[l + half];        \
    }                                                                                      \
    return s[0];

// The unit / zero stride pairs get their own instances so that the compiler sees the strides.
template <int SA, int SB>
void span_scalar(BinaryOp op, const float* a, const float* b, float* y, int64_t n) {
    constexpr int64_t sa = SA, sb = SB;
    QRT_BINARY_BODY
}
double sum_scalar(const float* x, int64_t n) { QRT_MEAN_BODY }
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
template <int SA, int SB>
__attribute__((target("avx2"))) void span_avx2(BinaryOp op, const float* a, const float* b, float* y, int64_t n) {
    constexpr int64_t sa = SA, sb = SB;
    QRT_BINARY_BODY
}
template <int SA, int SB>
__attribute__((target("avx512f"))) void span_avx512(BinaryOp op, const float* a, const float* b, float* y,
                                                    int64_t n) {
    constexpr int64_t sa = SA, sb = SB;
    QRT_BINARY_BODY
}
__attribute__((target("avx2"))) double sum_avx2(const float* x, int64_t n) { QRT_MEAN_BODY }
__attribute__((target("avx512f"))) double sum_avx512(const float* x, int64_t n) { QRT_MEAN_BODY }
#define QRT_ELEMENTWISE_X86 1
#else
#define QRT_ELEMENTWISE_X86 0
#endif
#undef QRT_BINARY_BODY
#undef QRT_MEAN_BODY

using SpanFn = void (*)(BinaryOp, const float*, const float*, float*, int64_t);
using SumFn = double (*)(const float*, int64_t);

// the span function for strides (sa, sb), each 0 or 1
template <int SA, int SB>
SpanFn span_for(Int8Isa isa) {
#if QRT_ELEMENTWISE_X86
    if (int8_isa_is_avx512_class(isa)) return span_avx512<SA, SB>;
    if (int8_isa_is_avx2_class(isa)) return span_avx2<SA, SB>;
#endif
    (void)isa;
    return span_scalar<SA, SB>;
}

SumFn sum_for(Int8Isa isa) {
#if QRT_ELEMENTWISE_X86
    if (int8_isa_is_avx512_class(isa)) return sum_avx512;
    if (int8_isa_is_avx2_class(isa)) return sum_avx2;
#endif
    (void)isa;
    return sum_scalar;
}

void check_isa(const char* what, Int8Isa isa) {
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string(what) + ": path " + int8_isa_name(isa) + " is not supported");
}

}  // namespace

void binary_f32_isa(BinaryOp op, const float* a, int a_kind, const float* b, int b_kind, float* y, int64_t rows,
                    int64_t cols, Int8Isa isa, int threads, Activation act) {
    check_isa("binary_f32", isa);
    if (a_kind < 0 || a_kind > 2 || b_kind < 0 || b_kind > 2 || rows < 0 || cols < 0)
        throw std::invalid_argument("binary_f32: operand kinds must be 0 (full), 1 (per row) or 2 (scalar) and "
                                    "rows, cols >= 0");
    if (rows == 0 || cols == 0) return;
    // an operand that is one value along the row has stride 0 there
    const SpanFn fn = a_kind == 0 ? (b_kind == 0 ? span_for<1, 1>(isa) : span_for<1, 0>(isa))
                                  : (b_kind == 0 ? span_for<0, 1>(isa) : span_for<0, 0>(isa));
    const int64_t chunks = (cols + kChunk - 1) / kChunk;
    const int nt = rows * cols >= kParallelMin ? threads : 1;
    parallel_items(rows * chunks, nt, [&](int64_t item) {
        const int64_t r = item / chunks, lo = item % chunks * kChunk, n = std::min(kChunk, cols - lo);
        const float* ap = a_kind == 0 ? a + r * cols + lo : a_kind == 1 ? a + r : a;
        const float* bp = b_kind == 0 ? b + r * cols + lo : b_kind == 1 ? b + r : b;
        fn(op, ap, bp, y + r * cols + lo, n);
        if (act != Activation::none) activation_inplace_isa(y + r * cols + lo, n, act, isa);
    });
}

void binary_f32(BinaryOp op, const float* a, int a_kind, const float* b, int b_kind, float* y, int64_t rows,
                int64_t cols, Activation act) {
    binary_f32_isa(op, a, a_kind, b, b_kind, y, rows, cols, int8_current_isa(), int8_get_threads(), act);
}

void mean_rows_f32_isa(const float* x, float* y, int64_t rows, int64_t cols, Int8Isa isa, int threads) {
    check_isa("mean_rows_f32", isa);
    if (rows < 0 || cols < 1)
        throw std::invalid_argument("mean_rows_f32: rows = " + std::to_string(rows) + ", cols = " +
                                    std::to_string(cols) + "; expected rows >= 0, cols >= 1");
    const int64_t per_item = std::max<int64_t>(1, kChunk / cols);   // rows per work item
    const int nt = rows * cols >= kParallelMin ? threads : 1;
    parallel_items((rows + per_item - 1) / per_item, nt, [&](int64_t item) {
        const int64_t end = std::min(rows, (item + 1) * per_item);
        for (int64_t r = item * per_item; r < end; ++r) y[r] = mean_row_f32(x + r * cols, cols, isa);
    });
}

float mean_row_f32(const float* x, int64_t n, Int8Isa isa) {
    return static_cast<float>(sum_for(isa)(x, n) / static_cast<double>(n));
}

void mean_rows_f32(const float* x, float* y, int64_t rows, int64_t cols) {
    mean_rows_f32_isa(x, y, rows, cols, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
