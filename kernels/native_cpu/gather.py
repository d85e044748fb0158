"""Gather on an int8 / int4_grouped table, native backend: ("Gather", "native", "int8" | "int4_grouped");
and GatherElements on float32 data: ("GatherElements", "native", "dense").

The kernel is csrc/embedding_gather.cpp (numerics in csrc/embedding_gather.h): only the
gathered rows are dequantized, each element float32(q - zp) * scale, one float32 multiply, so
the result is bit for bit kernels/reference/packed_gather.py's (the lookup on
PackedTensor.to_dense()), for any thread count.

Shapes: the table's 2-D view (V, D); indices of any integer dtype and shape are flattened to
(n,) int32 or int64 (other integer dtypes are converted to int64 first; a uint64 above int64's
range becomes -2^63, refused like the value itself); out (n, D) float32, returned as
indices.shape + the table's shape[1:]. The C++ side checks every index against [-V, V) before
reading a row and returns the first bad position; this wrapper raises the reference's
IndexError for it. An axis other than 0 runs the reference.

GatherElements (csrc/gather_elements.cpp): data float32 and indices int32 / int64 of the same
rank whose axes other than ``axis`` have data's sizes (DeBERTa's relative-position scores: a
(B*H, S, 2*span) product gathered along the last axis by a (B*H, S, S) index), viewed as
(outer, axis, inner); the values are copied, so the result is the reference's, bits included.
Any other call (dtypes, shorter axes, 0-d), and an index out of range (for the reference's
error), runs the reference kernel.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kernels.reference.packed_gather import check_index_dtype, index_error, row_gather_factory
from kernels.fused_dispatch import reference_of
from kernels.registry import register
from kernels.reference._common import normalize_axis
from kernels.core.layouts import PackedTensor, dense_view_2d

from . import _native

_NATIVE_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _flat_indices(indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """(indices as an array, flattened C-contiguous int32 / int64 (n,))."""
    idx = np.asarray(indices)
    check_index_dtype(idx)
    flat = idx.reshape(-1)
    if flat.dtype not in _NATIVE_INDEX_DTYPES:
        if flat.dtype == np.uint64:
            flat = np.where(flat > np.iinfo(np.int64).max, np.uint64(1 << 63), flat)
        flat = flat.astype(np.int64)
    return idx, np.ascontiguousarray(flat)


class TablePlan:
    """One int8 / int4_grouped table, its fields held as the C++ kernel reads them."""

    def __init__(self, table: Any):
        if not isinstance(table, PackedTensor):
            raise TypeError(f"Gather: the table must be an initializer in a packed layout, got {type(table).__name__}")
        if table.layout not in ("int8", "int4_grouped"):
            raise ValueError(f"Gather: the native kernel takes layout 'int8' or 'int4_grouped', got {table.layout!r}")
        f = table.fields
        self.table = table
        self.rows, self.d = dense_view_2d(table.shape)
        zp = f.get("zero_point")
        if table.layout == "int8":
            self.qdata = np.ascontiguousarray(f["qdata"]).reshape(self.rows, self.d)
            self.scale = np.ascontiguousarray(f["scale"], np.float32).reshape(-1)
            self.zero_point = None if zp is None else np.ascontiguousarray(zp).reshape(-1)
        else:
            self.group_size = int(table.params["group_size"])
            self.qdata = np.ascontiguousarray(f["qdata"])
            self.scale = np.ascontiguousarray(f["scale"], np.float32)
            self.zero_point = None if zp is None else np.ascontiguousarray(zp)

    def lookup(self, indices: Any) -> np.ndarray:
        """indices (any int dtype, any shape) -> float32 indices.shape + table.shape[1:]."""
        idx, flat = _flat_indices(indices)
        out = np.empty((flat.shape[0], self.d), np.float32)
        if self.table.layout == "int8":
            bad = _native.gather_int8_rows(self.qdata, self.scale, self.zero_point, flat, out)
        else:
            bad = _native.gather_int4_rows(self.qdata, self.scale, self.zero_point, self.d, self.group_size, flat, out)
        if bad >= 0:
            raise index_error(idx, self.rows, bad, self.table.name)
        return out.reshape(idx.shape + tuple(self.table.shape[1:]))


gather_factory = row_gather_factory(TablePlan, "native")


for _layout in ("int8", "int4_grouped"):
    register("Gather", "native", _layout)(gather_factory)


@register("GatherElements", "native")
def gather_elements_factory(attrs: dict, weights: dict):
    """GatherElements(data, indices) on float32 data: _native.gather_elements_f32 on the
    (outer, axis, inner) views, else the reference."""
    ref = reference_of("GatherElements", attrs, weights)      # checks the attributes
    axis = int(attrs.get("axis", 0))

    def run(data, indices):
        if not (isinstance(data, np.ndarray) and data.dtype == np.float32 and isinstance(indices, np.ndarray)
                and indices.dtype in _NATIVE_INDEX_DTYPES and data.ndim == indices.ndim and data.ndim >= 1):
            return ref(data, indices)
        k = normalize_axis(axis, data.ndim, "GatherElements axis")
        if data.shape[:k] != indices.shape[:k] or data.shape[k + 1:] != indices.shape[k + 1:]:
            return ref(data, indices)
        outer = int(np.prod(data.shape[:k], dtype=np.int64))
        inner = int(np.prod(data.shape[k + 1:], dtype=np.int64))
        out = np.empty(indices.shape, np.float32)
        bad = _native.gather_elements_f32(np.ascontiguousarray(data).reshape(outer, data.shape[k], inner),
                                          np.ascontiguousarray(indices).reshape(outer, indices.shape[k], inner),
                                          out.reshape(outer, indices.shape[k], inner))
        if bad >= 0:
            return ref(data, indices)      # raises the reference's IndexError
        return (out,)
    return run
