// CPU feature probe for the native backend.
//
// The extension is compiled for baseline x86-64 (no -march=native: one build must run on any
// x86-64 machine), so kernels that use AVX2 / AVX-512 / VNNI / AMX must be chosen at run time.
// This probe is what that choice is made on. A feature counts as present only when the CPU
// has it AND the operating system saves its register state on context switches: a CPU with
// AVX-512 under an OS that does not enable ZMM state faults on the first AVX-512 instruction.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace qrt {

struct CpuFeatures {
    bool sse4_2 = false;
    bool avx = false;
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512dq = false;
    bool avx512_vnni = false;   // VPDPBUSD on 512/256/128-bit (EVEX) registers
    bool avx512_vbmi = false;   // VPERMB / VPERMI2B (byte permutes); used by the sparse int8 kernels,
                                // not part of cpu_feature_list() (whose keys tests pin)
    bool avx_vnni = false;      // VPDPBUSD on 256/128-bit (VEX) registers, no AVX-512 needed
    bool avx512_bf16 = false;
    bool amx_int8 = false;      // see the note on Linux permission in cpu_features.cpp
};

// Detected once per call (cheap: a handful of cpuid instructions). All false off x86.
CpuFeatures detect_cpu_features();

// The features as (name, present) pairs, in a fixed order. The names are the Linux
// /proc/cpuinfo flag names, so Python can compare the two sources key by key.
std::vector<std::pair<std::string, bool>> cpu_feature_list();

// The CPU brand string from cpuid (e.g. "AMD EPYC 7B13 64-Core Processor"); off x86, or on
// an x86 CPU without the brand leaves, the machine name (e.g. "aarch64").
std::string cpu_brand();

}  // namespace qrt
