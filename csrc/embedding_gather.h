// Gather on a quantized table: the embedding lookup of an int8 / int4_grouped (V, D) table.
//
//   out (n, D) float32, row i = dequant(table)[r_i, :],  r_i = idx[i] (+ V when negative)
//
// Layouts (kernels/core/layouts.py): int8 qdata (V, D) int8, scale (V,) float32 per row (or (1,)
// per tensor, per_row false), zero_point int8 like scale or nullptr (symmetric);
// int4_grouped qdata (V, G * g / 2) uint8, element 2j of a row in bits 0-3 of byte j and 2j + 1
// in bits 4-7 (two's complement nibbles when symmetric, unsigned with zero_point (V, G) uint8
// otherwise), scale (V, G) float32, g = group_size even, G = ceil(D / g).
//
// Numerics: each element is float(q - zp) * scale, one float32 multiply (q - zp is exact in
// float32): the bits of PackedTensor.to_dense() and of kernels/reference/packed_gather.py.
// setup.py builds with -ffp-contract=off, so nothing is fused into another rounding.
//
// Indices: int32 or int64, n of them; every one is checked against [-V, V) before any row is
// read. The functions return -1 when all are in range (out written), else the position of the
// first index out of range (out not written): the caller raises the error.
//
// Threads: above kGatherParallelMinElements output elements, blocks of rows are work items of
// the work pool (csrc/work_pool.h: claimed by whichever thread is awake, the caller included),
// each row written by one thread: the result does not depend on the thread count.
#pragma once

#include <cstdint>

namespace qrt {

constexpr int64_t kGatherParallelMinElements = int64_t(1) << 16;

template <typename Index>
int64_t gather_int8_rows(const int8_t* qdata, const float* scale, const int8_t* zero_point, bool per_row,
                         int64_t v, int64_t d, const Index* idx, int64_t n, float* out, int threads);

template <typename Index>
int64_t gather_int4_rows(const uint8_t* qdata, const float* scale, const uint8_t* zero_point, int64_t v,
                         int64_t d, int64_t group_size, const Index* idx, int64_t n, float* out, int threads);

}  // namespace qrt
