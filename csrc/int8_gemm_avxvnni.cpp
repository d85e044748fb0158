// int8 Linear, AVX-VNNI path: VEX-encoded vpdpbusd on ymm registers, for CPUs that have it
// without AVX-512 (Intel Alder Lake and later client cores, Zen 5 parts with AVX-512 off).
// Numerics and layouts: int8_gemm.h; the rows come from the AVX2 quantizer (u = qx + 128).
//
// vpdpbusd multiplies 4 unsigned bytes by 4 signed bytes and adds the four products to an
// int32 lane without intermediate saturation (the saturating form is vpdpbusds), so u x qw is
// exact for every byte, -128 included; the lanes wrap modulo 2^32 and the epilogue's
// corrections recover the accumulator exactly for K <= kMaxKInt32, as on the AVX-512 path.
// The tile is kAvxVnniMR = 6 rows x 16 columns (12 accumulators, 2 weight vectors and one
// broadcast row per k step: 15 of the 16 ymm registers), one vpdpbusd per 32 products of a row.
// 4 rows (8 accumulators, the AVX2 tiles' shape) left the multiplier waiting on vpdpbusd's
// latency: 82-86% of the peak at M = 128 (int8_gemm.h, kAvxVnniMR).
//
// What ran: the reference's bits on an Intel Xeon with AVX-VNNI (2026-12-06: every test of the
// int8 paths, including the forced-AVX2 and sanitizer reruns); on a CPU without it the path is
// not offered and its tests skip. Speed there, 2 threads: 90-100% of the 256-bit vpdpbusd peak
// at M >= 128 on most shapes with the 6-row tile, 0.99x onnxruntime's AVX-VNNI kernel at
// M >= 16 (RESULTS.md, "The Xeon as smaller CPUs").
#include "int8_gemm_kernels.h"

#if QRT_INT8_AVX_VNNI

#include "simd.h"

#define QRT_TARGET_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))

namespace qrt {
namespace int8_detail {

namespace {

#define QRT_VNNI_ROW(r)                                                                        \
    if constexpr (ROWS > r) {                                                                  \
        int32_t word;                                                                          \
        std::memcpy(&word, u + r * ldu + 4 * kk, 4);                                           \
        const __m256i a = _mm256_set1_epi32(word);                                             \
        a##r = _mm256_dpbusd_avx_epi32(a##r, a, w0);                                           \
        b##r = _mm256_dpbusd_avx_epi32(b##r, a, w1);                                           \
    }

// ROWS x 16 columns (group g of the panel) for the whole K loop: out[2r] columns 0-7, out[2r+1]
// columns 8-15 of row r, sum_k u qw (wrapping int32).
template <int ROWS>
QRT_TARGET_AVXVNNI void group16_vnni(const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4, int g,
                                     __m256i* out) {
    static_assert(ROWS >= 1 && ROWS <= kAvxVnniMR && kAvxVnniMR == 6, "one QRT_VNNI_ROW per row of the tile");
    const __m256i zero = _mm256_setzero_si256();
    __m256i a0 = zero, b0 = zero, a1 = zero, b1 = zero, a2 = zero, b2 = zero, a3 = zero, b3 = zero;
    __m256i a4 = zero, b4 = zero, a5 = zero, b5 = zero;
    const int8_t* w = panel + 64 * g;
    for (int64_t kk = 0; kk < k4; ++kk, w += kInt8Panel * 4) {
        const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
        const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32));
        if (g == 0) prefetch_panel_step_ahead(w);   // int8_gemm_kernels.h
        QRT_VNNI_ROW(0)
        QRT_VNNI_ROW(1)
        QRT_VNNI_ROW(2)
        QRT_VNNI_ROW(3)
        QRT_VNNI_ROW(4)
        QRT_VNNI_ROW(5)
    }
    const __m256i as[kAvxVnniMR] = {a0, a1, a2, a3, a4, a5}, bs[kAvxVnniMR] = {b0, b1, b2, b3, b4, b5};
    for (int r = 0; r < ROWS; ++r) {
        out[2 * r] = as[r];
        out[2 * r + 1] = bs[r];
    }
}

#undef QRT_VNNI_ROW

// One row (M = 1, or a panel's last row) x all 64 columns in one K loop, each k step's 256
// bytes read once, in order, as a GEMV streaming its weight wants (the 16-column groups walk
// the panel four times). out[2g + h]: columns 16 g + 8 h .. + 7. Measured on an Intel Xeon
// with AVX-VNNI (2 threads, RESULTS.md "AMX"): M = 1 had run at 0.84-0.97x the AVX2 path.
QRT_TARGET_AVXVNNI void row1_panel_vnni(const uint8_t* u, int64_t, const int8_t* panel, int64_t k4, __m256i* out) {
    static_assert(kInt8Panel == 64, "eight 8-column accumulators per panel");
    const __m256i zero = _mm256_setzero_si256();
    __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero, c6 = zero, c7 = zero;
    const int8_t* w = panel;
    for (int64_t kk = 0; kk < k4; ++kk, w += kInt8Panel * 4) {
        int32_t word;
        std::memcpy(&word, u + 4 * kk, 4);
        const __m256i x = _mm256_set1_epi32(word);
#define QRT_VNNI_COL(j) c##j = _mm256_dpbusd_avx_epi32(c##j, x, _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32 * j)));
        QRT_VNNI_COL(0) QRT_VNNI_COL(1) QRT_VNNI_COL(2) QRT_VNNI_COL(3)
        QRT_VNNI_COL(4) QRT_VNNI_COL(5) QRT_VNNI_COL(6) QRT_VNNI_COL(7)
#undef QRT_VNNI_COL
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3, out[4] = c4, out[5] = c5, out[6] = c6, out[7] = c7;
}

struct VnniGroup16 {
    static constexpr bool kSignedSums = false;
    static constexpr int kRows = kAvxVnniMR;
    template <int ROWS>
    static constexpr auto run = &group16_vnni<ROWS>;
    static constexpr auto run_row1 = &row1_panel_vnni;     // tile16_rows at ROWS = 1
};

}  // namespace

void tile_avx_vnni(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                   const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    tile16<VnniGroup16>(rows, u, ldu, panel, k4, ep, m0, n0, y, ldy);
}

}  // namespace int8_detail
}  // namespace qrt

#endif  // QRT_INT8_AVX_VNNI
