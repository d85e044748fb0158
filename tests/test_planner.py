"""Per-layer planning (runtime/planner.py): equivalent layouts compute the same function, the
choice follows the measurements (injected timers, so no test depends on this CPU's speed or
load) and a session falls back from a sparse layout that measures slower than dense int8,
the disk cache, and the session's options. Real measurements of the same decision are
benchmarks/planner_fallback.py's."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from kernels import registry
from kernels.reference.packed import PackedPlan, packed_linear_ref
from runtime import InferenceSession, planner
from runtime.graph import Graph, Node, Value
from kernels.core.layouts import dense_tensor, pack, pack_int8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAST = tuple(b for b in registry.AUTO_ORDER if b != "reference" and registry.backend_status(b) is None)
needs_fast = pytest.mark.skipif(not FAST, reason="no fast CPU backend (numba / native) is usable here")


def _weight(layout: str, n: int, k: int, sparsity: float, seed: int = 0, **opts):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if layout in ("int8", "int4_grouped", "dense"):
        return pack(layout, "w", w, **opts)
    if layout == "nm":
        return pack("nm", "w", w, np.abs(w) >= np.sort(np.abs(w).reshape(n, -1, 4), axis=2)[:, :, 2:3].repeat(4, 2)
                    .reshape(n, k), **opts)
    mask = rng.random((n, k)) >= sparsity
    if layout == "bsr":
        bm = rng.random((n // 4, k // 4)) >= sparsity
        mask = np.kron(bm, np.ones((4, 4), bool))
        return pack("bsr", "w", w, mask, block_shape=(4, 4), **opts)
    return pack(layout, "w", w, mask, **opts)


def _graph(weight, attrs: dict, n: int, k: int) -> Graph:
    b = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    g = Graph("t", [Value("x", "float32", ("m", k))], [Value("y", "float32", ("m", n))],
              [Node("fc", "Linear", ["x", "w", "b"], ["y"], dict(attrs))],
              {"w": weight, "b": dense_tensor("b", b)})
    g.validate()
    return g


# --- equivalent layouts ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["csr", "bsr", "nm"])
@pytest.mark.parametrize("act", [{"act_quant": "dynamic"}, {"act_quant": "static", "act_scale": 0.05,
                                                             "act_zero_point": 3}, {"act_quant": "none"}])
@pytest.mark.parametrize("per_channel", [True, False])
def test_sparse_int8_equivalent_is_bit_identical(layout, act, per_channel):
    """The dense int8 fallback of a sparse int8 weight gives the very bits of the reference."""
    t = _weight(layout, 12, 32, 0.6, quant="int8", per_channel=per_channel)
    eq = planner.equivalent_weights(t, act)
    assert set(eq) == {layout, "int8"}
    d = eq["int8"]
    assert d.layout == "int8" and d.params == {"per_channel": per_channel, "symmetric": True}
    np.testing.assert_array_equal(d.to_dense(), t.to_dense())
    x = np.random.default_rng(2).standard_normal((5, 32)).astype(np.float32)
    gemm = {k: v for k, v in act.items() if k != "act_quant"}
    want = packed_linear_ref(x, PackedPlan(t, act["act_quant"], **gemm))
    got = packed_linear_ref(x, PackedPlan(d, act["act_quant"], **gemm))
    np.testing.assert_array_equal(got, want)


def test_equivalents_of_float_and_int4_weights():
    t = _weight("csr", 8, 16, 0.5)                       # float values
    eq = planner.equivalent_weights(t, {"act_quant": "none"})
    assert set(eq) == {"csr", "dense"}
    np.testing.assert_array_equal(eq["dense"], t.to_dense())
    i4 = _weight("int4_grouped", 8, 64, 0, group_size=32)
    assert set(planner.equivalent_weights(i4, {"act_quant": "none"})) == {"int4_grouped", "dense"}
    # with quantized activations a float32 weight would change the results: not a candidate
    assert set(planner.equivalent_weights(i4, {"act_quant": "dynamic"})) == {"int4_grouped"}
    i8 = _weight("int8", 8, 16, 0)
    assert set(planner.equivalent_weights(i8, {"act_quant": "dynamic"})) == {"int8"}


@needs_fast
def test_candidates_stored_first_and_no_reference():
    t = _weight("csr", 8, 16, 0.5, quant="int8")
    c = planner.candidates("Linear", t, {"act_quant": "dynamic"}, registry.AUTO_ORDER)
    assert c[0].layout == "csr" and c[0].backend == FAST[0]
    assert {x.layout for x in c} == {"csr", "int8"}
    assert all(x.backend != "reference" for x in c)


# --- choices from (injected) timings ---------------------------------------------------------------

class FakeTimer:
    """Seconds per candidate layout (the planner's timer hook); runs each kernel once, as the
    real one does, and records which it was asked to time."""

    def __init__(self, layer_ref, seconds: dict[str, float]):
        self.layer_ref, self.seconds, self.calls = layer_ref, seconds, []

    def __call__(self, runs, inputs):
        out = {}
        for label, run in runs.items():
            run(*inputs)
            self.calls.append(label)
            out[label] = self.seconds[label.split("/")[0]]
        return out


def _layer(seconds: dict[str, float], cache=None, mode="auto"):
    t = _weight("csr", 8, 16, 0.5, quant="int8")
    attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic"})
    cands = [planner.Candidate("csr", "reference", t), planner.Candidate("int8", "reference",
                                                                         planner.equivalent_weights(t, attrs)["int8"])]
    ref = []
    timer = FakeTimer(ref, seconds)
    log: list = []

    def build(c):
        return registry.build("Linear", c.layout, c.backend, attrs, {1: c.weight})
    layer = planner.PlannedLayer("fc", "Linear", attrs, t, cands, build, 1, mode, cache, log, timer=timer)
    ref.append(layer)
    return layer, t, log, timer


def test_slower_stored_layout_falls_back():
    layer, t, log, timer = _layer({"csr": 3e-3, "int8": 1e-3})
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    (y,) = layer(x, t, None)
    assert [r["chosen"] for r in log] == ["int8/reference"]
    assert log[0]["stored"] == "csr/reference" and log[0]["rows"] == 3
    assert log[0]["holds_for"] == "up to 4 rows"
    assert "3.00x faster" in log[0]["reason"] and "measured" in log[0]["reason"]
    np.testing.assert_array_equal(y, registry.build("Linear", "csr", "reference",
                                                    registry.fill_attrs("Linear", {"act_quant": "dynamic"}),
                                                    {1: t})(x, t, None)[0])
    layer(x[:4], t, None)                        # same bucket (4 rows): no new measurement
    assert len(timer.calls) == 2 and len(log) == 1
    layer(x[:1], t, None)                        # a new size: measured again
    assert len(timer.calls) == 4 and [r["rows"] for r in log] == [3, 1]


def _two_backend_layer(threads: int, stored_s: float, other_s: float, cache=None):
    """A layer stored as int8/reference with an int8 candidate on another CPU backend, timed
    by a fake timer at the given seconds: (layer, weight, log, other label)."""
    other = next((b for b in ("numba", "native") if registry.backend_status(b) is None), None)
    if other is None:
        pytest.skip("needs a second backend with an int8 Linear")
    t = pack_int8("w", np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32))
    attrs = registry.fill_attrs("Linear", {"act_quant": "dynamic"})
    cands = [planner.Candidate("int8", "reference", t), planner.Candidate("int8", other, t)]
    seconds = {"int8/reference": stored_s, f"int8/{other}": other_s}
    log: list = []
    layer = planner.PlannedLayer("fc", "Linear", attrs, t, cands,
                                 lambda c: registry.build("Linear", c.layout, c.backend, attrs, {1: c.weight}),
                                 threads, "auto", cache, log,
                                 timer=lambda runs, inputs: {k: seconds[k] for k in runs})
    return layer, t, log, f"int8/{other}"


@pytest.mark.parametrize("threads,other_s,moved", [(2, 0.80e-3, False), (2, 0.60e-3, True), (1, 0.80e-3, True)])
def test_another_backend_pays_the_pool_switch_with_several_threads(monkeypatch, threads, other_s, moved):
    """A candidate on another backend than the stored one is charged POOL_SWITCH_S (0.15 ms)
    with more than one thread: 0.80 ms against the stored 1.00 ms stays put (0.95 ms charged is
    not 10% faster), 0.60 ms moves; with one thread nothing is charged."""
    monkeypatch.setattr(planner.core_threads, "openmp_may_spin", lambda: False)
    layer, t, log, other = _two_backend_layer(threads, 1.0e-3, other_s)
    layer(np.ones((2, 16), np.float32), t, None)
    assert log[0]["chosen"] == (other if moved else "int8/reference"), log[0]
    if not moved:
        assert "0.15 ms more" in log[0]["reason"]


@pytest.mark.parametrize("stored_s,other_s,moved", [(1.0e-3, 0.3e-3, False), (20e-3, 10e-3, True)])
def test_spinning_openmp_workers_make_the_switch_dearer(monkeypatch, stored_s, other_s, moved):
    """Where numba's OpenMP workers spin after each call (torch imported first), a candidate on
    another backend is charged SPINNING_POOL_SWITCH_S (5 ms): 3x faster at 1 ms stays put,
    10 ms against 20 ms (15 ms charged) still moves."""
    monkeypatch.setattr(planner.core_threads, "openmp_may_spin", lambda: True)
    layer, t, log, other = _two_backend_layer(2, stored_s, other_s)
    layer(np.ones((2, 16), np.float32), t, None)
    assert log[0]["chosen"] == (other if moved else "int8/reference"), log[0]
    if not moved:
        assert "5.00 ms more" in log[0]["reason"]


def test_cached_timings_are_judged_by_the_current_rule(tmp_path, monkeypatch):
    """The cache keeps timings; the choice is made from them by the running version's rule, so
    an entry chosen under a smaller charge (or written by an older version) does not hold a
    layer on another backend that the charge now rules out."""
    cache = planner.PlanCache(tmp_path / "plans.json")
    monkeypatch.setattr(planner.core_threads, "openmp_may_spin", lambda: False)
    layer, t, log, other = _two_backend_layer(2, 1.0e-3, 0.6e-3, cache)
    layer(np.ones((2, 16), np.float32), t, None)
    assert log[0]["chosen"] == other
    monkeypatch.setattr(planner.core_threads, "openmp_may_spin", lambda: True)
    layer2, t2, log2, _ = _two_backend_layer(2, 9.0, 9.0, planner.PlanCache(tmp_path / "plans.json"))
    layer2(np.ones((2, 16), np.float32), t2, None)
    assert log2[0]["chosen"] == "int8/reference" and "(cached)" in log2[0]["reason"], log2[0]
    assert log2[0]["times_ms"][other] == pytest.approx(0.6)        # the cached timings, not 9 s


def test_stored_layout_kept_within_margin():
    layer, t, log, _ = _layer({"csr": 1.05e-3, "int8": 1e-3})
    layer(np.ones((2, 16), np.float32), t, None)
    assert log[0]["chosen"] == "csr/reference" and "stored layout kept" in log[0]["reason"]


def test_cache_file_is_per_kernel_build(tmp_path, monkeypatch):
    """Timings measured with other kernels (an upgrade, a rebuild of the extension) are not this
    build's: the cache file's name carries a digest of the kernels package's .py and .so files."""
    pkg = tmp_path / "kernels"
    (pkg / "native_cpu").mkdir(parents=True)
    (pkg / "registry.py").write_text("# registry\n")
    ext = pkg / "native_cpu" / "_native.so"
    ext.write_bytes(b"build 1")
    (pkg / "notes.txt").write_text("not code")
    monkeypatch.setattr(planner, "registry", type("R", (), {"__file__": str(pkg / "registry.py")}))
    monkeypatch.setenv("QRT_CACHE_DIR", str(tmp_path / "cache"))

    def key():
        monkeypatch.setattr(planner, "_BUILD_KEY", None)
        return planner.kernel_build_key()
    first = key()
    assert planner.cache_file().name == f"plans-{planner.machine_key()}-{first}.json"
    (pkg / "notes.txt").write_text("changed, but not code")
    assert key() == first
    ext.write_bytes(b"build 2")                    # a rebuilt extension
    second = key()
    assert second != first
    (pkg / "native_cpu" / "conv.py").write_text("# a changed driver\n")
    assert key() not in (first, second)
    assert planner.default_cache().path == planner.cache_file()


def test_cache_round_trip(tmp_path):
    cache = planner.PlanCache(tmp_path / "plans.json")
    layer, t, log, timer = _layer({"csr": 3e-3, "int8": 1e-3}, cache)
    x = np.ones((2, 16), np.float32)
    layer(x, t, None)
    data = json.loads((tmp_path / "plans.json").read_text())
    assert data["version"] == planner.CACHE_VERSION and len(data["entries"]) == 1
    (entry,) = data["entries"].values()
    assert entry["chosen"] == "int8/reference" and set(entry["times_ms"]) == {"csr/reference", "int8/reference"}
    # a new layer (new session) of the same structure on the same machine: no measurement
    layer2, t2, log2, timer2 = _layer({"csr": 1e-3, "int8": 9e-3}, planner.PlanCache(tmp_path / "plans.json"))
    layer2(x, t2, None)
    assert timer2.calls == [] and log2[0]["chosen"] == "int8/reference" and "(cached)" in log2[0]["reason"]
    # "measure" ignores the cache, and refreshes it
    layer3, t3, log3, timer3 = _layer({"csr": 1e-3, "int8": 9e-3}, planner.PlanCache(tmp_path / "plans.json"),
                                      mode="measure")
    layer3(x, t3, None)
    assert len(timer3.calls) == 2 and log3[0]["chosen"] == "csr/reference"
    assert json.loads((tmp_path / "plans.json").read_text())["entries"][next(iter(data["entries"]))][
        "chosen"] == "csr/reference"


def _an_entry_key(tmp_path) -> str:
    """The key _layer's layer writes (measured once in a scratch cache)."""
    scratch = planner.PlanCache(tmp_path / "scratch.json")
    layer, t, _, _ = _layer({"csr": 3e-3, "int8": 1e-3}, scratch)
    layer(np.ones((2, 16), np.float32), t, None)
    return next(iter(json.loads((tmp_path / "scratch.json").read_text())["entries"]))


# Valid JSON of the wrong shape: each once made every session on the machine fail (TypeError,
# AttributeError, KeyError, ZeroDivisionError), and the file stayed
_GOOD = {"chosen": "csr/reference", "times_ms": {"csr/reference": 1.0, "int8/reference": 2.0}}
BAD_CACHES = {
    "not json": "{not json",
    "entries a number": {"version": planner.CACHE_VERSION, "entries": 5},
    "a list": [1, 2],
    "entry a number": {"KEY": 5},
    "entry a list": {"KEY": [1]},
    "no times_ms": {"KEY": {"chosen": "csr/reference"}},
    "zero time": {"KEY": {**_GOOD, "times_ms": {"csr/reference": 0.0, "int8/reference": 0.0}}},
    "NaN time": {"KEY": {**_GOOD, "times_ms": {"csr/reference": float("nan"), "int8/reference": 1.0}}},
    "chosen not timed": {"KEY": {"chosen": "csr/reference", "times_ms": {"int8/reference": 1.0}}},
    "a label missing": {"KEY": {"chosen": "csr/reference", "times_ms": {"csr/reference": 1.0}}},
    "chosen a number": {"KEY": {**_GOOD, "chosen": 3}},
}


@pytest.mark.parametrize("case", list(BAD_CACHES))
def test_malformed_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, case):
    bad = BAD_CACHES[case]
    if isinstance(bad, dict) and "KEY" in bad:
        bad = {"version": planner.CACHE_VERSION, "entries": {_an_entry_key(tmp_path): bad["KEY"]}}
    path = tmp_path / "plans.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    layer, t, log, timer = _layer({"csr": 3e-3, "int8": 1e-3}, planner.PlanCache(path))
    with pytest.warns(planner.QrtCacheWarning, match=str(path)) if case != "a label missing" else _no_warning():
        layer(np.ones((2, 16), np.float32), t, None)
    assert log[0]["chosen"] == "int8/reference" and "(measured)" in log[0]["reason"]
    data = json.loads(path.read_text())          # rewritten: the next session reads it cleanly
    assert data["version"] == planner.CACHE_VERSION
    assert all(planner.valid_entry(e) for e in data["entries"].values()) and len(data["entries"]) == 1
    layer2, t2, log2, timer2 = _layer({"csr": 3e-3, "int8": 1e-3}, planner.PlanCache(path))
    layer2(np.ones((2, 16), np.float32), t2, None)
    assert timer2.calls == [] and "(cached)" in log2[0]["reason"]


