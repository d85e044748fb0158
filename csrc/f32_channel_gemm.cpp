// float32 Conv as a product over channels on NCHW memory. Numerics and why: f32_channel_gemm.h.
//
// Blocking: a work item is one image's 128 output positions times up to 8 tiles of rows; a tile
// is kMR rows x 2 vectors of positions in registers (AVX-512: 8 x 32, 16 accumulators; AVX2:
// 6 x 16, 12 accumulators + 2 X vectors + the broadcast weight in 15 of 16 ymm registers), fed
// per k by 2 loads of X and kMR broadcasts of W. The item's X block (K x 128 floats, 32 KB at
// K = 64) stays in L1 / L2 while its row tiles pass over it; the activation runs over each row's
// 128 outputs right after its tile, while they are in L1.
#include "f32_channel_gemm.h"
#include "sigmoid.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "hard_sigmoid.h"
#include "work_pool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_F32G_X86 1
#include "lanes.h"   // lanes_below8, lanes_of_bits8, even / odd_lanes8 / 16
#else
#define QRT_F32G_X86 0
#endif

namespace qrt {

namespace {

constexpr int64_t kPositionsPerItem = 128;   // a multiple of both paths' 2 vectors
constexpr int64_t kTilesPerItem = 8;
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;   // below: the calling thread alone

// Where a tile's K rows of X are: a channel-plane apart (the channel product: X's own rows) or
// anywhere (the direct Conv: its prepared input rows, one pointer each). Two instantiations of
// the same tiles rather than a pointer table for both: the table's extra load a k step cost the
// channel product 6-10% at K = 24-64 (the Xeon, (24, 64) and (72, 24) at 56 x 56).
struct StridedRows {
    const float* x;
    int64_t ldx;
    const float* at(int64_t kk) const { return x + kk * ldx; }
};
struct TableRows {
    const float* const* xr;
    int64_t j0;
    const float* at(int64_t kk) const { return xr[kk] + j0; }
};

// Whether a tile may load whole vectors past its count: the direct Conv's rows lie in its scratch,
// which ends with kTileSlack floats to spare (f32_conv2d_scratch_floats), so its partial tiles
// read plain vectors (the lanes past count are never stored); X's own rows (StridedRows) may end
// at the end of the caller's array, so those are masked unless the tile is full. Masked loads
// cost the tile loop a mask register reload per k step (perf: GCC kept the two masks on the stack).
template <class Rows>
constexpr bool kPlainLoads = std::is_same_v<Rows, TableRows>;
constexpr int64_t kTileSlack = 32;

// One tile: rows [0, R) of W (row stride ldw) against positions [0, count) of X's K rows (xs),
// count <= 2 vectors; y (row stride ldy) gets acc + bias.
template <class Rows>
using TileFn = void (*)(int rows, const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count, const float* bias,
                        const FloatEpilogue& ep, float* y, int64_t ldy);

template <class Rows>
void tile_scalar(int rows, const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count, const float* bias,
                 const FloatEpilogue&, float* y, int64_t ldy) {
    for (int r = 0; r < rows; ++r)
        for (int64_t j = 0; j < count; ++j) {
            float acc = 0.0f;
            for (int64_t kk = 0; kk < k; ++kk) acc = std::fma(w[r * ldw + kk], xs.at(kk)[j], acc);
            y[r * ldy + j] = bias != nullptr ? acc + bias[r] : acc;
        }
}

#if QRT_F32G_X86
// The row loops unrolled, so the accumulators are registers: without it GCC at -O2 kept a copy of
// each in memory and stored it every k step.
#define QRT_UNROLL _Pragma("GCC unroll 16")

template <int R, class Rows, bool PLAIN>
__attribute__((target("avx512f"))) void tile512(const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count,
                                                const float* bias, const FloatEpilogue& ep, float* y, int64_t ldy) {
    const __mmask16 m0 = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
    const __mmask16 m1 = count >= 32 ? __mmask16(0xFFFF) : count <= 16 ? __mmask16(0) : __mmask16((1u << (count - 16)) - 1);
    __m512 a0[R], a1[R];
    QRT_UNROLL for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; ++kk) {
        __m512 x0, x1;
        if constexpr (PLAIN) {
            x0 = _mm512_loadu_ps(xs.at(kk));
            x1 = _mm512_loadu_ps(xs.at(kk) + 16);
        } else {
            x0 = _mm512_maskz_loadu_ps(m0, xs.at(kk));
            x1 = _mm512_maskz_loadu_ps(m1, xs.at(kk) + 16);
        }
        QRT_UNROLL for (int r = 0; r < R; ++r) {
            const __m512 wv = _mm512_set1_ps(w[r * ldw + kk]);
            a0[r] = _mm512_fmadd_ps(wv, x0, a0[r]);
            a1[r] = _mm512_fmadd_ps(wv, x1, a1[r]);
        }
    }
    QRT_UNROLL for (int r = 0; r < R; ++r) {
        if (bias != nullptr) {
            const __m512 b = _mm512_set1_ps(bias[r]);
            a0[r] = _mm512_add_ps(a0[r], b);
            a1[r] = _mm512_add_ps(a1[r], b);
        }
        _mm512_mask_storeu_ps(y + r * ldy, m0, float_epilogue16(a0[r], ep));
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, float_epilogue16(a1[r], ep));
    }
}

