"""Triton backend ("triton"): @triton.jit kernels for NVIDIA GPUs, each with a Python wrapper.

Kernels (each module's docstring has its design, numerics and the expected H100 behaviour):

    ("Linear", "int8")          int8.py   int8 x int8 -> int32 tensor-core GEMM, with
                                                  dynamic (per row) or static activation
                                                  quantization (quantize.py) and the float64
                                                  dequantize + bias + activation epilogue;
                                                  act_quant "none" -> int4.py
    ("Linear", "int4_grouped")  int4.py   weight-only int4 (and int8): nibbles unpacked
                                                  and dequantized per group in registers, fp32 dot
    ("Linear", "bsr")           sparse.py    block-sparse: stored blocks repacked at load into
                                                  kernel tiles, empty tiles never visited; int8
                                                  (dynamic / static) or fp16 values

Every factory uploads (and pads / repacks) its weight once, at plan time, to ``DEVICE``; ``run``
takes X as a torch tensor on ``DEVICE`` (a numpy X is uploaded, a CuPy array wrapped through
DLPack) and returns Y as a torch tensor on ``DEVICE``, float32. X must be float32.
:func:`to_device` is the session's hook for uploading numpy feeds.

Where it runs: a CUDA GPU (torch.cuda.is_available()), or, for tests, Triton's interpreter on
torch CPU tensors (environment TRITON_INTERPRET=1, which must be set before triton is first
imported in the process: tests/conftest.py does it). :func:`probe` says why neither is the
case. Importing this package never raises for a missing torch / triton / GPU: the kernel
modules are imported only when :func:`probe` finds the backend usable.

Numerics in one place (details and proofs in each module's docstring; the tests' tolerance
constants in tests/test_triton_kernels.py):

* int8 activations (int8; bsr quant "int8"): activation quantization and epilogue in float64,
  exact int32 GEMM: the reference's bits (tolerance 0), K <= 33025 (else refused).
* weight-only (int4_grouped; int8 with act_quant "none"): the reference's float32 dequantized
  weight, float32 dot: |err| <= (K + 3) 2^-24 (sum |x w| + |b|). Optional "fp16" dot.
* bsr float path: float16 X and W, float32 accumulation (bound in sparse.py).
* fused activations: ReLU exact; GELU (erf / tanh) in float64, rounded once.

Environment: QRT_TRITON_AUTOTUNE=0 (one configuration per M range, nothing benchmarked: for
tests on a GPU), QRT_TRITON_WEIGHT_ONLY_DOT=fp16 (weight-only dot on the tensor cores).

Checked without a GPU: every kernel against the reference in the interpreter, and every
configuration compiled for sm_90a (wgmma / mma.sync chosen, registers and spills as the
``configs()`` comments say). Not checkable without one: speed, the autotuner's choices, and
that libdevice's erf / exp stay within the GELU tolerance (the interpreter uses math.erf).

Threads: the GPU needs none; :func:`set_threads` does nothing.
"""
from __future__ import annotations

import importlib.util
import os

from kernels.core.device import NO_GPU, nvidia_gpu_visible

_IMPORT_ERROR: str | None = None
DEVICE = "cpu"


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):       # a half-removed package (sys.modules entry None...)
        return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# torch and triton are imported only where they could run: importing them on a machine without
# an NVIDIA GPU (and without the interpreter) costs about 1.7 s per process, and torch brings
# its own libgomp, which would then be the process's OpenMP runtime, started before
# kernels/core/threads.py could set its wait policy (its workers then spin for milliseconds
# after each numba call, on the cores the native pool needs: RESULTS.md, "A GPU check that
# loaded torch").
if not (_interpreting() or nvidia_gpu_visible()):
    _IMPORT_ERROR = "not imported (no NVIDIA GPU and TRITON_INTERPRET is not 1)"
elif _missing("torch"):
    _IMPORT_ERROR = "torch is not installed"
elif _missing("triton"):
    _IMPORT_ERROR = "triton is not installed"
else:
    try:
        import torch
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken install must not break `import kernels`
        _IMPORT_ERROR = f"importing torch / triton failed: {type(e).__name__}: {e}"
    else:
        DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def probe() -> str | None:
    """None when torch and triton import and either a CUDA GPU is visible or TRITON_INTERPRET
    is "1" (the interpreter, on CPU tensors); else why not, in one line: on a machine without
    an NVIDIA GPU that is the reason, whatever is installed."""
    if _interpreting():
        return _IMPORT_ERROR
    if not nvidia_gpu_visible():
        return f"{NO_GPU}; TRITON_INTERPRET=1 runs the kernels in Triton's CPU interpreter, for testing"
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if DEVICE != "cuda":
        return "an NVIDIA GPU is present but torch.cuda.is_available() is False (a CPU-only build of torch?)"
    return None


def to_device(x):
    """The session's upload hook (runtime/session.py): a numpy feed as a torch tensor on
    ``DEVICE`` (a copy); a torch tensor moved there if it is elsewhere; a CUDA array of another
    library (CuPy, via DLPack) wrapped without a copy."""
    from ._common import as_device_tensor
    return as_device_tensor(x)


def set_threads(n: int) -> None:
    """Nothing to do: the kernels run on the GPU (or in the interpreter, on one thread)."""


if probe() is None:
    # Kernels register themselves (kernels.registry) on import.
    from . import int4, int8, sparse  # noqa: F401

# Split as views of the device tensor: the merged Q/K/V projection stays on the device.
from kernels.registry import register as _register  # noqa: E402
from kernels.split_views import device_split_factory as _device_split  # noqa: E402

_register("Split", "triton")(_device_split)
