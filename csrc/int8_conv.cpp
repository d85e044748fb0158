// int8 Conv: the channels-last copy, patch rows into the int8 Linear's driver, the transpose
// of its output. Numerics and layout: int8_conv.h.
#include "int8_conv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "attention.h"     // fused_detail::transpose_avx2: 8 x 8 blocks through registers
#include "int8_gemm_kernels.h"
#include "int8_pointwise_conv.h"
#include "work_pool.h"

namespace qrt {

using namespace int8_detail;

namespace {

// Copies and transposes below this many floats run on the calling thread: a pool round costs
// a few microseconds, about what one core needs to move 16 K floats.
constexpr int64_t kParallelMinFloats = int64_t(1) << 15;
// Output positions one transpose item moves: (64, M/group) floats read, (M/group, 64) written,
// both within L1 for M/group up to 64.
constexpr int64_t kTransposePositions = 64;
// Bounds of conv_check_geometry: far beyond any real Conv, small enough that no size computed
// from them overflows int64.
constexpr int64_t kMaxConvAttr = int64_t(1) << 20;
constexpr double kMaxConvFloats = 1099511627776.0;   // 2^40

// The patch runs are short (a stem's 7 x 7 window over 3 channels: 21 floats a run), too short
// for a memcpy call, which cost more than the copy itself (perf: 1.7 of the stem's 3.5 ms on one
// thread; GCC turns a plain loop back into that call). So whole blocks of 16 elements, each a
// fixed-size copy the compiler inlines: up to 15 elements more than n are read and written, which
// the buffers allow (kRunSlack elements past the channels-last copies and past each patch).
constexpr int64_t kRunSlack = 16;
template <typename T>
inline void copy_run(T* dst, const T* src, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) std::memcpy(dst + i, src + i, 16 * sizeof(T));
}

// One patch row, tap-major (ki, kj, c), into dst from a channels-last buffer of T (floats or
// quantized bytes; row pitch wp pixels of C), `at` pointing at the window's first tap in its
// group's first channel: kh runs of kw * C (row_runs: dilation 1, one group) or kh * kw runs of
// C / group.
template <typename T>
void gather_patch(T* dst, const T* at, const ConvGeometry& g, int64_t wp, int64_t cg, bool row_runs) {
    for (int64_t ki = 0; ki < g.kh; ++ki) {
        const T* src = at + ki * g.dh * wp * g.c;
        if (row_runs) {
            copy_run(dst, src, g.kw * g.c);
            dst += g.kw * g.c;
            continue;
        }
        for (int64_t kj = 0; kj < g.kw; ++kj, dst += cg) copy_run(dst, src + kj * g.dw * g.c, cg);
    }
}

void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("int8_conv2d: " + what);
}

// t[c * ldt + r] = a[r * lda + c]: AVX2 register blocks where the path is a vector one (a copy:
// the same bits either way), else element by element.
void transpose(const float* a, int64_t lda, int64_t rows, int64_t cols, float* t, int64_t ldt, Int8Isa isa) {
    if (isa != Int8Isa::scalar) {
        fused_detail::transpose_avx2(a, lda, rows, cols, t, ldt);
        return;
    }
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) t[c * ldt + r] = a[r * lda + c];
}

// X (N, C, H, W) -> xp (N, HP, WP, C), zero padded: one item per padded row (n, r).
void to_padded_nhwc(const ConvGeometry& g, const float* x, float* xp, Int8Isa isa, int threads) {
    const int64_t hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr, c = g.c;
    const int64_t row = wp * c;
    const int nt = g.n * hp * row >= kParallelMinFloats ? threads : 1;
    parallel_items(g.n * hp, nt, [&](int64_t item) {
        const int64_t n = item / hp, r = item % hp;
        float* dst = xp + item * row;
        if (r < g.pt || r >= g.pt + g.h) {
            std::fill(dst, dst + row, 0.0f);
            return;
        }
        std::fill(dst, dst + g.pl * c, 0.0f);
        std::fill(dst + (g.pl + g.w) * c, dst + row, 0.0f);
        // x[n, :, r - pt, :] (C rows of W, H * W apart) -> (W, C) after the left padding
        transpose(x + (n * c * g.h + (r - g.pt)) * g.w, g.h * g.w, c, g.w, dst + g.pl * c, c, isa);
    });
}

