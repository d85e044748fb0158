// SkipLayerNormalization (runtime/fuse.py: Add + LayerNormalization) in float32 on raw pointers.
//
//   x, skip (rows, D) float32 C-contiguous; scale, bias (D,) float32 (bias may be nullptr);
//   skip nullptr: LayerNormalization of x alone over its last axis (t = x; the native
//   "LayerNormalization" kernel, kernels/native_cpu/fused.py);
//   y (rows, D) float32:  t = float32(x + skip)  (rounded first, exactly as the Add node),
//   y = (t - mean) / sqrt(var + eps) * scale + bias, over each row.
//
// Numerics as kernels/numba_cpu/fused.py _skip_layer_norm_rows: mean and E[t^2] summed in
// float64 (8 partial sums per row, combined in a fixed order), var = max(E[t^2] - mean^2, 0),
// the affine step in float64, rounded once to float32. Against the float64 reference
// (kernels/reference/fused.py): one float32 rounding plus the E[t^2] - mean^2 cancellation,
// ~1e-16 mean^2 / var (tests/test_fusion.py SKIP_LN_ATOL). Paths (FusedIsa, "auto" as for
// attention: attention.h): scalar (the generic row function), AVX2 (the scalar path's bits:
// its 8 partial sums are two float64 vectors of 4) and AVX-512 (16 partial sums, so it
// differs from the other two in the last bits).
//
// Work: blocks of kSkipLnRowsPerItem rows, each row computed by one thread: the result does
// not depend on the thread count.
#pragma once

#include <cstdint>

#include "attention.h"   // FusedIsa

namespace qrt {

constexpr int64_t kSkipLnRowsPerItem = 16;
constexpr int64_t kSkipLnParallelMinElements = int64_t(1) << 15;

void skip_layer_norm_f32(const float* x, const float* skip, const float* scale, const float* bias, double epsilon,
                         float* y, int64_t rows, int64_t d, FusedIsa isa, int threads);

}  // namespace qrt
