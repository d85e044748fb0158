// float32 MaxPool of the native backend over 2-D windows (1-D as one row), any stride, padding,
// dilation and ceil_mode overhang: the reference's value bit for bit (kernels/reference/
// conv_pool.py max_pool_ref, and the numba kernel's rule): each output is the maximum of its
// window's taps, visited row by row, from -inf, padding and overhang being -inf (never winning),
// a NaN kept once seen (v > NaN is false). One work item per (image, channel) plane, copied into
// a -inf padded buffer, each tap applied to a whole output row (vectorised by the compiler for
// the path's ISA: the same selects, the same bits).
#pragma once

#include <cstdint>

#include "int8_gemm.h"   // Int8Isa: the native backend's one ISA switch

namespace qrt {

struct PoolGeometry {
    int64_t n = 0, c = 0, h = 0, w = 0;          // X (N, C, H, W)
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
    int64_t pt = 0, pl = 0, pb = 0, pr = 0;      // pads, the end ones grown to cover a ceil_mode overhang
    int64_t oh = 1, ow = 1;                      // output size (the caller's, from its rule)
};

// Throws std::invalid_argument for sizes, strides or dilations < 1 (N may be 0), negative pads,
// attributes above 2^20, or an output window that reaches past the padded input.
void max_pool_check_geometry(const PoolGeometry& g);

// Y (N, C, OH, OW) float32 of X (N, C, H, W) float32; the geometry checked as above. Runs on int8_current_isa()'s vector width with int8_get_threads() threads (the _isa
// form: explicit); the bits depend on neither.
void max_pool2d(const PoolGeometry& g, const float* x, float* y);
void max_pool2d_isa(const PoolGeometry& g, const float* x, float* y, Int8Isa isa, int threads);

}  // namespace qrt
