"""Session-time fusion: rewrite op patterns into the fused ops of kernels/core/ops.py.

Done when a session plans (InferenceSession(..., fuse=True), the default), on a copy of the
graph, so a .qrt file keeps the ONNX-shaped graph the converter wrote (what `qrt inspect`
shows), every session of any file gets the fusions, and fuse=False runs the graph as stored.
Each rewrite replaces nodes by one node computing the same math (the fused op's reference
says so, up to float32 rounding between the replaced nodes), and only where every
intermediate value is read by the next node of the pattern alone and is not a graph output.

Patterns (in this order):
  * attention: per head softmax(scale * Q K^T + mask) V written out as
      Reshape(q, [0, 0, -1|H, D]) -> Transpose(0, 2, 1, 3)           (Q heads; K likewise with
      Transpose(0, 2, 3, 1), V with (0, 2, 1, 3)) -> MatMul(Qh, Kt) -> [Mul|Div by a scalar
      constant] -> [Add mask] -> Softmax(axis -1) -> MatMul(., Vh) -> Transpose(0, 2, 1, 3)
      -> Reshape([0, 0, -1|H*Dv])
    (what torch.onnx exports for BERT-style self attention), optionally with the scale applied
    as a scalar Mul on the Q and K heads, becomes Attention(q, k, v[, mask]). Two additive
    terms (MPNet: scores + relative position bias + mask) become one mask, bias + mask, summed
    by an Add node before the Attention node (float32 rounding of the sum may differ). transformers'
    default sdpa attention exports the same with Softmax -> Where(IsNaN(p), 0, p) (fused with
    nan_to_zero=1: a row of -inf scores gives zeros, not NaN), a no-op Reshape [0, -1, 0, Dv]
    after P V (TorchScript), K^T as Transpose(0, 2, 1, 3) then a swap of the last two axes
    (dynamo; runtime/shape_fold.py turns its 3-D Reshape / Transpose / Reshape into that
    Transpose), and a merging Reshape to a run-time shape with allowzero=1 (dynamo: kept after
    the Attention node, which gives the same elements in the same order). GPT-2 exports the
    same once imported (runtime/onnx_import.py drops its cache's one-input Concat,
    runtime/shape_fold.py folds its head shapes through the Split): its causal mask is the
    additive mask;
  * Add -> LayerNormalization over the last axis becomes SkipLayerNormalization;
  * Linear or Conv -> Relu / Gelu becomes the Linear/Conv with activation "relu" / "gelu" /
    "gelu_tanh", Conv -> HardSwish the Conv with "hard_swish", and a Conv whose output y is
    read by a Sigmoid and a Mul of y by it (SiLU as exported: EfficientNet) the Conv with "silu"
    (the kernel applies it in its epilogue, or kernels.registry.build after it; the GPU backends,
    which have no Conv, have neither after a Linear);
    Linear -> Reshape -> Relu / Gelu (GPT-2's Conv1D) becomes that Linear -> the Reshape;
    Add -> Relu (ResNet's residual blocks) becomes the Add with activation "relu" (one pass
    over the sum on the native backend; the Relu op after the Add elsewhere: kernels.registry.build);
  * ReduceMean over H and W with keepdims of a 2-D Conv's output (MobileNetV3's squeeze-excite
    mean after the depthwise Conv, whose output the block's Mul reads too) becomes
    the Conv's second output, its "channel_mean": the native depthwise kernel sums each plane
    while it is in L1 (the ReduceMean pass read the planes back from L2 or memory), elsewhere the
    ReduceMean kernel runs after the Conv (kernels.registry.build): the same bits. The one
    pattern whose intermediate has other readers: the Conv's output stays a value of its own;
  * Linears that read the same input with the same attributes and a dense, int8, csr or N:M
    weight (attention's Q, K and V projections) become one Linear over the concatenated weight and a
    Split of its output along the last axis: the input is quantized once and the GEMM is
    wider (N = 3 x 384 runs at a higher share of the peak than three N = 384). Exact: every
    output column is computed as before (per-row activation quantization does not depend on
    N; int8 scales and zero points are per output channel once concatenated);
  * last, a csr int8 Linear whose output reaches one integer Linear through element-wise steps
    only (a transformer FFN) gets its rows sorted by density and the reader's columns permuted
    alike (runtime/row_order.py): fuller vectors for the sparse kernels, the same bits.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np

from kernels.core.layouts import PackedTensor, dense_tensor, index_dtypes

from .row_order import order_sparse_rows
from .graph import Graph, Node, unique_name


class _View:
    """Who produces and who reads each value, and constant lookups, for one pass."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = graph.producers()
        self.readers = graph.consumers()
        self.outputs = {v.name for v in graph.outputs}
        self.shared: dict = {}     # values a rewrite made for the pass, for later matches to reuse

    def only_reader(self, value: str, op: str | None = None) -> Node | None:
        """The single node reading ``value`` (of op ``op``), if the value is an intermediate
        that node alone reads; else None."""
        readers = self.readers.get(value, [])
        if len(readers) != 1 or value in self.outputs or value in self.graph.initializers:
            return None
        node = readers[0]
        return node if op is None or node.op == op else None

    def made(self, value: str, op: str) -> Node | None:
        """The node of op ``op`` producing ``value``, however many read it; else None."""
        node = self.producer.get(value)
        return node if node is not None and node.op == op else None

    def made_by(self, value: str, op: str) -> Node | None:
        """The node of op ``op`` producing ``value`` when ``value`` is read only once."""
        node = self.producer.get(value)
        if node is None or node.op != op or len(self.readers.get(value, [])) != 1 or value in self.outputs:
            return None
        return node

    def const(self, name: str) -> np.ndarray | None:
        t = self.graph.initializers.get(name)
        return None if t is None or t.layout != "dense" else np.asarray(t.fields["data"])

    def scalar(self, name: str) -> float | None:
        c = self.const(name)
        return float(c.reshape(())) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def fuse(graph: Graph) -> Graph:
    """A copy of ``graph`` with the module's patterns fused (initializers shared, not copied)."""
    g = Graph(graph.name, list(graph.inputs), list(graph.outputs), [copy.copy(n) for n in graph.nodes],
              dict(graph.initializers), dict(graph.metadata))
    for n in g.nodes:
        n.attrs = dict(n.attrs)
    for rewrite in (_fuse_attention, _fuse_disentangled_attention, _fuse_skip_layer_norm, _fuse_activation,
                    _fuse_channel_mean):
        _apply(g, rewrite)
    g.topological_sort()      # a Conv with its mean sits where the ReduceMean was: its other readers may precede
    _drop_unread(g)
    _merge_sibling_linears(g)
    order_sparse_rows(g)
    g.validate()
    return g


