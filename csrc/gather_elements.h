// GatherElements on float32 data (ONNX GatherElements, the reference
// kernels/reference/shape_ops.py gather_elements_ref), on raw pointers.
//
//   data (outer, da, inner) float32, indices (outer, na, inner) int32 / int64, out like indices:
//     out[o, a, i] = data[o, r, i],  r = indices[o, a, i] (+ da when negative)
//
// The caller views both arrays as (outer, axis, inner) around the gather axis, which needs every
// other axis of indices to be as long as data's (the common case: DeBERTa's relative-position
// scores, (B*H, S, 2*span) gathered along the last axis by a (B*H, S, S) index); other shapes run
// the reference. A copy of float32 values: the reference's bits.
//
// Indices are checked against [-da, da) before anything is written: the functions return -1
// when every one is in range (out written), else the position of the first one out of range
// in indices' C order (out not written), so that the caller raises the reference's error.
//
// Threads: above kGatherElementsParallelMinElements output elements, blocks of `outer` rows
// are work items of the pool (csrc/work_pool.h), each written by one thread: the result does
// not depend on the thread count.
#pragma once

#include <cstdint>

namespace qrt {

constexpr int64_t kGatherElementsParallelMinElements = int64_t(1) << 16;

template <typename Index>
int64_t gather_elements_f32(const float* data, int64_t outer, int64_t da, int64_t inner, const Index* idx,
                            int64_t na, float* out, int threads);

}  // namespace qrt
