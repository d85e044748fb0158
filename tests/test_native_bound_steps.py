"""The native session steps bound in C++: the int8 / sparse Linear (``_native.LinearCall``,
csrc/bind_linear_call.cpp), Attention and SkipLayerNormalization (``_native.AttentionStep``,
``SkipLayerNormStep``, csrc/bind_fused.cpp): the runs a session calls for those nodes. Each
must give the binding's bits for every input it takes, hand every other call to the general
Python run (same values, same errors), and keep what it binds alive."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from kernels import registry
from kernels.core.layouts import pack, pack_int8
from kernels.fused_dispatch import attention_factory, skip_layer_normalization_factory
from runtime.convert import prune

_REASON = registry.backend_status("native")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}"),
              pytest.mark.isa]   # CPU-specific paths: tests/test_forced_isa.py runs them forced to AVX2

if _REASON is None:
    from kernels.native_cpu import _native
    from kernels.native_cpu import fused as native_fused
    from kernels.native_cpu.int8 import Int8Plan
    from kernels.native_cpu.sparse import SparsePlan

N, K = 40, 72


def _weights():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((N, K)).astype(np.float32)
    return {
        "int8": pack_int8("w", w),
        "csr": pack("csr", "w", w, prune.magnitude_mask(w, 0.7), quant="int8"),
        "nm": pack("nm", "w", w, prune.nm_mask(w, 2, 4), quant="int8"),
    }


WEIGHTS = _weights()


def _run(layout: str, **attrs):
    t = WEIGHTS[layout]
    return registry.build("Linear", t.layout, "native", registry.fill_attrs("Linear", {"act_quant": "dynamic", **attrs}),
                          {1: t}), t


def _binding(layout: str, x2: np.ndarray, bias, **kw) -> np.ndarray:
    """The plain binding on the same weight: Y (M, N)."""
    t = WEIGHTS[layout]
    if layout == "int8":
        return _native.int8_linear(Int8Plan(t, act_quant="dynamic").packed, x2, bias, **kw)
    return _native.sparse_int8_linear(SparsePlan(t, act_quant="dynamic").packed, x2, bias, **kw)


@pytest.mark.parametrize("layout", sorted(WEIGHTS))
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3), (0,)], ids=lambda s: "x".join(map(str, s)) or "1d")
@pytest.mark.parametrize("bias_kind", ["none", "f32", "f64", "strided"])
def test_bound_call_gives_the_bindings_bits(layout, lead, bias_kind):
    run, t = _run(layout)
    assert type(run) is _native.LinearCall, "the native int8 / sparse Linear step is the C++ bound call"
    rng = np.random.default_rng(len(lead) + 7)
    x = rng.standard_normal(lead + (K,)).astype(np.float32)
    wide = rng.standard_normal(2 * N)
    bias = {"none": None, "f32": wide[:N].astype(np.float32), "f64": wide[:N],
            "strided": wide.astype(np.float32)[::2]}[bias_kind]
    (y,) = run(x, t, bias) if bias is not None else run(x, t)
    assert y.shape == lead + (N,) and y.dtype == np.float32
    want = _binding(layout, x.reshape(-1, K), bias).reshape(lead + (N,))
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("layout", sorted(WEIGHTS))
def test_bound_call_activation_and_static_quantization(layout):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    run, t = _run(layout, activation="gelu")
    np.testing.assert_array_equal(run(x, t, b)[0], _binding(layout, x, b, activation="gelu"))
    run, t = _run(layout, act_quant="static", act_scale=0.02, act_zero_point=-3)
    t_plan = Int8Plan if layout == "int8" else SparsePlan
    packed = t_plan(t, act_quant="static", act_scale=0.02, act_zero_point=-3).packed
    bind = _native.int8_linear if layout == "int8" else _native.sparse_int8_linear
    want = bind(packed, x, b, act_quant="static", act_scale=0.02, act_zero_point=-3)
    np.testing.assert_array_equal(run(x, t, b)[0], want)


@pytest.mark.parametrize("layout", sorted(WEIGHTS))
def test_other_calls_take_the_general_run(layout):
    """X not C-contiguous float32, a bias that is not an ndarray, keywords: the general run,
    with the values it always gave."""
    run, t = _run(layout)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    want = _binding(layout, x, b)
    x_t = np.asfortranarray(x)                       # the same values, not C-contiguous
    assert not x_t.flags.c_contiguous
    np.testing.assert_array_equal(run(x_t, t, b)[0], want)
    np.testing.assert_array_equal(run(x, t, b.tolist())[0], want)   # a list: converted by the general run
    np.testing.assert_array_equal(run(x, t, bias=b)[0], want)
    np.testing.assert_array_equal(run(x, bias=b)[0], want)
    # float64 X: the reference's arithmetic in float64 (the general run), not the float32 kernel
    y64 = run(x.astype(np.float64), t, b)[0]
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", sorted(WEIGHTS))
def test_bad_calls_are_refused_by_name(layout):
    run, t = _run(layout)
    with pytest.raises(ValueError, match="does not match packed weight"):
        run(np.zeros((2, K + 1), np.float32), t)
    with pytest.raises(ValueError, match="does not match packed weight"):
        run(np.float32(1.0), t)
    with pytest.raises(ValueError, match="bias"):
        run(np.zeros((2, K), np.float32), t, np.zeros(N + 1, np.float32))
    with pytest.raises(TypeError):
        run()


def test_constructor_checks():
    plan = Int8Plan(WEIGHTS["int8"], act_quant="dynamic")
    with pytest.raises(TypeError, match="Int8Weight or a SparseInt8Weight"):
        _native.LinearCall(object(), "dynamic", 1.0, 0, "none", print)
    with pytest.raises(ValueError, match="act_quant"):
        _native.LinearCall(plan.packed, "none", 1.0, 0, "none", print)
    with pytest.raises(ValueError, match="act_scale"):
        _native.LinearCall(plan.packed, "static", 0.0, 0, "none", print)
    with pytest.raises(ValueError, match="activation|gelu"):
        _native.LinearCall(plan.packed, "dynamic", 1.0, 0, "swish", print)
    with pytest.raises(TypeError, match="callable"):
        _native.LinearCall(plan.packed, "dynamic", 1.0, 0, "none", 3)
    call = _native.LinearCall(plan.packed, "dynamic", 1.0, 0, "none", print)
    assert (call.n, call.k) == (N, K) and call.weight is plan.packed


def test_the_bound_call_keeps_its_weight_alive():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((N, K)).astype(np.float32)
    t = pack("csr", "w", w, prune.magnitude_mask(w, 0.5), quant="int8")
    x = rng.standard_normal((3, K)).astype(np.float32)
    run = registry.build("Linear", "csr", "native", registry.fill_attrs("Linear", {"act_quant": "dynamic"}), {1: t})
    want = run(x, t)[0].copy()
    del t, w
    gc.collect()
    for _ in range(3):
        np.testing.assert_array_equal(run(x, None)[0], want)


# --- Attention and SkipLayerNormalization ------------------------------------------------------

def _fused(op: str, **attrs):
    return registry.build(op, "dense", "native", registry.fill_attrs(op, attrs), {})


def _general(op: str, **attrs):
    """The Python run the native factory builds before binding it in C++."""
    a = registry.fill_attrs(op, attrs)
    if op == "Attention":
        return attention_factory(native_fused.attention)(a, {})
    return skip_layer_normalization_factory(native_fused.skip_layer_norm)(a, {})


@pytest.mark.parametrize("shape", [(3, 8), (1, 5, 384), (2, 4, 7)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skip_layer_norm_step_gives_the_bindings_bits(shape, with_bias):
    run = _fused("SkipLayerNormalization", epsilon=1e-12)
    assert type(run) is _native.SkipLayerNormStep
    rng = np.random.default_rng(1)
    x, skip = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    scale, bias = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    bias = bias if with_bias else None
    (y,) = run(x, skip, scale, bias) if with_bias else run(x, skip, scale)
    np.testing.assert_array_equal(y, _native.skip_layer_norm(x, skip, scale, bias, 1e-12))


def test_skip_layer_norm_step_other_calls():
    """Broadcast inputs, float64, non-contiguous, keywords: the general run's values and errors."""
    run, general = _fused("SkipLayerNormalization", epsilon=1e-5), _general("SkipLayerNormalization", epsilon=1e-5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    pos = rng.standard_normal((1, 5, 16)).astype(np.float32)           # BERT's position table: broadcast
    scale = rng.standard_normal(16).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    for args in [(x, pos, scale, bias), (x.astype(np.float64), x.astype(np.float64), scale, bias),
                 (np.asfortranarray(x[0]), x[0], scale, bias), (x, x, scale[::-1], bias)]:
        for got, want in zip(run(*args), general(*args)):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(run(x, x, scale, bias=bias)[0], general(x, x, scale, bias)[0])
    with pytest.raises(ValueError):
        run(x, rng.standard_normal((2, 4, 16)).astype(np.float32), scale, bias)   # shapes that do not broadcast
    with pytest.raises(ValueError):
        run(x, x, scale[:8], bias)


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_step_gives_the_bindings_bits_on_qkv_views(with_mask):
    b, s, h, d = 2, 6, 3, 8
    run = _fused("Attention", head_dim=d, scale=d ** -0.5)
    assert type(run) is _native.AttentionStep
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((b, s, 3 * h * d)).astype(np.float32)
    q, k, v = qkv[..., :h * d], qkv[..., h * d:2 * h * d], qkv[..., 2 * h * d:]     # strided views, read in place
    mask = np.where(rng.random((b, 1, 1, s)) < 0.2, -1e4, 0.0).astype(np.float32) if with_mask else None
    (y,) = run(q, k, v, mask) if with_mask else run(q, k, v)
    np.testing.assert_array_equal(y, _native.attention(q, k, v, mask, head_dim=d, scale=d ** -0.5))


def test_attention_step_other_calls():
    d = 4
    run, general = _fused("Attention", head_dim=d, scale=0.5), _general("Attention", head_dim=d, scale=0.5)
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 5, 2 * d)).astype(np.float32)
    cols = rng.standard_normal((1, 5, 4 * d)).astype(np.float32)[..., ::2]           # last axis strided: copied
    for args in [(q, q, cols), (q.astype(np.float64),) * 3, (q, q, q, np.zeros((1, 1, 1, 5)))]:
        for got, want in zip(run(*args), general(*args)):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(run(q, q, q, mask=None)[0], general(q, q, q)[0])
    with pytest.raises(ValueError, match="do not match with head_dim"):
        run(q, q[:, :, :d], q)


