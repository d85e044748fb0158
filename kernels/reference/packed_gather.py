"""Gather on a packed table: the embedding lookup of a quantized table (the spec).

The converter stores word / position / token-type embeddings (a Gather whose input 0 is a
constant fp32 (V, D) table, axis 0) as ``int8`` with one scale per row (per vocabulary entry)
or ``int4_grouped`` with groups along D (runtime/convert/pipeline.py ``find_embeddings``).
The lookup on such a table is defined as the lookup on the dequantized table:

    out[i..., :] = dequant(table)[idx[i...], :]          out shape indices.shape + (D,)
    dequant      = PackedTensor.to_dense(): float32(q - zero_point) * scale, one float32
                   rounding per element (kernels/core/layouts.py, Numerics)

so every fast kernel, which dequantizes only the gathered rows, matches this bit for bit: it
evaluates the same float32 product of the same two numbers.

Indices (``gather_rows``): any integer dtype and shape; a negative index counts from the end
(-1 is row V - 1), as ONNX Gather and np.take; an index outside [-V, V) is an IndexError
naming the index, its position in ``indices`` and the table, raised before anything is
returned (``index_error``: every backend raises this same message). Other dtypes (float,
bool) are a TypeError.

This module registers the reference kernel for every packed layout (``PACKED_LAYOUTS``):
int8 and int4_grouped are what the converter writes; a sparse table (csr / bsr / nm) only
arises when a Linear shares its weight with a Gather, and the same definition covers it. Any
axis and table rank are accepted here; the fast kernels take axis 0 and run this otherwise.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kernels.registry import register
from kernels.core.layouts import PackedTensor

from ._common import normalize_axis
from .packed import PACKED_LAYOUTS


def index_error(indices: np.ndarray, rows: int, position: int, table: str, axis: int = 0) -> IndexError:
    """The error for the index at flat ``position`` of ``indices``, which is outside [-rows, rows)
    (the wording of np.take's error, which the dense Gather raises, plus where and which table)."""
    value = int(np.asarray(indices).reshape(-1)[position])
    return IndexError(f"Gather: index {value} is out of bounds for axis {axis} with size {rows} "
                      f"(indices.flat[{position}] of table {table!r}; valid: -{rows} .. {rows - 1})")


def check_index_dtype(indices: np.ndarray) -> None:
    """TypeError unless ``indices`` holds integers (bool is not an index here)."""
    if indices.dtype.kind not in "iu":
        raise TypeError(f"Gather: indices must be an integer array, got dtype {indices.dtype}")


def gather_rows(indices: Any, rows: int, table: str, axis: int = 0) -> np.ndarray:
    """``indices`` (any integer dtype and shape) as int64 row numbers in [0, rows), same shape:
    negative values get ``rows`` added; an index outside [-rows, rows) raises index_error."""
    idx = np.asarray(indices)
    check_index_dtype(idx)
    # compared in the indices' own dtype (numpy compares with a Python int exactly), so a
    # uint64 above int64's range is out of bounds here instead of wrapping in a cast
    bad = idx >= rows if idx.dtype.kind == "u" else (idx < -rows) | (idx >= rows)
    if bad.any():
        raise index_error(idx, rows, int(np.argmax(bad.reshape(-1))), table, axis)
    as64 = idx.astype(np.int64)                   # exact: every value is in [-rows, rows)
    return np.where(as64 < 0, as64 + rows, as64)


def packed_gather_ref(table: PackedTensor, indices: Any, axis: int = 0,
                      dense: np.ndarray | None = None) -> np.ndarray:
    """dequant(table) indexed along ``axis`` by ``indices``: output shape
    table.shape[:axis] + indices.shape + table.shape[axis+1:], float32. For a (V, D) table and
    axis 0, the embedding lookup (V vocabulary rows of D values). ``dense``: the table's
    to_dense(), when the caller has it already (a kernel prepares it once, at plan time)."""
    if not isinstance(table, PackedTensor):
        raise TypeError(f"Gather: the table must be an initializer in a packed layout, got {type(table).__name__}")
    if dense is None:
        dense = table.to_dense()
    axis = normalize_axis(axis, dense.ndim, "Gather axis")
    rows = gather_rows(indices, dense.shape[axis], table.name, axis)
    return np.take(dense, rows, axis=axis)


def packed_gather_factory(attrs: dict, weights: dict) -> Callable[..., tuple]:
    """Kernel factory of (Gather, packed layout, reference): dequantizes the table once, at
    plan time. The table is bound then: run's table slot is not read (kernels/registry.py)."""
    table = weights.get(0)
    axis = int(attrs.get("axis", 0))
    if not isinstance(table, PackedTensor):
        raise TypeError(f"Gather: the table must be an initializer in a packed layout, got {type(table).__name__}")
    dense = table.to_dense()
    normalize_axis(axis, dense.ndim, "Gather axis")       # a bad axis is a plan-time error

    def run(_table, indices):
        return (packed_gather_ref(table, indices, axis, dense),)
    return run


for _layout in PACKED_LAYOUTS:
    register("Gather", "reference", _layout)(packed_gather_factory)


def row_gather_factory(plan: Callable[[PackedTensor], Any], backend: str) -> Callable[..., Callable[..., tuple]]:
    """The kernel factory a CPU backend registers for (Gather, int8 | int4_grouped): axis 0 runs
    ``plan(table).lookup(indices)`` (the backend's row kernels, planned once per table); any
    other axis runs the reference, which dequantizes the table at plan time. The table is
    bound at plan time: run's table slot is not read (kernels/registry.py)."""
    def factory(attrs: dict, weights: dict):
        table = weights.get(0)
        axis = int(attrs.get("axis", 0))
        if not isinstance(table, PackedTensor):
            raise TypeError(f"Gather: the table must be an initializer in a packed layout, got {type(table).__name__}")
        if normalize_axis(axis, len(table.shape), "Gather axis") != 0:
            return packed_gather_factory(attrs, weights)
        planned = plan(table)

        def run(_table, indices):
            return (planned.lookup(indices),)
        return run
    factory.__doc__ = f"Kernel factory of (Gather, int8 | int4_grouped, {backend}): run(table, indices)."
    return factory
