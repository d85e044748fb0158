"""pytest-benchmark: every registered (op, layout, backend) kernel on the shapes table of runtime/bench/gemm.py
and sparsity grid, each validated against the numpy reference before it is timed.

    pytest benchmarks/ --benchmark-only -m quick           # < 2 minutes
    pytest benchmarks/ --benchmark-only                    # the whole grid
    pytest benchmarks/ --benchmark-only -k "Linear and native" --benchmark-json out.json

Cases:
* Linear: (K, N) in the shapes table x M in {1, 16, 128, 512} x layouts dense fp32, int8
  (dynamic activations), int4 grouped (weight-only), csr / bsr 4x4 at each sparsity, 2:4 nm;
  weights packed as the converter packs them (runtime/bench/gemm.py pack_case);
* Conv: two ResNet-like 3x3 convolutions on the same layouts;
* Attention, SkipLayerNormalization, LayerNormalization, Gelu, Softmax: MiniLM and BERT-base
  activations at sequence 128 (batch 1).
The quick subset (marker "quick"): (768, 768) and (384, 1536) at M = 1 and 128, sparsity 90%
and 2:4, the MiniLM activations; the reference backend (numpy float64: the spec, not a fast
path) runs in the quick subset only.

Validation: integer layouts must be bit-exact with their reference kernel; float kernels
within FLOAT_RTOL of max |reference|. The benchmark's extra_info holds GOP/s (dense-equivalent
2 M N K for GEMMs).
"""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from kernels import registry
from runtime.bench import gemm

pytest.importorskip("pytest_benchmark")

FLOAT_RTOL = 1e-3        # fp32 kernels against the float64 reference: K-term float32 sums
INT4_RTOL = gemm.INT4_RTOL  # int4 kernels' float32 sums against the float64 reference
TARGET_SECONDS = 0.2     # of timed rounds per benchmark
QUICK_SHAPES = {(768, 768), (384, 1536)}
QUICK_M = {1, 128}
QUICK_SPARSITY = {0.9, 0.5}

BACKENDS = [b for b in registry.AUTO_ORDER if registry.backend_status(b) is None]
LAYOUT_OF = {"fp32": "dense", "int8": "int8", "int4": "int4_grouped", "csr": "csr", "bsr": "bsr", "nm": "nm"}


def _params(cases, quick_if):
    return [pytest.param(*c, id="-".join(map(str, c)), marks=[pytest.mark.quick] if quick_if(*c) else [])
            for c in cases]


def _linear_cases():
    out = []
    for k, n in gemm.SHAPE_SETS["all"]:
        for layout, s in gemm.layout_cases(("fp32", *gemm.LAYOUTS), gemm.SPARSITIES):
            for m in gemm.ALL_M:
                for b in BACKENDS:
                    out.append((b, layout, s, k, n, m))
    return out


def _quick_linear(b, layout, s, k, n, m):
    return (k, n) in QUICK_SHAPES and m in QUICK_M and (s == 0 or s in QUICK_SPARSITY)


def _keep(b, layout, s, k, n, m):
    """Registered kernels only; the reference backend in the quick subset only."""
    if not registry.has_kernel("Linear", LAYOUT_OF[layout], b):
        return False
    return b != "reference" or _quick_linear(b, layout, s, k, n, m)


@functools.lru_cache(maxsize=4)
def _weight(k: int, n: int, layout: str, sparsity: float):
    rng = np.random.default_rng(k * 7919 + n)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    b = (rng.standard_normal(n) * 0.1).astype(np.float32)
    t, _ = gemm.pack_case(w, layout, sparsity)
    return t, b


def _validate(fn, args, want, rtol: float) -> float:
    """max |fn(*args)[0] - want|, asserted <= rtol * max |want| (0: bit-exact)."""
    got = np.asarray(fn(*args)[0], np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape}, the reference gives {want.shape}"
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert err <= rtol * max(float(np.max(np.abs(want))), 1e-30), f"does not match the reference: max |diff| {err:g}"
    return err


def _time(benchmark, fn, args, ops: float | None, err: float) -> None:
    """Time ``fn(*args)``: one warm-up, then rounds for about TARGET_SECONDS."""
    t0 = time.perf_counter()
    fn(*args)
    per_call = max(time.perf_counter() - t0, 1e-7)
    rounds = int(min(1000, max(3, TARGET_SECONDS / per_call)))
    benchmark.pedantic(fn, args=args, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["max_abs_err"] = err
    if ops and benchmark.stats is not None:
        benchmark.extra_info["gops"] = ops / benchmark.stats.stats.median / 1e9


# --- Linear ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, layout, sparsity, k, n, m",
                         _params([c for c in _linear_cases() if _keep(*c)], _quick_linear))
def test_linear(benchmark, backend, layout, sparsity, k, n, m):
    t, b = _weight(k, n, layout, sparsity)
    if t is None:
        pytest.skip(f"{layout} does not fit the shape ({n}, {k})")
    act = {"act_quant": "none" if layout in ("fp32", "int4") else "dynamic"}
    attrs = registry.fill_attrs("Linear", act)
    w = t.fields["data"] if t.layout == "dense" else t
    kernel = registry.build("Linear", t.layout, backend, attrs, {1: t})
    ref = registry.build("Linear", t.layout, "reference", attrs, {1: t})
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    few = x[:16]                                  # rows are independent: validate a few
    rtol = {"fp32": FLOAT_RTOL, "int4": INT4_RTOL}.get(layout, 0.0)
    err = _validate(kernel, (few, w, b), ref(few, w, b)[0], rtol)
    _time(benchmark, kernel, (x, w, b), 2.0 * m * n * k, err)


