// tests/cuda_shim.h: run qrt's CUDA kernels (kernels/cupy_gpu/*.cu) on the CPU, for tests on
// machines without a GPU (tests/test_cupy_kernels.py compiles each source with
// `g++ -include tests/cuda_shim.h` and launches its kernels through ctypes).
//
// Not a CUDA implementation: just enough of the device language for those sources, with the
// semantics that matter for correctness enforced strictly.
// * Every CUDA thread of a block is a fiber (ucontext) with its own stack; blocks run one after
//   another. A fiber runs until it waits at a barrier or exits, so the schedule is deterministic.
// * __syncthreads() releases when every thread of the block waits there; a thread that exited
//   while others wait, or waits at a warp barrier instead, is reported as an error (on a GPU,
//   undefined behaviour or a hang).
// * __shfl_xor_sync exchanges values between the 32 lanes of a warp, a barrier before and
//   after; every lane must take part (full mask, as the sources promise), else an error.
// * __shared__ is `static`: one copy shared by the block's fibers (and reused by the next block,
//   which a GPU would give fresh, uninitialised memory).
// * float and double arithmetic is the host's IEEE arithmetic (compile with -ffp-contract=off:
//   the *_rn intrinsics must not become FMAs); math functions are glibc's, not CUDA's, so an
//   accuracy claim about CUDA's erff / expf is not checked here.
#pragma once

#include <math.h>
#include <string.h>
#include <ucontext.h>

#include <string>
#include <vector>

struct dim3 {
    unsigned x, y, z;
};

namespace qrt_emu {

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct Thread {
    ucontext_t ctx;
    std::vector<char> stack;
    dim3 idx;
    unsigned linear;
    State state;
};

constexpr size_t STACK_BYTES = 128 * 1024;

inline std::vector<Thread> threads;
inline Thread* current = nullptr;
inline ucontext_t scheduler;
inline dim3 block_dim{1, 1, 1}, grid_dim{1, 1, 1}, block_idx{0, 0, 0};
inline std::vector<unsigned long long> warp_slots;      // one shuffle slot per thread
inline std::string error;
inline void (*entry)(void*) = nullptr;
inline void* entry_arg = nullptr;

inline void fail(const std::string& msg) {
    if (error.empty()) error = msg;
}

inline void wait(State s) {
    current->state = s;
    swapcontext(&current->ctx, &scheduler);
}

inline void thread_main() {
    entry(entry_arg);
    current->state = DONE;
    swapcontext(&current->ctx, &scheduler);    // never resumed
}

template <class F>
void call(void* f) {
    (*static_cast<F*>(f))();
}

// Run one block to completion; false (with `error` set) on a barrier misuse.
inline bool run_block() {
    const unsigned n = (unsigned)threads.size();
    for (;;) {
        for (Thread& t : threads) {
            if (t.state != RUNNABLE) continue;
            current = &t;
            swapcontext(&scheduler, &t.ctx);
            if (!error.empty()) return false;
        }
        unsigned done = 0, at_block = 0;
        for (const Thread& t : threads) {
            done += t.state == DONE;
            at_block += t.state == AT_BLOCK_BARRIER;
        }
        if (done == n) return true;
        bool released = false;
        for (unsigned w = 0; w < n / 32; ++w) {
            unsigned waiting = 0;
            for (unsigned l = 0; l < 32; ++l) waiting += threads[w * 32 + l].state == AT_WARP_BARRIER;
            if (waiting == 32) {
                for (unsigned l = 0; l < 32; ++l) threads[w * 32 + l].state = RUNNABLE;
                released = true;
            } else if (waiting) {
                fail("warp " + std::to_string(w) + " of block (" + std::to_string(block_idx.x) + ", " +
                     std::to_string(block_idx.y) + "): " + std::to_string(waiting) +
                     " lanes wait at a shuffle / __syncwarp that the others never reach (exited or at __syncthreads)");
                return false;
            }
        }
        if (released) continue;
        if (at_block == n) {
            for (Thread& t : threads) t.state = RUNNABLE;
            continue;
        }
        fail("block (" + std::to_string(block_idx.x) + ", " + std::to_string(block_idx.y) + "): " +
             std::to_string(at_block) + " of " + std::to_string(n) + " threads wait at __syncthreads, " +
             std::to_string(done) + " exited: a barrier not reached by every thread");
        return false;
    }
}

// Launch body() as a grid of blocks; 0 on success, else 1 with `error` set.
template <class F>
int launch(dim3 grid, dim3 block, F&& body) {
    error.clear();
    const unsigned long long n = (unsigned long long)block.x * block.y * block.z;
    if (n == 0 || n % 32 || n > 1024 || block.y != 1 || block.z != 1) {
        fail("block (" + std::to_string(block.x) + ", " + std::to_string(block.y) + ", " + std::to_string(block.z) +
             "): the qrt kernels take 1-D blocks of a positive multiple of 32 threads, at most 1024");
        return 1;
    }
    if ((unsigned long long)grid.x * grid.y * grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
        fail("invalid grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
             std::to_string(grid.z) + ")");
        return 1;
    }
    block_dim = block;
    grid_dim = grid;
    threads.resize(n);
    warp_slots.assign(n, 0);
    entry = &call<F>;
    entry_arg = &body;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                block_idx = dim3{bx, by, bz};
                for (unsigned i = 0; i < n; ++i) {
                    Thread& t = threads[i];
                    if (t.stack.size() != STACK_BYTES) t.stack.assign(STACK_BYTES, 0);
                    t.idx = dim3{i, 0, 0};
                    t.linear = i;
                    t.state = RUNNABLE;
                    getcontext(&t.ctx);
                    t.ctx.uc_stack.ss_sp = t.stack.data();
                    t.ctx.uc_stack.ss_size = t.stack.size();
                    t.ctx.uc_link = nullptr;
                    makecontext(&t.ctx, thread_main, 0);
                }
                if (!run_block()) return 1;
            }
    return 0;
}

}  // namespace qrt_emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define threadIdx (qrt_emu::current->idx)
#define blockIdx (qrt_emu::block_idx)
#define blockDim (qrt_emu::block_dim)
#define gridDim (qrt_emu::grid_dim)

inline void __syncthreads() { qrt_emu::wait(qrt_emu::AT_BLOCK_BARRIER); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) qrt_emu::fail("__syncwarp with a partial mask");
    qrt_emu::wait(qrt_emu::AT_WARP_BARRIER);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 8 bytes");
    using namespace qrt_emu;
    if (mask != 0xffffffffu || width != 32) fail("__shfl_xor_sync with a partial mask or width != 32");
    const unsigned me = current->linear, base = me & ~31u;
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    warp_slots[me] = bits;
    wait(AT_WARP_BARRIER);                       // every lane has written its value
    const unsigned long long theirs = warp_slots[base + (((me & 31u) ^ (unsigned)lane_mask) & 31u)];
    wait(AT_WARP_BARRIER);                       // every lane has read before any writes again
    T out;
    memcpy(&out, &theirs, sizeof(T));
    return out;
}

// --- intrinsics: IEEE round-to-nearest host arithmetic -------------------------------------
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __double2float_rn(double x) { return (float)x; }
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, sizeof d);
    return d;
}
