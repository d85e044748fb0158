"""Which machine this is (CPU name and ISA flags from /proc/cpuinfo), and the key under which
measurements are stored (the planner's cache, benchmark reports). Backends pick code paths from
their own probes (cpuid, numba's LLVM target). Elsewhere than Linux: the name from ``platform``,
no flags."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform

from . import config

CPUINFO = "/proc/cpuinfo"

# ISA features that change which int8/fp32 kernel can run: qrt's name -> /proc/cpuinfo flag.
ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512dq": "avx512dq",
    "avx512_vnni": "avx512_vnni",
    "avx512_vbmi": "avx512vbmi",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


@functools.lru_cache(maxsize=1)
def read_cpuinfo() -> str | None:
    """/proc/cpuinfo's text (read once: the CPU does not change under a process), or None."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def cpuinfo_flags(text: str | None = None) -> set[str]:
    """The first "flags" line's flags (every core reports the same; Linux hides the flags whose
    register state the OS does not enable, so a listed flag is usable)."""
    for line in (read_cpuinfo() if text is None else text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_name(text: str | None = None) -> str:
    """The CPU model name, e.g. "AMD EPYC 7B13 64-Core Processor"."""
    for line in (read_cpuinfo() if text is None else text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def isa_flags() -> list[str]:
    """Sorted ISA_FLAGS names this CPU (and OS) supports."""
    flags = cpuinfo_flags()
    return sorted(name for name, flag in ISA_FLAGS.items() if flag in flags)


def forced_paths() -> dict[str, str]:
    """The config.FORCED_PATH_VARS set in this process, {name: value}."""
    return {name: config.get(name) for name in config.FORCED_PATH_VARS if config.get(name)}


def machine_key(threads: int, cpu: str | None = None, isa: list[str] | None = None,
                logical_cores: int | None = None, forced: dict[str, str] | None = None) -> str:
    """12 hex digits of sha1 over what decides kernel speed and cannot change under a process
    (CPU model, ISA, cores, threads, forced code paths; None: this machine's), never measured
    numbers or versions, so two runs on one machine share their cache entries."""
    parts = [cpu_name() if cpu is None else cpu, sorted(isa_flags() if isa is None else isa),
             int(os.cpu_count() or 1) if logical_cores is None else int(logical_cores), int(threads)]
    forced = forced_paths() if forced is None else forced
    if forced:
        parts.append(sorted(forced.items()))
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:12]
