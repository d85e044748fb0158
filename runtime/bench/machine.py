"""What machine a benchmark ran on: the fingerprint stored with every result, and the
OpenBLAS re-exec that gives numpy's fp32 baseline its best kernel.

fingerprint(threads) is cheap with measure=False (no timing; a few ms of probing) and is then
only a description plus ``key``, the cache key for per-machine measurements. ``key`` hashes
what decides kernel speed and cannot change under a running process (CPU model, ISA, core
count, thread count), never measured numbers or package versions: two runs on the same machine
must find the same cache entry even though their peaks differ by noise.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import sys
import threading
import time

from kernels import registry
from kernels.core import cpu as cpu_id
from runtime import available_backends

# Environment variables with which OpenBLAS picks a slower kernel or blocking on some machines
# (the design card, "Benchmarks"); a fair fp32 baseline runs without them.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Set by openblas_reexec in the re-executed process: "VAR=value,..." of what it removed.
UNSET_ENV = "QRT_BENCH_UNSET"

# Optional packages whose versions are recorded: module name -> distribution names to ask
# importlib.metadata (cheap: reading a METADATA file, where importing torch takes seconds).
OPTIONAL_PACKAGES = {
    "numba": ("numba",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch": ("torch",),
    "triton": ("triton",),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
}

PEAK_SECONDS = 0.3
BANDWIDTH_BYTES = 64 * 1024 * 1024   # well past any L3, so the copy streams from DRAM
BANDWIDTH_REPEATS = 5



PEAKS_FILE = "peaks.json"    # in runtime.planner.cache_dir(): measured peaks per machine key
# The version of csrc/peak_probe.cpp's loops: a cached entry of another version is measured
# again. 2 (2026-12-04): the AVX2 int8 loop no longer keeps an accumulator in memory, which had
# halved its rate (97 -> 188 GOP/s per Zen 3 core). 3 (2026-12-06): the int8 loop is the int8
# path's own instruction, TDPBUSD on an AMX machine (15 TOP/s on 2 Xeon vCPUs, not vpdpbusd's 2).
PEAK_PROBE_VERSION = 3


def fingerprint(threads: int, measure: bool = True, remeasure: bool = False) -> dict:
    """Describe this machine for a benchmark run on ``threads`` threads.

    measure=True also gives the int8/fp32 peaks and the memory bandwidth: measured once per
    machine key (about 1.2 s) and then read from the cache file PEAKS_FILE (remeasure=True
    measures again and replaces the entry; "peaks"["source"] says which); measure=False leaves
    them None, for a fast cache key. The dict is JSON-serialisable; see the module docstring
    for what "key" depends on.
    """
    threads = max(1, int(threads))
    cpu, isa, cores, forced = cpu_id.cpu_name(), cpu_id.isa_flags(), os.cpu_count() or 1, cpu_id.forced_paths()
    key = cpu_id.machine_key(threads, cpu, isa, cores, forced)
    peaks, bandwidth = (_cached_peaks(threads, key, remeasure) if measure
                        else (_no_peaks("not measured (measure=False)"), None))
    import numpy as np
    return {
        "cpu": cpu,
        "isa": isa,
        "logical_cores": cores,
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_summary(),
        "openblas_env": openblas_env(),
        "versions": package_versions(),
        "backends": _backends(),
        "peaks": peaks,
        "mem_bw_gbs": bandwidth,
        "forced_paths": forced,
        "key": key,
    }


def _cached_peaks(threads: int, key: str, remeasure: bool) -> tuple[dict, float | None]:
    """(peaks, bandwidth) for this machine key: from the cache file unless remeasure or absent
    or unreadable (then measured and written back, atomically; a cache that cannot be written
    only costs the next run a measurement)."""
    from ..format import atomic_write
    from ..planner import cache_dir
    path = cache_dir() / PEAKS_FILE
    try:
        entries = json.loads(path.read_text())
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    hit = entries.get(key)
    if not remeasure and isinstance(hit, dict) and isinstance(hit.get("peaks"), dict) \
            and isinstance(hit.get("mem_bw_gbs"), (int, float)) and hit.get("probe") == PEAK_PROBE_VERSION:
        peaks = dict(hit["peaks"])
        peaks["source"] = f"cached in {path} (measured {hit.get('measured', '?')}; qrt bench --remeasure-peaks)"
        return peaks, float(hit["mem_bw_gbs"])
    busy = busy_warning(threads)
    peaks, bandwidth = measure_peaks(threads), copy_bandwidth_gbs(threads)
    if busy:       # a peak probed beside other work is low: use it this once, cache nothing
        peaks["source"] = f"{peaks.get('source', '')}; not cached: {busy}"
    elif peaks.get("int8_gops") is not None or peaks.get("fp32_gflops") is not None:
        entries[key] = {"peaks": peaks, "mem_bw_gbs": bandwidth, "probe": PEAK_PROBE_VERSION,
                        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        text = json.dumps(entries, indent=1).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(text))
        except OSError:
            pass
    return peaks, bandwidth


def forget_peaks(key: str | None) -> None:
    """Remove this machine's cached peaks (they were found wrong), so the next run measures."""
    from ..format import atomic_write
    from ..planner import cache_dir
    path = cache_dir() / PEAKS_FILE
    try:
        entries = json.loads(path.read_text())
        if isinstance(entries, dict) and entries.pop(key, None) is not None:
            text = json.dumps(entries, indent=1).encode()
            atomic_write(path, lambda f: f.write(text))
    except (OSError, ValueError):
        pass


