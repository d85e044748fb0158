"""Quick checks of the packaging metadata (no installs: those are slow and belong in CI)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower()


def test_distribution_and_console_script():
    assert PROJECT["name"] == "qrt"
    assert PROJECT["scripts"]["qrt"] == "runtime.cli:main"
    assert PROJECT["requires-python"] == ">=3.11"


def test_inference_depends_on_numpy_only():
    assert [_name(r) for r in PROJECT["dependencies"]] == ["numpy"]


def test_torch_is_pinned_exactly_in_every_extra():
    # Any other torch spec makes pip fetch a multi-GB CUDA build instead of the local wheel.
    extras = PROJECT["optional-dependencies"]
    assert "torch==2.13.0" in extras["test"]
    for name, reqs in extras.items():
        for req in reqs:
            if _name(req) == "torch":
                assert req.replace(" ", "") == "torch==2.13.0", f"extra {name!r}: {req!r}"


def test_extras_exist():
    extras = PROJECT["optional-dependencies"]
    assert {"convert", "test", "bench", "demo"} <= set(extras)
    assert "onnx" in {_name(r) for r in extras["convert"]}
    assert {"onnx", "scikit-learn"} <= {_name(r) for r in extras["demo"]}
    assert "pytest-benchmark" in {_name(r) for r in extras["bench"]}


def test_packages_include_runtime_and_kernels():
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert {"runtime*", "kernels*"} <= set(find["include"])


def test_setup_py_never_builds_for_the_host_cpu():
    # One build must run on any x86-64; wider ISAs are dispatched at run time.
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if "march=native" in s or "mtune=native" in s]


# README's test command, which .ci/run runs: the native build must succeed (setup.py) and the
# backends the test extra installs must load (tests/conftest.py), or the run fails instead of
# skipping their tests.
TEST_COMMAND = ('python3 -m venv .venv && . .venv/bin/activate && QRT_REQUIRE_NATIVE=1 QRT_WERROR=1 '
                'pip install -e ".[test]" && QRT_REQUIRE_BACKENDS=native,numba,triton python -m pytest -q')


def test_ci_runs_the_documented_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci


def test_installed_metadata_matches_when_installed():
    try:
        dist = metadata.distribution("qrt")
    except metadata.PackageNotFoundError:
        pytest.skip("qrt is not installed (pip install -e .)")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts.get("qrt") == "runtime.cli:main"
    base = [r for r in (dist.requires or []) if "extra ==" not in r]
    assert [_name(r) for r in base] == ["numpy"]


def test_readme_gives_the_ci_test_command_and_the_demo_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert TEST_COMMAND + "\n" in blocks
    assert 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[demo]" && qrt demo\n' in blocks


def test_build_without_a_compiler_warns_and_succeeds(tmp_path):
    """setup.py's build_ext turns a compiler failure into a warning (qrt installs anyway)."""
    pytest.importorskip("pybind11")  # without it setup.py skips the extension before compiling
    pytest.importorskip("setuptools")
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    env.pop("QRT_REQUIRE_NATIVE", None)
    r = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "qrt: native extension not built" in r.stderr
    assert not list((tmp_path / "lib").rglob("_native*"))


def _one_file_tree(tmp_path, source: str) -> None:
    """A copy of setup.py beside a csrc/ of one file, bindings.cpp = ``source``: builds in
    seconds (skips without pybind11 / setuptools, before which setup.py compiles nothing)."""
    pytest.importorskip("pybind11")
    pytest.importorskip("setuptools")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "setup.py").write_text((ROOT / "setup.py").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "csrc" / "bindings.cpp").write_text(source, encoding="utf-8")


def _build_one_file(tmp_path, env: dict, temp: str) -> subprocess.CompletedProcess:
    """``setup.py build_ext`` of _one_file_tree into tmp_path/lib (objects in tmp_path/``temp``)."""
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                           "--build-temp", str(tmp_path / temp)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_broken_csrc_fails_the_build_when_native_is_required(tmp_path):
    """QRT_REQUIRE_NATIVE=1 (the test command's install): a C++ syntax error fails the build,
    so CI stops instead of testing without the native backend; without it, the same error is
    a warning and qrt installs. A copy of setup.py with a one-file csrc/ keeps this fast."""
    _one_file_tree(tmp_path, "int broken( {\n")
    for required in ("1", None):
        env = {k: v for k, v in os.environ.items() if k != "QRT_REQUIRE_NATIVE"}
        if required:
            env["QRT_REQUIRE_NATIVE"] = required
        r = _build_one_file(tmp_path, env, "tmp")
        if required:
            assert r.returncode != 0, r.stderr[-2000:]
            assert "qrt: native extension build failed (QRT_REQUIRE_NATIVE is set)" in r.stderr
        else:
            assert r.returncode == 0, r.stderr[-2000:]
            assert "qrt: native extension not built" in r.stderr
        assert not list((tmp_path / "lib").rglob("_native*"))


