"""CuPy GPU backend: CUDA C++ kernels (the ``*.cu`` files of this folder, compiled at run time
by ``cupy.RawModule`` / NVRTC, once per process) and thin wrappers that check inputs, allocate
the outputs and launch.

Kernels (op, layout) -> factory, registered with kernels.registry as backend "cupy":

    ("Linear", "csr")                 linear.py      csr_spmm_int8.cu + quantize.cu
    ("Linear", "nm")                  linear.py      nm_int8.cu + quantize.cu
    ("LayerNormalization", "dense")   normalization.py  layer_norm.cu
    ("SkipLayerNormalization", "dense")  normalization.py  layer_norm.cu
    ("Softmax", "dense")              elementwise.py softmax.cu
    ("Gelu", "dense")                 elementwise.py gelu.cu
    ("Attention", "dense")            attention.py   cupy.matmul (cuBLAS) + softmax.cu
    ("Split", "dense")                kernels/split_views.py: views of the device array

Every factory uploads the weight and the node's other constant inputs once, at plan time;
``run`` takes cupy arrays (numpy arrays are uploaded, torch CUDA tensors wrapped without a copy
through __cuda_array_interface__) and returns a tuple of cupy arrays, float32.

Importing this package never imports cupy (kernels/cupy_gpu/_common.py ``cupy()`` does, on
first use), so kernels.registry can import it anywhere and ask :func:`probe` why it cannot run.
The load-time host preparation of packed weights is numpy only (host.py).
"""
from __future__ import annotations

from kernels.core import device
from kernels.registry import register
from kernels.split_views import device_split_factory

from . import _common
from ._common import sources  # noqa: F401  (public: the CUDA sources by file name)
from .attention import attention_factory
from .elementwise import gelu_factory, softmax_factory
from .sparse import sparse_linear_factory
from .normalization import layer_normalization_factory, skip_layer_normalization_factory

INSTALL_HINT = "pip install cupy-cuda12x"

# where this backend's arrays live (kernels.registry.backend_device)
DEVICE = "cuda"


def to_device(x):
    """The session's upload hook (runtime/session.py): a numpy feed as a cupy array on the
    current device (a cupy array or torch CUDA tensor is returned as a cupy array, no copy)."""
    return _common.to_device(x)


# (op, layout) -> kernel factory: the whole backend, registered below
FACTORIES = {
    ("Linear", "csr"): sparse_linear_factory,
    ("Linear", "nm"): sparse_linear_factory,
    ("LayerNormalization", "dense"): layer_normalization_factory,
    ("SkipLayerNormalization", "dense"): skip_layer_normalization_factory,
    ("Softmax", "dense"): softmax_factory,
    ("Gelu", "dense"): gelu_factory,
    ("Attention", "dense"): attention_factory,
    ("Split", "dense"): device_split_factory,     # views: the merged Q/K/V stay on the device
}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def probe() -> str | None:
    """None when cupy imports and sees at least one CUDA device, else a one-line reason.
    Never raises: every CUDA error (no driver, no device, a broken install) is a reason. On a
    machine without an NVIDIA GPU the reason is that, not what to install."""
    if not device.nvidia_gpu_visible():
        return device.NO_GPU
    try:
        import cupy
    except ModuleNotFoundError as e:
        if e.name == "cupy":
            return f"cupy is not installed ({INSTALL_HINT})"
        return f"cupy failed to import: {_one_line(e)}"
    except Exception as e:             # a broken CuPy install (missing CUDA libraries...)
        return f"cupy failed to import: {_one_line(e)}"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:             # CUDARuntimeError: no driver, no device, driver too old
        return f"no CUDA device: {_one_line(e)}"
    if count < 1:
        return "no CUDA device: cupy.cuda.runtime.getDeviceCount() is 0"
    return None


for (_op, _layout), _factory in FACTORIES.items():
    register(_op, "cupy", _layout)(_factory)