def busy_warning(threads: int) -> str | None:
    """A warning when the machine is already busy (1-minute load average at or above half the
    threads the benchmark will use), else None: measured ratios then say little."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load >= 0.5 * max(1, threads):
        return (f"the machine is busy before the benchmark: load average {load:.2f} for {threads} thread(s); "
                f"timings and ratios include that load")
    return None


def blas_summary() -> str:
    """Which BLAS numpy runs: threadpoolctl's view of the loaded library (the kernel it picked
    for this CPU), else numpy's build configuration."""
    import numpy as np
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        rows = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')}, "
                f"{i.get('num_threads')} threads, {os.path.basename(i.get('filepath', ''))})"
                for i in threadpool_info() if i.get("user_api") == "blas"]
        if rows:
            return "; ".join(rows)
    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    except TypeError:       # numpy < 1.25 has no mode="dicts"
        blas = {}
    return (f"{blas.get('name', '?')} {blas.get('version', '')} "
            "(numpy build config; install threadpoolctl for the kernel)")


def openblas_env() -> str:
    """Whether OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE apply to this process."""
    unset = os.environ.get(UNSET_ENV)
    if unset:
        return f"unset for this process ({unset})"
    present = [f"{v}={os.environ[v]}" for v in OPENBLAS_VARS if v in os.environ]
    return f"set: {', '.join(present)}" if present else "not set"


def package_versions() -> dict[str, str | None]:
    """{"qrt": version or "dev", and each OPTIONAL_PACKAGES name: version or None}."""
    versions: dict[str, str | None] = {"qrt": _dist_version(("qrt",)) or "dev"}
    for module, dists in OPTIONAL_PACKAGES.items():
        # A distribution left behind without its module (a broken uninstall) counts as absent.
        found = importlib.util.find_spec(module) is not None
        versions[module] = _dist_version(dists) if found else None
    return versions


def measure_peaks(threads: int, seconds: float = PEAK_SECONDS) -> dict:
    """The int8 (vpdpbusd) and fp32 (FMA) register-only peaks on ``threads`` threads, from the
    native extension; None values with the reason in "source" where it cannot measure."""
    reason = registry.backend_status("native")
    if reason is not None:
        return _no_peaks(f"unavailable: {reason}")
    native = registry.backend_module("native")
    try:
        p = native.measure_peaks(threads, seconds=seconds)
    except (RuntimeError, ValueError) as e:
        return _no_peaks(f"unavailable: {e}")
    return {"int8_gops": p.get("int8_gops"), "fp32_gflops": p.get("fp32_gflops"),
            "threads": p.get("threads", threads), "int8_isa": p.get("int8_isa"),
            "fp32_isa": p.get("fp32_isa"),
            "source": f"kernels.native_cpu.measure_peaks(threads={threads}, seconds={seconds})"}


