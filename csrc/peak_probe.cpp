// Peak probe (peak_probe.h): register-only loops of independent vpdpbusd / vfmadd231ps, timed
// on every thread at once. Each ISA's loop is compiled for that ISA alone (target attributes)
// and run only when cpuid says the CPU has it.
#include "peak_probe.h"

#include <algorithm>
#include <chrono>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu_features.h"
#include "int8_gemm.h"
#include "int8_gemm_kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QRT_PEAK_X86 1
#include "simd.h"
// AVX-VNNI (VEX vpdpbusd, _mm256_dpbusd_avx_epi32) needs GCC >= 11 or clang >= 12
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define QRT_PEAK_AVX_VNNI 1
#else
#define QRT_PEAK_AVX_VNNI 0
#endif
#else
#define QRT_PEAK_X86 0
#define QRT_PEAK_AVX_VNNI 0
#endif

namespace qrt {
namespace {

// The loops' operands come from these: the compiler cannot see their values, so it cannot
// fold the loop into arithmetic on the iteration count. 0.5 * c + 0.5 converges to 1 (no
// overflow, no subnormals, which would slow the FMA loop down).
volatile int32_t g_int8_operand = 0x01020304;
volatile float g_fp32_operand = 0.5f;

// One loop: runs `iters` iterations; returns a value that depends on every accumulator (so
// none of them is dead code).
using SpinFn = double (*)(int64_t iters);

struct Loop {
    SpinFn spin;
    int64_t ops_per_iteration;
    int64_t ops_per_instruction;
    const char* isa;
};

// Accumulators are named variables, not an array: GCC 12 copies an array of vector
// accumulators through other registers on every step (int8_gemm_avx512.cpp). 16 of them fit
// the 32 zmm registers next to the two operands; 12 fit the 16 ymm/xmm ones.
#define QRT_REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define QRT_REP16(X) QRT_REP12(X) X(12) X(13) X(14) X(15)

#if QRT_PEAK_X86

// GCC 12's avx512fintrin.h starts the reductions from a deliberately undefined register, which
// -Wuninitialized reports; nothing here reads it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The loop body is inline assembly: from the same code with _mm512_dpbusd_epi32, GCC 12 makes
// a loop that copies every accumulator to another register and two of them to the stack on
// each iteration (it does not do so in the GEMM's K loop, nor for the FMA loops below).
__attribute__((target("avx512f,avx512vnni"))) double spin_vnni_zmm(int64_t iters) {
    const __m512i a = _mm512_set1_epi32(g_int8_operand), b = _mm512_set1_epi32(g_int8_operand);
#define QRT_DECL(i) __m512i c##i = _mm512_set1_epi32(i);
#define QRT_ASM(i) "vpdpbusd %[b], %[a], %[c" #i "]\n\t"
#define QRT_SUM(i) s = _mm512_add_epi32(s, c##i);
    QRT_REP16(QRT_DECL)
    for (int64_t it = 0; it < iters; ++it) {
        // c_i += a . b for 16 independent accumulators (AT&T operand order: sources, then c_i),
        // in two statements: an asm takes at most 30 operands, and "+v" counts twice
        asm(QRT_ASM(0) QRT_ASM(1) QRT_ASM(2) QRT_ASM(3) QRT_ASM(4) QRT_ASM(5) QRT_ASM(6) QRT_ASM(7)
            : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5),
              [c6] "+v"(c6), [c7] "+v"(c7)
            : [a] "v"(a), [b] "v"(b));
        asm(QRT_ASM(8) QRT_ASM(9) QRT_ASM(10) QRT_ASM(11) QRT_ASM(12) QRT_ASM(13) QRT_ASM(14) QRT_ASM(15)
            : [c8] "+v"(c8), [c9] "+v"(c9), [c10] "+v"(c10), [c11] "+v"(c11), [c12] "+v"(c12),
              [c13] "+v"(c13), [c14] "+v"(c14), [c15] "+v"(c15)
            : [a] "v"(a), [b] "v"(b));
    }
    __m512i s = _mm512_setzero_si512();
    QRT_REP16(QRT_SUM)
#undef QRT_DECL
#undef QRT_ASM
#undef QRT_SUM
    // not _mm512_reduce_add_epi32: GCC's version adds the (wrapped) lanes as signed ints in
    // C, an undefined overflow (UBSan found it, tools/sanitize.sh)
    alignas(64) int32_t lanes[16];
    _mm512_store_si512(lanes, s);
    double total = 0;
    for (int32_t v : lanes) total += v;
    return total;
}

#if QRT_PEAK_AVX_VNNI
__attribute__((target("avx2,avxvnni"))) double spin_vnni_ymm(int64_t iters) {
    const __m256i a = _mm256_set1_epi32(g_int8_operand), b = _mm256_set1_epi32(g_int8_operand);
#define QRT_DECL(i) __m256i c##i = _mm256_set1_epi32(i);
#define QRT_STEP(i) c##i = _mm256_dpbusd_avx_epi32(c##i, a, b);
#define QRT_SUM(i) s = _mm256_add_epi32(s, c##i);
    QRT_REP12(QRT_DECL)
    for (int64_t it = 0; it < iters; ++it) {
        QRT_REP12(QRT_STEP)
    }
    __m256i s = _mm256_setzero_si256();
    QRT_REP12(QRT_SUM)
#undef QRT_DECL
#undef QRT_STEP
#undef QRT_SUM
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
    double total = 0;
    for (int32_t v : lanes) total += v;
    return total;
}
#endif

// AVX2 has no vpdpbusd: its int8 rate is vpmaddubsw (32 u8 x s8 products into 16 int16 pairs)
// + vpmaddwd against ones (the pairs into 8 int32) + vpaddd, 64 ops per 3 instructions. Four
// chains with their own weight operand, all reading one byte operand that an empty asm
// statement marks as changed every iteration (so the products are not hoisted out of the
// loop); only the vpaddd carries a dependency from one iteration to the next, so four chains
// keep the multipliers busy, and the loop fits in 11 registers. (An earlier version gave each
// chain its own asm-marked operand: 15 live registers, and GCC kept one accumulator in memory,
// a store-to-load round trip per iteration that halved the measured rate, 97 GOP/s per Zen 3
// core against the 150 the GEMM reached.) The exact GEMM tiles add a vpsignb per 32 products
// (csrc/int8_gemm_avx2.cpp): this is the rate of the instructions themselves.
__attribute__((target("avx2"))) double spin_maddubs_ymm(int64_t iters) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a = _mm256_set1_epi32(g_int8_operand);
#define QRT_REP4(X) X(0) X(1) X(2) X(3)
#define QRT_DECL(i) __m256i c##i = _mm256_set1_epi32(i); const __m256i b##i = _mm256_set1_epi32(g_int8_operand + i);
#define QRT_STEP(i) c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b##i), ones));
#define QRT_SUM(i) s = _mm256_add_epi32(s, c##i);
    QRT_REP4(QRT_DECL)
    for (int64_t it = 0; it < iters; ++it) {
        QRT_REP4(QRT_STEP)
        __asm__ volatile("" : "+x"(a));
    }
    __m256i s = _mm256_setzero_si256();
    QRT_REP4(QRT_SUM)
#undef QRT_DECL
#undef QRT_STEP
#undef QRT_SUM
#undef QRT_REP4
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
    double total = 0;
    for (int32_t v : lanes) total += v;
    return total;
}

