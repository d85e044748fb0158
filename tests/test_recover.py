"""runtime/convert/recover.py: distillation recovery of a pruned fp32 graph toward the original."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtime.convert.prune import magnitude_mask  # noqa: E402
from runtime.convert.recover import (LAYER_HIDDEN_WEIGHT, NORM_HIDDEN_WEIGHT, RecoverResult,  # noqa: E402
                                     cubic_sparsity, hidden_values, recover, trainable_names)
from runtime.graph import Graph, Node, Value  # noqa: E402
from kernels.core.layouts import dense_tensor  # noqa: E402
from runtime.session import InferenceSession  # noqa: E402

SPARSITY = 0.85
# One-shot 85% magnitude pruning of the random MLP below leaves an output cosine of ~0.39 to
# the teacher on held-out inputs; 100 Adam steps of distillation bring it to ~0.79. The gain
# asked is well inside that and far outside noise (the run is deterministic for a seed).
MIN_COSINE_GAIN = 0.15


def _mlp(sizes=(64, 128, 64, 10), seed=0) -> Graph:
    """A random MLP (Linear + Relu, the last layer plain), weights ~ N(0, 1/K)."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = {}, [], "x"
    for k, (kin, kout) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits[f"w{k}"] = dense_tensor(f"w{k}", (rng.standard_normal((kout, kin)) / np.sqrt(kin)).astype(np.float32))
        inits[f"b{k}"] = dense_tensor(f"b{k}", (0.1 * rng.standard_normal(kout)).astype(np.float32))
        nodes.append(Node(f"fc{k}", "Linear", [x, f"w{k}", f"b{k}"], [f"z{k}"]))
        x = f"z{k}"
        if k < len(sizes) - 2:
            nodes.append(Node(f"relu{k}", "Relu", [x], [f"h{k}"]))
            x = f"h{k}"
    g = Graph("mlp", [Value("x", "float32", ("batch", sizes[0]))], [Value(x, "float32", ("batch", sizes[-1]))],
              nodes, inits)
    g.validate()
    return g


def _pruned(teacher: Graph, sparsity: float = SPARSITY) -> tuple[Graph, dict[str, np.ndarray]]:
    student = Graph(teacher.name, list(teacher.inputs), list(teacher.outputs), list(teacher.nodes),
                    dict(teacher.initializers))
    masks = {}
    for name in [n.inputs[1] for n in teacher.nodes if n.op == "Linear"]:
        w = np.asarray(teacher.initializers[name].fields["data"])
        masks[name] = magnitude_mask(w, sparsity)
        student.initializers[name] = dense_tensor(name, np.where(masks[name], w, 0).astype(np.float32))
    return student, masks


def _with(graph: Graph, weights: dict[str, np.ndarray]) -> Graph:
    inits = dict(graph.initializers)
    inits.update({k: dense_tensor(k, w) for k, w in weights.items()})
    return Graph(graph.name, graph.inputs, graph.outputs, graph.nodes, inits)


def _cosine(graph: Graph, teacher: Graph, x: np.ndarray) -> float:
    a = InferenceSession(graph, backend="reference").run(None, {"x": x})[0].ravel().astype(np.float64)
    b = InferenceSession(teacher, backend="reference").run(None, {"x": x})[0].ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _feeds(rows=512, batch=64, k=64, seed=1) -> list[dict]:
    x = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    return [{"x": x[i:i + batch]} for i in range(0, rows, batch)]


def test_recover_raises_the_output_cosine_and_keeps_the_masks():
    torch.manual_seed(0)
    teacher = _mlp()
    student, masks = _pruned(teacher)
    before = {k: np.array(t.fields["data"]) for k, t in student.initializers.items()}
    held_out = _feeds(rows=256, seed=7)[0]["x"]
    start = _cosine(student, teacher, held_out)
    r = recover(student, teacher, masks, _feeds(), steps=100, lr=1e-3)
    assert isinstance(r, RecoverResult) and r.steps == 100 and not r.interrupted
    assert r.hidden_weight == LAYER_HIDDEN_WEIGHT       # no LayerNorm: the Linear outputs, weight 1
    end = _cosine(_with(student, r.weights), teacher, held_out)
    assert end > start + MIN_COSINE_GAIN, (start, end)
    assert r.loss_end < 0.8 * r.loss_start
    assert set(r.weights) == set(trainable_names(student)) == {"w0", "b0", "w1", "b1", "w2", "b2"}
    for name, m in masks.items():
        w = r.weights[name]
        assert w.dtype == np.float32 and w.shape == m.shape
        assert np.all(w[~m] == 0) and not np.any(np.signbit(w[~m]))      # exactly +0.0
        assert np.count_nonzero(w) <= m.sum() and np.count_nonzero(w[m]) > 0.99 * m.sum()
        np.testing.assert_array_equal(r.masks[name], m)
        assert not np.array_equal(w, before[name])                            # it did train
    # the input graphs are left as they were
    for k, a in before.items():
        np.testing.assert_array_equal(student.initializers[k].fields["data"], a)


