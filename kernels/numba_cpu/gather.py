"""Gather on an int8 / int4_grouped table for the numba backend: the quantized embedding lookup.

The spec is kernels/reference/packed_gather.py: out[i, :] = dequant(table)[idx[i], :]. These
kernels dequantize only the gathered rows, element by element, as the same float32 product
PackedTensor.to_dense() evaluates, so the result is bit for bit the reference's (no fastmath:
there is nothing to reassociate, and a contraction has no add to fuse with):

* int8:          out[i, k] = float32(q[r, k] - zp[r]) * scale[r],   r = idx[i] (+ V if < 0)
                 scale / zp (V,) per row, or (1,) per tensor (then index 0 for every row);
* int4_grouped:  out[i, k] = float32(q[r, k] - zp[r, k // g]) * scale[r, k // g], q the nibble
                 of byte k // 2 (bits 0-3 for even k, 4-7 for odd), read as a two's complement
                 nibble when symmetric (zp = 0), unsigned with its zero point otherwise.

Shapes: the table's 2-D view (V, D) (qdata (V, D) int8 for int8; (V, G*g/2) uint8 for int4),
indices flattened to (n,) int64, out (n, D) float32, returned as indices.shape + the table's
shape[1:]. Indices are checked (in range [-V, V)) before any row is read; the first bad one
raises the reference's IndexError. Axis other than 0 runs the reference.

One thread, rows in order: a lookup reads and writes n * D elements once (memory bound; a
BERT-base batch of 128 tokens is 98,304 floats), so there is no parallel path to keep
consistent; the result cannot depend on a thread count.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from kernels.reference.packed_gather import check_index_dtype, index_error, row_gather_factory
from kernels.registry import register
from kernels.core.layouts import PackedTensor, dense_view_2d

F32 = np.dtype(np.float32)


@njit(cache=True)
def _first_bad_index(idx, rows):
    """Position of the first index outside [-rows, rows) in idx (n,) int64, or -1."""
    for i in range(idx.shape[0]):
        v = idx[i]
        if v < -rows or v >= rows:
            return i
    return -1


@njit(cache=True)
def _gather_int8_rows(qdata, scale, zp, has_zp, idx, out):
    """out (n, D) float32 = float32(qdata[r] - zp[r]) * scale[r] for r = idx[i] normalized;
    qdata (V, D) int8, scale (V,) or (1,) float32, zp like scale (int8; read only if has_zp)."""
    rows, d = qdata.shape
    per_row = scale.shape[0] == rows
    for i in range(idx.shape[0]):
        r = idx[i]
        if r < 0:
            r += rows
        s_row = r if per_row else 0
        s = scale[s_row]
        z = np.int32(zp[s_row]) if has_zp else np.int32(0)
        q = qdata[r]
        o = out[i]
        for k in range(d):
            o[k] = np.float32(np.int32(q[k]) - z) * s


@njit(cache=True)
def _gather_int4_rows(qdata, scale, zp, has_zp, g, d, idx, out):
    """out (n, D) float32 from qdata (V, G*g/2) uint8 (two nibbles a byte, low first), scale
    (V, G) float32, zp (V, G) uint8 (read only if has_zp; else signed nibbles)."""
    rows = qdata.shape[0]
    sbit = np.int32(0 if has_zp else 8)       # two's complement nibble: (v ^ 8) - 8
    for i in range(idx.shape[0]):
        r = idx[i]
        if r < 0:
            r += rows
        q = qdata[r]
        o = out[i]
        for k in range(d):
            j = k // g
            byte = np.int32(q[k >> 1])
            nib = ((byte >> ((k & 1) * 4)) & 15) ^ sbit
            z = (np.int32(zp[r, j]) if has_zp else np.int32(0)) + sbit
            o[k] = np.float32(nib - z) * scale[r, j]


def _flat_indices(indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """(indices as an array, flattened int64 (n,)): one dtype for the compiled kernel; a uint64
    above int64's range becomes -2^63, which the range check refuses like the value itself."""
    idx = np.asarray(indices)
    check_index_dtype(idx)
    flat = idx.reshape(-1)
    if flat.dtype == np.uint64:
        flat = np.where(flat > np.iinfo(np.int64).max, np.uint64(1 << 63), flat)
    return idx, flat.astype(np.int64)


class TablePlan:
    """One packed table's fields as the kernels take them (contiguous, 2-D), prepared once."""

    def __init__(self, table: PackedTensor):
        if not isinstance(table, PackedTensor):
            raise TypeError(f"Gather: the table must be an initializer in a packed layout, got {type(table).__name__}")
        f = table.fields
        self.table = table
        self.rows, self.d = dense_view_2d(table.shape)
        self.has_zp = "zero_point" in f
        if table.layout == "int8":
            self.qdata = np.ascontiguousarray(f["qdata"]).reshape(self.rows, self.d)
            self.scale = np.ascontiguousarray(f["scale"], F32).reshape(-1)
            self.zp = np.ascontiguousarray(f["zero_point"]).reshape(-1) if self.has_zp else np.zeros(1, np.int8)
        else:
            self.group_size = int(table.params["group_size"])
            self.qdata = np.ascontiguousarray(f["qdata"])
            self.scale = np.ascontiguousarray(f["scale"], F32)
            self.zp = np.ascontiguousarray(f["zero_point"]) if self.has_zp else np.zeros((1, 1), np.uint8)

    def lookup(self, indices: Any) -> np.ndarray:
        """indices (any int dtype, any shape) -> float32 indices.shape + table.shape[1:]."""
        idx, flat = _flat_indices(indices)
        bad = _first_bad_index(flat, self.rows)
        if bad >= 0:
            raise index_error(idx, self.rows, bad, self.table.name)
        out = np.empty((flat.shape[0], self.d), F32)
        if self.table.layout == "int8":
            _gather_int8_rows(self.qdata, self.scale, self.zp, self.has_zp, flat, out)
        else:
            _gather_int4_rows(self.qdata, self.scale, self.zp, self.has_zp, self.group_size, self.d, flat, out)
        return out.reshape(idx.shape + tuple(self.table.shape[1:]))


gather_factory = row_gather_factory(TablePlan, "numba")


for _layout in ("int8", "int4_grouped"):
    register("Gather", "numba", _layout)(gather_factory)