template <int R, class Rows, bool PLAIN>
__attribute__((target("avx2,fma"))) void tile256(const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count,
                                                 const float* bias, const FloatEpilogue& ep, float* y, int64_t ldy) {
    const __m256i m0 = lanes_below8(count), m1 = lanes_below8(count - 8);
    __m256 a0[R], a1[R];
    QRT_UNROLL for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; ++kk) {
        __m256 x0, x1;
        if constexpr (PLAIN) {
            x0 = _mm256_loadu_ps(xs.at(kk));
            x1 = _mm256_loadu_ps(xs.at(kk) + 8);
        } else {
            x0 = _mm256_maskload_ps(xs.at(kk), m0);
            x1 = _mm256_maskload_ps(xs.at(kk) + 8, m1);
        }
        QRT_UNROLL for (int r = 0; r < R; ++r) {
            const __m256 wv = _mm256_broadcast_ss(w + r * ldw + kk);
            a0[r] = _mm256_fmadd_ps(wv, x0, a0[r]);
            a1[r] = _mm256_fmadd_ps(wv, x1, a1[r]);
        }
    }
    QRT_UNROLL for (int r = 0; r < R; ++r) {
        if (bias != nullptr) {
            const __m256 b = _mm256_set1_ps(bias[r]);
            a0[r] = _mm256_add_ps(a0[r], b);
            a1[r] = _mm256_add_ps(a1[r], b);
        }
        _mm256_maskstore_ps(y + r * ldy, m0, float_epilogue8(a0[r], ep));
        _mm256_maskstore_ps(y + r * ldy + 8, m1, float_epilogue8(a1[r], ep));
    }
}

// The tile of R rows with plain loads where they are safe (kPlainLoads' rows, or a full tile,
// whose masks would be all ones), else the masked one. WIDTH: the tile's positions (2 vectors).
#define QRT_PLAIN_OR_MASKED(NAME, TILE, WIDTH)                                                          \
    template <int R, class Rows>                                                                      \
    void NAME(const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count, const float* bias,      \
              const FloatEpilogue& ep, float* y, int64_t ldy) {                                       \
        if (kPlainLoads<Rows> || count >= (WIDTH)) return TILE<R, Rows, true>(w, ldw, k, xs, count, bias, ep, y, ldy); \
        if constexpr (!kPlainLoads<Rows>) TILE<R, Rows, false>(w, ldw, k, xs, count, bias, ep, y, ldy); \
    }
QRT_PLAIN_OR_MASKED(rows512, tile512, 32)
QRT_PLAIN_OR_MASKED(rows256, tile256, 16)
#undef QRT_PLAIN_OR_MASKED

// rows in [1, 8] (AVX-512) / [1, 6] (AVX2) to the tile of that height
template <class Rows>
void tile_avx512(int rows, const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count, const float* bias,
                 const FloatEpilogue& ep, float* y, int64_t ldy) {
    switch (rows) {
        case 8: return rows512<8, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 7: return rows512<7, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 6: return rows512<6, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 5: return rows512<5, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 4: return rows512<4, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 3: return rows512<3, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 2: return rows512<2, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        default: return rows512<1, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
    }
}

template <class Rows>
void tile_avx2(int rows, const float* w, int64_t ldw, int64_t k, Rows xs, int64_t count, const float* bias,
               const FloatEpilogue& ep, float* y, int64_t ldy) {
    switch (rows) {
        case 6: return rows256<6, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 5: return rows256<5, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 4: return rows256<4, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 3: return rows256<3, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        case 2: return rows256<2, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
        default: return rows256<1, Rows>(w, ldw, k, xs, count, bias, ep, y, ldy);
    }
}
#endif

