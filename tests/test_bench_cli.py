"""`qrt bench` (runtime/bench/command.py, gemm.py, model.py) and `qrt inspect --plan`: the sweep
and model benchmarks run end to end at tiny sizes with short timing, write schema-valid JSON
and a report folder, degrade with a reason where onnxruntime or torch are missing, and refuse
bad arguments before any work. Nothing here checks a speed (timing belongs in benchmarks/).

Every call passes --keep-blas-env: the benchmark would otherwise re-execute the test process
without the OpenBLAS variables (tests never change the BLAS environment).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from kernels import registry
from runtime.bench import gemm, report
from tests.test_cli import assert_one_line_error, cli, good_model

pytest.importorskip("onnx")
FAST = [b for b in ("native", "numba") if registry.backend_status(b) is None]


def test_gemm_sweep_cli_json_and_report(capsys, tmp_path):
    out_json, out_dir = tmp_path / "g.json", tmp_path / "rep"
    rc, out, err = cli(capsys, "bench", "--gemm", "--shapes", "64x32", "--m", "1,5", "--sparsity", "0.5,0.9",
                       "--seconds", "0.002", "--threads", "1", "--keep-blas-env", "--json", out_json,
                       "--report", out_dir)
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    report.validate(res)
    assert res["command"].startswith("qrt bench --gemm --shapes 64x32")
    rows = res["gemm"]
    assert {(r["M"], r["N"], r["K"]) for r in rows} == {(1, 32, 64), (5, 32, 64)}
    assert all(r["valid"] for r in rows), [r for r in rows if not r["valid"]]
    for b in FAST:
        got = {(r["layout"], r["sparsity"]) for r in rows if r["runtime"] == f"qrt {b}" and r["M"] == 5}
        assert got == {("int8", 0.0), ("int4", 0.0), ("csr", 0.5), ("csr", 0.9), ("bsr", 0.5), ("bsr", 0.9),
                       ("nm", 0.5)}, (b, got)
    assert "numpy fp32" in {r["runtime"] for r in rows}
    # the integer layouts are bit-exact with their reference kernel
    assert all(r["max_err"] == 0 for r in rows if r["runtime"].startswith("qrt ") and r["layout"] != "int4")
    # ratios are consistent with the medians of the same run
    fp32 = {r["M"]: min(x["median_s"] for x in rows if x["M"] == r["M"] and x["layout"] == "fp32") for r in rows}
    for r in rows:
        assert r["vs_fp32"] == pytest.approx(fp32[r["M"]] / r["median_s"])
        if r["layout"] in ("csr", "bsr", "nm") and r["vs_dense_int8"] is not None:
            dense = next(x for x in rows if x["M"] == r["M"] and x["runtime"] == r["runtime"] and x["layout"] == "int8")
            assert r["vs_dense_int8"] == pytest.approx(dense["median_s"] / r["median_s"])
    assert "## GEMM" in out and "| **qrt" in out                 # the Markdown on stdout
    written = sorted(p.name for p in out_dir.iterdir())
    assert written[:2] == ["report.json", "report.md"] or "report.md" in written
    if "speedup_vs_sparsity.png" in written:                      # matplotlib installed
        assert (out_dir / "roofline.png").read_bytes()[:4] == b"\x89PNG"


def test_gemm_sweep_times_seven_bit_weights_beside_int8(capsys, tmp_path):
    """--layouts int8,int8w7: the 7-bit-weight rows (--weight-bits 7's packing, max |q| 63)
    beside int8 on every fast backend, bit-exact with the reference; an unknown layout is a
    usage error naming the known ones."""
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    t, label = gemm.pack_case(w, "int8w7")
    assert t.layout == "int8" and label == "w7" and np.abs(t.fields["qdata"].astype(int)).max() == 63
    out_json = tmp_path / "g.json"
    rc, out, err = cli(capsys, "bench", "--gemm", "--shapes", "64x32", "--m", "5", "--layouts", "int8,int8w7",
                       "--seconds", "0.002", "--threads", "1", "--keep-blas-env", "--no-baselines", "--json", out_json)
    assert rc == 0, err
    rows = json.loads(out_json.read_text())["gemm"]
    for b in FAST:
        got = {r["layout"]: r for r in rows if r["runtime"] == f"qrt {b}"}
        assert set(got) == {"int8", "int8w7"} and all(r["valid"] and r["max_err"] == 0 for r in got.values()), got
    rc, out, err = cli(capsys, "bench", "--gemm", "--layouts", "int7", "--keep-blas-env")
    assert rc == 1 and "int8w7" in err, err


def test_gemm_degrades_without_onnxruntime_and_torch(monkeypatch):
    """Rows omitted, each with its reason, when the other runtimes are not installed."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)         # import raises ImportError
    monkeypatch.setitem(sys.modules, "torch", None)
    omitted: list = []
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    impls = gemm.baseline_impls(w, np.zeros(16, np.float32), 1, "/nonexistent", omitted)
    assert [i.runtime for i in impls] == ["numpy fp32"]
    reasons = {o["what"]: o["reason"] for o in omitted}
    assert "not installed" in reasons["onnxruntime fp32 / int8"] and "not installed" in reasons["pytorch int8"]
    # the sweep goes on with what there is, and the report lists the omissions
    sweep = gemm.Sweep(shapes=[(32, 16)], ms=(2,), sparsities=(0.9,), layouts=("int8", "csr"),
                       backends=("reference", "cupy"), threads=1, min_seconds=0.001)
    rows, omitted = gemm.run_sweep(sweep, peaks=None)
    assert {r["runtime"] for r in rows} == {"qrt reference", "numpy fp32"}
    assert any(o["what"] == "qrt cupy" for o in omitted)          # no GPU here: omitted with the reason
    assert all(r["pct_peak"] is None and r["vs_ort_int8"] is None for r in rows)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    good_model(d / "m.onnx")
    from runtime.cli import main
    assert main(["convert", str(d / "m.onnx"), "-o", str(d / "m.qrt"), "--prune", "magnitude", "--sparsity",
                 "0.5", "--quant", "int8"]) == 0
    return d


def test_model_bench_compare_profile(capsys, tmp_path, model_files):
    pytest.importorskip("onnxruntime")
    out_json = tmp_path / "m.json"
    rc, out, err = cli(capsys, "bench", model_files / "m.qrt", "--batch", "3", "--compare", model_files / "m.onnx",
                       "--profile", "--seconds", "0.01", "--keep-blas-env", "--json", out_json)
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    report.validate(res)
    (m,) = res["models"]
    assert (m["model"], m["backend"], m["batch"], m["unit"]) == ("m.qrt", "auto", 3, "samples/s")
    assert m["bytes"] == (model_files / "m.qrt").stat().st_size
    assert m["throughput"] == pytest.approx(3 / (m["latency_ms"]["median"] / 1e3))
    runtimes = [c["runtime"] for c in m["compare"]]
    assert runtimes == ["qrt auto", "onnxruntime fp32", "onnxruntime int8", "qrt auto fp32"]
    by = {c["runtime"]: c for c in m["compare"]}
    assert by["onnxruntime fp32"]["max_abs_err"] == 0 and by["qrt auto"]["speedup"] == 1.0
    assert by["qrt auto fp32"]["cosine"] > 0.99999             # qrt's dense fp32 is the same model
    assert by["qrt auto"]["cosine"] > 0.9                     # 50% pruned + int8: close, not equal
    ops = {p["op"] for p in m["profile"]}
    assert "Linear" in ops and abs(sum(p["share"] for p in m["profile"]) - 1) < 1e-6
    if FAST:
        assert m["plan"] and all(p["chosen"] in p["times_ms"] for p in m["plan"])
    assert "Against other runtimes" in out


def test_inspect_plan(capsys, model_files):
    rc, out, err = cli(capsys, "inspect", model_files / "m.qrt", "--plan", "8")
    assert rc == 0, err
    assert "layer plan for 8 rows" in out
    if FAST:
        assert "stored layout kept" in out or "faster" in out
    rc, out, err = cli(capsys, "inspect", model_files / "m.qrt", "--plan", "4", "--json")
    info = json.loads(out)
    assert isinstance(info["plan"], list)
    assert all(p["rows"] == 4 for p in info["plan"])


@pytest.mark.parametrize("args, fragments", [
    (["bench"], ["nothing to benchmark"]),
    (["bench", "--gemm", "--shapes", "12by5"], ["--shapes", "'12by5'", "KxN"]),
    (["bench", "--gemm", "--sparsity", "1.5"], ["--sparsity", "not in (0, 1)"]),
    (["bench", "--gemm", "--m", "0"], ["--m", "not >= 1"]),
    (["bench", "--gemm", "--layouts", "coo"], ["--layouts", "'coo'", "int8"]),
    (["bench", "--gemm", "--backend", "gpu"], ["unknown backend 'gpu'"]),
    (["bench", "missing.qrt"], ["no such .qrt file"]),
    (["bench", "--gemm", "--compare", "x.onnx"], ["--compare needs a MODEL.qrt"]),
    (["bench", "FILE", "--compare", "missing.onnx"], ["--compare missing.onnx: no such ONNX file"]),
    (["bench", "--gemm", "--json", "/no/such/dir/out.json"], ["does not exist"]),
    (["inspect", "FILE", "--plan", "0"], ["--plan ROWS must be >= 1"]),
])
def test_bench_argument_errors(capsys, model_files, args, fragments):
    args = [str(model_files / "m.qrt") if a == "FILE" else a for a in args]
    rc, out, err = cli(capsys, *args, "--keep-blas-env") if args[0] == "bench" else cli(capsys, *args)
    assert_one_line_error(rc, out, err, args[0], *fragments)
    assert "peaks" not in err        # refused before any measuring
