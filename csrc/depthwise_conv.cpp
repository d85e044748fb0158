// float32 depthwise Conv: one work item per (image, output channel) plane. Numerics: depthwise_conv.h.
#include "depthwise_conv.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "work_pool.h"

namespace qrt {

namespace {

// Below this many multiply-adds the call stays on the calling thread (a pool round costs a few
// microseconds).
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;

// yrow[j] = yrow[j] + wv * xrow[j * sw] for j < ow: one tap over one output row. The same source
// compiled for each vector width (GCC / clang vectorise the loop; the unit and 2 strides are
// written out so that their loads are contiguous or a fixed shuffle); products and sums stay
// separate roundings (-ffp-contract=off), so every width gives the same bits.
#define QRT_DW_ROW_BODY                                                                        \
    if (sw == 1) {                                                                             \
        for (int64_t j = 0; j < ow; ++j) yrow[j] = yrow[j] + wv * xrow[j];                     \
    } else if (sw == 2) {                                                                      \
        for (int64_t j = 0; j < ow; ++j) yrow[j] = yrow[j] + wv * xrow[2 * j];                 \
    } else {                                                                                   \
        for (int64_t j = 0; j < ow; ++j) yrow[j] = yrow[j] + wv * xrow[j * sw];                \
    }

using RowFn = void (*)(float* __restrict, const float* __restrict, float, int64_t, int64_t);

void row_scalar(float* __restrict yrow, const float* __restrict xrow, float wv, int64_t ow, int64_t sw) {
    QRT_DW_ROW_BODY
}
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) void row_avx2(float* __restrict yrow, const float* __restrict xrow, float wv,
                                              int64_t ow, int64_t sw) {
    QRT_DW_ROW_BODY
}
__attribute__((target("avx512f"))) void row_avx512(float* __restrict yrow, const float* __restrict xrow, float wv,
                                                   int64_t ow, int64_t sw) {
    QRT_DW_ROW_BODY
}
#endif
#undef QRT_DW_ROW_BODY

RowFn row_fn(Int8Isa isa) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    if (isa == Int8Isa::avx512_vnni) return row_avx512;
    if (int8_isa_is_avx2_class(isa)) return row_avx2;
#endif
    (void)isa;
    return row_scalar;
}

}  // namespace

void depthwise_conv2d_isa(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                          Int8Isa isa, int threads) {
    conv_check_geometry(g);
    if (g.group != g.c) throw std::invalid_argument("depthwise_conv2d: group must equal C, got group = " +
                                                    std::to_string(g.group) + ", C = " + std::to_string(g.c));
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("depthwise_conv2d: path ") + int8_isa_name(isa) + " is not supported");
    if (g.n == 0) return;
    const RowFn row = row_fn(isa);
    const int64_t mult = g.m / g.c, oh = g.oh(), ow = g.ow(), hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr;
    const int64_t taps = g.kh * g.kw, planes = g.n * g.m;
    const int nt = planes * oh * ow * taps >= kParallelMinMacs ? threads : 1;
    // unit strides: the plane's rows are computed at the padded plane's pitch, so that each
    // tap is one loop over the whole plane (the taps of row i read row i + a of the padded
    // input; the wp - ow columns past each row are computed too and dropped): 9 long loops
    // instead of 9 short ones per output row. The slack keeps the last row's extra reads in
    // the buffer.
    const bool flat = g.sw == 1 && g.sh == 1;
    const int64_t slack = (g.kw - 1) * g.dw + 16;
    parallel_items(planes, nt, [&](int64_t item) {
        const int64_t n = item / g.m, o = item % g.m, c = o / mult;
        thread_local std::vector<float> plane, acc;
        plane.assign(static_cast<size_t>(hp * wp + slack), 0.0f);
        const float* src = x + (n * g.c + c) * g.h * g.w;
        for (int64_t r = 0; r < g.h; ++r)
            std::copy(src + r * g.w, src + (r + 1) * g.w, plane.data() + (r + g.pt) * wp + g.pl);
        const float* wo = w + o * taps;
        const float b = bias != nullptr ? bias[o] : 0.0f;
        float* yo = y + item * oh * ow;
        if (flat) {
            acc.assign(static_cast<size_t>(oh * wp), b);
            for (int64_t a = 0; a < g.kh; ++a)
                for (int64_t bj = 0; bj < g.kw; ++bj)
                    row(acc.data(), plane.data() + a * g.dh * wp + bj * g.dw, wo[a * g.kw + bj], oh * wp, 1);
            for (int64_t i = 0; i < oh; ++i) std::copy(acc.data() + i * wp, acc.data() + i * wp + ow, yo + i * ow);
            return;
        }
        for (int64_t i = 0; i < oh; ++i) {
            float* yrow = yo + i * ow;
            std::fill(yrow, yrow + ow, b);
            for (int64_t a = 0; a < g.kh; ++a) {
                const float* xrow = plane.data() + (i * g.sh + a * g.dh) * wp;
                for (int64_t bj = 0; bj < g.kw; ++bj) row(yrow, xrow + bj * g.dw, wo[a * g.kw + bj], ow, g.sw);
            }
        }
    });
}

void depthwise_conv2d(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
    depthwise_conv2d_isa(g, x, w, bias, y, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
