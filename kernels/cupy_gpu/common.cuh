// Device helpers shared by every qrt CUDA source (kernels/cupy_gpu/*.cu).
//
// kernels/cupy_gpu/_common.py compiles each .cu file as THIS header followed by the file
// (``compiled_source``), so every module is one self-contained translation unit: NVRTC needs
// no include path, and CuPy's on-disk kernel cache, keyed by the source text, sees a change
// here too (it would not see a change to an #include'd file).
//
// Conventions every kernel and wrapper keeps:
// * no #include: NVRTC has no C library headers (device math, threadIdx, shuffles are builtins);
// * blockDim.x is a multiple of 32 and at most 1024, blockDim.y == blockDim.z == 1;
// * every thread of a block reaches every __syncthreads, every lane of a warp every shuffle
//   (full masks): a wrapper never launches a partial warp;
// * double arithmetic that must reproduce the numpy reference bit for bit is written with the
//   __dmul_rn / __dadd_rn / __ddiv_rn intrinsics, which NVRTC never contracts into FMAs;
// * CuPy compiles with -ftz=true: float32 subnormals (|v| < 2^-126, about 1.2e-38) read or
//   produced by float32 instructions, and float64 -> float32 conversions, become 0. Every
//   tolerance covers that; where bits are claimed equal (the int8 epilogue) a result is 0 or
//   far above 2^-126 unless the scales themselves are subnormal. float64 is not flushed.

#define QRT_ACT_NONE 0
#define QRT_ACT_RELU 1
#define QRT_ACT_GELU 2
#define QRT_ACT_GELU_TANH 3

#define QRT_FULL_MASK 0xffffffffu
#define QRT_WARP 32

// Rows of X one warp computes at once in the sparse Linear kernels: each weight entry (index
// and value) is loaded once per QRT_SPARSE_ROWS rows of X, and the accumulators stay in registers.
#define QRT_SPARSE_ROWS 8

// sqrt(2) and sqrt(2/pi) as the reference writes them (math.sqrt in float64)
#define QRT_SQRT_2 1.4142135623730951
#define QRT_SQRT_2_OVER_PI 0.7978845608028654

__device__ __forceinline__ float qrt_neg_inf_float() { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ double qrt_neg_inf_double() { return __longlong_as_double((long long)0xfff0000000000000ull); }

// --- warp and block reductions --------------------------------------------------------------
// The xor butterfly leaves the same value in every lane: each step adds the same two operands
// on both sides (a + b == b + a in IEEE arithmetic), so the result is identical in all lanes
// and the same from run to run.

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = QRT_WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(QRT_FULL_MASK, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int offset = QRT_WARP / 2; offset > 0; offset >>= 1) {
        const T other = __shfl_xor_sync(QRT_FULL_MASK, v, offset);
        v = other > v ? other : v;
    }
    return v;
}

// The sum over the block of every thread's v, returned to every thread. Every thread must
// call it (it has __syncthreads). The leading barrier makes back-to-back calls safe: a fast
// warp cannot overwrite partial[] while a slow one still reads the previous call's values.
__device__ double block_sum_double(double v) {
    __shared__ double partial[QRT_WARP];
    const int lane = threadIdx.x & (QRT_WARP - 1), warp = threadIdx.x / QRT_WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    // every warp reduces all partial sums itself: the total reaches every thread without a
    // third barrier, and every warp adds them in the same order (the same bits everywhere)
    return warp_sum(lane < (int)(blockDim.x / QRT_WARP) ? partial[lane] : 0.0);
}

// The maximum over the block of every thread's v (as block_sum_double).
__device__ double block_max_double(double v) {
    __shared__ double partial[QRT_WARP];
    const int lane = threadIdx.x & (QRT_WARP - 1), warp = threadIdx.x / QRT_WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    return warp_max(lane < (int)(blockDim.x / QRT_WARP) ? partial[lane] : qrt_neg_inf_double());
}

// --- activations ----------------------------------------------------------------------------

// GELU in float64, the reference's formulas (kernels/reference/elementwise.py gelu_ref) in the
// same order; CUDA's erf and tanh are within 2 ulp of float64, so after the rounding to
// float32 the result is the reference's or its float32 neighbour.
__device__ __forceinline__ double gelu_erf_double(double x) {
    return __dmul_rn(__dmul_rn(0.5, x), __dadd_rn(1.0, erf(__ddiv_rn(x, QRT_SQRT_2))));
}

__device__ __forceinline__ double gelu_tanh_double(double x) {
    const double cube = __dmul_rn(__dmul_rn(x, x), x);
    const double inner = __dmul_rn(QRT_SQRT_2_OVER_PI, __dadd_rn(x, __dmul_rn(0.044715, cube)));
    return __dmul_rn(__dmul_rn(0.5, x), __dadd_rn(1.0, tanh(inner)));
}