def _apply(graph: Graph, rewrite: Callable[[_View, Node], tuple[list[Node], Node | list[Node]] | None]) -> None:
    """Run ``rewrite`` on every node; a match (nodes to drop, new node or nodes in order) puts
    the new nodes at the place of the last dropped node (after every producer of the
    pattern's inputs)."""
    view = _View(graph)
    replaced: dict[int, Node | list[Node] | None] = {}
    for node in list(graph.nodes):
        if id(node) in replaced:
            continue
        match = rewrite(view, node)
        if match is None:
            continue
        drop, new = match
        if any(id(n) in replaced for n in drop):
            continue
        last = max(drop, key=graph.nodes.index)
        for n in drop:
            replaced[id(n)] = None
        replaced[id(last)] = new
    if replaced:
        nodes: list[Node] = []
        for n in graph.nodes:
            new = replaced.get(id(n), n)
            nodes.extend(new if isinstance(new, list) else [] if new is None else [new])
        graph.nodes = nodes


# --- attention -------------------------------------------------------------------------------

def _heads(view: _View, value: str, perm: list[int]) -> tuple[str, int, float, list[Node]] | None:
    """``value`` = Transpose(perm)(Reshape(x, [0, 0, H|-1, D])), optionally times a scalar
    constant after the Transpose: (x, D or -1 when only H is known..., scale, nodes)."""
    nodes: list[Node] = []
    scale = 1.0
    mul = view.made_by(value, "Mul")
    if mul is not None:
        for a, b in (mul.inputs, mul.inputs[::-1]):
            c = view.scalar(b)
            if c is not None:
                scale, value = c, a
                nodes.append(mul)
                break
        else:
            return None
    # the heads' Transpose, possibly written as several (the dynamo export's K^T is
    # Transpose(0, 2, 1, 3) then a swap of the last two axes): their composition must be perm
    tr = view.made_by(value, "Transpose")
    if tr is None:
        return None
    got = list(tr.attrs.get("perm") or [])
    nodes.append(tr)
    while (inner := view.made_by(tr.inputs[0], "Transpose")) is not None and len(got) == 4:
        p1 = list(inner.attrs.get("perm") or [])
        if len(p1) != 4:
            return None
        got = [p1[j] for j in got]          # transpose(transpose(x, p1), p2) = transpose(x, p1[p2])
        tr = inner
        nodes.append(tr)
    if got != perm:
        return None
    rs = view.made_by(tr.inputs[0], "Reshape")
    if rs is None or rs.attrs.get("allowzero", 0):
        return None
    shape = view.const(rs.inputs[1])
    if shape is None or shape.shape != (4,) or shape[0] != 0 or shape[1] != 0 or shape[3] <= 0:
        return None
    return rs.inputs[0], int(shape[3]), scale, nodes + [rs]


