// int8 Linear, AVX2 path (CPUs without AVX-512 VNNI): the row quantizers and two micro-kernels
// on the same weight panels as the VNNI path. Numerics and layouts: int8_gemm.h.
//
// vpmaddubsw (u8 x s8 -> int16, adjacent pairs summed with saturation) is the fast AVX2 int8
// multiply, but on the VNNI path's operands (u = qx + 128 in [0, 255], qw in [-128, 127]) a
// pair can reach 2 * 255 * 128 > 32767 and saturate. The signed tile moves the signs instead:
// it multiplies |qx| (u8, <= 128) by sign(qx) * qw (vpsignb; s8, exact while qw != -128), so a
// pair is at most 2 * 128 * 127 = 32512: never saturated, hence exact; vpmaddwd against ones
// then sums the pairs into int32 (2 multiplies per 32 products). A weight holding -128 (only
// asymmetric quantization makes one) takes the widening tile: both operands widened to int16,
// vpmaddwd sums each pair of products into int32 (exact for every byte, but 2 multiplies and a
// shuffle per 16 products of a row).
#include "int8_gemm_kernels.h"

#if QRT_INT8_X86_SIMD

#include "simd.h"

#define QRT_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace qrt {
namespace int8_detail {

namespace {

// q = clamp(nearbyint(x / s) + z, lo, 127) for 8 lanes, the reference's float64 true division
// (int8_gemm_kernels.h, quantize_value), estimated first in float32 (kTieWindow there says
// when the estimate is exact; measured: quantizing took 10% of a (16, 1536, 384) Linear on Zen 3
// with the division alone).
constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

struct QuantConsts {
    __m256d vs, vz, vlo, vhi;     // the float64 path
    __m256 inv, z, lo, hi;        // the float32 estimate
    bool estimate;                // 1 / s is a normal float32
};

// q0: lanes 0-3, q1: lanes 4-7 (int32)
QRT_TARGET_AVX2 inline void quantize8(__m256 v, const QuantConsts& c, __m128i& q0, __m128i& q1) {
    if (c.estimate) {
        const __m256 y = _mm256_mul_ps(v, c.inv);
        const __m256 r = _mm256_round_ps(y, kRound);
        // |y - nearbyint(y)| in [0, 0.5]: near 0.5 is near a half-integer (NaN: false)
        const __m256 off = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(y, r));
        if (!_mm256_movemask_ps(_mm256_cmp_ps(off, _mm256_set1_ps(0.5f - kTieWindow), _CMP_GT_OQ))) {
            // minps(d, c) = d < c ? d : c: NaN -> 127, as minpd
            const __m256 d = _mm256_max_ps(_mm256_min_ps(_mm256_add_ps(r, c.z), c.hi), c.lo);
            const __m256i q = _mm256_cvttps_epi32(d);
            q0 = _mm256_castsi256_si128(q);
            q1 = _mm256_extracti128_si256(q, 1);
            return;
        }
    }
    q0 = quantize4_exact_avx2(_mm256_castps256_ps128(v), c.vs, c.vz, c.vlo, c.vhi);
    q1 = quantize4_exact_avx2(_mm256_extractf128_ps(v, 1), c.vs, c.vz, c.vlo, c.vhi);
}

// 4 activation bytes of one k step as int16, repeated in each 64-bit quarter:
// [a0 a1 a2 a3] x 4, so vpmaddwd against 4 columns x 4 k of int16 weights gives, per column,
// two int32 partial sums (k0 + k1, k2 + k3). Broadcast as a dword, then widened by
// interleaving the low 8 bytes of each 128-bit half with zeros.
QRT_TARGET_AVX2 inline __m256i broadcast_u8x4(const uint8_t* a) {
    int32_t word;
    std::memcpy(&word, a, 4);
    return _mm256_unpacklo_epi8(_mm256_set1_epi32(word), _mm256_setzero_si256());
}

// Row r's two accumulators (lo<r>: columns 0-3 of the group, hi<r>: columns 4-7) take one k step.
#define QRT_AVX2_ROW(r)                                                    \
    if constexpr (ROWS > r) {                                              \
        const __m256i a = broadcast_u8x4(u + r * ldu + 4 * kk);            \
        lo##r = _mm256_add_epi32(lo##r, _mm256_madd_epi16(a, wlo));        \
        hi##r = _mm256_add_epi32(hi##r, _mm256_madd_epi16(a, whi));        \
    }

// ROWS x 8 columns (one 32-byte group g of the panel) for the whole K loop, into out[ROWS].
// Named accumulators, not an array: see the VNNI kernel (GCC 12 copies array elements).
template <int ROWS>
QRT_TARGET_AVX2 void group_rows(const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4, int g,
                                __m256i* out) {
    // lane 2c of lo<r> holds the k0 + k1 products of column c, lane 2c + 1 the k2 + k3 ones
    const __m256i zero = _mm256_setzero_si256();
    __m256i lo0 = zero, hi0 = zero, lo1 = zero, hi1 = zero, lo2 = zero, hi2 = zero, lo3 = zero, hi3 = zero;
    static_assert(ROWS >= 1 && ROWS <= kInt8MR && kInt8MR == 4, "one QRT_AVX2_ROW per row of the tile");
    const int8_t* w = panel + 32 * g;
    for (int64_t kk = 0; kk < k4; ++kk, w += kInt8Panel * 4) {
        const __m256i w8 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
        const __m256i wlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w8));
        const __m256i whi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w8, 1));
        QRT_AVX2_ROW(0)
        QRT_AVX2_ROW(1)
        QRT_AVX2_ROW(2)
        QRT_AVX2_ROW(3)
    }
    const __m256i los[kInt8MR] = {lo0, lo1, lo2, lo3}, his[kInt8MR] = {hi0, hi1, hi2, hi3};
    for (int r = 0; r < ROWS; ++r) {
        // hadd within 128-bit halves: [c0 c1 c4 c5 | c2 c3 c6 c7]; the 64-bit permute puts
        // the columns in order
        out[r] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(los[r], his[r]), 0xD8);
    }
}

