"""MaxPool on the numba backend (kernels/numba_cpu/pool.py): the plane kernel itself, serial and
on numba's threads, against the reference bit for bit (NaN, infinities, padding, ceil_mode), and
the registered kernel taking it for float32 NCHW (a spy) and the reference otherwise."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import registry
from kernels.reference.conv_pool import max_pool_ref

pytestmark = pytest.mark.skipif(registry.backend_status("numba") is not None,
                                reason=f"numba unavailable: {registry.backend_status('numba')}")

CASES = [((1, 8, 56, 56), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
         ((2, 3, 9, 11), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 2, 0], dilations=[2, 1], ceil_mode=1)),
         ((1, 2, 3, 3), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[2, 2, 2, 2]))]


@pytest.mark.parametrize("shape,attrs", CASES)
def test_plane_kernel_serial_and_parallel_are_the_reference(shape, attrs):
    from kernels.numba_cpu import pool
    from kernels.reference.conv_pool import _pool_setup
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::17] = np.nan
    x.reshape(-1)[5::23] = -np.inf
    x.reshape(-1)[7::29] = np.inf
    full = {**dict(strides=None, pads=None, dilations=None, ceil_mode=0), **attrs}
    want = max_pool_ref(x, **full)
    kernel, strides, dilations, out, pad_width, _ = _pool_setup(x, full["kernel_shape"], full["strides"], full["pads"],
                                                                full["dilations"], full["ceil_mode"])
    n, c = shape[:2]
    for fn in (pool._pool_serial, pool._pool_parallel):
        y = np.full((n * c, out[0], out[1]), 7.0, np.float32)
        fn(x.reshape(n * c, *shape[2:]), y, kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1],
           pad_width[2][0], pad_width[3][0])
        np.testing.assert_array_equal(y.reshape(want.shape), want)


def test_registered_kernel_takes_float32_nchw_only(monkeypatch):
    from kernels.numba_cpu import pool
    calls = []
    real = pool._pool_serial

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(pool, "_pool_serial", spy)
    attrs = registry.fill_attrs("MaxPool", {"kernel_shape": [2, 2]})
    kern = registry.build("MaxPool", "dense", "numba", attrs, {})
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    (y,) = kern(x)
    assert calls == [(2, 5, 5)]
    np.testing.assert_array_equal(y, max_pool_ref(x, kernel_shape=[2, 2]))
    (y,) = kern(x.astype(np.float64))                 # another dtype: the reference
    assert y.dtype == np.float64 and len(calls) == 1


def test_a_window_larger_than_the_padded_input_is_the_reference_s_error():
    attrs = registry.fill_attrs("MaxPool", {"kernel_shape": [5, 5]})
    x = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError) as ref_error:
        registry.build("MaxPool", "dense", "reference", attrs, {})(x)
    with pytest.raises(ValueError, match=str(ref_error.value).replace("(", r"\(").replace(")", r"\)")):
        registry.build("MaxPool", "dense", "numba", attrs, {})(x)
