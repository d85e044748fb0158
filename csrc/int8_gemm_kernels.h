// Internal to the int8 Linear (int8_gemm.cpp and its ISA files): the per-row quantizer and the
// micro-kernel of each code path, and the scalar helpers they share for their edges.
// Numerics and data layouts: int8_gemm.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>

#include "int8_gemm.h"

// The AVX2 and AVX-512 paths use GCC/clang target attributes (compiled for those ISAs function
// by function, the rest of the module stays baseline x86-64).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_INT8_X86_SIMD 1
#include "simd.h"
#else
#define QRT_INT8_X86_SIMD 0
#endif
// The AVX-VNNI tile (_mm256_dpbusd_avx_epi32) needs GCC >= 11 or clang >= 12; older compilers
// build without it and the path is reported unsupported.
#if QRT_INT8_X86_SIMD && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define QRT_INT8_AVX_VNNI 1
#else
#define QRT_INT8_AVX_VNNI 0
#endif

// The AMX tile (int8_gemm_amx.cpp): GCC >= 11 or clang >= 12 for the intrinsics, and Linux,
// whose arch_prctl grants a process the tile state (other systems report the path unsupported).
#if QRT_INT8_X86_SIMD && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define QRT_INT8_AMX 1
#else
#define QRT_INT8_AMX 0
#endif

