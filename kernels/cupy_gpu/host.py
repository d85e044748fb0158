"""Load-time preparation of packed weights for the CUDA kernels: numpy only, no cupy.

These run once per weight, at plan time, on the host; the results are uploaded as they are.
They are plain numpy so that tests/test_cupy_kernels.py checks them against the layouts'
``to_dense`` on machines without a GPU.

* csr: indptr widened to int64 (N + 1,) and indices to int32 (nnz,), whatever the stored
  dtypes (kernels/core/layouts.py stores uint8 / uint16 / int32 indices and int32 / int64 indptr by
  shape): one kernel for every stored combination, 64-bit entry positions for any nnz.
* nm: meta unpacked to one int32 column per stored value, cols (N, K/m*n), row-major like
  the values, so the kernel reads an ELL matrix: cols[r, j*n + i] = j*m + positions[r, j, i].
* values for the float path (act_quant "none"): the stored float32 values, or for quant
  "int8" float32(q) * scale per entry, the layout's own dequantization (IntWeight.dequantize:
  one float32 rounding), so the dense equivalent is exactly ``to_dense()``.
* per-channel weight scales as float64 (N,) (a per-tensor scale (1,) repeated): float32 ->
  float64 is exact, and the int8 epilogue is float64.
"""
from __future__ import annotations

import numpy as np

from kernels.core.layouts import PackedTensor, dense_view_2d, sparse_entries

SPARSE_LAYOUTS = ("csr", "nm")

# int32 accumulation of (qx - z) * qw: each product is at most 255 * 127 in magnitude (static
# activations with a zero point: qx - z in [-255, 255]; dynamic: [-127, 127]); the sum over a
# row's entries is exact in int32 while entries * max|qx - z| * 127 <= 2^31 - 1
INT32_MAX = (1 << 31) - 1
QW_MAX = 127


def max_entries_int32(max_abs_qx: int) -> int:
    """The most entries one output channel may have for an exact int32 sum, with activations
    |qx - z| <= max_abs_qx: 133144 for dynamic (127), 66311 for the widest static zero point (255)."""
    return INT32_MAX // (QW_MAX * int(max_abs_qx))


def check_sparse(t: PackedTensor, op: str = "Linear") -> tuple[int, int]:
    """(N, K) of a csr / nm weight for Linear, or ValueError naming what is wrong."""
    if not isinstance(t, PackedTensor):
        raise TypeError(f"{op}: the weight must be an initializer in a packed layout, got {type(t).__name__}")
    if t.layout not in SPARSE_LAYOUTS:
        raise ValueError(f"{op}: the cupy sparse kernels take layouts {SPARSE_LAYOUTS}, got {t.layout!r}")
    if len(t.shape) != 2:
        raise ValueError(f"{op}: packed weight {t.name!r} has shape {t.shape}, expected (N, K)")
    return dense_view_2d(t.shape)


def csr_device_arrays(t: PackedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 (N + 1,), indices int32 (nnz,)) of a csr tensor, C-contiguous."""
    indptr = np.ascontiguousarray(t.fields["indptr"], dtype=np.int64)
    indices = np.ascontiguousarray(t.fields["indices"], dtype=np.int32)   # < K' < 2^31 (layout check)
    return indptr, indices


def csr_max_row_entries(t: PackedTensor) -> int:
    """The most stored entries of any row of a csr tensor (0 for an all-empty weight)."""
    ptr = np.asarray(t.fields["indptr"], dtype=np.int64)
    return int(np.diff(ptr).max(initial=0))


def nm_column_indices(t: PackedTensor) -> np.ndarray:
    """int32 (N, K/m*n): the column of every stored value of an nm tensor, aligned with
    ``values`` / ``qdata`` (N, K/m*n)."""
    rows, _ = dense_view_2d(t.shape)
    return np.ascontiguousarray(sparse_entries(t)[1].reshape(rows, -1), dtype=np.int32)


def stored_int8(t: PackedTensor) -> np.ndarray:
    """The stored int8 values of a csr (nnz,) or nm (N, K/m*n) tensor with quant "int8", flattened."""
    return np.ascontiguousarray(t.fields["qdata"], dtype=np.int8).reshape(-1)


def weight_scale64(t: PackedTensor) -> np.ndarray:
    """float64 (N,): the scale of each output channel of a quant "int8" sparse tensor."""
    n, _ = dense_view_2d(t.shape)
    s = np.asarray(t.fields["scale"], dtype=np.float32).reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(s, (n,)), dtype=np.float64)


def entry_rows(t: PackedTensor) -> np.ndarray:
    """int64: the output channel (row) of every stored entry, in storage order."""
    return sparse_entries(t)[0]


def nm_count(t: PackedTensor) -> int:
    """Stored values per row of an nm tensor: K/m*n."""
    _, k = dense_view_2d(t.shape)
    return k // int(t.params.get("m", 4)) * int(t.params.get("n", 2))


def float_values(t: PackedTensor) -> np.ndarray:
    """float32, flattened in storage order: the weight value of every stored entry as the float
    path multiplies it (quant "none": as stored; quant "int8": float32(q) * scale[row], one
    float32 rounding, as the layout's to_dense)."""
    if "values" in t.fields:
        return np.ascontiguousarray(t.fields["values"], dtype=np.float32).reshape(-1)
    scale = weight_scale64(t).astype(np.float32)[entry_rows(t)]
    return np.ascontiguousarray(stored_int8(t).astype(np.float32) * scale, dtype=np.float32)


def entry_columns(t: PackedTensor) -> np.ndarray:
    """int32, flattened in storage order: the column of every stored entry, as the kernels read it."""
    if t.layout == "csr":
        return csr_device_arrays(t)[1]
    return nm_column_indices(t).reshape(-1)


def dense_from_device_arrays(t: PackedTensor, values: np.ndarray) -> np.ndarray:
    """The (N, K) matrix the kernels see: ``values`` (flattened, storage order) placed at the
    rows of entry_rows and the columns of entry_columns. For tests: equal to to_dense()."""
    n, k = dense_view_2d(t.shape)
    out = np.zeros((n, k), dtype=values.dtype)
    out[entry_rows(t), entry_columns(t).astype(np.int64)] = values
    return out