template <class Rows>
struct PathTiles {
    TileFn<Rows> tile;
    int mr;          // rows per tile
    int64_t nr;      // positions per tile (2 vectors)
    bool registers;  // the tile applies float_epilogue_in_registers' activations before its stores
};

template <class Rows>
PathTiles<Rows> path_tiles(Int8Isa isa) {
#if QRT_F32G_X86
    if (int8_isa_is_avx512_class(isa)) return {tile_avx512<Rows>, 8, 32, true};
    if (int8_isa_is_avx2_class(isa)) return {tile_avx2<Rows>, 6, 16, true};
#endif
    (void)isa;
    return {tile_scalar<Rows>, 4, 16, false};
}

// Row tiles [t0, t1) of W's m rows over positions [j0, j1): y at (row 0, position 0), row stride
// ldy; rows_at(j) the tile's K rows of X for position j. The epilogue's activation: in the tile's
// registers (ReLU, HardSwish on the vector paths), else on each row's [j0, j1) while it is in L1.
// The channel product and the direct Conv's one loop.
template <class Rows, class RowsAt>
void row_tiles(const PathTiles<Rows>& path, int64_t t0, int64_t t1, int64_t m, int64_t k, const float* w,
               const float* bias, RowsAt rows_at, int64_t j0, int64_t j1, float* y, int64_t ldy, const FloatEpilogue& ep,
               Int8Isa isa) {
    // the tile applies the whole epilogue, or none of it (then a pass after)
    const bool after = !(path.registers && float_epilogue_in_registers(ep));
    const FloatEpilogue in_tile = after ? FloatEpilogue{} : ep;
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t m0 = t * path.mr;
        const int rows = static_cast<int>(std::min<int64_t>(path.mr, m - m0));
        for (int64_t j = j0; j < j1; j += path.nr)
            path.tile(rows, w + m0 * k, k, k, rows_at(j), std::min(path.nr, j1 - j), bias != nullptr ? bias + m0 : nullptr,
                      in_tile, y + m0 * ldy + j, ldy);
        if (after)
            for (int r = 0; r < rows; ++r) float_epilogue_inplace(y + (m0 + r) * ldy + j0, j1 - j0, ep, isa);
    }
}

}  // namespace

FloatEpilogue float_epilogue_from_name(const std::string& name) {
    FloatEpilogue ep;
    if (name == "hard_swish" || name == "silu") {
        (name == "silu" ? ep.silu : ep.hard_swish) = true;
        return ep;
    }
    try {
        ep.act = activation_from_name(name);
    } catch (const std::invalid_argument&) {
        throw std::invalid_argument("activation = '" + name + "', expected one of none, relu, gelu, gelu_tanh, hard_swish, silu");
    }
    return ep;
}

void float_epilogue_inplace(float* y, int64_t count, const FloatEpilogue& ep, Int8Isa isa) {
    if (ep.silu)
        silu_span(y, count, isa);
    else if (ep.hard_swish)
        hard_sigmoid_span(y, y, count, kHardSwishAlpha, kHardSwishBeta, true, isa);
    else if (ep.act != Activation::none)
        activation_inplace_isa(y, count, ep.act, isa);
}

void f32_channel_gemm_isa(int64_t n, int64_t m, int64_t k, int64_t p, const float* w, const float* x,
                          const float* bias, const FloatEpilogue& ep, float* y, Int8Isa isa, int threads) {
    if (n < 0 || m < 1 || k < 1 || p < 1)
        throw std::invalid_argument("f32_channel_gemm: n = " + std::to_string(n) + ", m = " + std::to_string(m) +
                                    ", k = " + std::to_string(k) + ", p = " + std::to_string(p) +
                                    "; expected n >= 0 and m, k, p >= 1");
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("f32_channel_gemm: path ") + int8_isa_name(isa) + " is not supported");
    if (n == 0) return;
    const PathTiles<StridedRows> path = path_tiles<StridedRows>(isa);
    const int64_t tiles = (m + path.mr - 1) / path.mr, groups = (tiles + kTilesPerItem - 1) / kTilesPerItem;
    const int64_t blocks = (p + kPositionsPerItem - 1) / kPositionsPerItem;
    const int nt = n * m * k * p >= kParallelMinMacs ? threads : 1;
    parallel_items(n * blocks * groups, nt, [&](int64_t item) {
        const int64_t img = item / (blocks * groups), block = item / groups % blocks, group = item % groups;
        const int64_t p0 = block * kPositionsPerItem, p1 = std::min(p, p0 + kPositionsPerItem);
        row_tiles(path, group * kTilesPerItem, std::min(tiles, (group + 1) * kTilesPerItem), m, k, w, bias,
                  [&](int64_t j) { return StridedRows{x + img * k * p + j, p}; }, p0, p1, y + img * m * p, p, ep, isa);
    });
}

