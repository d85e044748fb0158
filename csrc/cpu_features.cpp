// CPU feature probe: cpuid for what the CPU implements, xgetbv for what the OS enabled.
// See cpu_features.h for why both are needed.
#include "cpu_features.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define QRT_X86 1
#else
#define QRT_X86 0
#endif

#if QRT_X86 && defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#elif QRT_X86
#include <cpuid.h>
#endif

#if !QRT_X86 && (defined(__unix__) || defined(__APPLE__))
#include <sys/utsname.h>
#endif

namespace qrt {
namespace {

#if QRT_X86

struct CpuidRegs {
    uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// cpuid(leaf, subleaf); all zero when the leaf is beyond the CPU's maximum, so an absent leaf
// reads as "no features" instead of returning garbage from the highest supported leaf.
CpuidRegs cpuid(uint32_t leaf, uint32_t subleaf) {
    CpuidRegs r;
#if defined(_MSC_VER) && !defined(__clang__)
    int max_regs[4];
    __cpuid(max_regs, static_cast<int>(leaf & 0x80000000u));
    if (static_cast<uint32_t>(max_regs[0]) < leaf) return r;
    int regs[4];
    __cpuidex(regs, static_cast<int>(leaf), static_cast<int>(subleaf));
    r.eax = regs[0]; r.ebx = regs[1]; r.ecx = regs[2]; r.edx = regs[3];
#else
    unsigned a = 0, b = 0, c = 0, d = 0;
    // __get_cpuid_count checks the maximum leaf itself and returns 0 when it is out of range.
    if (__get_cpuid_count(leaf, subleaf, &a, &b, &c, &d)) {
        r.eax = a; r.ebx = b; r.ecx = c; r.edx = d;
    }
#endif
    return r;
}

// XCR0: which register states the OS saves and restores. Only valid to execute when
// CPUID.1:ECX.OSXSAVE is set, otherwise xgetbv raises #UD.
uint64_t read_xcr0() {
#if defined(_MSC_VER) && !defined(__clang__)
    return _xgetbv(0);
#else
    // Inline asm rather than the _xgetbv intrinsic: GCC only allows that intrinsic in code
    // compiled with -mxsave, and this file is deliberately compiled for baseline x86-64.
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<uint64_t>(hi) << 32) | lo;
#endif
}

inline bool bit(uint32_t reg, int n) { return (reg >> n) & 1u; }

// XCR0 bits (Intel SDM vol. 1, 13.3).
constexpr uint64_t kXcr0Sse = 1ull << 1;        // XMM registers
constexpr uint64_t kXcr0Avx = 1ull << 2;        // upper halves of YMM registers
constexpr uint64_t kXcr0Opmask = 1ull << 5;     // AVX-512 k0-k7
constexpr uint64_t kXcr0ZmmHi256 = 1ull << 6;   // upper halves of ZMM0-15
constexpr uint64_t kXcr0Hi16Zmm = 1ull << 7;    // ZMM16-31
constexpr uint64_t kXcr0TileCfg = 1ull << 17;   // AMX TILECFG
constexpr uint64_t kXcr0TileData = 1ull << 18;  // AMX TILEDATA

#endif  // QRT_X86

}  // namespace

CpuFeatures detect_cpu_features() {
    CpuFeatures f;
#if QRT_X86
    const CpuidRegs l1 = cpuid(1, 0);
    const bool osxsave = bit(l1.ecx, 27);
    const uint64_t xcr0 = osxsave ? read_xcr0() : 0;

    const bool os_avx = osxsave && (xcr0 & (kXcr0Sse | kXcr0Avx)) == (kXcr0Sse | kXcr0Avx);
    const uint64_t avx512_state = kXcr0Sse | kXcr0Avx | kXcr0Opmask | kXcr0ZmmHi256 | kXcr0Hi16Zmm;
    const bool os_avx512 = osxsave && (xcr0 & avx512_state) == avx512_state;
    const bool os_amx = osxsave && (xcr0 & (kXcr0TileCfg | kXcr0TileData)) == (kXcr0TileCfg | kXcr0TileData);

    // Leaf 1, ECX. FMA and F16C are VEX-encoded, so they need the OS's AVX (YMM) state too.
    f.sse4_2 = bit(l1.ecx, 20);
    f.avx = os_avx && bit(l1.ecx, 28);
    f.fma = os_avx && bit(l1.ecx, 12);
    f.f16c = os_avx && bit(l1.ecx, 29);

    // Leaf 7, subleaf 0: EBX/ECX/EDX feature words; EAX is the highest valid subleaf.
    const CpuidRegs l7 = cpuid(7, 0);
    f.avx2 = os_avx && bit(l7.ebx, 5);
    f.avx512f = os_avx512 && bit(l7.ebx, 16);
    f.avx512dq = os_avx512 && bit(l7.ebx, 17);
    f.avx512bw = os_avx512 && bit(l7.ebx, 30);
    f.avx512vl = os_avx512 && bit(l7.ebx, 31);
    f.avx512_vnni = os_avx512 && bit(l7.ecx, 11);
    f.avx512_vbmi = os_avx512 && bit(l7.ecx, 1);
    // AMX is usable only with tile state enabled in XCR0. On Linux >= 5.16 a process must in
    // addition ask for it once with arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) before
    // the first tile instruction; that request belongs to the AMX kernel, not to this probe.
    f.amx_int8 = os_amx && bit(l7.edx, 25);

    // Leaf 7, subleaf 1 exists only when subleaf 0 says so (EAX >= 1); otherwise the CPU
    // may return the data of another subleaf.
    if (l7.eax >= 1) {
        const CpuidRegs l7s1 = cpuid(7, 1);
        f.avx_vnni = os_avx && bit(l7s1.eax, 4);
        f.avx512_bf16 = os_avx512 && bit(l7s1.eax, 5);
    }
#endif
    return f;
}

std::vector<std::pair<std::string, bool>> cpu_feature_list() {
    const CpuFeatures f = detect_cpu_features();
    return {
        {"sse4_2", f.sse4_2},
        {"avx", f.avx},
        {"avx2", f.avx2},
        {"fma", f.fma},
        {"f16c", f.f16c},
        {"avx512f", f.avx512f},
        {"avx512bw", f.avx512bw},
        {"avx512vl", f.avx512vl},
        {"avx512dq", f.avx512dq},
        {"avx512_vnni", f.avx512_vnni},
        {"avx_vnni", f.avx_vnni},
        {"avx512_bf16", f.avx512_bf16},
        {"amx_int8", f.amx_int8},
    };
}

std::string cpu_brand() {
#if QRT_X86
    // The brand string is 48 bytes in leaves 0x80000002..0x80000004, NUL-padded; some CPUs
    // also pad it with leading spaces, which are trimmed here.
    if (cpuid(0x80000000u, 0).eax >= 0x80000004u) {
        char brand[49] = {0};
        for (uint32_t i = 0; i < 3; ++i) {
            const CpuidRegs r = cpuid(0x80000002u + i, 0);
            std::memcpy(brand + 16 * i + 0, &r.eax, 4);
            std::memcpy(brand + 16 * i + 4, &r.ebx, 4);
            std::memcpy(brand + 16 * i + 8, &r.ecx, 4);
            std::memcpy(brand + 16 * i + 12, &r.edx, 4);
        }
        std::string s(brand);
        const auto first = s.find_first_not_of(' ');
        const auto last = s.find_last_not_of(' ');
        if (first != std::string::npos) return s.substr(first, last - first + 1);
    }
#if defined(__x86_64__) || defined(_M_X64)
    return "x86_64";
#else
    return "x86";
#endif
#elif defined(__unix__) || defined(__APPLE__)
    struct utsname u;
    if (uname(&u) == 0) return u.machine;
    return "unknown";
#else
    return "unknown";
#endif
}

}  // namespace qrt
