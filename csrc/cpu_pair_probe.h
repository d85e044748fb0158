// How near two CPUs are now: the round trip of one cache line between two threads pinned to
// them. On a VM the host may place the two vCPUs on cores that share an L3 (measured ~100-130
// ns on the Zen 4 VMs of benchmarks/RESULTS.md) or on two CCDs (~480-930 ns), and moves them
// between the two states within seconds; every line two threads share then costs that much, so
// small parallel calls slow down 2-2.5x ("The two vCPUs are near, then far"). Benchmarks
// record it beside their timings (runtime/bench/machine.py, cpu_pair_latency).
#pragma once

namespace qrt {

// Nanoseconds per round trip, averaged over about `seconds` of them: the calling thread pinned
// to cpu_a (its affinity restored afterwards) and a helper thread pinned to cpu_b. -1 where it
// cannot be measured: not Linux, cpu_a == cpu_b, either CPU outside the process's affinity, a
// pin refused, or the helper not answering within a second (a CPU taken by other work).
double cpu_pair_round_trip_ns(int cpu_a, int cpu_b, double seconds);

}  // namespace qrt
