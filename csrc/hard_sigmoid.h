// HardSigmoid and HardSwish on float32, the reference's bits (kernels/reference/elementwise.py):
//
//   t = x * alpha + beta            two float32 roundings (no FMA: -ffp-contract=off)
//   s = min(max(t, 0), 1)           numpy's maximum / minimum: a NaN t stays NaN, max(-0, 0) = -0
//   HardSigmoid = s,  HardSwish = x * s (alpha = float32(1/6), beta = 0.5)
//
// numpy computes it in four passes with an array temporary each (MobileNetV3-sized activations:
// 0.25-1 ms per op, mostly fresh pages); here one pass, vectorised for the path's ISA.
#pragma once

#include <cstdint>

#include "int8_gemm.h"   // Int8Isa: the native backend's one ISA switch

namespace qrt {

// y[i] for i < count (y may be x). Runs on int8_current_isa()'s vector width with
// int8_get_threads() threads for large counts (the _isa form: explicit); the same bits anyway.
void hard_sigmoid(const float* x, float* y, int64_t count, float alpha, float beta, bool swish);
void hard_sigmoid_isa(const float* x, float* y, int64_t count, float alpha, float beta, bool swish, Int8Isa isa,
                      int threads);
// The same on the calling thread (a kernel's epilogue over the span it just wrote).
void hard_sigmoid_span(const float* x, float* y, int64_t count, float alpha, float beta, bool swish, Int8Isa isa);

}  // namespace qrt