// Static activations: the channels-last copy quantized once, xq = qx + 128 with the path's own
// quantizer (zero padding becomes z, as the reference's zero-padded patches do), and per
// (pixel, group) whether its floats held a NaN (the reference's row is NaN then); returns
// whether any did. A patch row is then a gather of bytes: each value quantized once instead of
// once per window holding it.
bool quantize_padded(const ConvGeometry& g, const float* xp, uint8_t* xq, uint8_t* nan_flags, const Int8ActQuant& aq,
                     Int8Isa isa, int threads) {
    const QuantizeRowFn quantize = unsigned_row_quantizer(isa);
    const int64_t hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr, row = wp * g.c, cg = g.c / g.group;
    const int nt = g.n * hp * row >= kParallelMinFloats ? threads : 1;
    std::atomic<bool> any_nan{false};
    parallel_items(g.n * hp, nt, [&](int64_t item) {
        double sx;
        int64_t corr;
        const float* v = xp + item * row;
        quantize(v, row, row, aq, xq + item * row, &sx, &corr);
        uint8_t* flags = nan_flags + item * wp * g.group;
        if (!std::isnan(sx)) {               // the quantizer's static scale is NaN iff the row holds one
            std::fill(flags, flags + wp * g.group, uint8_t(0));
            return;
        }
        any_nan.store(true, std::memory_order_relaxed);
        for (int64_t pg = 0; pg < wp * g.group; ++pg, v += cg) {
            bool nan = false;
            for (int64_t j = 0; j < cg; ++j) nan |= v[j] != v[j];
            flags[pg] = nan;
        }
    });
    return any_nan.load();
}

// yr (N * P, MG) -> y[n, m0 + co, p] of Y (N, M, P), P = OH * OW.
void rows_to_planes(const float* yr, int64_t n_img, int64_t positions, int64_t mg, int64_t m, int64_t m0, float* y,
                    Int8Isa isa, int threads) {
    const int64_t blocks = (positions + kTransposePositions - 1) / kTransposePositions;
    const int nt = n_img * positions * mg >= kParallelMinFloats ? threads : 1;
    parallel_items(n_img * blocks, nt, [&](int64_t item) {
        const int64_t n = item / blocks, p0 = (item % blocks) * kTransposePositions;
        const int64_t p1 = std::min(positions, p0 + kTransposePositions);
        transpose(yr + (n * positions + p0) * mg, mg, p1 - p0, mg, y + (n * m + m0) * positions + p0, positions, isa);
    });
}

// the channels-last copy and copy_run's slack, rounded up to whole cache lines
int64_t padded_input_floats(const ConvGeometry& g) {
    return (g.n * (g.h + g.pt + g.pb) * (g.w + g.pl + g.pr) * g.c + kRunSlack + 15) / 16 * 16;
}

}  // namespace

int64_t int8_conv2d_scratch_floats(const ConvGeometry& g) {
    if (int8_conv_is_pointwise(g)) return 0;   // int8_pointwise_conv.h reads X in place
    return padded_input_floats(g) + g.n * g.oh() * g.ow() * (g.m / g.group);
}