#undef QRT_AVX2_ROW

template <int ROWS>
QRT_TARGET_AVX2 void tile_rows(const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                               const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    // ReLU is applied to the registers before the store; the GELUs to the stored rows of the
    // tile afterwards, while they are in L1, as on the AVX-512 path (int8_gemm_avx512.cpp)
    const Activation act = ep.act == Activation::relu ? ep.act : Activation::none;
    const bool gelu_after = ep.act == Activation::gelu || ep.act == Activation::gelu_tanh;
    for (int g = 0; g < kInt8Panel / 8; ++g) {
        __m256i acc[ROWS];
        group_rows<ROWS>(u, ldu, panel, k4, g, acc);
        const int64_t n = n0 + 8 * g;
        const __m256i cc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.col_corr + n));
        const __m256i zw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.zw + n));
        const __m256d sw_lo = _mm256_loadu_pd(ep.sw + n), sw_hi = _mm256_loadu_pd(ep.sw + n + 4);
        for (int r = 0; r < ROWS; ++r) {
            const int64_t m = m0 + r;
            // exact int32 corrections (wrapping), then float64 ((s_w * acc) * s_x) + b
            __m256i t = _mm256_sub_epi32(acc[r], cc);
            if (ep.has_zw) {
                const __m256i rc = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(ep.row_corr[m])));
                t = _mm256_sub_epi32(t, _mm256_mullo_epi32(zw, rc));
            }
            // rounded once to float32 (epilogue8_avx2); ReLU (activation.h) before the store
            const __m256 v = epilogue8_avx2(t, sw_lo, sw_hi, ep.sx[m], ep.bias == nullptr ? nullptr : ep.bias + n);
            _mm256_storeu_ps(y + r * ldy + 8 * g, activation_avx2(v, act));
        }
    }
    if (gelu_after)
        for (int r = 0; r < ROWS; ++r) activation_span_avx2(y + r * ldy, kInt8Panel, ep.act);
}


// --- the vpmaddubsw tiles: signed, and narrow ------------------------------------------------

