"""The CPU-specific tests once more, as on an AVX2-only CPU (AMD Zen 1-3, Intel before
Skylake-X): a pytest run in a subprocess over the tests marked ``isa`` (the native and numba
kernel files and the fused kernels), with

    QRT_NATIVE_ISA=avx2   the native backend's int8 / sparse / int4 / fused paths capped at AVX2
    QRT_NUMBA_ISA=avx2    numba compiling for an AVX2 + FMA target (no AVX-512: the portable
                          int8 GEMM, the ValueGroups sparse path, Ell in its portable form)

so a machine with AVX-512 keeps the AVX2 paths honest, including the tests' own assumptions
about which path runs. On a CPU without AVX-512 the main run already takes the AVX2 paths, so
this test is skipped with that reason; there, the AVX-512 paths cannot run at all (no emulator
is available here), and the AVX-512 machines' runs are the ones that check them.

The subprocess requires the native and numba backends (QRT_REQUIRE_BACKENDS) wherever this run
has them, so a forced path that fails to load fails here instead of skipping every test.

It is the suite's longest test (about 4 minutes, mostly numba compiling every kernel again for
the AVX2 target, on one thread), so tests/conftest.py starts it in the background right after
collection (niced) and moves this test to the end of the session, where it collects the result.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernels import registry
from kernels.native_cpu import cpu_features
from tests.child_pytest import BackgroundPytest, passed_some, run_pytest

FORCED = {"QRT_NATIVE_ISA": "avx2", "QRT_NUMBA_ISA": "avx2"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _skip_reason() -> str | None:
    already = {k: os.environ[k] for k in FORCED if os.environ.get(k)}
    if already:
        return f"this run already forces a path ({', '.join(f'{k}={v}' for k, v in already.items())})"
    f = cpu_features()
    if not (f["avx2"] and f["fma"]):
        return "this CPU has no AVX2 + FMA, so the AVX2 paths cannot run here"
    if not f["avx512f"]:
        return "this CPU has no AVX-512: the run that contains this test already took the AVX2 paths"
    if all(registry.backend_status(b) is not None for b in ("native", "numba")):
        return "neither the native nor the numba backend is usable here"
    return None


def _child_env(plan_cache: Path) -> dict:
    required = [b for b in ("native", "numba") if registry.backend_status(b) is None]
    env = {**os.environ, **FORCED, "QRT_REQUIRE_BACKENDS": ",".join(required), "QRT_CACHE_DIR": str(plan_cache)}
    # numba may have been configured by this process; the child starts from the environment
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    return env


CHILD_ARGS = ["-m", "isa", "tests"]
_BACKGROUND: dict = {}


def start_background_run() -> None:
    """Called by tests/conftest.py after collection when this test will run."""
    if _BACKGROUND or _skip_reason():
        return
    _BACKGROUND["run"] = BackgroundPytest(CHILD_ARGS, ROOT, lambda work: _child_env(work / "plans"), "qrt-forced-isa-")


def test_isa_tests_pass_with_the_avx2_paths_forced(tmp_path, capsys):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if "run" in _BACKGROUND:
        code, out, summary = _BACKGROUND["run"].result()
    else:   # not started after collection (tests/conftest.py's hook did not run): now
        code, out, summary = run_pytest(CHILD_ARGS, ROOT, _child_env(tmp_path / "plans"))
    with capsys.disabled():     # the child's closing line belongs in the CI log, pass or fail
        print(f"\n[forced {', '.join(f'{k}={v}' for k, v in FORCED.items())}] {summary}")
    assert code == 0, f"the isa tests failed with the AVX2 paths forced:\n{out[-6000:]}"
    assert passed_some(summary), summary
