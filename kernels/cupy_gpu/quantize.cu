// Activation quantization for the int8 Linear kernels, and its inverse.
// Compiled after common.cuh (kernels/cupy_gpu/_common.py compiled_source).
//
// Numerics are kernels/reference/packed.py's, in float64 with the same operations, so qx and
// the scales are the reference's bit for bit: x float32 is exact in float64, the division is
// one correctly rounded __ddiv_rn (not a multiply by a reciprocal), rint rounds half to even
// (as np.rint), then the clamp. X must be finite: a NaN gives an unspecified qx (the reference
// propagates it), the wrappers document this. A subnormal x (|x| < 2^-126) is read as 0
// (CuPy's -ftz=true, common.cuh): it changes nothing unless a whole row is subnormal.

// Dynamic, per row, symmetric: s[r] = max_k |x[r, k]| / 127 (1 for an all-zero row),
// qx[r, k] = clamp(rint(x[r, k] / s[r]), -127, 127): symmetric int8 never uses -128.
// x float32 (rows, k), qx int8 (rows, k), x_scale float64 (rows,).
// Launch: one block per row (grid-stride over rows), 32..1024 threads striding over k.
extern "C" __global__ void quantize_rows_dynamic(const float* __restrict__ x, signed char* __restrict__ qx,
                                                 double* __restrict__ x_scale, long long rows, int k) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * k;
        double amax = 0.0;                        // |x| is exact in any precision: max is exact
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            const double a = fabs((double)xr[j]);
            amax = a > amax ? a : amax;
        }
        amax = block_max_double(amax);
        const double s = amax == 0.0 ? 1.0 : __ddiv_rn(amax, 127.0);
        if (threadIdx.x == 0) x_scale[r] = s;
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            double q = rint(__ddiv_rn((double)xr[j], s));
            q = q < -127.0 ? -127.0 : (q > 127.0 ? 127.0 : q);
            qx[r * k + j] = (signed char)(int)q;
        }
    }
}

// Static: qx = clamp(rint(x / scale) + zero_point, -128, 127), one scale and zero point per
// node. x float32 (n,), qx int8 (n,). Launch: grid-stride, any grid.
extern "C" __global__ void quantize_static(const float* __restrict__ x, signed char* __restrict__ qx, long long n,
                                           double scale, int zero_point) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double q = __dadd_rn(rint(__ddiv_rn((double)x[i], scale)), (double)zero_point);
        q = q < -128.0 ? -128.0 : (q > 127.0 ? 127.0 : q);
        qx[i] = (signed char)(int)q;
    }
}

// y[r, j] = float32((qx[r, j] - zero_point) * x_scale[r * x_scale_step]): the product rounded
// once in float64, then once to float32 (numpy's float64 expression, then astype(float32)).
// qx int8 (rows, k), x_scale float64, y float32 (rows, k). Launch: grid-stride over rows * k.
extern "C" __global__ void dequantize_rows(const signed char* __restrict__ qx, const double* __restrict__ x_scale,
                                           long long x_scale_step, int zero_point, float* __restrict__ y,
                                           long long rows, int k) {
    const long long n = rows * k, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double q = (double)((int)qx[i] - zero_point);
        y[i] = __double2float_rn(__dmul_rn(q, x_scale[(i / k) * x_scale_step]));
    }
}