void f32_channel_gemm(int64_t n, int64_t m, int64_t k, int64_t p, const float* w, const float* x,
                      const float* bias, const FloatEpilogue& ep, float* y) {
    f32_channel_gemm_isa(n, m, k, p, w, x, bias, ep, y, int8_current_isa(), int8_get_threads());
}

// --- the direct Conv ---------------------------------------------------------------------------

namespace {

// The prepared input: each input row (n, c, ih) zero padded to WP = W + pl + pr and split into
// its sw phases, phase f holding padded columns f, f + sw, f + 2 sw, ... (kPhaseLen(g) floats
// each); then one row of zeros for the taps that fall in the top or bottom padding. A tap
// (c, ki, kj) of output row oh then reads phase (kj dw) % sw of input row oh sh + ki dh - pt from
// index (kj dw) / sw on: OW consecutive floats, one tile row.
int64_t phase_len(const ConvGeometry& g) {
    const int64_t wp = g.w + g.pl + g.pr;
    return std::max((wp + g.sw - 1) / g.sw, g.ow() + (g.dw * (g.kw - 1)) / g.sw);
}

// Stride 2 (the most common strided Conv, a stem's): the padded row's even and odd columns,
// straight from the input row, 32 padded columns at a time: masked loads give the padding's zeros,
// a lane shuffle each phase. Writes the len floats of both phases. Measured on X, one thread, the
// MobileNet stem's rows (3 x 224 x 224): 75 us by the scalar loop; a padded copy, a fill and a
// split after it took 20% of the stem Conv's time.
#if QRT_F32G_X86
// bits [lo, hi) of 32, clamped
inline uint32_t lane_range(int64_t lo, int64_t hi) {
    lo = std::clamp<int64_t>(lo, 0, 32);
    hi = std::clamp<int64_t>(hi, lo, 32);
    const uint64_t below_hi = (uint64_t(1) << hi) - 1, below_lo = (uint64_t(1) << lo) - 1;
    return static_cast<uint32_t>(below_hi & ~below_lo);
}

__attribute__((target("avx512f"))) void split_pairs512(const float* src, int64_t w, int64_t pl, int64_t len,
                                                       float* even, float* odd) {
    for (int64_t j = 0; j < len; j += 16) {
        const int64_t col = 2 * j - pl;   // the input column of padded column 2 j; masked lanes are not read
        const uint32_t m = lane_range(-col, w - col);
        const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), src + col);
        const __m512 b = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), src + col + 16);
        const __mmask16 keep = static_cast<__mmask16>(lane_range(0, len - j));
        _mm512_mask_storeu_ps(even + j, keep, even_lanes16(a, b));
        _mm512_mask_storeu_ps(odd + j, keep, odd_lanes16(a, b));
    }
}

__attribute__((target("avx2"))) void split_pairs256(const float* src, int64_t w, int64_t pl, int64_t len, float* even,
                                                    float* odd) {
    for (int64_t j = 0; j < len; j += 8) {
        const int64_t col = 2 * j - pl;
        const uint32_t m = lane_range(-col, w - col);
        const __m256 a = _mm256_maskload_ps(src + col, lanes_of_bits8(m)), b = _mm256_maskload_ps(src + col + 8, lanes_of_bits8(m >> 8));
        const __m256i keep = lanes_of_bits8(lane_range(0, len - j));
        _mm256_maskstore_ps(even + j, keep, even_lanes8(a, b));
        _mm256_maskstore_ps(odd + j, keep, odd_lanes8(a, b));
    }
}
#endif