void conv_check_geometry(const ConvGeometry& g) {
    require(g.n >= 0, "N = " + std::to_string(g.n) + ", expected >= 0");
    require(g.c >= 1 && g.h >= 1 && g.w >= 1 && g.m >= 1,
            "C, H, W, M = " + std::to_string(g.c) + ", " + std::to_string(g.h) + ", " + std::to_string(g.w) + ", " +
                std::to_string(g.m) + ", expected >= 1");
    require(g.kh >= 1 && g.kw >= 1 && g.sh >= 1 && g.sw >= 1 && g.dh >= 1 && g.dw >= 1,
            "kernel, strides and dilations must be >= 1");
    require(g.pt >= 0 && g.pl >= 0 && g.pb >= 0 && g.pr >= 0, "pads must be >= 0");
    require(g.group >= 1 && g.c % g.group == 0 && g.m % g.group == 0,
            "group = " + std::to_string(g.group) + " must be >= 1 and divide C = " + std::to_string(g.c) +
                " and M = " + std::to_string(g.m));
    // window attributes beyond kMaxConvAttr, or buffers beyond kMaxConvFloats, are refused before
    // any size is computed in int64 (which they could overflow) or allocated
    for (const int64_t v : {g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.pb, g.pr})
        require(v <= kMaxConvAttr, "kernel, strides, dilations and pads must be at most " +
                                       std::to_string(kMaxConvAttr) + ", got " + std::to_string(v));
    require(g.h + g.pt + g.pb >= g.dh * (g.kh - 1) + 1 && g.w + g.pl + g.pr >= g.dw * (g.kw - 1) + 1,
            "the dilated kernel is larger than the padded input");
    const double hp = double(g.h + g.pt + g.pb), wp = double(g.w + g.pl + g.pr);
    const double positions = double(g.n) * double(g.oh()) * double(g.ow());
    const double patch = double(g.kh) * double(g.kw) * double(g.c / g.group);
    require(double(g.n) * hp * wp * double(g.c) <= kMaxConvFloats && positions * double(g.m) <= kMaxConvFloats &&
                positions * patch <= kMaxConvFloats,
            "the padded input, the output or the patch rows would exceed 2^40 values");
}

