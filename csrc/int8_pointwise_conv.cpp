// int8 1 x 1 Conv on NCHW memory. Why and numerics: int8_pointwise_conv.h.
//
// Work: an item is one image's block of kBlock pixels times a range of the weight's 64-row
// panels (all of them unless there are too few blocks for the threads). The item quantizes its
// pixels into a per-thread buffer (K / 4 words of 4 channels per pixel; the AVX2 form twice
// that), then walks the panels' row tiles over it; the block's words (K x 64 bytes, 30 KB at
// K = 480) stay in L1 / L2 while they do.
#include "int8_pointwise_conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "hard_sigmoid.h"
#include "int8_gemm_kernels.h"
#include "lanes.h"   // lanes_below8
#include "numeric_bounds.h"
#include "work_pool.h"

namespace qrt {

using namespace int8_detail;

namespace {

constexpr int64_t kBlock = 64;                           // pixels an item quantizes and computes
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;   // below: the calling thread alone
constexpr int64_t kPanelStep = kInt8Panel * 4;           // bytes of one k step of a weight panel

// What every path's block kernel reads; per-row arrays are indexed by the output channel m,
// per-pixel ones by the pixel's place in the block.
struct Call {
    const Int8PackedWeight& w;
    const Int8ActQuant& aq;
    const int32_t* col_corr;   // the path's column correction, wrapped to int32 (per padded row)
    const double* bias;
    FloatEpilogue ep;          // the activation (float_epilogue.h): ReLU and HardSwish applied in
    bool pass;                 // the registers, the GELUs and SiLU to each stored row while in L1
    Int8Isa isa;
    int64_t ldx, ldy;          // X's and Y's row stride: the image's pixel count P
    const int16_t* w16;        // AVX2: the panels sign-extended to int16 (same layout), else null
};

// One item: pixels [0, count) of a block (x, y point at its first pixel's row 0), panels
// [p0, p1), buf the thread's scratch.
struct Block {
    const float* x;
    float* y;
    int64_t count, p0, p1;
    uint32_t* words;   // the quantized block: (k4, kBlock) words (AVX2: (2 k4, kBlock))
    double* sx;        // (kBlock,) per-pixel activation scale, NaN for a NaN pixel
    int32_t* rc;       // (kBlock,) sum_k qx - K z per pixel, wrapped (for weight zero points)
};

inline int8_t weight_byte(const Int8PackedWeight& w, int64_t m, int64_t k) {
    return w.data[static_cast<size_t>(((m / kInt8Panel) * w.k4_stored + k / 4) * kPanelStep + (m % kInt8Panel) * 4 +
                                      k % 4)];
}

// --- the scalar path: the reference loop, int64 sums (any K) -----------------------------------

void block_scalar(const Call& c, const Block& b) {
    const Int8PackedWeight& w = c.w;
    const int64_t k = w.k;
    const double z = c.aq.is_static ? c.aq.zero_point : 0;
    const double lo = quant_lo(c.aq);
    std::vector<int32_t> q(static_cast<size_t>(k));
    for (int64_t j = 0; j < b.count; ++j) {
        double s = c.aq.scale;
        if (!c.aq.is_static) {
            uint32_t top = 0;
            for (int64_t kk = 0; kk < k; ++kk) top = std::max(top, abs_bits(b.x[kk * c.ldx + j]));
            s = dynamic_row_scale(float_of_abs_bits(top));
        }
        int64_t sum = 0;
        bool nan = false;
        for (int64_t kk = 0; kk < k; ++kk) {
            const float v = b.x[kk * c.ldx + j];
            nan |= std::isnan(v);
            q[kk] = quantize_value(v, s, z, lo);
            sum += q[kk];
        }
        const int64_t row_corr = sum - k * static_cast<int64_t>(z);
        const double sx = (c.aq.is_static && nan) ? std::numeric_limits<double>::quiet_NaN() : s;
        for (int64_t m = b.p0 * kInt8Panel; m < std::min(w.n, b.p1 * kInt8Panel); ++m) {
            int64_t acc = 0;
            for (int64_t kk = 0; kk < k; ++kk) acc += int64_t(q[kk]) * weight_byte(w, m, kk);
            acc -= static_cast<int64_t>(z) * w.colsum[m] + int64_t(w.zero_point[m]) * row_corr;
            double v = w.scale[m] * static_cast<double>(acc);
            v = v * sx;
            if (c.bias != nullptr) v = v + c.bias[m];
            b.y[m * c.ldy + j] = float_epilogue_is_pass_only(c.ep) ? static_cast<float>(v)
                                                                   : activation_scalar(static_cast<float>(v), c.ep.act);
        }
    }
    if (float_epilogue_is_pass_only(c.ep))
        for (int64_t m = b.p0 * kInt8Panel; m < std::min(w.n, b.p1 * kInt8Panel); ++m)
            float_epilogue_inplace(b.y + m * c.ldy, b.count, c.ep, Int8Isa::scalar);
}

#if QRT_INT8_X86_SIMD
#define QRT_PW_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni")))
#define QRT_PW_AVX2 __attribute__((target("avx2,fma")))
#define QRT_UNROLL _Pragma("GCC unroll 16")

// --- AVX-512 VNNI ------------------------------------------------------------------------------

// Per-lane quantizer constants of 16 pixels: each lane its own scale s (dynamic) or all the
// static one; the float32 estimate x * fl(1 / s) where 1 / s is a normal float32 (ok), the
// float64 true division for the other lanes and for any vector holding a lane near a
// half-integer (int8_gemm_kernels.h, kTieWindow): quantize_value's integers, lane by lane.
struct Lanes16 {
    __m512d s_lo, s_hi;
    __m512 inv;
    __mmask16 ok;
};

template <bool STATIC>
QRT_PW_AVX512 inline __m512i quantize_lanes16(__m512 v, const Lanes16& l, float z, float lo) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 y = _mm512_mul_ps(v, l.inv);
    const __m512 r = _mm512_roundscale_ps(y, kRound);
    const __mmask16 near =
        _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(y, r)), _mm512_set1_ps(0.5f - kTieWindow), _CMP_GT_OQ);
    __m512i q;
    if constexpr (STATIC) {   // minps(d, c) = d < c ? d : c: NaN -> 127, as minpd
        q = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(_mm512_add_ps(r, _mm512_set1_ps(z)), _mm512_set1_ps(127.0f)),
                                              _mm512_set1_ps(lo)));
    } else {
        // dynamic, an estimated lane: |x| <= max|x| of its pixel, so |y| <= 127 (1 + 2^-22) and r
        // is within [-127, 127] already; the lanes of a NaN or inf pixel have s = NaN and take
        // the float64 path below (not a normal 1 / s), whose clamp gives the reference's 127
        q = _mm512_cvttps_epi32(r);
    }
    const __mmask16 exact = near | static_cast<__mmask16>(~l.ok);
    if (exact)
        q = _mm512_mask_mov_epi32(q, exact, quantize16_exact_avx512(v, l.s_lo, l.s_hi, _mm512_set1_pd(z), _mm512_set1_pd(lo),
                                                                    _mm512_set1_pd(127.0)));
    return q;
}

