"""Quick checks of the packaging metadata (no installs: those are slow and belong in CI)."""
from __future__ import annotations

import ast
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


def test_ci_runs_the_documented_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q' in ci


def test_installed_metadata_matches_when_installed():
    try:
        dist = metadata.distribution("qrt")
    except metadata.PackageNotFoundError:
        pytest.skip("qrt is not installed (pip install -e .)")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts.get("qrt") == "runtime.cli:main"
    base = [r for r in (dist.requires or []) if "extra ==" not in r]
    assert [_name(r) for r in base] == ["numpy"]
