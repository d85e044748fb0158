"""Device arrays in a session: what is one, how it reaches the host, and what stands in for it.

A GPU backend's kernels take and return *device arrays*: CuPy arrays (backend "cupy") or torch
tensors (backend "triton", on CUDA, or on the CPU under TRITON_INTERPRET=1). Both expose their
shape and dtype without a copy, and move between each other without one (DLPack / the CUDA
array interface), which each backend's kernels do at their entry. This module only needs to
recognise them, bring them to the host when a host kernel or the caller needs numpy, and give
host kernels that read only a shape (Shape, Size) a stand-in with that shape and no data.
Nothing here imports torch or cupy: a numpy-only install never pays for them.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

# torch dtype names ("torch.float32") -> numpy's, for feed validation and stand-ins
_TORCH_DTYPES = {"torch.float32": "float32", "torch.float16": "float16", "torch.float64": "float64",
                 "torch.int64": "int64", "torch.int32": "int32", "torch.int16": "int16", "torch.int8": "int8",
                 "torch.uint8": "uint8", "torch.bool": "bool", "torch.bfloat16": "bfloat16"}


NO_GPU = "no CUDA GPU on this machine (no NVIDIA device found)"


def nvidia_gpu_visible() -> bool:
    """Whether this process can see an NVIDIA GPU, asked without importing a CUDA library (so a
    GPU backend's reason on a machine without one is "no GPU", whatever is installed): a device
    node /dev/nvidia<N> (what containers mount), the driver's /proc/driver/nvidia/gpus entries,
    or WSL2's /dev/dxg; unless CUDA_VISIBLE_DEVICES hides every device ("" or "-1")."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        if any(n.startswith("nvidia") and n[6:].isdigit() for n in os.listdir("/dev")) or os.path.exists("/dev/dxg"):
            return True
    except OSError:
        pass
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "data_ptr")


def is_device_array(a: Any) -> bool:
    """A torch tensor, or an array on a CUDA device (the CUDA array interface: CuPy, numba)."""
    return not isinstance(a, np.ndarray) and (is_torch(a) or hasattr(a, "__cuda_array_interface__"))


def dtype_name(a: Any) -> str:
    """numpy's name of a device (or host) array's dtype: 'float32', 'int64', ..."""
    name = str(a.dtype)
    return _TORCH_DTYPES.get(name, name)


def to_numpy(a: Any) -> Any:
    """A host numpy array of ``a`` (a copy from the device; anything else unchanged)."""
    if isinstance(a, np.ndarray) or a is None:
        return a
    if is_torch(a):
        return a.detach().cpu().numpy()
    if hasattr(a, "__cuda_array_interface__"):
        get = getattr(a, "get", None)               # CuPy
        if get is not None:
            return get()
        return np.asarray(a.copy_to_host())         # numba.cuda device arrays
    return a


def shape_stand_in(a: Any) -> np.ndarray:
    """A numpy array with ``a``'s shape and dtype that owns one element (every stride 0):
    what a host kernel that reads only the shape (Shape, Size) is given instead of copying a
    device array to the host."""
    dtype = np.dtype(dtype_name(a)) if dtype_name(a) != "bfloat16" else np.dtype("float32")
    shape = tuple(int(d) for d in a.shape)
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
