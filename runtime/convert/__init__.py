"""Model conversion: float model -> qrt graph -> .qrt file.

This issue converts without compression (dense fp32); pruning and quantization passes are
added to ``pipeline.py`` by the converter issue. onnx (and torch for from_torch) are imported
only when a conversion runs.
"""
from .pipeline import from_onnx, from_torch

__all__ = ["from_onnx", "from_torch"]
