"""Which instruction set the numba backend compiles for, and the switch that caps it.

numba compiles every kernel for one LLVM target: by default this CPU ("host"), else the CPU
named by numba's own NUMBA_CPU_NAME / NUMBA_CPU_FEATURES. qrt's hand-emitted instructions
(vpdpbusd in vnni.py and sparse.py, vpermi2b in sparse.py) may be used only where that target
has them, and the loops LLVM vectorises itself follow the same target. So the target is the
one source of truth here: ``target_features()`` reads it, and ``has_vnni()`` / ``has_vbmi()``
are answered from it (and from the CPU, which must be able to run what is compiled).

QRT_NUMBA_ISA, the numba twin of the native backend's QRT_NATIVE_ISA, sets that target for
the process, so that one machine can run the backend as a smaller CPU would (tests, CI's
forced-ISA step, benchmarks):

    auto         the default: numba's target (this CPU unless NUMBA_CPU_NAME says otherwise)
    avx512_vnni  this CPU, which must have AVX-512 VNNI (else the backend is unavailable)
    avx_vnni     an Intel client CPU from Alder Lake on (AVX2 + AVX-VNNI, no AVX-512; LLVM's
                 "alderlake"): the 256-bit vpdpbusd int8 tile in its VEX form, as on such a
                 machine; this CPU must have AVX-VNNI
    avx2         an AVX2 + FMA CPU without AVX-512 (LLVM's "haswell": what every AVX2 machine,
                 Intel or AMD Zen 1-3, can run): the portable int8 GEMM and the ValueGroups sparse
                 path, vectorised by LLVM for 256-bit registers, as on such a machine
    generic      baseline x86-64 (SSE2): the portable IR everywhere

It translates to NUMBA_CPU_NAME and NUMBA_CPU_FEATURES, which numba reads when it sets up
its code generator, i.e. before its first compilation in the process: ``apply_env()`` runs
when kernels.numba_cpu is imported, and if numba has already compiled something for another
target in this process the switch cannot take effect and the backend is reported unavailable
with that reason instead of silently running the wrong code. A value this CPU cannot run
makes the backend unavailable too. Compiled code is cached per target (numba keys its cache on
the CPU name and features), so switching never reuses code compiled for another target.
"""
from __future__ import annotations

import functools
import os

from kernels.core import config

ENV = "QRT_NUMBA_ISA"
VALUES = ("auto", "avx512_vnni", "avx_vnni", "avx2", "generic")

# QRT_NUMBA_ISA -> (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES) for the targets that are not this CPU.
# Haswell's features are listed explicitly (not left to the CPU name) because numba passes the
# host's features when NUMBA_CPU_FEATURES is unset, which would bring AVX-512 back.
_HASWELL = "+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe"
_TARGETS = {
    "avx2": ("haswell", _HASWELL + ",-avx512f"),
    "avx_vnni": ("alderlake", _HASWELL + ",+avxvnni,-avx512f"),
    "generic": ("generic", ""),
}

# The LLVM feature names the hand-emitted instructions need.
_VNNI = ("avx512f", "avx512bw", "avx512vl", "avx512vnni")
_VBMI = ("avx512f", "avx512bw", "avx512vbmi")
_AVX2 = ("avx2",)
_AVX_VNNI = ("avx2", "avxvnni")

_error: str | None = None


def requested() -> str:
    """The QRT_NUMBA_ISA value ("auto" when unset or empty)."""
    return config.get(ENV) or "auto"


def apply_env() -> str | None:
    """Point numba's target at QRT_NUMBA_ISA (module docstring). Returns, and remembers for
    ``error()``, why that cannot be done here, or None."""
    global _error
    _error = _apply(requested())
    return _error


def error() -> str | None:
    """Why the last ``apply_env()`` failed, or None."""
    return _error


