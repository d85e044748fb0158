// float32 depthwise Conv: one work item per (image, output channel) plane. Numerics: depthwise_conv.h.
//
// Each output vector (16 outputs on the AVX-512 paths, 8 on the AVX2 ones) folds its taps in
// registers, reading the input plane where it is: a tap whose input column or row lies in the
// zero padding loads 0 through a masked load (a zero mask for a whole padding row), so every
// output still adds w * 0 for it, as the padded copy this replaced did (the same bits, -0 and
// inf weights included). The copy (a fill, a memmove per input row and one per output row) had
// cost as much as the arithmetic on MobileNet's planes (RESULTS.md, "MobileNetV3-like: the
// float32 layers"). The load masks depend only on the output column and the tap column, so they
// are built once per call, and 8 output rows of one vector column share them; at stride 1 or 2
// (the same down the rows) with a square 3 x 3 or 5 x 5 window, each of their input rows is
// loaded once for all the output rows it feeds (rows_slide_*). Strides 1 and 2 are vector loops
// (stride 2 loads two vectors and keeps the even lanes); other strides, and the scalar path, fold
// one output at a time.
// (Tried, not kept: the plane split once into its even and odd columns, every tap then one plain
// load: 5 x 5 / 2 alone 15-20% faster, in MobileNetV3 no faster, where the time is the input's
// transfer from the other core; and work items by row band instead of plane. RESULTS.md, "Where
// the CNN layers lose in the model: the other core's cache; the squeeze-excite mean in the
// depthwise Conv".)
#include "depthwise_conv.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "elementwise_f32.h"   // mean_row_f32
#include "work_pool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_DW_X86 1
#include "lanes.h"   // lanes_of_bits8, even_lanes8 / 16
// the per-vector loops unrolled, so the accumulators stay in registers (GCC at -O2 otherwise
// kept them in memory: f32_channel_gemm.cpp)
#define QRT_DW_UNROLL _Pragma("GCC unroll 8")
#else
#define QRT_DW_X86 0
#endif

namespace qrt {

namespace {

// Below this many multiply-adds the call stays on the calling thread (a pool round costs a few
// microseconds).
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;

// What one plane's loop needs besides its pointers.
struct Plane {
    const ConvGeometry& g;
    int64_t oh, ow;
    int64_t vec;                        // outputs per vector (0: the scalar loop)
    const std::vector<uint32_t>& bits;  // (output vector, tap column) -> valid lanes of its loads
    FloatEpilogue ep;                   // applied to the registers before the store (empty: none)
};

// Bit e set where element e of the sw * vec floats loaded for output vector v, tap column b
// (starting at input column v * vec * sw + b * dw - pl) is an input column, not padding.
std::vector<uint32_t> load_bits(const ConvGeometry& g, int64_t ow, int64_t vec) {
    const int64_t nv = (ow + vec - 1) / vec, span = vec * g.sw;
    std::vector<uint32_t> bits(static_cast<size_t>(nv * g.kw), 0);
    for (int64_t v = 0; v < nv; ++v)
        for (int64_t b = 0; b < g.kw; ++b) {
            const int64_t start = v * span + b * g.dw - g.pl;
            uint32_t m = 0;
            for (int64_t e = 0; e < span; ++e)
                if (start + e >= 0 && start + e < g.w) m |= uint32_t(1) << e;
            bits[static_cast<size_t>(v * g.kw + b)] = m;
        }
    return bits;
}

using PlaneFn = void (*)(const Plane&, const float*, const float*, float, float*);

void plane_scalar(const Plane& p, const float* x, const float* w, float b, float* y) {
    const ConvGeometry& g = p.g;
    for (int64_t i = 0; i < p.oh; ++i)
        for (int64_t j = 0; j < p.ow; ++j) {
            float acc = b;
            for (int64_t a = 0; a < g.kh; ++a) {
                const int64_t r = i * g.sh + a * g.dh - g.pt;
                for (int64_t t = 0; t < g.kw; ++t) {
                    const int64_t c = j * g.sw + t * g.dw - g.pl;
                    const float v = (r >= 0 && r < g.h && c >= 0 && c < g.w) ? x[r * g.w + c] : 0.0f;
                    acc = std::fma(w[a * g.kw + t], v, acc);
                }
            }
            y[i * p.ow + j] = acc;
        }
}

#if QRT_DW_X86
// Output rows [i0, i0 + U) of output vector v. INSIDE: every tap row of these output rows is an
// input row (all but the plane's first and last few rows), so one load mask per tap serves all U
// rows, and U accumulator chains hide the add's latency (one chain at a time waited on it at every
// tap). Else (U = 1) a tap row in the padding loads zeros through a zero mask. KW: the kernel's
// width when it is 3 or 5 (the tap loop unrolled), else 0 (g.kw at run time).
template <int U, int SW, int KW, bool INSIDE>
__attribute__((target("avx512f"))) void rows_avx512(const Plane& p, const float* x, const float* w, float b, float* y,
                                                    int64_t i0, int64_t v) {
    const ConvGeometry& g = p.g;
    const int64_t kw = KW > 0 ? KW : g.kw, dw = g.dw, rstep = g.sh * g.w;
    const uint32_t* bits = p.bits.data() + v * kw;
    __m512 acc[U];
    QRT_DW_UNROLL for (int u = 0; u < U; ++u) acc[u] = _mm512_set1_ps(b);
    for (int64_t a = 0; a < g.kh; ++a) {
        const int64_t r = i0 * g.sh + a * g.dh - g.pt;   // the input row of tap row a for output row i0
        const bool inside = INSIDE || (r >= 0 && r < g.h);
        // masked-off lanes are not read: the address may point before or past the row
        const float* ra = x + (inside ? r : 0) * g.w + v * 16 * SW - g.pl;
        const float* wa = w + a * kw;
        QRT_DW_UNROLL for (int64_t t = 0; t < kw; ++t) {
            const __m512 wv = _mm512_set1_ps(wa[t]);
            const uint32_t m = inside ? bits[t] : 0;
            QRT_DW_UNROLL for (int u = 0; u < U; ++u) {
                const float* src = ra + u * rstep + t * dw;
                __m512 in;
                if constexpr (SW == 1) {
                    in = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), src);
                } else {
                    in = even_lanes16(_mm512_maskz_loadu_ps(static_cast<__mmask16>(m), src),
                                      _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), src + 16));
                }
                acc[u] = _mm512_fmadd_ps(wv, in, acc[u]);
            }
        }
    }
    const int64_t left = std::min<int64_t>(16, p.ow - v * 16);
    const __mmask16 store = static_cast<__mmask16>((uint32_t(1) << left) - 1);
    QRT_DW_UNROLL for (int u = 0; u < U; ++u)
        _mm512_mask_storeu_ps(y + (i0 + u) * p.ow + v * 16, store, float_epilogue16(acc[u], p.ep));
}

