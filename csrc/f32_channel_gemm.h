// float32 Conv as a product over channels, straight on NCHW memory: Y (N, M, P) = act(W (M, K) @
// X (N, K, P) + bias), P the output positions. A 1 x 1 stride-1 Conv's input is X as it is; other
// Convs take the direct form below (f32_conv2d: the same product on im2col's values, read where
// they are). MobileNet's and EfficientNet's layers whose patch has
// few values (the 1 x 1 expansions of 16-40 channels, the 3 x 3 x 3 stem) stay float32 under int8
// (docs/CONVERTER.md, "Convs with a small patch stay dense fp32"), and they are most of such a
// model's float32 time. Larger patches stay on sgemm (kernels/native_cpu/conv.py's limits).
//
// Why not BLAS sgemm: at K <= 64 the product is bound by writing Y, and sgemm wrote it once, then
// the bias and the activation each read and wrote it again (3 passes over a 3 MB output at
// 112 x 112 x 64); OpenBLAS's workers also spin after each call against the native kernels'
// threads (kernels/blas_activity.py). Here each 8-row x 128-position block of Y is computed in
// registers, gets its bias in the register, its activation while in L1, and is written once.
// RESULTS.md, "MobileNetV3-like: the float32 layers".
//
// Numerics: y = act(fma-chain + bias) with the chain acc = fma(w[m, k], x[k, p], acc) from acc = 0,
// k in order, then one float32 addition of the bias: the same bits on every path (the scalar
// one calls std::fma) and thread count; against the float64 reference within the float32
// accumulation bound of the other float32 Convs (kernels/blas_ops.py): (K + 2) * 2^-24 * sum |w x|.
// The activation: activation.h's (relu, gelu, gelu_tanh: the bits of activation_inplace) or
// hard_swish (hard_sigmoid.h's HardSwish bits).
#pragma once

#include <cstdint>
#include <string>

#include "float_epilogue.h"   // FloatEpilogue
#include "int8_conv.h"        // ConvGeometry
#include "int8_gemm.h"        // Int8Isa: the native backend's one ISA switch

namespace qrt {


// Y (n, m, p) float32; X (n, k, p) float32 (image stride k * p), W (m, k) float32 row-major, bias
// (m,) or nullptr. n may be 0; m, k, p >= 1 (std::invalid_argument otherwise). Runs on
// int8_current_isa()'s vector width with int8_get_threads() threads (the _isa form: explicit); the
// bits depend on neither.
void f32_channel_gemm(int64_t n, int64_t m, int64_t k, int64_t p, const float* w, const float* x,
                      const float* bias, const FloatEpilogue& ep, float* y);
void f32_channel_gemm_isa(int64_t n, int64_t m, int64_t k, int64_t p, const float* w, const float* x,
                          const float* bias, const FloatEpilogue& ep, float* y, Int8Isa isa, int threads);

// The direct form for the other Convs of one group (kernels/native_cpu/conv.py: patches up to
// DIRECT_MAX_K values): Y (N, M, OH, OW) = act(W (M, C * kh * kw) @ patches + bias) with the
// same tiles and the same bits as f32_channel_gemm on im2col's columns, without them. The im2col
// of a MobileNet stem (3 x 3 / 2 over 3 x 224 x 224) wrote 1.35 MB and took 0.15 ms on its own,
// longer than the product; here each input row is copied once, zero padded and split into its
// stride's phases (scratch: f32_conv2d_scratch_floats(g) floats, about X's size), and a tap's
// values for one output row are consecutive floats of one phase, read by the tile in place.
// conv_check_geometry's rules and group = 1 (std::invalid_argument otherwise); every element of
// y is written.
int64_t f32_conv2d_scratch_floats(const ConvGeometry& g);
void f32_conv2d(const ConvGeometry& g, const float* w, const float* x, const float* bias, const FloatEpilogue& ep,
                float* y, float* scratch);
void f32_conv2d_isa(const ConvGeometry& g, const float* w, const float* x, const float* bias, const FloatEpilogue& ep,
                    float* y, float* scratch, Int8Isa isa, int threads);

}  // namespace qrt