// Two tiles share one K loop (group16_rows), which differ only in a row's k step:
// * signed (NARROW false): |qx| (u8, <= 128) times sign(qx) * qw (vpsignb; s8, exact while
//   qw != -128): a pair is at most 2 * 128 * 127 = 32512, never saturated. Rows are qx then |qx|
//   (quantize_row_avx2_signed); the sums are sum qx * qw.
// * narrow (NARROW true, every |qw| <= kNarrowQMax = 63): the VNNI path's operands, u = qx + 128
//   (u8, <= 255) against qw: a pair is at most 2 * 255 * 63 = 32130, so no vpsignb is needed:
//   per 32 products of a row one broadcast, vpmaddubsw, vpmaddwd and vpaddd, and rows half as
//   long. 1.3-1.4x the signed tile on Zen 3 (benchmarks/RESULTS.md). The sums are sum u * qw;
//   the epilogue subtracts 128 colsum.
// Either way vpmaddwd against ones sums the int16 pairs into int32. Row r's two accumulators
// (a<r>: columns 0-7 of the 16-column group, b<r>: 8-15) take one k step (4 k).
#define QRT_AVX2_G16_ROW(r)                                                                \
    if constexpr (ROWS > r) {                                                              \
        int32_t x_word;                                                                    \
        std::memcpy(&x_word, u + r * ldu + 4 * kk, 4);                                     \
        const __m256i x = _mm256_set1_epi32(x_word);                                       \
        if constexpr (NARROW) {                                                            \
            a##r = _mm256_add_epi32(a##r, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones)); \
            b##r = _mm256_add_epi32(b##r, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones)); \
        } else {                                                                           \
            int32_t ax_word;                                                               \
            std::memcpy(&ax_word, u + r * ldu + half + 4 * kk, 4);                         \
            const __m256i ax = _mm256_set1_epi32(ax_word);                                 \
            a##r = _mm256_add_epi32(a##r, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, x)), ones)); \
            b##r = _mm256_add_epi32(b##r, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, x)), ones)); \
        }                                                                                  \
    }

// ROWS x 16 columns (group g of 16 in the panel) for the whole K loop: out[2r] columns 0-7,
// out[2r + 1] columns 8-15 of row r (int32, exact for K <= kMaxKInt32).
template <bool NARROW, int ROWS>
QRT_TARGET_AVX2 void group16_rows(const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4, int g,
                                  __m256i* out) {
    static_assert(ROWS >= 1 && ROWS <= kInt8MR && kInt8MR == 4, "one QRT_AVX2_G16_ROW per row of the tile");
    [[maybe_unused]] const int64_t half = ldu / 2;     // signed rows: |qx| follows qx
    const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
    __m256i a0 = zero, b0 = zero, a1 = zero, b1 = zero, a2 = zero, b2 = zero, a3 = zero, b3 = zero;
    const int8_t* w = panel + 64 * g;
    for (int64_t kk = 0; kk < k4; ++kk, w += kInt8Panel * 4) {
        const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
        const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32));
        if (g == 0) prefetch_panel_step_ahead(w);   // int8_gemm_kernels.h
        QRT_AVX2_G16_ROW(0)
        QRT_AVX2_G16_ROW(1)
        QRT_AVX2_G16_ROW(2)
        QRT_AVX2_G16_ROW(3)
    }
    const __m256i as[kInt8MR] = {a0, a1, a2, a3}, bs[kInt8MR] = {b0, b1, b2, b3};
    for (int r = 0; r < ROWS; ++r) {
        out[2 * r] = as[r];
        out[2 * r + 1] = bs[r];
    }
}

#undef QRT_AVX2_G16_ROW

// One row (M = 1, or a panel's last row) x all 64 columns of the panel in one K loop: the
// 16-column groups above would walk the panel four times, each pass reading one 64-byte line
// of every 256-byte k step; here each k step's 256 bytes are read once, in order, which is what
// a GEMV streaming a weight from memory needs. out[2g + h]: columns 16 g + 8 h .. + 7.
#define QRT_AVX2_ROW1_COL(j)                                                                 \
    {                                                                                        \
        const __m256i wj = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32 * j));  \
        const __m256i p = NARROW ? _mm256_maddubs_epi16(x, wj)                               \
                                 : _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wj, x));         \
        c##j = _mm256_add_epi32(c##j, _mm256_madd_epi16(p, ones));                           \
    }

