"""QRT_NUMBA_ISA (kernels/numba_cpu/isa.py): the numba backend compiled for a smaller CPU than
this one, or refused with the reason. Each case runs in a fresh interpreter, since numba
fixes its target at its first compilation."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# compiles a loop LLVM vectorises, and reports the target, the paths and the widest register
_PROBE = r"""
import numpy as np
from kernels import registry
print("status:", registry.backend_status("numba"))
from kernels.numba_cpu import isa, sparse, vnni
import numba

@numba.njit
def dot(a, b):
    s = 0.0
    for i in range(a.size):
        s += a[i] * b[i]
    return s

dot(np.ones(64), np.ones(64))
asm = next(iter(dot.inspect_asm().values()))
print("target:", numba.config.CPU_NAME, "vnni:", vnni.has_vnni(), "vnni256:", vnni.has_vnni256(), "vbmi:", isa.has_vbmi(),
      "ell:", sparse.USE_ELL, "zmm:", "zmm" in asm, "ymm:", "ymm" in asm)
"""


def _run(code: str, **env) -> str:
    full = {**os.environ, **env}
    for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"):
        if k not in env:
            full.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_avx2_compiles_for_an_avx2_cpu():
    out = _run(_PROBE, QRT_NUMBA_ISA="avx2")
    assert "status: None" in out, out
    assert "target: haswell vnni: False vnni256: False vbmi: False ell: False zmm: False ymm: True" in out, out


def test_avx_vnni_compiles_for_an_alder_lake_cpu():
    """AVX2 + AVX-VNNI, no AVX-512: the 256-bit vpdpbusd tile, LLVM's own loops on ymm; refused
    with the reason where this CPU has no AVX-VNNI."""
    import llvmlite.binding as llb
    out = _run(_PROBE, QRT_NUMBA_ISA="avx_vnni")
    if not llb.get_host_cpu_features().get("avxvnni", False):
        assert "status: QRT_NUMBA_ISA=avx_vnni: this CPU has no AVX-VNNI" in out, out
        return
    assert "status: None" in out, out
    assert "target: alderlake vnni: False vnni256: True vbmi: False ell: False zmm: False ymm: True" in out, out


def test_generic_compiles_for_baseline_x86_64():
    out = _run(_PROBE, QRT_NUMBA_ISA="generic")
    assert "status: None" in out, out
    assert "target: generic vnni: False vnni256: False vbmi: False ell: False zmm: False ymm: False" in out, out


def test_auto_is_numbas_own_target():
    out = _run(_PROBE, QRT_NUMBA_ISA="auto")
    assert "status: None" in out and "target: None" in out, out


@pytest.mark.parametrize("env, fragment", [
    ({"QRT_NUMBA_ISA": "avx9"}, "QRT_NUMBA_ISA=avx9: unknown numba target; expected one of auto, avx512_vnni, avx_vnni, avx2, generic"),
    ({"QRT_NUMBA_ISA": "avx2", "NUMBA_CPU_NAME": "znver3"}, "QRT_NUMBA_ISA=avx2 conflicts with NUMBA_CPU_NAME=znver3"),
])
def test_bad_values_make_the_backend_unavailable_with_the_reason(env, fragment):
    out = _run("import runtime; print(runtime.available_backends()['numba'])", **env)
    assert fragment in out, out


def test_set_after_numba_compiled_is_refused():
    """numba's target is fixed by its first compilation: a switch that comes later would be a
    lie, so the backend says so instead of running code compiled for this CPU."""
    code = ("import os, numba\n"
            "numba.njit(lambda x: x + 1)(1)\n"
            "os.environ['QRT_NUMBA_ISA'] = 'avx2'\n"
            "from kernels import registry\n"
            "print(registry.backend_status('numba'))\n")
    out = _run(code)
    assert "QRT_NUMBA_ISA=avx2 was set after numba compiled code for another CPU" in out, out


def test_avx512_vnni_needs_the_cpu_to_have_it():
    import llvmlite.binding as llb
    has = all(llb.get_host_cpu_features().get(f, False) for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni"))
    out = _run("import runtime; print(runtime.available_backends()['numba'])", QRT_NUMBA_ISA="avx512_vnni")
    assert ("None" in out) if has else ("this CPU has no AVX-512 VNNI" in out), out