def _probs_reader(view: _View, sm: Node) -> tuple[Node, list[Node], int] | None:
    """The MatMul reading Softmax ``sm``'s probabilities: directly (eager export), or through
    sdpa's Where(IsNaN(p), 0, p) (then nan_to_zero = 1); with the nodes between."""
    p = sm.outputs[0]
    pv = view.only_reader(p, "MatMul")
    if pv is not None:
        return (pv, [], 0) if pv.inputs[0] == p else None
    readers = view.readers.get(p, [])
    if len(readers) != 2 or p in view.outputs:
        return None
    isnan = next((r for r in readers if r.op == "IsNaN"), None)
    where = next((r for r in readers if r.op == "Where"), None)
    if isnan is None or where is None or view.only_reader(isnan.outputs[0], "Where") is not where:
        return None
    if where.inputs[0] != isnan.outputs[0] or where.inputs[2] != p or view.scalar(where.inputs[1]) != 0.0:
        return None
    pv = view.only_reader(where.outputs[0], "MatMul")
    if pv is None or pv.inputs[0] != where.outputs[0]:
        return None
    return pv, [isnan, where], 1


def _fuse_attention(view: _View, sm: Node):
    if sm.op != "Softmax" or sm.attrs.get("axis", -1) not in (-1, 3):
        return None
    found = _probs_reader(view, sm)
    if found is None:
        return None
    pv, between, nan_to_zero = found
    # the TorchScript sdpa export reshapes P V to [0, -1, 0, Dv] (itself: checked below)
    # before merging the heads
    heads_out = pv.outputs[0]
    noop = view.only_reader(heads_out, "Reshape")
    noop_shape = None if noop is None else view.const(noop.inputs[1])
    if noop_shape is not None and noop_shape.shape == (4,) and list(noop_shape[:3]) == [0, -1, 0]:
        heads_out = noop.outputs[0]
    else:
        noop = None
    tr_out = view.only_reader(heads_out, "Transpose")
    if tr_out is None or list(tr_out.attrs.get("perm") or []) != [0, 2, 1, 3]:
        return None
    rs_out = view.only_reader(tr_out.outputs[0], "Reshape")
    if rs_out is None:
        return None
    # the merge of the heads: dropped when it is [0, 0, -1|H*Dv]; any other Reshape whose
    # result does not depend on the input's rank (no 0 that copies a dim) is kept, reading
    # the fused (B, Sq, H*Dv), whose elements are in the order of (B, Sq, H, Dv)
    shape = view.const(rs_out.inputs[1])
    zero_copies = not rs_out.attrs.get("allowzero", 0)
    merge = (shape is not None and shape.shape == (3,) and shape[0] == 0 and shape[1] == 0 and zero_copies
             and (shape[2] == -1 or shape[2] > 0))
    if not merge and zero_copies and (shape is None or bool((shape == 0).any())):
        return None
    nodes = [sm, *between, pv, tr_out, rs_out] + ([noop] if noop is not None else [])
    scores, mask, scale, before = sm.inputs[0], "", 1.0, []
    if view.made_by(scores, "Add") is not None:
        found = _plus_terms(view, scores, MAX_SCORE_TERMS)
        if found is None:
            return None
        scores, terms, adds = found
        nodes += adds
        mask = terms[0]
        for t in terms[1:]:
            # scores + bias + mask (MPNet: a relative position bias, then the padding mask) as
            # scores + (bias + mask): one additive mask, summed by an Add node before Attention
            mask_sum = Node(_unique(view.graph, f"{adds[0].name}_mask"), "Add", [mask, t],
                            [_unique(view.graph, f"{adds[0].name}_mask_output")], {})
            before.append(mask_sum)
            mask = mask_sum.outputs[0]
    if view.made_by(scores, "Mul") is not None or view.made_by(scores, "Div") is not None:
        found = _scaled_by(view, scores)      # Mul's constant may come first
        if found is None or not found[1]:
            return None
        scores, c, sc = found
        scale *= c
        nodes.append(sc)
    qk = view.made_by(scores, "MatMul")
    if qk is None:
        return None
    q = _heads(view, qk.inputs[0], [0, 2, 1, 3])
    k = _heads(view, qk.inputs[1], [0, 2, 3, 1])
    v = _heads(view, pv.inputs[1], [0, 2, 1, 3])
    # One head size for Q, K and V (what BERT-style models have), so V's heads are the same
    # H as Q's whatever the widths; an unscaled V; the output merges heads back: [0, 0, -1|H*D].
    if q is None or k is None or v is None or not q[1] == k[1] == v[1] or v[2] != 1.0:
        return None
    if noop is not None and noop_shape[3] != v[1]:
        return None
    scale *= q[2] * k[2]
    nodes += [qk, *q[3], *k[3], *v[3]]
    inputs = [q[0], k[0], v[0]] + ([mask] if mask else [])
    name = sm.name.rsplit("/", 1)[0] + "/Attention" if "/" in sm.name else f"{sm.name}_attention"
    attrs = {"head_dim": q[1], "scale": scale, **({"nan_to_zero": 1} if nan_to_zero else {})}
    if merge:
        return nodes, before + [Node(name, "Attention", inputs, list(rs_out.outputs), attrs)]
    y = _unique(view.graph, f"{name}_output")
    return nodes, before + [Node(name, "Attention", inputs, [y], attrs),
                            Node(rs_out.name, "Reshape", [y, rs_out.inputs[1]], list(rs_out.outputs),
                                 dict(rs_out.attrs))]


