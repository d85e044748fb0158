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
// Code paths (FusedIsa): AVX-512F (16 lanes), AVX2 + FMA (8 lanes, csrc/attention_avx2.cpp),
// scalar. "auto" (fused_auto_isa) is the best one the CPU has, capped by the int8 path when
// QRT_NATIVE_ISA / set_int8_isa forces one (int8_isa_forced(): avx512_vnni allows avx512, avx2
// allows avx2, scalar forces scalar), so that forcing it tests the whole backend on that ISA.
//
// Numerics (spec: kernels/reference/fused.py attention_ref, float64 rounded once):
//   - S = Qh Kh^T accumulated in float32 over d in order (one FMA per term on AVX-512 and
//     AVX2: the two give the same S); then s = S * scale + mask (one FMA on AVX-512 / AVX2,
//     multiply then add on the scalar path).
//   - softmax along j in float32: m = max_j s (a NaN score is skipped by the maximum but its
//     exp is NaN, so the row's sum and the whole output row are NaN, as in the reference);
//     e_j = exp32(s_j - m), exp32 below; total = sum_j e_j in float32 (16 lane partial sums
//     on AVX-512, 8 on AVX2, in j order, then a fixed reduction tree; so the paths differ in
//     the last bits of total).
//   - y = (E V) / total: E V accumulated in float32 over j in order, then each row multiplied
//     by 1 / total. A row masked everywhere with a large finite negative value (-3.4e38)
//     gets equal weights, as the reference: the score is absorbed by the mask.
//   - exp32(x) for x <= 0: n = round(x log2 e), r = x - n ln 2 (ln 2 in two float32 parts),
//     Taylor polynomial of e^r through r^7, times 2^n; 0 below -87.3 (where the result would
//     leave the normal float32 range), NaN stays NaN. Relative error ~1e-7 (tests). AVX-512
//     and AVX2 perform the same operations (n by an FMA and a floor, 2^n by scalef / by
//     building the exponent bits, both exact for x <= 0): the same bits for x <= 0 (the
//     AVX2 2^n saturates at 2^127, so x > 88 differs; softmax never passes x > 0).
//   Error against the reference: the float32 dot products, ~n 2^-24 relative to the output
//   norm; tests/test_native_fused.py uses tests/test_fusion.py's ATTENTION_RTOL.
//
// Disentangled attention (DeBERTa-v2/v3, the "DisentangledAttention" op): relative-position
// terms added to the unscaled scores before the scale,
//     S[i, j] += q_bih . pos_key[h, c2p[i, j]]  +  k_bjh . pos_query[h, p2c[j, i]]
// The tables are given transposed, as a GEMM's B operand: PositionTable below, made once per
// table (a session makes it at plan time); c2p (Sq, Sk) and p2c (Sk, Sq) int64 in [0, P) (the
// caller checks). Only the positions an index names are multiplied: per block of 8 rows of Q
// (or K) the band [lo_b, hi_b] of table rows its indices name, a float32 GEMM like S's, then
// each S[i, j] gathers its term from that product.
// So DeBERTa's (B*H, S, 2 * span) products and their gathers of the unfused graph are never
// formed. The terms are float32 dot products, added to S in float32: S + c2p, then + p2c.
//
// Work: one item per (b, h), each computed start to end by one thread in a fixed order, so
// the result does not depend on the thread count (items claimed from work_pool.h); each query row's
// scores, softmax and output are computed in an order that does not depend on the other rows
// or batches (a row or a batch alone gives the same bits as in the batch). Per thread a
// scratch of Kh^T (D, Sk16), S (Sq, Sk16), padded V (Sk, Dv16) when Dv % 16 != 0 and
// Y (Sq, Dv16): one head at a time, never all heads' scores.
#pragma once

#include <cstdint>
#include <vector>