def _apply(value: str) -> str | None:
    if value not in VALUES:
        return f"{ENV}={value}: unknown numba target; expected one of {', '.join(VALUES)}"
    if value == "auto":
        return None
    if value == "avx512_vnni":
        if not _host_has(_VNNI):
            return f"{ENV}=avx512_vnni: this CPU has no AVX-512 VNNI"
        return None
    if value == "avx_vnni" and not _host_has(("avxvnni",)):
        return f"{ENV}=avx_vnni: this CPU has no AVX-VNNI"
    from numba.core import config
    cpu, features = _TARGETS[value]
    if (config.CPU_NAME, config.CPU_FEATURES) == (cpu, features):
        return None
    user = os.environ.get("NUMBA_CPU_NAME")
    if user not in (None, cpu):
        return f"{ENV}={value} conflicts with NUMBA_CPU_NAME={user}; set one of them"
    if _numba_has_compiled():
        return (f"{ENV}={value} was set after numba compiled code for another CPU in this process; "
                "set it in the environment before the process starts")
    os.environ["NUMBA_CPU_NAME"], os.environ["NUMBA_CPU_FEATURES"] = cpu, features
    config.reload_config()
    if (config.CPU_NAME, config.CPU_FEATURES) != (cpu, features):
        return f"{ENV}={value}: numba did not take NUMBA_CPU_NAME={cpu}"
    return None


def _numba_has_compiled() -> bool:
    """Whether numba's CPU code generator exists yet (it is created, with the target read from
    the config, on the first compilation)."""
    from numba.core.registry import cpu_target
    return "_toplevel_target_context" in vars(cpu_target)


def target_features() -> dict[str, bool]:
    """The LLVM features numba compiles for: NUMBA_CPU_FEATURES if set, none for an explicit
    non-host NUMBA_CPU_NAME without features (e.g. 'generic' for portable caches), else the
    host's."""
    from numba.core import config
    if config.CPU_FEATURES:
        return {f[1:]: f[0] == "+" for f in config.CPU_FEATURES.split(",") if f}
    if config.CPU_NAME not in (None, "host"):
        return {}
    return dict(_host_features())


@functools.lru_cache(maxsize=1)
def _host_features() -> tuple[tuple[str, bool], ...]:
    # The CPU does not change under a running process: ask LLVM once (has_vnni() is asked
    # for every int8 layer a session plans).
    import llvmlite.binding as llb
    return tuple(llb.get_host_cpu_features().items())


def _host_has(names: tuple[str, ...]) -> bool:
    host = dict(_host_features())
    return all(host.get(f, False) for f in names)


def target_has(names: tuple[str, ...]) -> bool:
    """Whether the compile target has every LLVM feature in ``names`` (and so does this CPU:
    a target wider than the CPU would compile code that cannot run)."""
    f = target_features()
    return all(f.get(n, False) for n in names) and _host_has(names)


def has_vnni() -> bool:
    """vpdpbusd (AVX-512 VNNI on zmm) may be emitted."""
    return target_has(_VNNI)


def has_vnni256() -> bool:
    """vpdpbusd on ymm may be emitted: AVX-VNNI (VEX), or AVX-512 VNNI with VL (EVEX), where
    LLVM emits the same intrinsic in that encoding (so the 256-bit tile also runs, and is
    tested, on AVX-512 VNNI machines)."""
    return target_has(_AVX_VNNI) or target_has(_VNNI)


def has_avx2() -> bool:
    """vpmaddubsw / vpsignb on ymm (the AVX2 int8 tile, vnni.py) may be emitted."""
    return target_has(_AVX2)


def has_vbmi() -> bool:
    """vpermi2b (AVX-512 VBMI) may be emitted."""
    return target_has(_VBMI)


def describe() -> str:
    """One line for logs and test headers: the target and the hand-emitted paths it allows."""
    from numba.core import config
    cpu = config.CPU_NAME or "host"
    return f"target {cpu} ({ENV}={requested()}), vnni={'yes' if has_vnni() else 'no'}, " \
           f"vnni256={'yes' if has_vnni256() else 'no'}, avx2={'yes' if has_avx2() else 'no'}, " \
           f"vbmi={'yes' if has_vbmi() else 'no'}"
