"""qrt: a small inference runtime for int8-quantized and sparse neural networks.

Public API:
    InferenceSession(path_or_graph, backend="auto")   run a .qrt model (onnxruntime-shaped)
    convert.from_onnx(model, out_path=None)           ONNX -> qrt graph (-> .qrt file)
    convert.from_torch(module, example_inputs, ...)   PyTorch -> ONNX (in memory) -> qrt
    convert.from_hf(model_folder, out_path=None)      Hugging Face / sentence-transformers folder -> qrt
    TextEncoder(path).encode(texts)                   sentence embeddings of a text .qrt (runtime/text.py)
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

from .errors import QrtFormatError, UnsupportedModelError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["InferenceSession", "TextEncoder", "convert", "available_backends", "load", "save",
           "QrtFormatError", "UnsupportedModelError", "__version__"]

# The rest loads on first use (PEP 562), so that `import runtime` (the CLI's start, a kernel
# test importing runtime.format) does not pay for the session, the planner and the converter.
_LAZY = {
    "InferenceSession": ("runtime.session", "InferenceSession"),
    "TextEncoder": ("runtime.text", "TextEncoder"),
    "convert": ("runtime.convert", None),
    "load": ("runtime.format", "load"),
    "save": ("runtime.format", "save"),
    "available_backends": ("kernels.registry", "available_backends"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value

