"""Plumbing shared by the CuPy wrappers: the lazy cupy import, the CUDA sources and their
compiled modules, moving inputs to the device, allocating outputs.

Nothing here imports cupy at module import time: ``cupy()`` imports it on first use, so this
package imports (and kernels.registry can ask ``probe()`` why it is unusable) on a machine
without CuPy or without a GPU.

The CUDA sources are the ``*.cu`` files of this folder; each is compiled as ``common.cuh``
followed by the file (``compiled_source``) with ``cupy.RawModule`` (NVRTC, for the current
device's architecture), once per process and source (``module``), and CuPy caches the binary
on disk keyed by that text. Kernels are fetched only through ``kernel(file, name)`` with
literal names, which tests/test_cupy_kernels.py checks against the ``extern "C" __global__``
declarations of each file.
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from kernels.core.layouts import PackedTensor

SOURCE_DIR = Path(__file__).resolve().parent
COMMON_HEADER = "common.cuh"

# the activation attribute of a Linear (kernels/core/ops.py ACTIVATIONS) -> the epilogue code of
# common.cuh (QRT_ACT_*; tests/test_cupy_kernels.py checks the two tables agree)
ACTIVATION_CODES = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}

# threads per block of the row kernels (one block per row: LayerNorm, Softmax, dynamic
# quantization) at most, and of the element-wise kernels; multiples of 32 (common.cuh)
ROW_THREADS_MAX = 256
ELEMENTWISE_THREADS = 256
# a grid-stride kernel's grid is capped here: enough blocks to fill any current GPU many
# times over, far below CUDA's 2^31 - 1 limit on gridDim.x, and the kernels loop past it
MAX_GRID = 65535

_CUPY: Any = None      # the cupy module once imported (tests substitute a CPU emulation)


def cupy():
    """The cupy module, imported on first use (ImportError if CuPy is not installed)."""
    global _CUPY
    if _CUPY is None:
        _CUPY = importlib.import_module("cupy")
    return _CUPY


@functools.lru_cache(maxsize=None)
def _read(name: str) -> str:
    return (SOURCE_DIR / name).read_text(encoding="utf-8")


def sources() -> dict[str, str]:
    """Every CUDA source of this backend: file name -> text (the ``*.cu`` files and
    ``common.cuh``), read from the package folder."""
    names = sorted(p.name for p in SOURCE_DIR.iterdir() if p.suffix in (".cu", ".cuh"))
    return {name: _read(name) for name in names}


def compiled_source(name: str) -> str:
    """The translation unit NVRTC compiles for ``name`` (a ``.cu`` file): common.cuh, then the file."""
    if not name.endswith(".cu") or not (SOURCE_DIR / name).is_file():
        raise ValueError(f"no CUDA source {name!r} in {SOURCE_DIR}")
    return f"{_read(COMMON_HEADER)}\n// ---- {name} ----\n{_read(name)}"


# NVRTC options: C++14 (no newer language feature is used; an older CuPy/NVRTC accepts it)
NVRTC_OPTIONS = ("--std=c++14",)

_MODULES: dict[tuple[int, str], Any] = {}


def module(name: str):
    """The compiled ``cupy.RawModule`` of ``name``, built once per process (and per cupy
    module, so an emulation substituted by a test never shares it)."""
    cp = cupy()
    key = (id(cp), name)
    if key not in _MODULES:
        _MODULES[key] = cp.RawModule(code=compiled_source(name), options=NVRTC_OPTIONS)
    return _MODULES[key]


def kernel(name: str, function: str):
    """The ``extern "C" __global__`` function ``function`` of the CUDA source ``name``."""
    return module(name).get_function(function)


def launch(name: str, function: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
    """Launch ``function`` of ``name`` on the current stream. ``args`` are cupy arrays and numpy
    scalars whose dtypes are exactly the C parameter types (np.int32 for int, np.int64 for
    long long, np.float64 for double): CuPy passes a scalar by its dtype."""
    kernel(name, function)(grid, block, args)


# --- device arrays ----------------------------------------------------------------------------

def to_device(x: Any, dtype=None):
    """``x`` as a cupy array: a cupy array as it is (a copy only if ``dtype`` differs), a numpy
    array uploaded, a torch CUDA tensor (anything with __cuda_array_interface__) wrapped without
    a copy."""
    cp = cupy()
    return cp.asarray(x) if dtype is None else cp.asarray(x, dtype=dtype)


def contiguous(x: Any, dtype=None):
    """``x`` on the device, C-contiguous (copied only when needed)."""
    a = to_device(x, dtype)
    # (ascontiguousarray would also turn a 0-d array into (1,) under numpy)
    return a if a.flags.c_contiguous else cupy().ascontiguousarray(a)


def empty(shape: tuple[int, ...], dtype):
    """A fresh output array. Every wrapper allocates its outputs here, so a test can poison
    them (fill with NaN) and see any element a kernel leaves unwritten."""
    return cupy().empty(shape, dtype=dtype)


def host_constant(w: Any) -> np.ndarray | None:
    """A node's constant input as numpy: the array of a ``dense`` PackedTensor, an array as is."""
    if w is None:
        return None
    if isinstance(w, PackedTensor):
        if w.layout != "dense":
            raise ValueError(f"constant input {w.name!r} is in layout {w.layout!r}; expected dense")
        return w.fields["data"]
    return np.asarray(w)


class DeviceConstants:
    """A node's constant inputs (``weights`` of a kernel factory, by input position), uploaded
    once at plan time. ``get(i, value)`` returns the uploaded copy when ``value`` is the array
    the session passes for that constant (the same object: a session passes the stored array
    itself), else ``value`` moved to the device."""

    def __init__(self, weights: dict, positions: dict[int, Any]):
        """positions: input position -> the dtype it is uploaded as."""
        self._host: dict[int, np.ndarray] = {}
        self._device: dict[int, Any] = {}
        self._dtypes = dict(positions)
        for i, dtype in positions.items():
            host = host_constant(weights.get(i))
            if host is not None:
                self._host[i] = host
                self._device[i] = contiguous(np.asarray(host, dtype=dtype))
        # the objects a session may pass for a constant: the stored array, or the PackedTensor
        self._sources = {i: (self._host[i], weights.get(i)) for i in self._host}

    def get(self, i: int, value: Any):
        if value is None:
            return None
        if i in self._sources and any(value is s for s in self._sources[i]):
            return self._device[i]
        if isinstance(value, PackedTensor):
            value = host_constant(value)
        return contiguous(value, self._dtypes[i])


def grid_1d(n: int, threads: int) -> int:
    """Blocks of a grid-stride launch over ``n`` items (at least 1, at most MAX_GRID)."""
    return max(1, min(MAX_GRID, -(-n // threads)))


def row_threads(cols: int) -> int:
    """Threads of a one-block-per-row kernel: a multiple of 32, enough to cover a short row in
    one step, at most ROW_THREADS_MAX."""
    return min(ROW_THREADS_MAX, max(32, -(-cols // 32) * 32))


def check_float32(op: str, what: str, x) -> None:
    """The GPU kernels read and write float32 only: a clear error for any other dtype."""
    if np.dtype(x.dtype) != np.float32:
        raise ValueError(f"{op}: the cupy backend computes in float32; {what} is {x.dtype} "
                         f"(use backend='reference' or another backend for other dtypes)")
