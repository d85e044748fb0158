"""The fuzzers of fuzz/fuzz_qrt.py, run for a bounded time (QRT_FUZZ_SECONDS, default 20 s per
target), and every input they ever found (fuzz/regressions/<target>/) replayed.

The reader target starts from the committed format fixtures (a valid file of every layout
family) and a copy of its corpus grows in a temporary folder. The native target runs here
without sanitizers; tests/test_sanitizers.py runs it again under ASan + UBSan, where an
out-of-bounds read is a finding even when it does not crash. Each run's closing figures
(executions, coverage) are printed into the CI log."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import registry

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz" / "fuzz_qrt.py"
SECONDS = int(os.environ.get("QRT_FUZZ_SECONDS", "20"))


def run_fuzzer(target: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600):
    """(returncode, output, one-line summary) of fuzz_qrt.py ``target`` ``args``."""
    proc = subprocess.run([sys.executable, str(FUZZ), target, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})
    out = proc.stdout + proc.stderr
    done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", out)
    runs = re.findall(r"Done (\d+) runs in (\d+) second", out)
    summary = (f"{runs[-1][0]} executions in {runs[-1][1]} s, coverage {done[-1][1]} edges / {done[-1][2]} "
               f"features, corpus {done[-1][3]}" if done and runs else f"exit {proc.returncode}")
    return proc.returncode, out, summary


def _need_atheris():
    pytest.importorskip("atheris", reason="atheris is not installed (the test extra installs it)")


@pytest.mark.parametrize("target", ["reader", "native"])
def test_fuzzer_finds_nothing_in_its_time(target, tmp_path, capsys):
    _need_atheris()
    if target == "native" and registry.backend_status("native") is not None:
        pytest.skip(f"native backend unavailable: {registry.backend_status('native')}")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if target == "reader":
        for f in (ROOT / "tests" / "fixtures").glob("format_v*/*.qrt"):
            shutil.copy(f, corpus / f.name)
    code, out, summary = run_fuzzer(target, [f"-max_total_time={SECONDS}", "-rss_limit_mb=4096",
                                             f"-artifact_prefix={tmp_path}/", str(corpus)], tmp_path)
    with capsys.disabled():
        print(f"\n[fuzz {target}, {SECONDS} s] {summary}")
    found = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert code == 0 and not found, f"the {target} fuzzer found {found or 'a failure'}:\n{out[-6000:]}"
    assert "DONE" in out, out[-3000:]


@pytest.mark.parametrize("target", ["reader", "native"])
def test_every_earlier_finding_stays_fixed(target, tmp_path):
    """Inputs the fuzzers found (each a crash or a wrong exception type once, since fixed) are
    kept in fuzz/regressions/<target>/ and replayed here, one libFuzzer run over each."""
    _need_atheris()
    if target == "native" and registry.backend_status("native") is not None:
        pytest.skip(f"native backend unavailable: {registry.backend_status('native')}")
    files = sorted(str(p) for p in (ROOT / "fuzz" / "regressions").glob(f"{target}/*") if p.is_file())
    if not files:
        pytest.skip(f"no {target} findings recorded yet")
    code, out, _ = run_fuzzer(target, files, tmp_path)
    assert code == 0, out[-6000:]