__attribute__((target("avx512f"))) double spin_fma_zmm(int64_t iters) {
    const __m512 a = _mm512_set1_ps(g_fp32_operand), b = _mm512_set1_ps(g_fp32_operand);
#define QRT_DECL(i) __m512 c##i = _mm512_set1_ps(static_cast<float>(i));
#define QRT_STEP(i) c##i = _mm512_fmadd_ps(c##i, a, b);
#define QRT_SUM(i) s = _mm512_add_ps(s, c##i);
    QRT_REP16(QRT_DECL)
    for (int64_t it = 0; it < iters; ++it) {
        QRT_REP16(QRT_STEP)
    }
    __m512 s = _mm512_setzero_ps();
    QRT_REP16(QRT_SUM)
#undef QRT_DECL
#undef QRT_STEP
#undef QRT_SUM
    return static_cast<double>(_mm512_reduce_add_ps(s));
}

__attribute__((target("avx2,fma"))) double spin_fma_ymm(int64_t iters) {
    const __m256 a = _mm256_set1_ps(g_fp32_operand), b = _mm256_set1_ps(g_fp32_operand);
#define QRT_DECL(i) __m256 c##i = _mm256_set1_ps(static_cast<float>(i));
#define QRT_STEP(i) c##i = _mm256_fmadd_ps(c##i, a, b);
#define QRT_SUM(i) s = _mm256_add_ps(s, c##i);
    QRT_REP12(QRT_DECL)
    for (int64_t it = 0; it < iters; ++it) {
        QRT_REP12(QRT_STEP)
    }
    __m256 s = _mm256_setzero_ps();
    QRT_REP12(QRT_SUM)
#undef QRT_DECL
#undef QRT_STEP
#undef QRT_SUM
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s);
    double total = 0;
    for (float v : lanes) total += v;
    return total;
}

// baseline x86-64: no FMA, so a mulps + addps pair per accumulator and step
double spin_mul_add_xmm(int64_t iters) {
    const __m128 a = _mm_set1_ps(g_fp32_operand), b = _mm_set1_ps(g_fp32_operand);
#define QRT_DECL(i) __m128 c##i = _mm_set1_ps(static_cast<float>(i));
#define QRT_STEP(i) c##i = _mm_add_ps(_mm_mul_ps(c##i, a), b);
#define QRT_SUM(i) s = _mm_add_ps(s, c##i);
    QRT_REP12(QRT_DECL)
    for (int64_t it = 0; it < iters; ++it) {
        QRT_REP12(QRT_STEP)
    }
    __m128 s = _mm_setzero_ps();
    QRT_REP12(QRT_SUM)
#undef QRT_DECL
#undef QRT_STEP
#undef QRT_SUM
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, s);
    return static_cast<double>(lanes[0]) + lanes[1] + lanes[2] + lanes[3];
}

