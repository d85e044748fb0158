// SkipLayerNormalization: numerics in layer_norm.h. One row function, compiled for the
// baseline and (with the same source, so the same sums in the same order) for AVX-512, where
// the compiler vectorises its 8 float64 partial sums.
#include "layer_norm.h"

#include <algorithm>
#include <cmath>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_LN_X86_SIMD 1
#else
#define QRT_LN_X86_SIMD 0
#endif

namespace qrt {

namespace {

constexpr int kLanes = 8;

#if defined(__GNUC__) || defined(__clang__)
#define QRT_LN_INLINE inline __attribute__((always_inline))
#else
#define QRT_LN_INLINE inline
#endif

// __restrict: y never aliases the inputs (the binding allocates it), which lets the compiler
// vectorise the partial sums and the affine step.
QRT_LN_INLINE void rows_body(const float* __restrict x, const float* __restrict skip, const float* __restrict scale,
                             const float* __restrict bias, double eps, float* __restrict y, int64_t lo, int64_t hi,
                             int64_t d) {
    for (int64_t i = lo; i < hi; ++i) {
        const float* __restrict xr = x + i * d;
        const float* __restrict sr = skip + i * d;
        float* __restrict yr = y + i * d;          // holds t = float32(x + skip) until the last pass
        double s[kLanes] = {0}, q[kLanes] = {0};
        const int64_t d8 = d / kLanes * kLanes;
        for (int64_t j = 0; j < d8; j += kLanes) {
            for (int l = 0; l < kLanes; ++l) {
                const float t = xr[j + l] + sr[j + l];
                yr[j + l] = t;
                const double t64 = static_cast<double>(t);
                s[l] += t64;
                q[l] += t64 * t64;
            }
        }
        // the tail goes to two scalars, not to s[j - d8]: an array indexed at run time would
        // keep s and q in memory for the whole row (2.7x slower than numba's kernel measured)
        double s_tail = 0.0, q_tail = 0.0;
        for (int64_t j = d8; j < d; ++j) {
            const float t = xr[j] + sr[j];
            yr[j] = t;
            const double t64 = static_cast<double>(t);
            s_tail += t64;
            q_tail += t64 * t64;
        }
        const double sum = (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + s_tail;
        const double sq = (((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]))) + q_tail;
        const double mean = sum / static_cast<double>(d);
        const double var = std::max(sq / static_cast<double>(d) - mean * mean, 0.0);
        const double rstd = 1.0 / std::sqrt(var + eps);
        if (bias != nullptr) {
            for (int64_t j = 0; j < d; ++j)
                yr[j] = static_cast<float>((static_cast<double>(yr[j]) - mean) * rstd * static_cast<double>(scale[j]) +
                                           static_cast<double>(bias[j]));
        } else {
            for (int64_t j = 0; j < d; ++j)
                yr[j] = static_cast<float>((static_cast<double>(yr[j]) - mean) * rstd * static_cast<double>(scale[j]));
        }
    }
}

void rows_scalar(const float* x, const float* skip, const float* scale, const float* bias, double eps, float* y,
                 int64_t lo, int64_t hi, int64_t d) {
    rows_body(x, skip, scale, bias, eps, y, lo, hi, d);
}

#if QRT_LN_X86_SIMD
__attribute__((target("avx512f"))) void rows_avx512(const float* x, const float* skip, const float* scale,
                                                     const float* bias, double eps, float* y, int64_t lo, int64_t hi,
                                                     int64_t d) {
    rows_body(x, skip, scale, bias, eps, y, lo, hi, d);
}
#endif

}  // namespace

void skip_layer_norm_f32(const float* x, const float* skip, const float* scale, const float* bias, double epsilon,
                         float* y, int64_t rows, int64_t d, FusedIsa isa, int threads) {
    auto rows_fn = rows_scalar;
#if QRT_LN_X86_SIMD
    if (isa == FusedIsa::avx512 && fused_isa_supported(isa)) rows_fn = rows_avx512;
#else
    (void)isa;
#endif
    const int64_t items = (rows + kSkipLnRowsPerItem - 1) / kSkipLnRowsPerItem;
    int nt = static_cast<int>(std::min<int64_t>(std::max(1, threads), items));
    if (rows * d < kSkipLnParallelMinElements) nt = 1;
#if defined(_OPENMP)
    if (nt > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t lo = item * kSkipLnRowsPerItem;
            rows_fn(x, skip, scale, bias, epsilon, y, lo, std::min(rows, lo + kSkipLnRowsPerItem), d);
        }
        return;
    }
#endif
    rows_fn(x, skip, scale, bias, epsilon, y, 0, rows, d);
}

}  // namespace qrt
