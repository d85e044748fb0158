// im2col of float32 NCHW input. Layout and purpose: im2col.h.
#include "im2col.h"

#include <algorithm>

#include "int8_gemm.h"   // int8_get_threads: the native kernels' one thread count
#include "work_pool.h"

namespace qrt {

namespace {

// Below this many floats written the call stays on the calling thread.
constexpr int64_t kParallelMinFloats = int64_t(1) << 15;

}  // namespace

void im2col_f32_threads(const ConvGeometry& g, const float* x, float* cols, int threads) {
    conv_check_geometry(g);
    const int64_t oh = g.oh(), ow = g.ow(), positions = oh * ow, taps = g.kh * g.kw;
    const int64_t items = g.n * g.c * g.kh;             // (image, channel, kernel row)
    const int nt = items * g.kw * positions >= kParallelMinFloats ? threads : 1;
    parallel_items(items, nt, [&](int64_t item) {
        const int64_t ki = item % g.kh, nc = item / g.kh;        // nc = n * C + c
        const float* plane = x + nc * g.h * g.w;
        for (int64_t kj = 0; kj < g.kw; ++kj) {
            float* dst = cols + (nc * taps + ki * g.kw + kj) * positions;
            const int64_t off = kj * g.dw - g.pl;                 // input column of output column 0
            // output columns q whose input column q * sw + off lies in [0, W)
            const int64_t q0 = off >= 0 ? 0 : std::min(ow, (-off + g.sw - 1) / g.sw);
            const int64_t q1 = off >= g.w ? 0 : std::min(ow, (g.w - 1 - off) / g.sw + 1);
            for (int64_t r = 0; r < oh; ++r, dst += ow) {
                const int64_t row = r * g.sh + ki * g.dh - g.pt;
                if (row < 0 || row >= g.h || q1 <= q0) {
                    std::fill(dst, dst + ow, 0.0f);
                    continue;
                }
                std::fill(dst, dst + q0, 0.0f);
                std::fill(dst + q1, dst + ow, 0.0f);
                const float* src = plane + row * g.w + off;
                if (g.sw == 1) {
                    std::copy(src + q0, src + q1, dst + q0);
                } else {
                    for (int64_t q = q0; q < q1; ++q) dst[q] = src[q * g.sw];
                }
            }
        }
    });
}

void im2col_f32(const ConvGeometry& g, const float* x, float* cols) {
    im2col_f32_threads(g, x, cols, int8_get_threads());
}

}  // namespace qrt