// s (8 float64 lanes) = dynamic_row_scale(amax) lane by lane: 1 for 0, NaN unless below inf
QRT_PW_AVX512 inline __m512d dynamic_scale8(__m512d amax) {
    __m512d s = _mm512_div_pd(amax, _mm512_set1_pd(127.0));
    s = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(amax, _mm512_setzero_pd(), _CMP_EQ_OQ), s, _mm512_set1_pd(1.0));
    const __mmask8 finite = _mm512_cmp_pd_mask(s, _mm512_set1_pd(std::numeric_limits<double>::infinity()), _CMP_LT_OQ);
    return _mm512_mask_blend_pd(finite, _mm512_set1_pd(std::numeric_limits<double>::quiet_NaN()), s);
}

// whether 1 / s is a normal float32 (quant_estimate_ok), 8 lanes
QRT_PW_AVX512 inline __mmask8 estimate_ok8(__m512d inv) {
    const __m512d a = _mm512_abs_pd(inv);
    return _mm512_cmp_pd_mask(a, _mm512_set1_pd(double(std::numeric_limits<float>::min())), _CMP_GE_OQ) &
           _mm512_cmp_pd_mask(a, _mm512_set1_pd(double(std::numeric_limits<float>::max())), _CMP_LE_OQ);
}

// 16 pixels of one channel (the lanes of mv), prefetching the next 16
QRT_PW_AVX512 inline __m512 load_fetching_next(const float* x, __mmask16 mv) {
    _mm_prefetch(reinterpret_cast<const char*>(x + 16), _MM_HINT_T0);
    return _mm512_maskz_loadu_ps(mv, x);
}

// Four channels' qx of one pixel as the 32-bit lane vpdpbusd reads: u_j = qx_j + 128 in byte j.
// No byte carries into the next (u_j < 256), so the word is sum_j qx_j 2^(8 j) + 0x80808080
// modulo 2^32: three shifts and four adds for 16 pixels.
QRT_PW_AVX512 inline __m512i u8_quads16(const __m512i* q) {
    const __m512i lo = _mm512_add_epi32(q[0], _mm512_slli_epi32(q[1], 8));
    const __m512i hi = _mm512_add_epi32(_mm512_slli_epi32(q[2], 16), _mm512_slli_epi32(q[3], 24));
    return _mm512_add_epi32(_mm512_add_epi32(lo, hi), _mm512_set1_epi32(static_cast<int32_t>(0x80808080u)));
}

