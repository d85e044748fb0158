"""Packed weight layouts as ONE table.

A constant tensor in a qrt graph (an *initializer*) is stored in a layout: a named recipe of
one or more arrays (*fields*) plus small JSON *params*, which together describe a logical dense
tensor of ``dtype`` and ``shape``. For a weight that maps K inputs to N outputs the logical
shape is (N, K). Kernels are chosen by (op, layout, backend), so a layout name is the contract
between the converter that packs and the kernel that reads.

Layouts (docs/CONVERTER.md is the contract, docs/FORMAT.md describes the bytes):

    dense         any dtype, the array itself
    int8          int8 weights, per output channel or per tensor, symmetric or asymmetric
    int4_grouped  4-bit weights, two per byte, one scale per group of group_size k
    csr           unstructured sparsity, compressed rows (float32 or int8 values)
    bsr           block sparsity, compressed rows of R x C blocks
    nm            N:M structured sparsity (2:4 is n=2, m=4), positions bit-packed in ``meta``

Every quantized/sparse layout packs a weight of logical shape (N, *rest) through its **2-D
view** (N, K') with K' = prod(rest) (``dense_view_2d``): a Conv filter (C/group, kh, kw) is
one row. Their logical dtype is float32.

Each row of ``LAYOUTS`` says which fields a tensor has (``LayoutSpec.field_specs(t)``: some
fields exist only for some params, e.g. ``zero_point`` only when asymmetric), the params with
their defaults, ``check`` (everything a kernel trusts: dtypes, shapes, scales, index
structure), ``to_dense`` (the reference dequantize/unpack) and ``pack``. The exact byte count
of a packed tensor is ``PackedTensor.nbytes``: the sum of its fields' bytes, nothing else is
stored but the small JSON params.

Numerics (docs/CONVERTER.md, "Numerics"), stated once here and used by every ``pack_*``:

* rounding is round half to even (``np.rint``); divisions by a scale are done in float64 with
  the scale as stored (float32), so dequantize(quantize(w)) is reproducible bit for bit;
* scales are float32, computed in float64 and rounded once: symmetric int8
  scale = max|w| / 127, q = clip(rint(w / scale), -127, 127), no zero point;
  asymmetric int8 scale = (max - min) / 255 with min <= 0 <= max forced (0 is exact),
  zero_point = clip(rint(-128 - min / scale), -128, 127), q = clip(rint(w / scale) + zp, -128, 127);
  int4 symmetric scale = max|w| / 7, q = clip(rint(w / scale), -8, 7) (signed nibble);
  int4 asymmetric scale = (max - min) / 15, zero_point = clip(rint(-min / scale), 0, 15),
  q = clip(rint(w / scale) + zp, 0, 15) (unsigned nibble);
  a row/group/tensor whose values are all zero gets scale 1 (and q = 0, zero_point = 0);
* sparse layouts quantize their kept values symmetric int8 only, scale over kept values;
* dequantized value = float32(q - zero_point) * scale, one float32 rounding (the product of
  a 9-bit integer and a float32 is exact in float64, so float32 and float64 evaluation agree).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# dtypes a field or value may have, as numpy names; the file format maps them to safetensors
# dtype codes (runtime/format.py). bool is one byte per element, 0 or 1.
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
          "uint32", "int64", "uint64", "bool")

# Index dtypes of the compressed layouts: column (or block-column) indices are as narrow as
# the number of (block) columns allows: uint8 up to 256 columns, uint16 up to 65536, else
# int32; indptr is int32 while the number of stored entries fits, else int64. The dtype is a
# function of the shape, never a choice, so a kernel has exactly one dtype to expect for a
# given shape.
UINT8_MAX_COLUMNS = 1 << 8
UINT16_MAX_COLUMNS = 1 << 16
INT32_LIMIT = 1 << 31

# Integer ranges (docs/CONVERTER.md): symmetric int8 never uses -128 so negation cannot
# overflow and u8 x s8 VNNI kernels can shift activations without special cases.
INT8_SYMMETRIC = (-127, 127)
# 7-bit weights in the int8 layout (kernels/native_cpu: the AVX2 narrow tile, csrc/int8_gemm.h)
NARROW_INT8_QMAX = 63
# the converter's weight_bits -> qmax of the symmetric int8 grid [-qmax, qmax]
INT8_QMAX_OF_BITS = {8: INT8_SYMMETRIC[1], 7: NARROW_INT8_QMAX}
INT8_ASYMMETRIC = (-128, 127)
INT4_SYMMETRIC = (-8, 7)       # two's complement nibble
INT4_ASYMMETRIC = (0, 15)      # unsigned nibble

QUANT_MODES = ("none", "int8")  # how the sparse layouts store their kept values


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

    def check(self) -> None:
        """Raise ValueError if the fields do not form a valid tensor of this layout."""
        self.spec.check(self)

    @property
    def nbytes(self) -> int:
        """Exact storage of the tensor's arrays: the sum of its fields' bytes."""
        return sum(int(a.nbytes) for a in self.fields.values())


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtypes: tuple[str, ...]   # allowed dtypes of this field
    doc: str
    optional: bool = False    # present only for some params (``doc`` says when)


@dataclass(frozen=True)
class LayoutSpec:
    """One row of the layouts table.

    fields:   every field the layout may have; ``field_specs(t)`` is the subset a given
              tensor must have exactly (the optional ones chosen by ``optional_present``).
    params:   name -> default; a tensor's params are a subset of these names.
    check:    raises ValueError on any inconsistency a kernel could trip over.
    to_dense: the reference unpack/dequantize -> array of the logical shape.
    pack:     ``pack(name, w, mask=None, **opts) -> PackedTensor``.
    """
    name: str
    fields: tuple[FieldSpec, ...]
    params: dict[str, Any]                           # name -> default
    check: Callable[[PackedTensor], None]            # raises ValueError on inconsistency
    to_dense: Callable[[PackedTensor], np.ndarray]   # the reference unpack/dequantize
    doc: str
    pack: Callable[..., PackedTensor] | None = None
    # params -> the names of the optional fields a tensor with those params has
    optional_present: Callable[[dict], tuple[str, ...]] = lambda params: ()

    def field_specs(self, t: PackedTensor) -> tuple[FieldSpec, ...]:
        """The fields ``t`` must have, exactly: every non-optional field plus the optional
        ones its params call for. Never raises: an invalid param picks some field set, and
        ``check`` reports the param itself."""
        chosen = set(self.optional_present(t.params if isinstance(t.params, dict) else {}))
        return tuple(f for f in self.fields if not f.optional or f.name in chosen)


# --- shared helpers -------------------------------------------------------------------------

def dense_view_2d(shape) -> tuple[int, int]:
    """(N, K') of the 2-D view of a weight of logical ``shape`` (N, *rest): K' = prod(rest).
    A Conv weight (M, C/group, kh, kw) is (M, C/group * kh * kw): one filter per row."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"a packed weight needs at least 2 dims (N, K...), got shape {shape}")
    return shape[0], math.prod(shape[1:])


def _raise(msg: str):
    raise ValueError(msg)


def _fail(t: PackedTensor, msg: str):
    raise ValueError(f"{t.layout} tensor {t.name!r}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _params(t: PackedTensor) -> dict[str, Any]:
    """The tensor's params with the layout's defaults filled in; unknown names refused."""
    spec = layout_spec(t.layout)
    if not isinstance(t.params, dict):
        _fail(t, f"params must be a dict, got {type(t.params).__name__}")
    unknown = sorted(set(t.params) - set(spec.params))
    if unknown:
        _fail(t, f"unknown params {unknown}; layout {t.layout!r} takes {sorted(spec.params) or 'none'}")
    out = dict(spec.params)
    out.update(t.params)
    return out


def _check_bool(t, p, name) -> bool:
    if not isinstance(p[name], (bool, np.bool_)):
        _fail(t, f"param {name!r} must be true or false, got {p[name]!r}")
    return bool(p[name])


def _check_quant(t, p) -> str:
    if not isinstance(p["quant"], str) or p["quant"] not in QUANT_MODES:
        _fail(t, f"param 'quant' must be one of {QUANT_MODES}, got {p['quant']!r}")
    return p["quant"]


def _check_fields(t: PackedTensor) -> None:
    """Exactly the fields the params call for, each an ndarray of an allowed dtype."""
    if not isinstance(t.fields, dict):
        _fail(t, f"fields must be a dict, got {type(t.fields).__name__}")
    wanted = {f.name: f for f in layout_spec(t.layout).field_specs(t)}
    if set(t.fields) != set(wanted):
        _fail(t, f"has fields {sorted(t.fields)}, its params need exactly {sorted(wanted)}")
    for name, arr in t.fields.items():
        if not isinstance(arr, np.ndarray):
            _fail(t, f"field {name!r} is a {type(arr).__name__}, not a numpy array")
        if str(arr.dtype) not in wanted[name].dtypes:
            _fail(t, f"field {name!r} has dtype {arr.dtype}, allowed: {', '.join(wanted[name].dtypes)}")


def _check_weight(t: PackedTensor) -> tuple[int, int]:
    """Logical dtype float32 and a shape of >= 2 positive dims; returns the 2-D view (N, K')."""
    if t.dtype != "float32":
        _fail(t, f"logical dtype must be float32, got {t.dtype!r}")
    shape = t.shape
    if not isinstance(shape, tuple) or len(shape) < 2 or not all(_is_int(d) and d >= 1 for d in shape):
        _fail(t, f"shape must have at least 2 positive dims (N, K...), got {shape!r}")
    return dense_view_2d(shape)


def _check_shape(t: PackedTensor, name: str, want: tuple[int, ...]) -> np.ndarray:
    arr = t.fields[name]
    if tuple(arr.shape) != tuple(want):
        _fail(t, f"field {name!r} has shape {tuple(arr.shape)}, expected {tuple(want)} "
                 f"for logical shape {tuple(t.shape)} and params {t.params}")
    return arr


def _check_scale(t: PackedTensor, want: tuple[int, ...]) -> None:
    scale = _check_shape(t, "scale", want)
    if scale.size and not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        bad = scale[~(np.isfinite(scale) & (scale > 0))]
        _fail(t, f"every scale must be finite and > 0; found {bad[:3].tolist()}")


def _check_range(t: PackedTensor, name: str, lo: int, hi: int, why: str = "") -> None:
    arr = t.fields[name]
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        _fail(t, f"field {name!r} has values in [{int(arr.min())}, {int(arr.max())}], "
                 f"allowed [{lo}, {hi}]{why}")


def index_dtypes(ncols: int, nnz: int) -> tuple[str, str]:
    """(indptr dtype, indices dtype) that a compressed layout with ``ncols`` (block) columns
    and ``nnz`` stored entries (blocks) must use."""
    if ncols <= UINT8_MAX_COLUMNS:
        idx = "uint8"
    elif ncols <= UINT16_MAX_COLUMNS:
        idx = "uint16"
    else:
        idx = "int32"
    return ("int32" if nnz < INT32_LIMIT else "int64", idx)


def _check_compressed(t: PackedTensor, nrows: int, ncols: int, what: str) -> None:
    """CSR structure over ``nrows`` x ``ncols`` (elements, or blocks for BSR): indptr (nrows+1,)
    starts at 0, never decreases, ends at nnz; indices (nnz,) in [0, ncols), strictly
    increasing within a row; index dtypes as ``index_dtypes`` says."""
    indptr, indices = t.fields["indptr"], t.fields["indices"]
    if ncols >= INT32_LIMIT:
        _fail(t, f"{ncols} {what} columns do not fit int32 indices")
    if indices.ndim != 1:
        _fail(t, f"field 'indices' must be 1-D, got shape {tuple(indices.shape)}")
    nnz = indices.shape[0]
    _check_shape(t, "indptr", (nrows + 1,))
    want_ptr, want_idx = index_dtypes(ncols, nnz)
    if str(indptr.dtype) != want_ptr:
        _fail(t, f"field 'indptr' must be {want_ptr} for {nnz} stored {what}s, got {indptr.dtype}")
    if str(indices.dtype) != want_idx:
        _fail(t, f"field 'indices' must be {want_idx} for {ncols} {what} columns, got {indices.dtype}")
    ptr = indptr.astype(np.int64)
    if ptr[0] != 0:
        _fail(t, f"indptr[0] must be 0, got {int(ptr[0])}")
    steps = np.diff(ptr)
    if np.any(steps < 0):
        r = int(np.argmax(steps < 0))
        _fail(t, f"indptr decreases at row {r}: indptr[{r}] = {int(ptr[r])} > indptr[{r + 1}] = {int(ptr[r + 1])}")
    if ptr[-1] != nnz:
        _fail(t, f"indptr[-1] = {int(ptr[-1])} but {nnz} {what}s are stored")
    idx = indices.astype(np.int64)
    if nnz and (idx.min() < 0 or idx.max() >= ncols):
        j = int(np.argmax((idx < 0) | (idx >= ncols)))
        _fail(t, f"indices[{j}] = {int(idx[j])} is out of range [0, {ncols})")
    if nnz > 1:
        same_row = np.ones(nnz - 1, bool)
        starts = ptr[1:-1]
        starts = starts[(starts > 0) & (starts < nnz)]
        same_row[starts - 1] = False            # entries j, j+1 straddle a row boundary
        bad = same_row & (np.diff(idx) <= 0)
        if np.any(bad):
            j = int(np.argmax(bad))
            row = int(np.searchsorted(ptr, j, side="right") - 1)
            _fail(t, f"indices of row {row} are not strictly increasing: indices[{j}] = {int(idx[j])}, "
                     f"indices[{j + 1}] = {int(idx[j + 1])}")


def _check_stored_values(t: PackedTensor, p: dict, want: tuple[int, ...], n_rows: int) -> None:
    """``values`` float32 of shape ``want`` (quant "none"), or ``qdata`` int8 of shape ``want``
    in [-127, 127] plus ``scale`` (N,) or (1,) (quant "int8")."""
    if _check_quant(t, p) == "none":
        _check_shape(t, "values", want)
        return
    per_channel = _check_bool(t, p, "per_channel")
    _check_shape(t, "qdata", want)
    _check_range(t, "qdata", *INT8_SYMMETRIC, " (sparse int8 values are symmetric)")
    _check_scale(t, (n_rows,) if per_channel else (1,))


# --- input checks of the pack functions -------------------------------------------------------

def _weight_input(name: str, w) -> np.ndarray:
    """``w`` as float32 of its logical shape; ValueError for a non-float, NaN/Inf or < 2-D."""
    a = np.asarray(w)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"weight {name!r}: expected a float array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim < 2 or 0 in a.shape:
        raise ValueError(f"weight {name!r}: a packed weight needs at least 2 non-empty dims "
                         f"(N, K...), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"weight {name!r} has {bad} NaN/Inf value(s); only finite weights can be packed")
    return a


def _mask_input(name: str, w: np.ndarray, mask) -> np.ndarray:
    """The mask as bool of w's shape (all True for None)."""
    if mask is None:
        return np.ones(w.shape, bool)
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"weight {name!r}: mask must be a bool array (True = kept), got dtype {m.dtype}")
    if m.shape != w.shape:
        raise ValueError(f"weight {name!r}: mask shape {m.shape} does not match weight shape {w.shape}")
    return m


def _div(v: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """v / scale in float64 with the float32 scale as stored (the quantizer's one division)."""
    return v.astype(np.float64) / scale.astype(np.float64)


def _scale32(num: np.ndarray, den: float) -> np.ndarray:
    """float32(num / den) computed in float64; 1 where num is 0 (an all-zero row/group)."""
    s = (num.astype(np.float64) / den).astype(np.float32)
    # a subnormal range could round to a float32 scale of 0: the smallest normal float32 is
    # used instead (those weights then quantize to 0 or +-1 step; never a division by 0)
    s = np.where(num == 0, np.float32(1), np.maximum(s, np.finfo(np.float32).tiny))
    return s.astype(np.float32)


def _given_scale(scale, size: int, axis) -> np.ndarray:
    """A scale handed to the packer (GPTQ's grid): ``size`` positive finite float32 values."""
    given = np.asarray(scale)
    if given.size != size or given.dtype != np.float32 or not (np.isfinite(given).all() and (given > 0).all()):
        raise ValueError(f"a given quantization scale must be {size} positive finite float32 value(s) "
                         f"(one per {'tensor' if axis is None else 'row/group'}); got {given.dtype} {given.shape}")
    return given


def _quant_symmetric(v: np.ndarray, axis, levels: int, qrange: tuple[int, int],
                     scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scale = max|v| / levels over ``axis`` (keepdims), q = clip(rint(v / scale), *qrange).

    ``scale`` given (GPTQ chose it, runtime/convert/gptq.py): used as is, one value per
    reduction (its size must be that of the keepdims max), so values already on that grid
    come back as exactly the same integers."""
    amax = np.max(np.abs(v), axis=axis, keepdims=True)
    if scale is None:
        scale = _scale32(amax, levels)
    else:
        scale = _given_scale(scale, amax.size, axis).reshape(amax.shape)
    q = np.clip(np.rint(_div(v, scale)), *qrange)
    return q.astype(np.int64), scale


def _quant_asymmetric(v: np.ndarray, axis, levels: int, zp_offset: int,
                      qrange: tuple[int, int], scale: np.ndarray | None = None,
                      zero_point: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """min <= 0 <= max forced; scale = (max - min) / levels;
    zp = clip(rint(zp_offset - min / scale), *qrange); q = clip(rint(v / scale) + zp, *qrange).
    A given ``scale`` and ``zero_point`` (both or neither; one per row/group) are used instead."""
    lo = np.minimum(np.min(v, axis=axis, keepdims=True), 0).astype(np.float64)
    hi = np.maximum(np.max(v, axis=axis, keepdims=True), 0).astype(np.float64)
    if (scale is None) != (zero_point is None):
        raise ValueError("an asymmetric grid is given as both scale and zero_point, or neither")
    if scale is None:
        scale = _scale32(hi - lo, levels)
        zp = np.clip(np.rint(zp_offset - lo / scale.astype(np.float64)), *qrange)
    else:
        scale = _given_scale(scale, lo.size, axis).reshape(lo.shape)
        zp = np.asarray(zero_point)
        if zp.size != lo.size or zp.dtype != np.uint8 or not ((zp >= qrange[0]) & (zp <= qrange[1])).all():
            raise ValueError(f"a given zero point must be {lo.size} uint8 value(s) in [{qrange[0]}, {qrange[1]}] "
                             f"(one per row/group); got {zp.dtype} {zp.shape}")
        zp = zp.reshape(lo.shape).astype(np.float64)
    q = np.clip(np.rint(_div(v, scale)) + zp, *qrange)
    return q.astype(np.int64), scale, zp.astype(np.int64)


def _sparse_int8(kept: np.ndarray, per_channel: bool, scale=None, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of the 2-D view with pruned entries already 0: q (N, K') on the grid
    [-qmax, qmax] and scale (N,) or (1,) over the kept values (or the given one)."""
    q, scale = _quant_symmetric(kept, 1 if per_channel else None, qmax, (-qmax, qmax), scale)
    return q, scale.reshape(-1)


# --- integer view shared by to_dense and the kernels ----------------------------------------------

@dataclass(frozen=True)
class IntWeight:
    """A quantized weight as the integer GEMM sees it (docs/CONVERTER.md, Integer GEMM).

    q:          int64 (N, K'): qw - zero_point, 0 at pruned positions
    scale:      float32 (N, G): scale of column k of row n is scale[n, k // group_size]
                (per-tensor scales are broadcast to (N, 1))
    group_size: columns per scale; K' for one scale per row (G = 1)
    """
    q: np.ndarray
    scale: np.ndarray
    group_size: int

    def dequantize(self) -> np.ndarray:
        """float32 (N, K'): float32(q) * scale, one rounding."""
        k = self.q.shape[1]
        s = np.repeat(self.scale, self.group_size, axis=1)[:, :k]
        return self.q.astype(np.float32) * s


def int_weight(t: PackedTensor) -> IntWeight:
    """The integer weight of an int8 / int4_grouped tensor, or of a sparse one with quant
    "int8". ValueError for a layout that stores floats."""
    n, k = dense_view_2d(t.shape)
    p = _params(t)
    if t.layout == "int8":
        q = t.fields["qdata"].reshape(n, k).astype(np.int64)
        if "zero_point" in t.fields:
            q = q - _per_row(t.fields["zero_point"], n).astype(np.int64)
        return IntWeight(q, _per_row(t.fields["scale"], n), k)
    if t.layout == "int4_grouped":
        g = int(p["group_size"])
        q = _unpack_nibbles(t.fields["qdata"], signed="zero_point" not in t.fields)
        if "zero_point" in t.fields:
            q = q - np.repeat(t.fields["zero_point"].astype(np.int64), g, axis=1)
        return IntWeight(q[:, :k], np.asarray(t.fields["scale"], np.float32), g)
    if t.layout in ("csr", "bsr", "nm") and p.get("quant") == "int8":
        q = _sparse_scatter(t, np.int64)
        return IntWeight(q, _per_row(t.fields["scale"], n), k)
    raise ValueError(f"{t.layout} tensor {t.name!r} stores float values, not integers")


def _per_row(a: np.ndarray, n: int) -> np.ndarray:
    """A (N,) or (1,) per-row array as (N, 1)."""
    return np.broadcast_to(np.asarray(a).reshape(-1, 1), (n, 1)).copy()


def _quantized_to_dense(t: PackedTensor) -> np.ndarray:
    return int_weight(t).dequantize().reshape(t.shape)


# --- dense --------------------------------------------------------------------------------------

def _dense_check(t: PackedTensor) -> None:
    _check_fields(t)
    data = t.fields["data"]
    if str(data.dtype) != t.dtype:
        raise ValueError(f"field 'data' has dtype {data.dtype}, the tensor says {t.dtype}")
    if tuple(data.shape) != tuple(t.shape):
        raise ValueError(f"field 'data' has shape {tuple(data.shape)}, the tensor says {tuple(t.shape)}")


def dense_tensor(name: str, array: np.ndarray) -> PackedTensor:
    """Wrap a numpy array as a ``dense`` initializer (C-contiguous copy if needed)."""
    array = np.asarray(array, order="C")  # (ascontiguousarray would turn 0-d into (1,))
    if str(array.dtype) not in DTYPES:
        raise ValueError(f"initializer {name!r}: dtype {array.dtype} is not storable; allowed: {DTYPES}")
    return PackedTensor(name, "dense", str(array.dtype), tuple(int(d) for d in array.shape), {"data": array})


def pack_dense(name: str, w, mask=None) -> PackedTensor:
    """A float32 weight stored as is (pruned positions of ``mask`` set to 0)."""
    w = _weight_input(name, w)
    w = np.where(_mask_input(name, w, mask), w, np.float32(0))
    return dense_tensor(name, w)


# --- int8 -----------------------------------------------------------------------------------------

def _asymmetric_present(p: dict) -> tuple[str, ...]:
    """int8 / int4_grouped: zero_point exists only when symmetric is false."""
    return ("zero_point",) if p.get("symmetric", True) is False else ()


def _int8_check(t: PackedTensor) -> None:
    p = _params(t)
    _check_fields(t)
    n, _ = _check_weight(t)
    per_channel, symmetric = _check_bool(t, p, "per_channel"), _check_bool(t, p, "symmetric")
    _check_shape(t, "qdata", t.shape)
    want = (n,) if per_channel else (1,)
    _check_scale(t, want)
    if symmetric:
        _check_range(t, "qdata", *INT8_SYMMETRIC, " (symmetric int8)")
    else:
        _check_shape(t, "zero_point", want)


def pack_int8(name: str, w, mask=None, *, per_channel: bool = True, symmetric: bool = True,
              scale: np.ndarray | None = None, qmax: int = 127) -> PackedTensor:
    """int8 weight of the logical shape, one scale per output channel (row of the 2-D view) or
    per tensor; pruned positions of ``mask`` are set to 0 first (0 is exact in both modes).
    ``scale`` (symmetric only): use these scales, N or 1 float32, instead of max|w| / qmax.
    ``qmax`` (symmetric only): the grid is [-qmax, qmax]; NARROW_INT8_QMAX = 63 is the
    converter's 7-bit weights (weight_bits=7), which the AVX2 kernels multiply faster, exactly.

    Fields: qdata int8 (shape), scale float32 (N,) or (1,), zero_point int8 like scale
    (asymmetric only)."""
    w = _weight_input(name, w)
    w = np.where(_mask_input(name, w, mask), w, np.float32(0))
    n, k = dense_view_2d(w.shape)
    v = w.reshape(n, k)
    axis = 1 if per_channel else None
    fields: dict[str, np.ndarray] = {}
    if not symmetric and scale is not None:
        raise ValueError(f"weight {name!r}: a given scale needs symmetric quantization")
    if not (_is_int(qmax) and 1 <= qmax <= 127) or (not symmetric and qmax != 127):
        raise ValueError(f"weight {name!r}: qmax must be an int in [1, 127] (symmetric only), got {qmax!r}")
    if symmetric:
        q, scale = _quant_symmetric(v, axis, int(qmax), (-int(qmax), int(qmax)), scale)
    else:
        q, scale, zp = _quant_asymmetric(v, axis, 255, -128, INT8_ASYMMETRIC)
    fields["qdata"] = q.astype(np.int8).reshape(w.shape)
    fields["scale"] = scale.reshape(-1).astype(np.float32)
    if not symmetric:
        fields["zero_point"] = zp.reshape(-1).astype(np.int8)
    return PackedTensor(name, "int8", "float32", w.shape, fields,
                        {"per_channel": bool(per_channel), "symmetric": bool(symmetric)})


# --- int4_grouped -------------------------------------------------------------------------------

def _int4_groups(k: int, g: int) -> int:
    return -(-k // g)


def _unpack_nibbles(qdata: np.ndarray, signed: bool) -> np.ndarray:
    """uint8 (N, Kp/2) -> int64 (N, Kp); element 2j is bits 0-3, 2j + 1 bits 4-7."""
    b = qdata.astype(np.int64)
    out = np.empty((b.shape[0], 2 * b.shape[1]), np.int64)
    out[:, 0::2] = b & 0xF
    out[:, 1::2] = b >> 4
    if signed:
        out = np.where(out >= 8, out - 16, out)   # two's complement nibble
    return out


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """int (N, Kp), Kp even, values in [-8, 15] -> uint8 (N, Kp/2), low nibble first."""
    nib = (q & 0xF).astype(np.uint8)              # & 0xF keeps a negative value's two's complement
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)


def _check_group_size(t, p) -> int:
    g = p["group_size"]
    if not _is_int(g) or g <= 0 or g % 2:
        _fail(t, f"param 'group_size' must be a positive even int, got {g!r}")
    return int(g)


def _int4_check(t: PackedTensor) -> None:
    p = _params(t)
    _check_fields(t)
    n, k = _check_weight(t)
    g = _check_group_size(t, p)
    symmetric = _check_bool(t, p, "symmetric")
    groups = _int4_groups(k, g)
    _check_shape(t, "qdata", (n, groups * g // 2))
    _check_scale(t, (n, groups))
    if not symmetric:
        _check_shape(t, "zero_point", (n, groups))
        _check_range(t, "zero_point", *INT4_ASYMMETRIC, " (a 4-bit zero point)")


def pack_int4_grouped(name: str, w, mask=None, *, group_size: int = 64, symmetric: bool = True,
                      scale: np.ndarray | None = None, zero_point: np.ndarray | None = None) -> PackedTensor:
    """4-bit weight, one scale per group of ``group_size`` consecutive k of a row of the 2-D
    view; K' is padded with zeros to a multiple of group_size. Pruned positions of ``mask``
    are set to 0 first. ``scale``: (N, groups) float32 to use instead of max|group| / 7
    (symmetric) or (max - min) / 15 (asymmetric, which then also takes ``zero_point``, (N,
    groups) uint8 in [0, 15]).

    Fields: qdata uint8 (N, ceil(K'/g)*g/2), two values per byte, element 2j in bits 0-3 and
    2j+1 in bits 4-7 (signed two's complement nibbles when symmetric, unsigned otherwise);
    scale float32 (N, ceil(K'/g)); zero_point uint8 like scale (asymmetric only)."""
    if not _is_int(group_size) or group_size <= 0 or group_size % 2:
        raise ValueError(f"weight {name!r}: group_size must be a positive even int, got {group_size!r}")
    g = int(group_size)
    w = _weight_input(name, w)
    w = np.where(_mask_input(name, w, mask), w, np.float32(0))
    n, k = dense_view_2d(w.shape)
    groups = _int4_groups(k, g)
    v = np.zeros((n, groups * g), np.float32)
    v[:, :k] = w.reshape(n, k)
    v = v.reshape(n, groups, g)
    fields: dict[str, np.ndarray] = {}
    if symmetric and zero_point is not None:
        raise ValueError(f"weight {name!r}: a zero point needs asymmetric quantization (symmetric=False)")
    try:
        if symmetric:
            q, scale = _quant_symmetric(v, 2, 7, INT4_SYMMETRIC, scale)
        else:
            q, scale, zp = _quant_asymmetric(v, 2, 15, 0, INT4_ASYMMETRIC, scale, zero_point)
    except ValueError as e:
        raise ValueError(f"weight {name!r}: {e}") from None
    fields["qdata"] = _pack_nibbles(q.reshape(n, groups * g))
    fields["scale"] = scale.reshape(n, groups).astype(np.float32)
    if not symmetric:
        fields["zero_point"] = zp.reshape(n, groups).astype(np.uint8)
    return PackedTensor(name, "int4_grouped", "float32", w.shape, fields,
                        {"group_size": g, "symmetric": bool(symmetric)})


# --- sparse: shared ---------------------------------------------------------------------------

def _sparse_present(p: dict) -> tuple[str, ...]:
    """csr / bsr / nm: values (float32), or qdata + scale when quant is "int8"."""
    return ("qdata", "scale") if p.get("quant", "none") == "int8" else ("values",)


def _stored(t: PackedTensor) -> np.ndarray:
    return t.fields["qdata"] if "qdata" in t.fields else t.fields["values"]


def sparse_entries(t: PackedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one decoding of a csr / bsr / nm tensor: every stored entry of its 2-D view (N, K')
    as (rows int64 (nnz,), cols int64 (nnz,), stored values (nnz,): qdata int8 or values
    float32), in storage order. Stored explicit zeros (bsr block entries, nm groups filled
    up) are entries too."""
    n, k = dense_view_2d(t.shape)
    stored = np.asarray(_stored(t))
    if t.layout == "csr":
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(t.fields["indptr"].astype(np.int64)))
        return rows, t.fields["indices"].astype(np.int64), stored.reshape(-1)
    if t.layout == "bsr":         # entry (block b, i, j) -> row brow[b]*R + i, column bcol[b]*C + j
        r, c = (int(v) for v in _params(t)["block_shape"])
        brow = np.repeat(np.arange(n // r, dtype=np.int64), np.diff(t.fields["indptr"].astype(np.int64)))
        rows = np.broadcast_to(brow[:, None, None] * r + np.arange(r)[None, :, None], stored.shape)
        cols = np.broadcast_to(t.fields["indices"].astype(np.int64)[:, None, None] * c + np.arange(c), stored.shape)
        return rows.reshape(-1), cols.reshape(-1), stored.reshape(-1)
    if t.layout == "nm":          # row-major, groups ascending, positions ascending in a group
        p = _params(t)
        m, per_row = int(p["m"]), k // int(p["m"]) * int(p["n"])
        cols = np.arange(k // m, dtype=np.int64)[None, :, None] * m + nm_positions(t).astype(np.int64)
        return np.repeat(np.arange(n, dtype=np.int64), per_row), cols.reshape(-1), stored.reshape(-1)
    raise ValueError(f"{t.layout} tensor {t.name!r} is not a sparse layout (csr, bsr, nm)")


def sparse_rows(t: PackedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The canonical row form of a csr / bsr / nm tensor, which the sparse kernels build on:
    (indptr int64 (N + 1,), cols int32 (nnz,) ascending within each row, stored values (nnz,)
    in that order). csr and nm are stored so already; bsr's block entries are sorted."""
    n, _ = dense_view_2d(t.shape)
    rows, cols, vals = sparse_entries(t)
    if t.layout == "bsr":
        order = np.lexsort((cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols.astype(np.int32), vals


def _sparse_scatter(t: PackedTensor, dtype) -> np.ndarray:
    """The stored values of a sparse tensor at their places in its (N, K') 2-D view."""
    rows, cols, vals = sparse_entries(t)
    out = np.zeros(dense_view_2d(t.shape), dtype)
    out[rows, cols] = vals
    return out


def _sparse_to_dense(t: PackedTensor) -> np.ndarray:
    if "qdata" in t.fields:
        return _quantized_to_dense(t)
    return _sparse_scatter(t, np.float32).reshape(t.shape)


def _sparse_params(p_quant: str, per_channel: bool) -> dict:
    return {"quant": p_quant} if p_quant == "none" else {"quant": p_quant, "per_channel": bool(per_channel)}


def _store(kept: np.ndarray, quant: str, per_channel: bool, name: str, scale=None, qmax: int = 127):
    """(stored (N, K') array of values or q, extra fields): float32 values, or int8 q on the grid
    [-qmax, qmax] + scale (qmax 63: the converter's 7-bit weights, which the AVX2 quad tiles
    multiply without the sign step)."""
    if quant not in QUANT_MODES:
        raise ValueError(f"weight {name!r}: quant must be one of {QUANT_MODES}, got {quant!r}")
    if not (_is_int(qmax) and 1 <= qmax <= 127):
        raise ValueError(f"weight {name!r}: qmax must be an int in [1, 127], got {qmax!r}")
    if quant == "none":
        if scale is not None:
            raise ValueError(f"weight {name!r}: a quantization scale was given but quant='none'")
        if qmax != 127:
            raise ValueError(f"weight {name!r}: qmax {qmax} narrows int8 values, but quant='none'")
        return kept, {}
    q, scale = _sparse_int8(kept, per_channel, scale, int(qmax))
    return q, {"scale": scale.astype(np.float32)}


# --- csr ------------------------------------------------------------------------------------------

def _csr_check(t: PackedTensor) -> None:
    p = _params(t)
    _check_fields(t)
    n, k = _check_weight(t)
    _check_quant(t, p)
    _check_compressed(t, n, k, "element")
    _check_stored_values(t, p, (t.fields["indices"].shape[0],), n)


def pack_csr(name: str, w, mask, *, quant: str = "none", per_channel: bool = True,
             scale: np.ndarray | None = None, qmax: int = 127) -> PackedTensor:
    """Compressed sparse rows of the 2-D view: every position the mask keeps is stored (an
    exact zero the mask keeps is stored too), row-major, columns ascending.

    Fields: values float32 (nnz,) [quant "none"] or qdata int8 (nnz,) + scale float32 (N,)
    or (1,) [quant "int8"]; indptr int32 (N+1,) (int64 if nnz >= 2^31); indices (nnz,)
    uint8 if K' <= 256, uint16 if K' <= 65536, else int32."""
    w = _weight_input(name, w)
    mask = _mask_input(name, w, mask)
    n, k = dense_view_2d(w.shape)
    if k >= INT32_LIMIT:
        raise ValueError(f"weight {name!r}: K' = {k} columns do not fit int32 indices")
    m2 = mask.reshape(n, k)
    kept = np.where(m2, w.reshape(n, k), np.float32(0))
    stored, extra = _store(kept, quant, per_channel, name, scale, qmax)
    rows, cols = np.nonzero(m2)                   # row-major: rows ascending, columns ascending
    nnz = rows.size
    ptr_dtype, idx_dtype = index_dtypes(k, nnz)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    value_field = "values" if quant == "none" else "qdata"
    fields = {value_field: stored[rows, cols].astype(np.float32 if quant == "none" else np.int8),
              **extra, "indptr": indptr.astype(ptr_dtype), "indices": cols.astype(idx_dtype)}
    return PackedTensor(name, "csr", "float32", w.shape, fields, _sparse_params(quant, per_channel))


# --- bsr ------------------------------------------------------------------------------------------

def _check_block_shape(t, p) -> tuple[int, int]:
    bs = p["block_shape"]
    if not isinstance(bs, (list, tuple)) or len(bs) != 2 or not all(_is_int(b) and b >= 1 for b in bs):
        _fail(t, f"param 'block_shape' must be [R, C] with positive ints, got {bs!r}")
    return int(bs[0]), int(bs[1])


def _bsr_check(t: PackedTensor) -> None:
    p = _params(t)
    _check_fields(t)
    n, k = _check_weight(t)
    _check_quant(t, p)
    r, c = _check_block_shape(t, p)
    if n % r or k % c:
        _fail(t, f"block_shape {[r, c]} does not tile the 2-D view {(n, k)} of shape {tuple(t.shape)}")
    _check_compressed(t, n // r, k // c, "block")
    _check_stored_values(t, p, (t.fields["indices"].shape[0], r, c), n)


def pack_bsr(name: str, w, mask, *, block_shape=(1, 4), quant: str = "none",
             per_channel: bool = True, scale: np.ndarray | None = None, qmax: int = 127) -> PackedTensor:
    """Block sparse rows of the 2-D view over R x C blocks: a block is stored when the mask
    keeps any of its positions (the positions it prunes are stored as explicit zeros); an
    all-pruned block is absent.

    Fields: values float32 (nb, R, C) or qdata int8 (nb, R, C) + scale float32 (N,) or (1,);
    indptr int32 (N/R+1,) (int64 if nb >= 2^31); indices (nb,) block columns, uint8 if
    K'/C <= 256, uint16 if K'/C <= 65536, else int32."""
    w = _weight_input(name, w)
    mask = _mask_input(name, w, mask)
    n, k = dense_view_2d(w.shape)
    try:
        r, c = (int(b) for b in block_shape)
        ok = len(tuple(block_shape)) == 2 and r >= 1 and c >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"weight {name!r}: block_shape must be (R, C) with positive ints, got {block_shape!r}")
    if n % r or k % c:
        raise ValueError(f"weight {name!r}: block_shape {(r, c)} does not tile the 2-D view (N, K') = "
                         f"{(n, k)} of weight shape {w.shape} (need R | N and C | K')")
    m2 = mask.reshape(n, k)
    kept = np.where(m2, w.reshape(n, k), np.float32(0))
    stored, extra = _store(kept, quant, per_channel, name, scale, qmax)
    blocks = stored.reshape(n // r, r, k // c, c)
    block_kept = m2.reshape(n // r, r, k // c, c).any(axis=(1, 3))     # (N/R, K'/C)
    brows, bcols = np.nonzero(block_kept)
    nb = brows.size
    ptr_dtype, idx_dtype = index_dtypes(k // c, nb)
    indptr = np.zeros(n // r + 1, np.int64)
    np.cumsum(np.bincount(brows, minlength=n // r), out=indptr[1:])
    value_field = "values" if quant == "none" else "qdata"
    vals = blocks[brows, :, bcols, :]                                    # (nb, R, C)
    fields = {value_field: np.ascontiguousarray(vals.astype(np.float32 if quant == "none" else np.int8)),
              **extra, "indptr": indptr.astype(ptr_dtype), "indices": bcols.astype(idx_dtype)}
    params = {"block_shape": [r, c], **_sparse_params(quant, per_channel)}
    return PackedTensor(name, "bsr", "float32", w.shape, fields, params)


# --- nm -------------------------------------------------------------------------------------------

MAX_NM_M = 256   # positions 0..m-1 fit 8-bit codes


def nm_meta_bits(m: int) -> int:
    """Bits b per position code of an n:m ``meta``: the smallest power of two >= ceil(log2(m))
    (m = 2 -> 1, 3..4 -> 2, 5..16 -> 4, 17..256 -> 8), so 8 / b codes fill a byte exactly and
    no code straddles a byte boundary."""
    need = max(1, (int(m) - 1).bit_length())     # ceil(log2(m)) for m >= 2
    b = 1
    while b < need:
        b *= 2
    return b


def _nm_meta_nbytes(count: int, bits: int) -> int:
    """Bytes per row of a meta holding ``count`` codes of ``bits`` bits: ceil(count*bits / 8)."""
    return -(-count * bits // 8)


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes (rows, count), each in [0, 2^bits), bits in (1, 2, 4, 8) -> uint8 (rows,
    ceil(count*bits/8)): per row a little-endian bit stream, code j at bits (j*bits) % 8 ..
    of byte (j*bits) // 8; the unused trailing bits of the last byte are 0."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits!r}")
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (rows, count), got shape {codes.shape}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must be in [0, {1 << bits}) to fit {bits} bits, "
                         f"got [{int(codes.min())}, {int(codes.max())}]")
    rows, count = codes.shape
    per = 8 // bits                                  # codes per byte
    nbytes = _nm_meta_nbytes(count, bits)
    padded = np.zeros((rows, nbytes * per), np.uint8)
    padded[:, :count] = codes
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(rows, nbytes, per) << shifts, axis=2).astype(np.uint8)


def _unpack_bits(meta: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of ``_pack_bits``: uint8 (rows, ceil(count*bits/8)) -> uint8 (rows, count).
    Trailing bits past code count-1 are ignored (``_nm_check`` verifies they are 0)."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits!r}")
    meta = np.asarray(meta)
    nbytes = _nm_meta_nbytes(count, bits)
    if meta.ndim != 2 or meta.shape[1] != nbytes:
        raise ValueError(f"meta of shape {meta.shape} does not hold {count} codes of {bits} bits "
                         f"per row (need (rows, {nbytes}))")
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    codes = (meta.astype(np.uint8)[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(meta.shape[0], nbytes * per)[:, :count]


def nm_positions(t: PackedTensor) -> np.ndarray:
    """The decoded ``meta`` of an nm tensor: uint8 (N, K'/m, n), the position within its group
    of each stored value (values[r, j*n + i] sits at column j*m + positions[r, j, i])."""
    rows, k = dense_view_2d(t.shape)
    p = _params(t)
    n, m = int(p["n"]), int(p["m"])
    codes = _unpack_bits(t.fields["meta"], nm_meta_bits(m), k // m * n)
    return codes.reshape(rows, k // m, n)


def _nm_check_nm(n, m, fail) -> None:
    if not (_is_int(n) and _is_int(m)) or not 1 <= n < m <= MAX_NM_M:
        fail(f"n:m must be ints with 1 <= n < m <= {MAX_NM_M}, got n={n!r}, m={m!r}")


def _nm_check(t: PackedTensor) -> None:
    p = _params(t)
    _check_fields(t)
    rows, k = _check_weight(t)
    _check_quant(t, p)
    _nm_check_nm(p["n"], p["m"], lambda msg: _fail(t, msg))
    n, m = int(p["n"]), int(p["m"])
    if k % m:
        _fail(t, f"m = {m} does not divide K' = {k} (2-D view {(rows, k)} of shape {tuple(t.shape)})")
    bits, count = nm_meta_bits(m), k // m * n
    meta = _check_shape(t, "meta", (rows, _nm_meta_nbytes(count, bits)))
    _check_stored_values(t, p, (rows, count), rows)
    used = count * bits % 8                       # bits of the last byte holding codes (0: all)
    if used and meta.size:
        pad = meta[:, -1] >> np.uint8(used)
        if np.any(pad):
            r = int(np.argmax(pad != 0))
            _fail(t, f"meta row {r}: the unused trailing bits {used}..7 of byte {meta.shape[1] - 1} "
                     f"are not 0 (byte = {int(meta[r, -1]):#04x})")
    pos = _unpack_bits(meta, bits, count).reshape(rows, k // m, n)
    if pos.size:
        if int(pos.max()) >= m:
            r, g, i = (int(v) for v in np.argwhere(pos >= m)[0])
            _fail(t, f"meta row {r}, group {g}, slot {i} holds position {int(pos[r, g, i])}, "
                     f"not a position < m = {m}")
        if n > 1:
            steps = np.diff(pos.astype(np.int16), axis=2)
            if np.any(steps <= 0):
                r, g = (int(v) for v in np.argwhere(steps <= 0)[0][:2])
                _fail(t, f"meta row {r}, group {g}: positions {pos[r, g].tolist()} are not strictly "
                         f"ascending (positions must be distinct, in order)")


def pack_nm(name: str, w, mask, *, n: int = 2, m: int = 4, quant: str = "none",
            per_channel: bool = True, scale: np.ndarray | None = None, qmax: int = 127) -> PackedTensor:
    """N:M structured sparsity along K' (the input dim of the 2-D view): in every group of m
    consecutive k exactly n values are stored with their positions. The mask must keep at
    most n of every m (mask None keeps everything, so it is refused: pass e.g. the mask of
    prune.nm_mask); a group with fewer kept positions is filled up with its lowest pruned
    positions, stored as explicit zeros.

    Fields: values float32 (N, K'/m*n) or qdata int8 (N, K'/m*n) + scale float32 (N,) or (1,);
    meta uint8 (N, ceil(K'/m*n*b/8)) with b = nm_meta_bits(m): per row the K'/m*n positions
    within their group (group by group, strictly ascending within a group) as b-bit codes in a
    little-endian bit stream (``_pack_bits``), trailing bits 0. 2:4 is 1 byte per 8 weights."""
    _nm_check_nm(n, m, lambda msg: _raise(f"weight {name!r}: {msg}"))
    w = _weight_input(name, w)
    mask = _mask_input(name, w, mask)
    rows, k = dense_view_2d(w.shape)
    if k % m:
        raise ValueError(f"weight {name!r}: m = {m} does not divide K' = {k} "
                         f"(2-D view {(rows, k)} of weight shape {w.shape})")
    m3 = mask.reshape(rows, k // m, m)
    counts = m3.sum(axis=2)
    if np.any(counts > n):
        r, g = (int(i) for i in np.argwhere(counts > n)[0])
        raise ValueError(f"weight {name!r}: the mask keeps {int(counts[r, g])} of {m} in row {r}, "
                         f"group {g} (columns {g * m}..{g * m + m - 1}); {n}:{m} allows at most {n}")
    kept = np.where(mask, w, np.float32(0)).reshape(rows, k)
    stored, extra = _store(kept, quant, per_channel, name, scale, qmax)
    # kept positions first, then the lowest pruned ones; the n chosen, ascending
    pos = np.arange(m)
    order = np.argsort(np.where(m3, pos, pos + m), axis=2, kind="stable")[:, :, :n]
    positions = np.sort(order, axis=2)
    vals = np.take_along_axis(stored.reshape(rows, k // m, m), positions, axis=2).reshape(rows, k // m * n)
    value_field = "values" if quant == "none" else "qdata"
    meta = _pack_bits(positions.reshape(rows, k // m * n).astype(np.uint8), nm_meta_bits(m))
    fields = {value_field: vals.astype(np.float32 if quant == "none" else np.int8), **extra, "meta": meta}
    params = {"n": int(n), "m": int(m), **_sparse_params(quant, per_channel)}
    return PackedTensor(name, "nm", "float32", w.shape, fields, params)


# --- the table ------------------------------------------------------------------------------------

_VALUES = FieldSpec("values", ("float32",), "kept values as float32 (quant 'none' only)", optional=True)
_QDATA_SPARSE = FieldSpec("qdata", ("int8",), "kept values as symmetric int8 in [-127, 127] "
                          "(quant 'int8' only)", optional=True)
_SCALE_SPARSE = FieldSpec("scale", ("float32",), "(N,) per output channel or (1,); finite, > 0 "
                          "(quant 'int8' only)", optional=True)


def _compressed_fields(index_doc: str) -> tuple[FieldSpec, ...]:
    return (_VALUES, _QDATA_SPARSE, _SCALE_SPARSE,
            FieldSpec("indptr", ("int32", "int64"), "row pointers; int32, int64 from 2^31 stored entries"),
            FieldSpec("indices", ("uint8", "uint16", "int32"), index_doc))


LAYOUTS: dict[str, LayoutSpec] = {
    "dense": LayoutSpec(
        name="dense",
        fields=(FieldSpec("data", DTYPES, "the tensor itself, C order"),),
        params={},
        check=_dense_check,
        to_dense=lambda t: t.fields["data"],
        doc="plain C-order array of any dtype; fp32 weights are (N, K) for Linear",
        pack=pack_dense,
    ),
    "int8": LayoutSpec(
        name="int8",
        fields=(FieldSpec("qdata", ("int8",), "the logical shape; [-127, 127] when symmetric"),
                FieldSpec("scale", ("float32",), "(N,) per output channel, or (1,); finite, > 0"),
                FieldSpec("zero_point", ("int8",), "like scale (asymmetric only)", optional=True)),
        params={"per_channel": True, "symmetric": True},
        check=_int8_check,
        to_dense=_quantized_to_dense,
        doc="dense = (qdata - zero_point) * scale per row of the 2-D view (or per tensor)",
        pack=pack_int8,
        optional_present=_asymmetric_present,
    ),
    "int4_grouped": LayoutSpec(
        name="int4_grouped",
        fields=(FieldSpec("qdata", ("uint8",), "(N, ceil(K'/g)*g/2), two nibbles a byte, low first"),
                FieldSpec("scale", ("float32",), "(N, ceil(K'/g)); finite, > 0"),
                FieldSpec("zero_point", ("uint8",), "like scale, in [0, 15] (asymmetric only)", optional=True)),
        params={"group_size": 64, "symmetric": True},
        check=_int4_check,
        to_dense=_quantized_to_dense,
        doc="dense[n, k] = (q[n, k] - zp[n, k//g]) * scale[n, k//g]; signed nibbles when symmetric",
        pack=pack_int4_grouped,
        optional_present=_asymmetric_present,
    ),
    "csr": LayoutSpec(
        name="csr",
        fields=_compressed_fields("(nnz,) columns, ascending within a row; uint8 if K' <= 256, "
                                  "uint16 if K' <= 65536, else int32 (a function of K', never a choice)"),
        params={"quant": "none", "per_channel": True},
        check=_csr_check,
        to_dense=_sparse_to_dense,
        doc="compressed sparse rows of the 2-D view (N, K')",
        pack=pack_csr,
        optional_present=_sparse_present,
    ),
    "bsr": LayoutSpec(
        name="bsr",
        fields=_compressed_fields("(nb,) block columns, ascending within a block row; "
                                  "uint8 if K'/C <= 256, uint16 if K'/C <= 65536, else int32"),
        params={"block_shape": [1, 4], "quant": "none", "per_channel": True},
        check=_bsr_check,
        to_dense=_sparse_to_dense,
        doc="compressed sparse rows of R x C blocks of the 2-D view; stored blocks (nb, R, C)",
        pack=pack_bsr,
        optional_present=_sparse_present,
    ),
    "nm": LayoutSpec(
        name="nm",
        fields=(_VALUES, _QDATA_SPARSE, _SCALE_SPARSE,
                FieldSpec("meta", ("uint8",), "(N, ceil(K'/m*n*b/8)): per row, the K'/m*n positions "
                          "(group by group, strictly ascending within a group, < m) as b-bit codes, "
                          "b = nm_meta_bits(m) in (1, 2, 4, 8), code j at bits (j*b)%8.. of byte "
                          "(j*b)//8 (little-endian bit stream); unused trailing bits 0")),
        params={"n": 2, "m": 4, "quant": "none", "per_channel": True},
        check=_nm_check,
        to_dense=_sparse_to_dense,
        doc="n of every m consecutive k of a row stored, (N, K'/m*n), with their positions bit-packed in meta",
        pack=pack_nm,
        optional_present=_sparse_present,
    ),
}


def layout_spec(name: str) -> LayoutSpec:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown layout {name!r}; known layouts: {', '.join(sorted(LAYOUTS))}") from None


def pack(layout: str, name: str, w, mask=None, **opts) -> PackedTensor:
    """Pack ``w`` into ``layout`` (``LAYOUTS[layout].pack``); the result passes ``check``."""
    spec = layout_spec(layout)
    t = spec.pack(name, w, mask, **opts)
    spec.check(t)
    return t
