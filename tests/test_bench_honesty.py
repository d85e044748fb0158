"""qrt bench's honesty rules: peaks measured once per machine and cached (re-measured on
request), a warning when the machine is busy, and models with a sequence axis benchmarked at a
stated sequence length, never a silent 1."""
from __future__ import annotations

import json

import pytest

from runtime.bench import machine, model

torch = pytest.importorskip("torch")


@pytest.fixture
def quiet_machine(monkeypatch):
    """The peak tests as on an idle machine, whatever this one's load is."""
    monkeypatch.setattr(machine, "busy_warning", lambda threads: None)


def test_peaks_are_cached_per_machine_and_remeasured_on_request(tmp_path, monkeypatch, quiet_machine):
    monkeypatch.setenv("QRT_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(machine, "measure_peaks", lambda threads: calls.append(threads) or
                        {"int8_gops": 100.0 + len(calls), "fp32_gflops": 50.0, "threads": threads, "source": "probe"})
    monkeypatch.setattr(machine, "copy_bandwidth_gbs", lambda threads: 20.0)
    first = machine.fingerprint(2)
    assert calls == [2] and first["peaks"]["source"] == "probe" and first["peaks"]["int8_gops"] == 101.0
    second = machine.fingerprint(2)
    assert calls == [2], "the second run must read the cache, not measure"
    assert second["peaks"]["int8_gops"] == 101.0 and second["mem_bw_gbs"] == 20.0
    assert "cached in" in second["peaks"]["source"] and "--remeasure-peaks" in second["peaks"]["source"]
    third = machine.fingerprint(2, remeasure=True)
    assert calls == [2, 2] and third["peaks"]["int8_gops"] == 102.0
    assert json.loads((tmp_path / machine.PEAKS_FILE).read_text())[third["key"]]["peaks"]["int8_gops"] == 102.0


def test_peaks_cached_by_another_probe_version_are_measured_again(tmp_path, monkeypatch, quiet_machine):
    """A fixed probe (PEAK_PROBE_VERSION) must not keep reading the old probe's figures."""
    monkeypatch.setenv("QRT_CACHE_DIR", str(tmp_path))
    key = machine.fingerprint(2, measure=False)["key"]
    old = {"peaks": {"int8_gops": 97.0, "fp32_gflops": 50.0}, "mem_bw_gbs": 20.0, "measured": "2026-12-03"}
    (tmp_path / machine.PEAKS_FILE).write_text(json.dumps({key: old}))   # written before "probe" existed
    monkeypatch.setattr(machine, "measure_peaks", lambda threads: {"int8_gops": 188.0, "fp32_gflops": 50.0, "source": "probe"})
    monkeypatch.setattr(machine, "copy_bandwidth_gbs", lambda threads: 20.0)
    assert machine.fingerprint(2)["peaks"]["int8_gops"] == 188.0
    entry = json.loads((tmp_path / machine.PEAKS_FILE).read_text())[key]
    assert entry["probe"] == machine.PEAK_PROBE_VERSION and entry["peaks"]["int8_gops"] == 188.0
    assert machine.fingerprint(2)["peaks"]["int8_gops"] == 188.0     # and now it is a cache hit


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": 5}'])
def test_a_broken_peaks_cache_is_remeasured_not_fatal(tmp_path, monkeypatch, content, quiet_machine):
    monkeypatch.setenv("QRT_CACHE_DIR", str(tmp_path))
    (tmp_path / machine.PEAKS_FILE).write_text(content)
    monkeypatch.setattr(machine, "measure_peaks", lambda threads: {"int8_gops": 1.0, "fp32_gflops": 1.0, "source": "probe"})
    monkeypatch.setattr(machine, "copy_bandwidth_gbs", lambda threads: 1.0)
    assert machine.fingerprint(1)["peaks"]["source"] == "probe"


def test_peaks_probed_on_a_busy_machine_are_not_cached(tmp_path, monkeypatch):
    """A peak measured beside other work is low; cached, it would stand for every later run."""
    monkeypatch.setenv("QRT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "busy_warning", lambda threads: "the machine is busy (load 3.0)")
    monkeypatch.setattr(machine, "measure_peaks", lambda threads: {"int8_gops": 1.0, "fp32_gflops": 1.0,
                                                                   "source": "probe"})
    monkeypatch.setattr(machine, "copy_bandwidth_gbs", lambda threads: 1.0)
    fp = machine.fingerprint(1)
    assert fp["peaks"]["int8_gops"] == 1.0 and "not cached: the machine is busy" in fp["peaks"]["source"]
    assert not (tmp_path / machine.PEAKS_FILE).exists()


def test_busy_warning(monkeypatch):
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    assert "load average 3.00" in machine.busy_warning(2)
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (0.2, 1.0, 1.0))
    assert machine.busy_warning(2) is None
    fp = {"busy_warning": "the machine is busy"}
    assert any("Warning" in line for line in machine.describe(fp))


def test_sequence_models_get_a_stated_default_seq(tmp_path):
    import runtime
    from tests import model_zoo
    data = model_zoo.export(model_zoo.bert(layers=1, hidden=32, heads=2, ffn=64),
                            (torch.randint(0, 100, (1, 8)), torch.ones(1, 8, dtype=torch.int64)),
                            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state", "pooler_output"],
                            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    path = tmp_path / "bert.qrt"
    runtime.save(runtime.convert(data), path)
    logs = []
    result = model.bench_model(path, "reference", batch=1, min_seconds=0.05, log=logs.append)
    assert result["seq"] == model.DEFAULT_SEQ
    assert any(f"seq {model.DEFAULT_SEQ}" in line for line in logs)
    mlp = tmp_path / "mlp.qrt"
    runtime.save(runtime.convert(model_zoo.small_mlp_onnx()), mlp)
    assert model.bench_model(mlp, "reference", batch=2, min_seconds=0.05)["seq"] is None


@pytest.mark.parametrize("isa, want", [(["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"],
                                        "AMX-INT8 + AVX-512 VNNI"),
                                       (["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"], "AVX-512 VNNI"),
                                       (["avx2", "fma", "avx_vnni"], "AVX-VNNI (256-bit), no AVX-512"),
                                       (["avx2", "fma"], "AVX2 + FMA, no AVX-512, no VNNI"),
                                       ([], "no AVX2 (scalar int8 kernels)")])
def test_cpu_class_names_the_int8_path(isa, want):
    assert machine.cpu_class(isa) == want
