// int8 Linear, AVX-512 VNNI path: the row quantizer and the vpdpbusd micro-kernel.
// Numerics and layouts: int8_gemm.h. Compiled function by function for AVX-512 (target
// attributes, no global -m flags): called only when cpuid says the CPU has it.
#include "int8_gemm_kernels.h"

#if QRT_INT8_X86_SIMD

#include "simd.h"

// GCC 12's avx512fintrin.h starts some conversions from a deliberately undefined register
// (_mm512_undefined_*), which -Wuninitialized reports at every use; nothing here reads it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif


#define QRT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni")))

namespace qrt {
namespace int8_detail {

namespace {

struct QuantConsts {
    __m512d vs, vz, vlo, vhi;     // the float64 path
    __m512 inv, z, lo, hi;        // the float32 estimate
    bool estimate;                // 1 / s is a normal float32
};

// quantize16_exact_avx512 (int8_gemm_kernels.h), by the float32 estimate where it is exact (int8_gemm_kernels.h, kTieWindow): a
// multiply instead of two float64 divisions of 8 lanes. Measured on Zen 4, 2 threads, GOP/s of
// the whole Linear (RESULTS.md): (M, K, N) = (512, 384, 384) 665 -> 677-713, (512, 1536, 384)
// 708 -> 750-767, (128, 384, 384) 646 -> 693
QRT_TARGET_AVX512 inline __m512i quantize16_estimated(__m512 v, const QuantConsts& c) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    if (c.estimate) {
        const __m512 y = _mm512_mul_ps(v, c.inv);
        const __m512 r = _mm512_roundscale_ps(y, kRound);
        // |y - nearbyint(y)| in [0, 0.5]: near 0.5 is near a half-integer (NaN: false)
        const __m512 off = _mm512_abs_ps(_mm512_sub_ps(y, r));
        if (!_mm512_cmp_ps_mask(off, _mm512_set1_ps(0.5f - kTieWindow), _CMP_GT_OQ)) {
            // minps(d, c) = d < c ? d : c: NaN -> 127, as minpd
            return _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(_mm512_add_ps(r, c.z), c.hi), c.lo));
        }
    }
    return quantize16_exact_avx512(v, c.vs, c.vs, c.vz, c.vlo, c.vhi);
}

QRT_TARGET_AVX512 inline __m512i broadcast_u8x4(const uint8_t* a) {
    int32_t word;
    std::memcpy(&word, a, 4);
    return _mm512_set1_epi32(word);   // 4 u8 of one row, one k step, in every lane
}

// The epilogue of one output row of a tile: acc[j] = the raw sums sum_k u qw of columns
// n0 + 16 j .. + 15 (wrapping int32). Exact int32 corrections (wrapping, int8_gemm.h), then
// float64 in the reference's order ((s_w * acc) * s_x) + b, rounded once to float32, then the
// activation (activation.h) on those float32 values. ReLU is applied to the registers before
// the store; the GELUs to the stored rows of the tile afterwards (finish_rows_avx512), while
// they are in L1: they need most of the vector registers, which the epilogue shares with the
// accumulators (measured: a fused GELU costs ~10% less so).
QRT_TARGET_AVX512 inline void store_row_avx512(const __m512i* acc, const Epilogue& ep, int64_t m, int64_t n0,
                                               float* y, int groups = 4) {
    const Activation act = ep.act == Activation::relu ? ep.act : Activation::none;
    const __m512d sxr = _mm512_set1_pd(ep.sx[m]);
    const __m512i rc = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(ep.row_corr[m])));
    for (int j = 0; j < groups; ++j) {
        const int64_t n = n0 + 16 * j;
        __m512i t = _mm512_sub_epi32(acc[j], _mm512_loadu_si512(ep.col_corr + n));
        if (ep.has_zw) t = _mm512_sub_epi32(t, _mm512_mullo_epi32(_mm512_loadu_si512(ep.zw + n), rc));
        __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(t));
        __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(t, 1));
        lo = _mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(ep.sw + n), lo), sxr);
        hi = _mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(ep.sw + n + 8), hi), sxr);
        if (ep.bias != nullptr) {
            lo = _mm512_add_pd(lo, _mm512_loadu_pd(ep.bias + n));
            hi = _mm512_add_pd(hi, _mm512_loadu_pd(ep.bias + n + 8));
        }
        // the 16 float32 results in one register (insertf64x4: AVX-512F, no DQ needed)
        const __m512 v = _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))), _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
        _mm512_storeu_ps(y + 16 * j, activation_avx512(v, act));
    }
}

