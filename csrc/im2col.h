// im2col for the float32 Conv of the CPU backends (kernels/blas_ops.py: one sgemm per image and
// group on the result): X (N, C, H, W) -> cols (N, C * kh * kw, OH * OW), row (c, ki, kj) holding
// x[n, c, r * sh + ki * dh - pt, q * sw + kj * dw - pl] at column r * OW + q, 0 where that falls
// in the padding. A copy: the values are X's, bit for bit.
//
// Why: numpy's form of it (a strided window view made contiguous with a transpose) took 1-2 ms
// for a ResNet layer of 64 channels at 56 x 56, as long as its sgemm (RESULTS.md, "int8 Conv
// without numpy's im2col"); here each row is a run of copies along the output rows.
#pragma once

#include <cstdint>

#include "int8_conv.h"   // ConvGeometry (m and group unused here)

namespace qrt {

// cols must hold N * C * kh * kw * OH * OW floats; conv_check_geometry's rules apply (with m = C,
// group = 1). Runs on int8_get_threads() threads (the _threads form: explicit).
void im2col_f32(const ConvGeometry& g, const float* x, float* cols);
void im2col_f32_threads(const ConvGeometry& g, const float* x, float* cols, int threads);

}  // namespace qrt
