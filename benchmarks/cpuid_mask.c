// Make this process look like a CPU with fewer ISA extensions, for benchmarks only.
//
// Why: issue 15's goals are ratios against onnxruntime on AVX2-only and AVX-VNNI (Intel client)
// CPUs. onnxruntime (MLAS), numpy, OpenBLAS, numba's LLVM and qrt's native backend all choose
// their kernels from the cpuid instruction. Linux can make cpuid fault in user space
// (arch_prctl(ARCH_SET_CPUID, 0), where the CPU has "cpuid_fault"); this library catches the
// fault (SIGSEGV), runs the real cpuid with faulting briefly off, clears the feature bits of the
// chosen class, and resumes after the instruction. Every library loaded afterwards then takes
// the code paths it would take on such a CPU, on the same cores: a side-by-side ratio under the
// same mask compares like with like. What it cannot change: the cores' microarchitecture
// (e.g. an Intel server core stands in for an Alder Lake P-core, which is the same Golden Cove
// design, or for an AMD Zen 3, which it is not), caches, and xgetbv (the OS still enables the
// AVX-512 state; every library checks the cpuid bit as well).
//
// The faulting flag is per thread and inherited by threads created later, so qrt_mask_cpuid
// must run before any library starts threads or reads cpuid (benchmarks/as_cpu.py does that).

#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

// Feature classes, as benchmarks/as_cpu.py names them.
enum { MASK_AVX2 = 1, MASK_AVX_VNNI = 2, MASK_AVX512_VNNI = 3 };

static volatile int g_mode = 0;
static volatile long g_faults = 0;
static struct sigaction g_previous;

// Leaf 7 subleaf 0, EBX: AVX512F(16) DQ(17) IFMA(21) PF(26) ER(27) CD(28) BW(30) VL(31).
static const uint32_t kL7EbxAvx512 = (1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) |
                                     (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31);
// Leaf 7 subleaf 0, ECX: VBMI(1) VBMI2(6) VNNI(11) BITALG(12) VPOPCNTDQ(14).
static const uint32_t kL7EcxAvx512 = (1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14);
// Leaf 7 subleaf 0, EDX: 4VNNIW(2) 4FMAPS(3) VP2INTERSECT(8) AMX-BF16(22) FP16(23) AMX-TILE(24)
// AMX-INT8(25).
static const uint32_t kL7EdxAvx512 = (1u << 2) | (1u << 3) | (1u << 8) | (1u << 23);
static const uint32_t kL7EdxAmx = (1u << 22) | (1u << 24) | (1u << 25);
// Leaf 7 subleaf 1, EAX: AVX-VNNI(4) AVX512_BF16(5) AMX-FP16(21) AVX-IFMA(23).
static const uint32_t kL71EaxAvxVnni = 1u << 4;
static const uint32_t kL71EaxAvx512 = (1u << 5);
static const uint32_t kL71EaxAmx = (1u << 21);
static const uint32_t kL71EaxAvxIfma = (1u << 23);
// Leaf 7 subleaf 1, EDX: AVX-VNNI-INT8(4) AVX-NE-CONVERT(5) AMX-COMPLEX(8) AVX10(19).
static const uint32_t kL71EdxAvxNew = (1u << 4) | (1u << 5) | (1u << 19);
static const uint32_t kL71EdxAmx = (1u << 8);

static void mask_regs(uint32_t leaf, uint32_t subleaf, uint32_t* a, uint32_t* b, uint32_t* c,
                      uint32_t* d) {
    const int mode = g_mode;
    if (leaf == 7 && subleaf == 0) {
        *d &= ~kL7EdxAmx;
        if (mode != MASK_AVX512_VNNI) {
            *b &= ~kL7EbxAvx512;
            *c &= ~kL7EcxAvx512;
            *d &= ~kL7EdxAvx512;
        }
    } else if (leaf == 7 && subleaf == 1) {
        *a &= ~(kL71EaxAmx | kL71EaxAvxIfma);
        *d &= ~(kL71EdxAvxNew | kL71EdxAmx);
        if (mode != MASK_AVX512_VNNI) *a &= ~kL71EaxAvx512;
        if (mode == MASK_AVX2) *a &= ~kL71EaxAvxVnni;
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
        // AMX tile palettes / TMUL information, and AVX10: absent on the emulated classes.
        *a = *b = *c = *d = 0;
    }
}

static void on_fault(int sig, siginfo_t* info, void* context) {
    ucontext_t* uc = (ucontext_t*)context;
    greg_t* regs = uc->uc_mcontext.gregs;
    const unsigned char* ip = (const unsigned char*)regs[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        // A real segmentation fault: hand it to whoever had SIGSEGV before (default: die).
        sigaction(SIGSEGV, &g_previous, NULL);
        (void)sig;
        (void)info;
        return;  // the instruction faults again, now under the previous disposition
    }
    const uint32_t leaf = (uint32_t)regs[REG_RAX];
    const uint32_t subleaf = (uint32_t)regs[REG_RCX];
    uint32_t a, b, c, d;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, subleaf, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    mask_regs(leaf, subleaf, &a, &b, &c, &d);
    regs[REG_RAX] = a;
    regs[REG_RBX] = b;
    regs[REG_RCX] = c;
    regs[REG_RDX] = d;
    regs[REG_RIP] += 2;
    g_faults = g_faults + 1;
}

// Returns 0 on success, -1 for an unknown mode, -2 where the kernel or CPU cannot fault cpuid.
int qrt_mask_cpuid(int mode) {
    if (mode != MASK_AVX2 && mode != MASK_AVX_VNNI && mode != MASK_AVX512_VNNI) return -1;
    if (syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0) < 0) return -2;
    g_mode = mode;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &g_previous) != 0) return -2;
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        sigaction(SIGSEGV, &g_previous, NULL);
        return -2;
    }
    return 0;
}

// How many cpuid instructions were emulated so far (a check that the mask is in the path).
long qrt_mask_cpuid_faults(void) { return g_faults; }