// Pixels [16 v, 16 v + 16) of the block: words[kk * kBlock + 16 v + i] = the four u = qx + 128
// of channels 4 kk .. 4 kk + 3 of pixel 16 v + i (128 past K), sx and rc of those pixels.
template <bool STATIC>
QRT_PW_AVX512 void quantize16_pixels(const Call& c, const Block& b, int64_t v) {
    const int64_t k = c.w.k, k4 = c.w.k4;
    const int64_t left = b.count - 16 * v;
    const __mmask16 mv = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const float* x = b.x + 16 * v;
    Lanes16 l;
    if constexpr (STATIC) {
        l.s_lo = l.s_hi = _mm512_set1_pd(c.aq.scale);
    } else {
        // max |x| over the channels as the integer max of the bit patterns with the sign cleared
        // (abs_bits: a NaN's is above every number's, so a NaN pixel gets a NaN scale, as the
        // reference's). The prefetches fetch the next 16 pixels' line of each channel: K lines a
        // channel-plane apart are K streams, too many for the hardware prefetcher.
        const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i bits = _mm512_setzero_si512();
        for (int64_t ch = 0; ch < k; ++ch)
            bits = _mm512_max_epi32(bits, _mm512_and_si512(_mm512_castps_si512(load_fetching_next(x + ch * c.ldx, mv)),
                                                           abs_mask));
        const __m512 top = _mm512_castsi512_ps(bits);
        l.s_lo = dynamic_scale8(_mm512_cvtps_pd(_mm512_castps512_ps256(top)));
        l.s_hi = dynamic_scale8(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(top), 1))));
    }
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d inv_lo = _mm512_div_pd(one, l.s_lo), inv_hi = _mm512_div_pd(one, l.s_hi);
    l.ok = static_cast<__mmask16>(estimate_ok8(inv_lo) | (unsigned(estimate_ok8(inv_hi)) << 8));
    l.inv = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(inv_lo))),
                                                _mm256_castps_pd(_mm512_cvtpd_ps(inv_hi)), 1));
    const float z = STATIC ? static_cast<float>(c.aq.zero_point) : 0.0f;
    const float lo = static_cast<float>(quant_lo(c.aq));
    const bool row_sums = c.w.has_zero_point;   // sum_k qx only meets a weight zero point
    __m512i sum = _mm512_setzero_si512();
    __mmask16 nan = 0;
    for (int64_t kk = 0; kk < k4; ++kk) {
        __m512i q[4];
        for (int j = 0; j < 4; ++j) {
            const int64_t ch = 4 * kk + j;
            q[j] = _mm512_setzero_si512();            // past K: qx = 0, meets a 0 weight byte
            if (ch < k) {
                if (STATIC) _mm_prefetch(reinterpret_cast<const char*>(x + ch * c.ldx + 16), _MM_HINT_T0);
                const __m512 xv = _mm512_maskz_loadu_ps(mv, x + ch * c.ldx);
                if (STATIC) nan |= _mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q);
                q[j] = quantize_lanes16<STATIC>(xv, l, z, lo);
                if (row_sums) sum = _mm512_add_epi32(sum, q[j]);
            }
        }
        _mm512_store_si512(b.words + kk * kBlock + 16 * v, u8_quads16(q));
    }
    // static: a NaN pixel is NaN in the reference's output (quantize_row_scalar)
    const __m512d qnan = _mm512_set1_pd(std::numeric_limits<double>::quiet_NaN());
    _mm512_storeu_pd(b.sx + 16 * v, _mm512_mask_blend_pd(static_cast<__mmask8>(nan), l.s_lo, qnan));
    _mm512_storeu_pd(b.sx + 16 * v + 8, _mm512_mask_blend_pd(static_cast<__mmask8>(nan >> 8), l.s_hi, qnan));
    const int32_t kz = static_cast<int32_t>(static_cast<uint32_t>(k * static_cast<int64_t>(z)));
    _mm512_storeu_si512(b.rc + 16 * v, _mm512_sub_epi32(sum, _mm512_set1_epi32(kz)));
}

