// Float32 multi-head attention (the fused "Attention" op of runtime/fuse.py) on raw pointers.
//
//   q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv) float32, heads side by side in the last
//   axis; any batch / sequence strides (q, k, v may be views of one (B, S, 3*H*D) buffer from
//   a Split), the last axis contiguous.
//   mask: nullptr, or float32 read at b*ms[0] + h*ms[1] + i*ms[2] + j*ms[3] (element strides,
//   0 on a broadcast axis): added to the scaled scores.
//   y (B, Sq, H*Dv) float32, C-contiguous:
//     y[b, i, h*Dv:(h+1)*Dv] = softmax_j(scale * (q_bih . k_bjh) + mask[b, h, i, j]) @ v_bh
//
// Numerics (spec: kernels/reference/fused.py attention_ref, float64 rounded once):
//   - S = Qh Kh^T accumulated in float32 over d in order (one FMA per term on AVX-512);
//     then s = S * scale + mask (one FMA on AVX-512, multiply then add on the scalar path).
//   - softmax along j in float32: m = max_j s (a NaN score is skipped by the maximum but its
//     exp is NaN, so the row's sum and the whole output row are NaN, as in the reference);
//     e_j = exp32(s_j - m), exp32 below; total = sum_j e_j in float32 (16 lane partial sums
//     on AVX-512, then a fixed reduction tree).
//   - y = (E V) / total: E V accumulated in float32 over j in order, then each row multiplied
//     by 1 / total. A row masked everywhere with a large finite negative value (-3.4e38)
//     gets equal weights, as the reference: the score is absorbed by the mask.
//   - exp32(x) for x <= 0: n = round(x log2 e), r = x - n ln 2 (ln 2 in two float32 parts),
//     Taylor polynomial of e^r through r^7, times 2^n; 0 below -87.3 (where the result would
//     leave the normal float32 range), NaN stays NaN. Relative error ~1e-7 (tests).
//   Error against the reference: the float32 dot products, ~n 2^-24 relative to the output
//   norm; tests/test_native_fused.py uses tests/test_fusion.py's ATTENTION_RTOL.
//
// Work: one item per (b, h), each computed start to end by one thread in a fixed order, so
// the result does not depend on the thread count (OpenMP, dynamic schedule). Per thread a
// scratch of Kh^T (D, Sk16), S (Sq, Sk16), padded V (Sk, Dv16) when Dv % 16 != 0 and
// Y (Sq, Dv16): one head at a time, never all heads' scores.
#pragma once

#include <cstdint>

namespace qrt {

enum class FusedIsa { scalar = 0, avx512 = 1 };

const char* fused_isa_name(FusedIsa isa);
bool fused_isa_supported(FusedIsa isa);
FusedIsa fused_best_isa();

struct AttentionArgs {
    const float* q = nullptr;
    const float* k = nullptr;
    const float* v = nullptr;
    const float* mask = nullptr;      // nullptr: no mask
    int64_t batch = 0, sq = 0, sk = 0, heads = 0, head_dim = 0, v_head_dim = 0;
    int64_t q_strides[2] = {0, 0};    // (batch, seq) in elements; the last axis has stride 1
    int64_t k_strides[2] = {0, 0};
    int64_t v_strides[2] = {0, 0};
    int64_t mask_strides[4] = {0, 0, 0, 0};   // (b, h, i, j) in elements, 0 where broadcast
    float scale = 1.0f;
    float* y = nullptr;               // (B, Sq, H*Dv) C-contiguous
};

// Attention below this many multiply-adds (B * H * Sq * Sk * (D + Dv)) runs on one thread:
// waking the pool costs more than a small problem (as kernels/numba_cpu/fused.py).
constexpr int64_t kAttentionParallelMinMacs = int64_t(1) << 19;

// Requires sk >= 1 and every size >= 1 (the binding handles empty problems).
void attention_f32(const AttentionArgs& args, FusedIsa isa, int threads);

// y[i] = exp32(x[i]) for x <= 0 (softmax arguments), the kernel's exp; for tests.
void exp_f32(const float* x, float* y, int64_t n, FusedIsa isa);

}  // namespace qrt
