// LayerNormalization over the last axis, and SkipLayerNormalization (x + skip, then the same).
// Compiled after common.cuh (kernels/cupy_gpu/_common.py compiled_source).
//
// y[r, :] = (s - mean) * rstd * gamma + beta with s = x[r, :] (SkipLayerNormalization:
// s = float32(x[r, :] + skip[r, :]), the sum rounded to float32 first, as the Add node it
// replaces), mean and the biased variance over the row, rstd = 1 / sqrt(var + epsilon).
//
// Numerics: float32 in and out, everything in between in float64: the statistics are two
// passes (mean, then the sum of squared deviations: no E[x^2] - mean^2 cancellation), summed
// per thread in float64 and reduced with warp shuffles; the affine step is float64 and rounded
// once. Against the float64 reference (which divides by sqrt(var + eps) where this multiplies
// by its reciprocal, and sums in another order) the difference is a few float64 ulps before
// the one rounding to float32: within one float32 ulp.
//
// Launch: one block per row (grid-stride over rows), 32..1024 threads striding over d; the
// row is read three times, from L1/L2 after the first pass.
// x, skip float32 (rows, d); gamma float32 (d,); beta float32 (d,) read only when has_beta;
// skip read only when has_skip; y float32 (rows, d).
extern "C" __global__ void layer_norm_rows(const float* __restrict__ x, const float* __restrict__ skip, int has_skip,
                                           const float* __restrict__ gamma, const float* __restrict__ beta,
                                           int has_beta, float* __restrict__ y, long long rows, int d,
                                           double epsilon) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * d;
        const float* sr = skip + (has_skip ? r * d : 0);
#define QRT_LN_VALUE(j) ((double)(has_skip ? __fadd_rn(xr[j], sr[j]) : xr[j]))
        double sum = 0.0;
        for (int j = threadIdx.x; j < d; j += blockDim.x) sum += QRT_LN_VALUE(j);
        const double mean = __ddiv_rn(block_sum_double(sum), (double)d);
        double sq = 0.0;
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const double t = QRT_LN_VALUE(j) - mean;
            sq += t * t;
        }
        const double var = __ddiv_rn(block_sum_double(sq), (double)d);
        const double rstd = __ddiv_rn(1.0, sqrt(var + epsilon));
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            double t = (QRT_LN_VALUE(j) - mean) * rstd * (double)gamma[j];
            if (has_beta) t += (double)beta[j];
            y[r * d + j] = __double2float_rn(t);
        }
#undef QRT_LN_VALUE
    }
}