# A round trip between the two CPUs a benchmark's threads run on above this (ns) says they do
# not share an L3 now: on a VM, the host has put them on two CCDs or sockets, and every call
# that hands work to a second thread is slower (RESULTS.md, "The two vCPUs are near, then far":
# ~110 ns near, ~500 far, moving within seconds).
FAR_CPU_PAIR_NS = 300.0


def cpu_pair_latency(seconds: float = 0.05) -> dict | None:
    """{"cpus": [a, b], "ns": round trip} for the first two CPUs this process may use
    (kernels.native_cpu.cpu_pair_round_trip_ns), or None: one CPU, no native extension, or
    not measurable."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or registry.backend_status("native") is not None:
        return None
    ns = registry.backend_module("native").cpu_pair_round_trip_ns(cpus[0], cpus[1], seconds)
    return None if ns is None else {"cpus": cpus[:2], "ns": round(ns, 1)}


def describe_cpu_pair(before: dict | None, after: dict | None) -> tuple[str | None, str | None]:
    """(a line, a warning or None) for cpu_pair_latency() measured before and after timing."""
    probes = [p for p in (before, after) if p]
    if not probes:
        return None, None
    a, b = probes[0]["cpus"]
    if before and after:
        ns = f"{before['ns']:.0f} ns before, {after['ns']:.0f} ns after"
    else:
        ns = f"{probes[0]['ns']:.0f} ns"
    line = f"CPUs {a} and {b}, one cache line's round trip: {ns}"
    worst = max(p["ns"] for p in probes)
    if worst <= FAR_CPU_PAIR_NS:
        return line, None
    return line, (f"CPUs {a} and {b} were far apart ({worst:.0f} ns a round trip, above {FAR_CPU_PAIR_NS:.0f}: "
                  "no shared L3, e.g. a VM's vCPUs on two CCDs of the host); calls on two threads are slower "
                  "than when near, so the ratios of this run may differ from a run in another state")


def copy_bandwidth_gbs(threads: int) -> float:
    """Memory bandwidth in GB/s: np.copyto of a 64 MiB float32 array split over ``threads``
    Python threads (numpy releases the GIL while copying, and one core alone cannot saturate
    DRAM), best of BANDWIDTH_REPEATS, counting the bytes read plus the bytes written."""
    import numpy as np
    src = np.ones(BANDWIDTH_BYTES // 4, dtype=np.float32)   # (16 Mi,) float32
    dst = np.empty_like(src)
    np.copyto(dst, src)                                      # fault the pages in, untimed
    bounds = np.linspace(0, src.size, max(1, threads) + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in itertools.pairwise(bounds)]
    best = float("inf")
    for _ in range(BANDWIDTH_REPEATS):
        workers = [threading.Thread(target=np.copyto, args=part) for part in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def openblas_reexec(argv: list[str] | None = None) -> None:
    """Re-execute this process without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, if either is set.

    For benchmark processes only, never tests or CI: those must run in the environment they
    were given. Call it before numpy first loads OpenBLAS (OpenBLAS reads the variables once,
    at load). The new process finds UNSET_ENV = "VAR=value,..." naming what was removed, which
    openblas_env() reports. Returns only when nothing is set; otherwise it does not return.

    argv: the arguments after the interpreter (default: how this interpreter was started,
    sys.orig_argv[1:], so that "python -m runtime.cli bench" and "python -X ... script.py"
    come back the same; a console-script wrapper in argv[0] is a Python file, so
    ``python wrapper args`` runs it as the wrapper did).
    """
    if not any(v in os.environ for v in OPENBLAS_VARS):
        return
    if argv is None:
        argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:])
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    env[UNSET_ENV] = ",".join(f"{v}={os.environ[v]}" for v in OPENBLAS_VARS if v in os.environ)
    # execve replaces the process: anything still buffered would be lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)


def cpu_class(isa: list[str]) -> str:
    """The int8 class of a CPU from its ISA flags, as qrt's kernels see it: which int8 code
    path runs, the first thing that decides its speed."""
    have = set(isa)
    if "amx_int8" in have and "avx512_vnni" in have:
        return "AMX-INT8 + AVX-512 VNNI"
    if "avx512_vnni" in have:
        return "AVX-512 VNNI"
    if "avx_vnni" in have:
        return "AVX-VNNI (256-bit), no AVX-512"
    if "avx2" in have:
        return "AVX2" + (" + FMA" if "fma" in have else "") + ", no AVX-512, no VNNI"
    return "no AVX2 (scalar int8 kernels)"


def describe(fp: dict) -> list[str]:
    """Human-readable lines for a fingerprint (tolerates missing fields from older results)."""
    versions = fp.get("versions") or {}
    backends = fp.get("backends") or {}
    return [
        (f"CPU: {fp.get('cpu', '?')}, {fp.get('logical_cores', '?')} logical cores, "
         f"{fp.get('threads', '?')} threads used"),
        f"ISA: {' '.join(fp.get('isa') or []) or 'none of interest'}"
        + "".join(f"; forced {k}={v}" for k, v in (fp.get("forced_paths") or {}).items()),
        f"OS: {fp.get('os', '?')}; Python {fp.get('python', '?')}, numpy {fp.get('numpy', '?')}",
        f"BLAS: {fp.get('blas', '?')}",
        f"OpenBLAS env: {fp.get('openblas_env', '?')}",
        _describe_peaks(fp.get("peaks")),
        _describe_bandwidth(fp.get("mem_bw_gbs"), fp.get("threads")),
        "Versions: " + ", ".join(f"{name} {v}" if v else f"{name} not installed"
                                 for name, v in versions.items()),
        "Backends: " + ", ".join(f"{name} ok" if why is None else f"{name} unavailable ({why})"
                                 for name, why in backends.items()),
        f"Machine key: {fp.get('key', '?')}",
    ] + _pair_lines(fp.get("cpu_pair")) + ([f"**Warning:** {fp['busy_warning']}"] if fp.get("busy_warning") else [])


def _pair_lines(pair: dict | None) -> list[str]:
    if not pair:
        return []
    line, warning = describe_cpu_pair(pair.get("before"), pair.get("after"))
    return ([line] if line else []) + ([f"**Warning:** {warning}"] if warning else [])


def _describe_peaks(peaks: dict | None) -> str:
    if not peaks or (peaks.get("int8_gops") is None and peaks.get("fp32_gflops") is None):
        source = (peaks or {}).get("source", "not measured")
        return f"Peaks: {source}"
    parts = []
    if peaks.get("int8_gops") is not None:
        parts.append(f"int8 {peaks['int8_gops']:.0f} GOP/s ({peaks.get('int8_isa')})")
    else:
        parts.append("int8: no VNNI")
    if peaks.get("fp32_gflops") is not None:
        parts.append(f"fp32 {peaks['fp32_gflops']:.0f} GFLOP/s ({peaks.get('fp32_isa')})")
    return f"Peaks on {peaks.get('threads', '?')} threads: {', '.join(parts)}"


def _describe_bandwidth(gbs: float | None, threads) -> str:
    if gbs is None:
        return "Memory bandwidth: not measured"
    return (f"Memory bandwidth: {gbs:.1f} GB/s (np.copyto of 64 MiB on {threads} threads, "
            "read + write bytes)")


def _no_peaks(source: str) -> dict:
    return {"int8_gops": None, "fp32_gflops": None, "threads": None, "int8_isa": None,
            "fp32_isa": None, "source": source}


def _backends() -> dict[str, str | None]:
    return available_backends()


def _dist_version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