// input row (image-major) r = (n * C + c) * H + ih -> its sw phases at out + r * sw * len
void prepare_rows(const ConvGeometry& g, const float* x, float* out, Int8Isa isa, int threads) {
    const int64_t len = phase_len(g), rows = g.n * g.c * g.h, sw = g.sw;
    const int nt = rows * g.w >= kParallelMinMacs ? threads : 1;
    parallel_items(rows, nt, [&](int64_t r) {
        const float* src = x + r * g.w;
        float* dst = out + r * sw * len;
#if QRT_F32G_X86
        if (sw == 2 && isa != Int8Isa::scalar) {   // the column pairs split, the padding included
            if (int8_isa_is_avx512_class(isa))
                split_pairs512(src, g.w, g.pl, len, dst, dst + len);
            else
                split_pairs256(src, g.w, g.pl, len, dst, dst + len);
            return;
        }
#endif
        std::fill(dst, dst + sw * len, 0.0f);
        if (sw == 1) {
            std::copy(src, src + g.w, dst + g.pl);
            return;
        }
        // phase f takes padded columns f, f + sw, ...: input columns f - pl, f - pl + sw, ...
        for (int64_t f = 0; f < sw; ++f) {
            float* ph = dst + f * len;
            int64_t j = 0;
            while (j * sw + f < g.pl) ++j;   // the left padding
            for (int64_t col = j * sw + f - g.pl; col < g.w; col += sw, ++j) ph[j] = src[col];
        }
    });
    std::fill(out + rows * sw * len, out + (rows * sw + 1) * len, 0.0f);   // the zero row
}

}  // namespace

int64_t f32_conv2d_scratch_floats(const ConvGeometry& g) {
    return (g.n * g.c * g.h * g.sw + 1) * phase_len(g) + kTileSlack;
}

void f32_conv2d_isa(const ConvGeometry& g, const float* w, const float* x, const float* bias, const FloatEpilogue& ep,
                    float* y, float* scratch, Int8Isa isa, int threads) {
    conv_check_geometry(g);
    if (g.group != 1) throw std::invalid_argument("f32_conv2d: group = " + std::to_string(g.group) + ", expected 1");
    if (!int8_isa_supported(isa))
        throw std::invalid_argument(std::string("f32_conv2d: path ") + int8_isa_name(isa) + " is not supported");
    if (g.n == 0) return;
    const int64_t oh = g.oh(), ow = g.ow(), k = g.c * g.kh * g.kw, len = phase_len(g);
    prepare_rows(g, x, scratch, isa, threads);
    const float* zero_row = scratch + g.n * g.c * g.h * g.sw * len;
    const PathTiles<TableRows> path = path_tiles<TableRows>(isa);
    const int64_t tiles = (g.m + path.mr - 1) / path.mr;
    const int nt = g.n * oh * ow * g.m * k >= kParallelMinMacs ? threads : 1;
    std::vector<std::vector<const float*>> tables(static_cast<size_t>(std::max(1, nt)),
                                                   std::vector<const float*>(static_cast<size_t>(k)));
    // an item: one output row of one image, every output channel
    parallel_items(g.n * oh, nt, [&](int64_t item, int slot) {
        const int64_t img = item / oh, r = item % oh;
        // tap (c, ki, kj), in the order of W's columns and of im2col's rows
        const float** rows = tables[slot].data();
        for (int64_t c = 0, kk = 0; c < g.c; ++c)
            for (int64_t ki = 0; ki < g.kh; ++ki) {
                const int64_t ih = r * g.sh + ki * g.dh - g.pt;
                const float* phases = ih >= 0 && ih < g.h ? scratch + ((img * g.c + c) * g.h + ih) * g.sw * len : nullptr;
                for (int64_t kj = 0; kj < g.kw; ++kj, ++kk) {
                    const int64_t off = kj * g.dw;
                    rows[kk] = phases != nullptr ? phases + (off % g.sw) * len + off / g.sw : zero_row;
                }
            }
        // output row r of channel m at y + (img * M + m) * OH * OW + r * OW
        row_tiles(path, 0, tiles, g.m, k, w, bias, [&](int64_t j) { return TableRows{rows, j}; }, 0, ow,
                  y + img * g.m * oh * ow + r * ow, oh * ow, ep, isa);
    });
}

void f32_conv2d(const ConvGeometry& g, const float* w, const float* x, const float* bias, const FloatEpilogue& ep,
                float* y, float* scratch) {
    f32_conv2d_isa(g, w, x, bias, ep, y, scratch, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
