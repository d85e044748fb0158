// Linear on an nm (N:M structured, e.g. 2:4) weight: the same Y as csr_spmm_int8.cu.
// Compiled after common.cuh (kernels/cupy_gpu/_common.py compiled_source).
//
// The layout's meta is unpacked at load time (kernels/cupy_gpu/host.py nm_column_indices) to
// one int32 column per stored value: cols (N, count), count = K / m * n, row-major and aligned
// with the stored values qw int8 (N, count) (or values float32 (N, count)). Every row has the
// same count, so row n's entries are [n * count, (n + 1) * count): an ELL matrix, no indptr.
//
// Launch as csr_spmm_int8.cu: one warp per output channel, blockIdx.y over tiles of
// QRT_SPARSE_ROWS rows of X.

extern "C" __global__ void nm_int8_linear(const signed char* __restrict__ qx, const double* __restrict__ x_scale,
                                          long long x_scale_step, int x_zero_point,
                                          const int* __restrict__ cols, const signed char* __restrict__ qw,
                                          long long count, const double* __restrict__ w_scale,
                                          const double* __restrict__ bias, int has_bias, int act,
                                          float* __restrict__ y, int M, int N, int K) {
    const int n = blockIdx.x * (blockDim.x / QRT_WARP) + threadIdx.x / QRT_WARP;
    if (n >= N) return;
    const long long begin = (long long)n * count;
    sparse_int8_warp(qx, x_scale, x_scale_step, x_zero_point, cols, qw, begin, begin + count, w_scale[n],
                     bias, has_bias, act, y, n, M, N, K);
}

extern "C" __global__ void nm_float_linear(const float* __restrict__ x, const int* __restrict__ cols,
                                           const float* __restrict__ values, long long count,
                                           const double* __restrict__ bias, int has_bias, int act,
                                           float* __restrict__ y, int M, int N, int K) {
    const int n = blockIdx.x * (blockDim.x / QRT_WARP) + threadIdx.x / QRT_WARP;
    if (n >= N) return;
    const long long begin = (long long)n * count;
    sparse_float_warp(x, cols, values, begin, begin + count, bias, has_bias, act, y, n, M, N, K);
}