# --- Conv -----------------------------------------------------------------------------------------

# (batch, C_in, H, W, C_out): 3x3, stride 1, pad 1; the second is quick
CONV_SHAPES = [(1, 64, 56, 56, 64), (1, 32, 16, 16, 64)]


def _conv_cases():
    out = []
    for shape in CONV_SHAPES:
        for layout, s in gemm.layout_cases(("fp32", *gemm.LAYOUTS), (0.5, 0.9)):
            for b in BACKENDS:
                if registry.has_kernel("Conv", LAYOUT_OF[layout], b) and (b != "reference" or shape == CONV_SHAPES[1]):
                    out.append((b, layout, s, *shape))
    return out


@pytest.mark.parametrize("backend, layout, sparsity, batch, cin, h, w_, cout",
                         _params(_conv_cases(), lambda b, lay, s, *shape: tuple(shape) == CONV_SHAPES[1]
                                 and s in (0, 0.9, 0.5)))
def test_conv(benchmark, backend, layout, sparsity, batch, cin, h, w_, cout):
    rng = np.random.default_rng(cin * 31 + h)
    w4 = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
    t, _ = gemm.pack_case(w4.reshape(cout, -1), layout, sparsity)
    if t is None:
        pytest.skip(f"{layout} does not fit the shape")
    t = _reshaped(t, w4.shape)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    act = {"act_quant": "none" if layout in ("fp32", "int4") else "dynamic"}
    attrs = registry.fill_attrs("Conv", {**act, "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]})
    w = t.fields["data"] if t.layout == "dense" else t
    kernel = registry.build("Conv", t.layout, backend, attrs, {1: t})
    ref = registry.build("Conv", t.layout, "reference", attrs, {1: t})
    x = rng.standard_normal((batch, cin, h, w_)).astype(np.float32)
    rtol = {"fp32": FLOAT_RTOL, "int4": INT4_RTOL}.get(layout, 0.0)
    err = _validate(kernel, (x, w, b), ref(x, w, b)[0], rtol)
    _time(benchmark, kernel, (x, w, b), 2.0 * batch * h * w_ * cout * cin * 9, err)


def _reshaped(t, shape):
    """A packed 2-D weight (N, K') as the Conv filter of logical ``shape`` (N, C, kh, kw): the
    packed fields are those of the 2-D view already (kernels/core/layouts.py)."""
    from kernels.core.layouts import PackedTensor
    fields = dict(t.fields)
    if t.layout == "dense":
        fields["data"] = fields["data"].reshape(shape)
    elif t.layout == "int8":
        fields["qdata"] = fields["qdata"].reshape(shape)
    return PackedTensor(t.name, t.layout, t.dtype, tuple(shape), fields, dict(t.params))


# --- the BERT ops between the GEMMs ----------------------------------------------------------------

# (name, hidden, heads) at batch 1, sequence 128
BERT_DIMS = [("minilm", 384, 12), ("bert-base", 768, 12)]
SEQ = 128
OPS = ("Attention", "SkipLayerNormalization", "LayerNormalization", "Gelu", "Softmax")


def _op_inputs(op: str, hidden: int, heads: int, rng):
    x = rng.standard_normal((1, SEQ, hidden)).astype(np.float32)
    if op == "Attention":
        q, k, v = (rng.standard_normal((1, SEQ, hidden)).astype(np.float32) for _ in range(3))
        mask = np.zeros((1, 1, 1, SEQ), np.float32)
        mask[..., SEQ - 7:] = -1e4                   # padded positions, as a BERT mask gives
        d = hidden // heads
        return (q, k, v, mask), {"head_dim": d, "scale": 1 / np.sqrt(d)}, 4.0 * SEQ * SEQ * hidden
    gamma = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    if op == "SkipLayerNormalization":
        return (x, rng.standard_normal(x.shape).astype(np.float32), gamma, beta), {}, None
    if op == "LayerNormalization":
        return (x, gamma, beta), {"axis": -1}, None
    if op == "Softmax":
        return (rng.standard_normal((1, heads, SEQ, SEQ)).astype(np.float32),), {"axis": -1}, None
    return (x * 3,), {}, None


@pytest.mark.parametrize("backend, op, dims", _params(
    [(b, op, d[0]) for d in BERT_DIMS for op in OPS for b in BACKENDS
     if registry.has_kernel(op, "dense", b) and (b != "reference" or d[0] == "minilm")],
    lambda b, op, d: d == "minilm"))
def test_bert_op(benchmark, backend, op, dims):
    _, hidden, heads = next(d for d in BERT_DIMS if d[0] == dims)
    args, attrs, ops = _op_inputs(op, hidden, heads, np.random.default_rng(hidden))
    attrs = registry.fill_attrs(op, attrs)
    kernel = registry.build(op, "dense", backend, attrs, {})
    ref = registry.build(op, "dense", "reference", attrs, {})
    err = _validate(kernel, args, ref(*args)[0], FLOAT_RTOL)
    _time(benchmark, kernel, args, ops, err)
