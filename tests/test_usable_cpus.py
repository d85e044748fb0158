"""The default thread count (kernels/core/threads.usable_cpus): the affinity mask, capped by the
cgroup CPU quota (v2 cpu.max, v1 cfs quota / period), rounded up, at least 1."""
from __future__ import annotations

import os

import pytest

from kernels.core import threads


@pytest.fixture
def affinity(monkeypatch):
    def set_cpus(n):
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return set_cpus


def _write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("files, cpus, want", [
    ({}, 8, 8),                                                   # no cgroup files: the affinity mask
    ({"cpu.max": "max 100000\n"}, 8, 8),                          # v2, unlimited
    ({"cpu.max": "200000 100000\n"}, 8, 2),                       # v2, 2 CPUs of quota
    ({"cpu.max": "150000 100000\n"}, 8, 2),                       # 1.5 CPUs: rounded up
    ({"cpu.max": "50000 100000\n"}, 8, 1),                        # half a CPU: at least 1
    ({"cpu.max": "400000 100000\n"}, 3, 3),                       # quota above the mask: the mask
    ({"cpu.cfs_quota_us": "300000", "cpu.cfs_period_us": "100000"}, 16, 3),   # v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 4, 4),  # v1 unlimited
    ({"cpu.max": "garbage"}, 4, 4),                               # unreadable: ignored
])
def test_usable_cpus(tmp_path, affinity, files, cpus, want):
    for name, text in files.items():
        _write(tmp_path, name, text)
    affinity(cpus)
    assert threads.usable_cpus(str(tmp_path)) == want


def test_usable_cpus_on_this_machine():
    n = threads.usable_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))


def test_session_default_threads_follow_usable_cpus(monkeypatch):
    import runtime
    from tests import model_zoo
    graph = runtime.convert(model_zoo.small_mlp_onnx())
    monkeypatch.setattr("runtime.session.usable_cpus", lambda: 1)
    assert runtime.InferenceSession(graph).threads == 1
    assert runtime.InferenceSession(graph, threads=3).threads == 3


# --- the OpenMP wait policy (configure_openmp / openmp_may_spin) ------------------------------

MAPS_WITH_GOMP = "7f00-7f10 r-xp 0 08:01 1 /site-packages/torch/lib/libgomp.so.1\n"
MAPS_WITHOUT = "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"


@pytest.mark.parametrize("maps, env, spins", [
    (MAPS_WITHOUT, {}, False),                                 # qrt sets the policy first
    (MAPS_WITH_GOMP, {}, True),                                # a libgomp started with its default
    (MAPS_WITH_GOMP, {"OMP_WAIT_POLICY": "passive"}, False),   # ... but the user chose passive
    (MAPS_WITH_GOMP, {"GOMP_SPINCOUNT": "1000"}, False),       # ... or a spin count
    (MAPS_WITHOUT, {"OMP_WAIT_POLICY": "ACTIVE"}, True),       # active waiting asked for
    (None, {}, False),                                         # no /proc (not Linux): unknown
])
def test_openmp_may_spin(tmp_path, monkeypatch, maps, env, spins):
    monkeypatch.setattr(threads, "_openmp_spins", [])
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "maps"
    if maps is not None:
        path.write_text(maps)
    threads.configure_openmp(str(path))
    assert threads.openmp_may_spin() is spins
    # the user's values win; qrt's fill the rest
    assert os.environ["OMP_WAIT_POLICY"] == env.get("OMP_WAIT_POLICY", "PASSIVE")
    assert os.environ["GOMP_SPINCOUNT"] == env.get("GOMP_SPINCOUNT", "10000")
    threads.configure_openmp(MAPS_WITH_GOMP)      # decided once, by the first call
    assert threads.openmp_may_spin() is spins
