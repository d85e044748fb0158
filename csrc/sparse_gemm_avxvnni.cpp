// Sparse int8 Linear, AVX-VNNI: the AVX2 ELL loops with one vpdpbusd per activation row and
// half-vector (sparse_ell_half.h, step "vnni"), and the quad tiles: the AVX2 quad tiles (sparse_gemm_avx2.cpp) with one
// VEX vpdpbusd per quad of 8 activation rows and weight dword, where the AVX2 step takes
// vpmaddubsw + vpmaddwd (+ vpsignb for 8-bit weights). vpdpbusd sums u * w without
// intermediate saturation, so the step is exact for every weight byte, on the unflipped rows
// u = qx + 128 (the narrow tiles' transposition); the sums are corrected by (128 + z) rowsum in
// sparse_gemm_avx2.cpp's store, as for narrow weights. Numerics: sparse_gemm.h. The path is
// still offered only where the AVX2 tiles are (sparse_path_available: no -128 weight), which
// this step itself would not need.
// Compiled with target attributes; sparse_gemm.cpp calls it only on the avx_vnni path.
#include "sparse_gemm_kernels.h"

#if QRT_INT8_X86_SIMD && QRT_INT8_AVX_VNNI

#include "simd.h"

#include <algorithm>
#include <cstring>

namespace qrt {
namespace sparse_detail {

namespace {

#define QRT_QUAD_TARGET __attribute__((target("avx2,fma,avxvnni")))
#include "sparse_quad_half.h"
#define QRT_ELL_TARGET QRT_QUAD_TARGET
#include "sparse_ell_half.h"

}  // namespace

QRT_ELL_TARGET void ell_blocks_avx_vnni(const Problem& p, int64_t b0, int64_t b1) {
    ell_blocks_step<EllStep::vnni>(p, b0, b1);
}

#undef QRT_ELL_TARGET

QRT_QUAD_TARGET void quad_raw_avx_vnni(const SparseInt8Weight& w, const int8_t* xt, int64_t n0, int64_t nrows,
                                       __m256i (*raw)[kSparseBlockRows]) {
    quad_raw<QuadStep::vnni>(w, xt, n0, nrows, raw);
}

#undef QRT_QUAD_TARGET

}  // namespace sparse_detail
}  // namespace qrt

#endif  // QRT_INT8_X86_SIMD && QRT_INT8_AVX_VNNI