// The GELUs of a tile's stored rows, `width` columns each (store_row_avx512 leaves them out)
inline void finish_rows_avx512(int64_t rows, const Epilogue& ep, float* y, int64_t ldy, int64_t width = kInt8Panel) {
    if (ep.act == Activation::gelu || ep.act == Activation::gelu_tanh)
        for (int64_t r = 0; r < rows; ++r) activation_span_avx512(y + r * ldy, width, ep.act);
}

// Row r's 4 accumulators (columns 16 j .. 16 j + 15 in c<r><j>) take one k step.
#define QRT_VNNI_ROW(r)                                             \
    if constexpr (ROWS > r) {                                       \
        const __m512i a = broadcast_u8x4(u + r * ldu + 4 * kk);     \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, a, w0);              \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, a, w1);              \
        c##r##2 = _mm512_dpbusd_epi32(c##r##2, a, w2);              \
        c##r##3 = _mm512_dpbusd_epi32(c##r##3, a, w3);              \
    }

// The K loop of one tile: ROWS x 4 accumulators of 16 int32 lanes in zmm registers, each k
// step loading the panel's 4 x 64 bytes once and broadcasting 4 activation bytes per row.
// The accumulators are named variables, not an array: GCC 12 keeps an array of them in
// registers only with a register-to-register copy of each one per k step (and a spill).
template <int ROWS>
QRT_TARGET_AVX512 void tile_rows(const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                                 const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i c00 = zero, c01 = zero, c02 = zero, c03 = zero, c10 = zero, c11 = zero, c12 = zero, c13 = zero;
    __m512i c20 = zero, c21 = zero, c22 = zero, c23 = zero, c30 = zero, c31 = zero, c32 = zero, c33 = zero;
    __m512i c40 = zero, c41 = zero, c42 = zero, c43 = zero, c50 = zero, c51 = zero, c52 = zero, c53 = zero;
    static_assert(ROWS >= 1 && ROWS <= kAvx512MR && kAvx512MR == 6, "one QRT_VNNI_ROW per row of the tile");
    const int8_t* w = panel;
    for (int64_t kk = 0; kk < k4; ++kk, w += kInt8Panel * 4) {
        // panels are 64-byte aligned (AlignedArray) and 256 bytes per k step
        const __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 64);
        const __m512i w2 = _mm512_load_si512(w + 128), w3 = _mm512_load_si512(w + 192);
        QRT_VNNI_ROW(0)
        QRT_VNNI_ROW(1)
        QRT_VNNI_ROW(2)
        QRT_VNNI_ROW(3)
        QRT_VNNI_ROW(4)
        QRT_VNNI_ROW(5)
    }
    const __m512i acc[kAvx512MR][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23},
                                       {c30, c31, c32, c33}, {c40, c41, c42, c43}, {c50, c51, c52, c53}};
    for (int r = 0; r < ROWS; ++r) store_row_avx512(acc[r], ep, m0 + r, n0, y + r * ldy);
    finish_rows_avx512(ROWS, ep, y, ldy);
}

#undef QRT_VNNI_ROW

// Four vectors of one row by the float64 path or the estimate, each as quantize16_estimated
// decides: the rare 64 values of quantize64_steps with a lane near a half-integer. Out of line,
// so that the hot loop keeps its registers (a call there spilled every constant to the stack).
QRT_TARGET_AVX512 __attribute__((noinline)) void quantize64_careful(const float* x, const QuantConsts& c,
                                                                    __m512i* q) {
    for (int i = 0; i < 4; ++i) q[i] = quantize16_estimated(_mm512_loadu_ps(x + 16 * i), c);
}

