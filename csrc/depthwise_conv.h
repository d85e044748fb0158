// float32 depthwise Conv of the native backend: every group one input channel (C / group = 1),
// each output channel M / C of them (the channel multiplier), 1-D or 2-D, any stride, padding
// and dilation, the node's activation fused. MobileNet and EfficientNet are made of them.
//
// Why a kernel of its own: as a grouped GEMM (im2col + sgemm per group, or the int8 Linear per
// group) each group is a 9-column product, so the copies and calls cost 10-200x the arithmetic
// (RESULTS.md, "int8 Conv without numpy's im2col"). Here each output is its window's taps folded in a
// vector register, read from the input plane in place (masked loads give the zero padding:
// depthwise_conv.cpp).
//
// Numerics: float32, the chain acc = fma(w, x, acc) from acc = bias over the taps (ki outer, kj
// inner), one rounding per tap (the scalar path calls std::fma), so the same bits on every path
// and thread count; against the float64 reference within the float32 accumulation bound of the
// other float32 Conv (kernels/blas_ops.py): (K + 2) * 2^-24 * sum |w x| with K = kh * kw. A
// separate multiply and add (before 2026-12-07) took twice the multiply-add port slots.
// Then the epilogue's activation (f32_channel_gemm.h: activation.h's bits, or HardSwish's).
#pragma once

#include <cstdint>

#include "f32_channel_gemm.h"   // FloatEpilogue
#include "int8_conv.h"   // ConvGeometry
#include "int8_gemm.h"   // Int8Isa: the native backend's one ISA switch

namespace qrt {

// Y (N, M, OH, OW) float32; X (N, C, H, W) float32, W (M, 1, kh, kw) float32, bias (M,) or
// nullptr. g.group must equal g.c and divide g.m (conv_check_geometry's other rules apply).
// Throws std::invalid_argument otherwise. Runs on int8_current_isa()'s vector width with
// int8_get_threads() threads (the _isa form: explicit); the bits depend on neither.
// means (N * M,) or nullptr: each output plane's mean (after the epilogue), as mean_rows_f32
// (elementwise_f32.h) computes it on the same path, summed right after the plane is written,
// while it is in L1 (the squeeze-excite ReduceMean after MobileNetV3's
// depthwise Convs, fused by runtime/fuse.py: a pass of its own read the planes back from L2 or
// memory, at 3x its time on hot data).
void depthwise_conv2d(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                      const FloatEpilogue& ep, float* y, float* means = nullptr);
void depthwise_conv2d_isa(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                          const FloatEpilogue& ep, float* y, Int8Isa isa, int threads, float* means = nullptr);

}  // namespace qrt