// Rows m0 .. m0 + R - 1 (one panel: wq = their bytes of k step 0, 4 apart) x the block's 64
// pixels: exact int32 sums, the corrections, the float64 epilogue, stored to Y's planes.
template <int R, int V>
QRT_PW_AVX512 void tile512(const Call& c, const Block& b, const int8_t* wq, int64_t m0) {
    const int64_t k4 = c.w.k4;
    __m512i acc[R][V];
    QRT_UNROLL for (int r = 0; r < R; ++r) QRT_UNROLL for (int j = 0; j < V; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < k4; ++kk) {
        const uint32_t* a = b.words + kk * kBlock;
        __m512i av[V];
        QRT_UNROLL for (int j = 0; j < V; ++j) av[j] = _mm512_load_si512(a + 16 * j);
        const int8_t* wk = wq + kk * kPanelStep;
        QRT_UNROLL for (int r = 0; r < R; ++r) {
            int32_t word;
            std::memcpy(&word, wk + 4 * r, 4);
            const __m512i wv = _mm512_set1_epi32(word);
            QRT_UNROLL for (int j = 0; j < V; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av[j], wv);
        }
    }
    // the sums to memory, then the epilogue from there: indexed by a run-time pixel count, the
    // accumulators would otherwise live in memory through the k loop too (GCC spilled them)
    alignas(64) int32_t sums[R][16 * V];
    QRT_UNROLL for (int r = 0; r < R; ++r) QRT_UNROLL for (int j = 0; j < V; ++j)
        _mm512_store_si512(&sums[r][16 * j], acc[r][j]);
    for (int r = 0; r < R; ++r) {
        const int64_t m = m0 + r;
        const __m512i cc = _mm512_set1_epi32(c.col_corr[m]);
        const __m512i zw = _mm512_set1_epi32(c.w.zero_point[m]);
        const __m512d sw = _mm512_set1_pd(c.w.scale[m]);
        float* yr = b.y + m * c.ldy;
        for (int j = 0; j < V && 16 * j < b.count; ++j) {
            __m512i t = _mm512_sub_epi32(_mm512_load_si512(&sums[r][16 * j]), cc);
            if (c.w.has_zero_point) t = _mm512_sub_epi32(t, _mm512_mullo_epi32(zw, _mm512_loadu_si512(b.rc + 16 * j)));
            __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(t));
            __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(t, 1));
            lo = _mm512_mul_pd(_mm512_mul_pd(sw, lo), _mm512_loadu_pd(b.sx + 16 * j));
            hi = _mm512_mul_pd(_mm512_mul_pd(sw, hi), _mm512_loadu_pd(b.sx + 16 * j + 8));
            if (c.bias != nullptr) {
                const __m512d bm = _mm512_set1_pd(c.bias[m]);
                lo = _mm512_add_pd(lo, bm);
                hi = _mm512_add_pd(hi, bm);
            }
            const __m512 out = _mm512_castpd_ps(_mm512_insertf64x4(
                _mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))), _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
            const int64_t left = b.count - 16 * j;
            const __mmask16 mj = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
            _mm512_mask_storeu_ps(yr + 16 * j, mj, float_epilogue16(out, c.ep));
        }
        if (c.pass) float_epilogue_inplace(yr, b.count, c.ep, c.isa);   // in L1
    }
}

constexpr int kTileRows512 = 6;   // 24 accumulators + 4 pixel vectors + the broadcast: 29 zmm

// The tiles of one panel's rows [0, rows) over the block's first V vectors of pixels (those
// that hold any: a 1 x 1 Conv on a 2 x 2 or 14 x 14 plane leaves most of a last block empty)
template <int V>
QRT_PW_AVX512 void panel_tiles512(const Call& c, const Block& b, const int8_t* panel, int64_t rows, int64_t m_first) {
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows512) {
        const int8_t* wq = panel + 4 * r0;
        const int64_t m0 = m_first + r0;
        switch (std::min<int64_t>(kTileRows512, rows - r0)) {
            case 6: tile512<6, V>(c, b, wq, m0); break;
            case 5: tile512<5, V>(c, b, wq, m0); break;
            case 4: tile512<4, V>(c, b, wq, m0); break;
            case 3: tile512<3, V>(c, b, wq, m0); break;
            case 2: tile512<2, V>(c, b, wq, m0); break;
            default: tile512<1, V>(c, b, wq, m0); break;
        }
    }
}

QRT_PW_AVX512 void block_avx512(const Call& c, const Block& b) {
    const int64_t vectors = (b.count + 15) / 16;
    for (int64_t v = 0; v < vectors; ++v) {
        if (c.aq.is_static)
            quantize16_pixels<true>(c, b, v);
        else
            quantize16_pixels<false>(c, b, v);
    }
    for (int64_t p = b.p0; p < b.p1; ++p) {
        const int8_t* panel = c.w.data.get() + p * c.w.panel_bytes();
        const int64_t rows = std::min(kInt8Panel, c.w.n - p * kInt8Panel);
        switch (vectors) {
            case 4: panel_tiles512<4>(c, b, panel, rows, p * kInt8Panel); break;
            case 3: panel_tiles512<3>(c, b, panel, rows, p * kInt8Panel); break;
            case 2: panel_tiles512<2>(c, b, panel, rows, p * kInt8Panel); break;
            default: panel_tiles512<1>(c, b, panel, rows, p * kInt8Panel); break;
        }
    }
}

// --- AVX2 and AVX-VNNI (256-bit) ---------------------------------------------------------------

struct Lanes8 {
    __m256d s_lo, s_hi;
    __m256 inv;
    __m256 ok;     // lanes all ones where 1 / s is a normal float32
};

QRT_PW_AVX2 inline __m256i quantize_lanes8(__m256 v, const Lanes8& l, float z, float lo) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m256 y = _mm256_mul_ps(v, l.inv);
    const __m256 r = _mm256_round_ps(y, kRound);
    const __m256 off = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(y, r));
    const __m256 near = _mm256_cmp_ps(off, _mm256_set1_ps(0.5f - kTieWindow), _CMP_GT_OQ);
    __m256i q = _mm256_cvttps_epi32(
        _mm256_max_ps(_mm256_min_ps(_mm256_add_ps(r, _mm256_set1_ps(z)), _mm256_set1_ps(127.0f)), _mm256_set1_ps(lo)));
    const __m256 exact = _mm256_or_ps(near, _mm256_andnot_ps(l.ok, _mm256_castsi256_ps(_mm256_set1_epi32(-1))));
    if (_mm256_movemask_ps(exact)) {
        const __m256d vz = _mm256_set1_pd(z), vlo = _mm256_set1_pd(lo), vhi = _mm256_set1_pd(127.0);
        const __m256i e = _mm256_set_m128i(quantize4_exact_avx2(_mm256_extractf128_ps(v, 1), l.s_hi, vz, vlo, vhi),
                                           quantize4_exact_avx2(_mm256_castps256_ps128(v), l.s_lo, vz, vlo, vhi));
        q = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(q), _mm256_castsi256_ps(e), exact));
    }
    return q;
}