@contextlib.contextmanager
def _no_warning():
    """A well-formed entry that does not time every candidate of this layer (written with
    other candidates) is re-measured without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", planner.QrtCacheWarning)
        yield


def test_unwritable_cache_warns_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "plans.json"
    path.mkdir()                                   # the cache path is a directory
    layer, t, log, _ = _layer({"csr": 3e-3, "int8": 1e-3}, planner.PlanCache(path))
    with pytest.warns(planner.QrtCacheWarning, match="not written"):
        layer(np.ones((2, 16), np.float32), t, None)
    assert log[0]["chosen"] == "int8/reference"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plans.json", "plans.json.lock"]
    assert list(path.iterdir()) == []


_WRITER = """
import sys
from runtime import planner
cache = planner.PlanCache(__import__("pathlib").Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    cache.put(f"{sys.argv[2]}-{i}", {"chosen": "a", "times_ms": {"a": 1.0 + i}})
"""


def test_processes_planning_into_one_cache_keep_every_entry(tmp_path):
    """Four processes each write 40 entries into one cache at once: every entry survives (the
    read-merge-replace of each write is under the cache's lock; without it entries are lost)."""
    path = tmp_path / "plans.json"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{j}", "40"], cwd=ROOT)
             for j in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 160 and all(planner.valid_entry(e) for e in entries.values())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- sessions, real timing -------------------------------------------------------------------------

@needs_fast
@pytest.mark.parametrize("backend", ["auto", *FAST])
def test_session_falls_back_from_slower_sparse_to_dense_int8(backend, monkeypatch):
    """The acceptance case, end to end through a session: a 10%-sparse CSR int8 layer whose
    stored layout measures slower than dense int8 runs as dense int8, with identical outputs.
    The timings are injected (the planner's module-level ``measure``), so the test does not
    depend on this CPU or on how busy it is; benchmarks/planner_fallback.py measures the same
    layer for real."""
    timed: list[str] = []

    def fake_measure(runs, inputs):
        for label, run in runs.items():       # run each candidate once, as the real timer does
            run(*inputs)
            timed.append(label)
        return {label: 3e-3 if label.startswith("csr/") else 1e-3 for label in runs}
    monkeypatch.setattr(planner, "measure", fake_measure)
    n, k = 256, 512
    g = _graph(_weight("csr", n, k, 0.10, quant="int8"), {"act_quant": "dynamic"}, n, k)
    x = np.random.default_rng(3).standard_normal((16, k)).astype(np.float32)
    off = InferenceSession(g, backend, plan="off", threads=1)
    on = InferenceSession(g, backend, plan="measure", threads=1)
    want = off.run(None, {"x": x})[0]
    got = on.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert off.layer_plan == []
    (rec,) = on.layer_plan
    assert rec["stored"].startswith("csr/") and rec["chosen"].startswith("int8/"), rec
    assert rec["times_ms"] == {label: (3.0 if label.startswith("csr/") else 1.0) for label in timed}
    assert "3.00x faster" in rec["reason"] and "(measured)" in rec["reason"]
    on.run(None, {"x": x})                    # decided once: the same input size is not timed again
    assert len(timed) == len(rec["times_ms"])


@pytest.mark.skipif(not {"native", "numba"} <= set(FAST), reason="needs the native and numba backends")
@pytest.mark.parametrize("threads", [1, 2])
def test_session_threads_reach_every_candidate_backend(threads, monkeypatch):
    """A session's thread count reaches the backends its planner may pick at run time, not only
    the stored layout's: an int8 layer stored for the native backend also has a numba
    candidate, which must be timed and run with the session's threads (a threads=1 session
    timed numba on its whole pool, picked it, and then woke numba's OpenMP workers at every
    call: 11 ms instead of 2 ms per MiniLM run after a 20 ms pause, RESULTS.md)."""
    import numba
    pool = numba.config.NUMBA_NUM_THREADS
    if pool < 2:
        pytest.skip("numba's pool has one thread")
    seen: dict[str, int] = {}

    def fake_measure(runs, inputs):
        for label, run in runs.items():
            run(*inputs)
            seen[label] = numba.get_num_threads()
        return {label: 1e-3 for label in runs}
    monkeypatch.setattr(planner, "measure", fake_measure)
    n, k = 64, 128
    g = _graph(_weight("int8", n, k, 0.0), {"act_quant": "dynamic"}, n, k)
    numba.set_num_threads(pool)                   # what a fresh process has
    s = InferenceSession(g, "auto", plan="measure", threads=threads)
    s.run(None, {"x": np.random.default_rng(5).standard_normal((16, k)).astype(np.float32)})
    assert "int8/numba" in seen and "int8/native" in seen, seen
    assert seen["int8/numba"] == min(threads, pool), seen
    assert numba.get_num_threads() == min(threads, pool)


@needs_fast
def test_session_plan_layers_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QRT_CACHE_DIR", str(tmp_path))
    n, k = 64, 128
    g = _graph(_weight("csr", n, k, 0.9, quant="int8"), {"act_quant": "dynamic"}, n, k)
    s = InferenceSession(g, plan="auto", threads=1)
    recs = s.plan_layers(8)
    assert len(recs) == 1 and recs[0]["rows"] == 8 and recs[0]["node"] == "fc"
    assert recs[0]["holds_for"] == "up to 8 rows"
    assert "(measured)" in recs[0]["reason"]
    assert list(tmp_path.glob("plans-*.json"))
    s2 = InferenceSession(g, plan="auto", threads=1)
    (rec2,) = s2.plan_layers(7)                  # bucket 8 again: from the cache
    assert "(cached)" in rec2["reason"] and rec2["chosen"] == recs[0]["chosen"]
    x = np.random.default_rng(4).standard_normal((7, k)).astype(np.float32)
    np.testing.assert_array_equal(s2.run(None, {"x": x})[0],
                                  InferenceSession(g, plan="off").run(None, {"x": x})[0])


@needs_fast
def test_float_layers_are_not_planned():
    """int4 weight-only and float sparse have dense fp32 equivalents, but those sum in another
    order: a session runs them as stored (one candidate, nothing measured)."""
    for t in (_weight("int4_grouped", 32, 128, 0, group_size=32), _weight("csr", 32, 128, 0.5)):
        assert [c.label for c in planner.candidates("Linear", t, {"act_quant": "none"}, registry.AUTO_ORDER)] \
            == [f"{t.layout}/{FAST[0]}"]
        g = _graph(t, {"act_quant": "none"}, 32, 128)
        s = InferenceSession(g, plan="measure", threads=1)
        x = np.random.default_rng(5).standard_normal((4, 128)).astype(np.float32)
        np.testing.assert_allclose(s.run(None, {"x": x})[0], InferenceSession(g, "reference").run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5)
        assert s.layer_plan == []


@needs_fast
@pytest.mark.parametrize("layout", ["csr", "bsr", "nm"])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("act_quant", ["dynamic", "static"])
def test_every_candidate_gives_the_stored_bits(layout, activation, act_quant):
    """What the planner may choose between is bit-identical to the stored layout on the first
    backend, for every activation; the GELUs, whose epilogues differ between backends, keep
    only the stored backend (and the test shows they do differ: without same_bits a session
    planned at another time could change ~20% of the outputs by 1 ulp)."""
    t = _weight(layout, 64, 128, 0.75, quant="int8")
    attrs = registry.fill_attrs("Linear", {"act_quant": act_quant, "activation": activation,
                                           **({"act_scale": 0.02, "act_zero_point": 3} if act_quant == "static" else {})})
    cands = planner.candidates("Linear", t, attrs, registry.AUTO_ORDER)
    rng = np.random.default_rng(7)
    bias = rng.standard_normal(64).astype(np.float32)
    x = (rng.standard_normal((16, 128)) * 3).astype(np.float32)

    def out(c):
        return registry.build("Linear", c.layout, c.backend, attrs, {1: c.weight})(x, c.weight, bias)[0]
    want = out(cands[0])
    for c in cands[1:]:
        np.testing.assert_array_equal(out(c), want, err_msg=c.label)
    backends = {c.backend for c in cands}
    if activation.startswith("gelu"):
        assert backends == {cands[0].backend}
        if len(FAST) > 1:     # the excluded ones really differ
            every = [planner.Candidate(c.layout, b, c.weight) for c in cands for b in FAST
                     if b != c.backend and registry.has_kernel("Linear", c.layout, b)]
            assert any((out(c) != want).any() for c in every)
    else:
        assert backends == set(FAST)


def test_plan_option_errors_and_off():
    g = _graph(_weight("csr", 8, 16, 0.5, quant="int8"), {"act_quant": "dynamic"}, 8, 16)
    with pytest.raises(ValueError, match="plan must be one of auto, measure, off"):
        InferenceSession(g, plan="fast")
    s = InferenceSession(g, "reference")         # the reference backend alone: nothing to choose
    s.run(None, {"x": np.ones((2, 16), np.float32)})
    assert s.layer_plan == []
    with pytest.raises(ValueError, match="rows must be a positive int"):
        s.plan_layers(0)
