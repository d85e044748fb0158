// A work pool for machines whose cores are shared: items claimed one at a time by whoever is
// awake, the calling thread included, and nobody waited for who has not claimed anything.
//
// An OpenMP parallel region ends (and a `for` construct's barrier passes) only when every
// member of the team has arrived. On a core shared with other processes a member may be
// descheduled for a whole time slice (milliseconds) before it even starts, and the region,
// whose work takes tens of microseconds, then waits for it: RESULTS.md, "The default export
// fuses", qrt int8 at 350-560 ms beside busy processes against 20 ms quiet. Here the caller
// claims items like every worker (its own range of them first, work_pool.cpp); it returns once every *claimed* item
// is done, so a worker that wakes late finds nothing left and holds no one up. Only a worker
// descheduled in the middle of an item is waited for (an item is short: one row block times
// one 64-column panel of a GEMM).
//
// Workers are kept off their caller's CPU, where Linux's wake-affine placement may put a woken
// thread: a caller narrows the affinity of the sleeping workers it wakes to the other CPUs (each
// restores its own set when it runs), and a worker that still joins a job on its caller's CPU
// moves off first (work_pool.cpp, "keeping a worker off its caller's CPU").
//
// Numerics do not depend on it: every item writes its own outputs, so who ran an item, and
// how many threads there were, never changes a result.
#pragma once

#include <cstdint>
#include <functional>

namespace qrt {

// fn(item) for every item in [0, items), on the calling thread and up to threads - 1 pool
// workers (started on first use, kept, waiting passively after a short spin; at most 255
// join one call). fn must not throw. threads <= 1 or items <= 1: every item on the calling
// thread, in order. Not reentrant from inside fn; concurrent calls from several threads are
// safe (each is one job, the pool's workers join whichever was published last, the others'
// callers do their items themselves; beyond 8 calls at once, a call runs on its own thread).
void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn);

// The same, with fn(item, slot): slot says which participant runs the item, 0 for the calling
// thread, 1 .. threads - 1 for the workers that joined this call; within one call a slot is
// only ever one thread, so per-slot scratch (an array of `threads` entries) needs no lock.
void parallel_items(int64_t items, int threads, const std::function<void(int64_t, int)>& fn);

// How many times a worker was kept off its caller's CPU: woken elsewhere (its affinity narrowed
// by the caller) or moved off when it joined (work_pool.cpp): for benchmarks and tests.
int64_t work_pool_moves();

// The calling thread moved off `cpu` to another CPU of its affinity set, the set itself left
// as it was: returns the CPU it was moved to (read before the set was restored), -1 where
// nothing moved (no other CPU allowed, or not Linux). For tests.
int move_thread_off(int cpu);

// The CPU the calling thread runs on, -1 where unknown.
int thread_cpu();

}  // namespace qrt
