// The work pool of work_pool.h.
#include "work_pool.h"

#include <pthread.h>
#if defined(__linux__)
#include <sched.h>
#include <unistd.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fork_fresh.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define QRT_CPU_RELAX() _mm_pause()
#else
#define QRT_CPU_RELAX() std::this_thread::yield()
#endif

namespace qrt {
namespace {

// One parallel_items call. Shared (shared_ptr) between its caller and the workers that joined:
// a worker that joins after the caller returned still finds a live object, sees every item
// claimed, and leaves without calling fn (fn is only called for an item < its range's end, and
// the caller returns only once all of them are done).
//
// The items are split into one contiguous range per participant (slot), claimed from the front
// by a counter of their own: each participant works through its own range first, then takes
// what is left in the others' ranges. On quiet cores that is the static split, the same items
// on the same thread at every call: a GEMM's weight panels stay in the L2 of the core that used
// them last (a 1.8 MB weight (K, N) = (768, 2304) at M = 1 fits the two cores' L2 only halved;
// with one shared counter each call gave every thread a different mix of panels). A thread
// that is descheduled still holds nobody up: the others empty its range.
// Each range counts its own items done, on its own cache line: with one shared counter every
// item's count moved that line between the cores (a C++ loop of rounds of empty items on 2
// threads, Zen 4: 48 items 1.37 -> 0.76 us a round, 24 items 0.7-0.9 -> 0.5-0.7). A participant
// now touches only its own range's line while it works through its own range.
struct alignas(64) Range {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t end = 0;
    int64_t size = 0;
};

struct Job {
    const std::function<void(int64_t, int)>* fn = nullptr;
    int slots = 1;
    int caller_cpu = -1;                      // where the caller published the job (-1: unknown)
    std::unique_ptr<Range[]> ranges;

    Job(const std::function<void(int64_t, int)>* f, int64_t items, int participants)
        : fn(f), slots(participants), ranges(new Range[participants]) {
        for (int s = 0; s < slots; ++s) {
            ranges[s].next.store(items * s / slots, std::memory_order_relaxed);
            ranges[s].end = items * (s + 1) / slots;
            ranges[s].size = ranges[s].end - items * s / slots;
        }
    }

