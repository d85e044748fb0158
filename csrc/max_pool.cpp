// float32 MaxPool: one work item per (image, channel) plane. Numerics: max_pool.h.
#include "max_pool.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "window_rows.h"
#include "work_pool.h"

namespace qrt {

namespace {

// Below this many taps the call stays on the calling thread (a pool round costs a few us).
constexpr int64_t kParallelMinTaps = int64_t(1) << 16;
// Bounds of the geometry check: far beyond any real pool, small enough that no size computed
// from them overflows int64.
constexpr int64_t kMaxPoolAttr = int64_t(1) << 20;
constexpr double kMaxPoolFloats = 17179869184.0;   // 2^34
using window::kWindowVec;

void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("max_pool2d: " + what);
}

}  // namespace

void max_pool_check_geometry(const PoolGeometry& g) {
    require(g.n >= 0 && g.c >= 1 && g.h >= 1 && g.w >= 1 && g.oh >= 1 && g.ow >= 1, "sizes must be >= 1 (N >= 0)");
    for (const int64_t v : {g.kh, g.kw, g.sh, g.sw, g.dh, g.dw})
        require(v >= 1 && v <= kMaxPoolAttr, "kernel, strides and dilations must be 1 to 2^20, got " + std::to_string(v));
    for (const int64_t v : {g.pt, g.pl, g.pb, g.pr})
        require(v >= 0 && v <= kMaxPoolAttr, "pads must be 0 to 2^20, got " + std::to_string(v));
    const int64_t hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr;
    require(g.oh <= hp && g.ow <= wp, "the output is larger than the padded input");
    require(double(g.n) * double(g.c) * double(g.oh) * double(g.ow) <= kMaxPoolFloats &&
                double(hp) * double(wp) <= kMaxPoolFloats,
            "the output or a padded plane would exceed 2^34 values");
    require((g.oh - 1) * g.sh + g.dh * (g.kh - 1) + 1 <= hp && (g.ow - 1) * g.sw + g.dw * (g.kw - 1) + 1 <= wp,
            "the last window reaches past the padded input (grow the end pads)");
}

void max_pool2d_isa(const PoolGeometry& g, const float* x, float* y, Int8Isa isa, int threads) {
    max_pool_check_geometry(g);
    const int64_t hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr;
    require(int8_isa_supported(isa), std::string("path ") + int8_isa_name(isa) + " is not supported");
    if (g.n == 0) return;
    const auto rows = window::rows_for<window::MaxTap>(isa);
    const float lowest = -std::numeric_limits<float>::infinity();
    const int64_t planes = g.n * g.c;
    const int nt = planes * g.oh * g.ow * g.kh * g.kw >= kParallelMinTaps ? threads : 1;
    // each output row over a whole number of vectors (window_rows.h): the accumulator rounded
    // up, the plane given the slack the extra columns read
    const int64_t owp = (g.ow + kWindowVec - 1) / kWindowVec * kWindowVec;
    const int64_t slack = (owp - g.ow) * g.sw + kWindowVec;
    parallel_items(planes, nt, [&](int64_t p) {
        thread_local std::vector<float> plane, acc;
        window::padded_plane(plane, x + p * g.h * g.w, g.h, g.w, g.pt, g.pl, hp, wp, slack, lowest);
        acc.resize(static_cast<size_t>(owp));
        float* yp = y + p * g.oh * g.ow;
        for (int64_t i = 0; i < g.oh; ++i) {
            rows(acc.data(), plane.data() + i * g.sh * wp, window::Taps{g.kh, g.kw, g.dh * wp, g.dw, lowest},
                 owp, g.sw);
            std::copy(acc.begin(), acc.begin() + g.ow, yp + i * g.ow);
        }
    });
}

void max_pool2d(const PoolGeometry& g, const float* x, float* y) {
    max_pool2d_isa(g, x, y, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
