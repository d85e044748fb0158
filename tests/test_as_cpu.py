"""benchmarks/as_cpu.py: a benchmark run with cpuid masked to a smaller ISA class.

The tool exists so that qrt's AVX2 and AVX-VNNI paths can be compared with onnxruntime's on a
CPU that has more (onnxruntime takes AMX on a Sapphire Rapids class Xeon); its figures are only
worth anything if every library in the process really sees the masked class. Run in a
subprocess: the mask is per process and must be installed before numpy loads. Skipped where
Linux cannot make cpuid fault (no "cpuid_fault" flag) or there is no C compiler.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.core import cpu as cpu_id

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    "cpuid_fault" not in cpu_id.cpuinfo_flags() or shutil.which("cc") is None,
    reason="needs Linux cpuid faulting (the cpuid_fault flag) and a C compiler")


def _check(mode: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "as_cpu.py"), mode, "--check"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        lines[key.strip()] = value.strip()
    return lines


@pytest.mark.parametrize("mode, kept, hidden", [
    ("avx2", {"avx2", "fma"}, {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}),
    ("avx_vnni", {"avx2", "fma", "avx_vnni"}, {"avx512f", "avx512_vnni", "amx_int8"}),
])
def test_every_library_sees_the_masked_class(mode, kept, hidden):
    real = cpu_id.isa_flags()
    if not (kept <= set(real)):
        pytest.skip(f"this CPU lacks part of {sorted(kept)}: nothing to mask down to")
    seen = _check(mode)
    native = set(seen["qrt native cpuid"].split(", "))
    assert kept <= native and not (hidden & native), seen
    view = seen["qrt /proc/cpuinfo view"]
    assert f"(cpuid masked to {mode})" in view, view
    assert kept <= set(view.split("|")[1].split()) and not (hidden & set(view.split("|")[1].split())), view
    assert seen["qrt native int8 path"] == mode
    assert "AVX512F" not in seen["numpy"].split(", "), seen
    assert int(seen["cpuid instructions emulated"]) > 0, seen


def test_unknown_class_is_refused_with_the_choices():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "as_cpu.py"), "avx1024", "--check"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "avx2" in proc.stdout and "avx_vnni" in proc.stdout