namespace qrt {
namespace int8_detail {

// What the epilogue of a tile reads. Per-column arrays are padded to panels * kInt8Panel and
// indexed by the global column n; per-row arrays by the global row m.
struct Epilogue {
    const int32_t* col_corr;   // (128 + z) * colsum[n], wrapped to int32 (vector paths)
    const int64_t* colsum;     // exact colsum[n] (scalar path: int64 arithmetic)
    int64_t col_shift;         // 128 + z
    const int32_t* zw;         // weight zero points
    bool has_zw;               // false: zw is all 0, its term is skipped
    const double* sw;          // weight scales, float64
    const double* bias;        // nullptr: no bias (not even + 0.0, which would turn -0.0 into 0.0)
    const int64_t* row_corr;   // sum_k qx[m, k] - K z
    const double* sx;          // activation scale of each row (NaN for a NaN row)
    // applied to each float32 output after the rounding above (activation.h); last, with a
    // default, so that callers that build an Epilogue without it get none
    Activation act = Activation::none;
    // 128 * colsum[n] wrapped to int32 (the weight's col_corr0): the signed-activation tile
    // (tile_avx2_signed) accumulates sum qx * qw, which is the u8 paths' sum minus this
    const int32_t* col_corr0 = nullptr;
};

// Rows of X one quantization work item converts, in the int8 and sparse drivers alike: up to 2
// items a thread, at least 4 and at most 16 rows an item. At M = 16 one 16-row item left the
// second thread idle through the whole round (csr 90%, 2 threads, Zen 4: (K, N) = (1536, 384)
// 15.8 -> 13.5 us, (768, 768) 13.3 -> 12.4; a dense 16 x 1536 item took about 8 us while the
// other thread waited); items of fewer than 4 rows made a small call pay a pool round for
// little work, while a call of 4 rows or fewer now quantizes on the caller alone (dense
// (384, 384), M = 4: 4.2-4.5 -> 3.5-3.8 us; csr (768, 768), M = 4, against one-row items: 5.3
// -> 4.9 us).
constexpr int64_t kQuantRowsMin = 4;
constexpr int64_t kQuantRowsMax = 16;
inline int64_t quant_rows_per_item(int64_t m, int threads) {
    const int64_t items = 2 * static_cast<int64_t>(threads);
    return std::clamp<int64_t>((m + items - 1) / items, kQuantRowsMin, kQuantRowsMax);
}

// One row: x (K,) float32 -> u (kp,) uint8 = qx + 128 (128 for k >= K), *sx, *row_corr.
using QuantizeRowFn = void (*)(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                               uint8_t* u, double* sx, int64_t* row_corr);
// Where a driver's rows go: sink.put(i, row) quantizes row i (K float32 values, contiguous) into
// the call's buffers with the path's quantizer. The rows of the Linear are X's; the Conv
// (int8_conv.cpp) assembles each patch row in scratch first.
struct RowSink {
    QuantizeRowFn quantize_row;
    const Int8ActQuant& aq;
    int64_t k, kp, ldu;
    uint8_t* u;
    double* sx;
    int64_t* row_corr;
    bool signed_rows;        // the path's rows are qx then |qx| (quantize_row_avx2_signed's form)
    void put(int64_t i, const float* row) const { quantize_row(row, k, kp, aq, u + i * ldu, &sx[i], &row_corr[i]); }
    // Static quantization only: row i from values already quantized with aq, given as
    // ubytes[j] = qx + 128 (K bytes), and whether the floats they came from held a NaN. The
    // same row bytes, row sum and scale as put() of those floats (int8_gemm.cpp).
    void put_quantized(int64_t i, const uint8_t* ubytes, bool nan) const;
};
// The path's quantizer in its unsigned form (u = qx + 128, every path's qx being the same):
// for quantizing an input once, before its values are gathered into rows (put_quantized).
QuantizeRowFn unsigned_row_quantizer(Int8Isa isa);
// fill(i0, i1, sink): put rows i0 .. i1 - 1, each exactly once (called on the work pool's
// threads, on disjoint ranges).
using RowFill = std::function<void(int64_t i0, int64_t i1, const RowSink& sink)>;
// int8_linear_isa on rows that fill provides: Y (M, N) = act(epilogue(quant(rows) @ W.T)), the
// same numerics, threads and bits (int8_gemm.h); int8_linear_isa is this with X's rows.
void int8_gemm_rows(const Int8PackedWeight& w, int64_t m, const RowFill& fill, const double* bias,
                    const Int8ActQuant& aq, float* y, Int8Isa isa, int threads, Activation act);

// rows (1 .. the path's tile height: kInt8MR, kAvxVnniMR or kAvx512MR) x kInt8Panel outputs of
// one panel: u rows at u + r * ldu, the panel's (k4, 64, 4) bytes at panel, outputs
// y[r * ldy + c] for c < 64 (a full panel's width), rows m0 + r and columns n0 + c of the
// epilogue's arrays.
using TileFn = void (*)(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel,
                        int64_t k4, const Epilogue& ep, int64_t m0, int64_t n0, float* y,
                        int64_t ldy);

void quantize_row_scalar(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                         uint8_t* u, double* sx, int64_t* row_corr);
void tile_scalar(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                 const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
#if QRT_INT8_X86_SIMD
void quantize_row_avx2(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                       uint8_t* u, double* sx, int64_t* row_corr);
void tile_avx2(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
               const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
// AVX-VNNI (int8_gemm_avxvnni.cpp, where QRT_INT8_AVX_VNNI): the u8 tile on VEX vpdpbusd,
// with quantize_row_avx2.
void tile_avx_vnni(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                   const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
// The signed-activation AVX2 path (vpmaddubsw, exact because |qw| <= 127: see the file).
// Its rows are 2 * kp bytes: qx as int8, then |qx| as uint8 (kp each, 0 past K).
void quantize_row_avx2_signed(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                              uint8_t* u, double* sx, int64_t* row_corr);
void tile_avx2_signed(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                      const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
// The AVX2 tile for narrow weights (every |qw| <= kNarrowQMax, int8_gemm.h): vpmaddubsw on
// quantize_row_avx2's u = qx + 128 directly, exact because 2 * 255 * 63 <= 32767.
void tile_avx2_narrow(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                      const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
// The AVX-512 epilogue on sums already in memory: rows x 16 groups raw sums sum_k u qw (int32,
// wrapping; groups <= 4) at acc[r * lda + c] -> y[r * ldy + c], columns n0 + c of the
// epilogue's arrays: what tile_avx512 stores from its registers (the AMX tile's epilogue).
void store_rows_avx512(int64_t rows, int groups, const int32_t* acc, int64_t lda, const Epilogue& ep, int64_t m0,
                       int64_t n0, float* y, int64_t ldy);
// AMX (int8_gemm_amx.cpp, where QRT_INT8_AMX): a whole row block, any number of rows x the
// panel's 64 columns (the driver calls it once per work item: PathKernels::whole_block), as
// micro-tiles of kAmxMR rows by TDPBUSD with quantize_row_avx512's rows and the AVX-512
// epilogue; a last micro-tile of fewer than kAmxMinRows rows goes to tile_avx512. It reads
// whole 64-byte k chunks: u rows of ldu >= 64 * ceil(k4 / 16) bytes (128 past K), rows up to
// the next multiple of kAmxMR (read, their sums dropped), and the panel's k4 rounded up to
// kAmxK4 steps (int8_pack_weight zero-fills them).
void tile_amx(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
              const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
// Asks Linux once for this process's AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM); whether
// it was granted.
bool amx_permitted();
// The peak probe's AMX loop (peak_probe.cpp): iters x 4 TDPBUSD on register tiles, 16 x 16 x 64
// multiply-adds each; where the path is supported only.
double amx_peak_spin(int64_t iters);
// y[i] = act(y[i]), i < count, in place (activation_inplace)
void activation_span_avx2(float* y, int64_t count, Activation act);
void activation_span_avx512(float* y, int64_t count, Activation act);
void quantize_row_avx512(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                         uint8_t* u, double* sx, int64_t* row_corr);
void tile_avx512(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                 const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy);
#endif

// --- scalar helpers, shared by every path (the vector paths use them for their tails) ------

// |x| as the bit pattern with the sign cleared: for non-negative floats integer order is float
// order, and a NaN has a larger pattern than any number, so an integer max propagates NaN as
// the reference's np.max does (and vectorises, where a float max with NaN rules does not).
inline uint32_t abs_bits(float v) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b & 0x7FFFFFFFu;
}

inline double float_of_abs_bits(uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return static_cast<double>(f);
}

// Dynamic scale from max|x|: amax / 127 in float64, 1.0 for an all-zero row. A row holding a
// NaN or an infinity gets NaN: the reference's output row is all NaN there (its float64
// accumulation meets the NaN of x / s), and s_x = NaN makes the epilogue's row NaN whatever
// integers the NaN quantized to.
inline double dynamic_row_scale(double amax) {
    if (amax == 0.0) return 1.0;
    const double s = amax / 127.0;
    return s < std::numeric_limits<double>::infinity() ? s : std::numeric_limits<double>::quiet_NaN();
}

// qx = clamp(nearbyint(x / s) + z, lo, 127) in float64, the reference's true division (not a
// multiply by 1 / s, which rounds differently near .5). The clamp is written as the selects
// that x86 min/max implement (a NaN becomes 127), so every path gives the same integer.
inline int32_t quantize_value(float x, double s, double z, double lo) {
    double r = std::nearbyint(static_cast<double>(x) / s) + z;
    r = r < 127.0 ? r : 127.0;
    r = r > lo ? r : lo;
    return static_cast<int32_t>(r);
}

// The lower clamp: dynamic activations are symmetric [-127, 127], static ones use all of int8.
inline double quant_lo(const Int8ActQuant& aq) { return aq.is_static ? -128.0 : -127.0; }

// The SIMD quantizers (AVX2, AVX-512) estimate x / s first in float32, a vector at once:
// y = fl(x * fl(1 / s)) is within 2^-23 |r| of r = x / s, and the reference's fl64(r) within
// 2^-53 |r|; for |r| <= 256 (beyond, both clamp) they round alike unless y lies within 2^-15
// of a half-integer. A vector with a lane within kTieWindow of one (x = max|x| / 2 is one:
// 63.5 (1 + e) after s's rounding), or a row whose 1 / s is not a normal float32, takes the
// float64 true division. Division is the slowest instruction of the quantizer (vdivpd: about
// 5 cycles per 4 lanes on Zen 3; on Zen 4, quantizing a row cost as much as 16% of a Linear
// with N = 384), the estimate about 6 cheap instructions per vector.
constexpr float kTieWindow = 0x1p-12f;

// 1 / s as the estimate's float32 factor, and whether it may be used (a normal float32)
inline bool quant_estimate_ok(double inv) {
    return std::fabs(inv) >= double(std::numeric_limits<float>::min()) &&
           std::fabs(inv) <= double(std::numeric_limits<float>::max());
}

// One output of the epilogue from its exact accumulator (scalar path and vector edges).
inline float epilogue_value(int64_t acc, int64_t n, int64_t m, const Epilogue& ep) {
    double v = ep.sw[n] * static_cast<double>(acc);
    v = v * ep.sx[m];
    if (ep.bias != nullptr) v = v + ep.bias[n];
    return activation_scalar(static_cast<float>(v), ep.act);
}

#if QRT_INT8_X86_SIMD
// quantize_value's integers by its float64 true division, a vector at a time: the fallback of
// the SIMD quantizers' float32 estimate (the rows of int8_gemm_avx2.cpp / _avx512.cpp, the
// pixels of int8_pointwise_conv.cpp). Round to nearest even by the rounding immediate (not
// MXCSR), then min / max in the order that turns a NaN into 127 (minpd(d, c) = d < c ? d : c).
// 4 lanes with their scales vs (AVX2); 16 lanes, the scales of lanes 0-7 in vs_lo and of 8-15
// in vs_hi (AVX-512; one row's scale in both, or each pixel's own).
__attribute__((target("avx2"))) inline __m128i quantize4_exact_avx2(__m128 v, __m256d vs, __m256d vz, __m256d vlo,
                                                                   __m256d vhi) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256d d = _mm256_add_pd(_mm256_round_pd(_mm256_div_pd(_mm256_cvtps_pd(v), vs), kRound), vz);
    d = _mm256_max_pd(_mm256_min_pd(d, vhi), vlo);
    return _mm256_cvttpd_epi32(d);
}

__attribute__((target("avx512f"))) inline __m512i quantize16_exact_avx512(__m512 v, __m512d vs_lo, __m512d vs_hi,
                                                                         __m512d vz, __m512d vlo, __m512d vhi) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512d lo8 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi8 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m512d a = _mm512_add_pd(_mm512_roundscale_pd(_mm512_div_pd(lo8, vs_lo), kRound), vz);
    __m512d b = _mm512_add_pd(_mm512_roundscale_pd(_mm512_div_pd(hi8, vs_hi), kRound), vz);
    a = _mm512_max_pd(_mm512_min_pd(a, vhi), vlo);
    b = _mm512_max_pd(_mm512_min_pd(b, vhi), vlo);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvttpd_epi32(a)), _mm512_cvttpd_epi32(b), 1);
}

// The same for 8 outputs of one row on the AVX2 paths (the dense int8 tile and the sparse ELL
// kernel share it): columns n .. n + 7 with their exact int32 accumulators (every correction
// applied), sw_lo / sw_hi = s_w[n .. n + 3] / s_w[n + 4 .. n + 7], bias = &b[n] or nullptr;
// ((s_w * acc) * s_x) + b in float64, rounded once to float32, before any activation.
__attribute__((target("avx2,fma"))) inline __m256 epilogue8_avx2(__m256i acc, __m256d sw_lo, __m256d sw_hi,
                                                                  double sx, const double* bias) {
    const __m256d sxr = _mm256_set1_pd(sx);
    __m256d lo = _mm256_mul_pd(_mm256_mul_pd(sw_lo, _mm256_cvtepi32_pd(_mm256_castsi256_si128(acc))), sxr);
    __m256d hi = _mm256_mul_pd(_mm256_mul_pd(sw_hi, _mm256_cvtepi32_pd(_mm256_extracti128_si256(acc, 1))), sxr);
    if (bias != nullptr) {
        lo = _mm256_add_pd(lo, _mm256_loadu_pd(bias));
        hi = _mm256_add_pd(hi, _mm256_loadu_pd(bias + 4));
    }
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

// The stores of one 16-column group g of a 4 x 64 tile on the 256-bit paths (the signed AVX2
// tile and the AVX-VNNI one): acc[2r + h] holds row r's sums for columns 16 g + 8 h .. + 7,
// as sum u * qw (signed_sums false) or sum qx * qw (true: 128 * colsum added back first); then
// the exact int32 corrections, the epilogue and ReLU (the GELUs are applied by the caller to
// the whole stored rows, activation_span_avx2).
template <int ROWS>
__attribute__((target("avx2,fma"))) inline void store_group16_avx2(const __m256i* acc, bool signed_sums,
                                                                    const Epilogue& ep, int64_t m0, int64_t n0, int g,
                                                                    float* y, int64_t ldy) {
    const Activation act = ep.act == Activation::relu ? ep.act : Activation::none;
    for (int h = 0; h < 2; ++h) {
        const int64_t n = n0 + 16 * g + 8 * h;
        __m256i cc = _mm256_sub_epi32(_mm256_setzero_si256(),
                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.col_corr + n)));
        if (signed_sums)
            cc = _mm256_add_epi32(cc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.col_corr0 + n)));
        const __m256i zw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.zw + n));
        const __m256d sw_lo = _mm256_loadu_pd(ep.sw + n), sw_hi = _mm256_loadu_pd(ep.sw + n + 4);
        for (int r = 0; r < ROWS; ++r) {
            const int64_t m = m0 + r;
            __m256i t = _mm256_add_epi32(acc[2 * r + h], cc);
            if (ep.has_zw) {
                const __m256i rc = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(ep.row_corr[m])));
                t = _mm256_sub_epi32(t, _mm256_mullo_epi32(zw, rc));
            }
            const __m256 v = epilogue8_avx2(t, sw_lo, sw_hi, ep.sx[m], ep.bias == nullptr ? nullptr : ep.bias + n);
            _mm256_storeu_ps(y + r * ldy + 16 * g + 8 * h, activation_avx2(v, act));
        }
    }
}

