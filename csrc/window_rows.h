// The windows of one output row, for MaxPool (max_pool.cpp; the depthwise Conv used them too
// until it read its input in place with masked loads, depthwise_conv.cpp): out[j] = the window's
// taps folded in order into an accumulator, on the path's vector width. Op is the NaN-keeping
// maximum (MaxTap: x if x > acc or x is NaN, else acc), a template parameter so that another
// window reduction can share the loops. Every width computes each
// output with the same operations in the same order, so the bits do not depend on the ISA.
//
// Why intrinsics: the compiler's loop over one tap at a time loaded and stored the accumulator
// for every tap, and at stride 2 peeled its last vector into a scalar loop that cost more than
// the vector part on 56-wide rows (MaxPool of a ResNet stem: 1.3 ms on one thread, 0.56 with
// whole vectors, about 0.2 with the accumulator in a register). Strides 1 and 2 are vector
// loops; other strides scalar. The caller rounds n up to a multiple of kWindowVec and gives the
// input the slack those extra outputs read: (n - valid) * sw + kWindowVec floats past the last
// valid tap.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "int8_gemm.h"   // Int8Isa

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_WINDOW_X86 1
#include "simd.h"
#else
#define QRT_WINDOW_X86 0
#endif

namespace qrt {
namespace window {

constexpr int64_t kWindowVec = 16;   // outputs per AVX-512 vector, two AVX2 vectors

struct MaxTap {
    static float apply(float acc, float v) { return (v > acc || v != v) ? v : acc; }
#if QRT_WINDOW_X86
    __attribute__((target("avx2"))) static __m256 apply8(__m256 acc, __m256 v) {
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, acc, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        return _mm256_blendv_ps(acc, v, take);
    }
    __attribute__((target("avx512f"))) static __m512 apply16(__m512 acc, __m512 v) {
        const __mmask16 take = static_cast<__mmask16>(_mm512_cmp_ps_mask(v, acc, _CMP_GT_OQ) |
                                                      _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
        return _mm512_mask_blend_ps(take, acc, v);
    }
#endif
};

// plane = the (h, w) plane at src inside a (hp, wp) buffer filled with `fill` (-inf for
// MaxPool), its top-left at row pt, column pl, plus `slack` more fill values after it
// for the extra outputs' reads (the module comment).
inline void padded_plane(std::vector<float>& plane, const float* src, int64_t h, int64_t w, int64_t pt, int64_t pl,
                         int64_t hp, int64_t wp, int64_t slack, float fill) {
    plane.assign(static_cast<size_t>(hp * wp + slack), fill);
    for (int64_t r = 0; r < h; ++r) std::copy(src + r * w, src + (r + 1) * w, plane.data() + (r + pt) * wp + pl);
}

// The taps of one window position: kh x kw, at x0 + a * row_step + b * tap_step. out[j] = the
// taps folded into init, in that order, for the window starting at x0 + j * sw, j < n. The accumulator stays in a register
// through all the taps (one load per tap, one store per output).
struct Taps {
    int64_t kh, kw, row_step, tap_step;
    float init;
};

template <class Op>
void rows_scalar(float* out, const float* x0, const Taps& t, int64_t n, int64_t sw) {
    for (int64_t j = 0; j < n; ++j) {
        float acc = t.init;
        for (int64_t a = 0; a < t.kh; ++a)
            for (int64_t b = 0; b < t.kw; ++b) acc = Op::apply(acc, x0[a * t.row_step + b * t.tap_step + j * sw]);
        out[j] = acc;
    }
}

#if QRT_WINDOW_X86
// 8 taps' inputs at x (stride 1 or 2)
__attribute__((target("avx2"))) inline __m256 load8(const float* x, int64_t sw) {
    if (sw == 1) return _mm256_loadu_ps(x);
    const __m256 lo = _mm256_loadu_ps(x), hi = _mm256_loadu_ps(x + 8);
    // even lanes: lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6, then the 64-bit pairs in order
    const __m256 ev = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0)));
}

template <class Op>
__attribute__((target("avx2"))) void rows_avx2(float* out, const float* x0, const Taps& t, int64_t n, int64_t sw) {
    if (sw > 2) return rows_scalar<Op>(out, x0, t, n, sw);
    for (int64_t j = 0; j < n; j += 8) {
        __m256 acc = _mm256_set1_ps(t.init);
        for (int64_t a = 0; a < t.kh; ++a)
            for (int64_t b = 0; b < t.kw; ++b)
                acc = Op::apply8(acc, load8(x0 + a * t.row_step + b * t.tap_step + j * sw, sw));
        _mm256_storeu_ps(out + j, acc);
    }
}

template <class Op>
__attribute__((target("avx512f"))) void rows_avx512(float* out, const float* x0, const Taps& t, int64_t n, int64_t sw) {
    if (sw > 2) return rows_scalar<Op>(out, x0, t, n, sw);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int64_t j = 0; j < n; j += 16) {
        __m512 acc = _mm512_set1_ps(t.init);
        for (int64_t a = 0; a < t.kh; ++a)
            for (int64_t b = 0; b < t.kw; ++b) {
                const float* x = x0 + a * t.row_step + b * t.tap_step + j * sw;
                const __m512 v = sw == 1 ? _mm512_loadu_ps(x)
                                         : _mm512_permutex2var_ps(_mm512_loadu_ps(x), even, _mm512_loadu_ps(x + 16));
                acc = Op::apply16(acc, v);
            }
        _mm512_storeu_ps(out + j, acc);
    }
}
#endif

template <class Op>
using RowsFn = void (*)(float*, const float*, const Taps&, int64_t, int64_t);

// The function of the path's width: AVX-512 on the avx512_vnni and amx paths, AVX2 on the AVX2-class
// paths, scalar otherwise. n must be a multiple of kWindowVec for the vector ones.
template <class Op>
RowsFn<Op> rows_for(Int8Isa isa) {
#if QRT_WINDOW_X86
    if (int8_isa_is_avx512_class(isa)) return rows_avx512<Op>;
    if (int8_isa_is_avx2_class(isa)) return rows_avx2<Op>;
#endif
    (void)isa;
    return rows_scalar<Op>;
}

}  // namespace window
}  // namespace qrt