def test_fused_steps_ask_one_thread_on_every_fast_call():
    """one_thread (kernels/blas_activity.blas_recently_called in a session) is asked on every
    call the step runs itself, and its answer does not change the result."""
    asked = []

    def one_thread(answer=[True]):
        asked.append(answer[0])
        answer[0] = not answer[0]
        return not answer[0]

    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    scale = np.ones(16, np.float32)
    ln = _native.SkipLayerNormStep(1e-5, _general("SkipLayerNormalization", epsilon=1e-5), one_thread)
    first, second = ln(x, x, scale)[0], ln(x, x, scale)[0]
    np.testing.assert_array_equal(first, second)
    q = rng.standard_normal((1, 4, 8)).astype(np.float32)
    att = _native.AttentionStep(4, 0.5, False, _general("Attention", head_dim=4, scale=0.5), one_thread)
    np.testing.assert_array_equal(att(q, q, q)[0], att(q, q, q)[0])
    assert asked == [True, False, True, False]
    att(q.astype(np.float64), q, q)            # the general run: not asked here
    assert len(asked) == 4


def test_fused_step_constructor_checks():
    with pytest.raises(TypeError, match="callable"):
        _native.SkipLayerNormStep(1e-5, 3, print)
    with pytest.raises(TypeError, match="callable"):
        _native.AttentionStep(4, 0.5, False, print, None)
