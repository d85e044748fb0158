// float32 Add / Sub / Mul / Div for the shapes CNNs give them, and ReduceMean over trailing axes,
// on the native backend (they ran on the reference before: numpy's broadcasting and its float64
// mean cost MobileNetV3's squeeze-excitation blocks 0.5 ms of 4: RESULTS.md, "MobileNetV3-like:
// the float32 layers").
//
// Numerics. Binary ops: one IEEE float32 operation per element (no FMA contraction:
// -ffp-contract=off), the bits of numpy's float32 ufuncs (the reference). Mean: the row summed in
// float64 (in an order of its own: sixteen running sums, lane l taking the elements j % 16 == l, then
// added pairwise: elementwise_f32.cpp), divided
// by the count in float64, rounded once to float32: within one float32 rounding of the
// reference's float64 mean (numpy sums pairwise in float64; the two float64 sums differ by far less
// than a float32 ulp except near a rounding tie).
#pragma once

#include <cstdint>

#include "int8_gemm.h"   // Int8Isa: the native backend's one ISA switch; Activation

namespace qrt {

enum class BinaryOp : int { add = 0, sub = 1, mul = 2, div = 3 };

// y (rows, cols) = act(a op b) where a and b are each one of: the full (rows, cols) array, one
// value per row (rows,), or one value (a scalar): a_kind / b_kind 0, 1, 2 respectively; act
// activation.h's (ResNet's Add -> Relu, fused by runtime/fuse.py), applied to each span while it
// is in cache, the bits of the Relu op after it. y may alias a full a or b. Runs on
// int8_current_isa()'s vector width with int8_get_threads() threads for large arrays (the _isa
// form: explicit); the same bits anyway.
void binary_f32(BinaryOp op, const float* a, int a_kind, const float* b, int b_kind, float* y, int64_t rows,
                int64_t cols, Activation act = Activation::none);
void binary_f32_isa(BinaryOp op, const float* a, int a_kind, const float* b, int b_kind, float* y, int64_t rows,
                    int64_t cols, Int8Isa isa, int threads, Activation act = Activation::none);

// y[r] = mean of x[r, 0 .. cols), r < rows (cols >= 1), as above.
void mean_rows_f32(const float* x, float* y, int64_t rows, int64_t cols);
void mean_rows_f32_isa(const float* x, float* y, int64_t rows, int64_t cols, Int8Isa isa, int threads);
// One row's mean, x[0 .. n), n >= 1, on the calling thread: the bits of mean_rows_f32 on path isa
// (a kernel's fused mean of a row it has just written: the depthwise Conv's channel means).
float mean_row_f32(const float* x, int64_t n, Int8Isa isa);

}  // namespace qrt
