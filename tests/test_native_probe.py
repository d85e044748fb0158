"""The native backend's CPU feature probe (csrc/cpu_features.cpp) and its Python fallback."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import kernels.native_cpu as native

EXPECTED_FEATURES = {
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512dq",
    "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
}
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
HAS_CPUINFO = sys.platform.startswith("linux") and os.path.exists("/proc/cpuinfo")


def _native_or_skip():
    reason = native.probe()
    if reason is not None:
        pytest.skip(f"native extension unavailable: {reason}")
    from kernels.native_cpu import _native
    return _native


def test_cpu_features_has_every_key_as_bool():
    feats = native.cpu_features()
    assert set(feats) == EXPECTED_FEATURES
    assert all(type(v) is bool for v in feats.values()), feats
    assert tuple(feats) == native.FEATURES


def test_cpu_features_returns_a_copy():
    feats = native.cpu_features()
    feats["avx2"] = "changed"
    assert type(native.cpu_features()["avx2"]) is bool


def test_feature_implications_hold():
    # Every CPU with a wider ISA has the narrower one it builds on; a probe that says
    # otherwise read the wrong register or bit.
    f = native.cpu_features()
    implied = [("avx2", "avx"), ("fma", "avx"), ("avx512f", "avx2"), ("avx512bw", "avx512f"),
               ("avx512vl", "avx512f"), ("avx512dq", "avx512f"), ("avx512_vnni", "avx512f"),
               ("avx512_bf16", "avx512f"), ("avx_vnni", "avx2")]
    for wide, narrow in implied:
        assert not f[wide] or f[narrow], f"{wide} reported without {narrow}: {f}"


def test_probe_is_none_or_reason():
    reason = native.probe()
    assert reason is None or (isinstance(reason, str) and reason.startswith("extension not built:"))


def test_registry_reports_native_backend_with_a_reason_or_usable():
    from kernels.registry import backend_status
    status = backend_status("native")
    assert status is None or isinstance(status, str)
    if native.probe() is not None:
        assert status == native.probe()


def test_cpu_brand_is_nonempty_string():
    brand = native.cpu_brand()
    assert isinstance(brand, str) and brand.strip() == brand and brand


def test_cpuinfo_parser_maps_flag_names():
    text = (
        "processor\t: 0\nmodel name\t: Test CPU\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx_vnni amx_int8\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    f = native._features_from_cpuinfo(text)
    assert set(f) == EXPECTED_FEATURES
    assert f["sse4_2"] and f["avx2"] and f["avx512f"] and f["avx512_vnni"] and f["avx_vnni"] and f["amx_int8"]
    assert not f["avx512bw"] and not f["avx512_bf16"] and not f["f16c"]
    assert not any(native._features_from_cpuinfo("processor : 0\n").values())


@pytest.mark.skipif(not HAS_CPUINFO, reason="no /proc/cpuinfo (not Linux)")
@pytest.mark.skipif(not IS_X86, reason=f"cpuid exists only on x86; this is {platform.machine()}")
@pytest.mark.parametrize("feature", ["avx2", "avx512f", "avx512_vnni"])
def test_extension_agrees_with_proc_cpuinfo(feature):
    ext = _native_or_skip()
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        from_kernel = native._features_from_cpuinfo(f.read())
    assert bool(ext.cpu_features()[feature]) == from_kernel[feature]


def test_extension_reports_every_feature_and_build_info():
    ext = _native_or_skip()
    assert set(ext.cpu_features()) == EXPECTED_FEATURES
    info = native.build_info()
    assert info["cxx_standard"] == "C++17"
    assert isinstance(info["compiler"], str) and info["compiler"]
    # One build must run on any x86-64: no -march=native, so no AVX-512 or AVX2 baseline.
    if IS_X86:
        assert info["baseline_isa"] == "x86-64", info
    assert native.cpu_features_source() == "native"


def test_build_info_is_none_without_extension():
    if native.probe() is None:
        assert isinstance(native.build_info(), dict)
    else:
        assert native.build_info() is None


def test_import_stays_light_without_the_extension():
    # Without the extension (not built: simulated by blocking its import) the package is only
    # the feature probe, which must not pull in numpy. With it, importing the package
    # registers the native kernels, which need numpy (test_import_registers_kernels).
    code = (
        "import sys, kernels; before = 'numpy' in sys.modules\n"
        "sys.modules['kernels.native_cpu._native'] = None\n"
        "import kernels.native_cpu as n; assert n.probe().startswith('extension not built')\n"
        "n.cpu_features(); n.cpu_brand()\n"
        "assert before or 'numpy' not in sys.modules, 'kernels.native_cpu imported numpy'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_import_registers_kernels():
    _native_or_skip()
    from kernels import registry
    assert registry.backend_status("native") is None
    assert ("Linear", "int8", "native") in registry.kernels("native")