def test_step_budget_and_rebatching():
    teacher = _mlp(sizes=(16, 32, 8))
    student, masks = _pruned(teacher, 0.5)
    # uneven feed sizes: pooled and re-batched at 24 rows
    x = np.random.default_rng(3).standard_normal((100, 16)).astype(np.float32)
    feeds = [{"x": x[:10]}, {"x": x[10:70]}, {"x": x[70:]}]
    lines = []
    r = recover(student, teacher, masks, feeds, steps=7, batch_size=24, say=lines.append)
    assert r.steps == 7 and r.seconds >= 0
    assert any("batches of 24" in s for s in lines) and any("7 steps" in s for s in lines)


def test_time_budget_alone_stops():
    teacher = _mlp(sizes=(16, 32, 8))
    student, masks = _pruned(teacher, 0.5)
    r = recover(student, teacher, masks, _feeds(rows=64, batch=16, k=16), minutes=0.002)
    assert r.steps >= 1 and not r.interrupted


def test_gradual_pruning_ramps_to_the_target():
    teacher = _mlp()
    student, masks = _pruned(teacher, 0.5)
    asked = []

    def by_magnitude(w, s):
        asked.append(s)
        return magnitude_mask(w, s)
    r = recover(student, teacher, {"w0": masks["w0"]}, _feeds(), steps=40, lr=1e-3,
                gradual={"w0": by_magnitude, "w1": by_magnitude}, target={"w0": 0.9, "w1": 0.8})
    for name, s in (("w0", 0.9), ("w1", 0.8)):
        m = r.masks[name]
        assert 1.0 - m.mean() == pytest.approx(s, abs=1.0 / m.size)
        assert np.all(r.weights[name][~m] == 0)
    w0_asked = asked[0::2]
    assert w0_asked == sorted(w0_asked) and w0_asked[0] < 0.9 and w0_asked[-1] == pytest.approx(0.9)
    assert 0.5 < w0_asked[0]                   # w0 starts from its mask's 50%, w1 from 0
    assert cubic_sparsity(0.5, 0.9, 0.0) == 0.5 and cubic_sparsity(0.5, 0.9, 1.0) == pytest.approx(0.9)


def test_budget_and_argument_errors():
    teacher = _mlp(sizes=(16, 32, 8))
    student, masks = _pruned(teacher, 0.5)
    feeds = _feeds(rows=32, batch=16, k=16)
    with pytest.raises(ValueError, match="budget"):
        recover(student, teacher, masks, feeds)
    with pytest.raises(ValueError, match="steps"):
        recover(student, teacher, masks, feeds, steps=0)
    with pytest.raises(ValueError, match="not a trainable weight"):
        recover(student, teacher, {"x": np.ones((2, 16), bool)}, feeds, steps=1)
    with pytest.raises(ValueError, match="shape"):
        recover(student, teacher, {"w0": np.ones((3, 3), bool)}, feeds, steps=1)
    with pytest.raises(ValueError, match="same weights"):
        recover(student, teacher, masks, feeds, steps=1, gradual={"w0": magnitude_mask})
    with pytest.raises(ValueError, match="batch"):
        recover(student, teacher, masks, [{"x": np.float32(1.0)}], steps=1)


def test_shared_batch_axis_is_checked_and_kept_together():
    """Two inputs of one feed (a value and its per-row mask) must share the batch axis, and
    re-batching must pick the same rows of both."""
    rng = np.random.default_rng(4)
    w = dense_tensor("w", rng.standard_normal((8, 16)).astype(np.float32))
    nodes = [Node("mul", "Mul", ["x", "m"], ["xm"]), Node("fc", "Linear", ["xm", "w"], ["y"])]
    teacher = Graph("masked", [Value("x", "float32", ("batch", 16)), Value("m", "float32", ("batch", 1))],
                    [Value("y", "float32", ("batch", 8))], nodes, {"w": w})
    student = Graph("masked", teacher.inputs, teacher.outputs, nodes,
                    {"w": dense_tensor("w", np.asarray(w.fields["data"]) * 0.5)})
    x = rng.standard_normal((40, 16)).astype(np.float32)
    m = (rng.random((40, 1)) > 0.5).astype(np.float32)
    with pytest.raises(ValueError, match="batch sizes"):
        recover(student, teacher, {}, [{"x": x, "m": m[:39]}], steps=1)
    r = recover(student, teacher, {}, [{"x": x, "m": m}], steps=200, batch_size=8, lr=3e-2)
    assert r.loss_end < 0.01 * r.loss_start     # rows of x and m mixed up would not fit


