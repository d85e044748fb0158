"""Run a benchmark as if the CPU had fewer ISA extensions (cpuid masked), for every library.

    python benchmarks/as_cpu.py avx2 benchmarks/bench_int8_linear.py [ARGS...]
    python benchmarks/as_cpu.py avx_vnni -m runtime.cli bench --gemm --quick
    python benchmarks/as_cpu.py avx2 --check        # print what qrt and numpy now see

Classes: avx2 (AVX2 + FMA, no AVX-512, no VNNI, no AMX: a Zen 3 / Haswell-to-Skylake client),
avx_vnni (AVX2 + 256-bit AVX-VNNI, no AVX-512, no AMX: an Intel Alder Lake / Raptor Lake client),
avx512_vnni (AVX-512 with VNNI, no AMX: Ice Lake / Cascade Lake servers, AMD Zen 4).

Why: onnxruntime's MLAS picks AMX on a Sapphire Rapids class Xeon, so qrt's AVX2 and AVX-VNNI
paths could not be compared with onnxruntime's on such a machine. Here cpuid itself is masked
(benchmarks/cpuid_mask.c: Linux makes cpuid fault, a signal handler answers it with the class's
bits cleared) before numpy, OpenBLAS, numba, onnxruntime or qrt load, so each picks the kernels it
would pick on that class, on the same cores, in the same process. The cores stay what they are:
on a Golden Cove Xeon, avx_vnni is close to an Alder Lake P-core (the same core design, other
caches); avx2 is an AVX2 machine built from Intel server cores, not a Zen 3. Say so with every
figure.

Needs Linux with cpuid faulting (the "cpuid_fault" flag of /proc/cpuinfo) and a C compiler; the
library is compiled once into the user's cache folder. Benchmarks only: tests never mask cpuid.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernels.core import cpu as cpu_id  # noqa: E402  (imports no numpy)
from runtime.bench.machine import openblas_reexec  # noqa: E402  (imports no numpy)

MODES = {"avx2": 1, "avx_vnni": 2, "avx512_vnni": 3}
SOURCE = Path(__file__).with_name("cpuid_mask.c")
# /proc/cpuinfo flags the class lacks (cpuid_mask.c clears the same bits).
AMX_FLAGS = ("amx_",)
WIDE_FLAGS = ("avx512", "avx_ifma", "avx_vnni_int8", "avx_ne_convert", "avx10")
HIDDEN = {"avx2": WIDE_FLAGS + AMX_FLAGS + ("avx_vnni",), "avx_vnni": WIDE_FLAGS + AMX_FLAGS,
          "avx512_vnni": AMX_FLAGS}


def build_library() -> Path:
    """Compile cpuid_mask.c into ~/.cache/qrt (keyed by the source's hash) and return the path."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qrt"
    out = cache / f"cpuid_mask-{digest}.so"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cc = os.environ.get("CC", "cc")
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"as_cpu: compiling {SOURCE} with {cc} failed:\n{proc.stderr}")
        tmp.replace(out)  # atomic: a concurrent run never loads a half-written library
    return out


def mask(mode: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_library()))
    rc = lib.qrt_mask_cpuid(MODES[mode])
    if rc == -2:
        sys.exit("as_cpu: this kernel or CPU cannot make cpuid fault (arch_prctl ARCH_SET_CPUID); "
                 "look for 'cpuid_fault' in /proc/cpuinfo")
    if rc != 0:
        sys.exit(f"as_cpu: qrt_mask_cpuid({mode}) returned {rc}")
    lib.qrt_mask_cpuid_faults.restype = ctypes.c_long
    return lib


def mask_cpuinfo(mode: str) -> Path:
    """Point qrt's /proc/cpuinfo reader (machine key, CPU class, cached peaks) at a copy whose
    flags lines lack the class's hidden flags and whose model name says it is masked, so that
    benchmark reports and the peak cache never mix a masked run with the real machine."""
    text = cpu_id.read_cpuinfo() or ""
    lines = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            kept = [f for f in value.split() if not f.startswith(HIDDEN[mode])]
            line = f"{key}: {' '.join(kept)}"
        elif sep and key.strip() == "model name":
            line = f"{key}: {value.strip()} (cpuid masked to {mode})"
        lines.append(line)
    out = Path(tempfile.gettempdir()) / f"qrt-cpuinfo-{mode}-{os.getpid()}"
    out.write_text("\n".join(lines) + "\n")
    cpu_id.read_cpuinfo.cache_clear()
    cpu_id.CPUINFO = str(out)
    return out


def check(lib: ctypes.CDLL) -> None:
    """Print what qrt (its cpuid probe, its /proc/cpuinfo view, the int8 path it picks) and numpy
    see under the mask, and how many cpuid instructions the mask answered."""
    from kernels import native_cpu
    from kernels.native_cpu import _native
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as npf
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as npf
    feats = native_cpu.cpu_features()
    print("qrt native cpuid:", ", ".join(k for k, v in sorted(feats.items()) if v))
    print("qrt /proc/cpuinfo view:", cpu_id.cpu_name(), "|", " ".join(cpu_id.isa_flags()))
    print("qrt native int8 path:", _native.int8_isa())
    print("numpy:", ", ".join(k for k in ("AVX2", "AVX512F", "AVX512_ICL", "AVX512_SPR") if npf.get(k)))
    print("cpuid instructions emulated:", lib.qrt_mask_cpuid_faults())


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in MODES:
        print(__doc__)
        sys.exit(2 if len(sys.argv) < 2 or sys.argv[1] not in ("-h", "--help") else 0)
    # Benchmarks re-execute themselves without the OpenBLAS variables; execve would drop the
    # mask, so drop the variables first (this re-executes as_cpu.py itself when they are set).
    openblas_reexec()
    mode, rest = sys.argv[1], sys.argv[2:]
    lib = mask(mode)
    mask_cpuinfo(mode)
    if rest == ["--check"]:
        check(lib)
        return
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path.insert(0, str(Path(rest[0]).resolve().parent))
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