// Rows whose 1 / s is a normal float32 (c.estimate): u[j] = qx + 128 for the row's whole
// 64-value steps; returns where it stopped, adds sum qx to *total and (static) ORs the NaN lanes
// into *nan. The general loop's 16 operations per 16 values (port-bound: about 9 cycles on
// Intel, llvm-mca and measured) become about 8 (dynamic) or 11 (static): vreduceps gives
// y - nearbyint(y) in one instruction for the tie test, vcvtps2dq rounds y itself, and four
// vectors share one saturating pack to bytes, one top-bit flip (+ 128) and one vpsadbw for the
// sum. Dynamic (z = 0): |qx| <= 127 without a clamp (|x| <= max|x|, so |x * fl(1 / s)| <=
// 127 (1 + 2^-23), which rounds to 127) and no NaN (max|x| would be NaN, and s with it: no
// estimate). Static: y clamped to +-256 first (beyond, qx clamps whatever the rounding; a NaN
// becomes 256, so 127 as in quantize16_estimated), + z, and the packs saturate to [-128, 127],
// the clamp. Same bits: the tests compare with the reference at every tie, NaN and infinity.
// X quantizing MiniLM-sized rows (768 values), dynamic, ns a row: 148 -> 93 (a standalone copy
// of both loops).
template <bool kStatic>
QRT_TARGET_AVX512 int64_t quantize64_steps(const float* x, int64_t k, const QuantConsts& c, int32_t z, uint8_t* u,
                                           int64_t* total, __mmask16* nan) {
    constexpr int kNear = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 window = _mm512_set1_ps(0.5f - kTieWindow);
    const __m512 bound = _mm512_set1_ps(256.0f), neg_bound = _mm512_set1_ps(-256.0f);
    const __m512i vz = _mm512_set1_epi32(z);
    // packs interleave the four vectors by 128-bit lanes: dword 4 L + i holds vector i's values
    // 4 L .. 4 L + 3; this puts them back in order
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i top = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i sums = _mm512_setzero_si512();   // 8 int64 lanes of sum u
    __mmask16 nans = 0;
    int64_t j = 0;
    for (; j + 64 <= k; j += 64) {
        __m512 y[4];
        __mmask16 tie = 0;
        for (int i = 0; i < 4; ++i) {
            const __m512 v = _mm512_loadu_ps(x + j + 16 * i);
            y[i] = _mm512_mul_ps(v, c.inv);
            if constexpr (kStatic) {
                nans |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                y[i] = _mm512_max_ps(_mm512_min_ps(y[i], bound), neg_bound);   // minps(NaN, b) = b
            }
            tie |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_reduce_ps(y[i], kNear)), window, _CMP_GT_OQ);
        }
        __m512i q[4];
        if (__builtin_expect(tie != 0, 0)) {
            quantize64_careful(x + j, c, q);
        } else {
            for (int i = 0; i < 4; ++i) {
                q[i] = _mm512_cvt_roundps_epi32(y[i], kNear);
                if constexpr (kStatic) q[i] = _mm512_add_epi32(q[i], vz);
            }
        }
        const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
        const __m512i ub = _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes), top);
        _mm512_storeu_si512(u + j, ub);
        sums = _mm512_add_epi64(sums, _mm512_sad_epu8(ub, _mm512_setzero_si512()));
    }
    *total += _mm512_reduce_add_epi64(sums) - 128 * j;
    *nan |= nans;
    return j;
}

}  // namespace

QRT_TARGET_AVX512 void quantize_row_avx512(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                                           uint8_t* u, double* sx, int64_t* row_corr) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (k % 16)) - 1);
    double s = aq.scale;
    if (!aq.is_static) {
        const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i top = _mm512_setzero_si512();
        int64_t j = 0;
        for (; j + 16 <= k; j += 16)
            top = _mm512_max_epi32(top, _mm512_and_si512(_mm512_loadu_si512(x + j), abs_mask));
        if (j < k) top = _mm512_max_epi32(top, _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, x + j), abs_mask));
        s = dynamic_row_scale(float_of_abs_bits(static_cast<uint32_t>(_mm512_reduce_max_epi32(top))));
    }
    const double z = aq.is_static ? aq.zero_point : 0;
    const double lo = quant_lo(aq);
    const double inv = 1.0 / s;      // NaN for a NaN s: the estimate is then off
    const QuantConsts c{_mm512_set1_pd(s), _mm512_set1_pd(z), _mm512_set1_pd(lo), _mm512_set1_pd(127.0),
                        _mm512_set1_ps(static_cast<float>(inv)), _mm512_set1_ps(static_cast<float>(z)),
                        _mm512_set1_ps(static_cast<float>(lo)), _mm512_set1_ps(127.0f), quant_estimate_ok(inv)};
    const __m512i shift = _mm512_set1_epi32(128);
    // int32 lanes: each sums about K / 16 values of |qx| <= 128, far from overflow for the K
    // this path runs (<= kMaxKInt32)
    __m512i sum = _mm512_setzero_si512();
    __mmask16 nan = 0;
    int64_t total = 0;
    int64_t j = 0;
    if (c.estimate)
        j = aq.is_static ? quantize64_steps<true>(x, k, c, static_cast<int32_t>(z), u, &total, &nan)
                         : quantize64_steps<false>(x, k, c, 0, u, &total, &nan);
    for (; j + 16 <= k; j += 16) {
        const __m512 v = _mm512_loadu_ps(x + j);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __m512i q = quantize16_estimated(v, c);
        sum = _mm512_add_epi32(sum, q);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(u + j), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, shift)));
    }
    if (j < k) {
        const __m512 v = _mm512_maskz_loadu_ps(tail, x + j);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __m512i q = quantize16_estimated(v, c);
        sum = _mm512_mask_add_epi32(sum, tail, sum, q);   // masked lanes quantized 0.0 to z
        // through a register and a copy of its first bytes: the masked memory form of vpmovdb
        // is slow on Zen 4 (a conv stem's rows of 147 values spent a tenth of their
        // quantization on it)
        alignas(16) uint8_t bytes[16];
        _mm_store_si128(reinterpret_cast<__m128i*>(bytes), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, shift)));
        std::memcpy(u + j, bytes, static_cast<size_t>(k - j));
    }
    for (int64_t j = k; j < kp; ++j) u[j] = 128;
    *row_corr = total + static_cast<int64_t>(_mm512_reduce_add_epi32(sum)) - k * static_cast<int64_t>(z);
    *sx = (aq.is_static && nan) ? std::numeric_limits<double>::quiet_NaN() : s;
}

