"""Same file, same input, same bits: sessions that plan at different times (and so may choose
other layouts and backends) and with other thread counts compute identical outputs (issue 16).

The planner's timings are injected: each session draws its own random times, so the choices
differ from session to session as they would on a noisy machine, without depending on this
one. The model is a 2-layer BERT pruned to 80% (csr int8, the FFN's GELU fused into its first
Linear: the epilogue whose native and numba versions differ)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import runtime
from kernels import registry
from runtime import planner
from tests import model_zoo

FAST = tuple(b for b in registry.AUTO_ORDER if b != "reference" and registry.backend_status(b) is None)
pytestmark = pytest.mark.skipif(not FAST, reason="no fast CPU backend (numba / native) is usable here")


@pytest.fixture(scope="module")
def sparse_bert():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.test_onnx_equivalence import _bert_bytes
    data = _bert_bytes(model_zoo.bert(layers=2, hidden=64, heads=4, ffn=128))
    g = runtime.convert(data, prune="magnitude", sparsity=0.8, quant="int8", holdout=0.0)
    plan = runtime.InferenceSession(g, "auto", plan="off").plan
    assert not any(p.op == "Gelu" for p in plan), "the FFN's GELU was not fused into its Linear"
    return g


def _random_timer(seed: int):
    rng = np.random.default_rng(seed)

    def measure(runs, inputs):
        for run in runs.values():               # each candidate runs once, as the real timer
            run(*inputs)
        return {label: float(rng.uniform(1e-4, 1e-3)) for label in runs}
    return measure


def test_sessions_planned_apart_give_the_same_bits(sparse_bert, monkeypatch):
    feeds = [model_zoo.bert_feeds(b, s, seed=b + s) for b, s in ((1, 16), (2, 9), (3, 40))]
    outputs, choices = [], set()
    for k, threads in enumerate((1, 2, 8, 1, 2, 8)):
        monkeypatch.setattr(planner, "measure", _random_timer(k))
        s = runtime.InferenceSession(sparse_bert, "auto", plan="measure", threads=threads)
        runs = [[s.run(None, f) for f in feeds] for _ in range(3)]
        for again in runs[1:]:                   # one session: the same bits on every run
            for a, b in zip(again, runs[0]):
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y)
        outputs.append(runs[0])
        choices.add(tuple((r["node"], r["rows"], r["chosen"]) for r in s.layer_plan))
    assert len(choices) > 1, "every session chose alike: the test would not see a difference"
    for other in outputs[1:]:
        for a, b in zip(other, outputs[0]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def test_one_session_many_threads_first_run_included(sparse_bert, monkeypatch):
    """Eight threads call run() on one fresh session at once, so the planner's first decision
    happens while the others wait for it: every result equals a single-threaded session's."""
    monkeypatch.setattr(planner, "measure", _random_timer(99))
    feeds = [model_zoo.bert_feeds(b, s, seed=7 * b + s) for b, s in ((1, 16), (2, 9), (3, 40), (1, 5))]
    want = [runtime.InferenceSession(sparse_bert, "auto", plan="off").run(None, f) for f in feeds]
    s = runtime.InferenceSession(sparse_bert, "auto", plan="measure", threads=2)
    got: dict[tuple[int, int], list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for r in range(10):
                i = (t + r) % len(feeds)
                got[(t, r)] = (i, s.run(None, feeds[i]))
        except BaseException as e:       # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 80
    for i, outs in got.values():
        for x, y in zip(outs, want[i]):
            np.testing.assert_array_equal(x, y)
    # each layer decided once per input size, not once per thread
    seen = [(r["node"], r["holds_for"]) for r in s.layer_plan]
    assert len(seen) == len(set(seen))
