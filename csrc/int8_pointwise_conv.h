// int8 1 x 1 Conv straight on NCHW memory: Y (N, M, P) = act(epilogue(quant(X) product W)) for
// X (N, K, P) float32, W (M, K) int8, P the pixels. int8_conv2d (int8_conv.h) takes it for every
// 1 x 1 window of stride 1, no padding and one group on planes of at least kPointwiseMinPixels
// pixels (below): MobileNet's and EfficientNet's projections and expansions, a third of an int8
// MobileNetV3's time on the patch-row driver (benchmarks/RESULTS.md, "int8 1 x 1 Convs on NCHW
// memory and the direct float32 Conv").
//
// Why: the driver treats each pixel as a GEMM row, so a 1 x 1 Conv paid a transpose of X into
// channels-last floats, a per-row quantizer call on rows of 24-480 values (short rows are mostly
// overhead: a horizontal max, a scale, tail masks), the GEMM, and a transpose of its (P, M)
// output back into planes; the transposes and the quantizer cost 3x the product (perf, the
// (24, 72) Conv at 56 x 56: 23% quantizer, 14% transposes, 6% product). Here the pixels are the
// vector lanes instead of the rows:
//
//   - a block of 64 pixels is quantized column by column: max|x| over K is an element-wise max
//     of K vectors (no horizontal step), each lane keeps its own scale, and four channels of one
//     pixel are packed into one 32-bit lane (AVX-512 / AVX-VNNI: u8 quads for vpdpbusd; AVX2:
//     two int16 pairs for vpmaddwd, exact for every int8 value);
//   - the product takes a row of W as the broadcast operand: acc[m, p..p+15] += dot(quad of
//     pixel lanes, W[m, quad]), read from the int8 Linear's packed panels as they are (a row's
//     4 bytes of one k step lie at a fixed stride there);
//   - the epilogue writes Y's planes directly, 16 (8) pixels of one output channel a store, ReLU
//     and HardSwish applied in the registers, the GELUs to each row while it is in L1.
//
// Numerics: the int8 Linear's (int8_gemm.h), pixel by pixel: each pixel is the reference's
// patch row (kernels/reference/packed.py, packed_conv_ref), quantized on its own (dynamic:
// max|x| / 127 of its K values) or with the static scale, by the same float32 estimate with the
// same tie window and float64 fallback (int8_gemm_kernels.h), so the same integers; the sums
// are exact integers (int32 lanes for K <= kMaxKInt32, int64 on the scalar path beyond); the
// epilogue float32(((s_w[m] * acc) * s_x[p]) + b[m]) in float64, then the activation. So the
// bits are the reference's and the im2col driver's, on every path and thread count.
#pragma once

#include <cstdint>

#include "float_epilogue.h"
#include "int8_conv.h"
#include "int8_gemm.h"

namespace qrt {

// Planes of fewer pixels stay on int8_conv2d's patch rows: with a pixel per vector lane, a 1 x 1
// Conv on a squeeze-excitation block's (N, C, 1, 1) input used 1 lane of 16, and the row GEMM
// (the pixel as its one row, W as the vector operand) was 2x faster there. Measured on the
// Xeon, 2 threads, (M, K) = (120, 480), (480, 120), (80, 480), (24, 96): patch rows 3.7-5.0 us
// at P = 1 against 4.0-10.7 here, 4.2-8.4 against 3.9-10.2 at P = 4, 5.5-15.4 against 4.0-9.2
// at P = 9, 6.2-19.3 against 4.1-9.1 at P = 16.
constexpr int64_t kPointwiseMinPixels = 8;

// Whether int8_conv2d runs g on this kernel: a 1 x 1 window, strides 1, no pads, one group, at
// least kPointwiseMinPixels pixels a plane.
bool int8_conv_is_pointwise(const ConvGeometry& g);

// Y (n, w.n, p) float32 = ep(int8 1 x 1 Conv of X (n, w.k, p) float32), both C-contiguous;
// w packed by int8_pack_weight from qdata (M, K); bias (M,) float64 or nullptr. n may be 0,
// p >= 1. The path: avx512_vnni and amx run the AVX-512 VNNI kernel, avx_vnni the 256-bit VNNI
// one, avx2 the int16 one, scalar the reference loop (also every path's for K > kMaxKInt32).
void int8_pointwise_conv(const Int8PackedWeight& w, int64_t n, int64_t p, const float* x, const double* bias,
                         const Int8ActQuant& aq, float* y, Int8Isa isa, int threads,
                         const FloatEpilogue& ep = FloatEpilogue());

}  // namespace qrt
