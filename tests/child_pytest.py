"""A pytest run in a subprocess, for the tests that re-run part of the suite under other
conditions (tests/test_forced_isa.py: forced ISA paths; tests/test_sanitizers.py: a sanitized
build, numba's bounds checking): its exit status, its whole output and its closing line; run
now (run_pytest) or in the background (BackgroundPytest)."""
from __future__ import annotations

import atexit
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable


def _pytest_cmd(args: list[str]) -> list[str]:
    """``python -m pytest -q -p no:cacheprovider --no-header`` with ``args``, classic progress
    output, so the closing line is the counts."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
            "-o", "console_output_style=classic", *args]


def _closing_line(out: str) -> str:
    """The last non-empty line of a pytest run's output, without its '=' frame."""
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def niced(cmd: list[str]) -> list[str]:
    """cmd under `nice -n 10` where there is one: background work that yields to the main run."""
    return ["nice", "-n", "10", *cmd] if shutil.which("nice") else cmd


def run_pytest(args: list[str], cwd: str | Path, env: dict, timeout: int = 1800) -> tuple[int, str, str]:
    """(exit status, stdout + stderr, closing line) of a child pytest run with ``args``."""
    proc = subprocess.run(_pytest_cmd(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    out = proc.stdout + proc.stderr
    return proc.returncode, out, _closing_line(out)


def passed_some(summary: str) -> bool:
    """Whether a closing line reports at least one passed test (a run that selected nothing
    exits 5, but a run whose tests all skipped exits 0: that must not count)."""
    return re.search(r"\b[1-9]\d* passed\b", summary) is not None


class BackgroundPytest:
    """The same child run, started now and collected later: tests/conftest.py starts the long
    re-runs right after collection (niced), beside the main run, whose tests mostly keep one
    Python thread busy on a 2-core machine, and the tests that own them wait for their result
    at the end of the session. It works in a fresh temporary folder (``prefix``): its output
    goes to a file there (a pipe nobody reads would fill and stall the child), its temporary
    folders too (--basetemp), apart from the main run's; ``env_for(folder)`` gives its
    environment. At exit the child is stopped (the session may end before its test, e.g.
    under -x) and the folder removed."""

    def __init__(self, args: list[str], cwd: str | Path, env_for: Callable[[Path], dict], prefix: str):
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.log_path = self.workdir / "pytest.log"
        cmd = niced(_pytest_cmd([f"--basetemp={self.workdir / 'tmp'}", *args]))
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env_for(self.workdir), stdout=log,
                                         stderr=subprocess.STDOUT)
        atexit.register(self.close)

    def result(self, timeout: int = 1800) -> tuple[int, str, str]:
        """(exit status, output, closing line), as run_pytest, once the child has ended."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise
        out = self.log_path.read_text(errors="replace")
        return code, out, _closing_line(out)

    def close(self) -> None:
        """No child left running, no folder left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
