"""qrt: a small inference runtime for int8-quantized and sparse neural networks.

Public API:
    InferenceSession(path_or_graph, backend="auto")   run a .qrt model (onnxruntime-shaped)
    convert.from_onnx(model, out_path=None)           ONNX -> qrt graph (-> .qrt file)
    convert.from_torch(module, example_inputs, ...)   PyTorch -> ONNX (in memory) -> qrt
    available_backends()                              backend name -> None or why unusable
    load(path) / save(graph, path)                    the .qrt file itself
"""
from kernels.registry import available_backends
from . import convert
from .errors import QrtFormatError, UnsupportedModelError
from .format import load, save
from .session import InferenceSession

__version__ = "0.1.0"
__all__ = ["InferenceSession", "convert", "available_backends", "load", "save",
           "QrtFormatError", "UnsupportedModelError", "__version__"]
