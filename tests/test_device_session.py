"""Device arrays in a session (kernels/core/device.py, the session's GPU plumbing) as far as a
machine without a GPU can check them: recognising device arrays, bringing them to the host,
shape stand-ins, the backend orders, and a CPU session fed a device array. The GPU session
itself (uploads once, values kept on the device, device outputs on request) is tested with
the Triton backend under TRITON_INTERPRET=1 in tests/test_triton_kernels.py."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import registry
from runtime import InferenceSession
from kernels.core.device import dtype_name, is_device_array, shape_stand_in, to_numpy
from runtime.graph import Graph, Node, Value
from kernels.core.layouts import dense_tensor


class FakeDeviceArray:
    """What the session sees of a CuPy array: the CUDA array interface, shape, dtype, get()."""

    def __init__(self, a: np.ndarray):
        self._a = a
        self.shape, self.dtype = a.shape, a.dtype
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (0, False), "version": 3}
        self.copies = 0

    def get(self) -> np.ndarray:
        self.copies += 1
        return self._a.copy()


def test_recognise_and_bring_home():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = FakeDeviceArray(a)
    assert is_device_array(d) and not is_device_array(a) and not is_device_array([1, 2])
    np.testing.assert_array_equal(to_numpy(d), a)
    assert to_numpy(a) is a and dtype_name(d) == "float32"
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    assert is_device_array(t) and dtype_name(t) == "int64"
    np.testing.assert_array_equal(to_numpy(t), np.arange(6).reshape(2, 3))


def test_shape_stand_in_has_the_shape_and_no_data():
    s = shape_stand_in(FakeDeviceArray(np.zeros((4, 1000, 3), np.float16)))
    assert s.shape == (4, 1000, 3) and s.dtype == np.float16 and s.strides == (0, 0, 0)
    assert not s.flags.owndata and s.base is not None      # a view of one element, no data of its own


def test_backend_orders_without_a_gpu():
    assert registry.auto_order() == registry.AUTO_ORDER or any(
        registry.backend_device(b) == "cuda" for b in registry.GPU_BACKENDS)
    assert registry.fallback_order("numba") == ("numba", "reference")
    for b in registry.GPU_BACKENDS:
        if registry.backend_device(b) is None:
            assert registry.fallback_order(b) == (b, "reference")


def _graph() -> Graph:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    g = Graph("t", [Value("x", "float32", ("n", 8))], [Value("y", "float32", ("n", 5)), Value("s", "int64", (2,))],
              [Node("fc", "Linear", ["x", "w"], ["h"]), Node("relu", "Relu", ["h"], ["y"]),
               Node("shape", "Shape", ["x"], ["s"])], {"w": dense_tensor("w", w)})
    g.validate()
    return g


def test_cpu_session_takes_a_device_feed_to_the_host_once():
    g = _graph()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    sess = InferenceSession(g)
    want = sess.run(None, {"x": x})
    d = FakeDeviceArray(x)
    got = sess.run(None, {"x": d})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert d.copies == 1 and sess.host_transfers == 0
    with pytest.raises(ValueError, match="expected dtype float32, got float64"):
        sess.run(None, {"x": FakeDeviceArray(x.astype(np.float64))})
    with pytest.raises(ValueError, match="input 'x'"):
        sess.run(None, {"x": FakeDeviceArray(x[:, :4])})