// Output rows [i0, i0 + U) of output vector v when the rows go in stride SW (1 or 2, the same as
// the columns'), dilation 1, through a square KW x KW window, all taps inside the plane: the U rows
// read (U - 1) SW + KW input rows, each row's KW tap vectors loaded once (at stride 2: two masked
// loads and the even lanes) and added to every output row it feeds. rows_avx512 loaded each
// (output row, tap) on its own: at stride 1, U KW^2 loads against (U + KW - 1) KW, and its
// addresses cost more than its arithmetic (perf: the top samples were address adds and spills, 72
// channels at 56 x 56); at stride 2 also U KW^2 lane shuffles against (2 U + KW - 2) KW, on the
// port that does half of the multiply-adds. Each output row still gets its taps in (a, t) order:
// the same bits.
// Every loop of a group fully unrolled, so acc[] stays in registers: at "unroll 16" GCC left the
// 2 U + KW - 2 = 19 input rows of a 5 x 5 stride-2 group rolled, its accumulators in memory (perf).
#define QRT_DW_UNROLL_ALL _Pragma("GCC unroll 32")

// The input rows a group of U output rows reads, and the output row that input row ri feeds as
// its tap row a (-1: none): both slide bodies' one rule
template <int U, int SW, int KW>
constexpr int slide_rows() { return (U - 1) * SW + KW; }
template <int U, int SW>
constexpr int fed_row(int ri, int a) {
    const int d = ri - a;   // tap row a of output row d / SW, if SW divides d
    return d >= 0 && d % SW == 0 && d / SW < U ? d / SW : -1;
}