@pytest.mark.parametrize("env", [{"QRT_REQUIRE_BACKENDS": "native"}, {"QRT_REQUIRE_NATIVE": "1"}])
def test_pytest_stops_when_a_required_backend_is_unavailable(env):
    """tests/conftest.py: a required backend that cannot load ends the run at once, with its
    reason and a non-zero status (an invalid QRT_NATIVE_ISA makes native unavailable here)."""
    full = {**os.environ, **env, "QRT_NATIVE_ISA": "sse1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_packaging.py::test_distribution_and_console_script"],
                       cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 3, out[-3000:]
    assert "required backend unavailable" in out and "native: QRT_NATIVE_ISA=sse1" in out, out[-3000:]
    assert "passed" not in out


def test_every_run_names_every_backend_even_under_q():
    """The first lines of a `pytest -q` run: the CPU, then every backend, "ok" or the reason."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_packaging.py::test_distribution_and_console_script"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    from kernels import registry
    lines = r.stdout.splitlines()
    assert lines[0].startswith("qrt CPU: "), lines[:8]
    for b, reason in registry.available_backends().items():
        (line,) = [ln for ln in lines if ln.startswith(f"qrt backend {b}: ")]
        assert (line.startswith(f"qrt backend {b}: ok") if reason is None else line.endswith(reason)), line


def test_runtime_works_when_the_native_extension_is_missing(tmp_path):
    """With the extension unimportable, `import runtime` works, the native backend says why it
    is unavailable, and a model still runs on the reference backend."""
    code = (
        "import sys; sys.modules['kernels.native_cpu._native'] = None\n"
        "import numpy as np, runtime\n"
        "from runtime.graph import Graph, Node, Value\n"
        "reason = runtime.available_backends()['native']\n"
        "assert reason and 'extension not built' in reason, reason\n"
        "g = Graph('g', [Value('x', 'float32', (2,))], [Value('y', 'float32', (2,))], [Node('r', 'Relu', ['x'], ['y'])])\n"
        "y = runtime.InferenceSession(g).run(None, {'x': np.array([-1, 2], np.float32)})[0]\n"
        "assert y.tolist() == [0, 2], y\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)


def test_a_foreign_kernels_package_is_named(tmp_path):
    """Hugging Face's `kernels` (a dependency of transformers >= 5.25) has the import name of
    qrt's own top-level package: when it comes first on sys.path, `import runtime` says so
    instead of failing somewhere inside the registry."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    code = "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import runtime"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0
    assert "is not qrt's" in r.stderr and "transformers<5.25" in r.stderr, r.stderr[-2000:]
    ok = subprocess.run([sys.executable, "-c", code, str(ROOT), str(ROOT)], capture_output=True, text=True,
                        cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_transformers_is_held_below_the_release_that_needs_hf_kernels():
    extras = PROJECT["optional-dependencies"]
    for extra in ("test", "bench", "convert"):
        reqs = [r for r in extras[extra] if _name(r) == "transformers"]
        assert reqs and all("<5.25" in r for r in reqs), (extra, reqs)


def test_a_compiler_warning_fails_the_build_under_qrt_werror(tmp_path):
    """csrc/ builds with -Wall -Wextra; QRT_WERROR=1 (the test command) makes a warning fail
    the build, so new warnings cannot land; without it the same code builds (users' installs
    must not break on a newer compiler's new warning)."""
    _one_file_tree(tmp_path, "int f(int unused_argument) { return 0; }\n")
    for werror in ("1", None):
        env = {k: v for k, v in os.environ.items() if k not in ("QRT_WERROR", "QRT_EXTRA_CFLAGS")}
        env["QRT_REQUIRE_NATIVE"] = "1"
        if werror:
            env["QRT_WERROR"] = werror
        r = _build_one_file(tmp_path, env, f"tmp{werror}")
        assert "unused parameter" in r.stderr, r.stderr[-2000:]
        assert (r.returncode != 0) == bool(werror), r.stderr[-2000:]
