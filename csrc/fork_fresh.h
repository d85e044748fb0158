// A process-wide object made on first use and never destroyed, which a forked child replaces
// by a fresh one on its first use after the fork: the child has none of the parent's other
// threads, and one of them may have held the object's lock at the fork (the work pool,
// work_pool.cpp; the output block cache, output_cache.cpp).
#pragma once

#include <pthread.h>

#include <mutex>

namespace qrt {

template <class T>
T& fork_fresh_instance() {
    static T* instance = nullptr;
    static std::once_flag once;
    std::call_once(once, [] {
        instance = new T();
        pthread_atfork(nullptr, nullptr, [] { instance = new T(); });
    });
    return *instance;
}

}  // namespace qrt
