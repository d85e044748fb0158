// Linear on a csr weight: Y (M, N) = act((s_w[n] * acc) * s_x[m] + b[n]), acc = sum_k (qx[m, k] - z) * qw[n, k]
// (the epilogue order of docs/CONVERTER.md, "Numerics").
// Compiled after common.cuh (kernels/cupy_gpu/_common.py compiled_source).
//
// The weight is the csr layout of kernels/core/layouts.py with its indices widened at load time
// (kernels/cupy_gpu/host.py csr_device_arrays): indptr int64 (N + 1,), indices int32 (nnz,),
// qw int8 (nnz,) (or values float32 (nnz,) for the float path). Row n of the weight is output
// channel n.
//
// Launch (kernels/cupy_gpu/sparse.py): block = (32 * WARPS,), one warp per output channel
// n = blockIdx.x * WARPS + warp; grid = (ceil(N / WARPS), row tiles), blockIdx.y walks the
// tiles of QRT_SPARSE_ROWS rows of X (common.cuh sparse_int8_warp). No __syncthreads: a warp
// past N returns at once.

// qx int8 (M, K); x_scale float64, x_scale[m * x_scale_step] (step 1: one scale per row,
// dynamic; step 0: the node's one static scale); w_scale float64 (N,); bias float64 (N,)
// read only when has_bias; y float32 (M, N).
extern "C" __global__ void csr_int8_linear(const signed char* __restrict__ qx, const double* __restrict__ x_scale,
                                           long long x_scale_step, int x_zero_point,
                                           const long long* __restrict__ indptr, const int* __restrict__ indices,
                                           const signed char* __restrict__ qw, const double* __restrict__ w_scale,
                                           const double* __restrict__ bias, int has_bias, int act,
                                           float* __restrict__ y, int M, int N, int K) {
    const int n = blockIdx.x * (blockDim.x / QRT_WARP) + threadIdx.x / QRT_WARP;
    if (n >= N) return;
    sparse_int8_warp(qx, x_scale, x_scale_step, x_zero_point, indices, qw, indptr[n], indptr[n + 1], w_scale[n],
                     bias, has_bias, act, y, n, M, N, K);
}

// act_quant "none": x float32 (M, K), values float32 (nnz,) (the dequantized weight for quant
// "int8"), bias float64 (N,) when has_bias; y float32 (M, N).
extern "C" __global__ void csr_float_linear(const float* __restrict__ x, const long long* __restrict__ indptr,
                                            const int* __restrict__ indices, const float* __restrict__ values,
                                            const double* __restrict__ bias, int has_bias, int act,
                                            float* __restrict__ y, int M, int N, int K) {
    const int n = blockIdx.x * (blockDim.x / QRT_WARP) + threadIdx.x / QRT_WARP;
    if (n >= N) return;
    sparse_float_warp(x, indices, values, indptr[n], indptr[n + 1], bias, has_bias, act, y, n, M, N, K);
}
