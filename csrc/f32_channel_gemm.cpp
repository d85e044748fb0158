// float32 Conv as a product over channels on NCHW memory. Numerics and why: f32_channel_gemm.h.
//
// Blocking: a work item is one image's 128 output positions times up to 8 tiles of rows; a tile
// is kMR rows x 2 vectors of positions in registers (AVX-512: 8 x 32, 16 accumulators; AVX2:
// 6 x 16, 12 accumulators + 2 X vectors + the broadcast weight in 15 of 16 ymm registers), fed
// per k by 2 loads of X and kMR broadcasts of W. The item's X block (K x 128 floats, 32 KB at
// K = 64) stays in L1 / L2 while its row tiles pass over it; the activation runs over each row's
// 128 outputs right after its tile, while they are in L1.
#include "f32_channel_gemm.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "hard_sigmoid.h"
#include "work_pool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_F32G_X86 1
#include "simd.h"
#else
#define QRT_F32G_X86 0
#endif

namespace qrt {

namespace {

constexpr int64_t kPositionsPerItem = 128;   // a multiple of both paths' 2 vectors
constexpr int64_t kTilesPerItem = 8;
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;   // below: the calling thread alone

// One tile: rows [0, R) of W (row stride ldw) against positions [0, count) of X (row stride
// ldx), count <= 2 vectors; y (row stride ldy) gets acc + bias.
using TileFn = void (*)(int rows, const float* w, int64_t ldw, int64_t k, const float* x, int64_t ldx, int64_t count,
                        const float* bias, float* y, int64_t ldy);

void tile_scalar(int rows, const float* w, int64_t ldw, int64_t k, const float* x, int64_t ldx, int64_t count,
                 const float* bias, float* y, int64_t ldy) {
    for (int r = 0; r < rows; ++r)
        for (int64_t j = 0; j < count; ++j) {
            float acc = 0.0f;
            for (int64_t kk = 0; kk < k; ++kk) acc = std::fma(w[r * ldw + kk], x[kk * ldx + j], acc);
            y[r * ldy + j] = bias != nullptr ? acc + bias[r] : acc;
        }
}

#if QRT_F32G_X86
// The row loops unrolled, so the accumulators are registers: without it GCC at -O2 kept a copy of
// each in memory and stored it every k step.
#define QRT_UNROLL _Pragma("GCC unroll 16")

template <int R>
__attribute__((target("avx512f"))) void tile512(const float* w, int64_t ldw, int64_t k, const float* x, int64_t ldx,
                                                int64_t count, const float* bias, float* y, int64_t ldy) {
    const __mmask16 m0 = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
    const __mmask16 m1 = count >= 32 ? __mmask16(0xFFFF) : count <= 16 ? __mmask16(0) : __mmask16((1u << (count - 16)) - 1);
    __m512 a0[R], a1[R];
    QRT_UNROLL for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; ++kk) {
        const __m512 x0 = _mm512_maskz_loadu_ps(m0, x + kk * ldx), x1 = _mm512_maskz_loadu_ps(m1, x + kk * ldx + 16);
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
        _mm512_mask_storeu_ps(y + r * ldy, m0, a0[r]);
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, a1[r]);
    }
}

__attribute__((target("avx2"))) inline __m256i lanes_below(int64_t count) {   // lane i set where i < count
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(count, 0, 8))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int R>
__attribute__((target("avx2,fma"))) void tile256(const float* w, int64_t ldw, int64_t k, const float* x, int64_t ldx,
                                                 int64_t count, const float* bias, float* y, int64_t ldy) {
    const __m256i m0 = lanes_below(count), m1 = lanes_below(count - 8);
    __m256 a0[R], a1[R];
    QRT_UNROLL for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; ++kk) {
        const __m256 x0 = _mm256_maskload_ps(x + kk * ldx, m0), x1 = _mm256_maskload_ps(x + kk * ldx + 8, m1);
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
        _mm256_maskstore_ps(y + r * ldy, m0, a0[r]);
        _mm256_maskstore_ps(y + r * ldy + 8, m1, a1[r]);
    }
}