MAX_SCORE_TERMS = 2     # additive terms after the scaled scores: a mask, or a bias and a mask


def _plus_terms(view: _View, value: str, depth: int) -> tuple[str, list[str], list[Node]] | None:
    """``value`` = s + t1 [+ t2 ...] written as a chain of at most ``depth`` Adds, each read
    once, s made by Mul / Div / MatMul (the scaled scores): (s, [t1, ...], the Adds)."""
    add = view.made_by(value, "Add")
    if add is None or depth < 1:
        return None
    for a, b in (add.inputs, add.inputs[::-1]):
        p = view.producer.get(a)
        if p is not None and p.op in ("Mul", "Div", "MatMul"):
            return a, [b], [add]
    for a, b in (add.inputs, add.inputs[::-1]):
        inner = _plus_terms(view, a, depth - 1)
        if inner is not None:
            return inner[0], inner[1] + [b], inner[2] + [add]
    return None


# --- DeBERTa's disentangled attention ------------------------------------------------------------
#
# What torch.onnx.export (dynamo, the default) writes for transformers' DebertaV2 self-attention
# with relative_attention (DeBERTa-v3's configuration), per layer, with Q3 / K3 / V3 the heads
# of the Split of the merged QKV Linear as (B*H, S, D):
#     X3 = Reshape(Transpose(Reshape(x, [0, 0, H, -1|D]), [0, 2, 1, 3]), [-1, S, D])
#     qk  = MatMul(Q3, Div(Transpose(K3, [0, 2, 1]), c))
#     c2p = Div(GatherElements(MatMul(Q3, Transpose(Tile(PK, [B, 1, 1]), [0, 2, 1])),
#                              Expand(c2p_index), axis=-1), c)
#     p2c = Div(Transpose(GatherElements(MatMul(K3, Transpose(Tile(PQ, [B, 1, 1]), [0, 2, 1])),
#                                        Expand(p2c_index), axis=-1), [0, 2, 1]), c)
#     scores = Reshape(qk + (c2p + p2c), [-1, H, S, S])          (the Adds in any grouping)
#     probs = Softmax(Where(not_mask, lowest, scores))
#     y = Reshape(Transpose(Reshape(MatMul(Reshape(probs, [-1, S, S]), V3), [-1, H, S, D]),
#                           [0, 2, 1, 3]), [B, S, -1])
# with PK / PQ (H, P, D) constants (the relative embeddings' LayerNorm and key / query
# projections, folded by the exporter) and c the scalar sqrt(3 D). It becomes
#     DisentangledAttention(q, k, v, Where(not_mask, lowest, 0), PK, c2p_index, PQ, p2c_index)
# scale 1 / c, then the last Reshape. The masked fill becomes an additive mask only for a fill of
# -inf or at most -1e37: added to a score of any size a float32 may hold in practice it gives the
# fill itself, so every row (a fully masked one too) has the softmax the Where gave.

MASK_FILL_MAX = -1e37


def _scaled_by(view: _View, value: str) -> tuple[str, float, Node] | None:
    """value = Div(x, c) or Mul(x, c) / Mul(c, x) with c a scalar constant: (x, factor, node)."""
    node = view.producer.get(value)
    if node is None or node.op not in ("Div", "Mul"):
        return None
    a, b = node.inputs
    if node.op == "Div":
        c = view.scalar(b)
        return (a, 1.0 / c, node) if c else None
    for x, k in ((a, b), (b, a)):
        c = view.scalar(k)
        if c is not None:
            return x, c, node
    return None


def _merged_heads(view: _View, value: str) -> tuple[str, int, list[Node]] | None:
    """value = Reshape(Transpose(Reshape(x, [0, 0, H, -1|D]), [0, 2, 1, 3]), [-1, *, D]): the
    heads of x (B, S, H*D) as (B*H, S, D). (x, H, nodes)."""
    merge = view.made(value, "Reshape")
    if merge is None:
        return None
    tr = view.made(merge.inputs[0], "Transpose")
    if tr is None or list(tr.attrs.get("perm") or []) != [0, 2, 1, 3]:
        return None
    split = view.made(tr.inputs[0], "Reshape")
    shape = None if split is None else view.const(split.inputs[1])
    if (split is None or split.attrs.get("allowzero", 0) or shape is None or shape.shape != (4,)
            or list(shape[:2]) != [0, 0] or shape[2] <= 0 or not (shape[3] == -1 or shape[3] > 0)):
        return None
    target = view.made(merge.inputs[1], "Concat")
    first = None if target is None else view.const(target.inputs[0])
    if target is None or len(target.inputs) != 3 or first is None or list(first.reshape(-1)) != [-1]:
        return None
    return split.inputs[0], int(shape[2]), [merge, tr, split]


