// int4_grouped weight-only Linear: Y (M, N) float32 = X (M, K) float32 @ dequant(W).T + bias.
//
// Layout (kernels/core/layouts.py "int4_grouped"): qdata uint8 (N, Kp / 2), Kp = G * g (K padded
// with zeros to whole groups of g = group_size, g even), element 2j of a row in bits 0-3 of
// byte j and element 2j + 1 in bits 4-7; signed two's complement nibbles when symmetric, else
// unsigned nibbles with zero_point uint8 (N, G); scale float32 (N, G).
//
// Numerics. The weight is never materialised in float32: each nibble is unpacked in registers
// to w = float32(q - zp) * scale (q - zp is exact in float32, one float32 rounding of the
// product: the very bits of PackedTensor.to_dense()), then accumulated as x * w in float32:
//   - AVX-512 (group_size % 32 == 0): FMAs in 16 lanes; per 32-block of k, lane l takes
//     element 2l, then 2l + 1; the 16 lanes summed at the end by _mm512_reduce_add_ps's tree.
//   - AVX2 + FMA (group_size % 16 == 0): FMAs in 8 lanes; per 16-block of k, lane l takes
//     element 2l, then 2l + 1; the 8 lanes summed at the end as ((l0 + l4) + (l2 + l6)) +
//     ((l1 + l5) + (l3 + l7)).
//   - scalar: a sequential multiply-add (two roundings) in k order.
// The bias is added in float64 and the sum rounded once.
// Against the reference (float64 accumulation of the same dequantized weights, rounded once):
//     |y - y_ref| <= (K + 2) * 2^-24 * sum_k |x_k w_nk|     (+ |bias| * 2^-24)
// (the float32 summation error of K terms, gamma_K, plus the final rounding).
//
// Every output (m, n) is computed by one thread in an order that does not depend on M, on the
// row's position in M, or on the thread count: results are identical for threads 1..T and for
// M = 1 vs batched. The three paths differ in summation order (not bit equal to each other).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qrt {

enum class Int4Isa : int { scalar = 0, avx512 = 1, avx2 = 2 };

// k elements per vector step of each path: a group must hold whole steps (group_size % step)
constexpr int64_t kInt4Avx512Step = 32;   // 16 bytes -> 16 lanes of evens + 16 of odds
constexpr int64_t kInt4Avx2Step = 16;     // 8 bytes -> 8 lanes of evens + 8 of odds

struct Int4Weight {
    int64_t n = 0, k = 0;
    int64_t group_size = 0;   // g, even
    int64_t groups = 0;       // G = ceil(K / g)
    bool symmetric = true;
    std::vector<uint8_t> qdata;      // (N, G * g / 2), as stored
    std::vector<float> scale;        // (N, G)
    std::vector<int32_t> zero_point; // (N, G) (all 0 when symmetric)
    int64_t kp() const { return groups * group_size; }
    size_t nbytes() const { return qdata.size() + scale.size() * 4 + (symmetric ? 0 : zero_point.size()); }
};

// Throws std::invalid_argument on inconsistent sizes (N, K >= 1, g even >= 2, zero points <= 15).
Int4Weight int4_make_weight(const uint8_t* qdata, const float* scale, const uint8_t* zero_point,
                            int64_t n, int64_t k, int64_t group_size);

const char* int4_isa_name(Int4Isa isa);
// avx512 needs AVX-512F/BW, avx2 needs AVX2 and FMA (cpu_features.cpp).
bool int4_isa_supported(Int4Isa isa);
// The path int4_linear takes: the widest one this CPU supports whose step divides the group
// size (AVX-512: g % 32 == 0, AVX2: g % 16 == 0), else scalar. When the int8 code path is
// forced (QRT_NATIVE_ISA / set_int8_isa: int8_isa_forced()) no wider path than it is taken:
// avx512_vnni allows avx512, avx2 allows avx2, scalar forces scalar, so forcing one tests both.
Int4Isa int4_auto_isa(const Int4Weight& w);
// Name -> path ("auto" -> int4_auto_isa); throws std::invalid_argument for an unknown name, an
// unsupported path, or "avx512" / "avx2" with a group size that is not a multiple of 32 / 16.
Int4Isa int4_isa_from_name(const std::string& name, const Int4Weight& w);

// x (M, K) row-major, bias (N,) float64 or nullptr, y (M, N) row-major.
void int4_linear(const Int4Weight& w, const float* x, int64_t m, const double* bias, float* y,
                 Int4Isa isa, int threads);

namespace int4_detail {
// rows m0 .. m0 + mr - 1 (mr <= 4) x weight rows n0 .. n0 + nr - 1 (nr <= 4): the float32 dot
// products (before bias) into acc[r * 4 + c]. xs: rows of X re-ordered per 32-block (the 16
// even elements, then the 16 odd ones), Kp long, zero padded.
void tile_avx512(const Int4Weight& w, const float* xs, int64_t ldx, int64_t mr, int64_t n0, int64_t nr,
                 float* acc);
// The same on AVX2 (group_size % 16 == 0), xs re-ordered per 16-block (the 8 even elements,
// then the 8 odd ones). Inside, 1 X row x 4 weight rows, or up to 4 X rows x 2 weight rows
// per K pass (at most 8 ymm accumulators: the unpacked weights and X need the other 8).
void tile_avx2(const Int4Weight& w, const float* xs, int64_t ldx, int64_t mr, int64_t n0, int64_t nr,
               float* acc);
}  // namespace int4_detail

}  // namespace qrt
