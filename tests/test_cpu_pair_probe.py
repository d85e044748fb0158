"""How near two CPUs are (csrc/cpu_pair_probe.h) and how benchmarks report it
(runtime/bench/machine.py: cpu_pair_latency, describe_cpu_pair; `qrt bench`'s machine lines)."""
from __future__ import annotations

import os

import pytest

from kernels import registry
from runtime.bench import machine

_REASON = registry.backend_status("native")
native = pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}")
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
two_cpus = pytest.mark.skipif(len(_CPUS) < 2, reason="needs two CPUs in this process's affinity")


@native
@two_cpus
def test_round_trip_between_two_allowed_cpus_and_affinity_restored():
    from kernels.native_cpu import _native
    ns = _native.cpu_pair_round_trip_ns(_CPUS[0], _CPUS[1], 0.02)
    assert 0 < ns < 1e6                     # any state of the host: near ~100 ns, far ~500
    assert sorted(os.sched_getaffinity(0)) == _CPUS
    assert machine.cpu_pair_latency(0.02)["cpus"] == _CPUS[:2]


@native
def test_cpus_outside_the_affinity_or_bad_arguments():
    from kernels.native_cpu import _native
    outside = max(_CPUS) + 1 if _CPUS else 1
    if outside < 1024:
        assert _native.cpu_pair_round_trip_ns(_CPUS[0] if _CPUS else 0, outside, 0.01) == -1.0
    for a, b in ((0, 0), (-1, 1)):
        with pytest.raises(ValueError, match="two different CPU numbers"):
            _native.cpu_pair_round_trip_ns(a, b)
    for seconds in (0.0, -1.0, 11.0, float("nan")):
        with pytest.raises(ValueError, match="seconds must be"):
            _native.cpu_pair_round_trip_ns(0, 1, seconds)
    from kernels.native_cpu import cpu_pair_round_trip_ns
    if outside < 1024:
        assert cpu_pair_round_trip_ns(_CPUS[0] if _CPUS else 0, outside, 0.01) is None


def test_describe_near_far_and_missing():
    near, far = {"cpus": [0, 1], "ns": 110.0}, {"cpus": [0, 1], "ns": 520.0}
    line, warning = machine.describe_cpu_pair(near, near)
    assert line == "CPUs 0 and 1, one cache line's round trip: 110 ns before, 110 ns after" and warning is None
    line, warning = machine.describe_cpu_pair(near, far)
    assert "520 ns after" in line and "far apart (520 ns" in warning and "two CCDs" in warning
    assert machine.describe_cpu_pair(None, far)[0] == "CPUs 0 and 1, one cache line's round trip: 520 ns"
    assert machine.describe_cpu_pair(None, None) == (None, None)


def test_bench_machine_lines_carry_the_pair():
    fp = {"cpu": "x", "isa": [], "logical_cores": 2, "threads": 2, "key": "k",
          "cpu_pair": {"before": {"cpus": [0, 1], "ns": 480.0}, "after": {"cpus": [0, 1], "ns": 120.0}}}
    lines = machine.describe(fp)
    assert "CPUs 0 and 1, one cache line's round trip: 480 ns before, 120 ns after" in lines
    assert any(line.startswith("**Warning:** CPUs 0 and 1 were far apart") for line in lines)
    del fp["cpu_pair"]
    assert not any("round trip" in line for line in machine.describe(fp))
