"""Packed layouts (kernels/core/layouts.py) and their reference kernels (kernels/reference/packed.py).

Every expected value here is computed by plain numpy written in this file from the formulas
of docs/CONVERTER.md, never by the code under test:

* pack -> check -> to_dense equals the quantize-dequantize of the weight **exactly** on kept
  positions and 0 on pruned ones; byte counts are what the field table says;
* reference Linear / Conv for every layout and act_quant mode against a float64 numpy
  computation (quantize activations, then matmul with to_dense);
* check() refuses corrupted tensors and pack_* refuses bad input, with ValueError naming
  the problem; a packed graph survives save/load and runs the same.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from kernels.reference.conv_pool import conv_ref
from kernels.registry import fill_attrs, lookup
from kernels.core import layouts as L
from runtime.errors import QrtFormatError
from runtime.format import load, save
from runtime.graph import Graph, GraphError, Node, Value
from kernels.core.layouts import PackedTensor, dense_tensor
from runtime.session import InferenceSession

# The reference kernels and these numpy checks both compute in float64 from the same integers
# and the same float32 weights; they differ only in the order of float64 operations and in
# the final float32 rounding of Y (~6e-8 relative). 1e-6 of the sum of |terms| bounds both.
ABS_SUM_RTOL = 1e-6


# --- the contract's numerics, written out independently ------------------------------------

def _scale(span: np.ndarray, levels: int) -> np.ndarray:
    """float32(span / levels) computed in float64; 1 where the span is 0 (all-zero values)."""
    s = (np.asarray(span, np.float64) / levels).astype(np.float32)
    return np.where(span == 0, np.float32(1), s).astype(np.float32)


def qdq_symmetric(v: np.ndarray, axis, levels: int, lo: int, hi: int) -> np.ndarray:
    s = _scale(np.max(np.abs(v), axis=axis, keepdims=True), levels)
    q = np.clip(np.rint(v.astype(np.float64) / s.astype(np.float64)), lo, hi)
    return q.astype(np.float32) * s


def qdq_asymmetric(v: np.ndarray, axis, levels: int, zp_offset: int, lo: int, hi: int) -> np.ndarray:
    vmin = np.minimum(v.min(axis=axis, keepdims=True), 0).astype(np.float64)
    vmax = np.maximum(v.max(axis=axis, keepdims=True), 0).astype(np.float64)
    s = _scale(vmax - vmin, levels)
    zp = np.clip(np.rint(zp_offset - vmin / s.astype(np.float64)), lo, hi)
    q = np.clip(np.rint(v.astype(np.float64) / s.astype(np.float64)) + zp, lo, hi)
    return (q - zp).astype(np.float32) * s


def expected_dense(layout: str, w: np.ndarray, mask, opts: dict) -> np.ndarray:
    """What to_dense must return: quant-dequant of the kept weights, 0 where pruned."""
    n = w.shape[0]
    kept = np.where(np.ones(w.shape, bool) if mask is None else mask, w, np.float32(0))
    v = kept.reshape(n, -1)
    k = v.shape[1]
    if layout == "int8":
        axis = 1 if opts.get("per_channel", True) else None
        if opts.get("symmetric", True):
            out = qdq_symmetric(v, axis, 127, -127, 127)
        else:
            out = qdq_asymmetric(v, axis, 255, -128, -128, 127)
    elif layout == "int4_grouped":
        g = opts.get("group_size", 64)
        groups = -(-k // g)
        padded = np.zeros((n, groups * g), np.float32)
        padded[:, :k] = v
        padded = padded.reshape(n, groups, g)
        if opts.get("symmetric", True):
            out = qdq_symmetric(padded, 2, 7, -8, 7)
        else:
            out = qdq_asymmetric(padded, 2, 15, 0, 0, 15)
        out = out.reshape(n, groups * g)[:, :k]
    elif opts.get("quant", "none") == "int8":
        out = qdq_symmetric(v, 1 if opts.get("per_channel", True) else None, 127, -127, 127)
    else:
        out = v
    return out.reshape(w.shape)


# --- cases -------------------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def random_mask(shape, keep, seed):
    return _rng(seed).random(shape) < keep


def nm_random_mask(shape, n, m, seed, fewer=True):
    """Keep n random positions of every m along K' (some groups fewer when ``fewer``)."""
    rng = _rng(seed)
    rows, k = shape[0], math.prod(shape[1:])
    scores = rng.random((rows, k // m, m))
    rank = np.argsort(np.argsort(-scores, axis=2), axis=2)
    keep = rank < n
    if fewer:
        keep &= rng.random(keep.shape) < 0.8
    return keep.reshape(shape)


def block_random_mask(shape, block, keep, seed):
    rng = _rng(seed)
    rows, k = shape[0], math.prod(shape[1:])
    r, c = block
    blocks = rng.random((rows // r, k // c)) < keep
    m = np.repeat(np.repeat(blocks, r, axis=0), c, axis=1)
    m &= rng.random(m.shape) < 0.9          # some pruned positions inside kept blocks
    return m.reshape(shape)


def _mask(kind, shape, seed, opts):
    if kind is None:
        return None
    if kind == "all":
        return np.ones(shape, bool)
    if kind == "none":
        return np.zeros(shape, bool)
    if kind == "empty_rows":
        m = random_mask(shape, 0.5, seed)
        m[::2] = False
        return m
    if kind == "nm":
        return nm_random_mask(shape, opts.get("n", 2), opts.get("m", 4), seed)
    if kind == "block":
        return block_random_mask(shape, opts.get("block_shape", (1, 4)), 0.4, seed)
    return random_mask(shape, float(kind), seed)


# (id, layout, shape, mask kind, opts): awkward shapes, every param combination
CASES = [
    ("int8-sym-ch", "int8", (5, 7), None, {}),
    ("int8-sym-tensor-N1", "int8", (1, 3), None, {"per_channel": False}),
    ("int8-asym-ch-masked", "int8", (4, 9), 0.5, {"symmetric": False}),
    ("int8-asym-tensor", "int8", (3, 6), None, {"symmetric": False, "per_channel": False}),
    ("int8-conv", "int8", (6, 2, 3, 3), None, {}),
    ("int4-K-not-multiple", "int4_grouped", (3, 10), None, {"group_size": 4}),
    ("int4-g64", "int4_grouped", (2, 130), None, {}),
    ("int4-asym", "int4_grouped", (4, 20), None, {"group_size": 8, "symmetric": False}),
    ("int4-N1-asym-masked", "int4_grouped", (1, 12), 0.6, {"group_size": 6, "symmetric": False}),
    ("int4-conv", "int4_grouped", (4, 2, 3, 3), None, {"group_size": 8}),
    ("csr", "csr", (6, 11), 0.3, {}),
    ("csr-empty-rows", "csr", (5, 9), "empty_rows", {}),
    ("csr-dense", "csr", (3, 5), "all", {}),
    ("csr-all-pruned", "csr", (4, 6), "none", {}),
    ("csr-int8", "csr", (6, 13), 0.4, {"quant": "int8"}),
    ("csr-int8-tensor-empty-rows", "csr", (5, 9), "empty_rows", {"quant": "int8", "per_channel": False}),
    ("csr-N1", "csr", (1, 7), 0.5, {}),
    ("csr-conv", "csr", (4, 2, 3, 3), 0.3, {"quant": "int8"}),
    ("bsr", "bsr", (6, 12), "block", {"block_shape": (2, 4)}),
    ("bsr-1x4-int8", "bsr", (4, 16), "block", {"block_shape": (1, 4), "quant": "int8"}),
    ("bsr-all-pruned", "bsr", (4, 8), "none", {"block_shape": (2, 2)}),
    ("bsr-dense", "bsr", (4, 6), "all", {"block_shape": (2, 3), "quant": "int8"}),
    ("bsr-N1", "bsr", (1, 10), "block", {"block_shape": (1, 2)}),
    ("bsr-conv", "bsr", (4, 2, 3, 3), "block", {"block_shape": (2, 9), "quant": "int8", "per_channel": False}),
    ("nm-2:4", "nm", (5, 12), "nm", {}),
    ("nm-2:4-int8", "nm", (4, 16), "nm", {"quant": "int8"}),
    ("nm-1:4-all-pruned", "nm", (3, 8), "none", {"n": 1, "m": 4}),
    ("nm-4:8-N1", "nm", (1, 16), "nm", {"n": 4, "m": 8}),
    ("nm-conv", "nm", (4, 2, 2, 2), "nm", {"quant": "int8"}),
]
CASE_IDS = [c[0] for c in CASES]

PACK = {"int8": L.pack_int8, "int4_grouped": L.pack_int4_grouped, "csr": L.pack_csr,
        "bsr": L.pack_bsr, "nm": L.pack_nm}


def make_case(case, seed=0):
    _, _, shape, kind, opts = case
    w = _rng(seed + 100).standard_normal(shape).astype(np.float32)
    if kind is not None and kind not in ("all", "none"):
        w[0, 0] = 0.0 if w.ndim == 2 else w[0, 0]      # an exact zero somewhere
    mask = _mask(kind, shape, seed, opts)
    return w, mask, opts


def pack_case(case, seed=0, name="w"):
    layout = case[1]
    w, mask, opts = make_case(case, seed)
    return PACK[layout](name, w, mask, **opts), w, mask


def stores_integers(t: PackedTensor) -> bool:
    return t.layout in ("int8", "int4_grouped") or t.params.get("quant") == "int8"


def index_itemsize(ncols: int) -> int:
    """Bytes of a CSR/BSR column index for ``ncols`` (block) columns: as narrow as they allow."""
    return 1 if ncols <= 256 else 2 if ncols <= 65536 else 4


def meta_bits(m: int) -> int:
    """Bits per n:m position code: the smallest power of two >= ceil(log2(m))."""
    need = math.ceil(math.log2(m))
    return next(b for b in (1, 2, 4, 8) if b >= need)


def pack_bits_ref(codes: np.ndarray, bits: int) -> np.ndarray:
    """The meta byte stream, bit by bit: code j of a row at bits (j*bits) % 8 .. of byte
    (j*bits) // 8; trailing bits 0."""
    rows, count = codes.shape
    out = np.zeros((rows, -(-count * bits // 8)), np.uint8)
    for r in range(rows):
        for j in range(count):
            for bit in range(bits):
                if (int(codes[r, j]) >> bit) & 1:
                    pos = j * bits + bit
                    out[r, pos // 8] |= 1 << (pos % 8)
    return out


def unpack_bits_ref(meta: np.ndarray, bits: int, count: int) -> np.ndarray:
    rows = meta.shape[0]
    out = np.zeros((rows, count), np.int64)
    for r in range(rows):
        for j in range(count):
            for bit in range(bits):
                pos = j * bits + bit
                out[r, j] |= ((int(meta[r, pos // 8]) >> (pos % 8)) & 1) << bit
    return out


def nm_positions_ref(t: PackedTensor) -> np.ndarray:
    """(N, K'/m, n) positions decoded from t's meta by the bit-level reference."""
    n_rows, k = t.shape[0], math.prod(t.shape[1:])
    n, m = t.params["n"], t.params["m"]
    return unpack_bits_ref(t.fields["meta"], meta_bits(m), k // m * n).reshape(n_rows, k // m, n)


def expected_nbytes(t: PackedTensor, mask) -> int:
    """The byte count docs/CONVERTER.md's field table implies, from the mask alone."""
    n = t.shape[0]
    k = math.prod(t.shape[1:])
    p = {**L.LAYOUTS[t.layout].params, **t.params}
    scale_n = n if p.get("per_channel", True) else 1
    if t.layout == "int8":
        return n * k + scale_n * (4 if p["symmetric"] else 5)       # qdata + scale (+ zero_point)
    if t.layout == "int4_grouped":
        groups = -(-k // p["group_size"])
        return n * groups * p["group_size"] // 2 + n * groups * (4 if p["symmetric"] else 5)
    value_bytes = 4 if p["quant"] == "none" else 1
    scale_bytes = 0 if p["quant"] == "none" else 4 * scale_n
    m2 = np.ones((n, k), bool) if mask is None else mask.reshape(n, k)
    if t.layout == "csr":
        nnz = int(m2.sum())
        return nnz * value_bytes + scale_bytes + 4 * (n + 1) + nnz * index_itemsize(k)
    if t.layout == "bsr":
        r, c = p["block_shape"]
        nb = int(m2.reshape(n // r, r, k // c, c).any(axis=(1, 3)).sum())
        return nb * r * c * value_bytes + scale_bytes + 4 * (n // r + 1) + nb * index_itemsize(k // c)
    if t.layout == "nm":
        count = k // p["m"] * p["n"]                                   # stored per row
        return n * count * value_bytes + n * -(-count * meta_bits(p["m"]) // 8) + scale_bytes
    raise AssertionError(t.layout)


# --- pack / check / to_dense -----------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pack_check_to_dense_is_exact_quant_dequant(case):
    t, w, mask = pack_case(case)
    t.check()
    L.LAYOUTS[t.layout].check(t)
    dense = t.to_dense()
    assert dense.dtype == np.float32 and dense.shape == w.shape
    np.testing.assert_array_equal(dense, expected_dense(t.layout, w, mask, case[4]))
    if mask is not None:
        assert np.all(dense[~mask] == 0)
    assert t.nbytes == sum(a.nbytes for a in t.fields.values()) == expected_nbytes(t, mask)
    assert {f.name for f in L.LAYOUTS[t.layout].field_specs(t)} == set(t.fields)


def test_index_dtypes_follow_the_shape():
    rng = _rng(1)
    k = 70_000                                    # K' > 65536: int32 column indices
    w = rng.standard_normal((2, k)).astype(np.float32)
    mask = rng.random(w.shape) < 0.01
    mask[0, -1] = True                            # the last column is an index > 65535
    t = L.pack_csr("w", w, mask)
    t.check()
    assert t.fields["indices"].dtype == np.int32 and t.fields["indptr"].dtype == np.int32
    assert int(t.fields["indices"].max()) == k - 1
    np.testing.assert_array_equal(t.to_dense(), np.where(mask, w, 0))
    tb = L.pack_bsr("w", w, mask, block_shape=(2, 1))
    tb.check()
    assert tb.fields["indices"].dtype == np.int32
    np.testing.assert_array_equal(tb.to_dense(), np.where(mask, w, 0))
    # the kernels read int32 indices past 65535
    x = rng.standard_normal((2, k)).astype(np.float32)
    t8 = L.pack_csr("w", w, mask, quant="int8")
    assert t8.fields["indices"].dtype == np.int32
    for packed, mode in ((t, "none"), (tb, "none"), (t8, "dynamic")):
        y = run_linear(packed, {"act_quant": mode}, x, None)
        assert_close_to(y, quantized_activations(x, mode), packed.to_dense().astype(np.float64), None)
    # exactly 65536 columns still fit uint16 (largest index 65535)
    w2 = rng.standard_normal((1, 65536)).astype(np.float32)
    m2 = np.zeros(w2.shape, bool)
    m2[0, [0, 65535]] = True
    t2 = L.pack_csr("w", w2, m2)
    assert t2.fields["indices"].dtype == np.uint16 and t2.fields["indices"].tolist() == [0, 65535]


@pytest.mark.parametrize("ncols,want", [(1, "uint8"), (256, "uint8"), (257, "uint16"), (65536, "uint16"),
                                         (65537, "int32")])
def test_index_dtype_is_as_narrow_as_the_columns_allow(ncols, want):
    """CSR column indices over K' columns and BSR block-column indices over K'/C block
    columns: uint8 up to 256, uint16 up to 65536, else int32; check refuses any other."""
    rng = _rng(21)
    w = rng.standard_normal((2, ncols)).astype(np.float32)
    mask = np.zeros(w.shape, bool)
    mask[0, 0] = mask[0, -1] = mask[1, ncols // 2] = True       # the largest index is ncols - 1
    t = L.pack_csr("w", w, mask, quant="int8")
    t.check()
    assert str(t.fields["indices"].dtype) == want
    assert t.fields["indices"].tolist() == sorted({0, ncols - 1}) + [ncols // 2]
    np.testing.assert_array_equal(t.to_dense() != 0, mask & (w != 0))
    # BSR with C = 2: the same number of block columns
    wb = rng.standard_normal((2, 2 * ncols)).astype(np.float32)
    mb = np.zeros(wb.shape, bool)
    mb[:, -1] = mb[0, 0] = True
    tb = L.pack_bsr("w", wb, mb, block_shape=(1, 2))
    tb.check()
    assert str(tb.fields["indices"].dtype) == want
    assert int(tb.fields["indices"].max()) == ncols - 1
    np.testing.assert_array_equal(tb.to_dense(), np.where(mb, wb, 0))
    for other in ("uint8", "uint16", "int32"):
        if other != want:
            with pytest.raises(ValueError, match=f"must be {want} for {ncols} element columns"):
                corrupt(t, fields={"indices": t.fields["indices"].astype(other)}).check()
            with pytest.raises(ValueError, match=f"must be {want} for {ncols} block columns"):
                corrupt(tb, fields={"indices": tb.fields["indices"].astype(other)}).check()


@pytest.mark.parametrize("m,bits", [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (16, 4), (17, 8), (256, 8)])
def test_nm_meta_bits(m, bits):
    assert L.nm_meta_bits(m) == meta_bits(m) == bits
    assert 8 % bits == 0


@pytest.mark.parametrize("m", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("count", [1, 3, 5, 7, 8, 9, 17])
def test_bit_packing_round_trip(m, count):
    bits = meta_bits(m)
    codes = _rng(m * 100 + count).integers(0, m, (3, count)).astype(np.uint8)
    codes[0, -1] = m - 1                          # the largest position, in the last code
    packed = L._pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (3, -(-count * bits // 8))
    np.testing.assert_array_equal(packed, pack_bits_ref(codes, bits))
    unpacked = L._unpack_bits(packed, bits, count)
    assert unpacked.shape == (3, count)
    np.testing.assert_array_equal(unpacked, codes)
    np.testing.assert_array_equal(unpack_bits_ref(packed, bits, count), codes)
    used = count * bits % 8
    if used:                                      # the trailing bits of the last byte are 0
        assert np.all(packed[:, -1] >> used == 0)


@pytest.mark.parametrize("n,m,groups", [(1, 2, 3), (1, 3, 5), (2, 3, 3), (1, 4, 3), (3, 4, 3), (3, 8, 3),
                                        (5, 16, 1), (7, 16, 3), (2, 17, 2)])
def test_nm_meta_is_bit_packed_positions(n, m, groups):
    """pack_nm's meta is the bit stream of the positions chosen (odd counts leave trailing
    bits, which are 0), and to_dense puts every value at its position."""
    rng = _rng(22)
    w = rng.standard_normal((3, groups * m)).astype(np.float32)
    mask = nm_random_mask(w.shape, n, m, 5)
    for quant in ("none", "int8"):
        t = L.pack_nm("w", w, mask, n=n, m=m, quant=quant)
        t.check()
        count = groups * n
        assert t.fields["meta"].shape == (3, -(-count * meta_bits(m) // 8))
        pos = nm_positions_ref(t)
        np.testing.assert_array_equal(L.nm_positions(t), pos)
        assert np.all(pos < m) and np.all(np.diff(pos, axis=2) > 0)
        np.testing.assert_array_equal(t.fields["meta"], pack_bits_ref(pos.reshape(3, -1), meta_bits(m)))
        # every kept position is among the stored ones
        stored = np.zeros((3, groups, m), bool)
        np.put_along_axis(stored, pos, True, axis=2)
        assert np.all(stored.reshape(w.shape)[mask])
        np.testing.assert_array_equal(t.to_dense(), expected_dense("nm", w, mask, {"quant": quant}))


def test_compressed_layouts_byte_counts():
    rng = _rng(23)
    # 2:4 int8 of a (64, 128) weight: 64 kept per row (1 byte each) + 64 two-bit positions
    # per row (16 bytes) + 64 float32 scales
    w = rng.standard_normal((64, 128)).astype(np.float32)
    t = L.pack_nm("w", w, nm_random_mask(w.shape, 2, 4, 1, fewer=False), quant="int8")
    assert t.fields["qdata"].nbytes == 64 * 64 and t.fields["meta"].shape == (64, 16)
    assert t.fields["meta"].nbytes == 64 * 16 and t.fields["scale"].nbytes == 64 * 4
    assert t.nbytes == 64 * 64 + 64 * 16 + 64 * 4                   # 5376 vs 8448 dense int8
    assert t.nbytes < L.pack_int8("w", w).nbytes
    # CSR int8 at 70% sparsity of a (128, 64) weight: 1 byte value + 1 byte (uint8) column
    w = rng.standard_normal((128, 64)).astype(np.float32)
    mask = random_mask(w.shape, 0.3, 2)
    t = L.pack_csr("w", w, mask, quant="int8")
    nnz = int(mask.sum())
    assert t.fields["indices"].dtype == np.uint8
    assert t.fields["qdata"].nbytes + t.fields["indices"].nbytes == 2 * nnz
    assert t.nbytes == 2 * nnz + 4 * 129 + 4 * 128                  # + indptr + scales
    assert t.nbytes / nnz < 2.5


def test_small_layouts_are_smaller_than_fp32():
    rng = _rng(2)
    n, k = 64, 256
    w = rng.standard_normal((n, k)).astype(np.float32)
    fp32 = w.nbytes
    mask90 = rng.random(w.shape) < 0.1
    assert L.pack_int8("w", w).nbytes == n * k + 4 * n                     # ~1/4 + scales
    assert L.pack_int4_grouped("w", w, group_size=64).nbytes == n * k // 2 + 4 * n * k // 64
    for t in (L.pack_csr("w", w, mask90), L.pack_csr("w", w, mask90, quant="int8"),
              L.pack_bsr("w", w, block_random_mask(w.shape, (1, 4), 0.1, 3)),
              L.pack_nm("w", w, nm_random_mask(w.shape, 1, 8, 4, fewer=False), n=1, m=8)):
        assert t.nbytes < 0.25 * fp32, (t.layout, t.params, t.nbytes, fp32)
    two_four = L.pack_nm("w", w, nm_random_mask(w.shape, 2, 4, 5, fewer=False), quant="int8")
    assert two_four.nbytes == n * k // 2 + n * k // 8 + 4 * n             # 2:4 int8: values + meta


def test_nm_pads_groups_with_explicit_zeros_at_the_lowest_pruned_positions():
    w = np.arange(1, 9, dtype=np.float32).reshape(1, 8)
    mask = np.array([[False, False, True, False, True, False, True, False]])
    t = L.pack_nm("w", w, mask)
    # positions 0, 2 | 0, 2 as 2-bit codes, low bits first: 0b10_00_10_00
    assert t.fields["meta"].dtype == np.uint8 and t.fields["meta"].tolist() == [[0b10001000]]
    assert L.nm_positions(t).tolist() == nm_positions_ref(t).tolist() == [[[0, 2], [0, 2]]]
    assert t.fields["values"].tolist() == [[0.0, 3.0, 5.0, 7.0]]


def test_pack_via_table_and_dense_view():
    assert L.dense_view_2d((4, 2, 3, 3)) == (4, 18)
    assert L.dense_view_2d((5, 7)) == (5, 7)
    with pytest.raises(ValueError, match="at least 2 dims"):
        L.dense_view_2d((5,))
    w = _rng(3).standard_normal((4, 8)).astype(np.float32)
    for layout in L.LAYOUTS:
        mask = nm_random_mask(w.shape, 2, 4, 1) if layout == "nm" else None
        t = L.pack(layout, "w", w, mask)
        assert t.layout == layout
        np.testing.assert_array_equal(t.to_dense(), expected_dense(layout, w, mask, {}) if layout != "dense" else w)


# --- reference kernels: Linear -------------------------------------------------------------------

def act_modes(t):
    return ("none", "dynamic", "static") if stores_integers(t) else ("none",)


def quantized_activations(x2: np.ndarray, act_quant: str, act_scale=None, z=0) -> np.ndarray:
    """Rows of X as the integer GEMM sees them, dequantized: (qx - z) * s, float64."""
    x64 = x2.astype(np.float64)
    if act_quant == "none":
        return x64
    if act_quant == "dynamic":
        s = np.max(np.abs(x64), axis=1, keepdims=True) / 127
        s[s == 0] = 1
        return np.clip(np.rint(x64 / s), -127, 127) * s
    return (np.clip(np.rint(x64 / act_scale) + z, -128, 127) - z) * act_scale


def static_attrs(x):
    return {"act_quant": "static", "act_scale": float(np.max(np.abs(x))) / 120, "act_zero_point": 5}


def assert_close_to(y: np.ndarray, xq: np.ndarray, wd: np.ndarray, bias) -> None:
    """y (M, N) against xq @ wd.T + bias in float64, within ABS_SUM_RTOL of the sum of |terms|."""
    ref = xq @ wd.T + (0 if bias is None else bias.astype(np.float64))
    bound = np.abs(xq) @ np.abs(wd).T + (0 if bias is None else np.abs(bias.astype(np.float64)))
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= ABS_SUM_RTOL * bound + 1e-30), float(np.max(err - ABS_SUM_RTOL * bound))


def run_linear(t, attrs, x, bias):
    run = lookup("Linear", t.layout, "reference")(fill_attrs("Linear", attrs), {1: t})
    (y,) = run(x, t, bias)
    return y


LINEAR_CASES = [c for c in CASES if len(c[2]) == 2]


@pytest.mark.parametrize("case", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_linear_every_act_mode_matches_numpy(case):
    t, _, _ = pack_case(case)
    n, k = t.shape
    rng = _rng(7)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    x[0, 1] = 0.0                                  # an all-zero row: dynamic scale 1
    bias = rng.standard_normal(n).astype(np.float32)
    wd = t.to_dense().astype(np.float64)
    for mode in act_modes(t):
        attrs = static_attrs(x) if mode == "static" else {"act_quant": mode}
        for b in (bias, None):
            y = run_linear(t, attrs, x, b)
            assert y.dtype == np.float32 and y.shape == (2, 3, n)
            xq = quantized_activations(x.reshape(-1, k), mode, attrs.get("act_scale"), attrs.get("act_zero_point", 0))
            assert_close_to(y.reshape(-1, n), xq, wd, b)
        # M = 1, a single row
        y1 = run_linear(t, attrs, x[0, :1], bias)
        assert y1.shape == (1, n)


@pytest.mark.parametrize("layout,opts", [("int8", {}), ("int8", {"symmetric": False, "per_channel": False}),
                                         ("int4_grouped", {"group_size": 4}),
                                         ("int4_grouped", {"group_size": 6, "symmetric": False}),
                                         ("csr", {"quant": "int8"})])
def test_dynamic_integer_accumulation_is_exact(layout, opts):
    """The reference's Y equals s_x * sum_g s_w[n, g] * acc_g with acc_g accumulated in int64
    here, operation for operation: only the accumulation could differ, and it must not."""
    rng = _rng(8)
    n, k = 5, 22
    w = rng.standard_normal((n, k)).astype(np.float32)
    mask = rng.random(w.shape) < 0.5 if layout == "csr" else None
    t = PACK[layout]("w", w, mask, **opts)
    x = (rng.standard_normal((4, k)) * 3).astype(np.float32)
    y = run_linear(t, {"act_quant": "dynamic"}, x, None)
    # integer weight minus zero point, straight from the fields
    if layout == "int4_grouped":
        g = opts["group_size"]
        b = t.fields["qdata"].astype(np.int64)
        q = np.stack([b & 0xF, b >> 4], axis=2).reshape(n, -1)
        if "zero_point" in t.fields:
            q = q - np.repeat(t.fields["zero_point"].astype(np.int64), g, axis=1)
        else:
            q = np.where(q >= 8, q - 16, q)
        scale = t.fields["scale"].astype(np.float64)
    else:
        g = k
        if layout == "int8":
            q = t.fields["qdata"].astype(np.int64)
            if "zero_point" in t.fields:
                q = q - t.fields["zero_point"].astype(np.int64).reshape(-1, 1)
        else:
            q = np.zeros((n, k), np.int64)
            rows = np.repeat(np.arange(n), np.diff(t.fields["indptr"]))
            q[rows, t.fields["indices"].astype(np.int64)] = t.fields["qdata"]
        scale = np.broadcast_to(t.fields["scale"].astype(np.float64).reshape(-1, 1), (n, 1))
    groups = scale.shape[1]
    qpad = np.zeros((n, groups * g), np.int64)
    qpad[:, :k] = q[:, :k]
    x64 = x.astype(np.float64)
    s = np.max(np.abs(x64), axis=1) / 127
    qx = np.zeros((4, groups * g), np.int64)
    qx[:, :k] = np.clip(np.rint(x64 / s[:, None]), -127, 127).astype(np.int64)
    ref = np.zeros((4, n))
    for j in range(groups):
        acc = qx[:, j * g:(j + 1) * g] @ qpad[:, j * g:(j + 1) * g].T          # int64
        ref += scale[:, j] * acc.astype(np.float64)
    ref = ref * s[:, None]
    np.testing.assert_array_equal(y, ref.astype(np.float32))


def test_kernel_refuses_bad_act_quant_at_plan_time():
    w = _rng(9).standard_normal((4, 8)).astype(np.float32)
    mask = random_mask(w.shape, 0.5, 0)
    csr_float = L.pack_csr("w", w, mask)
    for mode in ("dynamic", "static"):
        with pytest.raises(ValueError, match="stores float values"):
            lookup("Linear", "csr", "reference")(fill_attrs("Linear", {"act_quant": mode, "act_scale": 0.1}),
                                                  {1: csr_float})
    t8 = L.pack_int8("w", w)
    factory = lookup("Linear", "int8", "reference")
    with pytest.raises(ValueError, match="act_scale"):
        factory(fill_attrs("Linear", {"act_quant": "static"}), {1: t8})
    with pytest.raises(ValueError, match="act_scale"):
        factory(fill_attrs("Linear", {"act_quant": "static", "act_scale": -1.0}), {1: t8})
    with pytest.raises(ValueError, match="act_zero_point"):
        factory(fill_attrs("Linear", {"act_quant": "static", "act_scale": 0.1, "act_zero_point": 200}), {1: t8})
    with pytest.raises(ValueError, match="act_quant"):
        factory(fill_attrs("Linear", {"act_quant": "fast"}), {1: t8})
    run = factory(fill_attrs("Linear", {}), {1: t8})
    with pytest.raises(ValueError, match="does not match"):
        run(np.zeros((2, 7), np.float32), t8)


# --- reference kernels: Conv ------------------------------------------------------------------

def conv_by_loops(x, wd, b, strides, pads, dilations, group, act_quant, act_scale=None, z=0):
    """Direct convolution: for each image, output position and group, quantize that patch
    (dynamic: its own scale) and dot it with the dense weight rows. float64 (N, M, oh, ow)."""
    n, _, h, wdt = x.shape
    m, cg, kh, kw = wd.shape
    (sh, sw), (dh, dw) = strides, dilations
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (wdt + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    mg = m // group
    y = np.zeros((n, m, oh, ow))
    bound = np.zeros_like(y)
    for i in range(n):
        for g in range(group):
            rows = wd[g * mg:(g + 1) * mg].reshape(mg, -1).astype(np.float64)
            for r in range(oh):
                for col in range(ow):
                    patch = xp[i, g * cg:(g + 1) * cg, r * sh:r * sh + dh * (kh - 1) + 1:dh,
                               col * sw:col * sw + dw * (kw - 1) + 1:dw].reshape(1, -1)
                    pq = quantized_activations(patch, act_quant, act_scale, z)
                    y[i, g * mg:(g + 1) * mg, r, col] = (pq @ rows.T)[0]
                    bound[i, g * mg:(g + 1) * mg, r, col] = (np.abs(pq) @ np.abs(rows).T)[0]
    if b is not None:
        y += b.reshape(1, m, 1, 1)
        bound += np.abs(b).reshape(1, m, 1, 1)
    return y, bound


CONV_CASES = [c for c in CASES if len(c[2]) == 4]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_matches_dense_conv_and_quantized_patches(case):
    t, _, _ = pack_case(case, seed=3)
    m, cg = t.shape[:2]
    rng = _rng(11)
    for group, strides, pads, dilations in [(1, (1, 1), (1, 1, 1, 1), (1, 1)),
                                            (2, (2, 1), (0, 1, 2, 0), (1, 2))]:
        x = rng.standard_normal((2, cg * group, 6, 7)).astype(np.float32)
        bias = rng.standard_normal(m).astype(np.float32)
        attrs = {"strides": list(strides), "pads": list(pads), "dilations": list(dilations), "group": group}
        wd = t.to_dense()
        for mode in act_modes(t):
            a = {**attrs, **(static_attrs(x) if mode == "static" else {"act_quant": mode})}
            run = lookup("Conv", t.layout, "reference")(fill_attrs("Conv", a), {1: t})
            (y,) = run(x, t, bias)
            assert y.dtype == np.float32
            if mode == "none":
                dense_y = conv_ref(x, wd, bias, strides=list(strides), pads=list(pads),
                                   dilations=list(dilations), group=group)
                np.testing.assert_allclose(y, dense_y, rtol=ABS_SUM_RTOL, atol=ABS_SUM_RTOL)
            ref, bound = conv_by_loops(x, wd, bias, strides, pads, dilations, group, mode,
                                       a.get("act_scale"), a.get("act_zero_point", 0))
            assert y.shape == ref.shape
            assert np.all(np.abs(y - ref) <= ABS_SUM_RTOL * bound + 1e-30), (mode, float(np.max(np.abs(y - ref))))


# --- check() refuses corrupted tensors --------------------------------------------------------

def corrupt(t: PackedTensor, **changes) -> PackedTensor:
    """A copy of t with fields replaced (None removes one) or params/dtype/shape changed."""
    fields = dict(t.fields)
    params = dict(t.params)
    for k, v in changes.pop("fields", {}).items():
        if v is None:
            fields.pop(k)
        else:
            fields[k] = v
    params.update(changes.pop("params", {}))
    return dataclasses.replace(t, fields=fields, params=params, **changes)


def _with(t, name, fn):
    a = np.array(t.fields[name])
    out = fn(a)
    return corrupt(t, fields={name: a if out is None else out})


def _set(idx, value):
    def fn(a):
        a[idx] = value
    return fn


def _csr():
    w = _rng(12).standard_normal((4, 10)).astype(np.float32)
    mask = np.zeros(w.shape, bool)
    mask[0, [1, 4, 7]] = True
    mask[2, [0, 9]] = True
    mask[3, [2, 3]] = True
    return L.pack_csr("w", w, mask)


def _csr8():
    t = _csr()
    w = _rng(12).standard_normal((4, 10)).astype(np.float32)
    return L.pack_csr("w", w, t.to_dense() != 0, quant="int8")


def _bsr():
    w = _rng(13).standard_normal((4, 8)).astype(np.float32)
    mask = np.zeros(w.shape, bool)
    mask[0:2, 0:2] = mask[0:2, 4:6] = mask[2:4, 6:8] = True
    return L.pack_bsr("w", w, mask, block_shape=(2, 2))


def _nm():
    w = _rng(14).standard_normal((3, 8)).astype(np.float32)
    return L.pack_nm("w", w, nm_random_mask(w.shape, 2, 4, 2, fewer=False), quant="int8")


def _nm13():
    """1:3 over K' = 12: 4 two-bit codes per row, one full byte (a code of 3 is not a position)."""
    w = _rng(14).standard_normal((3, 12)).astype(np.float32)
    return L.pack_nm("w", w, nm_random_mask(w.shape, 1, 3, 2, fewer=False), n=1, m=3)


def _nm23():
    w = _rng(14).standard_normal((2, 6)).astype(np.float32)
    return L.pack_nm("w", w, nm_random_mask(w.shape, 2, 3, 2, fewer=False), n=2, m=3, quant="int8")


def _nm_pad():
    """1:4 over K' = 12: 3 two-bit codes per row = 6 bits, bits 6 and 7 of the byte unused."""
    w = _rng(14).standard_normal((2, 12)).astype(np.float32)
    return L.pack_nm("w", w, nm_random_mask(w.shape, 1, 4, 2, fewer=False), n=1, m=4)


def _with_positions(t, fn):
    """t with its decoded positions (N, K'/m, n) changed by fn and re-packed bit by bit."""
    pos = nm_positions_ref(t)
    out = fn(pos)
    pos = pos if out is None else out
    return corrupt(t, fields={"meta": pack_bits_ref(pos.reshape(pos.shape[0], -1), meta_bits(t.params["m"]))})


def _int8():
    return L.pack_int8("w", _rng(15).standard_normal((3, 5)).astype(np.float32))


def _int8_asym():
    return L.pack_int8("w", _rng(15).standard_normal((3, 5)).astype(np.float32), symmetric=False)


def _int4():
    return L.pack_int4_grouped("w", _rng(16).standard_normal((2, 10)).astype(np.float32), group_size=4,
                               symmetric=False)


CORRUPTIONS = [
    ("csr indptr not monotone", _csr, lambda t: _with(t, "indptr", _set(1, 4)), "decreases"),
    ("csr indptr[0] != 0", _csr, lambda t: _with(t, "indptr", _set(0, 1)), r"indptr\[0\]"),
    ("csr indptr[-1] != nnz", _csr, lambda t: _with(t, "indptr", _set(-1, 6)), "are stored"),
    ("csr index out of range", _csr, lambda t: _with(t, "indices", _set(1, 10)), "out of range"),
    ("csr duplicate column", _csr, lambda t: _with(t, "indices", _set(1, 1)), "strictly increasing"),
    ("csr columns descending", _csr, lambda t: _with(t, "indices", _set(0, 8)), "strictly increasing"),
    ("csr indices int32 for small K", _csr, lambda t: _with(t, "indices", lambda a: a.astype(np.int32)), "uint8"),
    ("csr indices uint16 for K <= 256", _csr, lambda t: _with(t, "indices", lambda a: a.astype(np.uint16)),
     "must be uint8"),
    ("csr indptr int64 for small nnz", _csr, lambda t: _with(t, "indptr", lambda a: a.astype(np.int64)), "int32"),
    ("csr values float64", _csr, lambda t: _with(t, "values", lambda a: a.astype(np.float64)), "dtype float64"),
    ("csr indices dtype int8", _csr, lambda t: _with(t, "indices", lambda a: a.astype(np.int8)), "dtype int8"),
    ("csr values wrong length", _csr, lambda t: _with(t, "values", lambda a: a[:-1]), "shape"),
    ("csr indptr wrong length", _csr, lambda t: _with(t, "indptr", lambda a: a[:-1]), "shape"),
    ("csr missing field", _csr, lambda t: corrupt(t, fields={"indptr": None}), "fields"),
    ("csr extra scale", _csr, lambda t: corrupt(t, fields={"scale": np.ones(4, np.float32)}), "fields"),
    ("csr unknown param", _csr, lambda t: corrupt(t, params={"qaunt": "int8"}), "unknown params"),
    ("csr bad quant", _csr, lambda t: corrupt(t, params={"quant": "int7"}), "quant"),
    ("csr int8 scale zero", _csr8, lambda t: _with(t, "scale", _set(1, 0.0)), "finite and > 0"),
    ("csr int8 scale negative", _csr8, lambda t: _with(t, "scale", _set(0, -1.0)), "finite and > 0"),
    ("csr int8 scale NaN", _csr8, lambda t: _with(t, "scale", _set(2, np.nan)), "finite and > 0"),
    ("csr int8 scale inf", _csr8, lambda t: _with(t, "scale", _set(2, np.inf)), "finite and > 0"),
    ("csr int8 scale per-tensor shape", _csr8, lambda t: _with(t, "scale", lambda a: a[:1]), "shape"),
    ("csr int8 qdata -128", _csr8, lambda t: _with(t, "qdata", _set(0, -128)), "symmetric"),
    ("csr logical dtype", _csr, lambda t: corrupt(t, dtype="float16"), "float32"),
    ("csr 1-D shape", _csr, lambda t: corrupt(t, shape=(40,)), "at least 2"),
    ("bsr block does not tile", _bsr, lambda t: corrupt(t, params={"block_shape": [3, 2]}), "does not tile"),
    ("bsr bad block_shape", _bsr, lambda t: corrupt(t, params={"block_shape": [2]}), "block_shape"),
    ("bsr block column out of range", _bsr, lambda t: _with(t, "indices", _set(1, 4)), "out of range"),
    ("bsr duplicate block column", _bsr, lambda t: _with(t, "indices", _set(1, 0)), "strictly increasing"),
    ("bsr indptr not monotone", _bsr, lambda t: _with(t, "indptr", _set(1, 4)), "decreases"),
    ("bsr values wrong block", _bsr, lambda t: _with(t, "values", lambda a: a[:, :1]), "shape"),
    ("nm 1:3 position 3 >= m", _nm13, lambda t: _with_positions(t, _set((1, 2, 0), 3)), "< m = 3"),
    ("nm 2:3 position 3 >= m", _nm23, lambda t: _with_positions(t, _set((0, 1, 1), 3)), "< m = 3"),
    ("nm duplicate meta", _nm, lambda t: _with_positions(t, lambda a: np.concatenate([a[..., :1], a[..., :1]], -1)),
     "strictly ascending"),
    ("nm meta descending", _nm, lambda t: _with_positions(t, lambda a: a[..., ::-1]), "strictly ascending"),
    ("nm padding bit set", _nm_pad, lambda t: _with(t, "meta", _set((1, 0), 0x80 | int(t.fields["meta"][1, 0]))),
     "trailing bits 6..7"),
    ("nm lowest padding bit set", _nm_pad, lambda t: _with(t, "meta", _set((0, 0), 0x40 | int(t.fields["meta"][0, 0]))),
     "trailing bits"),
    ("nm meta byte too many", _nm, lambda t: _with(t, "meta", lambda a: np.concatenate([a, a[:, :1]], 1)), "shape"),
    ("nm meta unpacked (N, K'/m, n)", _nm, lambda t: _with(t, "meta", lambda a: nm_positions_ref(t).astype(np.uint8)),
     "shape"),
    ("nm meta int8", _nm, lambda t: _with(t, "meta", lambda a: a.astype(np.int8)), "dtype int8"),
    ("nm values wrong shape", _nm, lambda t: _with(t, "qdata", lambda a: a[:, :-1]), "shape"),
    ("nm m does not divide K", _nm, lambda t: corrupt(t, params={"m": 3}), "does not divide|n:m"),
    ("nm n >= m", _nm, lambda t: corrupt(t, params={"n": 4}), "n:m"),
    ("int8 scale zero", _int8, lambda t: _with(t, "scale", _set(0, 0.0)), "finite and > 0"),
    ("int8 scale NaN", _int8, lambda t: _with(t, "scale", _set(0, np.nan)), "finite and > 0"),
    ("int8 scale shape", _int8, lambda t: _with(t, "scale", lambda a: a[:2]), "shape"),
    ("int8 qdata -128 symmetric", _int8, lambda t: _with(t, "qdata", _set((0, 0), -128)), "symmetric"),
    ("int8 qdata dtype", _int8, lambda t: _with(t, "qdata", lambda a: a.astype(np.int16)), "dtype int16"),
    ("int8 qdata shape", _int8, lambda t: _with(t, "qdata", lambda a: a[:, :4]), "shape"),
    ("int8 asym missing zero_point", _int8_asym, lambda t: corrupt(t, fields={"zero_point": None}), "fields"),
    ("int8 sym with zero_point", _int8, lambda t: corrupt(t, fields={"zero_point": np.zeros(3, np.int8)}), "fields"),
    ("int8 symmetric not a bool", _int8, lambda t: corrupt(t, params={"symmetric": 1}), "symmetric"),
    ("int8 asym zero_point shape", _int8_asym, lambda t: _with(t, "zero_point", lambda a: a[:1]), "shape"),
    ("int4 odd group_size", _int4, lambda t: corrupt(t, params={"group_size": 5}), "group_size"),
    ("int4 zero group_size", _int4, lambda t: corrupt(t, params={"group_size": 0}), "group_size"),
    ("int4 zero_point 16", _int4, lambda t: _with(t, "zero_point", _set((0, 0), 16)), r"\[0, 15\]"),
    ("int4 qdata shape", _int4, lambda t: _with(t, "qdata", lambda a: a[:, :-1]), "shape"),
    ("int4 scale shape", _int4, lambda t: _with(t, "scale", lambda a: a[:, :-1]), "shape"),
    ("int4 scale inf", _int4, lambda t: _with(t, "scale", _set((1, 1), np.inf)), "finite and > 0"),
    ("int4 qdata int8", _int4, lambda t: _with(t, "qdata", lambda a: a.astype(np.int8)), "dtype int8"),
]


@pytest.mark.parametrize("what,make,mutate,match", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_check_rejects_corrupted_tensors(what, make, mutate, match):
    t = make()
    t.check()                       # the uncorrupted tensor is valid
    bad = mutate(t)
    with pytest.raises(ValueError, match=match):
        bad.check()


# --- pack refuses bad input ------------------------------------------------------------------

def test_pack_rejects_bad_inputs():
    rng = _rng(17)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"block_shape \(3, 2\) does not tile .*\(4, 8\)"):
        L.pack_bsr("w", w, None, block_shape=(3, 2))
    with pytest.raises(ValueError, match=r"does not tile"):
        L.pack_bsr("w", w, None, block_shape=(2, 3))
    with pytest.raises(ValueError, match="block_shape"):
        L.pack_bsr("w", w, None, block_shape=(0, 2))
    with pytest.raises(ValueError, match="n:m"):
        L.pack_nm("w", w, np.zeros(w.shape, bool), n=4, m=4)
    with pytest.raises(ValueError, match="n:m"):
        L.pack_nm("w", w, np.zeros(w.shape, bool), n=0, m=4)
    with pytest.raises(ValueError, match="does not divide"):
        L.pack_nm("w", w, np.zeros(w.shape, bool), n=1, m=3)
    with pytest.raises(ValueError, match=r"keeps 3 of 4 in row 0, group 1 .*at most 2"):
        m = nm_random_mask(w.shape, 2, 4, 0, fewer=False)
        m[0, 4:7] = True
        m[0, 7] = False
        L.pack_nm("w", w, m)
    with pytest.raises(ValueError, match="keeps 4 of 4"):
        L.pack_nm("w", w, None)
    for bad in (np.nan, np.inf, -np.inf):
        wb = w.copy()
        wb[1, 2] = bad
        for layout, pack in PACK.items():
            mask = nm_random_mask(w.shape, 2, 4, 0) if layout == "nm" else None
            with pytest.raises(ValueError, match="NaN/Inf"):
                pack("w", wb, mask)
    for g in (0, -2, 3, 2.0, True):
        with pytest.raises(ValueError, match="group_size"):
            L.pack_int4_grouped("w", w, group_size=g)
    for pack in PACK.values():
        with pytest.raises(ValueError, match=r"mask shape \(4, 4\) does not match weight shape \(4, 8\)"):
            pack("w", w, np.ones((4, 4), bool))
        with pytest.raises(ValueError, match="mask must be a bool"):
            pack("w", w, np.ones((4, 8), np.float32))
        with pytest.raises(ValueError, match="at least 2 non-empty dims"):
            pack("w", w[0], None)
    for layout in ("csr", "bsr", "nm"):
        with pytest.raises(ValueError, match="quant"):
            PACK[layout]("w", w, nm_random_mask(w.shape, 2, 4, 0), quant="int4")


# --- the file: save / load and sessions -------------------------------------------------------

ROUND_TRIP = [
    ("int8", {}, None, "dynamic"),
    ("int8", {"symmetric": False, "per_channel": False}, None, "static"),
    ("int8", {}, None, "none"),
    ("int4_grouped", {"group_size": 4}, None, "none"),
    ("int4_grouped", {"group_size": 6, "symmetric": False}, None, "dynamic"),
    ("csr", {}, 0.3, "none"),
    ("csr", {"quant": "int8"}, "empty_rows", "dynamic"),
    ("bsr", {"block_shape": (2, 3)}, "block", "none"),
    ("bsr", {"block_shape": (1, 6), "quant": "int8", "per_channel": False}, "block", "static"),
    ("nm", {}, "nm", "none"),
    ("nm", {"quant": "int8", "n": 1, "m": 3}, "nm", "dynamic"),
]


def linear_graph(t: PackedTensor, bias: np.ndarray, attrs: dict) -> Graph:
    n, k = t.shape
    return Graph("packed", [Value("x", "float32", ("batch", k))], [Value("y", "float32", ("batch", n))],
                 [Node("fc", "Linear", ["x", t.name, "b"], ["y"], dict(attrs))],
                 {t.name: t, "b": dense_tensor("b", bias)})


@pytest.mark.parametrize("layout,opts,kind,mode", ROUND_TRIP,
                         ids=[f"{r[0]}-{r[3]}-{'-'.join(f'{k}={v}' for k, v in r[1].items())}" for r in ROUND_TRIP])
def test_save_load_round_trip_runs_the_same(tmp_path, layout, opts, kind, mode):
    rng = _rng(18)
    w = rng.standard_normal((6, 12)).astype(np.float32)
    t = PACK[layout]("layer.weight", w, _mask(kind, w.shape, 4, opts), **opts)
    bias = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((3, 12)).astype(np.float32)
    attrs = static_attrs(x) if mode == "static" else {"act_quant": mode}
    graph = linear_graph(t, bias, attrs)
    before = InferenceSession(graph, backend="reference")
    assert [p.layout for p in before.plan] == [layout]
    (y0,) = before.run(None, {"x": x})
    path = tmp_path / "m.qrt"
    save(graph, path)
    loaded = load(path).initializers["layer.weight"]
    assert loaded.layout == layout and loaded.shape == t.shape
    assert loaded.params == {k: list(v) if isinstance(v, tuple) else v for k, v in t.params.items()}
    assert set(loaded.fields) == set(t.fields)
    for f in t.fields:
        assert loaded.fields[f].dtype == t.fields[f].dtype
        np.testing.assert_array_equal(loaded.fields[f], t.fields[f])
    np.testing.assert_array_equal(loaded.to_dense(), t.to_dense())
    (y1,) = InferenceSession(str(path), backend="reference").run(None, {"x": x})
    np.testing.assert_array_equal(y0, y1)
    assert_close_to(y0, quantized_activations(x, mode, attrs.get("act_scale"), attrs.get("act_zero_point", 0)),
                    t.to_dense().astype(np.float64), bias)


def test_conv_graph_round_trip(tmp_path):
    rng = _rng(19)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    t = L.pack_csr("conv.weight", w, random_mask(w.shape, 0.3, 1), quant="int8")
    graph = Graph("conv", [Value("x", "float32", (1, 3, 5, 5))], [Value("y", "float32", (1, 4, 5, 5))],
                  [Node("conv", "Conv", ["x", "conv.weight"], ["y"], {"pads": [1, 1, 1, 1], "act_quant": "dynamic"})],
                  {"conv.weight": t})
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    (y0,) = InferenceSession(graph, backend="reference").run(None, {"x": x})
    save(graph, tmp_path / "c.qrt")
    (y1,) = InferenceSession(str(tmp_path / "c.qrt"), backend="reference").run(None, {"x": x})
    np.testing.assert_array_equal(y0, y1)


def test_graph_and_writer_refuse_a_corrupted_packed_weight(tmp_path):
    t = _csr()
    bad = _with(t, "indices", _set(1, 10))
    graph = linear_graph(bad, np.zeros(4, np.float32), {})
    with pytest.raises(GraphError, match="out of range"):
        graph.validate()
    with pytest.raises(QrtFormatError, match="out of range"):
        save(graph, tmp_path / "bad.qrt")
    assert not (tmp_path / "bad.qrt").exists()
    missing = corrupt(_int8_asym(), fields={"zero_point": None})
    with pytest.raises(GraphError, match="zero_point"):
        linear_graph(missing, np.zeros(3, np.float32), {}).validate()


def test_random_corruption_is_refused_or_harmless():
    """Flip a value, truncate, extend or retype one field of a valid tensor, many times: check()
    either refuses it with ValueError, or the tensor unpacks and runs (a changed quantized
    value is still a valid tensor). Never another exception."""
    rng = _rng(20)
    outcomes = {"refused": 0, "valid": 0}
    for _ in range(300):
        case = CASES[rng.integers(len(CASES))]
        t, _, _ = pack_case(case)
        name = sorted(t.fields)[rng.integers(len(t.fields))]
        a = np.array(t.fields[name])
        how = rng.integers(4) if a.size else 3
        if how == 0:
            flat = a.reshape(-1)
            if a.dtype.kind == "f":
                flat[rng.integers(flat.size)] = rng.choice([0.0, -1.0, np.nan, np.inf, 3.0])
            else:
                info = np.iinfo(a.dtype)
                flat[rng.integers(flat.size)] = rng.integers(info.min, info.max, endpoint=True)
        elif how == 1:
            a = a.reshape(-1)[:-1]
        elif how == 2:
            a = a.astype(rng.choice(["int8", "uint8", "uint16", "int32", "int64", "float32", "float64"]))
        else:
            a = np.concatenate([a.reshape(-1), np.ones(1, a.dtype)])
        bad = corrupt(t, fields={name: a})
        try:
            bad.check()
        except ValueError:
            outcomes["refused"] += 1
            continue
        outcomes["valid"] += 1
        assert bad.to_dense().shape == t.shape
        if len(t.shape) == 2:
            mode = "dynamic" if stores_integers(t) else "none"
            run_linear(bad, {"act_quant": mode}, rng.standard_normal((2, t.shape[1])).astype(np.float32), None)
    assert outcomes["refused"] > 200 and outcomes["valid"] > 0, outcomes
