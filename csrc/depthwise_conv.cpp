// float32 depthwise Conv: one work item per (image, output channel) plane. Numerics: depthwise_conv.h.
#include "depthwise_conv.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "window_rows.h"
#include "work_pool.h"

namespace qrt {

namespace {

// Below this many multiply-adds the call stays on the calling thread (a pool round costs a few
// microseconds).
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;

using window::kWindowVec;

int64_t round_up(int64_t v) { return (v + kWindowVec - 1) / kWindowVec * kWindowVec; }

}  // namespace

void depthwise_conv2d_isa(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                          Int8Isa isa, int threads) {
    conv_check_geometry(g);
    if (g.group != g.c) throw std::invalid_argument("depthwise_conv2d: group must equal C, got group = " +
                                                    std::to_string(g.group) + ", C = " + std::to_string(g.c));
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("depthwise_conv2d: path ") + int8_isa_name(isa) + " is not supported");
    if (g.n == 0) return;
    const auto rows = window::rows_for<window::MacTap>(isa);
    const int64_t mult = g.m / g.c, oh = g.oh(), ow = g.ow(), hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr;
    const int64_t taps = g.kh * g.kw, planes = g.n * g.m;
    const int nt = planes * oh * ow * taps >= kParallelMinMacs ? threads : 1;
    // unit strides: the output is computed at the padded plane's pitch, as one long row (the
    // taps of row i read row i + a of the padded input; the wp - ow columns past each row are
    // computed too and dropped), so a 56-wide plane is one call, not 56. Other strides: row by
    // row. Either way over a whole number of vectors (window_rows.h), the slack keeping the
    // extra outputs' reads in the buffer.
    const bool flat = g.sw == 1 && g.sh == 1;
    const int64_t span = flat ? round_up(oh * wp) : round_up(ow);
    const int64_t slack = (g.kw - 1) * g.dw + (span - (flat ? oh * wp : ow)) * g.sw + kWindowVec;
    parallel_items(planes, nt, [&](int64_t item) {
        const int64_t n = item / g.m, o = item % g.m, c = o / mult;
        thread_local std::vector<float> plane, acc;
        window::padded_plane(plane, x + (n * g.c + c) * g.h * g.w, g.h, g.w, g.pt, g.pl, hp, wp, slack, 0.0f);
        const float* wo = w + o * taps;
        const float b = bias != nullptr ? bias[o] : 0.0f;
        float* yo = y + item * oh * ow;
        if (flat) {
            acc.resize(static_cast<size_t>(span));
            rows(acc.data(), plane.data(), window::Taps{g.kh, g.kw, g.dh * wp, g.dw, wo, b}, span, 1);
            for (int64_t i = 0; i < oh; ++i) std::copy(acc.data() + i * wp, acc.data() + i * wp + ow, yo + i * ow);
            return;
        }
        acc.resize(static_cast<size_t>(span));
        for (int64_t i = 0; i < oh; ++i) {
            rows(acc.data(), plane.data() + i * g.sh * wp, window::Taps{g.kh, g.kw, g.dh * wp, g.dw, wo, b}, span, g.sw);
            std::copy(acc.begin(), acc.begin() + ow, yo + i * ow);
        }
    });
}

void depthwise_conv2d(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
    depthwise_conv2d_isa(g, x, w, bias, y, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
