"""Packed weight layouts as ONE table.

A constant tensor in a qrt graph (an *initializer*) is stored in a layout: a named recipe of
one or more arrays (*fields*) plus small JSON *params*, which together describe a logical dense
tensor of ``dtype`` and ``shape``. For a weight that maps K inputs to N outputs the logical
shape is (N, K). Kernels are chosen by (op, layout, backend), so a layout name is the contract
between the converter that packs and the kernel that reads.

This issue implements ``dense`` (any dtype; fp32 weights, int64 index tables, bool masks).
The quantized and sparse layouts (int8, int4_grouped, csr, bsr, nm) are added to LAYOUTS by
the converter issue with the same descriptor: fields, params, check, to_dense, nbytes. Their
planned fields are written in docs/FORMAT.md so files stay forward compatible.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# dtypes a field or value may have, as numpy names; the file format maps them to safetensors
# dtype codes (runtime/format.py). bool is one byte per element, 0 or 1.
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
          "uint32", "int64", "uint64", "bool")


@dataclass
class PackedTensor:
    """One initializer: ``fields`` hold the arrays (read-only memmaps once loaded)."""
    name: str
    layout: str
    dtype: str                      # logical dtype of the dense tensor
    shape: tuple[int, ...]          # logical dense shape
    fields: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> "LayoutSpec":
        return layout_spec(self.layout)

    def to_dense(self) -> np.ndarray:
        return self.spec.to_dense(self)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.fields.values())


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtypes: tuple[str, ...]   # allowed dtypes of this field
    doc: str


@dataclass(frozen=True)
class LayoutSpec:
    name: str
    fields: tuple[FieldSpec, ...]
    params: dict[str, Any]                           # name -> default
    check: Callable[[PackedTensor], None]            # raises ValueError on inconsistency
    to_dense: Callable[[PackedTensor], np.ndarray]   # the reference unpack/dequantize
    doc: str


def _dense_check(t: PackedTensor) -> None:
    data = t.fields["data"]
    if str(data.dtype) != t.dtype:
        raise ValueError(f"field 'data' has dtype {data.dtype}, the tensor says {t.dtype}")
    if tuple(data.shape) != tuple(t.shape):
        raise ValueError(f"field 'data' has shape {tuple(data.shape)}, the tensor says {tuple(t.shape)}")


LAYOUTS: dict[str, LayoutSpec] = {
    "dense": LayoutSpec(
        name="dense",
        fields=(FieldSpec("data", DTYPES, "the tensor itself, C order"),),
        params={},
        check=_dense_check,
        to_dense=lambda t: t.fields["data"],
        doc="plain C-order array of any dtype; fp32 weights are (N, K) for Linear",
    ),
}


def layout_spec(name: str) -> LayoutSpec:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown layout {name!r}; known layouts: {', '.join(sorted(LAYOUTS))}") from None


def dense_tensor(name: str, array: np.ndarray) -> PackedTensor:
    """Wrap a numpy array as a ``dense`` initializer (C-contiguous copy if needed)."""
    array = np.asarray(array, order="C")  # (ascontiguousarray would turn 0-d into (1,))
    if str(array.dtype) not in DTYPES:
        raise ValueError(f"initializer {name!r}: dtype {array.dtype} is not storable; allowed: {DTYPES}")
    return PackedTensor(name, "dense", str(array.dtype), tuple(int(d) for d in array.shape), {"data": array})
