// int8 Conv of the native backend (1-D and 2-D, NCHW, any group, stride, padding, dilation),
// bit-exact with kernels/reference/packed.py (packed_conv_ref) for act_quant "dynamic" and
// "static", as the int8 Linear is with packed_linear_ref.
//
// The reference is an im2col driver: one GEMM row per (image, output position), holding that
// patch's C/group * kh * kw values, quantized on its own (dynamic: its own max|x| / 127), then
// the int8 Linear's exact integer product and float64 epilogue (int8_gemm.h). This kernel
// computes the same rows without numpy's im2col, which cost 4-8x the GEMM itself (RESULTS.md,
// "int8 Conv without numpy's im2col"):
//
//   1. X (N, C, H, W) is copied once into a zero-padded channels-last buffer
//      (N, H + pads, W + pads, C): a patch is then kh runs of kw * C contiguous floats
//      (dilation 1), or kh * kw runs of C / group floats;
//   2. each row is assembled from those runs in a small per-thread buffer and handed to the
//      int8 Linear's own row quantizer (int8_gemm_rows), so scales, rounding and row sums are
//      the Linear's; a 1 x 1 window over all channels needs no copy at all;
//   3. the GEMM and epilogue (bias, the optional activation) are the int8 Linear's;
//   4. its (positions, M / group) output is transposed into Y's (M / group, positions) planes.
//
// With static activations (one scale for the tensor) step 2 gathers bytes instead: the
// channels-last copy is quantized once (each value once, not once per window that holds it:
// nine times for 3 x 3), with per-pixel NaN flags for the rows the reference makes NaN, and
// RowSink::put_quantized gives each row the bytes, sum and scale its floats would have had.
//
// Column order: the rows hold a patch tap-major, (ki, kj, c), where the reference's is
// channel-major, (c, ki, kj). The weights are packed in the same tap-major order
// (kernels/native_cpu/conv.py permutes qdata's columns at plan time), so every integer product
// meets the same pair of values; the sums are exact integers (int32 lanes for K <= kMaxKInt32,
// int64 beyond), hence independent of the order, and max|x| and sum qx do not depend on it
// either. So the bits are the reference's.
#pragma once

#include <cstdint>
#include <vector>

#include "float_epilogue.h"
#include "int8_gemm.h"

namespace qrt {

// One Conv's shapes. 1-D convs are 2-D with h = 1, kh = 1, sh = dh = 1, pt = pb = 0.
struct ConvGeometry {
    int64_t n = 0, c = 0, h = 0, w = 0;     // X (N, C, H, W)
    int64_t m = 0;                          // output channels
    int64_t kh = 1, kw = 1;                 // kernel
    int64_t sh = 1, sw = 1;                 // strides
    int64_t dh = 1, dw = 1;                 // dilations
    int64_t pt = 0, pl = 0, pb = 0, pr = 0; // zero padding: top, left, bottom, right
    int64_t group = 1;
    int64_t oh() const { return (h + pt + pb - dh * (kh - 1) - 1) / sh + 1; }
    int64_t ow() const { return (w + pl + pr - dw * (kw - 1) - 1) / sw + 1; }
};

// Throws std::invalid_argument naming the first bad value: sizes < 1 (N may be 0), negative
// pads, a window larger than the padded input, group not dividing C and M.
void conv_check_geometry(const ConvGeometry& g);

// Floats of scratch int8_conv2d needs: the channels-last copy and one group's GEMM output.
// The caller provides it (the binding takes it from the output cache, output_cache.h: a fresh
// block of a few MiB per call cost page faults and zeroed pages, as outputs did).
int64_t int8_conv2d_scratch_floats(const ConvGeometry& g);

// Y (N, M, OH, OW) float32 = ep(int8 Conv of X (N, C, H, W) float32), as described above (ep: the
// activation, float_epilogue.h; HardSwish, which the GEMM's epilogue lacks, in a pass after it).
// weights[gi] (group entries): the int8 weight of output channels gi * M/group ..., packed by
// int8_pack_weight from qdata (M/group, kh * kw * C/group) in tap-major column order; bias (M,)
// float64 or nullptr; scratch: int8_conv2d_scratch_floats(g) floats, any contents. Every
// element of y is written. Runs on int8_current_isa() with int8_get_threads() threads (the
// _isa form: an explicit path and thread count); the result depends on neither.
void int8_conv2d(const std::vector<const Int8PackedWeight*>& weights, const ConvGeometry& g, const float* x,
                 const double* bias, const Int8ActQuant& aq, float* y, float* scratch,
                 const FloatEpilogue& ep = FloatEpilogue());
void int8_conv2d_isa(const std::vector<const Int8PackedWeight*>& weights, const ConvGeometry& g, const float* x,
                     const double* bias, const Int8ActQuant& aq, float* y, float* scratch, Int8Isa isa, int threads,
                     const FloatEpilogue& ep = FloatEpilogue());

}  // namespace qrt
