// SkipLayerNormalization: numerics in layer_norm.h. One row function, compiled for the
// baseline and (with the same source, so the same sums in the same order) for AVX-512, where
// the compiler vectorises its 8 float64 partial sums.
#include "layer_norm.h"

#include <algorithm>
#include <cmath>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

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
// Explicit AVX-512: GCC does not vectorise rows_body's float64 sums (measured 48 us for 128 x
// 384 on one thread against numba's 30). 16 floats a step, widened to two float64 vectors:
// partial sums in 16 float64 lanes (combined in a fixed order), the affine step in float64
// as in rows_body (sub, mul, mul, add: no FMA, -ffp-contract=off), the tail by masked loads.
// Same numerics as rows_body up to the order of the partial sums.
#define QRT_LN_AVX512 __attribute__((target("avx512f")))

QRT_LN_AVX512 inline double hsum(__m512d a, __m512d b) {
    alignas(64) double v[16];
    _mm512_store_pd(v, a);
    _mm512_store_pd(v + 8, b);
    double s = 0.0;
    for (int l = 0; l < 16; ++l) s += v[l];
    return s;
}

// (Helpers are functions with the target attribute, not lambdas: GCC does not give a lambda
// its enclosing function's target, and then refuses to inline the intrinsics into it.)
QRT_LN_AVX512 inline __m512d widen_lo(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }

QRT_LN_AVX512 inline __m512d widen_hi(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

QRT_LN_AVX512 inline void accumulate(__m512 t, __m512d& s0, __m512d& s1, __m512d& q0, __m512d& q1) {
    const __m512d a = widen_lo(t), b = widen_hi(t);
    s0 = _mm512_add_pd(s0, a);
    s1 = _mm512_add_pd(s1, b);
    q0 = _mm512_add_pd(q0, _mm512_mul_pd(a, a));
    q1 = _mm512_add_pd(q1, _mm512_mul_pd(b, b));
}

// ((t - mean) * rstd * g) + b in float64, rounded once to float32; 8 lanes.
QRT_LN_AVX512 inline __m256 affine8(__m512d t, __m512d g, __m512d b, __m512d mean, __m512d rstd, bool has_bias) {
    const __m512d r = _mm512_mul_pd(_mm512_mul_pd(_mm512_sub_pd(t, mean), rstd), g);
    return _mm512_cvtpd_ps(has_bias ? _mm512_add_pd(r, b) : r);
}

QRT_LN_AVX512 inline __m512 affine16(__m512 t, __m512 g, __m512 b, __m512d mean, __m512d rstd, bool has_bias) {
    const __m256 lo = affine8(widen_lo(t), widen_lo(g), widen_lo(b), mean, rstd, has_bias);
    const __m256 hi = affine8(widen_hi(t), widen_hi(g), widen_hi(b), mean, rstd, has_bias);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

QRT_LN_AVX512 void rows_avx512(const float* x, const float* skip, const float* scale, const float* bias,
                               double eps, float* y, int64_t lo, int64_t hi, int64_t d) {
    const int64_t d16 = d / 16 * 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (d - d16)) - 1);
    const bool has_bias = bias != nullptr;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = lo; i < hi; ++i) {
        const float* xr = x + i * d;
        const float* sr = skip + i * d;
        float* yr = y + i * d;                    // holds t = float32(x + skip) until the last pass
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        __m512d q0 = _mm512_setzero_pd(), q1 = _mm512_setzero_pd();
        for (int64_t j = 0; j < d16; j += 16) {
            const __m512 t = _mm512_add_ps(_mm512_loadu_ps(xr + j), _mm512_loadu_ps(sr + j));
            _mm512_storeu_ps(yr + j, t);
            accumulate(t, s0, s1, q0, q1);
        }
        if (tail) {
            const __m512 t = _mm512_add_ps(_mm512_maskz_loadu_ps(tail, xr + d16), _mm512_maskz_loadu_ps(tail, sr + d16));
            _mm512_mask_storeu_ps(yr + d16, tail, t);
            accumulate(t, s0, s1, q0, q1);        // masked-out lanes are 0 + 0: they add nothing
        }
        const double mean = hsum(s0, s1) / static_cast<double>(d);
        const double var = std::max(hsum(q0, q1) / static_cast<double>(d) - mean * mean, 0.0);
        const __m512d vmean = _mm512_set1_pd(mean), vrstd = _mm512_set1_pd(1.0 / std::sqrt(var + eps));
        for (int64_t j = 0; j < d16; j += 16) {
            const __m512 b = has_bias ? _mm512_loadu_ps(bias + j) : zero;
            _mm512_storeu_ps(yr + j, affine16(_mm512_loadu_ps(yr + j), _mm512_loadu_ps(scale + j), b, vmean, vrstd,
                                              has_bias));
        }
        if (tail) {
            const __m512 b = has_bias ? _mm512_maskz_loadu_ps(tail, bias + d16) : zero;
            _mm512_mask_storeu_ps(yr + d16, tail, affine16(_mm512_maskz_loadu_ps(tail, yr + d16),
                                                           _mm512_maskz_loadu_ps(tail, scale + d16), b, vmean, vrstd,
                                                           has_bias));
        }
    }
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
