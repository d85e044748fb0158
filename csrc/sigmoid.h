// Sigmoid on float32, one pass, the same bits on every path (scalar, AVX2, AVX-512), in this
// order, each operation rounded once (explicit fma only, -ffp-contract=off):
//
//   a  = max(-|x|, -104)                  e^-104 < 2^-150: every e below rounds to 0 anyway
//   k  = fma(a, log2 e, 1.5 * 2^23)       n = k - 1.5 * 2^23 = round(a log2 e)
//   r  = fma(-n, ln2_lo, fma(-n, ln2_hi, a))
//   e  = (exp_poly(r) * 2^(n - n1)) * 2^n1,  n1 = max(n, -126)   activation.h's float32 e^a
//   y  = (x < 0 ? e : 1) / (1 + e)        exp is only taken of -|x|: it never overflows
//   y  = x where x is NaN
//
// (the reference's stable form, kernels/reference/elementwise.py, in float32 with activation.h's
// exponential: within 3 ulp of the float64 sigmoid where that is a normal float32; tests/
// test_native_sigmoid.py). numba runs its own (float64) form, the reference numpy's float32
// exp: the backends agree to a few ulp, not bit for bit. EfficientNet's SiLU is Sigmoid then Mul.
#pragma once

#include <cstdint>

#include "int8_gemm.h"   // Int8Isa: the native backend's one ISA switch

namespace qrt {

// y[i] for i < count (y may be x), on int8_current_isa()'s vector width with int8_get_threads()
// threads for large counts (the _isa form: explicit); the same bits anyway.
void sigmoid_f32(const float* x, float* y, int64_t count);
void sigmoid_f32_isa(const float* x, float* y, int64_t count, Int8Isa isa, int threads);
// SiLU in place on the calling thread: y = y * sigmoid(y), the sigmoid's bits above and one float32
// product, i.e. the bits of the Sigmoid op followed by the Mul op (a Conv's fused "silu" epilogue:
// float_epilogue.h).
void silu_span(float* y, int64_t count, Int8Isa isa);

}  // namespace qrt
