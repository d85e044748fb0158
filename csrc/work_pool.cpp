// The work pool of work_pool.h.
#include "work_pool.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

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
struct alignas(64) Range {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
};

struct Job {
    const std::function<void(int64_t, int)>* fn = nullptr;
    int slots = 1;
    std::unique_ptr<Range[]> ranges;
    std::atomic<int64_t> done{0};

    Job(const std::function<void(int64_t, int)>* f, int64_t items, int participants)
        : fn(f), slots(participants), ranges(new Range[participants]) {
        for (int s = 0; s < slots; ++s) {
            ranges[s].next.store(items * s / slots, std::memory_order_relaxed);
            ranges[s].end = items * (s + 1) / slots;
        }
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
            job.done.fetch_add(1, std::memory_order_acq_rel);
        }
    }
}

// A worker spins this long for the next job before it sleeps: the next layer's GEMM usually
// follows within tens of microseconds, and waking a sleeping thread costs about as much.
constexpr auto kSpin = std::chrono::microseconds(50);

class Pool {
  public:
    void run(int64_t items, int threads, const std::function<void(int64_t, int)>& fn) {
        const int helpers = static_cast<int>(std::min<int64_t>(threads - 1, items - 1));
        auto job = std::make_shared<Job>(&fn, items, helpers + 1);
        {
            std::lock_guard<std::mutex> lock(mu_);
            while (static_cast<int>(workers_) < helpers) {
                std::thread(&Pool::worker, this, static_cast<int>(workers_)).detach();
                ++workers_;
            }
            current_ = job;
            helpers_ = helpers;
            gen_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        work_on(*job, 0);
        // the items others claimed; yield now and then, so that a worker descheduled on
        // this core mid-item gets it back
        for (int spins = 0; job->done.load(std::memory_order_acquire) < items; ++spins) {
            if (spins < 2000) QRT_CPU_RELAX();
            else std::this_thread::yield();
        }
    }

  private:
    void worker(int index) {
        uint64_t seen = gen_.load(std::memory_order_acquire);
        for (;;) {
            const auto until = std::chrono::steady_clock::now() + kSpin;
            while (gen_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
                QRT_CPU_RELAX();
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [&] { return gen_.load(std::memory_order_relaxed) != seen; });
                seen = gen_.load(std::memory_order_relaxed);
                if (index < helpers_) job = current_;
            }
            // index < helpers <= threads - 1: slot index + 1 is below the job's thread count
            if (job) work_on(*job, index + 1);
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<uint64_t> gen_{0};
    std::shared_ptr<Job> current_;
    int helpers_ = 0;
    size_t workers_ = 0;
};

// Never destroyed: its detached workers wait on it until the process ends. A forked child has
// none of the parent's threads (and maybe a mutex some worker held): it starts a fresh pool.
Pool* g_pool = nullptr;
std::once_flag g_once;

void reset_after_fork() { g_pool = new Pool(); }

Pool& pool() {
    std::call_once(g_once, [] {
        g_pool = new Pool();
        pthread_atfork(nullptr, nullptr, reset_after_fork);
    });
    return *g_pool;
}

}  // namespace

void parallel_items(int64_t items, int threads, const std::function<void(int64_t, int)>& fn) {
    if (items <= 0) return;
    if (threads <= 1 || items == 1) {
        for (int64_t i = 0; i < items; ++i) fn(i, 0);
        return;
    }
    pool().run(items, threads, fn);
}

void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
    parallel_items(items, threads, std::function<void(int64_t, int)>([&fn](int64_t i, int) { fn(i); }));
}

}  // namespace qrt
