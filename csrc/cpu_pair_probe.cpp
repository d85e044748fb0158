// The CPU pair probe of cpu_pair_probe.h.
#include "cpu_pair_probe.h"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace qrt {

#if defined(__linux__)
namespace {

struct alignas(64) Line {   // one counter per cache line: the two sides never share a line
    std::atomic<int64_t> value{0};
};

bool pin_to(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
}

}  // namespace

double cpu_pair_round_trip_ns(int cpu_a, int cpu_b, double seconds) {
    cpu_set_t saved;
    if (cpu_a < 0 || cpu_b < 0 || cpu_a >= CPU_SETSIZE || cpu_b >= CPU_SETSIZE || cpu_a == cpu_b ||
        !(seconds > 0) || pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0 ||
        !CPU_ISSET(cpu_a, &saved) || !CPU_ISSET(cpu_b, &saved))
        return -1.0;
    using clock = std::chrono::steady_clock;
    Line ping, pong;
    std::atomic<bool> stop{false};
    std::atomic<int> helper_state{0};   // 0 starting, 1 pinned, -1 its pin refused
    std::thread helper([&] {
        helper_state.store(pin_to(cpu_b) ? 1 : -1, std::memory_order_release);
        int64_t last = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            const int64_t v = ping.value.load(std::memory_order_acquire);
            if (v != last) {
                last = v;
                pong.value.store(v, std::memory_order_release);
            }
        }
    });
    double result = -1.0;
    const auto give_up = clock::now() + std::chrono::seconds(1) + std::chrono::duration<double>(seconds);
    while (helper_state.load(std::memory_order_acquire) == 0 && clock::now() < give_up) std::this_thread::yield();
    if (helper_state.load(std::memory_order_acquire) == 1 && pin_to(cpu_a)) {
        const auto start = clock::now();
        const auto until = start + std::chrono::duration<double>(seconds);
        int64_t n = 0;
        bool answered = true;
        while (answered && clock::now() < until) {
            for (int i = 0; i < 256 && answered; ++i) {
                ping.value.store(++n, std::memory_order_release);
                for (uint32_t spins = 0; pong.value.load(std::memory_order_acquire) != n; ++spins) {
                    if ((spins & 0xFFFF) == 0xFFFF && clock::now() > give_up) {
                        answered = false;
                        break;
                    }
                }
            }
        }
        const double ns = std::chrono::duration<double, std::nano>(clock::now() - start).count();
        if (answered && n > 0) result = ns / static_cast<double>(n);
    }
    stop.store(true, std::memory_order_relaxed);
    helper.join();
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    return result;
}
#else
double cpu_pair_round_trip_ns(int, int, double) { return -1.0; }
#endif

}  // namespace qrt