// The Linear epilogue's activation on the float32 output, as the activation op's reference
// applied after the unfused Linear (kernels/registry.py EPILOGUE_OPS): Relu is max(y, 0) on
// float32 (a NaN stays NaN, as np.maximum), Gelu is computed in float64 from the float32 y
// and rounded once.
__device__ __forceinline__ float apply_activation(float y, int act) {
    if (act == QRT_ACT_RELU) return y < 0.0f ? 0.0f : y;
    if (act == QRT_ACT_GELU) return __double2float_rn(gelu_erf_double((double)y));
    if (act == QRT_ACT_GELU_TANH) return __double2float_rn(gelu_tanh_double((double)y));
    return y;
}

// --- the sparse Linear inner loops (csr_spmm_int8.cu, nm_int8.cu) ------------------------------
//
// One warp computes output channel n (a row of the weight) for QRT_SPARSE_ROWS rows of X at a
// time; blockIdx.y strides over the tiles of rows. The channel's stored entries [begin, end)
// are read coalesced, 32 consecutive entries per warp step (column index and value), and each
// lane gathers X[m, column] for the tile's rows (X rows are read through L1/L2: a gather, not
// a coalesced load; an X row of K bytes is reused by every channel of the block).
//
// Integer path: qx is int8 (M, K) row-major, the product (qx - x_zero_point) * qw is exact in
// int32 and so is the sum as long as entries * max|qx - z| * 127 < 2^31 (the wrappers check the
// densest row against that bound before launching, kernels/cupy_gpu/sparse.py).

// The integer epilogue in the reference's float64 order (kernels/reference/packed.py):
// y = float32((s_w * acc) * s_x + b), then the activation. Every product and sum is one
// correctly rounded float64 operation, as numpy's, so y is the reference's, bit for bit.
__device__ __forceinline__ float int8_epilogue(int acc, double w_scale, double x_scale,
                                               const double* __restrict__ bias, int has_bias, int n, int act) {
    double y = __dmul_rn(__dmul_rn(w_scale, (double)acc), x_scale);
    if (has_bias) y = __dadd_rn(y, bias[n]);
    return apply_activation(__double2float_rn(y), act);
}

__device__ void sparse_int8_warp(const signed char* __restrict__ qx, const double* __restrict__ x_scale,
                                 long long x_scale_step, int x_zero_point,
                                 const int* __restrict__ cols, const signed char* __restrict__ qw,
                                 long long begin, long long end, double w_scale,
                                 const double* __restrict__ bias, int has_bias, int act,
                                 float* __restrict__ y, int n, int M, int N, int K) {
    const int lane = threadIdx.x & (QRT_WARP - 1);
    for (long long m0 = (long long)blockIdx.y * QRT_SPARSE_ROWS; m0 < M; m0 += (long long)gridDim.y * QRT_SPARSE_ROWS) {
        int acc[QRT_SPARSE_ROWS];
#pragma unroll
        for (int r = 0; r < QRT_SPARSE_ROWS; ++r) acc[r] = 0;
        for (long long p = begin + lane; p < end; p += QRT_WARP) {
            const long long c = cols[p];
            const int w = qw[p];
#pragma unroll
            for (int r = 0; r < QRT_SPARSE_ROWS; ++r)
                if (m0 + r < M) acc[r] += ((int)qx[(m0 + r) * K + c] - x_zero_point) * w;
        }
#pragma unroll
        for (int r = 0; r < QRT_SPARSE_ROWS; ++r) {
            const int total = warp_sum(acc[r]);          // every lane takes part, even past M
            const long long m = m0 + r;
            if (lane == r && m < M)
                y[m * N + n] = int8_epilogue(total, w_scale, x_scale[m * x_scale_step], bias, has_bias, n, act);
        }
    }
}

// Float path (act_quant "none"): x float32 (M, K), values float32, float32 products summed in
// float32 (each lane in entry order, then the butterfly); the bias is added in float64 and the
// sum rounded once.
__device__ void sparse_float_warp(const float* __restrict__ x, const int* __restrict__ cols,
                                  const float* __restrict__ values, long long begin, long long end,
                                  const double* __restrict__ bias, int has_bias, int act,
                                  float* __restrict__ y, int n, int M, int N, int K) {
    const int lane = threadIdx.x & (QRT_WARP - 1);
    for (long long m0 = (long long)blockIdx.y * QRT_SPARSE_ROWS; m0 < M; m0 += (long long)gridDim.y * QRT_SPARSE_ROWS) {
        float acc[QRT_SPARSE_ROWS];
#pragma unroll
        for (int r = 0; r < QRT_SPARSE_ROWS; ++r) acc[r] = 0.0f;
        for (long long p = begin + lane; p < end; p += QRT_WARP) {
            const long long c = cols[p];
            const float w = values[p];
#pragma unroll
            for (int r = 0; r < QRT_SPARSE_ROWS; ++r)
                if (m0 + r < M) acc[r] += x[(m0 + r) * K + c] * w;
        }
#pragma unroll
        for (int r = 0; r < QRT_SPARSE_ROWS; ++r) {
            const float total = warp_sum(acc[r]);
            const long long m = m0 + r;
            if (lane == r && m < M) {
                double v = (double)total;
                if (has_bias) v = __dadd_rn(v, bias[n]);
                y[m * N + n] = apply_activation(__double2float_rn(v), act);
            }
        }
    }
}