// rows in [1, 8] (AVX-512) / [1, 6] (AVX2) to the tile of that height
void tile_avx512(int rows, const float* w, int64_t ldw, int64_t k, const float* x, int64_t ldx, int64_t count,
                 const float* bias, float* y, int64_t ldy) {
    switch (rows) {
        case 8: return tile512<8>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 7: return tile512<7>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 6: return tile512<6>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 5: return tile512<5>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 4: return tile512<4>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 3: return tile512<3>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 2: return tile512<2>(w, ldw, k, x, ldx, count, bias, y, ldy);
        default: return tile512<1>(w, ldw, k, x, ldx, count, bias, y, ldy);
    }
}

void tile_avx2(int rows, const float* w, int64_t ldw, int64_t k, const float* x, int64_t ldx, int64_t count,
               const float* bias, float* y, int64_t ldy) {
    switch (rows) {
        case 6: return tile256<6>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 5: return tile256<5>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 4: return tile256<4>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 3: return tile256<3>(w, ldw, k, x, ldx, count, bias, y, ldy);
        case 2: return tile256<2>(w, ldw, k, x, ldx, count, bias, y, ldy);
        default: return tile256<1>(w, ldw, k, x, ldx, count, bias, y, ldy);
    }
}
#endif

struct PathTiles {
    TileFn tile;
    int mr;          // rows per tile
    int64_t nr;      // positions per tile (2 vectors)
};

PathTiles path_tiles(Int8Isa isa) {
#if QRT_F32G_X86
    if (int8_isa_is_avx512_class(isa)) return {tile_avx512, 8, 32};
    if (int8_isa_is_avx2_class(isa)) return {tile_avx2, 6, 16};
#endif
    (void)isa;
    return {tile_scalar, 4, 16};
}

}  // namespace

FloatEpilogue float_epilogue_from_name(const std::string& name) {
    FloatEpilogue ep;
    if (name == "hard_swish") {
        ep.hard_swish = true;
        return ep;
    }
    try {
        ep.act = activation_from_name(name);
    } catch (const std::invalid_argument&) {
        throw std::invalid_argument("activation = '" + name + "', expected one of none, relu, gelu, gelu_tanh, hard_swish");
    }
    return ep;
}

void float_epilogue_inplace(float* y, int64_t count, const FloatEpilogue& ep, Int8Isa isa) {
    if (ep.hard_swish)
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
    const PathTiles path = path_tiles(isa);
    const int64_t row_tiles = (m + path.mr - 1) / path.mr, groups = (row_tiles + kTilesPerItem - 1) / kTilesPerItem;
    const int64_t blocks = (p + kPositionsPerItem - 1) / kPositionsPerItem;
    const int nt = n * m * k * p >= kParallelMinMacs ? threads : 1;
    parallel_items(n * blocks * groups, nt, [&](int64_t item) {
        const int64_t img = item / (blocks * groups), block = item / groups % blocks, group = item % groups;
        const int64_t p0 = block * kPositionsPerItem, p1 = std::min(p, p0 + kPositionsPerItem);
        const float* xi = x + img * k * p;
        float* yi = y + img * m * p;
        const int64_t t_end = std::min(row_tiles, (group + 1) * kTilesPerItem);
        for (int64_t t = group * kTilesPerItem; t < t_end; ++t) {
            const int64_t m0 = t * path.mr;
            const int rows = static_cast<int>(std::min<int64_t>(path.mr, m - m0));
            for (int64_t j = p0; j < p1; j += path.nr)
                path.tile(rows, w + m0 * k, k, k, xi + j, p, std::min(path.nr, p1 - j),
                          bias != nullptr ? bias + m0 : nullptr, yi + m0 * p + j, p);
            for (int r = 0; r < rows; ++r) float_epilogue_inplace(yi + (m0 + r) * p + p0, p1 - p0, ep, isa);
        }
    });
}

void f32_channel_gemm(int64_t n, int64_t m, int64_t k, int64_t p, const float* w, const float* x,
                      const float* bias, const FloatEpilogue& ep, float* y) {
    f32_channel_gemm_isa(n, m, k, p, w, x, bias, ep, y, int8_current_isa(), int8_get_threads());
}

}  // namespace qrt
