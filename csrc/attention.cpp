// Float32 attention: AVX-512 FMA micro-kernels, the dispatch to the AVX2 ones
// (attention_avx2.cpp) and a scalar fallback. Numerics: attention.h.
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "int8_gemm.h"      // int8_isa_forced / int8_current_isa: fused_auto_isa's cap
#include "work_pool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_FUSED_X86_SIMD 1
#include "simd.h"
#else
#define QRT_FUSED_X86_SIMD 0
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"      // accumulator arrays set in unrolled loops
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace qrt {

namespace {

// exp32 constants: attention.h (shared with the AVX2 kernels)
using fused_detail::kExpMin;
using fused_detail::kExpPoly;
using fused_detail::kLn2Hi;
using fused_detail::kLn2Lo;
using fused_detail::kLog2e;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

float exp32_scalar(float x) {
    if (x != x) return x;
    if (x < kExpMin) return 0.0f;
    const float n = std::floor(x * kLog2e + 0.5f);
    const float r = (x - n * kLn2Hi) - n * kLn2Lo;
    float p = kExpPoly[0];
    for (int t = 1; t < 6; ++t) p = p * r + kExpPoly[t];
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return std::ldexp(p, static_cast<int>(n));
}

// --- scalar path ---------------------------------------------------------------------------------

// C (m, n) = A (m, kd) @ B (kd, n); rows of A at stride lda, of B at ldb, of C at ldc.
void gemm_scalar(int64_t m, int64_t n, int64_t kd, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc) {
    for (int64_t i = 0; i < m; ++i) {
        float* ci = c + i * ldc;
        std::fill(ci, ci + n, 0.0f);
        for (int64_t p = 0; p < kd; ++p) {
            const float ap = a[i * lda + p];
            const float* bp = b + p * ldb;
            for (int64_t j = 0; j < n; ++j) ci[j] += ap * bp[j];
        }
    }
}

// One softmax row in place: s[j] = s[j] * scale + mrow[j] (mrow may be nullptr), then
// exp(s - max); returns the float32 sum.
float softmax_row_scalar(float* s, int64_t sk, float scale, const float* mrow) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < sk; ++j) {
        float t = s[j] * scale;
        if (mrow != nullptr) t += mrow[j];
        s[j] = t;
        m = t > m ? t : m;      // NaN skipped, as _mm512_max_ps(t, m) does
    }
    float total = 0.0f;
    for (int64_t j = 0; j < sk; ++j) {
        const float e = exp32_scalar(s[j] - m);
        s[j] = e;
        total += e;
    }
    return total;
}

#if QRT_FUSED_X86_SIMD

#define QRT_F_AVX512 __attribute__((target("avx512f")))

QRT_F_AVX512 inline __m512 exp32_avx512(__m512 x) {
    // max(kExpMin, x): the second operand is returned when either is NaN, so NaN stays NaN
    const __m512 xc = _mm512_max_ps(_mm512_set1_ps(kExpMin), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(kLog2e), _mm512_set1_ps(0.5f)),
                                          _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kExpPoly[0]);
    for (int t = 1; t < 6; ++t) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[t]));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512 y = _mm512_scalef_ps(p, n);      // p * 2^n, n >= -126 here: a normal float32
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(under, y, _mm512_setzero_ps());
}

// C (MR, NV*16) = A (MR, kd) @ B (kd, NV*16): MR x NV accumulators in registers, A broadcast
// element by element, B rows loaded as vectors; the sum over p runs in order (FMA each term).
template <int MR, int NV>
QRT_F_AVX512 inline void tile_avx512(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kd, float* c,
                                     int64_t ldc) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < NV; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kd; ++p) {
        __m512 bv[NV];
#pragma GCC unroll 2
        for (int t = 0; t < NV; ++t) bv[t] = _mm512_loadu_ps(b + p * ldb + 16 * t);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r * lda + p]);
#pragma GCC unroll 2
            for (int t = 0; t < NV; ++t) acc[r][t] = _mm512_fmadd_ps(ar, bv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < NV; ++t) _mm512_storeu_ps(c + r * ldc + 16 * t, acc[r][t]);
}

