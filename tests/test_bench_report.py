"""The benchmark report side (runtime/bench: machine, progress, report) on a synthetic result:
schema checks, Markdown, JSON, plots, the machine fingerprint, the progress line. No timing."""
from __future__ import annotations

import copy
import io
import json
import math
import re
import subprocess
import sys

import pytest

from kernels.core import config
from kernels.core import cpu as cpu_id
from runtime.bench import machine, report
from runtime.bench.progress import Progress, format_duration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _machine() -> dict:
    return {
        "cpu": "Test CPU", "isa": ["avx2", "avx512_vnni", "avx512f"], "logical_cores": 8,
        "threads": 4, "os": "Linux-test", "python": "3.11.0", "numpy": "2.0.0",
        "blas": "openblas 0.3 (SkylakeX, 4 threads, libopenblas.so)",
        "openblas_env": "unset for this process (OPENBLAS_CORETYPE=Haswell)",
        "versions": {"qrt": "dev", "numba": "0.60", "onnxruntime": "1.20", "torch": None,
                     "triton": None, "cupy": None},
        "backends": {"reference": None, "numba": None, "native": "extension not built"},
        "peaks": {"int8_gops": 1000.0, "fp32_gflops": 250.0, "threads": 4,
                  "int8_isa": "avx512_vnni", "fp32_isa": "avx512f", "source": "synthetic"},
        "mem_bw_gbs": 20.0, "key": "0123456789ab",
    }


def _row(runtime: str, layout: str, median_ms: float, *, M=16, N=768, K=768, sparsity=0.0,
         block=None, vs_fp32=None, vs_ort_int8=None, vs_dense_int8=None, valid=True) -> dict:
    precision = {"fp32": "fp32", "int4": "int4"}.get(layout, "int8")
    gops = 2 * M * N * K / (median_ms * 1e-3) / 1e9
    peak = 250.0 if precision in ("fp32", "int4") else 1000.0
    return {"M": M, "N": N, "K": K, "layout": layout, "sparsity": sparsity, "block": block,
            "runtime": runtime, "precision": precision, "median_s": median_ms * 1e-3,
            "spread": 0.03, "calls": 200, "gops": gops, "pct_peak": 100 * gops / peak,
            "intensity": 2 * M * N * K / (N * K + 4 * M * K + 4 * M * N), "vs_fp32": vs_fp32,
            "vs_ort_int8": vs_ort_int8, "vs_dense_int8": vs_dense_int8,
            "max_err": 0.0 if valid else 0.5, "valid": valid}


def _gemm_rows(sparse: bool = True) -> list[dict]:
    rows = [
        _row("numpy fp32", "fp32", 0.40, vs_fp32=1.0),
        _row("onnxruntime int8", "int8", 0.30, vs_fp32=0.40 / 0.30, vs_ort_int8=1.0),
        _row("qrt native", "int8", 0.10, vs_fp32=4.0, vs_ort_int8=3.0),
        _row("qrt numba", "int8", 0.20, vs_fp32=2.0, vs_ort_int8=1.5),
        _row("qrt native", "int8", 1.0, M=128, vs_fp32=2.5, vs_ort_int8=1.2),
    ]
    if sparse:
        for s, native_ms, numba_ms in ((0.7, 0.08, 0.16), (0.9, 0.04, 0.10), (0.95, 0.02, 0.05)):
            rows.append(_row("qrt native", "csr", native_ms, sparsity=s, vs_fp32=0.40 / native_ms,
                             vs_ort_int8=0.30 / native_ms, vs_dense_int8=0.10 / native_ms))
            rows.append(_row("qrt numba", "csr", numba_ms, sparsity=s, vs_fp32=0.40 / numba_ms,
                             vs_ort_int8=0.30 / numba_ms, vs_dense_int8=0.20 / numba_ms))
        rows.append(_row("qrt native", "bsr", 0.05, sparsity=0.8, block="4x4", vs_fp32=8.0,
                         vs_ort_int8=6.0, vs_dense_int8=2.0))
        # A wrong answer: shown, but left out of the summary and the plots.
        rows.append(_row("qrt native", "nm", 0.01, sparsity=0.5, block="2:4", vs_fp32=40.0,
                         vs_ort_int8=30.0, vs_dense_int8=10.0, valid=False))
    return rows