QRT_PW_AVX2 inline __m256d dynamic_scale4(__m256d amax) {
    __m256d s = _mm256_div_pd(amax, _mm256_set1_pd(127.0));
    s = _mm256_blendv_pd(s, _mm256_set1_pd(1.0), _mm256_cmp_pd(amax, _mm256_setzero_pd(), _CMP_EQ_OQ));
    const __m256d finite = _mm256_cmp_pd(s, _mm256_set1_pd(std::numeric_limits<double>::infinity()), _CMP_LT_OQ);
    return _mm256_blendv_pd(_mm256_set1_pd(std::numeric_limits<double>::quiet_NaN()), s, finite);
}

QRT_PW_AVX2 inline __m128 estimate_ok4(__m256d inv) {   // 4 float32 lanes, all ones where ok
    const __m256d a = _mm256_andnot_pd(_mm256_set1_pd(-0.0), inv);
    const __m256d ok = _mm256_and_pd(
        _mm256_cmp_pd(a, _mm256_set1_pd(double(std::numeric_limits<float>::min())), _CMP_GE_OQ),
        _mm256_cmp_pd(a, _mm256_set1_pd(double(std::numeric_limits<float>::max())), _CMP_LE_OQ));
    // the 64-bit all-ones / zero lanes to 32-bit ones: their low halves
    return _mm_castsi128_ps(_mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(_mm256_castpd_si256(ok), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6))));
}

// Pixels [8 v, 8 v + 8) of the block. QUADS (the AVX-VNNI kernel): words[kk * kBlock + 8 v + i]
// = the four u = qx + 128 of channels 4 kk .. + 3 (128 past K), as quantize16_pixels; else (the
// int16 kernel) words[(2 kk + h) * kBlock + 8 v + i] = qx of channels 4 kk + 2 h and + 1 as two
// int16 (0 past K).
template <bool QUADS>
QRT_PW_AVX2 void quantize8_pixels(const Call& c, const Block& b, int64_t v) {
    const int64_t k = c.w.k, k4 = c.w.k4;
    const __m256i mv = lanes_below8(b.count - 8 * v);
    const float* x = b.x + 8 * v;
    Lanes8 l;
    if (c.aq.is_static) {
        l.s_lo = l.s_hi = _mm256_set1_pd(c.aq.scale);
    } else {
        const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
        __m256i top = _mm256_setzero_si256();
        for (int64_t kk = 0; kk < k; ++kk) {
            if (v % 2 == 1) _mm_prefetch(reinterpret_cast<const char*>(x + kk * c.ldx + 8), _MM_HINT_T0);   // as above
            top = _mm256_max_epi32(top, _mm256_and_si256(_mm256_castps_si256(_mm256_maskload_ps(x + kk * c.ldx, mv)),
                                                         abs_mask));
        }
        const __m256 amax = _mm256_castsi256_ps(top);
        l.s_lo = dynamic_scale4(_mm256_cvtps_pd(_mm256_castps256_ps128(amax)));
        l.s_hi = dynamic_scale4(_mm256_cvtps_pd(_mm256_extractf128_ps(amax, 1)));
    }
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256d inv_lo = _mm256_div_pd(one, l.s_lo), inv_hi = _mm256_div_pd(one, l.s_hi);
    l.ok = _mm256_set_m128(estimate_ok4(inv_hi), estimate_ok4(inv_lo));
    l.inv = _mm256_set_m128(_mm256_cvtpd_ps(inv_hi), _mm256_cvtpd_ps(inv_lo));
    const float z = c.aq.is_static ? static_cast<float>(c.aq.zero_point) : 0.0f;
    const float lo = static_cast<float>(quant_lo(c.aq));
    const __m256i shift = _mm256_set1_epi32(128), low16 = _mm256_set1_epi32(0xFFFF);
    __m256i sum = _mm256_setzero_si256();
    __m256 nan = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k4; ++kk) {
        __m256i q[4];
        for (int j = 0; j < 4; ++j) {
            const int64_t ch = 4 * kk + j;
            q[j] = _mm256_setzero_si256();
            if (ch < k) {
                if (c.aq.is_static && v % 2 == 1) _mm_prefetch(reinterpret_cast<const char*>(x + ch * c.ldx + 8), _MM_HINT_T0);
                const __m256 xv = _mm256_maskload_ps(x + ch * c.ldx, mv);
                nan = _mm256_or_ps(nan, _mm256_cmp_ps(xv, xv, _CMP_UNORD_Q));
                q[j] = quantize_lanes8(xv, l, z, lo);
                sum = _mm256_add_epi32(sum, q[j]);
            }
        }
        if constexpr (QUADS) {
            __m256i word = _mm256_setzero_si256();
            for (int j = 0; j < 4; ++j) word = _mm256_or_si256(word, _mm256_slli_epi32(_mm256_add_epi32(q[j], shift), 8 * j));
            _mm256_store_si256(reinterpret_cast<__m256i*>(b.words + kk * kBlock + 8 * v), word);
        } else {
            for (int h = 0; h < 2; ++h) {
                const __m256i pair = _mm256_or_si256(_mm256_and_si256(q[2 * h], low16), _mm256_slli_epi32(q[2 * h + 1], 16));
                _mm256_store_si256(reinterpret_cast<__m256i*>(b.words + (2 * kk + h) * kBlock + 8 * v), pair);
            }
        }
    }
    const __m256 nan_static = c.aq.is_static ? nan : _mm256_setzero_ps();
    const __m256d qnan = _mm256_set1_pd(std::numeric_limits<double>::quiet_NaN());
    // the 32-bit NaN lanes widened to 64-bit masks for the two halves of sx
    const __m256d nan_lo = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(_mm256_castps_si256(nan_static))));
    const __m256d nan_hi = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(_mm256_castps_si256(nan_static), 1)));
    _mm256_storeu_pd(b.sx + 8 * v, _mm256_blendv_pd(l.s_lo, qnan, nan_lo));
    _mm256_storeu_pd(b.sx + 8 * v + 4, _mm256_blendv_pd(l.s_hi, qnan, nan_hi));
    const int32_t kz = static_cast<int32_t>(static_cast<uint32_t>(k * static_cast<int64_t>(z)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.rc + 8 * v), _mm256_sub_epi32(sum, _mm256_set1_epi32(kz)));
}