constexpr int kMr = 8;      // rows of a tile: 8 x 2 accumulators + 2 B vectors of 32 registers

template <int NV>
QRT_F_AVX512 void tile_rows(int rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kd, float* c,
                            int64_t ldc) {
    switch (rows) {
        case 8: tile_avx512<8, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 7: tile_avx512<7, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 6: tile_avx512<6, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 5: tile_avx512<5, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 4: tile_avx512<4, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 3: tile_avx512<3, NV>(a, lda, b, ldb, kd, c, ldc); break;
        case 2: tile_avx512<2, NV>(a, lda, b, ldb, kd, c, ldc); break;
        default: tile_avx512<1, NV>(a, lda, b, ldb, kd, c, ldc); break;
    }
}

// C (m, n16) = A (m, kd) @ B (kd, n16), n16 a multiple of 16 (B and C have that many columns).
// Column panels of 32 outer (B's panel stays in L1 while every row tile passes over it).
QRT_F_AVX512 void gemm_avx512(int64_t m, int64_t n16, int64_t kd, const float* a, int64_t lda, const float* b,
                              int64_t ldb, float* c, int64_t ldc) {
    for (int64_t j = 0; j < n16; j += 32) {
        const bool two = n16 - j >= 32;
        for (int64_t i = 0; i < m; i += kMr) {
            const int rows = static_cast<int>(std::min<int64_t>(kMr, m - i));
            if (two)
                tile_rows<2>(rows, a + i * lda, lda, b + j, ldb, kd, c + i * ldc + j, ldc);
            else
                tile_rows<1>(rows, a + i * lda, lda, b + j, ldb, kd, c + i * ldc + j, ldc);
        }
    }
}

QRT_F_AVX512 inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// softmax_row_scalar's job on 16 lanes; mrow (nullptr or unit stride) padded reads masked.
QRT_F_AVX512 float softmax_row_avx512(float* s, int64_t sk, float scale, const float* mrow) {
    const __m512 vscale = _mm512_set1_ps(scale);
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < sk; j += 16) {
        const __mmask16 k = tail_mask(sk - j);
        __m512 t = _mm512_maskz_loadu_ps(k, s + j);
        t = mrow != nullptr ? _mm512_fmadd_ps(t, vscale, _mm512_maskz_loadu_ps(k, mrow + j)) : _mm512_mul_ps(t, vscale);
        _mm512_mask_storeu_ps(s + j, k, t);
        vmax = _mm512_mask_max_ps(vmax, k, t, vmax);    // NaN t: vmax kept (second operand)
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < sk; j += 16) {
        const __mmask16 k = tail_mask(sk - j);
        const __m512 e = exp32_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), m));
        _mm512_mask_storeu_ps(s + j, k, e);
        vsum = _mm512_mask_add_ps(vsum, k, vsum, e);
    }
    return _mm512_reduce_add_ps(vsum);
}

