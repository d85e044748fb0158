"""The import layers, held by reading every module's imports (module level and inside
functions alike):

    kernels/core          the floor: stdlib and numpy only, never another qrt package
    kernels/ (the rest)   registry, reference, backends: the floor and each other, never runtime
    runtime executor      format, graph, import, fuse, planner, session: kernels, never the tools
    runtime tools         convert, bench, demo, cli: anything below

plus: nothing outside kernels/ imports a backend package (the registry does, lazily), no module
reads a QRT_* environment variable except kernels/core/config.py, and each numeric bound that C++
restates matches Python's. A test here fails when an upward import is added.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND_PACKAGES = ("kernels.numba_cpu", "kernels.native_cpu", "kernels.triton_gpu", "kernels.cupy_gpu")
TOOLS = ("runtime.convert", "runtime.bench", "runtime.demo", "runtime.cli")
# stdlib and third-party modules the floor may import (numpy: the one dependency of inference;
# threadpoolctl: optional, imported where used)
FLOOR_ALLOWED = {"__future__", "dataclasses", "typing", "math", "os", "functools", "hashlib", "json", "threadpoolctl",
                 "platform", "numpy"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports pkg.sub when sub is a module
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names] if not node.module or \
                (ROOT / mod.replace(".", "/")).is_dir() else [(node.lineno, mod)]
    return out


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _under(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _violations(paths, forbidden) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in paths for line, mod in _imports(p)
            if forbidden(p, mod)]


def test_the_floor_imports_nothing_of_qrt_above_it():
    bad = _violations(_modules("kernels/core"), lambda p, mod: not _under(mod, "kernels.core")
                      and mod.split(".")[0] not in FLOOR_ALLOWED)
    assert not bad, "kernels/core may import only the stdlib, numpy and itself:\n" + "\n".join(bad)


def test_kernels_never_import_runtime():
    bad = _violations(_modules("kernels"), lambda p, mod: _under(mod, "runtime"))
    assert not bad, "kernels/ must not import runtime (move shared vocabulary to kernels/core):\n" + "\n".join(bad)


def test_the_executor_never_imports_the_tools():
    executor = [p for p in _modules("runtime") if not _under(_module_name(p), *TOOLS)]
    bad = _violations(executor, lambda p, mod: _under(mod, *TOOLS))
    assert not bad, "the session side of runtime must not import convert/bench/demo/cli:\n" + "\n".join(bad)


def test_backends_are_imported_only_through_the_registry():
    outside = [p for p in _modules("runtime", "kernels")
               if not _under(_module_name(p), *BACKEND_PACKAGES, "kernels.registry")]
    bad = _violations(outside, lambda p, mod: _under(mod, *BACKEND_PACKAGES))
    assert not bad, "only kernels/registry.py imports a backend package:\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checks above read the files: an upward import written into a kernel is found."""
    fake = tmp_path / "kernels" / "reference" / "upward.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from runtime.session import InferenceSession\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _violations([fake], lambda p, mod: _under(mod, "runtime")) == \
        ["kernels/reference/upward.py:2 imports runtime.session"]


def test_qrt_variables_are_read_only_through_config():
    pattern = re.compile(r"""(environ(\.get)?\s*[\[(]|getenv\s*\()\s*["']QRT_""")
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in _modules("runtime", "kernels")
           if p.name != "config.py" or p.parent.name != "core"
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not bad, "read QRT_* variables with kernels.core.config.get (listed there and in README):\n" + \
        "\n".join(bad)


def test_every_config_variable_is_in_the_readme():
    from kernels.core import config
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in config.VARS if f"`{name}`" not in readme]
    assert not missing, f"README.md's Configuration section lacks {missing}"


def test_importing_the_reference_loads_no_runtime_module():
    code = ("import kernels.reference, sys; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'runtime']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_runtime_is_lazy():
    code = ("import runtime, sys; heavy = [m for m in ('runtime.session', 'runtime.convert', 'runtime.planner') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert runtime.InferenceSession.__module__ == 'runtime.session'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_numeric_bounds_agree_between_python_and_cpp():
    from kernels import registry
    from kernels.core import bounds
    assert bounds.MAX_K_INT32 == 33025 and bounds.MAX_K_INT32 * bounds.MAX_INT8_PRODUCT < 2 ** 31
    assert (bounds.MAX_K_INT32 + 1) * bounds.MAX_INT8_PRODUCT >= 2 ** 31
    reason = registry.backend_status("native")
    if reason is not None:
        pytest.skip(f"native backend unavailable: {reason}")
    info = registry.backend_module("native").build_info()
    assert (info["max_k_int32"], info["max_exact_k"]) == (bounds.MAX_K_INT32, bounds.MAX_EXACT_K)


def test_a_session_without_a_gpu_imports_neither_torch_nor_triton():
    """On a machine without an NVIDIA GPU (and TRITON_INTERPRET unset), creating a session
    imports no torch or triton: 1.7 s a process, and torch's libgomp would start before qrt sets
    the OpenMP wait policy (kernels/core/threads.py), so numba's workers would spin."""
    from kernels.core.device import nvidia_gpu_visible
    if nvidia_gpu_visible():
        pytest.skip("this machine has a GPU: the triton backend imports torch on purpose")
    code = ("import sys, numpy as np, runtime\n"
            "import onnx\n"
            "from onnx import helper, TensorProto\n"
            "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 3])\n"
            "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 3])\n"
            "m = helper.make_model(helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y]))\n"
            "from runtime.onnx_import import import_onnx\n"
            "sess = runtime.InferenceSession(import_onnx(m))\n"
            "sess.run(None, {'x': np.ones((2, 3), np.float32)})\n"
            "from kernels.core import threads\n"
            "loaded = [m for m in ('torch', 'triton') if m in sys.modules]\n"
            "assert not loaded, loaded\n"
            "assert not threads.openmp_may_spin()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)