def _relative_term(view: _View, value: str, x3: str) -> tuple[str, str, list[Node]] | None:
    """value = GatherElements(MatMul(x3, Transpose(Tile(T, r), [0, 2, 1])), Expand(index, s),
    axis -1|2) with T a 3-D float constant and r = [*, 1, 1]: (T, index, nodes)."""
    ge = view.made(value, "GatherElements")
    if ge is None or ge.attrs.get("axis", 0) not in (-1, 2):
        return None
    mm = view.made(ge.inputs[0], "MatMul")
    ex = view.made(ge.inputs[1], "Expand")
    if mm is None or ex is None or mm.inputs[0] != x3:
        return None
    tr = view.made(mm.inputs[1], "Transpose")
    tile = None if tr is None or list(tr.attrs.get("perm") or []) != [0, 2, 1] else view.made(tr.inputs[0], "Tile")
    if tile is None:
        return None
    table = view.const(tile.inputs[0])
    reps = view.made(tile.inputs[1], "Concat")
    if table is None or table.ndim != 3 or table.dtype.kind != "f" or reps is None or len(reps.inputs) != 3:
        return None
    if any(view.const(r) is None or list(view.const(r).reshape(-1)) != [1] for r in reps.inputs[1:]):
        return None
    return tile.inputs[0], ex.inputs[0], [ge, mm, tr, tile]


def _fuse_disentangled_attention(view: _View, sm: Node):
    if sm.op != "Softmax" or sm.attrs.get("axis", -1) not in (-1, 3):
        return None
    # the output side: Reshape to 3-D, P V3, back to (B, H, S, D), Transpose, merge
    rs_p = view.only_reader(sm.outputs[0], "Reshape")
    pv = None if rs_p is None else view.only_reader(rs_p.outputs[0], "MatMul")
    if pv is None or pv.inputs[0] != rs_p.outputs[0]:
        return None
    rs_h = view.only_reader(pv.outputs[0], "Reshape")
    tr_o = None if rs_h is None else view.only_reader(rs_h.outputs[0], "Transpose")
    if tr_o is None or list(tr_o.attrs.get("perm") or []) != [0, 2, 1, 3]:
        return None
    rs_o = view.only_reader(tr_o.outputs[0], "Reshape")
    v = _merged_heads(view, pv.inputs[1])
    if rs_o is None or v is None:
        return None
    # the masked fill and the 4-D view of the scores
    where = view.made_by(sm.inputs[0], "Where")
    fill = None if where is None else view.scalar(where.inputs[1])
    if fill is None or not (fill == -np.inf or fill <= MASK_FILL_MAX):
        return None
    rs_s = view.made_by(where.inputs[2], "Reshape")
    if rs_s is None:
        return None
    # the sum of the score terms: the leaves of a tree of Adds read once each
    adds, leaves, stack = [], [], [rs_s.inputs[0]]
    while stack:
        value = stack.pop()
        add = view.made_by(value, "Add")
        if add is not None and len(adds) < 2:
            adds.append(add)
            stack.extend(add.inputs)
        else:
            leaves.append(value)
    qk = next((view.producer[x] for x in leaves if view.made(x, "MatMul") is not None), None)
    if qk is None or len(leaves) != len(adds) + 1 or not 2 <= len(leaves) <= 3:
        return None
    q = _merged_heads(view, qk.inputs[0])
    kt = _scaled_by(view, qk.inputs[1])
    tr_k = None if kt is None else view.made(kt[0], "Transpose")
    if q is None or tr_k is None or list(tr_k.attrs.get("perm") or []) != [0, 2, 1]:
        return None
    k = _merged_heads(view, tr_k.inputs[0])
    if k is None or not q[1] == k[1] == v[1]:
        return None
    scale = kt[1]
    nodes = [sm, rs_p, pv, rs_h, tr_o, rs_o, where, rs_s, *adds, qk, kt[2], tr_k, *q[2], *k[2], *v[2]]
    terms = {}
    for leaf in leaves:
        if view.producer.get(leaf) is qk:
            continue
        scaled = _scaled_by(view, leaf)
        if scaled is None or not np.isclose(scaled[1], scale, rtol=1e-6, atol=0.0):
            return None
        tr = view.made(scaled[0], "Transpose")
        if tr is not None and list(tr.attrs.get("perm") or []) == [0, 2, 1]:
            kind, found, extra = "p2c", _relative_term(view, tr.inputs[0], tr_k.inputs[0]), [tr]
        else:
            kind, found, extra = "c2p", _relative_term(view, scaled[0], qk.inputs[0]), []
        if found is None or kind in terms:
            return None
        terms[kind] = found
        nodes += [scaled[2], *extra, *found[2]]
    # every value the pattern computes is read inside it only (Q3 and K3 are read twice); the
    # last Reshape's output is the pattern's result
    inside = {id(n) for n in nodes}
    for n in nodes:
        if n is not rs_o and any(o in view.outputs or any(id(r) not in inside for r in view.readers.get(o, []))
                                 for o in n.outputs):
            return None
    table_c2p, index_c2p = terms.get("c2p", ("", ""))[:2]
    table_p2c, index_p2c = terms.get("p2c", ("", ""))[:2]
    # the heads and the head size from a position table (H, P, D)
    table = view.const(table_c2p or table_p2c)
    if table.shape[0] != q[1] or (table_c2p and table_p2c and view.const(table_p2c).shape[::2] != table.shape[::2]):
        return None
    g = view.graph
    # the additive mask Where(not_mask, lowest, 0): one node for every layer that masks alike
    # (made with the first; the layers come in order, so it precedes all of them)
    new = []
    shared = view.shared
    key = ("additive mask", where.inputs[0], where.inputs[1])
    if key not in shared:
        zero = _unique(g, f"{where.name}_zero")
        g.initializers[zero] = dense_tensor(zero, np.zeros((), np.float32))
        mask = Node(_unique(g, f"{where.name}_additive"), "Where", [where.inputs[0], where.inputs[1], zero],
                    [_unique(g, f"{where.name}_additive_output")], {})
        shared[key] = mask.outputs[0]
        new.append(mask)
    name = sm.name.rsplit("/", 1)[0] + "/DisentangledAttention" if "/" in sm.name else f"{sm.name}_disentangled"
    y = _unique(g, f"{name}_output")
    new.append(Node(name, "DisentangledAttention",
                    [q[0], k[0], v[0], shared[key], table_c2p, index_c2p, table_p2c, index_p2c], [y],
                    {"head_dim": int(table.shape[2]), "scale": scale}))
    return nodes, new + [Node(rs_o.name, "Reshape", [y, rs_o.inputs[1]], list(rs_o.outputs), dict(rs_o.attrs))]