namespace qrt {

enum class FusedIsa { scalar = 0, avx512 = 1, avx2 = 2 };

const char* fused_isa_name(FusedIsa isa);
// avx512 needs AVX-512F, avx2 needs AVX2 and FMA (cpu_features.cpp).
bool fused_isa_supported(FusedIsa isa);
// The best path this CPU has.
FusedIsa fused_best_isa();
// The path "auto" takes now: fused_best_isa(), capped by a forced int8 path (see above).
FusedIsa fused_auto_isa();

// A position table (H, P, D) float32, transposed per head to (D, ld) with ld = P + 16 rounded
// up to 16, zero beyond P: a band of rows starting anywhere, rounded up to whole 16-column
// vectors, is read inside it.
struct PositionTable {
    int64_t heads = 0, positions = 0, head_dim = 0, ld = 0;
    std::vector<float> t;             // (H, D, ld)
    PositionTable(const float* table, int64_t heads, int64_t positions, int64_t head_dim);
    const float* head(int64_t h) const { return t.data() + h * head_dim * ld; }
};

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
    bool nan_to_zero = false;         // a row whose softmax sum is NaN writes zeros (sdpa's IsNaN + Where)
    float* y = nullptr;               // (B, Sq, H*Dv) C-contiguous
    // disentangled attention's terms (above); nullptr: none
    const PositionTable* pos_key = nullptr;
    const int64_t* c2p = nullptr;     // (Sq, Sk), values in [0, pos_key->positions)
    const PositionTable* pos_query = nullptr;
    const int64_t* p2c = nullptr;     // (Sk, Sq), values in [0, pos_query->positions)
};

// Attention below this many multiply-adds (B * H * Sq * Sk * (D + Dv)) runs on one thread:
// waking the pool costs more than a small problem. In a model the pool's workers are still
// spinning from the Linear before, and the caller never waits for one that is not (work_pool.h),
// so the bar is low: MiniLM's 12 heads at 1 x 16 (196 K) 12.7 us on one thread, 9.5 on two
// (Zen 3). Was 2^19, as kernels/numba_cpu/fused.py's (whose OpenMP team does wait).
constexpr int64_t kAttentionParallelMinMacs = int64_t(1) << 16;

// Requires sk >= 1 and every size >= 1 (the binding handles empty problems).
void attention_f32(const AttentionArgs& args, FusedIsa isa, int threads);

// y[i] = exp32(x[i]) for x <= 0 (softmax arguments), the kernel's exp; for tests.
void exp_f32(const float* x, float* y, int64_t n, FusedIsa isa);

namespace fused_detail {

// exp32 constants (kernels/numba_cpu/ops.py _exp32): ln 2 in two float32 parts (Cephes expf),
// n * kLn2Hi exact for |n| <= 2^8.
inline constexpr float kLog2e = 1.44269504088896340736f;
inline constexpr float kLn2Hi = 0.693359375f;
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpMin = -87.3f;        // exp(-87.3) ~ 1.2e-38, the smallest normal float32
// Taylor coefficients of e^r, r^7 down to r^2 (then r + 1): truncation < 1.2e-7 relative
// for |r| <= ln2 / 2
inline constexpr float kExpPoly[6] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f};

// The AVX2 + FMA kernels (csrc/attention_avx2.cpp); callers check fused_isa_supported(avx2).
// C (m, n8) = A (m, kd) @ B (kd, n8), n8 a multiple of 8 (B and C have that many columns).
void gemm_avx2(int64_t m, int64_t n8, int64_t kd, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
               int64_t ldc);
// One softmax row in place: s[j] = s[j] * scale + mrow[j] (mrow nullptr or sk unit-stride
// values), then exp32(s - max); returns the float32 sum. Reads and writes s[0, sk) only.
float softmax_row_avx2(float* s, int64_t sk, float scale, const float* mrow);
void exp_avx2(const float* x, float* y, int64_t n);
// Kh^T: t[c * ldt + r] = a[r * lda + c] for r < rows, c < cols (8 x 8 blocks through
// registers, the edges element by element): a copy, the same bits as the scalar loop.
void transpose_avx2(const float* a, int64_t lda, int64_t rows, int64_t cols, float* t, int64_t ldt);

}  // namespace fused_detail

}  // namespace qrt
