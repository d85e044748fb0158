"""Model conversion: float model -> (prune, quantize, calibrate, pack) -> .qrt file.

``runtime.convert`` is both this package and a function:

    runtime.convert("model.onnx", "model.qrt", prune="nm", quant="int8")   # = convert(...)
    runtime.convert.from_onnx(...), runtime.convert.from_torch(...)
    runtime.convert.from_hf("model_folder/", "model.qrt", quant="int8")   # Hugging Face folder

(the module's class is swapped for a callable subclass below; that keeps one public name for
the API the CLI mirrors, ``qrt convert``, and the submodules). onnx, and torch for
from_torch and from_hf, are imported only when a conversion runs.
"""
import sys
import types

from .hf import from_folder as from_hf
from .pipeline import ConvertOptions, compress, convert, from_onnx, from_torch

__all__ = ["convert", "from_onnx", "from_torch", "from_hf", "ConvertOptions", "compress"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
