"""The native backend's tests, and its fuzzer, under AddressSanitizer + UndefinedBehaviorSanitizer
(issue 16): the C++ is built again into a copy of the source tree with
-fsanitize=address,undefined (-O1, every UB check fatal), then the native test files and
fuzz/fuzz_qrt.py's native target (QRT_FUZZ_SECONDS) run against that build with the ASan
runtime preloaded. An out-of-bounds access, use after free or undefined operation fails the
run even where the plain build would not crash.

Also here: the numba sparse kernels once with numba's bounds checking on (NUMBA_BOUNDSCHECK=1,
a separate cache), so an index past an array's end raises instead of reading memory: every
path of every sparse layout against the reference (the tests that compile each kernel once;
about a minute of JIT). The intrinsics that read through raw pointers are outside numba's
checks; their bounds are the plan's (kernels/numba_cpu/sparse.py re-checks the layout)."""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kernels import registry
from tests.child_pytest import BackgroundPytest, niced, passed_some, run_pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE_TESTS = ["tests/test_native_sparse.py", "tests/test_native_int8.py", "tests/test_native_fuzz.py",
                "tests/test_native_int4_conv.py", "tests/test_native_fused.py",
                "tests/test_native_bound_steps.py", "tests/test_native_output_cache.py",
                "tests/test_native_gather_elements.py", "tests/test_native_int8_conv.py",
                "tests/test_native_cnn_ops.py"]
SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1"
FUZZ_SECONDS = int(os.environ.get("QRT_FUZZ_SECONDS", "20"))