// The epilogue of one row's 16 pixels [16 g, 16 g + 16) of the block: t (32-byte aligned) = the
// exact int32 accumulators of those pixels before the corrections.
QRT_PW_AVX2 inline void store16_avx2(const Call& c, const Block& b, int64_t m, int64_t g, const int32_t* t) {
    const __m256i cc = _mm256_set1_epi32(c.col_corr[m]);
    const __m256i zw = _mm256_set1_epi32(c.w.zero_point[m]);
    const __m256d sw = _mm256_set1_pd(c.w.scale[m]);
    float* yr = b.y + m * c.ldy;
    for (int h = 0; h < 2; ++h) {
        const int64_t p = 16 * g + 8 * h;
        if (p >= b.count) break;
        __m256i a = _mm256_sub_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(t + 8 * h)), cc);
        if (c.w.has_zero_point)
            a = _mm256_sub_epi32(a, _mm256_mullo_epi32(zw, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.rc + p))));
        __m256d lo = _mm256_mul_pd(_mm256_mul_pd(sw, _mm256_cvtepi32_pd(_mm256_castsi256_si128(a))), _mm256_loadu_pd(b.sx + p));
        __m256d hi = _mm256_mul_pd(_mm256_mul_pd(sw, _mm256_cvtepi32_pd(_mm256_extracti128_si256(a, 1))),
                                   _mm256_loadu_pd(b.sx + p + 4));
        if (c.bias != nullptr) {
            const __m256d bm = _mm256_set1_pd(c.bias[m]);
            lo = _mm256_add_pd(lo, bm);
            hi = _mm256_add_pd(hi, bm);
        }
        __m256 out = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
        out = float_epilogue8(out, c.ep);
        _mm256_maskstore_ps(yr + p, lanes_below8(b.count - p), out);
    }
}

// The int16 kernel: rows m0 .. m0 + R - 1 (w16q = their int16 weights of k step 0 in the
// sign-extended panel, 4 apart) x pixels [16 g, 16 g + 16): per k step, two vpmaddwd of
// (qx pair, qw pair) per row and 8 pixels, exact (|sum| <= 2 * 128 * 128).
template <int R>
QRT_PW_AVX2 void tile_int16(const Call& c, const Block& b, const int16_t* w16q, int64_t m0, int64_t g) {
    const int64_t k4 = c.w.k4;
    __m256i acc[R][2];
    QRT_UNROLL for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t kk = 0; kk < k4; ++kk) {
        const uint32_t* a = b.words + 2 * kk * kBlock + 16 * g;
        const __m256i a00 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a));
        const __m256i a01 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + 8));
        const __m256i a10 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + kBlock));
        const __m256i a11 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + kBlock + 8));
        const int16_t* wk = w16q + kk * kPanelStep;
        QRT_UNROLL for (int r = 0; r < R; ++r) {
            int32_t p0, p1;
            std::memcpy(&p0, wk + 4 * r, 4);
            std::memcpy(&p1, wk + 4 * r + 2, 4);
            const __m256i w0 = _mm256_set1_epi32(p0), w1 = _mm256_set1_epi32(p1);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_add_epi32(_mm256_madd_epi16(a00, w0), _mm256_madd_epi16(a10, w1)));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_add_epi32(_mm256_madd_epi16(a01, w0), _mm256_madd_epi16(a11, w1)));
        }
    }
    alignas(32) int32_t sums[R][16];   // as tile512: the epilogue from memory
    QRT_UNROLL for (int r = 0; r < R; ++r) QRT_UNROLL for (int h = 0; h < 2; ++h)
        _mm256_store_si256(reinterpret_cast<__m256i*>(&sums[r][8 * h]), acc[r][h]);
    for (int r = 0; r < R; ++r) store16_avx2(c, b, m0 + r, g, sums[r]);
}

