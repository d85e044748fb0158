// GELU, element-wise, float32 in and out: the Gelu op (approximate "none" and "tanh").
// Compiled after common.cuh (kernels/cupy_gpu/_common.py compiled_source).
//
// Float32 arithmetic throughout (this is a memory-bound pass over activations), written in the
// forms that do not cancel for negative x:
//   erf form:  0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)
//   tanh form: 0.5 x (1 + tanh(u))        = x / (1 + exp(-2 u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// (1 + erf and 1 + tanh lose every significant bit once erf, tanh round to -1 in float32).
// Error against the float64 reference: erfcf is within 4 ulp and expf within 2 ulp (CUDA Math
// API), plus the float32 roundings of their argument a, amplified by the condition number of
// erfc (about 2 a^2) or of 1 / (1 + exp(-2u)) (about |2u|): the error grows into the negative
// tail, 1.5e-6 relative where |GELU(x)| >= 1e-6, 3e-6 where >= 1e-8 (measured on x in
// [-12, 12] with glibc's erfcf / expf), and below that GELU(x) is so small that the error is
// under 1e-12 absolute (tests/test_cupy_kernels.py GELU_F32_RTOL, GELU_F32_ATOL).
//
// x float32 (n,), y float32 (n,). Launch: grid-stride, any grid.

__device__ __forceinline__ float gelu_erf_float(float x) {
    return 0.5f * x * erfcf(-x * 0.70710678118654752f);
}

__device__ __forceinline__ float gelu_tanh_float(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

extern "C" __global__ void gelu_float(const float* __restrict__ x, float* __restrict__ y, long long n,
                                      int approximate_tanh) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = approximate_tanh ? gelu_tanh_float(x[i]) : gelu_erf_float(x[i]);
}