def _drop_unread(graph: Graph) -> None:
    """Drop nodes none of whose outputs is read or a graph output (a fusion can leave some:
    DeBERTa's index Expands, shared by the layers' GatherElements), until none is left."""
    outputs = {v.name for v in graph.outputs}
    while True:
        read = {i for n in graph.nodes for i in n.inputs} | outputs
        kept = [n for n in graph.nodes if any(o in read for o in n.outputs)]
        if len(kept) == len(graph.nodes):
            return
        graph.nodes = kept


# --- Add + LayerNormalization ----------------------------------------------------------------

def _fuse_skip_layer_norm(view: _View, ln: Node):
    if ln.op != "LayerNormalization" or ln.attrs.get("axis", -1) != -1:
        return None
    add = view.made_by(ln.inputs[0], "Add")
    if add is None:
        return None
    fused = Node(ln.name, "SkipLayerNormalization", [add.inputs[0], add.inputs[1], *ln.inputs[1:]],
                 list(ln.outputs), {"epsilon": ln.attrs.get("epsilon", 1e-5)})
    return [add, ln], fused


# --- Linear / Conv + activation --------------------------------------------------------------

def _fuse_activation(view: _View, node: Node):
    if node.op not in ("Linear", "Conv", "Add") or node.attrs.get("activation", "none") != "none":
        return None
    if node.op == "Add":       # ResNet's residual sum -> Relu: one pass over the sum
        act = view.only_reader(node.outputs[0], "Relu")
        if act is None:
            return None
        return [node, act], Node(node.name, "Add", list(node.inputs), list(act.outputs),
                                 {**node.attrs, "activation": "relu"})
    silu = _silu_after(view, node) if node.op == "Conv" else None
    if silu is not None:     # EfficientNet's SiLU, exported as Sigmoid -> Mul
        return [node, *silu], Node(node.name, "Conv", list(node.inputs), list(silu[1].outputs),
                                   {**node.attrs, "activation": "silu"})
    act = view.only_reader(node.outputs[0])
    reshape = None
    if act is not None and act.op == "Reshape" and node.op == "Linear":
        # GPT-2 (Conv1D: a 2-D Gemm between Reshapes) activates the reshaped output; an
        # element-wise activation commutes with the Reshape
        reshape, act = act, view.only_reader(act.outputs[0])
    if act is None:
        return None
    if act.op == "Relu":
        name = "relu"
    elif act.op == "Gelu":
        name = "gelu_tanh" if act.attrs.get("approximate", "none") == "tanh" else "gelu"
    elif act.op == "HardSwish" and node.op == "Conv":     # MobileNetV3's; Conv runs on the CPU backends only
        name = "hard_swish"
    else:
        return None
    attrs = {**node.attrs, "activation": name}
    if reshape is None:
        return [node, act], Node(node.name, node.op, list(node.inputs), list(act.outputs), attrs)
    return [node, reshape, act], [Node(node.name, node.op, list(node.inputs), list(node.outputs), attrs),
                                  Node(reshape.name, "Reshape", list(reshape.inputs), list(act.outputs),
                                       dict(reshape.attrs))]