#endif  // QRT_PEAK_X86

#undef QRT_REP12
#undef QRT_REP16

volatile double g_sink = 0;   // where the loops' results go, so that they are computed

int usable_threads(int threads) {
#if defined(_OPENMP)
    return std::max(1, threads);
#else
    (void)threads;
    return 1;
#endif
}

// Wall seconds of one parallel region in which each of `threads` threads runs spin(iters).
double time_region(SpinFn spin, int64_t iters, int threads) {
    std::vector<double> results(static_cast<size_t>(threads), 0.0);
    const auto t0 = std::chrono::steady_clock::now();
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num();
        if (t < threads) results[static_cast<size_t>(t)] = spin(iters);
    }
#else
    results[0] = spin(iters);
#endif
    const auto t1 = std::chrono::steady_clock::now();
    double total = 0;
    for (double r : results) total += r;
    g_sink = g_sink + total;
    return std::chrono::duration<double>(t1 - t0).count();
}

PeakResult measure(const Loop& loop, int threads, double seconds) {
    PeakResult res;
    res.isa = loop.isa;
    res.ops_per_instruction = loop.ops_per_instruction;
    res.threads = usable_threads(threads);
    if (loop.spin == nullptr) return res;
    // Calibrate on all threads (so an oversubscribed machine is accounted for): double the
    // iterations until a region takes a tenth of the budget (at most 2 ms), then three
    // repeats share the rest. The first regions also start the OpenMP workers.
    const double target = std::min(0.002, seconds / 10);
    int64_t iters = 256;
    double t = time_region(loop.spin, iters, res.threads);
    while (t < target && iters < (int64_t(1) << 40)) {
        iters *= 2;
        t = time_region(loop.spin, iters, res.threads);
    }
    constexpr int kRepeats = 3;
    const double per_repeat = std::max(0.0, seconds - 2 * t) / kRepeats;
    iters = std::max<int64_t>(iters, static_cast<int64_t>(static_cast<double>(iters) * per_repeat / std::max(t, 1e-9)));
    for (int r = 0; r < kRepeats; ++r) {
        t = time_region(loop.spin, iters, res.threads);
        const double rate = static_cast<double>(res.threads) * static_cast<double>(iters) *
                            static_cast<double>(loop.ops_per_iteration) / std::max(t, 1e-9);
        if (rate > res.ops_per_second) {
            res.ops_per_second = rate;
            res.seconds = t;
        }
    }
    return res;
}

}  // namespace

PeakResult measure_int8_peak(int threads, double seconds) {
    Loop loop{nullptr, 0, 0, "none"};
#if QRT_PEAK_X86
    const CpuFeatures f = detect_cpu_features();
    // the instruction of the int8 GEMM's path (forced or the best), so that a kernel's share of
    // the peak is of what its own instruction can do; the scalar path has none, and takes the
    // best vector loop of the CPU short of AMX
    const Int8Isa path = int8_current_isa();
    const bool any = path == Int8Isa::scalar;
    if (path == Int8Isa::amx) {
        loop = {int8_detail::amx_peak_spin, 4 * kAmxOps, kAmxOps, "amx"};
    } else if (f.avx512f && f.avx512_vnni && (any || path == Int8Isa::avx512_vnni)) {
        loop = {spin_vnni_zmm, 16 * 128, 128, "avx512_vnni"};
#if QRT_PEAK_AVX_VNNI
    } else if (f.avx2 && f.avx_vnni && (any || path == Int8Isa::avx_vnni)) {
        loop = {spin_vnni_ymm, 12 * 64, 64, "avx_vnni"};
#endif
    } else if (f.avx2) {
        loop = {spin_maddubs_ymm, 4 * 64, 64, "avx2"};
    }
#endif
    return measure(loop, threads, seconds);
}

PeakResult measure_fp32_peak(int threads, double seconds) {
    Loop loop{nullptr, 0, 0, "none"};
#if QRT_PEAK_X86
    const CpuFeatures f = detect_cpu_features();
    if (f.avx512f) {
        loop = {spin_fma_zmm, 16 * 32, 32, "avx512f"};
    } else if (f.avx2 && f.fma) {
        loop = {spin_fma_ymm, 12 * 16, 16, "avx2_fma"};
    } else {
        loop = {spin_mul_add_xmm, 12 * 8, 4, "sse2"};
    }
#endif
    return measure(loop, threads, seconds);
}

}  // namespace qrt