QRT_F_AVX512 void exp_avx512(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, k, exp32_avx512(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

#endif  // QRT_FUSED_X86_SIMD

// One relative-position term of disentangled attention (attention.h), prepared once per call
// and read by every item. The term's product T = X table_h^T (X = Q for c2p, K for p2c) is
// computed per block of kRelRows rows of X, only over the table rows [lo_b, hi_b] that the
// block's indices name: DeBERTa's index is a band along the diagonal, so a block needs about S
// positions of the 2 * span a whole head would (half the products). T's row r holds the
// products of its block's band, starting at lo_b; offset[i * Sk + j] is where score (i, j)
// finds its term in T.
constexpr int64_t kRelRows = 8;      // = kMr: one register tile of rows per block

struct RelTerm {
    const PositionTable* table = nullptr;
    int64_t ldt = 0;
    std::vector<int64_t> block_lo, block_width;   // per block of kRelRows rows of X
    std::vector<int32_t> offset;                  // (Sq, Sk)
};

// c2p: S[i, j] += T[i, c2p[i, j]] with T = Q pos_key_h^T;  p2c: S[i, j] += T[j, p2c[j, i]], T = K pos_query_h^T
void make_rel_term(const AttentionArgs& a, bool c2p, RelTerm& t) {
    const int64_t* idx = c2p ? a.c2p : a.p2c;
    const PositionTable* table = c2p ? a.pos_key : a.pos_query;
    if (table == nullptr || idx == nullptr) return;
    const int64_t rows = c2p ? a.sq : a.sk, cols = c2p ? a.sk : a.sq;   // idx is (rows, cols)
    const int64_t blocks = (rows + kRelRows - 1) / kRelRows;
    t.block_lo.assign(static_cast<size_t>(blocks), 0);
    t.block_width.assign(static_cast<size_t>(blocks), 0);
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t* first = idx + blk * kRelRows * cols;
        const int64_t* last = idx + std::min(rows, (blk + 1) * kRelRows) * cols;
        const auto mm = std::minmax_element(first, last);
        t.block_lo[blk] = *mm.first;
        // lo_b + width_b <= P - 1 + 16 <= ld: the table's padding covers the round-up
        t.block_width[blk] = round_up(*mm.second - *mm.first + 1, 16);
        t.ldt = std::max(t.ldt, t.block_width[blk]);
    }
    if (round_up(rows, kRelRows) * t.ldt > std::numeric_limits<int32_t>::max())
        throw std::length_error("disentangled attention: " + std::to_string(rows) + " rows of " +
                                std::to_string(t.ldt) + " positions exceed the int32 offsets");
    t.offset.resize(static_cast<size_t>(a.sq * a.sk));
    for (int64_t i = 0; i < a.sq; ++i)
        for (int64_t j = 0; j < a.sk; ++j) {
            const int64_t row = c2p ? i : j, r = c2p ? idx[i * a.sk + j] : idx[j * a.sq + i];
            t.offset[i * a.sk + j] = static_cast<int32_t>(row * t.ldt + (r - t.block_lo[row / kRelRows]));
        }
    t.table = table;   // last: a term is on once it is complete
}

struct RelTerms {
    RelTerm c2p, p2c;
};

// One thread's buffers, sized for the whole call, zeroed once: padding columns are never
// written, so they stay zero (Kh^T's pad columns make extra score columns, never read).
struct Scratch {
    std::vector<float> kt, s, vpad, yt, mrow, inv, rel_t;
    Scratch(const AttentionArgs& a, int64_t sk16, int64_t dv16, const RelTerms& terms)
        : kt(a.head_dim * sk16, 0.0f),
          s(a.sq * sk16, 0.0f),
          vpad(a.v_head_dim % 16 ? a.sk * dv16 : 0, 0.0f),
          yt(a.sq * dv16, 0.0f),
          mrow(sk16, 0.0f),
          inv(a.sq, 0.0f),
          rel_t(std::max(terms.c2p.table ? round_up(a.sq, kRelRows) * terms.c2p.ldt : 0,
                         terms.p2c.table ? round_up(a.sk, kRelRows) * terms.p2c.ldt : 0), 0.0f) {}
};

// T (rows, ldt) of one term for head h: per block of rows X_block (kRelRows, D) @ the table's
// band (D, width_b) on `isa`.
void rel_product(const RelTerm& t, int64_t h, int64_t d, const float* x, int64_t xs, int64_t rows, Scratch& w,
                 FusedIsa isa) {
    const float* th = t.table->head(h);
    const int64_t ld = t.table->ld;
    for (int64_t r0 = 0; r0 < rows; r0 += kRelRows) {
        const int64_t m = std::min(kRelRows, rows - r0), blk = r0 / kRelRows;
        const float* b = th + t.block_lo[blk];
        const int64_t n16 = t.block_width[blk];
        float* c = w.rel_t.data() + r0 * t.ldt;
#if QRT_FUSED_X86_SIMD
        if (isa == FusedIsa::avx512) {
            gemm_avx512(m, n16, d, x + r0 * xs, xs, b, ld, c, t.ldt);
            continue;
        }
        if (isa == FusedIsa::avx2) {
            fused_detail::gemm_avx2(m, n16, d, x + r0 * xs, xs, b, ld, c, t.ldt);
            continue;
        }
#endif
        gemm_scalar(m, n16, d, x + r0 * xs, xs, b, ld, c, t.ldt);
    }
}

#if QRT_FUSED_X86_SIMD
// add_rel_term's rows by 16-lane gathers (the same additions: one float32 add per score)
QRT_F_AVX512 void add_rel_term_avx512(const RelTerm& t, const float* tp, float* s, int64_t sq, int64_t sk,
                                      int64_t sk16) {
    for (int64_t i = 0; i < sq; ++i) {
        float* srow = s + i * sk16;
        const int32_t* o = t.offset.data() + i * sk;
        int64_t j = 0;
        for (; j + 16 <= sk; j += 16) {
            const __m512i off = _mm512_loadu_si512(o + j);
            _mm512_storeu_ps(srow + j, _mm512_add_ps(_mm512_loadu_ps(srow + j), _mm512_i32gather_ps(off, tp, 4)));
        }
        for (; j < sk; ++j) srow[j] += tp[o[j]];
    }
}
#endif

// S (Sq, sk16) += the term T at each score's offset
void add_rel_term(const RelTerm& t, const float* tp, float* s, int64_t sq, int64_t sk, int64_t sk16, FusedIsa isa) {
#if QRT_FUSED_X86_SIMD
    if (isa == FusedIsa::avx512) {
        add_rel_term_avx512(t, tp, s, sq, sk, sk16);
        return;
    }
#else
    (void)isa;
#endif
    for (int64_t i = 0; i < sq; ++i) {
        float* srow = s + i * sk16;
        const int32_t* o = t.offset.data() + i * sk;
        for (int64_t j = 0; j < sk; ++j) srow[j] += tp[o[j]];
    }
}

void attention_item(const AttentionArgs& a, int64_t item, Scratch& w, FusedIsa isa, const RelTerms& terms) {
    const int64_t hds = a.heads, d = a.head_dim, dv = a.v_head_dim, sq = a.sq, sk = a.sk;
    const int64_t b = item / hds, h = item - b * hds;
    const int64_t sk16 = round_up(sk, 16), dv16 = round_up(dv, 16);
    const float* qh = a.q + b * a.q_strides[0] + h * d;     // row i at qh + i * q_strides[1]
    const float* kh = a.k + b * a.k_strides[0] + h * d;
    const float* vh = a.v + b * a.v_strides[0] + h * dv;
    const int64_t qs = a.q_strides[1], ks = a.k_strides[1], vs = a.v_strides[1];

    // Kh^T (D, Sk16): a copy, so any SIMD path may use the AVX2 one. Element by element
    // (scattered stores) it cost 2-3% of the attention at Sk = 128 and 12% at Sk = 16
    // (12 heads of 32, one thread, Zen 3: benchmarks/RESULTS.md)
    float* kt = w.kt.data();
#if QRT_FUSED_X86_SIMD
    if (isa != FusedIsa::scalar && fused_isa_supported(FusedIsa::avx2)) {
        fused_detail::transpose_avx2(kh, ks, sk, d, kt, sk16);
    } else
#endif
    {
        for (int64_t j = 0; j < sk; ++j) {
            const float* kr = kh + j * ks;
            for (int64_t t = 0; t < d; ++t) kt[t * sk16 + j] = kr[t];
        }
    }
    // V operand (Sk, Dv16): V itself when its rows are whole vectors
    const float* vb = vh;
    int64_t ldv = vs;
    if (dv % 16) {
        for (int64_t j = 0; j < sk; ++j) std::memcpy(w.vpad.data() + j * dv16, vh + j * vs, sizeof(float) * dv);
        vb = w.vpad.data();
        ldv = dv16;
    }
    float* s = w.s.data();
    float* yt = w.yt.data();
    const float* mbase = a.mask == nullptr ? nullptr : a.mask + b * a.mask_strides[0] + h * a.mask_strides[1];
    const int64_t msi = a.mask_strides[2], msj = a.mask_strides[3];

    // the mask row i, as unit-stride values: in place, or gathered into w.mrow
    auto mask_row = [&](int64_t i) -> const float* {
        if (mbase == nullptr) return nullptr;
        const float* r = mbase + i * msi;
        if (msj == 1) return r;
        for (int64_t j = 0; j < sk; ++j) w.mrow[j] = r[j * msj];
        return w.mrow.data();
    };
    // a mask constant along i (stride 0) is gathered once
    const bool row_invariant = mbase != nullptr && msi == 0 && msj != 1;
    const float* fixed_row = row_invariant ? mask_row(0) : nullptr;

    // disentangled attention: S += c2p, then + p2c (attention.h), before the softmax; one
    // product buffer, each term computed and added in turn
    const auto add_rel_terms = [&]() {
        if (terms.c2p.table) {
            rel_product(terms.c2p, h, d, qh, qs, sq, w, isa);
            add_rel_term(terms.c2p, w.rel_t.data(), s, sq, sk, sk16, isa);
        }
        if (terms.p2c.table) {
            rel_product(terms.p2c, h, d, kh, ks, sk, w, isa);
            add_rel_term(terms.p2c, w.rel_t.data(), s, sq, sk, sk16, isa);
        }
    };

#if QRT_FUSED_X86_SIMD
    if (isa == FusedIsa::avx512) {
        gemm_avx512(sq, sk16, d, qh, qs, kt, sk16, s, sk16);
        add_rel_terms();
        for (int64_t i = 0; i < sq; ++i)
            w.inv[i] = 1.0f / softmax_row_avx512(s + i * sk16, sk, a.scale, row_invariant ? fixed_row : mask_row(i));
        gemm_avx512(sq, dv16, sk, s, sk16, vb, ldv, yt, dv16);
    } else if (isa == FusedIsa::avx2) {
        // 8-column vectors: the 16-padded scratch holds them; only round_up(., 8) columns
        // are computed (V's rows, read in place when Dv % 16 == 0, are then exactly Dv long)
        fused_detail::gemm_avx2(sq, round_up(sk, 8), d, qh, qs, kt, sk16, s, sk16);
        add_rel_terms();
        for (int64_t i = 0; i < sq; ++i)
            w.inv[i] = 1.0f / fused_detail::softmax_row_avx2(s + i * sk16, sk, a.scale,
                                                             row_invariant ? fixed_row : mask_row(i));
        fused_detail::gemm_avx2(sq, round_up(dv, 8), sk, s, sk16, vb, ldv, yt, dv16);
    } else
#endif
    {
        gemm_scalar(sq, sk, d, qh, qs, kt, sk16, s, sk16);
        add_rel_terms();
        for (int64_t i = 0; i < sq; ++i)
            w.inv[i] = 1.0f / softmax_row_scalar(s + i * sk16, sk, a.scale, row_invariant ? fixed_row : mask_row(i));
        gemm_scalar(sq, dv, sk, s, sk16, vb, ldv, yt, dv16);
    }
    const int64_t ys = hds * dv;
    float* yh = a.y + b * sq * ys + h * dv;
    for (int64_t i = 0; i < sq; ++i) {
        const float inv = w.inv[i];
        const float* src = yt + i * dv16;
        float* dst = yh + i * ys;
        if (a.nan_to_zero && std::isnan(inv)) {      // 1 / NaN sum: every probability was NaN
            std::fill(dst, dst + dv, 0.0f);
            continue;
        }
        for (int64_t t = 0; t < dv; ++t) dst[t] = src[t] * inv;
    }
}

}  // namespace