template <bool NARROW>
QRT_TARGET_AVX2 void row1_panel(const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4, __m256i* out) {
    static_assert(kInt8Panel == 64, "eight 8-column accumulators per panel");
    [[maybe_unused]] const int64_t half = ldu / 2;
    const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
    __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero, c6 = zero, c7 = zero;
    const int8_t* w = panel;
    for (int64_t kk = 0; kk < k4; ++kk, w += kInt8Panel * 4) {
        int32_t x_word, ax_word = 0;
        std::memcpy(&x_word, u + 4 * kk, 4);
        if constexpr (!NARROW) std::memcpy(&ax_word, u + half + 4 * kk, 4);
        const __m256i x = _mm256_set1_epi32(x_word);
        [[maybe_unused]] const __m256i ax = _mm256_set1_epi32(ax_word);
        QRT_AVX2_ROW1_COL(0) QRT_AVX2_ROW1_COL(1) QRT_AVX2_ROW1_COL(2) QRT_AVX2_ROW1_COL(3)
        QRT_AVX2_ROW1_COL(4) QRT_AVX2_ROW1_COL(5) QRT_AVX2_ROW1_COL(6) QRT_AVX2_ROW1_COL(7)
    }
    // the 16-column groups' order: group g = (c_{2g}, c_{2g+1})
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3, out[4] = c4, out[5] = c5, out[6] = c6, out[7] = c7;
}

#undef QRT_AVX2_ROW1_COL

template <bool NARROW>
struct Group16 {
    static constexpr bool kSignedSums = !NARROW;
    template <int ROWS>
    static constexpr auto run = &group16_rows<NARROW, ROWS>;
    static constexpr auto run_row1 = &row1_panel<NARROW>;     // tile16_rows at ROWS = 1
};

// Four vectors of one row as quantize8 decides: the rare 32 values of quantize32_steps with a
// lane near a half-integer, out of line (see quantize64_careful, int8_gemm_avx512.cpp).
QRT_TARGET_AVX2 __attribute__((noinline)) void quantize32_careful(const float* x, const QuantConsts& c, __m256i* q) {
    for (int i = 0; i < 4; ++i) {
        __m128i q0, q1;
        quantize8(_mm256_loadu_ps(x + 8 * i), c, q0, q1);
        q[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    }
}

// Rows with the float32 estimate (c.estimate): u[j] = qx + 128 for the row's whole 32-value
// steps; returns where it stopped, adds sum qx to *total and (static) the NaN lanes' bits to
// *nan. The AVX-512 quantize64_steps's reasoning (dynamic: no clamp, no NaN, no zero point;
// static: y clamped to +-256, + z, the saturating packs clamp; one pack, flip and vpsadbw per
// four vectors), with vroundps for the tie test: about 9 (dynamic) or 12 (static) vector
// operations per 8 values instead of 22. Same bits: the tests run it with a near tie in every
// step, and with NaN and infinite values.
template <bool kStatic>
QRT_TARGET_AVX2 int64_t quantize32_steps(const float* x, int64_t k, const QuantConsts& c, int32_t z, uint8_t* u,
                                         int64_t* total, int* nan) {
    const __m256 window = _mm256_set1_ps(0.5f - kTieWindow);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 bound = _mm256_set1_ps(256.0f), neg_bound = _mm256_set1_ps(-256.0f);
    const __m256i vz = _mm256_set1_epi32(z);
    // the packs interleave the four vectors by 128-bit lanes: dword 4 L + i holds vector i's
    // values 4 L .. 4 L + 3; this puts them back in order
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i top = _mm256_set1_epi8(static_cast<char>(0x80));
    __m256i sums = _mm256_setzero_si256();   // 4 int64 lanes of sum u
    __m256 nans = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        __m256 r[4];
        __m256 tie = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            const __m256 v = _mm256_loadu_ps(x + j + 8 * i);
            __m256 y = _mm256_mul_ps(v, c.inv);
            if constexpr (kStatic) {
                nans = _mm256_or_ps(nans, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                y = _mm256_max_ps(_mm256_min_ps(y, bound), neg_bound);   // minps(NaN, b) = b
            }
            r[i] = _mm256_round_ps(y, kRound);
            tie = _mm256_or_ps(tie, _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(y, r[i])), window, _CMP_GT_OQ));
        }
        __m256i q[4];
        if (__builtin_expect(_mm256_movemask_ps(tie) != 0, 0)) {
            quantize32_careful(x + j, c, q);
        } else {
            for (int i = 0; i < 4; ++i) {
                q[i] = _mm256_cvttps_epi32(r[i]);
                if constexpr (kStatic) q[i] = _mm256_add_epi32(q[i], vz);
            }
        }
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        const __m256i ub = _mm256_xor_si256(_mm256_permutevar8x32_epi32(bytes, order), top);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + j), ub);
        sums = _mm256_add_epi64(sums, _mm256_sad_epu8(ub, _mm256_setzero_si256()));
    }
    alignas(32) int64_t parts[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(parts), sums);
    *total += parts[0] + parts[1] + parts[2] + parts[3] - 128 * j;
    *nan |= _mm256_movemask_ps(nans);
    return j;
}

}  // namespace

