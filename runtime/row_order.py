"""Session-time row order of sparse Linears: rows of similar density side by side, for free.

The native sparse kernels read a csr weight as ELL vectors (csrc/sparse_gemm.h): 16 output rows
at a time, each vector padded to the fullest of its 16 rows within a segment of 64 or 128
columns (``byte_segment``: the one the native packer builds on this CPU). With
magnitude pruning the rows of a weight differ a lot in how many weights they keep, so about half
of the vector lanes hold padding (MiniLM's FFN input Linears at 80%: 52% of the lanes hold a
weight). Sorting the rows by density fills them (82% there, 1.58x fewer vectors over 128-column
segments, 1.43x over 64), but then
output i is row perm[i]; scattering the outputs back cost more than it saved (RESULTS.md,
"Sorting a csr weight's rows for the ELL kernel").

Where a Linear A's output reaches exactly one Linear B as its input through element-wise steps
only, the order can instead be moved into the graph: A's rows (and bias) are permuted, the
element-wise steps see permuted columns, and B's weight columns are permuted alike, so B
computes the same sums. The pattern is a transformer FFN: Linear(activation gelu) -> [Mul by a
per-column constant, SmoothQuant's 1/s] -> Linear.

Exact: done only where B sums integers (int8 or sparse int8 weights with int8 activations,
dynamic per row or static per tensor: the row's scale, a max over the row, and the integer sum
do not depend on the order of the columns), so the model's outputs keep every bit. A float B
would sum in another order, and is left alone.

Conditions, all required: A's weight is csr with int8 values, and its row order needs at
least ``MIN_GAIN`` fewer ELL vectors sorted; every value between A and B is read by the next
step alone and is not a graph output; the steps between are Relu / Gelu, or Mul / Add with a
constant of shape (K,) (or (1, .., K)) or a scalar; B reads the value as its input X, and its
weight is dense int8 (``int8``) or csr int8 with ``act_quant`` dynamic or static.
"""
from __future__ import annotations

import numpy as np

from kernels import registry
from kernels.core.layouts import PackedTensor, dense_tensor, index_dtypes

from .graph import Graph, Node, unique_name

# ELL geometry of csrc/sparse_gemm.h: rows per block, columns per segment (the most; byte lanes
# may use 64, byte_segment), weights per lane
BLOCK_ROWS, SEGMENT, PER_LANE = 16, 128, 4
MIN_GAIN = 1.10          # sorted vectors at most 1 / MIN_GAIN of the stored order's
ELEMENTWISE = ("Relu", "Gelu")
CONST_ELEMENTWISE = ("Mul", "Add")
EXACT_ACT_QUANT = ("dynamic", "static")


def byte_segment() -> int:
    """Columns per segment of the byte-lane ELL the native packer builds now
    (``_native.sparse_byte_segment``: 64, or sliding 64-column windows, modelled here as
    64-column segments: a window, like a segment, costs as many vectors as its fullest row
    needs, so rows of like density side by side fill both); 128 where the native backend is
    unavailable (no backend reads ELL then, and the order changes no result either way). The
    packer may still take windows for a very sparse weight (csrc/sparse_gemm.cpp); the order
    stays exact."""
    if registry.backend_status("native") is not None:
        return SEGMENT
    return registry.backend_module("native").ell_byte_segment() or 64


def ell_vectors(indptr: np.ndarray, indices: np.ndarray, n: int, k: int, order: np.ndarray | None = None,
                segment: int = SEGMENT) -> int:
    """ELL vectors (csrc/sparse_gemm.cpp, ell_build, byte lanes over ``segment`` columns) of a
    csr structure (N, K) with its rows in ``order`` (None: as stored)."""
    counts = segment_counts(indptr, indices, n, k, segment)
    return _vectors(counts if order is None else counts[order])


def _vectors(counts: np.ndarray) -> int:
    """ELL vectors of rows with these (N, segments) counts, in this order: per block of 16 rows
    and segment, its fullest row's count over 4, rounded up."""
    pad = (-counts.shape[0]) % BLOCK_ROWS
    blocks = np.vstack([counts, np.zeros((pad, counts.shape[1]), np.int64)]).reshape(-1, BLOCK_ROWS, counts.shape[1])
    return int(np.ceil(blocks.max(axis=1) / PER_LANE).sum())


