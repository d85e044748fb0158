"""A pytest run in a subprocess, for the tests that re-run part of the suite under other
conditions (tests/test_forced_isa.py: forced ISA paths; tests/test_sanitizers.py: a sanitized
build, numba's bounds checking): its exit status, its whole output and its closing line."""
from __future__ import annotations

import re
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