// The 16-column groups of a 256-bit tile walk the panel in four passes, each reading one
// 64-byte line of every 256-byte k step; a panel that is not in cache yet (a weight streamed
// from memory, M of a few tiles) would come in as four strided passes. Group 0 fetches each
// step's other three lines kPanelPrefetchSteps steps ahead, so the first pass streams the whole
// panel and groups 1-3 find it in cache. (Prefetches do not fault: past the panel's end they are
// dropped.) w: group 0's position in the panel, the start of a k step.
constexpr int64_t kPanelPrefetchSteps = 8;
inline void prefetch_panel_step_ahead(const int8_t* w) {
    const char* ahead = reinterpret_cast<const char*>(w) + kPanelPrefetchSteps * kInt8Panel * 4;
    _mm_prefetch(ahead + 64, _MM_HINT_T0);
    _mm_prefetch(ahead + 128, _MM_HINT_T0);
    _mm_prefetch(ahead + 192, _MM_HINT_T0);
}

// Whether Group has run_row1(u, ldu, panel, k4, out[8]): one row x the whole panel in one K
// loop, which tile16_rows takes for single rows (a GEMV streams the panel once, in order).
template <class Group>
constexpr auto has_row1(int) -> decltype(Group::run_row1, true) { return true; }
template <class Group>
constexpr bool has_row1(long) { return false; }

