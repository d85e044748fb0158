// The 256-bit ELL kernel's loops (sparse_gemm_avx2.cpp, "ELL"), shared by the AVX2 translation
// unit and the AVX-VNNI one (sparse_gemm_avxvnni.cpp). Each includes this file inside its own
// anonymous namespace, after defining QRT_ELL_TARGET as its target attribute, so the loops are
// compiled for that unit's ISA with the step inlined (as sparse_quad_half.h).
//
// Needs: <algorithm>, <cstring>, simd.h, sparse_gemm_kernels.h, int8_detail::epilogue8_avx2;
// QRT_ELL_TARGET.

// One half-vector's index, decoded for the lookups: the permute / shuffle index and the select
// masks (the sign bit of each element: a float32 lane for vblendvps, a byte for vpblendvb).
struct HalfIndex {
    __m256i sel;
    __m256i m0, m1, m2;   // dword lanes: m0 (bit 3), m1 (bit 4); byte lanes: bits 4, 5, 6
};

// dword lanes: 8 index bytes (the quad 0..31 of each row), widened to one dword per lane.
// Byte lanes: 32 index bytes (the offset 0..127, or 0..63, of each weight). vpsllw shifts 16-bit words,
// but bit 7 of each byte only receives bits of the same byte, which is all vpblendvb reads.
template <bool kByte>
QRT_ELL_TARGET inline HalfIndex decode(const uint8_t* idx) {
    HalfIndex d;
    if constexpr (kByte) {
        d.sel = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
        d.m0 = _mm256_slli_epi16(d.sel, 3);
        d.m1 = _mm256_slli_epi16(d.sel, 2);
        d.m2 = _mm256_slli_epi16(d.sel, 1);
    } else {
        d.sel = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx)));
        d.m0 = _mm256_slli_epi32(d.sel, 28);
        d.m1 = _mm256_slli_epi32(d.sel, 27);
        d.m2 = d.m1;
    }
    return d;
}

QRT_ELL_TARGET inline __m256i blend_dword(__m256i a, __m256i b, __m256i mask) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b),
                                                _mm256_castsi256_ps(mask)));
}

// vpshufb of the 16 bytes t[16 j ..] (the same table in both 128-bit halves) by the offsets'
// low 4 bits; their bit 7 is clear (offsets < 128), so no byte is zeroed.
QRT_ELL_TARGET inline __m256i shuffle16(const uint8_t* t, int j, __m256i sel) {
    const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16 * j));   // windows: any byte
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), sel);
}

// The activations of the half-vector's lanes from the segment t (128 bytes of u, or 64 for
// kSeg64; 32-aligned).
template <bool kByte, bool kSeg64>
QRT_ELL_TARGET inline __m256i fetch(const uint8_t* t, const HalfIndex& d) {
    if constexpr (kByte) {
        const __m256i a0 = _mm256_blendv_epi8(shuffle16(t, 0, d.sel), shuffle16(t, 1, d.sel), d.m0);
        const __m256i a1 = _mm256_blendv_epi8(shuffle16(t, 2, d.sel), shuffle16(t, 3, d.sel), d.m0);
        if constexpr (kSeg64) return _mm256_blendv_epi8(a0, a1, d.m1);   // offsets < 64: bits 4 and 5
        const __m256i a2 = _mm256_blendv_epi8(shuffle16(t, 4, d.sel), shuffle16(t, 5, d.sel), d.m0);
        const __m256i a3 = _mm256_blendv_epi8(shuffle16(t, 6, d.sel), shuffle16(t, 7, d.sel), d.m0);
        return _mm256_blendv_epi8(_mm256_blendv_epi8(a0, a1, d.m1), _mm256_blendv_epi8(a2, a3, d.m1), d.m2);
    } else {
        const __m256i* q = reinterpret_cast<const __m256i*>(t);
        const __m256i p0 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q), d.sel);
        const __m256i p1 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q + 1), d.sel);
        const __m256i p2 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q + 2), d.sel);
        const __m256i p3 = _mm256_permutevar8x32_epi32(_mm256_load_si256(q + 3), d.sel);
        return blend_dword(blend_dword(p0, p1, d.m0), blend_dword(p2, p3, d.m0), d.m1);
    }
}