def _silu_after(view: _View, node: Node) -> list[Node] | None:
    """[Sigmoid, Mul] when the node's output y is read by exactly a Sigmoid and Mul(y, that
    Sigmoid's output), the Sigmoid's output by that Mul alone: y * sigmoid(y), as torch exports
    SiLU. (Mul(sigmoid(y), y) stays: where both are NaN the product's NaN is the first operand's,
    so the operand order is part of the bits.)"""
    y = node.outputs[0]
    readers = view.readers.get(y, [])
    if len(readers) != 2 or y in view.outputs:
        return None
    sig = next((r for r in readers if r.op == "Sigmoid"), None)
    mul = next((r for r in readers if r.op == "Mul"), None)
    if sig is None or mul is None or view.only_reader(sig.outputs[0], "Mul") is not mul:
        return None
    return [sig, mul] if list(mul.inputs) == [y, sig.outputs[0]] else None


def _fuse_channel_mean(view: _View, node: Node):
    """ReduceMean over H and W (keepdims) of a 2-D Conv's output, which other nodes read too
    (MobileNetV3's squeeze-excite: the depthwise Conv's output is averaged,
    then scaled by what the mean gives): the Conv's second output (its "channel_mean"), so a
    kernel can sum each plane while it is in cache; the value and its readers stay."""
    if node.op != "ReduceMean" or not node.attrs.get("keepdims", 1) or len(node.inputs) != 1:
        return None
    conv = view.made(node.inputs[0], "Conv")
    weight = None if conv is None or len(conv.inputs) < 2 else view.graph.initializers.get(conv.inputs[1])
    if conv is None or conv.attrs.get("channel_mean") or len(conv.outputs) != 1 or weight is None:
        return None
    rank = len(weight.shape)
    axes = node.attrs.get("axes")
    if rank != 4 or axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
        return None
    return [conv, node], Node(conv.name, "Conv", list(conv.inputs), [conv.outputs[0], node.outputs[0]],
                              {**conv.attrs, "channel_mean": 1})


# --- Linears sharing an input ----------------------------------------------------------------

MERGEABLE_LAYOUTS = ("dense", "int8", "csr", "nm", "bsr")


def _merge_sibling_linears(graph: Graph) -> None:
    view = _View(graph)
    groups: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        if node.op != "Linear" or len(node.inputs) < 2 or node.inputs[1] not in graph.initializers:
            continue
        w = graph.initializers[node.inputs[1]]
        if w.layout not in MERGEABLE_LAYOUTS or len(w.shape) != 2 or w.dtype != "float32":
            continue
        if len(node.inputs) > 2 and node.inputs[2] and view.const(node.inputs[2]) is None:
            continue                                  # a bias computed at run time
        # same input, layout, K, attributes and layout parameters (quant, n and m of N:M);
        # per-tensor vs per-channel scales and symmetric vs not merge (made per channel)
        params = tuple(sorted((k, repr(v)) for k, v in w.params.items() if k not in ("per_channel", "symmetric")))
        key = (node.inputs[0], w.layout, params, w.shape[1], tuple(sorted((k, repr(v)) for k, v in node.attrs.items())))
        groups.setdefault(key, []).append(node)
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    replaced: dict[int, list[Node] | None] = {}
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        weights = [graph.initializers[n.inputs[1]] for n in nodes]
        merged_w = _concat_weights(weights, _unique(graph, weights[0].name + "/merged"))
        graph.initializers[merged_w.name] = merged_w
        inputs = [nodes[0].inputs[0], merged_w.name]
        biases = [view.const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None for n in nodes]
        if any(b is not None for b in biases):
            bias = np.concatenate([np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32).reshape(-1)
                                   for w, b in zip(weights, biases)])
            bias_t = dense_tensor(_unique(graph, merged_w.name + ".bias"), bias)
            graph.initializers[bias_t.name] = bias_t
            inputs.append(bias_t.name)
        first = min(nodes, key=lambda n: order[id(n)])
        wide = _unique(graph, first.outputs[0] + "/merged")
        linear = Node(first.name + "/merged", "Linear", inputs, [wide], dict(first.attrs))
        split = Node(first.name + "/split", "Split", [wide], [n.outputs[0] for n in nodes],
                     {"axis": -1, "split": [int(w.shape[0]) for w in weights]})
        for n in nodes:
            replaced[id(n)] = None
        replaced[id(first)] = [linear, split]
    if replaced:
        out: list[Node] = []
        for n in graph.nodes:
            r = replaced.get(id(n), [n])
            out.extend(r or [])
        graph.nodes = out