def density_order(counts: np.ndarray, segment: int = SEGMENT) -> np.ndarray:
    """The new row order of rows with these (N, segments) counts (segment_counts): rows sorted
    by their fullest segment, then by their count (stable),
    so that rows needing as many vectors share a block of 16; then the blocks dealt over the
    reader's ``segment``-column segments (block j to segment j mod S) instead of laid out densest last:
    the reader's columns are these rows, and sorted they would crowd its last segments with
    weights (measured on MiniLM: +0.3-5% vectors for the reader sorted, -0.1-+0.6% dealt). A
    block's position does not change its own vectors."""
    n = counts.shape[0]
    order = np.lexsort((counts.sum(axis=1), counts.max(axis=1)))
    full = n // BLOCK_ROWS
    blocks = order[:full * BLOCK_ROWS].reshape(full, BLOCK_ROWS)
    segments = max(1, -(-n // segment))
    dealt = [blocks[j] for s in range(segments) for j in range(s, full, segments)]
    return np.concatenate(dealt + [order[full * BLOCK_ROWS:]])


def order_sparse_rows(graph: Graph) -> list[str]:
    """Permute the rows of every Linear A of the pattern above (in place on ``graph``, a
    session's fused copy: new initializers, the old ones untouched); returns the names of the
    Linears whose rows were permuted."""
    readers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    taken: set[str] = set()
    done = []
    segment = byte_segment()
    for a in list(graph.nodes):
        chain = _pattern(graph, a, readers, outputs)
        if chain is None or a.name in taken:
            continue
        steps, b = chain
        w = graph.initializers[a.inputs[1]]
        n, k = w.shape
        counts = segment_counts(np.asarray(w.fields["indptr"], np.int64), np.asarray(w.fields["indices"], np.int64), n, k,
                                segment)
        order = density_order(counts, segment)
        if _vectors(counts[order]) * MIN_GAIN > _vectors(counts):
            continue
        names = set(graph.initializers) | {o for node in graph.nodes for o in node.outputs}
        a.inputs = list(a.inputs)
        a.inputs[1] = _add(graph, names, _csr_rows(w, order, unique_name(w.name + "/rows_by_density", names)))
        if len(a.inputs) > 2 and a.inputs[2]:
            bias = graph.initializers[a.inputs[2]]
            a.inputs[2] = _add(graph, names, dense_tensor(unique_name(bias.name + "/rows_by_density", names),
                                                          np.asarray(bias.fields["data"]).reshape(-1)[order]))
        for step in steps:
            if step.op in CONST_ELEMENTWISE:
                i = _const_input(graph, step)
                c = graph.initializers[step.inputs[i]]
                data = np.asarray(c.fields["data"])
                if data.size > 1:
                    step.inputs = list(step.inputs)
                    step.inputs[i] = _add(graph, names, dense_tensor(
                        unique_name(c.name + "/rows_by_density", names), data[..., order]))
        wb = graph.initializers[b.inputs[1]]
        b.inputs = list(b.inputs)
        b.inputs[1] = _add(graph, names, _columns(wb, order, unique_name(wb.name + "/columns_by_density", names)))
        taken.update((a.name, b.name))
        done.append(a.name)
    return done


# --- the pattern -----------------------------------------------------------------------------

def _pattern(graph: Graph, a: Node, readers: dict, outputs: set) -> tuple[list[Node], Node] | None:
    """(element-wise steps, B) when ``a`` starts the pattern of the module docstring."""
    if a.op != "Linear" or len(a.inputs) < 2 or a.inputs[1] not in graph.initializers:
        return None
    w = graph.initializers[a.inputs[1]]
    if w.layout != "csr" or w.params.get("quant") != "int8" or len(w.shape) != 2:
        return None
    if len(a.inputs) > 2 and a.inputs[2] and _dense_const(graph, a.inputs[2]) is None:
        return None
    n = w.shape[0]
    steps: list[Node] = []
    value = a.outputs[0]
    while True:
        rd = readers.get(value, [])
        if len(rd) != 1 or value in outputs:
            return None
        node = rd[0]
        if node.op == "Linear":
            return (steps, node) if node.inputs[0] == value and _exact_reader(graph, node, n) else None
        if node.op in ELEMENTWISE and len(node.inputs) == 1:
            pass
        elif node.op in CONST_ELEMENTWISE and len(node.inputs) == 2:
            i = _const_input(graph, node)
            if i is None or node.inputs[1 - i] != value:
                return None
            c = _dense_const(graph, node.inputs[i])
            if c is None or not (c.size == 1 or (c.shape[-1] == n and c.size == n)):
                return None
        else:
            return None
        steps.append(node)
        value = node.outputs[0]


def _exact_reader(graph: Graph, b: Node, k: int) -> bool:
    if len(b.inputs) < 2 or b.inputs[1] not in graph.initializers:
        return False
    w = graph.initializers[b.inputs[1]]
    if len(w.shape) != 2 or w.shape[1] != k or b.attrs.get("act_quant") not in EXACT_ACT_QUANT:
        return False
    return w.layout == "int8" or (w.layout == "csr" and w.params.get("quant") == "int8")


def _const_input(graph: Graph, node: Node) -> int | None:
    for i, name in enumerate(node.inputs):
        if _dense_const(graph, name) is not None:
            return i
    return None


def _dense_const(graph: Graph, name: str) -> np.ndarray | None:
    t = graph.initializers.get(name)
    return None if t is None or t.layout != "dense" else np.asarray(t.fields["data"])


# --- permuted tensors -------------------------------------------------------------------------

def segment_counts(indptr: np.ndarray, indices: np.ndarray, n: int, k: int, segment: int = SEGMENT) -> np.ndarray:
    """(N, ceil(K / segment)) stored weights of each row in each segment."""
    counts = np.zeros((n, (k + segment - 1) // segment), np.int64)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    np.add.at(counts, (rows, np.asarray(indices, np.int64) // segment), 1)
    return counts


def _csr_rows(w: PackedTensor, order: np.ndarray, name: str) -> PackedTensor:
    """csr int8 weight with row i = row order[i] of ``w``."""
    indptr = np.asarray(w.fields["indptr"], np.int64)
    lengths = np.diff(indptr)[order]
    take = np.concatenate([np.arange(indptr[r], indptr[r + 1]) for r in order]) if len(order) else np.zeros(0, np.int64)
    new_ptr = np.concatenate([[0], np.cumsum(lengths)])
    fields = {"indptr": new_ptr.astype(np.asarray(w.fields["indptr"]).dtype),
              "indices": np.asarray(w.fields["indices"])[take],
              "qdata": np.asarray(w.fields["qdata"])[take]}
    scale = np.asarray(w.fields["scale"]).reshape(-1)
    fields["scale"] = scale[order] if scale.size > 1 else scale.copy()
    t = PackedTensor(name, "csr", w.dtype, tuple(w.shape), fields, dict(w.params))
    t.check()
    return t


def _columns(w: PackedTensor, order: np.ndarray, name: str) -> PackedTensor:
    """``w`` (N, K) with column j = column order[j] (int8 dense or csr int8)."""
    if w.layout == "int8":
        fields = dict(w.fields)
        fields["qdata"] = np.ascontiguousarray(np.asarray(w.fields["qdata"])[:, order])
    else:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        indptr = np.asarray(w.fields["indptr"], np.int64)
        rows = np.repeat(np.arange(w.shape[0]), np.diff(indptr))
        cols = inverse[np.asarray(w.fields["indices"], np.int64)]
        sort = np.lexsort((cols, rows))                      # columns increasing within each row
        _, idx_dtype = index_dtypes(w.shape[1], int(indptr[-1]))
        fields = dict(w.fields)
        fields["indices"] = cols[sort].astype(idx_dtype)
        fields["qdata"] = np.asarray(w.fields["qdata"])[sort]
    t = PackedTensor(name, w.layout, w.dtype, tuple(w.shape), fields, dict(w.params))
    t.check()
    return t


def _add(graph: Graph, names: set, t: PackedTensor) -> str:
    graph.initializers[t.name] = t
    names.add(t.name)
    return t.name
