"""Numeric bounds of the int8 GEMM, once for Python (C++: csrc/numeric_bounds.h, tied by
tests/test_layering.py). A sum of K' zero-point-corrected int8 products is bounded by
K' * 255 * 255 (docs/CONVERTER.md, "Numerics")."""
from __future__ import annotations

# Largest magnitude of one zero-point-corrected int8 x int8 product.
MAX_INT8_PRODUCT = 255 * 255
# int32 accumulation (vpdpbusd / vpmaddwd lanes, Triton's int32 dot) is exact up to this K.
MAX_K_INT32 = (2 ** 31 - 1) // MAX_INT8_PRODUCT          # 33025
# float64 accumulation (the reference) and int64 -> float64 are exact below this K.
MAX_EXACT_K = (1 << 53) // MAX_INT8_PRODUCT