template <int U, int SW, int KW, bool FULL>
__attribute__((target("avx512f"))) void rows_slide_avx512(const Plane& p, const float* x, const float* w, float b,
                                                          float* y, int64_t i0, int64_t v) {
    const ConvGeometry& g = p.g;
    const uint32_t* bits = p.bits.data() + v * KW;
    const float* base = x + (i0 * SW - g.pt) * g.w + v * 16 * SW - g.pl;   // masked lanes are not read
    __mmask16 lo[KW], hi[KW];
    QRT_DW_UNROLL_ALL for (int t = 0; t < KW; ++t) {
        lo[t] = static_cast<__mmask16>(bits[t]);
        hi[t] = static_cast<__mmask16>(bits[t] >> 16);
    }
    __m512 acc[U];
    QRT_DW_UNROLL_ALL for (int u = 0; u < U; ++u) acc[u] = _mm512_set1_ps(b);
    constexpr int rows_in = slide_rows<U, SW, KW>();
    QRT_DW_UNROLL_ALL for (int ri = 0; ri < rows_in; ++ri) {
        __m512 in[KW];
        QRT_DW_UNROLL_ALL for (int t = 0; t < KW; ++t) {
            const float* src = base + ri * g.w + t * g.dw;
            if constexpr (SW == 1) {
                in[t] = FULL ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(lo[t], src);
            } else if constexpr (FULL) {
                in[t] = even_lanes16(_mm512_loadu_ps(src), _mm512_loadu_ps(src + 16));
            } else {
                in[t] = even_lanes16(_mm512_maskz_loadu_ps(lo[t], src), _mm512_maskz_loadu_ps(hi[t], src + 16));
            }
        }
        QRT_DW_UNROLL_ALL for (int a = 0; a < KW; ++a) {
            const int u = fed_row<U, SW>(ri, a);
            if (u < 0) continue;
            QRT_DW_UNROLL_ALL for (int t = 0; t < KW; ++t)
                acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(w[a * KW + t]), in[t], acc[u]);
        }
    }
    const int64_t left = std::min<int64_t>(16, p.ow - v * 16);
    const __mmask16 store = static_cast<__mmask16>((uint32_t(1) << left) - 1);
    QRT_DW_UNROLL_ALL for (int u = 0; u < U; ++u)
        _mm512_mask_storeu_ps(y + (i0 + u) * p.ow + v * 16, store, float_epilogue16(acc[u], p.ep));
}

template <int U, int SW, int KW, bool INSIDE>
__attribute__((target("avx2,fma"))) void rows_avx2(const Plane& p, const float* x, const float* w, float b, float* y,
                                               int64_t i0, int64_t v) {
    const ConvGeometry& g = p.g;
    const int64_t kw = KW > 0 ? KW : g.kw, dw = g.dw, rstep = g.sh * g.w;
    const uint32_t* bits = p.bits.data() + v * kw;
    __m256 acc[U];
    QRT_DW_UNROLL for (int u = 0; u < U; ++u) acc[u] = _mm256_set1_ps(b);
    for (int64_t a = 0; a < g.kh; ++a) {
        const int64_t r = i0 * g.sh + a * g.dh - g.pt;
        const bool inside = INSIDE || (r >= 0 && r < g.h);
        const float* ra = x + (inside ? r : 0) * g.w + v * 8 * SW - g.pl;   // masked lanes are not read
        const float* wa = w + a * kw;
        QRT_DW_UNROLL for (int64_t t = 0; t < kw; ++t) {
            const __m256 wv = _mm256_set1_ps(wa[t]);
            const uint32_t m = inside ? bits[t] : 0;
            const __m256i lo = lanes_of_bits8(m), hi = lanes_of_bits8(m >> 8);
            QRT_DW_UNROLL for (int u = 0; u < U; ++u) {
                const float* src = ra + u * rstep + t * dw;
                __m256 in = _mm256_maskload_ps(src, lo);
                if constexpr (SW != 1) in = even_lanes8(in, _mm256_maskload_ps(src + 8, hi));
                acc[u] = _mm256_fmadd_ps(wv, in, acc[u]);
            }
        }
    }
    const int64_t left = std::min<int64_t>(8, p.ow - v * 8);
    const __m256i store = lanes_of_bits8((uint32_t(1) << left) - 1);
    QRT_DW_UNROLL for (int u = 0; u < U; ++u)
        _mm256_maskstore_ps(y + (i0 + u) * p.ow + v * 8, store, float_epilogue8(acc[u], p.ep));
}

