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

// One parallel_items call runs in a job slot the pool keeps (never freed: a worker that joins
// late may still read it). The items are split into one contiguous range per participant (the
// caller is participant 0, worker w participant w + 1), claimed from the front: each
// participant works through its own range first, then takes what is left in the others'. On
// quiet cores that is the static split, the same items on the same thread at every call: a
// GEMM's weight panels stay in the L2 of the core that used them last (a 1.8 MB weight (K, N) =
// (768, 2304) at M = 1 fits the two cores' L2 only halved; with one shared counter each call
// gave every thread a different mix of panels). A thread that is descheduled still holds nobody
// up: the others empty its range.
//
// What a call costs beyond its items is mostly cache lines moved between the cores (a round
// trip of one line is 100-300 ns on the 2-vCPU VMs of RESULTS.md), so the lines are few and each
// has one writer where possible:
//  * the job's descriptor (function, participants, the caller's CPU) sits in its slot behind a
//    tag (a seqlock: 0 while the owner writes it), published with one word (`current_`: tag and
//    slot) that the spinning workers read: no lock, no allocation and no shared_ptr count on the
//    way in; the caller takes the lock and notifies only when a worker sleeps. A worker that
//    falls asleep just as a job is published may miss it: that job then runs on the threads that
//    did join (never waits for it), and the next one wakes it;
//  * a range's claims carry the job's tag (next and end = tag << 32 | item), so a worker still
//    reading an older job in the same slot can never claim an item of the newer one (its
//    compare-and-swap or its tag check fails);
//  * each worker counts the items it finished on its own line (tag << 32 | count), the caller
//    its own in a local: the caller reads the workers' lines only once its own range is done.
//    (With one count per range, the caller's polling and the stealing moved the same line at
//    every item.)
// Measured with `python benchmarks/pool_rounds.py` (X, Intel Xeon, 2 vCPUs 300 ns apart,
// 2026-12-06; RESULTS.md, "The work pool's round"): a round's cost on 2 threads beyond half its
// 1-thread time, items of 0.12-0.73 us, 1.06-1.25 us with a mutex, a condition variable and a
// shared_ptr job per round -> 0.32-0.84 us.

// Most participants of one job (the caller and workers); more threads than this work as this many.
constexpr int kMaxParticipants = 256;
// Job slots, one per call running at the same moment (calls from several threads); a call that
// finds every slot taken runs its items on its own thread.
constexpr int kJobSlots = 8;
constexpr uint64_t kLow32 = 0xffffffffu;

// One participant's range of a job: next = tag << 32 | the next unclaimed item, end = tag << 32 |
// the item after its last. Both carry the tag: a worker that read `next` of an exhausted older
// job must not pair it with the `end` of the newer job being written into the slot (it would
// claim, in the moment before the new `next` is stored, an item of the new job's other range).
struct alignas(64) Claims {
    std::atomic<uint64_t> next{0};
    std::atomic<uint64_t> end{0};
};
// Items one worker finished in a job: tag << 32 | count, written by that worker only.
struct alignas(64) DoneCount {
    std::atomic<uint64_t> word{0};
};

struct JobSlot {
    alignas(64) std::atomic<bool> busy{false};       // held by the caller running a job in it
    alignas(64) std::atomic<uint32_t> tag{0};         // the job's tag; 0 while the owner rewrites the slot
    std::atomic<const std::function<void(int64_t, int)>*> fn{nullptr};
    std::atomic<int> participants{0};
    std::atomic<int> caller_cpu{-1};                 // where the caller published the job (-1: unknown)
    Claims ranges[kMaxParticipants];
    DoneCount done[kMaxParticipants];                // [0] unused: the caller counts in a local
};