def _model() -> dict:
    return {
        "model": "bert-tiny", "backend": "native", "batch": 1, "seq": 128, "bytes": 4_400_000,
        "latency_ms": {"median": 2.5, "p90": 2.9, "spread": 0.05}, "throughput": 400.0,
        "unit": "sequences/s",
        "compare": [{"runtime": "onnxruntime fp32", "median_ms": 5.0, "p90_ms": 5.5,
                     "speedup": 2.0, "max_abs_err": 1e-3, "cosine": 0.99998}],
        "profile": [{"node": f"layer{i}/matmul", "op": "Linear", "layout": "int8",
                     "kernel": "native int8_linear", "median_ms": 0.1 * (20 - i),
                     "share": 0.04} for i in range(20)],
        "plan": [{"node": "layer0/ffn1", "stored": "csr", "chosen": "int8", "rows": 128,
                  "times_ms": {"csr": 0.21, "int8": 0.12}, "reason": "int8 was faster at 128 rows"}],
    }


def make_result(sparse: bool = True) -> dict:
    return {"schema": "qrt-bench/1", "created": "2025-01-01T00:00:00Z",
            "command": "qrt bench --gemm --models bert-tiny", "machine": _machine(),
            "gemm": _gemm_rows(sparse), "models": [_model()],
            "omitted": [{"what": "pytorch int8", "reason": "torch is not installed"}]}


# --- validate --------------------------------------------------------------------------------

def test_validate_accepts_synthetic_result():
    report.validate(make_result())
    report.validate(make_result(sparse=False))


def test_validate_accepts_absent_gemm_and_models():
    result = make_result()
    del result["gemm"], result["models"]
    report.validate(result)


def test_validate_rejects_missing_field():
    result = make_result()
    del result["gemm"][2]["median_s"]
    with pytest.raises(ValueError, match=r"gemm\[2\].*missing field 'median_s'"):
        report.validate(result)


@pytest.mark.parametrize("where, value, message", [
    (("gemm", 0, "M"), "16", r"gemm\[0\]\.M: expected an int >= 1"),
    (("gemm", 1, "valid"), 1, r"gemm\[1\]\.valid: expected a bool"),
    (("gemm", 1, "layout"), "coo", r"gemm\[1\]\.layout: expected one of"),
    (("gemm", 3, "sparsity"), 1.5, r"gemm\[3\]\.sparsity: expected a number in \[0, 1\]"),
    (("gemm", 0, "max_err"), float("nan"), r"gemm\[0\]\.max_err: expected a finite number"),
    (("models", 0, "compare", 0, "speedup"), None, r"models\[0\]\.compare\[0\]\.speedup"),
    (("models", 0, "unit"), "items/s", r"models\[0\]\.unit: expected one of"),
    (("models", 0, "plan", 0, "times_ms", "csr"), "fast", r"times_ms\['csr'\]"),
    (("schema",), "qrt-bench/0", r"result\.schema"),
])
def test_validate_rejects_wrong_type(where, value, message):
    result = make_result()
    target = result
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    with pytest.raises(ValueError, match=message):
        report.validate(result)


# --- Markdown --------------------------------------------------------------------------------

def test_markdown_tables_and_bold_qrt_rows():
    md = report.to_markdown(make_result())
    assert "## Machine" in md and "Test CPU" in md and "OPENBLAS_CORETYPE=Haswell" in md
    assert "### M=16 N=768 K=768" in md and "### M=128 N=768 K=768" in md
    assert "| runtime | layout | median ms | spread | GOP/s | % peak | x fp32 | x ort int8 |" in md
    assert re.search(r"^\| \*\*qrt native\*\* \| \*\*int8\*\* \| \*\*0\.100\*\* ", md, re.MULTILINE)
    assert re.search(r"^\| numpy fp32 \| fp32 \| 0\.400 ", md, re.MULTILINE)     # baselines plain
    assert "**csr 90%**" in md and "**bsr 4x4 80%**" in md and "nm 2:4" in md
    assert "INVALID" in md