const char* fused_isa_name(FusedIsa isa) {
    switch (isa) {
        case FusedIsa::avx512: return "avx512";
        case FusedIsa::avx2: return "avx2";
        default: return "scalar";
    }
}

bool fused_isa_supported(FusedIsa isa) {
    if (isa == FusedIsa::scalar) return true;
#if QRT_FUSED_X86_SIMD
    static const CpuFeatures f = detect_cpu_features();
    if (isa == FusedIsa::avx2) return f.avx2 && f.fma;
    return f.avx512f;
#else
    return false;
#endif
}

FusedIsa fused_best_isa() {
    if (fused_isa_supported(FusedIsa::avx512)) return FusedIsa::avx512;
    if (fused_isa_supported(FusedIsa::avx2)) return FusedIsa::avx2;
    return FusedIsa::scalar;
}

FusedIsa fused_auto_isa() {
    const FusedIsa best = fused_best_isa();
    if (!int8_isa_forced()) return best;
    // the forced int8 path caps the choice: no wider vectors than it uses
    switch (int8_current_isa()) {
        case Int8Isa::amx:
        case Int8Isa::avx512_vnni: return best;
        case Int8Isa::avx_vnni:
        case Int8Isa::avx2: return best == FusedIsa::scalar ? best : FusedIsa::avx2;
        default: return FusedIsa::scalar;
    }
}

