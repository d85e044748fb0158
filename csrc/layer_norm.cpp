// SkipLayerNormalization: numerics in layer_norm.h. One generic row function (rows_body, the
// scalar path) and explicit AVX-512 and AVX2 versions of it.
#include "layer_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "work_pool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include "simd.h"
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
// kSkip false: LayerNormalization of x alone (skip is not read; t = x)
template <bool kSkip>
QRT_LN_INLINE void rows_body(const float* __restrict x, const float* __restrict skip, const float* __restrict scale,
                             const float* __restrict bias, double eps, float* __restrict y, int64_t lo, int64_t hi,
                             int64_t d) {
    for (int64_t i = lo; i < hi; ++i) {
        const float* __restrict xr = x + i * d;
        const float* __restrict sr = kSkip ? skip + i * d : nullptr;
        float* __restrict yr = y + i * d;          // holds t = float32(x + skip) until the last pass
        double s[kLanes] = {0}, q[kLanes] = {0};
        const int64_t d8 = d / kLanes * kLanes;
        for (int64_t j = 0; j < d8; j += kLanes) {
            for (int l = 0; l < kLanes; ++l) {
                const float t = kSkip ? xr[j + l] + sr[j + l] : xr[j + l];
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
            const float t = kSkip ? xr[j] + sr[j] : xr[j];
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

template <bool kSkip>
void rows_scalar(const float* x, const float* skip, const float* scale, const float* bias, double eps, float* y,
                 int64_t lo, int64_t hi, int64_t d) {
    rows_body<kSkip>(x, skip, scale, bias, eps, y, lo, hi, d);
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

// g and b as float64 (g64 / b64 hold scale / bias widened, exactly, once per block of rows: a
// row then spends no conversions on them)
QRT_LN_AVX512 inline __m512 affine16(__m512 t, const double* g64, const double* b64, __m512d mean, __m512d rstd,
                                     bool has_bias) {
    const __m512d zero = _mm512_setzero_pd();
    const __m256 lo = affine8(widen_lo(t), _mm512_loadu_pd(g64), has_bias ? _mm512_loadu_pd(b64) : zero, mean, rstd,
                              has_bias);
    const __m256 hi = affine8(widen_hi(t), _mm512_loadu_pd(g64 + 8), has_bias ? _mm512_loadu_pd(b64 + 8) : zero, mean,
                              rstd, has_bias);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

template <bool kSkip>
QRT_LN_AVX512 void rows_avx512(const float* x, const float* skip, const float* scale, const float* bias,
                               double eps, float* y, int64_t lo, int64_t hi, int64_t d) {
    const int64_t d16 = d / 16 * 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (d - d16)) - 1);
    const bool has_bias = bias != nullptr;
    // scale and bias widened to float64 once for these rows, padded to whole vectors with 0
    // (the same float64 values as widening them in every row: the same bits). MiniLM's
    // SkipLayerNormalization, (128, 384), Zen 4, us: one thread 26.4 -> 21.5, two 14.4 -> 12.5
    const int64_t dpad = d16 + (tail ? 16 : 0);
    std::vector<double> gb(static_cast<size_t>(2 * dpad));
    double* g64 = gb.data();
    double* b64 = g64 + dpad;
    for (int64_t j = 0; j < dpad; j += 16) {
        const __mmask16 k = j < d16 ? static_cast<__mmask16>(0xFFFF) : tail;
        const __m512 g = _mm512_maskz_loadu_ps(k, scale + j);
        const __m512 b = has_bias ? _mm512_maskz_loadu_ps(k, bias + j) : _mm512_setzero_ps();
        _mm512_storeu_pd(g64 + j, widen_lo(g));
        _mm512_storeu_pd(g64 + j + 8, widen_hi(g));
        _mm512_storeu_pd(b64 + j, widen_lo(b));
        _mm512_storeu_pd(b64 + j + 8, widen_hi(b));
    }
    for (int64_t i = lo; i < hi; ++i) {
        const float* xr = x + i * d;
        const float* sr = kSkip ? skip + i * d : nullptr;
        float* yr = y + i * d;                    // holds t = float32(x + skip) until the last pass
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        __m512d q0 = _mm512_setzero_pd(), q1 = _mm512_setzero_pd();
        for (int64_t j = 0; j < d16; j += 16) {
            const __m512 t = kSkip ? _mm512_add_ps(_mm512_loadu_ps(xr + j), _mm512_loadu_ps(sr + j))
                                   : _mm512_loadu_ps(xr + j);
            _mm512_storeu_ps(yr + j, t);
            accumulate(t, s0, s1, q0, q1);
        }
        if (tail) {
            const __m512 t = kSkip ? _mm512_add_ps(_mm512_maskz_loadu_ps(tail, xr + d16),
                                                   _mm512_maskz_loadu_ps(tail, sr + d16))
                                   : _mm512_maskz_loadu_ps(tail, xr + d16);
            _mm512_mask_storeu_ps(yr + d16, tail, t);
            accumulate(t, s0, s1, q0, q1);        // masked-out lanes are 0 + 0: they add nothing
        }
        const double mean = hsum(s0, s1) / static_cast<double>(d);
        const double var = std::max(hsum(q0, q1) / static_cast<double>(d) - mean * mean, 0.0);
        const __m512d vmean = _mm512_set1_pd(mean), vrstd = _mm512_set1_pd(1.0 / std::sqrt(var + eps));
        for (int64_t j = 0; j < d16; j += 16)
            _mm512_storeu_ps(yr + j, affine16(_mm512_loadu_ps(yr + j), g64 + j, b64 + j, vmean, vrstd, has_bias));
        if (tail)
            _mm512_mask_storeu_ps(yr + d16, tail, affine16(_mm512_maskz_loadu_ps(tail, yr + d16), g64 + d16,
                                                           b64 + d16, vmean, vrstd, has_bias));
    }
}

// Explicit AVX2: rows_body's arithmetic exactly, so the scalar path's bits. 8 floats a step,
// widened to two float64 vectors that are rows_body's partial sums s[0..3] and s[4..7]
// (lane l sums the elements j with j % 8 == l, in j order), combined in rows_body's order;
// the d % 8 tail in scalars as there; the affine step in float64 (sub, mul, mul, add).
#define QRT_LN_AVX2 __attribute__((target("avx2")))

QRT_LN_AVX2 inline void accumulate8(__m256 t, __m256d& s0, __m256d& s1, __m256d& q0, __m256d& q1) {
    const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(t)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1));
    s0 = _mm256_add_pd(s0, a);
    s1 = _mm256_add_pd(s1, b);
    q0 = _mm256_add_pd(q0, _mm256_mul_pd(a, a));
    q1 = _mm256_add_pd(q1, _mm256_mul_pd(b, b));
}

// rows_body's (((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))) of the 8 partial sums
QRT_LN_AVX2 inline double combine8(__m256d lo, __m256d hi) {
    alignas(32) double v[8];
    _mm256_store_pd(v, lo);
    _mm256_store_pd(v + 4, hi);
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// g64 / b64: scale and bias widened to float64 once per block of rows (rows_avx2)
QRT_LN_AVX2 inline __m128 affine4(__m128 t, const double* g64, const double* b64, __m256d mean, __m256d rstd,
                                  bool has_bias) {
    const __m256d r = _mm256_mul_pd(_mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(t), mean), rstd), _mm256_loadu_pd(g64));
    return _mm256_cvtpd_ps(has_bias ? _mm256_add_pd(r, _mm256_loadu_pd(b64)) : r);
}

template <bool kSkip>
QRT_LN_AVX2 void rows_avx2(const float* x, const float* skip, const float* scale, const float* bias, double eps,
                           float* y, int64_t lo, int64_t hi, int64_t d) {
    const int64_t d8 = d / 8 * 8;
    const bool has_bias = bias != nullptr;
    // scale and bias as float64 for the vector part, once for these rows (as rows_avx512)
    std::vector<double> gb(static_cast<size_t>(2 * d8));
    double* g64 = gb.data();
    double* b64 = g64 + d8;
    for (int64_t j = 0; j < d8; ++j) {
        g64[j] = static_cast<double>(scale[j]);
        b64[j] = has_bias ? static_cast<double>(bias[j]) : 0.0;
    }
    for (int64_t i = lo; i < hi; ++i) {
        const float* xr = x + i * d;
        const float* sr = kSkip ? skip + i * d : nullptr;
        float* yr = y + i * d;                    // holds t = float32(x + skip) until the last pass
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
        __m256d q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
        for (int64_t j = 0; j < d8; j += 8) {
            const __m256 t = kSkip ? _mm256_add_ps(_mm256_loadu_ps(xr + j), _mm256_loadu_ps(sr + j))
                                   : _mm256_loadu_ps(xr + j);
            _mm256_storeu_ps(yr + j, t);
            accumulate8(t, s0, s1, q0, q1);
        }
        double s_tail = 0.0, q_tail = 0.0;
        for (int64_t j = d8; j < d; ++j) {
            const float t = kSkip ? xr[j] + sr[j] : xr[j];
            yr[j] = t;
            const double t64 = static_cast<double>(t);
            s_tail += t64;
            q_tail += t64 * t64;
        }
        const double mean = (combine8(s0, s1) + s_tail) / static_cast<double>(d);
        const double var = std::max((combine8(q0, q1) + q_tail) / static_cast<double>(d) - mean * mean, 0.0);
        const double rstd = 1.0 / std::sqrt(var + eps);
        const __m256d vmean = _mm256_set1_pd(mean), vrstd = _mm256_set1_pd(rstd);
        for (int64_t j = 0; j < d8; j += 8) {
            const __m256 t = _mm256_loadu_ps(yr + j);
            const __m128 lo4 = affine4(_mm256_castps256_ps128(t), g64 + j, b64 + j, vmean, vrstd, has_bias);
            const __m128 hi4 = affine4(_mm256_extractf128_ps(t, 1), g64 + j + 4, b64 + j + 4, vmean, vrstd, has_bias);
            _mm256_storeu_ps(yr + j, _mm256_set_m128(hi4, lo4));
        }
        for (int64_t j = d8; j < d; ++j) {
            const double r = (static_cast<double>(yr[j]) - mean) * rstd * static_cast<double>(scale[j]);
            yr[j] = static_cast<float>(has_bias ? r + static_cast<double>(bias[j]) : r);
        }
    }
}
#endif

}  // namespace