// How a half-vector's weights (8 output rows x 4 bytes) meet the activations u = qx + 128
// fetched for them, exactly:
//   split:        any weight. vpmaddubsw (u8 x s8 pairs summed into int16) would saturate,
//                 2 * 255 * 128 > 32767. So each weight is split as w = 2 wh + wl, wh = w >> 1 in
//                 [-64, 63], wl = w & 1 in {0, 1}: a pair of u * wh is at most 2 * 255 * 64 =
//                 32640 in magnitude and a pair of u * wl at most 510, both exact in int16;
//                 vpmaddwd with 2 (resp. 1) sums each lane's two pairs into int32: sums of u * w.
//                 The split is done once per half-vector and shared by the activation rows; per
//                 row 2 vpmaddubsw + 2 vpmaddwd + 2 vpaddd.
//   signed_pairs: no weight is -128 (ell_no_min): vpmaddubsw(|qx|, sign(qx) w) + vpmaddwd, as the
//                 dense AVX2 tile: a pair is at most 2 x 128 x 127 < 32767. Sums of qx * w; per
//                 row vpxor (qx = u ^ 0x80), vpabsb, vpsignb, vpmaddubsw, vpmaddwd, vpaddd, and
//                 nothing per half: 6 operations against split's 6 + 5 at M = 1.
//   vnni:         any weight, the avx_vnni path (sparse_gemm_avxvnni.cpp): one vpdpbusd of u and
//                 w, no intermediate saturation. Sums of u * w.
// (EllStep is declared in sparse_gemm_kernels.h: the driver picks the step once, and with it
// the correction the sums need.)

struct HalfWeights {
    __m256i a, b;   // split: wh, wl; otherwise: w, unused
};

template <EllStep S>
QRT_ELL_TARGET inline HalfWeights half_weights(const int8_t* val) {
    const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(val));
    if constexpr (S == EllStep::split) {
        // wh = w >> 1 (arithmetic; AVX2 has no byte shift, so as the logical shift of w ^ 0x80,
        // rebiased by 64) and wl = w & 1
        const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
        const __m256i shifted = _mm256_and_si256(_mm256_srli_epi16(_mm256_xor_si256(w, bias), 1), _mm256_set1_epi8(0x7F));
        return {_mm256_sub_epi8(shifted, _mm256_set1_epi8(0x40)), _mm256_and_si256(w, _mm256_set1_epi8(1))};
    } else {
        return {w, w};
    }
}

// acc + the step's sums over each lane's 4 bytes of u (the fetched activations) and the weights
template <EllStep S>
QRT_ELL_TARGET inline __m256i ell_step(__m256i acc, __m256i u, const HalfWeights& hw) {
    if constexpr (S == EllStep::split) {
        const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(u, hw.a), _mm256_set1_epi16(2));
        const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(u, hw.b), _mm256_set1_epi16(1));
        return _mm256_add_epi32(acc, _mm256_add_epi32(hi, lo));
    } else if constexpr (S == EllStep::signed_pairs) {
        const __m256i qx = _mm256_xor_si256(u, _mm256_set1_epi8(static_cast<char>(0x80)));
        const __m256i prod = _mm256_maddubs_epi16(_mm256_abs_epi8(qx), _mm256_sign_epi8(hw.a, qx));
        return _mm256_add_epi32(acc, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)));
    } else {
#if QRT_INT8_AVX_VNNI
        return _mm256_dpbusd_avx_epi32(acc, u, hw.a);
#else
        static_assert(S != EllStep::vnni, "this compiler has no AVX-VNNI intrinsics");
        return acc;
#endif
    }
}

// 8 outputs (output rows n0 .. n0 + 7, lane = row) of activation row mrow from their raw int32
// sums: the wrapping correction corr (p.corr for sums of u * w, p.corr_signed for sums of
// qx * w), then the shared epilogue; rows from N on are not stored. corr / sw / bias are
// padded to whole 16-row blocks, so the 8-lane loads stay inside.
QRT_ELL_TARGET inline void store_rows8(__m256i raw, const Problem& p, int64_t n0, int64_t mrow, const int32_t* corr) {
    const int64_t n = p.w->n;
    const __m256i acc = _mm256_sub_epi32(raw, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + n0)));
    const __m256 v = int8_detail::epilogue8_avx2(acc, _mm256_loadu_pd(p.ep.sw + n0), _mm256_loadu_pd(p.ep.sw + n0 + 4),
                                                 p.ep.sx[mrow], p.ep.bias == nullptr ? nullptr : p.ep.bias + n0);
    float* out = p.y + mrow * n + n0;
    const int64_t valid = std::min<int64_t>(8, n - n0);
    if (valid == 8) {
        _mm256_storeu_ps(out, v);
    } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        std::memcpy(out, tmp, static_cast<size_t>(valid) * sizeof(float));
    }
}