QRT_TARGET_AVX2 void quantize_row_avx2(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                                       uint8_t* u, double* sx, int64_t* row_corr) {
    const int64_t k8 = k - k % 8;   // vector part; the rest through the scalar helpers
    double s = aq.scale;
    if (!aq.is_static) {
        const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
        __m256i top = _mm256_setzero_si256();
        for (int64_t j = 0; j < k8; j += 8)
            top = _mm256_max_epi32(top, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j)), abs_mask));
        alignas(32) uint32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), top);
        uint32_t best = 0;
        for (uint32_t v : lanes) best = best > v ? best : v;
        for (int64_t j = k8; j < k; ++j) best = best > abs_bits(x[j]) ? best : abs_bits(x[j]);
        s = dynamic_row_scale(float_of_abs_bits(best));
    }
    const double z = aq.is_static ? aq.zero_point : 0;
    const double lo = quant_lo(aq);
    const double inv = 1.0 / s;      // NaN for a NaN s: the estimate is then off
    const bool estimate = quant_estimate_ok(inv);
    const QuantConsts c{_mm256_set1_pd(s), _mm256_set1_pd(z), _mm256_set1_pd(lo), _mm256_set1_pd(127.0),
                        _mm256_set1_ps(static_cast<float>(inv)), _mm256_set1_ps(static_cast<float>(z)),
                        _mm256_set1_ps(static_cast<float>(lo)), _mm256_set1_ps(127.0f), estimate};
    const __m128i shift = _mm_set1_epi32(128);
    __m128i sum = _mm_setzero_si128();   // int32 lanes, K <= kMaxKInt32 on this path
    int nan = 0;
    int64_t fast_total = 0;
    int64_t j0 = 0;
    if (estimate)
        j0 = aq.is_static ? quantize32_steps<true>(x, k, c, static_cast<int32_t>(z), u, &fast_total, &nan)
                          : quantize32_steps<false>(x, k, c, 0, u, &fast_total, &nan);
    for (int64_t j = j0; j < k8; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        nan |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        __m128i q0, q1;
        quantize8(v, c, q0, q1);
        sum = _mm_add_epi32(sum, _mm_add_epi32(q0, q1));
        // qx + 128 in [0, 255]: the unsigned saturating packs are exact
        const __m128i w16 = _mm_packus_epi32(_mm_add_epi32(q0, shift), _mm_add_epi32(q1, shift));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(u + j), _mm_packus_epi16(w16, w16));
    }
    alignas(16) int32_t parts[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(parts), sum);
    int64_t total = fast_total + int64_t(parts[0]) + parts[1] + parts[2] + parts[3];
    for (int64_t j = k8; j < k; ++j) {
        nan |= std::isnan(x[j]);
        const int32_t q = quantize_value(x[j], s, z, lo);
        total += q;
        u[j] = static_cast<uint8_t>(q + 128);
    }
    for (int64_t j = k; j < kp; ++j) u[j] = 128;
    *row_corr = total - k * static_cast<int64_t>(z);
    *sx = (aq.is_static && nan) ? std::numeric_limits<double>::quiet_NaN() : s;
}

