// Softmax over the last axis, with an optional scale and an additive mask: the score path of
// Attention (kernels/cupy_gpu/attention.py) and the Softmax op (scale 1, no mask).
// Compiled after common.cuh (kernels/cupy_gpu/_common.py compiled_source).
//
// y[r, j] = exp(t_j - max_j t_j) / sum_j exp(t_j - max_j t_j), t_j = scale * x[r, j] + mask(r, j).
//
// Numerics: t in float64 (scale * x + mask rounded once each in float64, so a large mask such
// as -10000 does not swallow the score's low bits as a float32 sum would); the max subtraction
// in float64, then exp in float32 (expf, within 2 ulp) of the difference rounded to float32,
// the row sum in float64, y rounded once. Per element |y - reference| <= about 8 * 2^-24:
// rounding the argument d = t - max costs |d| e^d 2^-24 <= 2^-24 / e, expf 2 ulp of e^d <= 1,
// the sum and the division a few ulps of y <= 1. A NaN anywhere in a row makes the row's sum,
// and so the whole row, NaN, as the reference; so does a row whose t are all -inf.
//
// Rows are the flattened (B, H, Sq) of an attention score tensor (B, H, Sq, Sk) (for the
// Softmax op: any leading shape, heads = queries = 1, no mask): row r is b = r / (H Sq),
// h = (r / Sq) % H, i = r % Sq, and mask(r, j) = mask[b sb + h sh + i sq + j sk] with element
// strides of the mask broadcast to (B, H, Sq, Sk) (0 along broadcast dimensions), so a
// broadcast mask is never materialised.
//
// Launch: one block per row (grid-stride over rows), 32..1024 threads striding over the row,
// three passes over it (max, sum, write), from L1/L2 after the first.
// x float32 (rows, cols); mask float32, read only when has_mask; y float32 (rows, cols).
extern "C" __global__ void masked_softmax_rows(const float* __restrict__ x, float* __restrict__ y, long long rows,
                                               int cols, double scale, const float* __restrict__ mask, int has_mask,
                                               long long heads, long long queries, long long mask_stride_b,
                                               long long mask_stride_h, long long mask_stride_q,
                                               long long mask_stride_k) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * cols;
        const long long b = r / (heads * queries), h = (r / queries) % heads, i = r % queries;
        const float* mr = mask + (has_mask ? b * mask_stride_b + h * mask_stride_h + i * mask_stride_q : 0);
#define QRT_SOFTMAX_T(j) (has_mask ? __dadd_rn(__dmul_rn(scale, (double)xr[j]), (double)mr[(j) * mask_stride_k]) \
                                   : __dmul_rn(scale, (double)xr[j]))
        double t_max = qrt_neg_inf_double();
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            const double t = QRT_SOFTMAX_T(j);
            t_max = t > t_max ? t : t_max;   // a NaN is skipped here but makes the sum NaN
        }
        t_max = block_max_double(t_max);
        double sum = 0.0;
        for (int j = threadIdx.x; j < cols; j += blockDim.x)
            sum += (double)expf(__double2float_rn(QRT_SOFTMAX_T(j) - t_max));
        sum = block_sum_double(sum);
        const double inv = __ddiv_rn(1.0, sum);
        for (int j = threadIdx.x; j < cols; j += blockDim.x)
            y[r * cols + j] = __double2float_rn((double)expf(__double2float_rn(QRT_SOFTMAX_T(j) - t_max)) * inv);
#undef QRT_SOFTMAX_T
    }
}
