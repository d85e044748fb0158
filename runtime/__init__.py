"""qrt: a small inference runtime for int8-quantized and sparse neural networks.

Public API:
    InferenceSession(path_or_graph, backend="auto")   run a .qrt model (onnxruntime-shaped)
    convert.from_onnx(model, out_path=None)           ONNX -> qrt graph (-> .qrt file)
    convert.from_torch(module, example_inputs, ...)   PyTorch -> ONNX (in memory) -> qrt
    available_backends()                              backend name -> None or why unusable
    load(path) / save(graph, path)                    the .qrt file itself
"""
import os as _os

import kernels as _kernels

# qrt's top-level `kernels` package shares its import name with Hugging Face's `kernels`
# (a dependency of transformers >= 5.25): whichever comes first on sys.path shadows the other.
if _os.path.dirname(_os.path.dirname(_os.path.abspath(getattr(_kernels, "__file__", None) or "?"))) != \
        _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))):
    raise ImportError(f"the package 'kernels' imported from {getattr(_kernels, '__file__', None)} is not qrt's "
                      "(Hugging Face's 'kernels', installed with transformers >= 5.25, has the same name); use qrt "
                      "in an environment without it: pip install 'transformers<5.25' && pip uninstall kernels")

from kernels.registry import available_backends  # noqa: E402
from . import convert  # noqa: E402
from .errors import QrtFormatError, UnsupportedModelError
from .format import load, save
from .session import InferenceSession

__version__ = "0.1.0"
__all__ = ["InferenceSession", "convert", "available_backends", "load", "save",
           "QrtFormatError", "UnsupportedModelError", "__version__"]
