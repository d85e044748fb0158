// Peak probe: this machine's int8 dot-product and fp32 FMA peak, measured, so that benchmarks
// can report a kernel's throughput as a share of what the cores can do.
//
// Each thread runs a register-only loop of independent instructions (kPeakAccumulators
// accumulators, enough to cover the instruction's latency at the widest issue rate of current
// x86 cores: 4-5 cycles x 2 per cycle), no memory traffic. The rate is ops / wall time of one
// OpenMP parallel region in which every thread runs the same number of iterations; the best of
// a few repeats is kept (on a shared machine, a repeat during which another process held a
// core is slower, never faster).
//
//   int8: vpdpbusd, one u8 x s8 multiply and one add per byte pair, so 4 x 2 ops per int32
//         lane: zmm (AVX-512 VNNI) 128 ops, ymm (AVX-VNNI) 64 ops per instruction; on AVX2
//         alone, vpmaddubsw + vpmaddwd + vpaddd, 64 ops per such triple ("avx2").
//   amx:  TDPBUSD on tiles (int8_gemm_amx.cpp), 16 x 16 x 64 multiply-adds, kAmxOps ops per
//         instruction; the probe of the int8 path "amx" (the int8 peak follows the int8 GEMM's
//         path: QRT_NATIVE_ISA=avx512_vnni measures vpdpbusd on the same machine).
//   fp32: vfmadd231ps, 2 flops per lane: zmm (AVX-512F) 32, ymm (AVX2 + FMA) 16; without FMA,
//         mulps + addps pairs on xmm (SSE2), 8 flops per pair.
#pragma once

#include <cstdint>

namespace qrt {

constexpr int kPeakAccumulators = 16;
constexpr int64_t kAmxOps = 16 * 16 * 64 * 2;   // one TDPBUSD: 16 x 16 int32 outputs, 64 products each

struct PeakResult {
    double ops_per_second = 0.0;      // 0 when the CPU has no instruction for it (isa "none")
    const char* isa = "none";         // which instruction was timed (see above)
    int64_t ops_per_instruction = 0;  // for a zmm vpdpbusd: 128
    int threads = 1;                  // threads that ran (1 without OpenMP)
    double seconds = 0.0;             // wall time of the best repeat
};

// threads >= 1, seconds > 0: the total time to spend, roughly (calibration + 3 repeats).
PeakResult measure_int8_peak(int threads, double seconds);
PeakResult measure_fp32_peak(int threads, double seconds);

}  // namespace qrt