// Claims and runs the items left in range r of job `tag` as participant `slot`, counting each
// in *done (a worker's line) as soon as it is finished (a worker descheduled between its last item
// and a count at the end would hold the caller up); returns how many it ran.
int64_t work_range(JobSlot& job, int r, uint32_t tag, const std::function<void(int64_t, int)>& fn, int slot,
                   DoneCount* done) {
    Claims& c = job.ranges[r];
    int64_t ran = 0;
    uint64_t v = c.next.load(std::memory_order_acquire);
    while (static_cast<uint32_t>(v >> 32) == tag) {
        const uint64_t end = c.end.load(std::memory_order_acquire);
        if (static_cast<uint32_t>(end >> 32) != tag || (v & kLow32) >= (end & kLow32)) break;
        const int64_t i = static_cast<int64_t>(v & kLow32);
        if (!c.next.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
        fn(i, slot);
        ++ran;
        if (done)   // release: the item's writes are visible to the caller that reads the count
            done->word.store(done->word.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        v = c.next.load(std::memory_order_acquire);
    }
    return ran;
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
// follows within tens of microseconds, and a job that finds its worker asleep pays the wake-up
// (40-60 us on X's far vCPUs). At 50 us the worker slept through the 55-70 us between one
// all-MiniLM-L6-v2 run's last job and the next run's first Linear (embedding gathers and the
// attention-mask plumbing in Python), and that Linear took 80 us instead of 15-25: 1 x 16 runs
// 0.90-0.92 -> 0.80-0.81 ms with 200 (X, AMX, RESULTS.md "The work pool's round"). Spinning
// costs the CPU for that long after the last job of a burst (libgomp's default spins longer).
constexpr auto kSpin = std::chrono::microseconds(200);

class Pool {
  public:
    void run(int64_t items, int threads, const std::function<void(int64_t, int)>& fn) {
        const int helpers = static_cast<int>(
            std::min<int64_t>({static_cast<int64_t>(threads) - 1, items - 1, int64_t(kMaxParticipants - 1)}));
        const int s = helpers > 0 && items <= static_cast<int64_t>(kLow32) ? take_slot() : -1;
        if (s < 0) {   // every slot in use by other calls (or an absurd item count): this thread alone
            for (int64_t i = 0; i < items; ++i) fn(i, 0);
            return;
        }
        if (started_.load(std::memory_order_acquire) < helpers) start_workers(helpers);
        JobSlot& job = slots_[s];
        const int participants = helpers + 1;
        uint32_t tag = next_tag_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (tag == 0) tag = 1;   // 0 marks a slot being written (after 2^32 jobs)
        job.tag.store(0, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);
        job.fn.store(&fn, std::memory_order_relaxed);
        job.participants.store(participants, std::memory_order_relaxed);
        job.caller_cpu.store(current_cpu(), std::memory_order_relaxed);
        for (int p = 0; p < participants; ++p) {
            job.ranges[p].end.store((uint64_t(tag) << 32) | uint64_t(items * (p + 1) / participants), std::memory_order_relaxed);
            job.ranges[p].next.store((uint64_t(tag) << 32) | uint64_t(items * p / participants), std::memory_order_relaxed);
        }
        job.tag.store(tag, std::memory_order_release);
        current_.store((uint64_t(tag) << 8) | uint64_t(s), std::memory_order_release);
        // sleeping workers (the seq_cst pair with worker(): either a worker that goes to sleep
        // sees the new job, or its caller sees it asleep here) are woken off the caller's CPU
        // (see "keeping a worker off")
        if (asleep_.load(std::memory_order_relaxed) > 0) {
            {
                std::lock_guard<std::mutex> lock(mu_);
                const int cpu = job.caller_cpu.load(std::memory_order_relaxed);
                for (Sleeper& w : sleepers_)
                    if (w.asleep && !w.narrowed && w.tid > 0) w.narrowed = narrow_off(w.tid, cpu, &w.saved);
            }
            cv_.notify_all();
        }
        int64_t finished = 0;
        for (int r = 0; r < participants; ++r) finished += work_range(job, r, tag, fn, 0, nullptr);
        // the items others claimed; yield now and then, so that a worker descheduled on
        // this core mid-item gets it back
        for (int spins = 0;; ++spins) {
            int64_t total = finished;
            for (int p = 1; p < participants; ++p) {
                const uint64_t w = job.done[p].word.load(std::memory_order_acquire);
                if (static_cast<uint32_t>(w >> 32) == tag) total += static_cast<int64_t>(w & kLow32);
            }
            if (total >= items) break;
            if (spins < 2000) QRT_CPU_RELAX();
            else std::this_thread::yield();
        }
        job.busy.store(false, std::memory_order_release);
    }

    int64_t moves() const { return moves_.load(std::memory_order_relaxed); }

  private:
    // A free job slot, taken (the calling thread's last one first), or -1.
    int take_slot() {
        thread_local int last = 0;
        for (int t = 0; t < kJobSlots; ++t) {
            const int s = (last + t) % kJobSlots;
            bool free = false;
            if (slots_[s].busy.compare_exchange_strong(free, true, std::memory_order_acquire)) {
                last = s;
                return s;
            }
        }
        return -1;
    }

    void start_workers(int helpers) {
        std::lock_guard<std::mutex> lock(mu_);
        while (static_cast<int>(sleepers_.size()) < helpers) {   // one Sleeper per started worker
            sleepers_.emplace_back();
            std::thread(&Pool::worker, this, static_cast<int>(sleepers_.size()) - 1).detach();
        }
        started_.store(static_cast<int>(sleepers_.size()), std::memory_order_release);
    }

    void worker(int index) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            sleepers_[static_cast<size_t>(index)].tid = current_tid();
        }
        uint64_t seen = current_.load(std::memory_order_acquire);
        for (;;) {
            uint64_t now_job = seen;
            const auto until = std::chrono::steady_clock::now() + kSpin;
            while ((now_job = current_.load(std::memory_order_acquire)) == seen && std::chrono::steady_clock::now() < until)
                QRT_CPU_RELAX();
            if (now_job == seen) {
                std::unique_lock<std::mutex> lock(mu_);
                Sleeper& me = sleepers_[static_cast<size_t>(index)];
                me.asleep = true;
                asleep_.fetch_add(1, std::memory_order_seq_cst);
                cv_.wait(lock, [&] { return current_.load(std::memory_order_seq_cst) != seen; });
                asleep_.fetch_sub(1, std::memory_order_relaxed);
                me.asleep = false;
                if (me.narrowed) {   // woken off the caller's CPU: free to run anywhere again
                    restore_affinity(me.saved);
                    me.narrowed = false;
                    moves_.fetch_add(1, std::memory_order_relaxed);
                }
                now_job = current_.load(std::memory_order_acquire);
            }
            seen = now_job;
            join(now_job, index + 1);
        }
    }

    // Works on the job `published` names (current_'s word) as participant `slot`, if that job
    // is still in its slot and has a participant `slot`.
    void join(uint64_t published, int slot) {
        const uint32_t tag = static_cast<uint32_t>(published >> 8);
        JobSlot& job = slots_[published & 0xff];
        if (job.tag.load(std::memory_order_acquire) != tag) return;
        const std::function<void(int64_t, int)>* fn = job.fn.load(std::memory_order_relaxed);
        const int participants = job.participants.load(std::memory_order_relaxed);
        const int caller_cpu = job.caller_cpu.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (job.tag.load(std::memory_order_relaxed) != tag || slot >= participants) return;   // rewritten meanwhile
        // on the caller's CPU it could only take turns with the caller: move off first
        if (caller_cpu >= 0 && current_cpu() == caller_cpu && move_off(caller_cpu) >= 0)
            moves_.fetch_add(1, std::memory_order_relaxed);
        DoneCount& done = job.done[slot];
        done.word.store(uint64_t(tag) << 32, std::memory_order_relaxed);
        // fn is only called for an item claimed under this tag, and the caller returns only once
        // all of them are done: its std::function is alive for every call made here
        for (int r = 0; r < participants; ++r) work_range(job, (slot + r) % participants, tag, *fn, slot, &done);
    }

    JobSlot slots_[kJobSlots];
    std::atomic<uint64_t> current_{0};        // the job published last: tag << 8 | slot
    std::atomic<uint32_t> next_tag_{0};
    std::atomic<int> started_{0};             // workers started
    std::atomic<int> asleep_{0};              // workers waiting on cv_
    std::mutex mu_;                           // guards sleepers_; cv_'s
    std::condition_variable cv_;
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
