"""A pytest run in a subprocess, for the tests that re-run part of the suite under other
conditions (tests/test_forced_isa.py: forced ISA paths; tests/test_sanitizers.py: a sanitized
build, numba's bounds checking): its exit status, its whole output and its closing line; run
now (run_pytest) or in the background (BackgroundPytest)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


def run_pytest(args: list[str], cwd: str | Path, env: dict, timeout: int = 1800) -> tuple[int, str, str]:
    """(exit status, stdout + stderr, the last non-empty line without its '=' frame) of
    ``python -m pytest -q -p no:cacheprovider --no-header`` with ``args`` (classic progress
    output, so the closing line is the counts)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
           "-o", "console_output_style=classic", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return proc.returncode, out, lines[-1].strip("= ") if lines else "(no output)"


def passed_some(summary: str) -> bool:
    """Whether a closing line reports at least one passed test (a run that selected nothing
    exits 5, but a run whose tests all skipped exits 0: that must not count)."""
    return re.search(r"\b[1-9]\d* passed\b", summary) is not None


class BackgroundPytest:
    """The same child run, started now and collected later: tests/conftest.py starts the long
    re-runs right after collection (niced), beside the main run, whose tests mostly keep one
    Python thread busy on a 2-core machine, and the tests that own them wait for their result
    at the end of the session. Output goes to a file in ``workdir`` (a pipe nobody reads would
    fill and stall the child); its temporary folders too (--basetemp), apart from the main run's."""

    def __init__(self, args: list[str], cwd: str | Path, env: dict, workdir: Path):
        self.workdir = workdir
        self.log_path = workdir / "pytest.log"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
               "-o", "console_output_style=classic", f"--basetemp={workdir / 'tmp'}", *args]
        if shutil.which("nice"):
            cmd = ["nice", "-n", "10", *cmd]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def result(self, timeout: int = 1800) -> tuple[int, str, str]:
        """(exit status, output, closing line), as run_pytest, once the child has ended."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        out = self.log_path.read_text(errors="replace")
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        return code, out, lines[-1].strip("= ") if lines else "(no output)"

    def stop(self) -> None:
        """No child left running (the session may end before its test, e.g. under -x)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