// rows_slide_avx512 on 8-float vectors: U + KW accumulators and loads in flight, 13 of the 16 ymm
// registers for U = 8, KW = 5
template <int U, int SW, int KW, bool FULL>
__attribute__((target("avx2,fma"))) void rows_slide_avx2(const Plane& p, const float* x, const float* w, float b,
                                                         float* y, int64_t i0, int64_t v) {
    const ConvGeometry& g = p.g;
    const uint32_t* bits = p.bits.data() + v * KW;
    const float* base = x + (i0 * SW - g.pt) * g.w + v * 8 * SW - g.pl;   // masked lanes are not read
    __m256 acc[U];
    QRT_DW_UNROLL_ALL for (int u = 0; u < U; ++u) acc[u] = _mm256_set1_ps(b);
    constexpr int rows_in = slide_rows<U, SW, KW>();
    QRT_DW_UNROLL_ALL for (int ri = 0; ri < rows_in; ++ri) {
        __m256 in[KW];
        QRT_DW_UNROLL_ALL for (int t = 0; t < KW; ++t) {
            const float* src = base + ri * g.w + t * g.dw;
            if constexpr (FULL) {
                in[t] = _mm256_loadu_ps(src);
                if constexpr (SW != 1) in[t] = even_lanes8(in[t], _mm256_loadu_ps(src + 8));
            } else {
                in[t] = _mm256_maskload_ps(src, lanes_of_bits8(bits[t]));
                if constexpr (SW != 1) in[t] = even_lanes8(in[t], _mm256_maskload_ps(src + 8, lanes_of_bits8(bits[t] >> 8)));
            }
        }
        QRT_DW_UNROLL_ALL for (int a = 0; a < KW; ++a) {
            const int u = fed_row<U, SW>(ri, a);
            if (u < 0) continue;
            QRT_DW_UNROLL_ALL for (int t = 0; t < KW; ++t)
                acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(w[a * KW + t]), in[t], acc[u]);
        }
    }
    const int64_t left = std::min<int64_t>(8, p.ow - v * 8);
    const __m256i store = lanes_of_bits8((uint32_t(1) << left) - 1);
    QRT_DW_UNROLL_ALL for (int u = 0; u < U; ++u)
        _mm256_maskstore_ps(y + (i0 + u) * p.ow + v * 8, store, float_epilogue8(acc[u], p.ep));
}

// One plane, vector column by vector column: the middle rows 8 (then 4, then 1) at a time, the
// first and last rows, whose taps reach into the padding, one at a time.
template <int SW, int KW, template <int, int, int, bool> class Rows>
void plane_rows(const Plane& p, const float* x, const float* w, float b, float* y) {
    const ConvGeometry& g = p.g;
    const int64_t nv = (p.ow + p.vec - 1) / p.vec;
    // output row i is "inside" when i * sh - pt >= 0 and i * sh - pt + (kh - 1) * dh <= h - 1
    const int64_t i_lo = std::min(p.oh, (g.pt + g.sh - 1) / g.sh);
    const int64_t last = g.h - 1 - (g.kh - 1) * g.dh + g.pt;
    const int64_t i_hi = std::max(i_lo, std::min(p.oh, last >= 0 ? last / g.sh + 1 : 0));
    for (int64_t v = 0; v < nv; ++v) {
        int64_t i = 0;
        for (; i < i_lo; ++i) Rows<1, SW, KW, false>::run(p, x, w, b, y, i, v);
        for (; i + 8 <= i_hi; i += 8) Rows<8, SW, KW, true>::run(p, x, w, b, y, i, v);
        for (; i + 4 <= i_hi; i += 4) Rows<4, SW, KW, true>::run(p, x, w, b, y, i, v);
        for (; i < i_hi; ++i) Rows<1, SW, KW, true>::run(p, x, w, b, y, i, v);
        for (; i < p.oh; ++i) Rows<1, SW, KW, false>::run(p, x, w, b, y, i, v);
    }
}

// Whether rows [i0, i0 + U) take the rows_slide_* form: several inside rows of a square 3 x 3 or
// 5 x 5 window going down the rows in the columns' stride, dilation 1
template <int U, int SW, int KW, bool INSIDE>
bool slides(const Plane& p) {
    return INSIDE && KW > 0 && U > 1 && p.g.sh == SW && p.g.dh == 1 && p.g.kh == KW;
}

// Whether every load of output vector v's taps reads vec * SW input columns (none in the padding
// or past the row): then plain loads, which cost less than masked ones (the stride-2 form with
// masked loads took 1.4x the time of plain ones on X's cores)
template <int SW, int KW>
bool full_loads(const Plane& p, int64_t v) {
    const uint32_t all = static_cast<uint32_t>((uint64_t(1) << (p.vec * SW)) - 1);
    for (int t = 0; t < KW; ++t)
        if (p.bits[static_cast<size_t>(v * KW + t)] != all) return false;
    return true;
}

