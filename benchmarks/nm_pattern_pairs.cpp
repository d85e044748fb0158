// A design probe for 2:4 weights on AVX2 (issue 15; not part of qrt): the native pairs step as
// it is (csrc/sparse_gemm_avx2.cpp: two columns of the transposed activation tile loaded and
// interleaved by vpunpck{l,h}wd for every stored pair) against "pattern pairs": a 2:4 row keeps
// 2 of every 4 columns, one of 6 patterns per group, so the tile's 6 interleavings of each group
// can be built once per 16-row tile and a pair becomes 2 loads, 2 vpmaddwd, 2 vpaddd, with no
// shuffle. One thread, one tile, N output rows of random 2:4 int8 weights; both give the same
// sums (checked). Build and run:
//
//     g++ -O2 -Wall -mavx2 -mfma -o /tmp/nm_pattern_pairs benchmarks/nm_pattern_pairs.cpp
//     /tmp/nm_pattern_pairs K N REPS        # e.g. 384 1536 300
//
// Results: benchmarks/RESULTS.md, "2:4 pattern pairs: a probe" (the probe's 1.3-1.55x did not
// carry over into the native kernel: 0-7% there, the 3x larger tile missing L1).
#include <immintrin.h>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <chrono>
#include <vector>
#include <random>
static const int PAT[4][4] = {{-1,0,1,2},{0,-1,3,4},{1,3,-1,5},{2,4,5,-1}};  // pattern of (a,b), a<b
int main(int argc, char** argv) {
    if (argc != 4 || atoi(argv[1]) <= 0 || atoi(argv[1]) % 8 != 0 || atoi(argv[2]) <= 0 || atoi(argv[3]) <= 0) {
        fprintf(stderr, "usage: %s K N REPS   (K a positive multiple of 8: whole pairs of 4-column groups)\n", argv[0]);
        return 2;
    }
    const int K = atoi(argv[1]), N = atoi(argv[2]), reps = atoi(argv[3]);
    const int G = K / 4;
    std::mt19937 rng(1);
    int16_t* xt = (int16_t*)aligned_alloc(64, (size_t)K * 16 * 2);
    for (int i = 0; i < K * 16; ++i) xt[i] = (int16_t)((int)(rng() % 255) - 127);
    // weights: per row, per group: columns (a, b), weights packed as int32 (w1 | w2 << 16)
    std::vector<uint16_t> col(2 * (size_t)N * G), pat((size_t)N * G);
    std::vector<int32_t> pw((size_t)N * G);
    for (int r = 0; r < N; ++r) for (int g = 0; g < G; ++g) {
        int a = rng() % 4, b; do b = rng() % 4; while (b == a); if (a > b) std::swap(a, b);
        size_t q = (size_t)r * G + g;
        col[2*q] = 4 * (4*g + a); col[2*q+1] = 4 * (4*g + b);   // x4 form (x8 scaled loads)
        pat[q] = (uint16_t)(g * 6 + PAT[a][b]) * 2;                // in 64-byte units: x32 scale -> *2
        int w1 = (int)(rng() % 255) - 127, w2 = (int)(rng() % 255) - 127;
        pw[q] = (int32_t)((uint32_t)(uint16_t)(int16_t)w1 | ((uint32_t)(uint16_t)(int16_t)w2 << 16));
    }
    // pattern tile: per group, per pattern: lo half (32 B) and hi half (32 B)
    __m256i* xp = (__m256i*)aligned_alloc(64, (size_t)G * 6 * 64);
    auto build = [&]() {
        const char* xb = (const char*)xt;
        for (int g = 0; g < G; ++g) {
            __m256i c[4];
            for (int j = 0; j < 4; ++j) c[j] = _mm256_load_si256((const __m256i*)(xb + (4*g + j) * 32));
            int p = 0;
            for (int a = 0; a < 4; ++a) for (int b = a + 1; b < 4; ++b, ++p) {
                xp[(g * 6 + p) * 2] = _mm256_unpacklo_epi16(c[a], c[b]);
                xp[(g * 6 + p) * 2 + 1] = _mm256_unpackhi_epi16(c[a], c[b]);
            }
        }
    };
    build();
    __m256i* out = (__m256i*)aligned_alloc(64, (size_t)2 * N * 32);
    auto run_u = [&]() {
        const char* xb = (const char*)xt;
        for (int r = 0; r < N; ++r) {
            const uint16_t* cl = col.data() + 2 * (size_t)r * G; const int32_t* w = pw.data() + (size_t)r * G;
            __m256i lo = _mm256_setzero_si256(), hi = lo, lo2 = lo, hi2 = lo;
            for (int j = 0; j < G; j += 2) {
                for (int u = 0; u < 2; ++u) {
                    __m256i a = _mm256_load_si256((const __m256i*)(xb + cl[2*(j+u)] * 8));
                    __m256i b = _mm256_load_si256((const __m256i*)(xb + cl[2*(j+u)+1] * 8));
                    __m256i wv = _mm256_set1_epi32(w[j+u]);
                    __m256i l = _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), wv), h = _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), wv);
                    if (u == 0) { lo = _mm256_add_epi32(lo, l); hi = _mm256_add_epi32(hi, h); }
                    else { lo2 = _mm256_add_epi32(lo2, l); hi2 = _mm256_add_epi32(hi2, h); }
                }
            }
            out[2*r] = _mm256_add_epi32(lo, lo2); out[2*r+1] = _mm256_add_epi32(hi, hi2);
        }
    };
    auto run_p = [&]() {
        const char* xb = (const char*)xp;
        for (int r = 0; r < N; ++r) {
            const uint16_t* pt = pat.data() + (size_t)r * G; const int32_t* w = pw.data() + (size_t)r * G;
            __m256i lo = _mm256_setzero_si256(), hi = lo, lo2 = lo, hi2 = lo;
            for (int j = 0; j < G; j += 2) {
                for (int u = 0; u < 2; ++u) {
                    const char* v = xb + (size_t)pt[j+u] * 32;
                    __m256i wv = _mm256_set1_epi32(w[j+u]);
                    __m256i l = _mm256_madd_epi16(_mm256_load_si256((const __m256i*)v), wv);
                    __m256i h = _mm256_madd_epi16(_mm256_load_si256((const __m256i*)(v + 32)), wv);
                    if (u == 0) { lo = _mm256_add_epi32(lo, l); hi = _mm256_add_epi32(hi, h); }
                    else { lo2 = _mm256_add_epi32(lo2, l); hi2 = _mm256_add_epi32(hi2, h); }
                }
            }
            out[2*r] = _mm256_add_epi32(lo, lo2); out[2*r+1] = _mm256_add_epi32(hi, hi2);
        }
    };
    auto t = [&](auto f) { f(); auto t0 = std::chrono::steady_clock::now(); for (int i = 0; i < reps; ++i) f();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps; };
    double tu = t(run_u); int32_t cu = 0; for (int i = 0; i < 2 * N; ++i) cu += _mm256_extract_epi32(out[i], 3);
    double tp = t(run_p); int32_t cp = 0; for (int i = 0; i < 2 * N; ++i) cp += _mm256_extract_epi32(out[i], 3);
    double tb = t(build);
    double pairs = (double)N * G;
    printf("K=%d N=%d: unpack %.2f ns/pair, pattern %.2f ns/pair (+ build %.1f us a tile = %.2f ns/pair), same sums %d, tile %d KB\n",
           K, N, tu / pairs * 1e9, tp / pairs * 1e9, tb * 1e6, tb / pairs * 1e9, cu == cp, G * 6 * 64 / 1024);
}