def test_ctrl_c_reraises_or_keeps():
    teacher = _mlp(sizes=(16, 32, 8))
    student, masks = _pruned(teacher, 0.5)
    feeds = _feeds(rows=64, batch=16, k=16)

    def interrupt(w, s):
        raise KeyboardInterrupt
    kwargs = dict(steps=30, gradual={"w1": interrupt}, target={"w1": 0.9})
    with pytest.raises(KeyboardInterrupt):
        recover(student, teacher, masks, feeds, **kwargs)
    r = recover(student, teacher, masks, feeds, keep_on_interrupt=True, **kwargs)
    assert r.interrupted and 0 < r.steps < 30
    assert np.all(r.weights["w0"][~masks["w0"]] == 0)


def test_transformer_hidden_states_and_padded_batches_of_two_lengths():
    """A small encoder: LayerNorm outputs are the hidden values; feeds of two sequence
    lengths are pooled apart (rows of different lengths cannot share a batch)."""
    from tests.model_zoo import export, randomize_
    from tests.test_torch_eval import _TinyEncoder, _token_feeds
    from runtime.onnx_import import import_onnx
    torch.manual_seed(0)
    model = _TinyEncoder()
    randomize_(model, seed=2, scale=0.2)
    ids = torch.zeros(2, 8, dtype=torch.int64)
    teacher = import_onnx(export(model, (ids, torch.ones(2, 8, dtype=torch.int64)), input_names=["ids", "mask"],
                                 output_names=["hidden", "pooled"],
                                 dynamic_axes={"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}))
    hidden = hidden_values(teacher)
    ln_outputs = [n.outputs[0] for n in teacher.nodes if n.op == "LayerNormalization"]
    assert hidden and set(hidden) <= set(ln_outputs)
    student, masks = Graph(teacher.name, teacher.inputs, teacher.outputs, teacher.nodes, dict(teacher.initializers)), {}
    for n in teacher.nodes:
        if n.op == "Linear":
            w = np.asarray(teacher.initializers[n.inputs[1]].fields["data"])
            masks[n.inputs[1]] = magnitude_mask(w, 0.7)
            student.initializers[n.inputs[1]] = dense_tensor(n.inputs[1], np.where(masks[n.inputs[1]], w, 0))
    feeds = [{"ids": f["input_ids"], "mask": f["attention_mask"]}
             for f in _token_feeds(50, [(8, 6), (8, 9), (8, 6)])]
    r = recover(student, teacher, masks, feeds, steps=30, lr=1e-3, batch_size=8)
    assert r.loss_end < r.loss_start
    assert r.hidden_weight == NORM_HIDDEN_WEIGHT        # LayerNorm outputs: the transformer default
    assert recover(student, teacher, masks, feeds, steps=1, batch_size=8, hidden_weight=0.0).hidden_weight == 0.0
    names = trainable_names(student)
    assert any("ln" in k for k in names)                       # LayerNorm scale/bias are trained
    for k, m in masks.items():
        assert np.all(r.weights[k][~m] == 0)


def test_learning_rate_schedule():
    from runtime.convert.recover import WARMUP_FRACTION, _lr_factor
    assert 0 < _lr_factor(0.0, 0.01) < 0.25                 # warming up, never 0 at the first step
    assert _lr_factor(WARMUP_FRACTION, WARMUP_FRACTION) == pytest.approx(0.5 * (1 + np.cos(np.pi * WARMUP_FRACTION)))
    assert _lr_factor(0.5, 0.5) == pytest.approx(0.5)
    assert _lr_factor(1.0, 1.0) == pytest.approx(0.0)


def test_teacher_cache_is_float16_within_budget_and_trains_like_the_uncached_run(monkeypatch):
    import runtime.convert.recover as R
    teacher = _mlp()
    student, masks = _pruned(teacher)
    runs = {}
    for budget in (None, 100):             # default budget; 100 bytes: the teacher runs at every step
        monkeypatch.setattr(R, "TEACHER_CACHE_BYTES", budget)
        said: list[str] = []
        torch.manual_seed(0)
        runs[budget] = recover(student, teacher, masks, _feeds(), steps=60, lr=1e-3, say=said.append)
        runs[budget, "said"] = " ".join(said)
    assert "values cached" in runs[None, "said"] and "as float16" in runs[None, "said"], runs[None, "said"]
    assert "teacher runs at every step" in runs[100, "said"], runs[100, "said"]
    # float16 targets round at 2^-11 relative: the two runs train alike
    a, b = runs[None].loss_end, runs[100].loss_end
    assert abs(a - b) <= 0.02 * b, (a, b)


def test_teacher_cache_keeps_float32_where_float16_would_overflow(monkeypatch):
    import runtime.convert.recover as R
    monkeypatch.setattr(R, "TEACHER_CACHE_BYTES", 1 << 20)
    x = np.arange(200, dtype=np.float32).reshape(200, 1)     # cached in chunks of 64 rows
    pools = R._pools([{"x": x}], ["x"])

    def teacher_values(feed):              # y from row 66 on is out of float16's range (> 65504)
        v = torch.from_numpy(feed["x"] * np.float32(1e3))
        return {"y": v, "z": v / np.float32(1e3)}
    R._cache_teacher(pools, None, ["x"], ["y", "z"], teacher_values, lambda s: None)
    y, z = pools[0].targets["y"], pools[0].targets["z"]
    # the first chunk was stored as float16 (rounded), the later ones made y float32
    assert y.dtype == np.float32 and np.array_equal(y[64:], x[64:] * np.float32(1e3))
    assert np.allclose(y[:64], x[:64] * 1e3, rtol=2.0 ** -11, atol=0)
    assert z.dtype == np.float16 and np.array_equal(z.astype(np.float32), x)
    assert R._compact(torch.tensor([1.0, float("nan")])).dtype == np.float32
    assert R._compact(torch.tensor([1.0, 1e5])).dtype == np.float32
    assert R._compact(torch.tensor([1.0, -65504.0])).dtype == np.float16


def test_teacher_cache_budget_follows_available_memory(monkeypatch):
    import runtime.convert.recover as R
    monkeypatch.setattr(R, "TEACHER_CACHE_BYTES", None)
    monkeypatch.setattr(R, "available_memory", lambda: 3 << 30)
    assert R.teacher_cache_bytes() == int((3 << 30) * R.TEACHER_CACHE_SHARE)
    monkeypatch.setattr(R, "available_memory", lambda: 1 << 40)
    assert R.teacher_cache_bytes() == R.TEACHER_CACHE_MAX_BYTES
    monkeypatch.setattr(R, "available_memory", lambda: None)
    assert R.teacher_cache_bytes() == R.TEACHER_CACHE_FALLBACK_BYTES
    monkeypatch.setattr(R, "TEACHER_CACHE_BYTES", 12345)
    assert R.teacher_cache_bytes() == 12345
    got = R.available_memory()                      # this machine: a positive byte count or None
    assert got is None or got > 0


def test_precision_choice_and_a_bfloat16_forward_pass(monkeypatch):
    """precision="bf16" runs the student's forward pass in bfloat16 (its losses differ from
    the fp32 run's) and still trains, keeps the masks and returns float32 weights; "auto"
    follows the CPU's flags (AMX-BF16); a bad name is refused before any work."""
    import runtime.convert.recover as R
    teacher = _mlp()
    student, masks = _pruned(teacher)
    held_out = _feeds(rows=256, seed=7)[0]["x"]
    start = _cosine(student, teacher, held_out)
    runs = {p: recover(student, teacher, masks, _feeds(), steps=100, lr=1e-3, precision=p) for p in ("fp32", "bf16")}
    assert runs["fp32"].precision == "fp32" and runs["bf16"].precision == "bf16"
    assert runs["bf16"].loss_end != runs["fp32"].loss_end                 # bfloat16 products did run
    assert abs(runs["bf16"].loss_end - runs["fp32"].loss_end) < 0.1 * runs["fp32"].loss_end
    r = runs["bf16"]
    assert _cosine(_with(student, r.weights), teacher, held_out) > start + MIN_COSINE_GAIN
    for name, m in masks.items():
        w = r.weights[name]
        assert w.dtype == np.float32 and np.all(w[~m] == 0) and not np.any(np.signbit(w[~m]))
    for flags, want in (({"avx2", "amx_bf16"}, "bf16"), ({"avx2", "avx512_bf16"}, "fp32"), (set(), "fp32")):
        monkeypatch.setattr(R, "cpuinfo_flags", lambda flags=flags: flags)
        assert R.resolve_precision("auto") == want
        assert R.resolve_precision("fp32") == "fp32" and R.resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        recover(student, teacher, masks, _feeds(), steps=1, precision="fp16")