#if QRT_INT8_AVX_VNNI
// The AVX-VNNI kernel: as tile_int16 on the u8 quads, one vpdpbusd per row and 8 pixels.
template <int R>
__attribute__((target("avx2,fma,avxvnni"))) void tile_vnni256(const Call& c, const Block& b, const int8_t* wq,
                                                              int64_t m0, int64_t g) {
    const int64_t k4 = c.w.k4;
    __m256i acc[R][2];
    QRT_UNROLL for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t kk = 0; kk < k4; ++kk) {
        const uint32_t* a = b.words + kk * kBlock + 16 * g;
        const __m256i a0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a));
        const __m256i a1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + 8));
        const int8_t* wk = wq + kk * kPanelStep;
        QRT_UNROLL for (int r = 0; r < R; ++r) {
            int32_t word;
            std::memcpy(&word, wk + 4 * r, 4);
            const __m256i wv = _mm256_set1_epi32(word);
            acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], a0, wv);
            acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], a1, wv);
        }
    }
    alignas(32) int32_t sums[R][16];   // as tile512: the epilogue from memory
    QRT_UNROLL for (int r = 0; r < R; ++r) QRT_UNROLL for (int h = 0; h < 2; ++h)
        _mm256_store_si256(reinterpret_cast<__m256i*>(&sums[r][8 * h]), acc[r][h]);
    for (int r = 0; r < R; ++r) store16_avx2(c, b, m0 + r, g, sums[r]);
}
#endif

// 256-bit tiles: 4 rows x 16 pixels (int16: 8 accumulators + 4 pixel vectors + 2 weight pairs;
// AVX-VNNI: 6 rows, 12 accumulators + 2 + 1, of 16 ymm)
constexpr int kTileRowsInt16 = 4;
constexpr int kTileRowsVnni256 = 6;

template <bool VNNI>
QRT_PW_AVX2 void block_avx2(const Call& c, const Block& b) {
    for (int64_t v = 0; v < kBlock / 8; ++v) {
        if (8 * v < b.count) {
            quantize8_pixels<VNNI>(c, b, v);
        } else {
            for (int64_t row = 0; row < (VNNI ? 1 : 2) * c.w.k4; ++row)
                _mm256_store_si256(reinterpret_cast<__m256i*>(b.words + row * kBlock + 8 * v), _mm256_setzero_si256());
        }
    }
    constexpr int kRows = VNNI ? kTileRowsVnni256 : kTileRowsInt16;
    for (int64_t p = b.p0; p < b.p1; ++p) {
        const int64_t rows = std::min(kInt8Panel, c.w.n - p * kInt8Panel);
        for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
            const int64_t m0 = p * kInt8Panel + r0;
            const int64_t h = std::min<int64_t>(kRows, rows - r0);
            for (int64_t g = 0; 16 * g < b.count; ++g) {
                if constexpr (VNNI) {
#if QRT_INT8_AVX_VNNI
                    const int8_t* wq = c.w.data.get() + p * c.w.panel_bytes() + 4 * r0;
                    switch (h) {
                        case 6: tile_vnni256<6>(c, b, wq, m0, g); break;
                        case 5: tile_vnni256<5>(c, b, wq, m0, g); break;
                        case 4: tile_vnni256<4>(c, b, wq, m0, g); break;
                        case 3: tile_vnni256<3>(c, b, wq, m0, g); break;
                        case 2: tile_vnni256<2>(c, b, wq, m0, g); break;
                        default: tile_vnni256<1>(c, b, wq, m0, g); break;
                    }
#endif
                } else {
                    const int16_t* w16q = c.w16 + p * c.w.panel_bytes() + 4 * r0;
                    switch (h) {
                        case 4: tile_int16<4>(c, b, w16q, m0, g); break;
                        case 3: tile_int16<3>(c, b, w16q, m0, g); break;
                        case 2: tile_int16<2>(c, b, w16q, m0, g); break;
                        default: tile_int16<1>(c, b, w16q, m0, g); break;
                    }
                }
            }
        }
        if (c.pass)
            for (int64_t m = p * kInt8Panel; m < p * kInt8Panel + rows; ++m)
                float_epilogue_inplace(b.y + m * c.ldy, b.count, c.ep, c.isa);
    }
}

