"""Sparse rows ordered by density at session time (runtime/row_order.py, the last pass of
runtime/fuse.py): where it applies, that it gives the unordered graph's bits on every backend,
that it leaves float readers alone, and that its count of ELL vectors is the native packer's."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import runtime
import runtime.fuse as fuse_module
from kernels import registry
from kernels.core.layouts import dense_tensor, pack_csr, pack_int8
from runtime import row_order
from runtime.fuse import fuse
from runtime.graph import Graph, Node, Value

BACKENDS = [b for b in ("reference", "numba", "native") if registry.backend_status(b) is None]


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _uneven_mask(rng, n: int, k: int) -> np.ndarray:
    """Rows keeping 5% to 60% of their weights, in random order (magnitude pruning's spread)."""
    keep = rng.uniform(0.05, 0.6, (n, 1))
    return rng.random((n, k)) < keep


def _ffn(reader: str, smooth: bool, act_quant: str = "dynamic", n: int = 96, k: int = 160, out: int = 40) -> Graph:
    """x (m, k) -> Linear(csr int8, uneven rows) -> Gelu -> [Mul by a per-column constant] ->
    Linear(reader weight) -> y (m, out)."""
    rng = _rng("ffn", reader, smooth, act_quant)
    w1 = rng.standard_normal((n, k)).astype(np.float32)
    inits = {"w1": pack_csr("w1", w1, _uneven_mask(rng, n, k), quant="int8"),
             "b1": dense_tensor("b1", rng.standard_normal(n).astype(np.float32)),
             "b2": dense_tensor("b2", rng.standard_normal(out).astype(np.float32))}
    w2 = rng.standard_normal((out, n)).astype(np.float32)
    if reader == "int8":
        inits["w2"] = pack_int8("w2", w2)
    elif reader == "csr":
        inits["w2"] = pack_csr("w2", w2, rng.random(w2.shape) < 0.3, quant="int8")
    else:
        inits["w2"] = dense_tensor("w2", w2)
    attrs = {"act_quant": act_quant} if act_quant != "none" else {}
    nodes = [Node("fc1", "Linear", ["x", "w1", "b1"], ["h"], {"act_quant": "dynamic"}),
             Node("gelu", "Gelu", ["h"], ["g"], {})]
    read = "g"
    if smooth:
        inits["s"] = dense_tensor("s", rng.uniform(0.5, 2.0, n).astype(np.float32))
        nodes.append(Node("smooth", "Mul", ["g", "s"], ["gs"], {}))
        read = "gs"
    nodes.append(Node("fc2", "Linear", [read, "w2", "b2"], ["y"], attrs))
    g = Graph("ffn", [Value("x", "float32", ("m", k))], [Value("y", "float32", ("m", out))], nodes, inits)
    g.validate()
    return g


def _run_both(g: Graph, backend: str, x: np.ndarray, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    got = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})[0]
    with monkeypatch.context() as m:
        m.setattr(fuse_module, "order_sparse_rows", lambda graph: [])
        want = runtime.InferenceSession(g, backend=backend).run(None, {"x": x})[0]
    return got, want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reader", ["int8", "csr"])
@pytest.mark.parametrize("smooth", [False, True])
def test_ordered_rows_give_the_same_bits(backend, reader, smooth, monkeypatch):
    g = _ffn(reader, smooth)
    fused = fuse(g)
    a = next(n for n in fused.nodes if n.name == "fc1")
    b = next(n for n in fused.nodes if n.name == "fc2")
    assert a.inputs[1].endswith("/rows_by_density") and a.inputs[2].endswith("/rows_by_density")
    assert b.inputs[1].endswith("/columns_by_density")
    if smooth:
        assert next(n for n in fused.nodes if n.op == "Mul").inputs[1].endswith("/rows_by_density")
    assert g.nodes[0].inputs[1] == "w1" and "w1/rows_by_density" not in g.initializers   # the caller's graph untouched
    w = fused.initializers[a.inputs[1]]
    f = g.initializers["w1"].fields
    seg = row_order.byte_segment()
    assert row_order.ell_vectors(np.asarray(w.fields["indptr"], np.int64), np.asarray(w.fields["indices"], np.int64),
                                 *w.shape, segment=seg) * row_order.MIN_GAIN <= row_order.ell_vectors(
        np.asarray(f["indptr"], np.int64), np.asarray(f["indices"], np.int64), *w.shape, segment=seg)
    for m in (1, 7, 33):
        x = _rng("x", m).standard_normal((m, g.inputs[0].shape[1])).astype(np.float32)
        got, want = _run_both(g, backend, x, monkeypatch)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["float reader", "weight-only reader", "read twice", "graph output"])
def test_left_alone_where_it_would_not_be_exact(case):
    """A reader that sums floats (fp32 weights, or int8 weights with float activations) would
    sum the permuted columns in another order: no reordering; nor when the hidden value has a
    second reader or is a graph output."""
    g = _ffn("dense" if case == "float reader" else "int8", False,
             act_quant="none" if case in ("float reader", "weight-only reader") else "dynamic")
    if case == "read twice":
        g.nodes.append(Node("extra", "Relu", ["g"], ["z"], {}))
        g.outputs.append(Value("z", "float32", ("m", 96)))
    if case == "graph output":
        g.outputs.append(Value("g", "float32", ("m", 96)))
    g.validate()
    fused = fuse(g)
    assert not any(name.endswith("_by_density") for name in fused.initializers)


def test_even_rows_are_not_reordered():
    """Rows of equal density gain nothing from sorting: under MIN_GAIN, left as stored."""
    g = _ffn("int8", False)
    g.initializers["w1"] = pack_csr("w1", _rng("even").standard_normal((96, 160)).astype(np.float32),
                                    np.tile(np.arange(160) % 4 == 0, (96, 1)), quant="int8")   # every row alike
    assert not any(name.endswith("_by_density") for name in fuse(g).initializers)


@pytest.mark.skipif(registry.backend_status("native") is not None, reason="native backend unavailable")
def test_vector_count_is_the_native_packers():
    """row_order.ell_vectors models csrc/sparse_gemm.cpp's byte-lane ELL over either segment:
    vectors x (64 index + 64 weight bytes) + the segment pointers are the packed bytes the GEMV
    path reads; byte_segment is the packer's default."""
    from kernels.native_cpu import _native
    from kernels.native_cpu.sparse import pack_sparse
    assert row_order.byte_segment() == (_native.sparse_byte_segment() or 64)   # windows (0): modelled by 64
    rng = _rng("count")
    for n, k in ((96, 160), (40, 384), (17, 1000)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        t = pack_csr("w", w, _uneven_mask(rng, n, k), quant="int8")
        f = t.fields
        for seg in (64, 128):
            packed = pack_sparse(t, lanes="byte", segment=seg)
            vectors = row_order.ell_vectors(np.asarray(f["indptr"], np.int64), np.asarray(f["indices"], np.int64), n, k,
                                            segment=seg)
            segments = (n + 15) // 16 * ((k + seg - 1) // seg)
            assert packed.kernel_nbytes == vectors * 128 + (segments + 1) * 8, (n, k, seg)