QRT_ELL_TARGET inline bool half_is_zero(const int8_t* val) {
    const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(val));
    return _mm256_testz_si256(w, w) != 0;
}

// Half h (rows 16 b + 8 h ..) of block b, activation rows m0 .. m0 + ROWS - 1. Named
// accumulators, not an array: GCC 12 copies an array of vectors through the stack on every
// step (int8_gemm_avx512.cpp).
template <EllStep S, bool kByte, bool kSeg64, bool kWin, int ROWS>
QRT_ELL_TARGET void ell_half(const Problem& p, int64_t b, int h, int64_t m0) {
    static_assert(ROWS >= 1 && ROWS <= 4, "one accumulator per activation row");
    const SparseInt8Weight& w = *p.w;
    constexpr int64_t kIdx = kByte ? 64 : 16;       // index bytes per vector
    const uint8_t* idx = w.ell_idx.get() + h * (kIdx / 2);
    const int8_t* val = w.ell_val.get() + h * 32;
    const int64_t* sp = w.sptr.data() + b * w.nseg;
    const int64_t ldu = p.ldu;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t s = 0; s < w.nseg; ++s) {
        const uint8_t* seg = p.u + m0 * ldu + s * w.seg;
        // a segment's vectors are as many as the fullest of 16 rows needs, and every row fills
        // a prefix of them: the ones past this half's fullest row are all 0 here, skipped
        // (windows: one run of vectors per block, in window order, none skipped)
        int64_t v1 = sp[s + 1];
        while (!kWin && v1 > sp[s] && half_is_zero(val + (v1 - 1) * 64)) --v1;
        for (int64_t v = sp[s]; v < v1; ++v) {
            const uint8_t* t = kWin ? p.u + m0 * ldu + w.woff[v] : seg;
            const HalfIndex d = decode<kByte>(idx + v * kIdx);
            const HalfWeights hw = half_weights<S>(val + v * 64);
            a0 = ell_step<S>(a0, fetch<kByte, kSeg64>(t, d), hw);
            if constexpr (ROWS > 1) a1 = ell_step<S>(a1, fetch<kByte, kSeg64>(t + ldu, d), hw);
            if constexpr (ROWS > 2) a2 = ell_step<S>(a2, fetch<kByte, kSeg64>(t + 2 * ldu, d), hw);
            if constexpr (ROWS > 3) a3 = ell_step<S>(a3, fetch<kByte, kSeg64>(t + 3 * ldu, d), hw);
        }
    }
    const int64_t n0 = b * kSparseBlockRows + 8 * h;
    const int32_t* corr = S == EllStep::signed_pairs ? p.corr_signed : p.corr;   // sums of qx * w, or of u * w
    store_rows8(a0, p, n0, m0, corr);
    if constexpr (ROWS > 1) store_rows8(a1, p, n0, m0 + 1, corr);
    if constexpr (ROWS > 2) store_rows8(a2, p, n0, m0 + 2, corr);
    if constexpr (ROWS > 3) store_rows8(a3, p, n0, m0 + 3, corr);
}

template <EllStep S, bool kByte, bool kSeg64, bool kWin>
QRT_ELL_TARGET void ell_blocks_of(const Problem& p, int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
        for (int h = 0; h < 2; ++h) {
            if (b * kSparseBlockRows + 8 * h >= p.w->n) break;   // a half of padding rows only
            int64_t m0 = 0;
            for (; m0 + 4 <= p.m; m0 += 4) ell_half<S, kByte, kSeg64, kWin, 4>(p, b, h, m0);
            switch (p.m - m0) {
                case 3: ell_half<S, kByte, kSeg64, kWin, 3>(p, b, h, m0); break;
                case 2: ell_half<S, kByte, kSeg64, kWin, 2>(p, b, h, m0); break;
                case 1: ell_half<S, kByte, kSeg64, kWin, 1>(p, b, h, m0); break;
                default: break;
            }
        }
    }
}

// ELL blocks [b0, b1), every activation row, with step S, on whichever ELL form was built
template <EllStep S>
QRT_ELL_TARGET void ell_blocks_step(const Problem& p, int64_t b0, int64_t b1) {
    if (p.w->windows)
        ell_blocks_of<S, true, true, true>(p, b0, b1);
    else if (p.w->lanes == EllLanes::byte && p.w->seg == kSparseSegmentNarrow)
        ell_blocks_of<S, true, true, false>(p, b0, b1);
    else if (p.w->lanes == EllLanes::byte)
        ell_blocks_of<S, true, false, false>(p, b0, b1);
    else
        ell_blocks_of<S, false, false, false>(p, b0, b1);
}