// A 256-bit tile (rows 1..4, or 1..Group::kRows, x one 64-column panel) built from a
// 16-column K-loop kernel: Group::run<ROWS>(u, ldu, panel, k4, g, out) writes out[2r + h] =
// row r's sums for columns 16 g + 8 h .. + 7, as sum u * qw, or sum qx * qw where
// Group::kSignedSums. The signed AVX2 tile and the AVX-VNNI one differ only in that kernel.
template <class Group, int ROWS>
__attribute__((target("avx2,fma"))) inline void tile16_rows(const uint8_t* u, int64_t ldu, const int8_t* panel,
                                                             int64_t k4, const Epilogue& ep, int64_t m0, int64_t n0,
                                                             float* y, int64_t ldy) {
    if constexpr (ROWS == 1 && has_row1<Group>(0)) {
        __m256i acc[kInt8Panel / 8];
        Group::run_row1(u, ldu, panel, k4, acc);
        for (int g = 0; g < kInt8Panel / 16; ++g)
            store_group16_avx2<1>(acc + 2 * g, Group::kSignedSums, ep, m0, n0, g, y, ldy);
    } else {
        for (int g = 0; g < kInt8Panel / 16; ++g) {
            __m256i acc[2 * ROWS];
            Group::template run<ROWS>(u, ldu, panel, k4, g, acc);
            store_group16_avx2<ROWS>(acc, Group::kSignedSums, ep, m0, n0, g, y, ldy);
        }
    }
    if (ep.act == Activation::gelu || ep.act == Activation::gelu_tanh)
        for (int r = 0; r < ROWS; ++r) activation_span_avx2(y + r * ldy, kInt8Panel, ep.act);
}

// Group::kRows where the group declares it (the AVX-VNNI one: kAvxVnniMR), else kInt8MR.
template <class Group>
constexpr auto group_rows(int) -> decltype(Group::kRows, 0) { return Group::kRows; }
template <class Group>
constexpr int group_rows(long) { return static_cast<int>(kInt8MR); }

// The TileFn of such a tile: one instance per tile height, rows 1 .. group_rows<Group>.
template <class Group, int ROWS = group_rows<Group>(0)>
void tile16(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4, const Epilogue& ep,
            int64_t m0, int64_t n0, float* y, int64_t ldy) {
    if constexpr (ROWS > 1) {
        if (rows < ROWS) return tile16<Group, ROWS - 1>(rows, u, ldu, panel, k4, ep, m0, n0, y, ldy);
    }
    tile16_rows<Group, ROWS>(u, ldu, panel, k4, ep, m0, n0, y, ldy);
}
#endif

}  // namespace int8_detail
}  // namespace qrt
