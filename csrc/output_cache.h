// Output arrays of the bindings, from a cache of freed blocks.
//
// Why: a session run allocates each kernel's output afresh and drops it a few steps later.
// numpy takes a large array from glibc, which maps it (mmap, above its threshold) and unmaps it
// again on free; numpy also asks for transparent huge pages on arrays of 4 MiB and more. So at
// every run the kernel's first stores into each large output took page faults and the kernel
// zeroed 2 MiB pages for them: all-MiniLM-L6-v2 csr 80% at 8 x 128 (Zen 4), perf: 3.1% of the
// run in clear_page_erms and ~1.5% more in the fault and unmap paths (benchmarks/RESULTS.md,
// "Output blocks reused"). glibc tunables that keep the memory in the heap removed the faults
// but not the time (4 KiB pages then, more TLB misses in the same kernels).
//
// Here a float32 output of kCachedMinBytes or more is a block of this cache: 2 MiB-aligned and
// advised for huge pages where it is 2 MiB or larger, owned by a capsule that hands the block
// back when the array (and every view of it) is gone. A later output of the same rounded size
// takes it, its pages already present. Smaller outputs are ordinary numpy arrays.
//
// Bounds: the free blocks held never exceed the limit, kCacheMaxBytes unless
// output_cache_set_limit says otherwise (kernels/native_cpu/__init__.py sets it from
// QRT_OUTPUT_CACHE_MB); a block that would pass it is freed; a block in use is the array's, as
// any array. Limit 0: no cache, every output a plain numpy array. Thread-safe (a mutex; blocks are taken
// and handed back with the GIL held, but nothing relies on it). After fork() the child starts
// with an empty cache (it never touches the parent's lock or list).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qrt {
namespace bind {

constexpr size_t kCachedMinBytes = size_t(256) << 10;   // below: numpy's own allocation
constexpr size_t kCacheMaxBytes = size_t(64) << 20;     // free blocks kept, at most, by default

// A C-contiguous float32 array of `shape` (uninitialised, as py::array_t<float>(shape)).
pybind11::array_t<float> new_f32(const std::vector<pybind11::ssize_t>& shape);

// (free blocks held, their bytes, blocks handed out since start): for tests and benchmarks.
std::vector<int64_t> output_cache_stats();

// Frees every block the cache holds (blocks in use are untouched).
void output_cache_clear();

// Sets the most bytes of free blocks held (0: no cache) and returns the previous limit; the
// blocks held beyond the new limit are freed.
size_t output_cache_set_limit(size_t bytes);

}  // namespace bind
}  // namespace qrt