// The panels sign-extended to int16 in their own layout (the int16 kernel's weight pairs):
// 2 bytes a weight, a streaming pass of a few microseconds per call.
QRT_PW_AVX2 void widen_panels(const Int8PackedWeight& w, int16_t* out) {
    const int64_t bytes = w.panels * w.panel_bytes();   // a multiple of 256
    for (int64_t i = 0; i < bytes; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                            _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(w.data.get() + i))));
}
#endif  // QRT_INT8_X86_SIMD

using BlockFn = void (*)(const Call&, const Block&);

BlockFn block_kernel(Int8Isa isa) {
#if QRT_INT8_X86_SIMD
    switch (isa) {
        case Int8Isa::avx512_vnni:
        case Int8Isa::amx: return block_avx512;
#if QRT_INT8_AVX_VNNI
        case Int8Isa::avx_vnni: return block_avx2<true>;
#else
        case Int8Isa::avx_vnni:
#endif
        case Int8Isa::avx2: return block_avx2<false>;
        default: break;
    }
#endif
    return block_scalar;
}

}  // namespace

bool int8_conv_is_pointwise(const ConvGeometry& g) {
    return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 && g.pb == 0 && g.pr == 0 &&
           g.group == 1 && g.h * g.w >= kPointwiseMinPixels;
}

void int8_pointwise_conv(const Int8PackedWeight& w, int64_t n, int64_t p, const float* x, const double* bias,
                         const Int8ActQuant& aq, float* y, Int8Isa isa, int threads, const FloatEpilogue& ep) {
    if (n < 0 || p < 1) throw std::invalid_argument("int8_pointwise_conv: N = " + std::to_string(n) + ", P = " +
                                                    std::to_string(p) + ", expected N >= 0 and P >= 1");
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("int8_pointwise_conv: path ") + int8_isa_name(isa) +
                                    " is not supported by this CPU");
    if (n == 0) return;
    if (w.k > kMaxKInt32) isa = Int8Isa::scalar;   // int32 lanes are exact up to kMaxKInt32 only
    const BlockFn kernel = block_kernel(isa);
    const bool int16_path = kernel != block_scalar && int8_isa_is_avx2_class(isa) &&
                            (isa == Int8Isa::avx2 || !QRT_INT8_AVX_VNNI);
    const bool signed_sums = int16_path;
    // the column correction of this call's zero point: sum u qw = sum qx qw + 128 colsum on the
    // u8 paths, so they subtract (128 + z) colsum; the int16 path sums qx qw and subtracts z colsum
    const int64_t z = aq.is_static ? aq.zero_point : 0;
    const int64_t shift = (signed_sums ? 0 : 128) + z;
    const int64_t rows = w.padded_n();
    std::vector<int32_t> col_corr(static_cast<size_t>(rows));
    for (int64_t m = 0; m < rows; ++m) col_corr[m] = static_cast<int32_t>(static_cast<uint32_t>(shift * w.colsum[m]));
    AlignedArray<int16_t> w16;
    if (int16_path) {
#if QRT_INT8_X86_SIMD
        w16.allocate(static_cast<size_t>(w.panels * w.panel_bytes()));
        widen_panels(w, w16.get());
#endif
    }
    const bool pass = ep.silu || (!ep.hard_swish && (ep.act == Activation::gelu || ep.act == Activation::gelu_tanh));
    const Call call{w, aq, col_corr.data(), bias, ep, pass, isa, p, p, w16.get()};

    int nt = std::max(1, threads);
    const int64_t blocks = (p + kBlock - 1) / kBlock;
    if (static_cast<double>(n) * p * w.n * w.k < double(kParallelMinMacs)) nt = 1;
    // too few blocks for the threads (a 7 x 7 or 14 x 14 plane): split the panels too
    int64_t chunks = 1;
    if (n * blocks < 2 * nt) chunks = std::min(w.panels, (2 * nt + n * blocks - 1) / (n * blocks));
    const int64_t per_chunk = (w.panels + chunks - 1) / chunks;
    chunks = (w.panels + per_chunk - 1) / per_chunk;

    // per-thread scratch: the block's words, scales and row sums
    const int64_t word_rows = 2 * w.k4;                  // enough for either form
    std::vector<AlignedArray<uint32_t>> words(static_cast<size_t>(nt));
    std::vector<std::vector<double>> sx(static_cast<size_t>(nt));
    std::vector<AlignedArray<int32_t>> rc(static_cast<size_t>(nt));
    for (int t = 0; t < nt; ++t) {
        words[t].allocate(static_cast<size_t>(word_rows * kBlock));
        sx[t].resize(kBlock);
        rc[t].allocate(kBlock);
    }
    parallel_items(n * blocks * chunks, nt, [&](int64_t item, int slot) {
        const int64_t chunk = item % chunks, blk = (item / chunks) % blocks, img = item / (chunks * blocks);
        const int64_t p0 = blk * kBlock;
        const Block b{x + img * w.k * p + p0, y + img * w.n * p + p0, std::min(kBlock, p - p0), chunk * per_chunk,
                      std::min(w.panels, (chunk + 1) * per_chunk), words[slot].get(), sx[slot].data(), rc[slot].get()};
        kernel(call, b);
    });
}

}  // namespace qrt