void attention_f32(const AttentionArgs& a, FusedIsa isa, int threads) {
    if (!fused_isa_supported(isa)) isa = FusedIsa::scalar;
    const int64_t items = a.batch * a.heads;
    const int64_t sk16 = round_up(a.sk, 16), dv16 = round_up(a.v_head_dim, 16);
    const int64_t macs = items * a.sq * a.sk * (a.head_dim + a.v_head_dim);
    int nt = static_cast<int>(std::min<int64_t>(std::max(1, threads), items));
    if (macs < kAttentionParallelMinMacs) nt = 1;
    RelTerms terms;
    if (a.pos_key != nullptr || a.pos_query != nullptr) {
        // the two terms' offsets side by side (each S^2 values); an exception is kept for the caller
        std::string failed[2];
        parallel_items(2, std::max(1, threads), [&](int64_t item) {
            try {
                make_rel_term(a, item == 0, item == 0 ? terms.c2p : terms.p2c);
            } catch (const std::exception& e) {
                failed[item] = e.what();
            }
        });
        for (const std::string& f : failed)
            if (!f.empty()) throw std::length_error(f);
    }
    if (nt > 1) {
        // items claimed by whoever is awake (csrc/work_pool.h); each participant's slot gets
        // its own Scratch, made at its first item of this call
        std::vector<std::unique_ptr<Scratch>> scratch(static_cast<size_t>(nt));
        parallel_items(items, nt, [&](int64_t item, int slot) {
            auto& mine = scratch[static_cast<size_t>(slot)];
            if (!mine) mine = std::make_unique<Scratch>(a, sk16, dv16, terms);
            attention_item(a, item, *mine, isa, terms);
        });
        return;
    }
    Scratch w(a, sk16, dv16, terms);
    for (int64_t item = 0; item < items; ++item) attention_item(a, item, w, isa, terms);
}

void exp_f32(const float* x, float* y, int64_t n, FusedIsa isa) {
#if QRT_FUSED_X86_SIMD
    if (isa == FusedIsa::avx512 && fused_isa_supported(isa)) {
        exp_avx512(x, y, n);
        return;
    }
    if (isa == FusedIsa::avx2 && fused_isa_supported(isa)) {
        fused_detail::exp_avx2(x, y, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; ++i) y[i] = exp32_scalar(x[i]);
}

PositionTable::PositionTable(const float* table, int64_t heads_, int64_t positions_, int64_t head_dim_)
    : heads(heads_), positions(positions_), head_dim(head_dim_), ld(round_up(positions_ + 16, 16)) {
    t.assign(static_cast<size_t>(heads * head_dim * ld), 0.0f);
    for (int64_t h = 0; h < heads; ++h)
        for (int64_t r = 0; r < positions; ++r)
            for (int64_t c = 0; c < head_dim; ++c) t[(h * head_dim + c) * ld + r] = table[(h * positions + r) * head_dim + c];
}

}  // namespace qrt