void tile_avx512(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                 const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    // one instantiation per tile height: an edge tile of M % 6 rows costs only its rows, and
    // M = 1 (a GEMV) streams each panel once with 4 accumulators
    switch (rows) {
        case 6: tile_rows<6>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        case 5: tile_rows<5>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        case 4: tile_rows<4>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        case 3: tile_rows<3>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        case 2: tile_rows<2>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
        default: tile_rows<1>(u, ldu, panel, k4, ep, m0, n0, y, ldy); break;
    }
}

QRT_TARGET_AVX512 void store_rows_avx512(int64_t rows, int groups, const int32_t* acc, int64_t lda,
                                         const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * lda;
        __m512i row[4];
        for (int j = 0; j < groups; ++j) row[j] = _mm512_loadu_si512(a + 16 * j);
        store_row_avx512(row, ep, m0 + r, n0, y + r * ldy, groups);
    }
    finish_rows_avx512(rows, ep, y, ldy, 16 * groups);
}

// y[i ..] through act's GELU, G vectors side by side (gelu: gelu_erf_avx512_n, G chains; gelu_tanh:
// G calls, each its own chains), for as many whole groups of 16 G values as fit; returns where
// it stopped. Each lane is computed alone: the same bits as one vector at a time.
template <int G>
QRT_TARGET_AVX512 int64_t gelu_groups_avx512(float* y, int64_t i, int64_t count, Activation act) {
    for (; i + 16 * G <= count; i += 16 * G) {
        __m512 v[G];
        for (int j = 0; j < G; ++j) v[j] = _mm512_loadu_ps(y + i + 16 * j);
        if (act == Activation::gelu)
            act_detail::gelu_erf_avx512_n<G>(v);
        else
            for (int j = 0; j < G; ++j) v[j] = act_detail::gelu_tanh_avx512(v[j]);
        for (int j = 0; j < G; ++j) _mm512_storeu_ps(y + i + 16 * j, v[j]);
    }
    return i;
}

QRT_TARGET_AVX512 void activation_span_avx512(float* y, int64_t count, Activation act) {
    int64_t i = 0;
    // the GELUs several vectors at a time: eight then four for the erf form (a tile row of 64
    // columns is one group of four), four for the tanh form
    if (act == Activation::gelu) i = gelu_groups_avx512<8>(y, i, count, act);
    if (act == Activation::gelu || act == Activation::gelu_tanh) i = gelu_groups_avx512<4>(y, i, count, act);
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(y + i, activation_avx512(_mm512_loadu_ps(y + i), act));
    // the tail as one masked vector (each lane computed alone: the same bits). Not a scalar
    // loop: GCC 12 clones this function for finish_rows_avx512's count = 64 and reports the
    // loop that cannot run there as undefined behaviour (-Waggressive-loop-optimizations).
    if (i < count) {
        const __mmask16 tail = static_cast<__mmask16>((1u << (count - i)) - 1);
        _mm512_mask_storeu_ps(y + i, tail, activation_avx512(_mm512_maskz_loadu_ps(tail, y + i), act));
    }
}

}  // namespace int8_detail
}  // namespace qrt

#endif  // QRT_INT8_X86_SIMD
