// The activations the Convs of the native backend apply in their epilogue: activation.h's (relu,
// gelu, gelu_tanh: the GEMMs' own) or HardSwish (hard_sigmoid.h's bits), which CNNs put after
// their Convs (runtime/fuse.py fuses Conv -> HardSwish, not Linear -> HardSwish: the GPU GEMMs
// have none). The float32 Convs (f32_channel_gemm.h, depthwise_conv.h) and the int8 one
// (int8_conv.h, int8_pointwise_conv.h) take it; the definitions are in f32_channel_gemm.cpp.
#pragma once

#include <cstdint>
#include <string>

#include "activation.h"     // Activation, activation_avx512 / _avx2
#include "hard_sigmoid.h"   // hard_sigmoid16 / 8
#include "int8_gemm.h"      // Int8Isa

namespace qrt {

struct FloatEpilogue {
    Activation act = Activation::none;   // applied when hard_swish is false
    bool hard_swish = false;             // x * clamp(x / 6 + 1 / 2, 0, 1), hard_sigmoid.h's bits
    bool silu = false;                   // x * sigmoid(x): sigmoid.h's silu_span, the Sigmoid and Mul ops' bits
};

// HardSwish's alpha and beta (ONNX: 1/6 and 1/2), as float32
constexpr float kHardSwishAlpha = static_cast<float>(1.0 / 6.0), kHardSwishBeta = 0.5f;

// "none", "relu", "gelu", "gelu_tanh", "hard_swish" or "silu"; throws std::invalid_argument otherwise.
FloatEpilogue float_epilogue_from_name(const std::string& name);

// The epilogue's activation on y[0, count) in place, on the calling thread.
void float_epilogue_inplace(float* y, int64_t count, const FloatEpilogue& ep, Int8Isa isa);

// Whether a kernel applies the epilogue to its registers before the store (float_epilogue16 / 8):
// ReLU and HardSwish, a few instructions a vector, where a pass over the stored span would read
// and write it again; the GELUs (long polynomials, register hungry) stay a pass over the span.
inline bool float_epilogue_in_registers(const FloatEpilogue& ep) {
    return !ep.silu && (ep.hard_swish || ep.act == Activation::none || ep.act == Activation::relu);
}

// Whether the epilogue is a pass over the stored span (float_epilogue_inplace) that an int8 GEMM's
// own epilogue does not apply: HardSwish and SiLU (the GEMMs' Activation has neither).
inline bool float_epilogue_is_pass_only(const FloatEpilogue& ep) { return ep.hard_swish || ep.silu; }

#if QRT_HARD_X86
// The epilogue on one vector where float_epilogue_in_registers(ep): the bits of
// float_epilogue_inplace (activation.h's ReLU, hard_sigmoid.h's HardSwish).
__attribute__((target("avx512f"))) inline __m512 float_epilogue16(__m512 v, const FloatEpilogue& ep) {
    if (ep.silu) return v;   // a pass after the stores (float_epilogue_in_registers is false)
    if (ep.hard_swish) return hard_sigmoid16(v, _mm512_set1_ps(kHardSwishAlpha), _mm512_set1_ps(kHardSwishBeta), true);
    return ep.act == Activation::relu ? activation_avx512(v, ep.act) : v;
}
__attribute__((target("avx2"))) inline __m256 float_epilogue8(__m256 v, const FloatEpilogue& ep) {
    if (ep.silu) return v;   // a pass after the stores (float_epilogue_in_registers is false)
    if (ep.hard_swish) return hard_sigmoid8(v, _mm256_set1_ps(kHardSwishAlpha), _mm256_set1_ps(kHardSwishBeta), true);
    return ep.act == Activation::relu ? activation_avx2(v, ep.act) : v;
}
#endif

}  // namespace qrt