def test_markdown_geomean_summary():
    rows = _gemm_rows()
    md = report.to_markdown(make_result())
    native_int8 = [r for r in rows if r["runtime"] == "qrt native" and r["layout"] == "int8"]
    expected = math.sqrt(4.0 * 2.5)                       # geomean over M=16 and M=128
    assert report.summary(rows)[("qrt native", "int8")]["vs_fp32"] == (
        pytest.approx(expected), len(native_int8))
    assert f"- **qrt native int8**: {expected:.2f}x vs fp32 (n=2)" in md
    csr_fp32 = math.exp(sum(math.log(0.40 / t) for t in (0.16, 0.10, 0.05)) / 3)
    csr_ort = math.exp(sum(math.log(0.30 / t) for t in (0.16, 0.10, 0.05)) / 3)
    assert (f"- **qrt numba csr**: {csr_fp32:.2f}x vs fp32 (n=3), "
            f"{csr_ort:.2f}x vs ort int8 (n=3)") in md
    # The invalid nm row is not summarised.
    assert ("qrt native", "nm") not in report.summary(rows)
    assert "qrt native nm" not in md.split("### Summary")[1].split("## Model")[0]


def test_markdown_models_and_omitted():
    md = report.to_markdown(make_result())
    assert "## Model bert-tiny (native, batch 1, seq 128)" in md
    assert "| onnxruntime fp32 | 5.00 | 5.50 | 2.00x |" in md
    assert "Profile (top 15 of 20 nodes by time)" in md
    assert "layer0/matmul" in md and "layer19/matmul" not in md      # only the slowest 15
    assert "int8 was faster at 128 rows" in md and "csr 0.210, int8 0.120" in md
    assert "- pytorch int8: torch is not installed" in md


# --- files -----------------------------------------------------------------------------------

def test_json_round_trip(tmp_path):
    result = make_result()
    path = report.write_json(result, tmp_path / "r.json")
    assert json.loads(path.read_text()) == result
    assert report.read_json(path) == result
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]       # no temp file left over


def test_write_json_refuses_invalid_result(tmp_path):
    result = make_result()
    result["gemm"][0]["runtime"] = None
    with pytest.raises(ValueError, match=r"gemm\[0\]\.runtime"):
        report.write_json(result, tmp_path / "r.json")
    assert not list(tmp_path.iterdir())


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE


def test_plots_are_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    result = make_result()
    assert report.plot_speedup_vs_sparsity(result, tmp_path / "s.png")
    assert report.plot_roofline(result, tmp_path / "r.png")
    _assert_png(tmp_path / "s.png")
    _assert_png(tmp_path / "r.png")


def test_plots_nothing_to_plot(tmp_path):
    result = make_result(sparse=False)
    assert not report.plot_speedup_vs_sparsity(result, tmp_path / "s.png")
    result["gemm"] = []
    assert not report.plot_roofline(result, tmp_path / "r.png")
    assert not list(tmp_path.iterdir())


