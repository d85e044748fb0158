"""Which machine this is: the CPU's name and ISA flags (from /proc/cpuinfo), and the machine key
under which measurements (the planner's cache, benchmark reports) are stored.

Backends choose their code paths from their own probes (the native extension's cpuid, numba's
LLVM target); this module only names the machine, once, for everything that records or caches
what was measured on it. Linux only for the details: elsewhere the name comes from ``platform``
and the flag list is empty (the key still separates machines by name and core count).
"""
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
    """The first "flags" line's flags: every core of a machine reports the same ISA flags (hybrid
    Intel parts disable AVX-512 on all cores alike), and Linux hides the flags whose register
    state the OS does not enable, so a listed flag is usable."""
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
    """12 hex digits of sha1 over what decides kernel speed and cannot change under a running
    process (CPU model, ISA, core count, thread count, forced code paths), never measured
    numbers or package versions: two runs on one machine find the same cache entry although
    their timings differ by noise. Arguments left None are this machine's own. A forced path
    enters the hash only when there is one, so unforced keys stay as they were."""
    parts = [cpu_name() if cpu is None else cpu, sorted(isa_flags() if isa is None else isa),
             int(os.cpu_count() or 1) if logical_cores is None else int(logical_cores), int(threads)]
    forced = forced_paths() if forced is None else forced
    if forced:
        parts.append(sorted(forced.items()))
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:12]