void tile_avx2(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
               const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    switch (rows) {
        case 4: tile_rows<4>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        case 3: tile_rows<3>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        case 2: tile_rows<2>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        default: tile_rows<1>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
    }
}

QRT_TARGET_AVX2 void quantize_row_avx2_signed(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                                              uint8_t* u, double* sx, int64_t* row_corr) {
    quantize_row_avx2(x, k, kp, aq, u, sx, row_corr);
    // u = qx + 128 -> qx (flip the top bit) in place, |qx| after it (|-128| = 128 as a byte)
    const __m256i top = _mm256_set1_epi8(static_cast<char>(0x80));
    int64_t j = 0;
    for (; j + 32 <= kp; j += 32) {
        const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + j)), top);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + j), q);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + kp + j), _mm256_abs_epi8(q));
    }
    for (; j < kp; ++j) {
        const int32_t q = static_cast<int32_t>(u[j]) - 128;
        u[j] = static_cast<uint8_t>(static_cast<int8_t>(q));
        u[kp + j] = static_cast<uint8_t>(q < 0 ? -q : q);
    }
}

void tile_avx2_signed(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                      const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    tile16<Group16<false>>(rows, u, ldu, panel, k4, ep, m0, n0, y, ldy);
}

void tile_avx2_narrow(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                      const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    tile16<Group16<true>>(rows, u, ldu, panel, k4, ep, m0, n0, y, ldy);
}

// y[i ..] through act's GELU, G vectors side by side (gelu: gelu_erf_avx2_n, G chains; gelu_tanh:
// G calls, each its own chains), for as many whole groups of 8 G values as fit; returns where it
// stopped. Each lane is computed alone: the same bits as one vector at a time. Measured, the
// erf form: Zen 3, the (1024, 384, 1536) Linear + GELU, 2 threads: GELU 1.73 ms one vector at a
// time, 1.25 four, 0.94 eight; the tanh form, four: RESULTS.md "The AVX-512 GELU, eight chains".
template <int G>
QRT_TARGET_AVX2 int64_t gelu_groups_avx2(float* y, int64_t i, int64_t count, Activation act) {
    for (; i + 8 * G <= count; i += 8 * G) {
        __m256 v[G];
        for (int j = 0; j < G; ++j) v[j] = _mm256_loadu_ps(y + i + 8 * j);
        if (act == Activation::gelu)
            act_detail::gelu_erf_avx2_n<G>(v);
        else
            for (int j = 0; j < G; ++j) v[j] = act_detail::gelu_tanh_avx2(v[j]);
        for (int j = 0; j < G; ++j) _mm256_storeu_ps(y + i + 8 * j, v[j]);
    }
    return i;
}

// noipa: specialised for the tiles (count = 64), GCC 12 reports a spurious "iteration ... invokes
// undefined behavior" on its tail loop (-Waggressive-loop-optimizations); one call per row.
QRT_TARGET_AVX2 __attribute__((noipa)) void activation_span_avx2(float* y, int64_t count, Activation act) {
    int64_t i = 0;
    // eight vectors at a time for the erf form (a tile row of 64 columns is one group), four for
    // the tanh form
    if (act == Activation::gelu) i = gelu_groups_avx2<8>(y, i, count, act);
    if (act == Activation::gelu_tanh) i = gelu_groups_avx2<4>(y, i, count, act);
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(y + i, activation_avx2(_mm256_loadu_ps(y + i), act));
    for (; i < count; ++i) y[i] = activation_scalar(y[i], act);   // the same bits as a vector lane
}

}  // namespace int8_detail
}  // namespace qrt

#endif  // QRT_INT8_X86_SIMD