void int8_conv2d_isa(const std::vector<const Int8PackedWeight*>& weights, const ConvGeometry& g, const float* x,
                     const double* bias, const Int8ActQuant& aq, float* y, float* scratch, Int8Isa isa, int threads,
                     const FloatEpilogue& ep) {
    conv_check_geometry(g);
    require(int8_isa_supported(isa), std::string("path ") + int8_isa_name(isa) + " is not supported by this CPU");
    const int64_t cg = g.c / g.group, mg = g.m / g.group, taps = g.kh * g.kw, k = taps * cg;
    require(static_cast<int64_t>(weights.size()) == g.group,
            std::to_string(weights.size()) + " weights for group = " + std::to_string(g.group));
    for (const Int8PackedWeight* w : weights)
        require(w != nullptr && w->n == mg && w->k == k,
                "each group's weight must be (M/group, kh * kw * C/group) = (" + std::to_string(mg) + ", " +
                    std::to_string(k) + ")");
    if (g.n == 0) return;
    if (int8_conv_is_pointwise(g)) {   // a 1 x 1 window over every channel: the NCHW kernel
        int8_pointwise_conv(*weights[0], g.n, g.h * g.w, x, bias, aq, y, isa, threads, ep);
        return;
    }
    const int64_t oh = g.oh(), ow = g.ow(), positions = oh * ow, rows = g.n * positions;
    const int64_t hp = g.h + g.pt + g.pb, wp = g.w + g.pl + g.pr;

    float* const xp = scratch;                              // (N, HP, WP, C)
    float* const yr = scratch + padded_input_floats(g);     // one group's (N * P, M/group) output
    to_padded_nhwc(g, x, xp, isa, threads);
    std::vector<uint8_t> xq, nan_flags;           // static activations: quantized once
    bool any_nan = false;
    if (aq.is_static) {
        xq.resize(static_cast<size_t>(g.n * hp * wp * g.c + kRunSlack));
        nan_flags.resize(static_cast<size_t>(g.n * hp * wp * g.group));
        any_nan = quantize_padded(g, xp, xq.data(), nan_flags.data(), aq, isa, threads);
    }
    AlignedArray<double> bias_g;                 // one group's bias, padded to whole panels

    // A patch row is one run of memory when it spans a single kernel row whose taps follow each
    // other over all channels (kh = 1 and either kw = 1 or dilation 1 with one group).
    const bool one_run = g.kh == 1 && (g.kw == 1 || g.dw == 1) && (cg == g.c || g.kw == 1);
    const bool row_runs = g.dw == 1 && cg == g.c;   // each kernel row: kw * C contiguous floats
    for (int64_t gi = 0; gi < g.group; ++gi) {
        const Int8PackedWeight& w = *weights[gi];
        const double* bg = nullptr;
        if (bias != nullptr) {
            bias_g.allocate(static_cast<size_t>(w.padded_n()));
            std::fill(bias_g.get(), bias_g.get() + w.padded_n(), 0.0);
            std::copy(bias + gi * mg, bias + (gi + 1) * mg, bias_g.get());
            bg = bias_g.get();
        }
        // row i's window: its first tap's pixel in the padded channels-last buffers
        const auto first_pixel = [&](int64_t i) {
            const int64_t n = i / positions, p = i % positions;
            return (n * hp + (p / ow) * g.sh) * wp + (p % ow) * g.sw;
        };
        const RowFill fill_static = [&](int64_t i0, int64_t i1, const RowSink& sink) {
            thread_local std::vector<uint8_t> bytes;
            if (!one_run) bytes.resize(static_cast<size_t>(k + kRunSlack));
            for (int64_t i = i0; i < i1; ++i) {
                const int64_t pix = first_pixel(i);
                bool nan = false;
                for (int64_t ki = 0; any_nan && ki < g.kh; ++ki)
                    for (int64_t kj = 0; kj < g.kw; ++kj) nan |= nan_flags[(pix + ki * g.dh * wp + kj * g.dw) * g.group + gi] != 0;
                const uint8_t* at = xq.data() + pix * g.c + gi * cg;
                if (!one_run) gather_patch(bytes.data(), at, g, wp, cg, row_runs);
                sink.put_quantized(i, one_run ? at : bytes.data(), nan);
            }
        };
        const RowFill fill_floats = [&](int64_t i0, int64_t i1, const RowSink& sink) {
            thread_local std::vector<float> patch;
            if (!one_run) patch.resize(static_cast<size_t>(k + kRunSlack));
            for (int64_t i = i0; i < i1; ++i) {
                const float* at = xp + first_pixel(i) * g.c + gi * cg;
                if (!one_run) gather_patch(patch.data(), at, g, wp, cg, row_runs);
                sink.put(i, one_run ? at : patch.data());
            }
        };
        int8_gemm_rows(w, rows, aq.is_static ? fill_static : fill_floats, bg, aq, yr, isa, threads,
                       float_epilogue_is_pass_only(ep) ? Activation::none : ep.act);
        rows_to_planes(yr, g.n, positions, mg, g.m, gi * mg, y, isa, threads);
    }
    if (float_epilogue_is_pass_only(ep)) {   // the GEMM's epilogue has no HardSwish / SiLU: one pass over Y, in chunks
        const int64_t total = g.n * g.m * positions;
        const int64_t chunks = (total + kParallelMinFloats - 1) / kParallelMinFloats;
        parallel_items(chunks, chunks > 1 ? threads : 1, [&](int64_t item) {
            const int64_t i0 = item * kParallelMinFloats;
            float_epilogue_inplace(y + i0, std::min(kParallelMinFloats, total - i0), ep, isa);
        });
    }
}

void int8_conv2d(const std::vector<const Int8PackedWeight*>& weights, const ConvGeometry& g, const float* x,
                 const double* bias, const Int8ActQuant& aq, float* y, float* scratch, const FloatEpilogue& ep) {
    int8_conv2d_isa(weights, g, x, bias, aq, y, scratch, int8_current_isa(), int8_get_threads(), ep);
}

}  // namespace qrt