    // every item of every range done (acquire: their writes are visible to the caller)
    bool all_done() const {
        for (int s = 0; s < slots; ++s)
            if (ranges[s].done.load(std::memory_order_acquire) < ranges[s].size) return false;
        return true;
    }
};

// each item counted done as soon as it is (not at the end of the loop: a worker descheduled
// between its last item and the count would hold the caller up)
void work_on(Job& job, int slot) {
    for (int r = 0; r < job.slots; ++r) {
        Range& range = job.ranges[(slot + r) % job.slots];   // its own range first
        for (;;) {
            const int64_t i = range.next.fetch_add(1, std::memory_order_relaxed);
            if (i >= range.end) break;
            (*job.fn)(i, slot);
            range.done.fetch_add(1, std::memory_order_acq_rel);
        }
    }
}

// --- keeping a worker off its caller's CPU -------------------------------------------------------
//
// Linux may wake a sleeping worker on its waker's CPU (wake-affine placement) although another
// CPU is idle: measured on the 2-vCPU VMs of RESULTS.md ("Two threads on one CPU") after most
// pauses of a millisecond or more. There the worker runs only when the caller waits: every
// parallel call takes one thread's time plus the switches, and the balancer does not separate
// the two, because the worker sleeps between jobs and never looks like load. So:
//  * a caller that wakes sleeping workers first narrows their affinity to the CPUs other than
//    its own (the kernel then wakes them there); each restores its old set once it runs;
//  * a worker that still finds itself on its caller's CPU when it joins a job (it was not
//    asleep, or the narrowing failed) moves off: its affinity narrowed the same way, which
//    migrates it at once, then restored, which does not move it back.
// Nobody is pinned: the sets are only ever narrowed for a moment, the caller's never, and where
// an affinity cannot be read or set (or only one CPU is allowed) nothing changes.

// The CPU the calling thread runs on now, -1 where that is unknown.
int current_cpu() {
#if defined(__linux__)
    return sched_getcpu();
#else
    return -1;
#endif
}

#if defined(__linux__)
using CpuSet = cpu_set_t;
int current_tid() { return static_cast<int>(gettid()); }
// Thread tid's (0: the calling thread's) affinity into *saved, then narrowed to exclude `cpu`;
// false (nothing changed) where that is impossible.
bool narrow_off(int tid, int cpu, CpuSet* saved) {
    if (tid < 0 || cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(tid, sizeof *saved, saved) != 0) return false;
    CpuSet others = *saved;
    CPU_CLR(cpu, &others);
    return CPU_COUNT(&others) > 0 && sched_setaffinity(tid, sizeof others, &others) == 0;
}
void restore_affinity(const CpuSet& saved) { sched_setaffinity(0, sizeof saved, &saved); }
#else
struct CpuSet {};
int current_tid() { return -1; }
bool narrow_off(int, int, CpuSet*) { return false; }
void restore_affinity(const CpuSet&) {}
#endif

// Moves the calling thread off `cpu` to another CPU it may run on, its affinity left as it was:
// the CPU it moved to, or -1 where nothing moved.
int move_off(int cpu) {
    CpuSet saved;
    if (!narrow_off(0, cpu, &saved)) return -1;
    const int landed = current_cpu();
    restore_affinity(saved);
    return landed;
}

// A worker spins this long for the next job before it sleeps: the next layer's GEMM usually
// follows within tens of microseconds, and waking a sleeping thread costs about as much.
constexpr auto kSpin = std::chrono::microseconds(50);

class Pool {
  public:
    void run(int64_t items, int threads, const std::function<void(int64_t, int)>& fn) {
        const int helpers = static_cast<int>(std::min<int64_t>(threads - 1, items - 1));
        auto job = std::make_shared<Job>(&fn, items, helpers + 1);
        job->caller_cpu = current_cpu();
        {
            std::lock_guard<std::mutex> lock(mu_);
            while (static_cast<int>(sleepers_.size()) < helpers) {   // one Sleeper per started worker
                sleepers_.emplace_back();
                std::thread(&Pool::worker, this, static_cast<int>(sleepers_.size()) - 1).detach();
            }
            current_ = job;
            helpers_ = helpers;
            // sleeping workers are woken off the caller's CPU (see "keeping a worker off")
            for (Sleeper& w : sleepers_)
                if (w.asleep && !w.narrowed && w.tid > 0) w.narrowed = narrow_off(w.tid, job->caller_cpu, &w.saved);
            gen_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        work_on(*job, 0);
        // the items others claimed; yield now and then, so that a worker descheduled on
        // this core mid-item gets it back
        for (int spins = 0; !job->all_done(); ++spins) {
            if (spins < 2000) QRT_CPU_RELAX();
            else std::this_thread::yield();
        }
    }

    int64_t moves() const { return moves_.load(std::memory_order_relaxed); }

  private:
    void worker(int index) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            sleepers_[static_cast<size_t>(index)].tid = current_tid();
        }
        uint64_t seen = gen_.load(std::memory_order_acquire);
        for (;;) {
            const auto until = std::chrono::steady_clock::now() + kSpin;
            while (gen_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
                QRT_CPU_RELAX();
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mu_);
                Sleeper& me = sleepers_[static_cast<size_t>(index)];
                me.asleep = true;
                cv_.wait(lock, [&] { return gen_.load(std::memory_order_relaxed) != seen; });
                me.asleep = false;
                if (me.narrowed) {   // woken off the caller's CPU: free to run anywhere again
                    restore_affinity(me.saved);
                    me.narrowed = false;
                    moves_.fetch_add(1, std::memory_order_relaxed);
                }
                seen = gen_.load(std::memory_order_relaxed);
                if (index < helpers_) job = current_;
            }
            if (!job) continue;
            // on the caller's CPU it could only take turns with the caller: move off first
            if (job->caller_cpu >= 0 && current_cpu() == job->caller_cpu && move_off(job->caller_cpu) >= 0)
                moves_.fetch_add(1, std::memory_order_relaxed);
            // index < helpers <= threads - 1: slot index + 1 is below the job's thread count
            work_on(*job, index + 1);
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<uint64_t> gen_{0};
    std::shared_ptr<Job> current_;
    int helpers_ = 0;
    std::atomic<int64_t> moves_{0};           // workers kept off their caller's CPU (woken elsewhere, or moved)
    struct Sleeper {                          // per worker, guarded by mu_
        int tid = -1;                         // -1 until it started (or where unknown)
        bool asleep = false;                  // waiting on cv_
        bool narrowed = false;                // its affinity narrowed by a caller; saved holds the old set
        CpuSet saved{};
    };
    std::deque<Sleeper> sleepers_;            // a deque: a worker's reference stays valid as others are added
};

// Never destroyed: its detached workers wait on it until the process ends. A forked child has
// none of the parent's threads (and maybe a mutex some worker held): it starts a fresh pool
// (fork_fresh.h).
Pool& pool() { return fork_fresh_instance<Pool>(); }

}  // namespace

void parallel_items(int64_t items, int threads, const std::function<void(int64_t, int)>& fn) {
    if (items <= 0) return;
    if (threads <= 1 || items == 1) {
        for (int64_t i = 0; i < items; ++i) fn(i, 0);
        return;
    }
    pool().run(items, threads, fn);
}

int64_t work_pool_moves() { return pool().moves(); }

int move_thread_off(int cpu) { return move_off(cpu); }

int thread_cpu() { return current_cpu(); }

void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
    parallel_items(items, threads, std::function<void(int64_t, int)>([&fn](int64_t i, int) { fn(i); }));
}

}  // namespace qrt