void skip_layer_norm_f32(const float* x, const float* skip, const float* scale, const float* bias, double epsilon,
                         float* y, int64_t rows, int64_t d, FusedIsa isa, int threads) {
    const bool with_skip = skip != nullptr;
    auto rows_fn = with_skip ? rows_scalar<true> : rows_scalar<false>;
#if QRT_LN_X86_SIMD
    if (isa == FusedIsa::avx512 && fused_isa_supported(isa)) rows_fn = with_skip ? rows_avx512<true> : rows_avx512<false>;
    if (isa == FusedIsa::avx2 && fused_isa_supported(isa)) rows_fn = with_skip ? rows_avx2<true> : rows_avx2<false>;
#else
    (void)isa;
#endif
    const int64_t items = (rows + kSkipLnRowsPerItem - 1) / kSkipLnRowsPerItem;
    int nt = static_cast<int>(std::min<int64_t>(std::max(1, threads), items));
    if (rows * d < kSkipLnParallelMinElements) nt = 1;
    if (nt > 1) {     // items claimed by whoever is awake (csrc/work_pool.h)
        parallel_items(items, nt, [&](int64_t item) {
            const int64_t lo = item * kSkipLnRowsPerItem;
            rows_fn(x, skip, scale, bias, epsilon, y, lo, std::min(rows, lo + kSkipLnRowsPerItem), d);
        });
        return;
    }
    rows_fn(x, skip, scale, bias, epsilon, y, 0, rows, d);
}

}  // namespace qrt
