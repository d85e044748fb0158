// The 256-bit quad tiles' inner loops (sparse_gemm_avx2.cpp, "quad tiles"), shared by the AVX2
// translation unit and the AVX-VNNI one (sparse_gemm_avxvnni.cpp). Each includes this file
// inside its own anonymous namespace, after defining QRT_QUAD_TARGET as its target attribute,
// so the loops are compiled for that unit's ISA with the step inlined (a step compiled for
// AVX-VNNI cannot be inlined into an AVX2 function, nor run on a CPU without it).
//
// Needs: <cstring>, simd.h, sparse_gemm_kernels.h; QRT_QUAD_TARGET.

// How one quad of 8 activation rows meets a weight dword (4 consecutive k of one output row):
//   signed_pairs: xs = qx (s8), xa = |qx| (u8): vpmaddubsw(|qx|, sign(qx) w) + vpmaddwd, exact
//                 because no pair exceeds 2 x 128 x 127 (a weight without -128);
//   narrow:       xs = u = qx + 128 (u8), every |w| <= kNarrowQMax: vpmaddubsw(u, w) + vpmaddwd,
//                 exact (2 x 255 x 63 <= 32767); the sums are of u * w, corrected by (128 + z) rowsum;
//   vnni:         xs = u (u8), any weight: one vpdpbusd (no intermediate saturation), sums of u * w.
enum class QuadStep { signed_pairs, narrow, vnni };

template <QuadStep S>
QRT_QUAD_TARGET inline __m256i quad_step(__m256i acc, __m256i xs, __m256i xa, const int8_t* w, __m256i ones) {
    int32_t word;
    std::memcpy(&word, w, 4);
    const __m256i wb = _mm256_set1_epi32(word);
    if constexpr (S == QuadStep::signed_pairs) {
        return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(wb, xs)), ones));
    } else if constexpr (S == QuadStep::narrow) {
        (void)xa;
        return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xs, wb), ones));
    } else {
#if QRT_INT8_AVX_VNNI
        (void)xa;
        (void)ones;
        return _mm256_dpbusd_avx_epi32(acc, xs, wb);
#else
        static_assert(S != QuadStep::vnni, "this compiler has no AVX-VNNI intrinsics");
        return acc;
#endif
    }
}

// quad_step for quad q of a one-row group (G = 1)
template <QuadStep S>
QRT_QUAD_TARGET inline __m256i quad_step_at(__m256i acc, const int8_t* xt, const uint16_t* qcol, const int8_t* qw,
                                            int64_t q, int h, __m256i ones) {
    const __m256i xs = _mm256_load_si256(reinterpret_cast<const __m256i*>(xt + int64_t(qcol[q]) * 64 + 32 * h));
    const __m256i xa = S == QuadStep::signed_pairs ? _mm256_abs_epi8(xs) : xs;
    return quad_step<S>(acc, xs, xa, qw + q * 4, ones);
}

// raw[r] = sum over the stored quads of output row n0 + r of the step's products, for the 8
// activation rows of half h of the tile (lane = activation row), r < rows (a multiple of G)
template <int G, QuadStep S>
QRT_QUAD_TARGET void quad_half(const SparseInt8Weight& w, const int8_t* xt, int64_t n0, int64_t rows, int h,
                               __m256i* raw) {
    const uint16_t* qcol = w.qcol.data();
    const int8_t* qw = w.qw.get();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r0 = 0; r0 < rows; r0 += G) {
        const int64_t grp = (n0 + r0) / G;
        const int64_t q1 = w.qptr[grp + 1];
        int64_t q = w.qptr[grp];
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        if constexpr (G == 4) {
            // one load of 8 rows' quad feeds the group's 4 output rows
            for (; q < q1; ++q) {
                const __m256i xs = _mm256_load_si256(reinterpret_cast<const __m256i*>(xt + int64_t(qcol[q]) * 64 + 32 * h));
                const __m256i xa = S == QuadStep::signed_pairs ? _mm256_abs_epi8(xs) : xs;
                const int8_t* wq = qw + q * 16;
                a0 = quad_step<S>(a0, xs, xa, wq, ones);
                a1 = quad_step<S>(a1, xs, xa, wq + 4, ones);
                a2 = quad_step<S>(a2, xs, xa, wq + 8, ones);
                a3 = quad_step<S>(a3, xs, xa, wq + 12, ones);
            }
            raw[r0] = a0;
            raw[r0 + 1] = a1;
            raw[r0 + 2] = a2;
            raw[r0 + 3] = a3;
        } else {
            // one row: four accumulators over consecutive quads, summed (wrapping) at the end
            for (; q + 4 <= q1; q += 4) {
                a0 = quad_step_at<S>(a0, xt, qcol, qw, q, h, ones);
                a1 = quad_step_at<S>(a1, xt, qcol, qw, q + 1, h, ones);
                a2 = quad_step_at<S>(a2, xt, qcol, qw, q + 2, h, ones);
                a3 = quad_step_at<S>(a3, xt, qcol, qw, q + 3, h, ones);
            }
            for (; q < q1; ++q) a0 = quad_step_at<S>(a0, xt, qcol, qw, q, h, ones);
            raw[r0] = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
        }
    }
}

// raw[h][r] for r < kSparseBlockRows: output row n0 + r against activation rows 8 h .. 8 h + 7 of
// the tile at xt (rows from nrows on: zero)
template <QuadStep S>
QRT_QUAD_TARGET void quad_raw(const SparseInt8Weight& w, const int8_t* xt, int64_t n0, int64_t nrows,
                              __m256i (*raw)[kSparseBlockRows]) {
    for (int h = 0; h < 2; ++h) {
        for (int64_t r = nrows; r < kSparseBlockRows; ++r) raw[h][r] = _mm256_setzero_si256();
        (w.quad_rows == 4 ? quad_half<4, S> : quad_half<1, S>)(w, xt, n0, nrows, h, raw[h]);
    }
}
