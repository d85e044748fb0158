"""GatherElements on the native backend: kernels/native_cpu/gather.py + csrc/gather_elements.cpp.

The binding copies float32 values, so every call must give the reference's bits (any axis,
int32 / int64 and negative indices, any thread count), check its arguments, and report an index
out of range without writing; the registered kernel must take the binding's path for the calls
it documents (a spy on the binding) and hand every other call, and a bad index, to the reference.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernels import registry
from kernels.reference.shape_ops import gather_elements_ref

pytestmark = pytest.mark.skipif(registry.backend_status("native") is not None,
                                reason=f"native unavailable: {registry.backend_status('native')}")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.mark.parametrize("shape,axis,na,dtype", [
    ((12, 40, 160), 2, 40, np.int64),        # DeBERTa's c2p / p2c: the last axis, above the threads' bar
    ((3, 5), 1, 9, np.int32),
    ((6, 4, 3), 1, 2, np.int64),             # inner > 1
    ((7, 2, 3), 0, 11, np.int32),            # outer = 1
    ((1, 1), 1, 1, np.int64),
])
def test_binding_is_the_reference_bit_for_bit_on_any_thread_count(shape, axis, na, dtype):
    from kernels.native_cpu import _native
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape).astype(np.float32)
    ishape = list(shape)
    ishape[axis] = na
    idx = rng.integers(-shape[axis], shape[axis], ishape).astype(dtype)
    want = gather_elements_ref(data, idx, axis=axis)
    outer, inner = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    before = _native.get_threads()
    try:
        for nt in (1, 2, 3):
            _native.set_threads(nt)
            out = np.full(ishape, np.nan, np.float32)
            bad = _native.gather_elements_f32(data.reshape(outer, shape[axis], inner), idx.reshape(outer, na, inner),
                                              out.reshape(outer, na, inner))
            assert bad == -1
            assert np.array_equal(_bits(out), _bits(want)), nt
    finally:
        _native.set_threads(before)


def test_binding_reports_the_first_bad_index_and_writes_nothing():
    from kernels.native_cpu import _native
    data = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    idx = np.zeros((2, 5, 3), np.int64)
    idx[1, 2, 1] = 4                          # da = 4: out of range
    idx[1, 3, 0] = -5
    out = np.full((2, 5, 3), np.nan, np.float32)
    assert _native.gather_elements_f32(data, idx, out) == 15 + 6 + 1
    assert np.isnan(out).all()
    idx[1, 2, 1] = -4                         # in range (the first row), the -5 later is not
    assert _native.gather_elements_f32(data, idx, out) == 15 + 9
    with pytest.raises(TypeError, match="indices must have dtype int32 or int64"):
        _native.gather_elements_f32(data, idx.astype(np.int16), out)
    with pytest.raises(TypeError, match="data"):
        _native.gather_elements_f32(data.astype(np.float64), idx, out)
    with pytest.raises(ValueError, match="indices has shape"):
        _native.gather_elements_f32(data, np.zeros((2, 5, 2), np.int64), out)
    with pytest.raises(ValueError, match="out has shape"):
        _native.gather_elements_f32(data, idx, np.empty((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="data has shape"):
        _native.gather_elements_f32(data.reshape(2, 12), idx, out)


def _kernel(axis):
    return registry.build("GatherElements", "dense", "native", {"axis": axis}, {})


def test_kernel_takes_the_binding_for_float32_and_the_reference_otherwise(monkeypatch):
    from kernels.native_cpu import _native, gather
    calls = []
    real = _native.gather_elements_f32

    class Spy:
        def __getattr__(self, name):
            return getattr(_native, name)

        def gather_elements_f32(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(gather, "_native", Spy())
    rng = np.random.default_rng(1)
    data = rng.standard_normal((4, 6, 5)).astype(np.float32)
    idx = rng.integers(-6, 6, (4, 3, 5))
    (y,) = _kernel(1)(data, idx)
    assert calls == [(4, 6, 5)] and np.array_equal(_bits(y), _bits(gather_elements_ref(data, idx, axis=1)))
    # float64 data, other axes shorter than data's, int16 indices: the reference, same result
    for d, i in ((data.astype(np.float64), idx), (data, idx[:2]), (data, idx.astype(np.int16))):
        (y,) = _kernel(1)(d, i)
        np.testing.assert_array_equal(y, gather_elements_ref(d, i, axis=1))
    assert len(calls) == 1
    with pytest.raises(IndexError):
        _kernel(-1)(data, np.full((4, 6, 5), 5, np.int64))
    assert len(calls) == 2                    # the binding found the bad index; the reference raised
