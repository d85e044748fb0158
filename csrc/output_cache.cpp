// The output block cache of output_cache.h.
#include "output_cache.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>

#include "fork_fresh.h"

namespace py = pybind11;

namespace qrt {
namespace bind {
namespace {

constexpr size_t kHuge = size_t(2) << 20;     // a transparent huge page
constexpr size_t kSmallGranule = size_t(64) << 10;

// The bytes a block of `bytes` gets: whole huge pages from 2 MiB on, else 64 KiB steps (so
// that outputs of nearly the same size share blocks).
size_t block_bytes(size_t bytes) {
    const size_t g = bytes >= kHuge ? kHuge : kSmallGranule;
    return (bytes + g - 1) / g * g;
}

struct Block {
    void* data;
    size_t bytes;
};

class Cache {
  public:
    // A block of `bytes` (a freed one if held, else a new one), or {nullptr, 0} while the
    // limit is 0 (the cache is off): one lock a call.
    Block take(size_t bytes) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (limit_ == 0) return {nullptr, 0};
            ++handed_;
            for (size_t i = free_.size(); i-- > 0;) {   // the most recently freed first: warmest
                if (free_[i].bytes == bytes) {
                    const Block b = free_[i];
                    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
                    held_ -= b.bytes;
                    return b;
                }
            }
        }
        const size_t align = bytes >= kHuge ? kHuge : 4096;
        void* p = std::aligned_alloc(align, bytes);   // bytes is a multiple of align
        if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (bytes >= kHuge) madvise(p, bytes, MADV_HUGEPAGE);   // advice only: failure changes nothing
#endif
        return {p, bytes};
    }

    void give_back(Block b) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (held_ + b.bytes <= limit_) {
                free_.push_back(b);
                held_ += b.bytes;
                return;
            }
        }
        std::free(b.data);
    }

    std::vector<int64_t> stats() {
        std::lock_guard<std::mutex> lock(mu_);
        return {static_cast<int64_t>(free_.size()), static_cast<int64_t>(held_), handed_};
    }

    void clear() { set_limit(0, true); }

    // the new limit (unless keep_limit), the oldest free blocks freed until the rest fit it
    size_t set_limit(size_t bytes, bool keep_limit = false) {
        std::vector<Block> gone;
        size_t old;
        {
            std::lock_guard<std::mutex> lock(mu_);
            old = limit_;
            const size_t target = keep_limit ? 0 : bytes;
            if (!keep_limit) limit_ = bytes;
            size_t drop = 0;
            while (drop < free_.size() && held_ > target) held_ -= free_[drop++].bytes;
            gone.assign(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(drop));
            free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(drop));
        }
        for (const Block& b : gone) std::free(b.data);
        return old;
    }

  private:
    std::mutex mu_;
    std::vector<Block> free_;
    size_t held_ = 0;
    int64_t handed_ = 0;
    size_t limit_ = kCacheMaxBytes;
};

// Never destroyed (capsules may hand blocks back during interpreter shutdown); fresh in a
// forked child (fork_fresh.h).
Cache& cache() { return fork_fresh_instance<Cache>(); }

}  // namespace

py::array_t<float> new_f32(const std::vector<py::ssize_t>& shape) {
    size_t count = 1;
    for (const py::ssize_t d : shape) count *= static_cast<size_t>(d);
    const size_t bytes = count * sizeof(float);
    if (bytes < kCachedMinBytes) return py::array_t<float>(shape);
    const Block block = cache().take(block_bytes(bytes));
    if (block.data == nullptr) return py::array_t<float>(shape);   // the cache is off
    Block* b = new Block(block);
    py::capsule owner(b, [](void* p) {
        Block* blk = static_cast<Block*>(p);
        cache().give_back(*blk);
        delete blk;
    });
    return py::array_t<float>(shape, static_cast<float*>(b->data), owner);
}

std::vector<int64_t> output_cache_stats() { return cache().stats(); }

void output_cache_clear() { cache().clear(); }

size_t output_cache_set_limit(size_t bytes) { return cache().set_limit(bytes); }

}  // namespace bind
}  // namespace qrt