def test_write_report_files(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    written = report.write_report(make_result(), tmp_path / "full")
    assert set(written) == set(report.REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == sorted(report.REPORT_FILES)
    md = written["report.md"].read_text()
    assert "![roofline.png](roofline.png)" in md
    for name in ("roofline.png", "speedup_vs_sparsity.png"):
        _assert_png(written[name])


def test_write_report_without_sparse_rows(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    written = report.write_report(make_result(sparse=False), tmp_path)
    assert set(written) == {"report.md", "report.json", "roofline.png"}
    assert not (tmp_path / "speedup_vs_sparsity.png").exists()
    assert "speedup_vs_sparsity.png: nothing to plot." in written["report.md"].read_text()


def test_write_report_without_matplotlib(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written = report.write_report(make_result(), tmp_path)
    assert set(written) == {"report.md", "report.json"}
    assert "skipped, matplotlib is not importable" in written["report.md"].read_text()


def test_write_report_does_not_mutate_result(tmp_path):
    result = make_result()
    before = copy.deepcopy(result)
    report.write_report(result, tmp_path)
    assert result == before


# --- machine ---------------------------------------------------------------------------------

FINGERPRINT_KEYS = {"cpu", "isa", "logical_cores", "threads", "os", "python", "numpy", "blas",
                    "openblas_env", "versions", "backends", "peaks", "mem_bw_gbs", "forced_paths", "key"}


def test_fingerprint_without_measuring():
    fp = machine.fingerprint(2, measure=False)
    assert set(fp) == FINGERPRINT_KEYS
    assert fp["threads"] == 2 and fp["mem_bw_gbs"] is None
    assert fp["peaks"]["int8_gops"] is None and fp["peaks"]["fp32_gflops"] is None
    assert fp["isa"] == sorted(fp["isa"]) and set(fp["isa"]) <= set(cpu_id.ISA_FLAGS)
    assert set(fp["versions"]) == {"qrt", *machine.OPTIONAL_PACKAGES}
    assert re.fullmatch(r"[0-9a-f]{12}", fp["key"])
    json.dumps(fp)                                                  # stored in report.json
    assert fp["key"] == machine.fingerprint(2, measure=False)["key"]
    assert fp["key"] != machine.fingerprint(3, measure=False)["key"]
    lines = machine.describe(fp)
    assert any(line.startswith("CPU: ") for line in lines)
    assert "Peaks: not measured (measure=False)" in lines


def test_forced_code_paths_get_their_own_key(monkeypatch):
    """Measurements taken with QRT_NATIVE_ISA / QRT_NUMBA_ISA forcing a path are not this
    machine's own: the planner must not reuse them in a normal process, nor the reverse."""
    for var in config.FORCED_PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    plain = machine.fingerprint(2, measure=False)
    assert plain["forced_paths"] == {}
    assert plain["key"] == cpu_id.machine_key(2, plain["cpu"], plain["isa"], plain["logical_cores"], {})
    monkeypatch.setenv("QRT_NATIVE_ISA", "avx2")
    forced = machine.fingerprint(2, measure=False)
    assert forced["forced_paths"] == {"QRT_NATIVE_ISA": "avx2"} and forced["key"] != plain["key"]
    assert any("forced QRT_NATIVE_ISA=avx2" in line for line in machine.describe(forced))
    monkeypatch.setenv("QRT_NUMBA_ISA", "avx2")
    assert machine.fingerprint(2, measure=False)["key"] not in (plain["key"], forced["key"])


def test_fingerprint_fits_report_schema():
    result = make_result()
    result["machine"] = machine.fingerprint(1, measure=False)
    report.validate(result)


def test_openblas_env_reporting(monkeypatch):
    for var in (*machine.OPENBLAS_VARS, machine.UNSET_ENV):
        monkeypatch.delenv(var, raising=False)
    assert machine.openblas_env() == "not set"
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert machine.openblas_env() == "set: OPENBLAS_CORETYPE=Haswell"
    monkeypatch.setenv(machine.UNSET_ENV, "OPENBLAS_CORETYPE=Haswell")
    assert machine.openblas_env().startswith("unset for this process")


def test_openblas_reexec_in_a_child_process():
    # The re-exec runs in a throw-away child; this test process keeps its environment.
    code = ("from runtime.bench.machine import openblas_reexec, openblas_env; "
            "openblas_reexec(); print(openblas_env())")
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=str(_repo_root()), timeout=60).stdout
    assert out.strip() == ("unset for this process "
                           "(OPENBLAS_CORETYPE=Haswell,OPENBLAS_L2_SIZE=1048576)")


def _repo_root():
    from pathlib import Path
    return Path(__file__).resolve().parents[1]


# --- progress --------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_silent_for_short_work():
    clock, out = FakeClock(), io.StringIO()
    with Progress(40, "gemm", stream=out, clock=clock) as bar:
        for _ in range(40):
            clock.now += 0.04                                       # 1.6 s in all
            bar.update(note="case")
    assert out.getvalue() == ""


def test_progress_log_lines_for_long_work():
    clock, out = FakeClock(), io.StringIO()
    with Progress(40, "gemm", stream=out, clock=clock) as bar:
        for i in range(40):
            clock.now += 1.0                                        # 40 s in all
            bar.update(note=f"case {i}")
    lines = out.getvalue().splitlines()
    # First line once past min_seconds, then at most one per LOG_SECONDS, then the final line.
    assert lines[0] == "gemm: 3/40 (8%), eta 37s, case 2"
    assert len(lines) == 1 + 7 + 1
    assert "gemm: 8/40 (20%), eta 32s, case 7" in lines
    assert lines[-1] == "gemm: 40/40 done in 40s"
    assert "\r" not in out.getvalue()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_tty():
    clock, out = FakeClock(), FakeTTY()
    with Progress(10, "models", stream=out, clock=clock) as bar:
        for _ in range(10):
            clock.now += 1.0
            bar.update()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") >= 8
    assert "models [" in text and "10/10 100%" in text


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


def test_markdown_overview_table():
    """One row per (K, N, M): fp32 and onnxruntime int8 GOP/s, each qrt runtime's int8 vs
    onnxruntime int8 and % peak, csr/bsr at 90% vs its dense int8 ('-' where not measured)."""
    lines = report.overview_lines(_gemm_rows())
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["K", "N", "M", "best fp32 GOP/s", "ort int8 GOP/s"]
    assert "qrt native csr 90% x int8" in header and "qrt numba int8 x ort int8" in header
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[2]: [c.strip() for c in line.strip("|").split("|")]
            for line in lines[2:]}
    m16 = dict(zip(header, rows["16"]))
    assert m16["qrt native int8 x ort int8"] == "3.00x" and m16["qrt numba int8 x ort int8"] == "1.50x"
    assert m16["qrt native csr 90% x int8"] == "2.50x" and m16["qrt native bsr 90% x int8"] == "-"
    assert m16["best fp32 GOP/s"] == f"{2 * 16 * 768 * 768 / 0.4e-3 / 1e9:.0f}"
    m128 = dict(zip(header, rows["128"]))
    assert m128["ort int8 GOP/s"] == "-" and m128["qrt numba int8 x ort int8"] == "-"


def test_a_peak_below_measured_rates_is_dropped_and_forgotten(monkeypatch):
    """issue 17: a peak probed on a busy machine ("fp32 peak 1 GOP/s") made "% peak" 8269%:
    such a peak is dropped from the result (no % peak, no roof), and its cache entry removed."""
    from runtime.bench import command, machine
    forgotten = []
    monkeypatch.setattr(machine, "forget_peaks", forgotten.append)
    rows = [{"runtime": "numpy fp32", "precision": "fp32", "pct_peak": 8269.0, "gops": 82.7},
            {"runtime": "qrt native", "precision": "int8", "pct_peak": 60.0, "gops": 600.0},
            # another library past qrt's instruction-sequence peak is not evidence against it
            {"runtime": "onnxruntime int8", "precision": "int8", "pct_peak": 161.0, "gops": 1610.0}]
    result = {"machine": {"key": "k", "peaks": {"fp32_gflops": 1.0, "int8_gops": 1000.0, "source": "probe"}},
              "gemm": rows}
    (warning,) = command.check_peaks(result)
    assert "fp32 peak, 1.0, is below rates this run measured (8269% of it)" in warning
    assert result["machine"]["peaks"]["fp32_gflops"] is None and result["machine"]["peaks"]["int8_gops"] == 1000.0
    assert rows[0]["pct_peak"] is None and rows[1]["pct_peak"] == 60.0
    assert forgotten == ["k"]
    assert command.check_peaks(result) == []       # nothing left to drop


def test_a_busy_spread_is_flagged():
    from runtime.bench.report import BUSY_SPREAD, _gemm_cells
    row = {"runtime": "qrt native", "layout": "int8", "sparsity": 0.0, "block": None, "median_s": 1e-3,
           "gops": 10.0, "pct_peak": 5.0, "valid": True, "max_err": 0.0}
    assert _gemm_cells({**row, "spread": BUSY_SPREAD + 0.01})[3].endswith("busy?")
    assert "busy" not in _gemm_cells({**row, "spread": 0.02})[3]