def _runtime_libs() -> list[str] | None:
    """The ASan runtime and libstdc++ to preload (Python itself is not built with ASan;
    libstdc++ first in line lets ASan intercept C++ exceptions), or None without them."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        return None
    libs = []
    for name in ("libasan.so", "libstdc++.so"):
        path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            return None
        libs.append(path)
    return libs


def _tail(text: str, n: int = 6000) -> str:
    return text[-n:]


# The sanitized build: a copy of the source tree, its extension compiled with SANITIZE, then
# the native tests and the fuzzer against it. The build takes about 110 s of compiling on 2
# cores and the tests another 100 s, so tests/conftest.py starts the whole job in the
# background (this module run as a script, niced) once it sees this test collected; the test,
# which runs last, waits for the job's result. The suite's other tests are mostly one Python
# thread, which leaves a core idle for it.
_BACKGROUND: dict = {}


def _sanitized_checks(dest: Path) -> dict:
    """Copy the tree to dest/src, build it sanitized, run the native tests and the fuzzer against
    that build: every outcome the test asserts, as a JSON-able dict (the background job writes
    it to dest/result.json). Skips are decided by the test, before."""
    src = dest / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "*.so", "__pycache__",
                                                             "*.egg-info", ".pytest_cache", "qrt-demo"))
    env = {**os.environ, "QRT_REQUIRE_NATIVE": "1", "QRT_EXTRA_CFLAGS": SANITIZE,
           "QRT_EXTRA_LDFLAGS": "-fsanitize=address,undefined"}
    with open(dest / "build.log", "w") as log:
        build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                               stdout=log, stderr=subprocess.STDOUT, timeout=1800, check=False)
    result = {"build_code": build.returncode, "build_log": _tail((dest / "build.log").read_text(errors="replace"))}
    if build.returncode != 0:
        return result
    # numba off (QRT_DISABLE_BACKENDS): its JIT under the ASan runtime took 2 of the run's 3
    # minutes, in the session tests' backend="auto" plans, and it is not the code under test
    env = {**os.environ, "LD_PRELOAD": ":".join(_runtime_libs()), "PYTHONPATH": str(src),
           "QRT_DISABLE_BACKENDS": "numba", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1", "QRT_REQUIRE_BACKENDS": "native",
           "QRT_CACHE_DIR": str(dest / "cache")}
    # the sanitized module is the one imported (not the tree's own build)
    where = subprocess.run([sys.executable, "-c", "import kernels.native_cpu._native as n; print(n.__file__)"],
                           cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False)
    result["where_ok"] = where.returncode == 0 and where.stdout.strip().startswith(str(src))
    result["where_out"] = _tail(where.stdout + where.stderr)
    if not result["where_ok"]:
        return result
    code, out, summary = run_pytest(["-x", *NATIVE_TESTS], src, env)
    result.update(code=code, out=_tail(out), summary=summary)
    if code == 0 and _has_atheris():
        # -rss_limit_mb: under ASan the process's RSS holds the shadow memory and the freed-memory
        # quarantine besides Python (2.2 GB measured in CI, past libFuzzer's 2 GB default; the
        # same target without ASan peaks at 164 MB, flat): the limit is for leaks, not for ASan
        fuzz = subprocess.run([sys.executable, "fuzz/fuzz_qrt.py", "native", f"-max_total_time={FUZZ_SECONDS}",
                               "-rss_limit_mb=6144", f"-artifact_prefix={dest}/"], cwd=src, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        result.update(fuzz_code=fuzz.returncode, fuzz_out=_tail(fuzz.stdout + fuzz.stderr))
    return result


def start_background_build() -> None:
    """Called by tests/conftest.py after collection when this file's native test will run: the
    whole job in a child process (its own process group, so that one signal stops it and its
    children)."""
    if _BACKGROUND or registry.backend_status("native") is not None or _runtime_libs() is None:
        return
    dest = Path(tempfile.mkdtemp(prefix="qrt-sanitized-"))
    cmd = niced([sys.executable, "-m", "tests.test_sanitizers", str(dest)])
    with open(dest / "job.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _BACKGROUND.update(dest=dest, proc=proc)
    atexit.register(_stop_background)


def _stop_background() -> None:
    """At exit (the run may end before the test, e.g. under -x): no job left running, no copy left."""
    proc = _BACKGROUND.get("proc")
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if "dest" in _BACKGROUND:
        shutil.rmtree(_BACKGROUND["dest"], ignore_errors=True)


def _background_result() -> dict:
    job = _BACKGROUND
    code = job["proc"].wait(timeout=3600)
    path = job["dest"] / "result.json"
    assert code == 0 and path.exists(), "the sanitized job failed:\n" + _tail((job["dest"] / "job.log").read_text(errors="replace"))
    return json.loads(path.read_text())


def test_native_tests_and_fuzzer_are_clean_under_asan_and_ubsan(tmp_path, capsys):
    if registry.backend_status("native") is not None:
        pytest.skip(f"native backend unavailable: {registry.backend_status('native')}")
    if _runtime_libs() is None:
        pytest.skip("no g++ with libasan here (Debian: g++ ships it)")
    # started after collection (tests/conftest.py), or, where that hook did not run, now
    r = _background_result() if _BACKGROUND else _sanitized_checks(tmp_path)
    assert r["build_code"] == 0, r["build_log"]
    assert r["where_ok"], r["where_out"]
    with capsys.disabled():
        print(f"\n[ASan + UBSan] native tests: {r['summary']}")
        if "fuzz_code" in r:
            runs = re.findall(r"Done (\d+) runs in (\d+) second", r["fuzz_out"])
            print("[ASan + UBSan] native fuzzer: " + (f"{runs[-1][0]} executions in {runs[-1][1]} s"
                                                       if runs else f"exit {r['fuzz_code']}"))
    assert r["code"] == 0, f"native tests failed under the sanitizers:\n{r['out']}"
    assert passed_some(r["summary"]), r["summary"]
    if "fuzz_code" in r:
        assert r["fuzz_code"] == 0, f"the native fuzzer failed under the sanitizers:\n{r['fuzz_out']}"


def _has_atheris() -> bool:
    import importlib.util
    return importlib.util.find_spec("atheris") is not None


# numba's bounds-checking run, started in the background (start_background_numba_bounds)
_NUMBA_BOUNDS: dict = {}
NUMBA_BOUNDS_ARGS = ["-x", "tests/test_numba_sparse.py", "-k", "every_path_exact or matches_reference"]


def _numba_bounds_env(work: Path) -> dict:
    return {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(work / "numba"),
            "QRT_REQUIRE_BACKENDS": "numba", "QRT_CACHE_DIR": str(work / "cache")}


def start_background_numba_bounds() -> None:
    """Called by tests/conftest.py after collection when the bounds-checking test will run: its
    child (about a minute of numba compiling, one thread) starts now, beside the main run."""
    if "run" in _NUMBA_BOUNDS or registry.backend_status("numba") is not None:
        return
    _NUMBA_BOUNDS["run"] = BackgroundPytest(NUMBA_BOUNDS_ARGS, ROOT, _numba_bounds_env, "qrt-numba-bounds-")


def test_numba_sparse_kernels_with_bounds_checking(tmp_path, capsys):
    if registry.backend_status("numba") is not None:
        pytest.skip(f"numba backend unavailable: {registry.backend_status('numba')}")
    if "run" in _NUMBA_BOUNDS:
        code, out, summary = _NUMBA_BOUNDS["run"].result()
    else:   # not started after collection (tests/conftest.py's hook did not run): now
        code, out, summary = run_pytest(NUMBA_BOUNDS_ARGS, ROOT, _numba_bounds_env(tmp_path))
    with capsys.disabled():
        print(f"\n[NUMBA_BOUNDSCHECK=1] tests/test_numba_sparse.py (every path): {summary}")
    assert code == 0, _tail(out)
    assert passed_some(summary), summary


if __name__ == "__main__":   # the background job (start_background_build): python -m tests.test_sanitizers DEST
    _dest = Path(sys.argv[1])
    (_dest / "result.json").write_text(json.dumps(_sanitized_checks(_dest)))