def _concat_weights(weights: list, name: str):
    """One (sum N, K) weight of the layout the given (N_i, K) weights share: dense arrays
    stacked; int8 qdata stacked with per-output-channel scales (and zero points, 0 for a
    symmetric part) broadcast from per-tensor ones."""
    if weights[0].layout == "dense":
        return dense_tensor(name, np.concatenate([np.asarray(w.fields["data"]) for w in weights]))
    if weights[0].layout in ("csr", "bsr"):
        return _concat_csr(weights, name)
    if weights[0].layout == "nm":
        return _concat_rows(weights, name, ("values", "qdata", "meta"))
    n_total = sum(w.shape[0] for w in weights)
    k = weights[0].shape[1]
    qdata = np.concatenate([np.asarray(w.fields["qdata"]) for w in weights])
    scale = _per_channel_scales(weights)
    fields = {"qdata": qdata, "scale": scale}
    symmetric = all("zero_point" not in w.fields for w in weights)
    if not symmetric:
        fields["zero_point"] = np.concatenate([
            np.broadcast_to(np.asarray(w.fields.get("zero_point", np.zeros(1, np.int8)), np.int8).reshape(-1),
                            (w.shape[0],)) for w in weights])
    t = PackedTensor(name, "int8", "float32", (n_total, k), fields, {"per_channel": True, "symmetric": symmetric})
    t.check()
    return t


def _per_channel_scales(weights: list) -> np.ndarray:
    """The weights' scales, per-tensor ones broadcast to their rows, as one (sum N,) array."""
    return np.concatenate([np.broadcast_to(np.asarray(w.fields["scale"], np.float32).reshape(-1), (w.shape[0],))
                           for w in weights])


def _concat_csr(weights: list, name: str):
    """CSR weights (N_i, K) stacked: rows one after another (indptr shifted by the nonzeros
    before), the same stored values, int8 scales per output channel. BSR the same with block
    rows and blocks (the grouping key holds the block shape, so it is the same for all).
    Mixed float/int8 values do not merge (the grouping key includes the attributes, and the
    layouts' params differ)."""
    layout = weights[0].layout
    quant = {w.params.get("quant", "none") for w in weights}
    if len(quant) != 1:
        raise ValueError(f"cannot merge {layout} weights with different value types")
    quant = quant.pop()
    k = weights[0].shape[1]
    columns = k // weights[0].params["block_shape"][1] if layout == "bsr" else k
    nnz = [int(np.asarray(w.fields["indptr"])[-1]) for w in weights]
    ptr_dtype, idx_dtype = index_dtypes(columns, sum(nnz))
    starts = np.cumsum([0] + nnz[:-1])
    indptr = np.concatenate([np.asarray(w.fields["indptr"], np.int64)[:-1] + s for w, s in zip(weights, starts)]
                            + [np.array([sum(nnz)], np.int64)]).astype(ptr_dtype)
    fields = {"indptr": indptr,
              "indices": np.concatenate([np.asarray(w.fields["indices"]) for w in weights]).astype(idx_dtype)}
    if quant == "none":
        fields["values"] = np.concatenate([np.asarray(w.fields["values"]) for w in weights])
        params = {"quant": "none"}
    else:
        fields["qdata"] = np.concatenate([np.asarray(w.fields["qdata"]) for w in weights])
        fields["scale"] = _per_channel_scales(weights)
        params = {"quant": quant, "per_channel": True}
    if layout == "bsr":
        params["block_shape"] = list(weights[0].params["block_shape"])
    t = PackedTensor(name, layout, "float32", (sum(w.shape[0] for w in weights), k), fields, params)
    t.check()
    return t


def _concat_rows(weights: list, name: str, row_fields: tuple[str, ...]):
    """Weights of a layout whose fields are all per output row (N:M: values or qdata, meta;
    and scale) stacked row after row, scales made per channel."""
    fields = {f: np.concatenate([np.asarray(w.fields[f]) for w in weights])
              for f in row_fields if f in weights[0].fields}
    params = dict(weights[0].params)
    if "scale" in weights[0].fields:
        fields["scale"] = _per_channel_scales(weights)
        params["per_channel"] = True
    t = PackedTensor(name, weights[0].layout, "float32", (sum(w.shape[0] for w in weights), weights[0].shape[1]),
                     fields, params)
    t.check()
    return t


def _unique(graph: Graph, base: str) -> str:
    """A name no initializer or node output of ``graph`` has."""
    return unique_name(base, set(graph.initializers) | {o for n in graph.nodes for o in n.outputs})
