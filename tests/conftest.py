"""Test-wide settings.

* Per-layer planning's measurement cache (runtime/planner.py) goes to a temporary folder,
  never to the user's ~/.cache, and starts empty for every test run.
* Every run starts by naming the CPU, its ISA flags, and each backend with "ok" (and the code
  path it takes) or the reason it is unavailable, so a backend that was silently skipped shows
  in every CI log (also under -q, which hides pytest's own header).
* QRT_REQUIRE_BACKENDS=native,numba (a comma list) and QRT_REQUIRE_NATIVE=1 (which also makes
  setup.py fail a broken build) stop the run at once, with the reason, when a required backend
  is unavailable: without them its tests would all be skipped and the run would pass.
* The tests that re-run part of the suite in a child process (tests/test_sanitizers.py's
  sanitized build and numba bounds checking, tests/test_forced_isa.py) start that work in the
  background right after collection (niced) and run last, collecting its result.
* Tests marked ``isa`` exercise CPU-specific code paths; tests/test_forced_isa.py runs them
  once more with the AVX2 paths forced.
"""
import importlib
import importlib.util
import os
import tempfile

import pytest

REQUIRE_ENV = "QRT_REQUIRE_BACKENDS"


def _triton_interpreter_without_gpu() -> None:
    """Without a CUDA GPU, run the Triton backend's kernels in Triton's interpreter on CPU
    tensors. TRITON_INTERPRET is read when triton is first imported (and when kernels are
    decorated), so it must be set here, before any test module imports the backend. A value
    the user set wins; without torch (or triton) there is nothing to do."""
    if "TRITON_INTERPRET" in os.environ or importlib.util.find_spec("triton") is None \
            or importlib.util.find_spec("torch") is None:
        return
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_triton_interpreter_without_gpu()


@pytest.fixture(autouse=True, scope="session")
def _plan_cache_dir():
    old = os.environ.get("QRT_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="qrt-test-cache-") as d:
        os.environ["QRT_CACHE_DIR"] = d
        yield d
    if old is None:
        os.environ.pop("QRT_CACHE_DIR", None)
    else:
        os.environ["QRT_CACHE_DIR"] = old


def pytest_configure(config):
    config.addinivalue_line("markers", "isa: exercises CPU-specific code paths (run again with the "
                                       "AVX2 paths forced by tests/test_forced_isa.py)")


# The tests that re-run part of the suite in a child process (minutes each, mostly one thread
# compiling) and the function that starts each one's work in the background.
BACKGROUND_TESTS = {
    "test_native_tests_and_fuzzer_are_clean_under_asan_and_ubsan": ("tests.test_sanitizers", "start_background_build"),
    "test_numba_sparse_kernels_with_bounds_checking": ("tests.test_sanitizers", "start_background_numba_bounds"),
    "test_isa_tests_pass_with_the_avx2_paths_forced": ("tests.test_forced_isa", "start_background_run"),
}


@pytest.hookimpl(trylast=True)    # after -m / -k deselection: a run without those tests starts nothing
def pytest_collection_modifyitems(session, config, items):
    # Their work starts now, beside the other tests, and the tests themselves go last, so that
    # the main run never waits on them until its own work is done. Measured, a clean clone's CI
    # on X (Intel Xeon, 2 vCPUs): benchmarks/RESULTS.md, "The test suite's children in the background".
    last = [item for item in items if item.name in BACKGROUND_TESTS]
    if not last or config.option.collectonly:   # --collect-only runs nothing: start nothing
        return
    items[:] = [item for item in items if item.name not in BACKGROUND_TESTS] + last
    for item in last:
        module, start = BACKGROUND_TESTS[item.name]
        getattr(importlib.import_module(module), start)()


def required_backends() -> list[str]:
    """The backends this run must have (QRT_REQUIRE_BACKENDS, plus native for QRT_REQUIRE_NATIVE)."""
    names = [b.strip() for b in os.environ.get(REQUIRE_ENV, "").split(",") if b.strip()]
    if os.environ.get("QRT_REQUIRE_NATIVE", "") not in ("", "0") and "native" not in names:
        names.append("native")
    return names


def _backend_line(name: str, reason: str | None) -> str:
    if reason is not None:
        return f"qrt backend {name}: unavailable: {reason}"
    detail = ""
    if name == "native":
        from kernels.native_cpu import _native
        detail = f" (int8 path {_native.int8_isa()}, fused ops path {_native.fused_isa()})"
    elif name == "numba":
        from kernels.numba_cpu import isa
        detail = f" ({isa.describe()})"
    elif name == "triton":
        from kernels.registry import backend_device
        if backend_device(name) == "cpu":
            detail = " (TRITON_INTERPRET=1: Triton's interpreter on the CPU)"
    return f"qrt backend {name}: ok{detail}"


def backend_report() -> list[str]:
    """The CPU and every backend, one line each ("ok" and its code path, or why not)."""
    from kernels import registry
    from kernels.native_cpu import cpu_brand, cpu_features
    flags = [f for f, ok in cpu_features().items() if ok]
    lines = [f"qrt CPU: {cpu_brand()} ({', '.join(flags) or 'no SIMD flags found'})"]
    lines += [_backend_line(b, reason) for b, reason in registry.available_backends().items()]
    return lines


def pytest_sessionstart(session):
    # Written here rather than by pytest_report_header: `pytest -q` (the README's command)
    # hides the header, and these lines must be in every log.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in backend_report():
            reporter.write_line(line)
    from kernels import registry
    missing = {b: registry.backend_status(b) for b in required_backends()}
    missing = {b: r for b, r in missing.items() if r is not None}
    if missing:
        pytest.exit("required backend unavailable (QRT_REQUIRE_BACKENDS / QRT_REQUIRE_NATIVE): "
                    + "; ".join(f"{b}: {r}" for b, r in missing.items()), returncode=3)


@pytest.fixture
def native_paths():
    """For the native kernels' tests: yields each() -> iterator of (isa, threads) over every int8
    code path this CPU has (the ISA switch the whole native backend follows, csrc/int8_gemm.h)
    with 1 and 2 threads, the backend switched to each in turn; the settings restored after."""
    from kernels.native_cpu import _native
    before = _native.get_threads()

    def each():
        for isa in _native.int8_isas():
            _native.set_int8_isa(isa)
            for nt in (1, 2):
                _native.set_threads(nt)
                yield isa, nt
    yield each
    _native.set_int8_isa("auto")
    _native.set_threads(before)