template <int U, int SW, int KW, bool INSIDE>
struct Avx512Rows {
    static void run(const Plane& p, const float* x, const float* w, float b, float* y, int64_t i0, int64_t v) {
        if constexpr (KW > 0) {
            if (slides<U, SW, KW, INSIDE>(p))
                return full_loads<SW, KW>(p, v) ? rows_slide_avx512<U, SW, KW, true>(p, x, w, b, y, i0, v)
                                                : rows_slide_avx512<U, SW, KW, false>(p, x, w, b, y, i0, v);
        }
        rows_avx512<U, SW, KW, INSIDE>(p, x, w, b, y, i0, v);
    }
};
template <int U, int SW, int KW, bool INSIDE>
struct Avx2Rows {
    static void run(const Plane& p, const float* x, const float* w, float b, float* y, int64_t i0, int64_t v) {
        if constexpr (KW > 0) {
            if (slides<U, SW, KW, INSIDE>(p))
                return full_loads<SW, KW>(p, v) ? rows_slide_avx2<U, SW, KW, true>(p, x, w, b, y, i0, v)
                                                : rows_slide_avx2<U, SW, KW, false>(p, x, w, b, y, i0, v);
        }
        rows_avx2<U, SW, KW, INSIDE>(p, x, w, b, y, i0, v);
    }
};

// The loop for stride SW, its tap loop unrolled for MobileNet's and EfficientNet's 3- and 5-wide
// kernels
template <int SW, template <int, int, int, bool> class Rows>
PlaneFn plane_kw(int64_t kw) {
    return kw == 3 ? plane_rows<SW, 3, Rows> : kw == 5 ? plane_rows<SW, 5, Rows> : plane_rows<SW, 0, Rows>;
}
#endif

// The path's plane loop and its outputs per vector (0: scalar); strides above 2 fold one output at a time
PlaneFn plane_fn(Int8Isa isa, int64_t sw, int64_t kw, int64_t& vec) {
    vec = 0;
#if QRT_DW_X86
    if (sw <= 2 && int8_isa_is_avx512_class(isa))
        return vec = 16, sw == 1 ? plane_kw<1, Avx512Rows>(kw) : plane_kw<2, Avx512Rows>(kw);
    if (sw <= 2 && int8_isa_is_avx2_class(isa))
        return vec = 8, sw == 1 ? plane_kw<1, Avx2Rows>(kw) : plane_kw<2, Avx2Rows>(kw);
#endif
    (void)isa;
    (void)sw;
    (void)kw;
    return plane_scalar;
}

}  // namespace

void depthwise_conv2d_isa(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                          const FloatEpilogue& ep, float* y, Int8Isa isa, int threads, float* means) {
    conv_check_geometry(g);
    if (g.group != g.c) throw std::invalid_argument("depthwise_conv2d: group must equal C, got group = " +
                                                    std::to_string(g.group) + ", C = " + std::to_string(g.c));
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("depthwise_conv2d: path ") + int8_isa_name(isa) + " is not supported");
    if (g.n == 0) return;
    int64_t vec = 0;
    const PlaneFn fn = plane_fn(isa, g.sw, g.kw, vec);
    const int64_t mult = g.m / g.c, oh = g.oh(), ow = g.ow(), planes = g.n * g.m;
    const std::vector<uint32_t> bits = vec > 0 ? load_bits(g, ow, vec) : std::vector<uint32_t>();
    // the vector loops apply ReLU and HardSwish to their registers, the rest is a pass over the
    // plane just written (in L1 / L2)
    const bool after = !(vec > 0 && float_epilogue_in_registers(ep));
    const Plane plane{g, oh, ow, vec, bits, after ? FloatEpilogue{} : ep};
    const int nt = planes * oh * ow * g.kh * g.kw >= kParallelMinMacs ? threads : 1;
    parallel_items(planes, nt, [&](int64_t item) {
        const int64_t n = item / g.m, o = item % g.m, c = o / mult;
        float* yo = y + item * oh * ow;
        fn(plane, x + (n * g.c + c) * g.h * g.w, w + o * g.kh * g.kw, bias != nullptr ? bias[o] : 0.0f, yo);
        if (after) float_epilogue_inplace(yo, oh * ow, ep, isa);
        if (means != nullptr) means[item] = mean_row_f32(yo, oh * ow, isa);
    });
}

void depthwise_conv2d(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                      const FloatEpilogue& ep, float* y, float* means) {
    depthwise_conv2d_isa(g, x, w, bias, ep, y, int8_current_isa(), int8_get_threads(), means);
}

}  // namespace qrt
