"""Pruning: weight masks (unstructured, N:M, block, random) and channel surgery.

Two kinds of pruning live here (docs/CONVERTER.md, "Pruning"):

* **Masks.** ``magnitude_mask``, ``global_magnitude_masks``, ``nm_mask``, ``block_mask`` and
  ``random_mask`` return a bool array of the weight's logical shape, True = kept. They do not
  change the weight; the packer (kernels/core/layouts.py, ``pack_csr`` / ``pack_bsr`` /
  ``pack_nm``) stores only the kept values. Every function works on the weight's **2-D view
  (N, K')**, N = shape[0], K' = prod(shape[1:]): a Linear weight (N, K) is its own view, a
  Conv weight (M, C/group, kh, kw) is one row per output filter.

* **Channels.** ``channel_prune`` removes whole output channels of a layer (rows of its
  weight) together with the matching input columns of every layer that reads them. The
  result is a smaller *dense* model, faster with any kernel; nothing is masked.

Counting rule, the same everywhere: a target ``sparsity`` s over ``count`` items (elements,
blocks or channels) prunes exactly ``round(s * count)`` of them. Python's ``round`` rounds
half to even, like ``np.rint`` in the rest of the converter. Ties in a ranking are broken by
a stable sort, so among equal scores the item earlier in C order is pruned first: the same
weights always give the same mask.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping

import numpy as np

from ..graph import Graph, Node
from kernels.core.layouts import dense_tensor

__all__ = [
    "check_sparsity", "sparsity_of",
    "magnitude_mask", "global_magnitude_masks", "nm_mask", "block_mask", "random_mask",
    "channel_prune", "ChannelPruneResult", "ChannelReport", "LayerPruneResult",
]


# --------------------------------------------------------------------------- validation ----

def check_sparsity(s) -> float:
    """``s`` as a float if 0 <= s < 1, else ValueError. 1.0 is refused: a layer with every
    weight pruned is not a compressed layer but a deleted one."""
    if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0 <= s < 1:
        # (NaN fails the comparison, so it lands here too)
        raise ValueError(f"sparsity must be in [0, 1), got {s!r}")
    return float(s)


def _check_weight(w, name: str = "weight") -> np.ndarray:
    """``w`` as an ndarray of a real dtype with at least one dimension and only finite
    values; the error names ``name``."""
    a = np.asarray(w)
    if a.dtype == np.bool_ or a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real-valued (float) array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name}: expected an array with a leading output dimension N, got a scalar")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            n_nan = int(np.isnan(a).sum())
            raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf "
                             f"of {a.size}); a magnitude ranking of them is meaningless")
    return a


def _view_2d(a: np.ndarray) -> np.ndarray:
    """The (N, K') view: N = shape[0], K' = prod(shape[1:]) (1 for a 1-D array)."""
    return a.reshape(a.shape[0], -1)


def _count(s: float, total: int) -> int:
    """How many of ``total`` items a sparsity ``s`` prunes: round(s * total), half to even."""
    return int(round(s * total))


def sparsity_of(mask) -> float:
    """Fraction of pruned (False) entries of ``mask``; 0.0 for an empty mask."""
    m = np.asarray(mask)
    return 0.0 if m.size == 0 else 1.0 - np.count_nonzero(m) / m.size


# ------------------------------------------------------------------------------- masks ----

def _prune_smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask over flat ``scores``: False at the ``k`` smallest (stable: among equal
    scores the earlier index goes first)."""
    keep = np.ones(scores.size, dtype=bool)
    if k > 0:
        keep[np.argsort(scores, kind="stable")[:k]] = False
    return keep


def magnitude_mask(w, sparsity: float, *, name: str = "weight") -> np.ndarray:
    """Unstructured magnitude pruning of one layer.

    w: weight of any shape (N, ...); sparsity: target in [0, 1). Prunes exactly
    ``round(sparsity * w.size)`` entries with the smallest |w| (ties: earlier in C order
    first). Returns a bool mask of w's shape, True = kept."""
    s = check_sparsity(sparsity)
    a = _check_weight(w, name)
    keep = _prune_smallest(np.abs(a).ravel(), _count(s, a.size))
    return keep.reshape(a.shape)


def global_magnitude_masks(weights: Mapping[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """Magnitude pruning with ONE threshold across layers.

    weights: {name: w}; every |w| of every layer is ranked together and exactly
    ``round(sparsity * total size)`` of the smallest are pruned, so a layer of large weights
    keeps more than a layer of small ones (unlike ``magnitude_mask`` per layer, which prunes
    each layer by the same fraction). Returns {name: mask} in the same order."""
    s = check_sparsity(sparsity)
    arrays = {name: _check_weight(w, name) for name, w in weights.items()}
    if not arrays:
        return {}
    # float64: the concatenation of mixed float16/float32 layers must not re-round magnitudes
    scores = np.concatenate([np.abs(a).ravel().astype(np.float64) for a in arrays.values()])
    keep = _prune_smallest(scores, _count(s, scores.size))
    out, start = {}, 0
    for name, a in arrays.items():
        out[name] = keep[start:start + a.size].reshape(a.shape)
        start += a.size
    return out


def nm_mask(w, n: int = 2, m: int = 4, *, name: str = "weight") -> np.ndarray:
    """N:M structured sparsity along K' (the input dimension): in every row of the (N, K')
    view, each group of ``m`` consecutive elements keeps its ``n`` largest |w| (ties: the
    earlier element is pruned first). 2:4 is what sparse tensor cores and the ``nm`` layout
    read. Requires 0 < n < m and K' % m == 0 (the layout has no partial groups)."""
    for label, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"N:M sparsity: {label} must be an int, got {v!r}")
    if not 0 < n < m:
        raise ValueError(f"N:M sparsity needs 0 < n < m, got n={n}, m={m}")
    a = _check_weight(w, name)
    rows, k = _view_2d(a).shape
    if k % m:
        raise ValueError(f"{name}: N:M sparsity groups K' in groups of m: K'={k} (2-D view "
                         f"({rows}, {k}) of shape {a.shape}) is not a multiple of m={m}")
    groups = np.abs(_view_2d(a)).reshape(rows, k // m, m)
    # rank inside each group; the m - n smallest positions are pruned
    order = np.argsort(groups, axis=-1, kind="stable")[..., : m - n]
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=-1)
    return keep.reshape(a.shape)


def block_mask(w, sparsity: float, block_shape: tuple[int, int] = (1, 4), *, name: str = "weight") -> np.ndarray:
    """Block sparsity: tile the (N, K') view into R x C blocks, rank blocks by L2 norm and
    prune exactly ``round(sparsity * nblocks)`` of the smallest (ties: earlier block in
    row-major block order first). The mask is constant within a block, so achieved element
    sparsity is within one block of the target. R must divide N and C must divide K' (the
    ``bsr`` layout stores whole blocks only)."""
    s = check_sparsity(sparsity)
    if (not isinstance(block_shape, (tuple, list)) or len(block_shape) != 2
            or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and b > 0 for b in block_shape)):
        raise ValueError(f"block_shape must be two positive ints (R, C), got {block_shape!r}")
    r, c = (int(b) for b in block_shape)
    a = _check_weight(w, name)
    v = _view_2d(a)
    rows, k = v.shape
    if rows % r or k % c:
        raise ValueError(f"{name}: block ({r}, {c}) does not tile the 2-D view ({rows}, {k}) of shape "
                         f"{a.shape}: need R | N and C | K'")
    # (N/R, R, K'/C, C) -> squared norms per block, in float64 so small blocks do not tie by rounding
    blocks = v.reshape(rows // r, r, k // c, c).astype(np.float64)
    norms = np.sqrt((blocks * blocks).sum(axis=(1, 3)))            # (N/R, K'/C)
    keep_blocks = _prune_smallest(norms.ravel(), _count(s, norms.size)).reshape(norms.shape)
    keep = np.broadcast_to(keep_blocks[:, None, :, None], blocks.shape)
    return np.ascontiguousarray(keep).reshape(a.shape)


def random_mask(w, sparsity: float, seed: int, *, name: str = "weight") -> np.ndarray:
    """A random baseline: exactly ``round(sparsity * w.size)`` entries pruned, chosen by
    ``np.random.default_rng(seed)`` (same seed, same mask; numpy's Generator streams are
    stable across platforms)."""
    s = check_sparsity(sparsity)
    a = _check_weight(w, name)
    keep = np.ones(a.size, dtype=bool)
    k = _count(s, a.size)
    if k:
        keep[np.random.default_rng(seed).choice(a.size, size=k, replace=False)] = False
    return keep.reshape(a.shape)


# -------------------------------------------------------------------- channel pruning ----

# Ops that act on every element independently: channel j of their output depends only on
# channel j of their input, so a channel can be removed before them and after them alike.
# (Whether f(0) == 0 does not matter: the channel is removed, not zeroed.)
CHANNELWISE_UNARY = frozenset({"Relu", "Gelu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "Identity"})
# Pooling over the spatial axes of NCHW keeps channels apart; only valid while the channel
# axis is axis 1 (a Conv output), not on a Linear's last axis.
CHANNELWISE_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})
LAYER_OPS = ("Linear", "Conv")

# Why common non-channel-wise consumers block pruning (appended to the reason).
_MIXING_HINTS = {
    "Reshape": "it regroups the channel axis, e.g. into attention heads",
    "MatMul": "a product with another activation reads every channel",
    "Concat": "the channel numbering after it depends on the other operands",
    "Softmax": "it normalises over the channels",
    "LayerNormalization": "it normalises over the channels",
    "Mul": "its other operand still has every channel",
    "Transpose": "it moves the channel axis",
}

REASON_MODEL_OUTPUT = "output is a model output: pruning would change the model's interface"
REASON_FLATTEN_SPATIAL = "consumer reads channels through Flatten with unknown spatial size"


@dataclass
class LayerPruneResult:
    """One candidate layer of ``channel_prune``.

    name:            node name
    op:              "Linear" or "Conv"
    weight:          name of its weight initializer (None if the weight is not one)
    channels_before: N, output channels before (None if unknown)
    channels_after:  output channels after (== channels_before when nothing was removed)
    removed:         indices (in the original numbering) of the removed output channels
    consumers:       names of the Linear/Conv nodes whose input columns were removed with them
    reason:          None when the layer was prunable; else why it was kept whole
    """
    name: str
    op: str
    weight: str | None
    channels_before: int | None
    channels_after: int | None
    removed: tuple[int, ...] = ()
    consumers: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def pruned(self) -> bool:
        return self.reason is None and bool(self.removed)

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "weight": self.weight,
                "channels_before": self.channels_before, "channels_after": self.channels_after,
                "removed": list(self.removed), "consumers": list(self.consumers), "reason": self.reason}


@dataclass
class ChannelPruneResult:
    """What ``channel_prune`` did: one ``LayerPruneResult`` per selected Linear/Conv, in
    graph order. ``result[name]`` looks a layer up by node name."""
    sparsity: float
    norm: str
    layers: list[LayerPruneResult] = field(default_factory=list)

    @property
    def pruned(self) -> list[LayerPruneResult]:
        """Layers that lost at least one channel."""
        return [r for r in self.layers if r.pruned]

    @property
    def skipped(self) -> list[LayerPruneResult]:
        """Layers that could not be pruned, each with its reason."""
        return [r for r in self.layers if r.reason is not None]

    def __getitem__(self, name: str) -> LayerPruneResult:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no layer named {name!r} in the channel pruning result; layers: "
                       f"{[r.name for r in self.layers]}")

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "norm": self.norm, "layers": [r.to_dict() for r in self.layers]}

    def __str__(self) -> str:
        lines = [(f"channel pruning, sparsity {self.sparsity:g}, norm {self.norm}: "
                  f"{len(self.pruned)} of {len(self.layers)} layers pruned")]
        for r in self.layers:
            if r.reason is None:
                lines.append(f"  {r.name}: {r.channels_before} -> {r.channels_after} channels")
            else:
                lines.append(f"  {r.name}: kept ({r.reason})")
        return "\n".join(lines)


# The name docs/CONVERTER.md uses for the same object.
ChannelReport = ChannelPruneResult


@dataclass
class _Consumer:
    node: Node
    weight: str     # its weight initializer, which loses input columns / input channels


class _NotPrunable(Exception):
    """Internal: carries the reason a layer is kept whole."""


def channel_prune(graph: Graph, sparsity: float, *, norm: str = "l2",
                  select: Callable[[Node], bool] = lambda node: True) -> ChannelPruneResult:
    """Remove the weakest output channels of Linear/Conv layers; mutates ``graph``.

    For each selected layer P (a Linear with weight (N, K), or a Conv with weight
    (N, C, kh, kw) and group == 1) whose output channels can be removed, rank the N rows of
    its weight's 2-D view by their ``norm`` ("l2" or "l1"), remove the
    ``min(round(sparsity * N), N - 1)`` weakest (at least one channel is kept), delete those
    rows of P's weight and bias, and delete the matching input columns of every consumer
    layer: column j of a Linear consumer's weight (N2, K), input channel j (weight[:, j]) of
    a Conv consumer. Initializers are replaced by smaller dense fp32 ones (same names); the
    model's inputs and outputs keep their shapes.

    Channel j of P's output can go only if every path from it is channel-wise and ends in a
    layer that reads channel j as one input column (or one input channel):

      * element-wise unary ops (CHANNELWISE_UNARY) anywhere on the path;
      * for a Conv output (NCHW, channels on axis 1) also pooling (CHANNELWISE_POOLS), and
        Flatten(axis=1) into a Linear when the spatial size is known to be 1 (a
        GlobalAveragePool before it): channel j is then Linear input column j;
      * no value on the path is a model output, and nothing on it mixes channels (Add - a
        residual keeps every channel of its other operand -, Mul, Concat, Reshape, Softmax,
        LayerNormalization, MatMul, or any other op).

    Layers not meeting these rules are kept whole and listed with the reason; so are layers
    whose weight (or a consumer's weight) is not a dense fp32 initializer, is shared with
    another node, or belongs to a grouped Conv. Layers are pruned in graph order, so a layer
    that is both a consumer and a producer is ranked on its weight after its input columns
    were removed. ``select(node)`` picks the layers whose outputs may be pruned (consumers
    lose columns regardless).

    All checks run before any weight is changed: an error (a bad sparsity or norm, a
    non-finite weight) leaves the graph as it was. Returns a ChannelPruneResult; the graph is
    validated after the surgery.
    """
    s = check_sparsity(sparsity)
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")

    uses: dict[str, list[str]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i:
                uses.setdefault(i, []).append(n.name)
    consumers_of = graph.consumers()
    graph_outputs = {v.name for v in graph.outputs}

    # --- analysis: nothing is modified here ----------------------------------------------
    plans: list[tuple[LayerPruneResult, Node, list[_Consumer]]] = []
    for node in graph.nodes:
        if node.op not in LAYER_OPS or not select(node):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] in graph.initializers else None
        n_out = graph.initializers[weight].shape[0] if weight is not None and graph.initializers[weight].shape else None
        rec = LayerPruneResult(node.name, node.op, weight, n_out, n_out)
        try:
            _check_producer(graph, node, uses)
            cons = _trace_consumers(graph, node, n_out, consumers_of, graph_outputs, uses)
        except _NotPrunable as e:
            rec.reason = str(e)
            plans.append((rec, node, []))
            continue
        rec.consumers = tuple(c.node.name for c in cons)
        plans.append((rec, node, cons))
    # Non-finite weights make a norm ranking meaningless: refuse before touching anything.
    for rec, _, _ in plans:
        if rec.reason is None:
            _check_weight(graph.initializers[rec.weight].to_dense(),
                          f"initializer {rec.weight!r} of layer {rec.name!r}")

    # --- surgery, in graph (topological) order ---------------------------------------------
    for rec, node, cons in plans:
        if rec.reason is not None:
            continue
        w = np.asarray(graph.initializers[rec.weight].to_dense())
        rows = _view_2d(w).astype(np.float64)
        scores = np.sqrt((rows * rows).sum(axis=1)) if norm == "l2" else np.abs(rows).sum(axis=1)
        n_ch = w.shape[0]
        k = min(_count(s, n_ch), n_ch - 1)          # keep at least one channel
        if k <= 0:
            continue                                  # sparsity 0 (or N == 1): graph untouched
        removed = np.sort(np.argsort(scores, kind="stable")[:k])
        keep = np.setdiff1d(np.arange(n_ch), removed)
        _replace(graph, rec.weight, w[keep])
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = node.inputs[2]
            _replace(graph, bias, np.asarray(graph.initializers[bias].to_dense())[keep])
        for c in cons:
            cw = np.asarray(graph.initializers[c.weight].to_dense())
            # Linear (N2, K): channel j is column j (also after Flatten of a 1x1 spatial map);
            # Conv (N2, C, kh, kw), group 1: channel j is weight[:, j]. Axis 1 either way.
            _replace(graph, c.weight, np.delete(cw, removed, axis=1))
        rec.removed = tuple(int(j) for j in removed)
        rec.channels_after = int(keep.size)

    graph.validate()
    return ChannelPruneResult(s, norm, [rec for rec, _, _ in plans])


def _replace(graph: Graph, name: str, array: np.ndarray) -> None:
    graph.initializers[name] = dense_tensor(name, np.ascontiguousarray(array, dtype=np.float32))


def _dense_fp32(graph: Graph, name: str) -> bool:
    t = graph.initializers.get(name)
    return t is not None and t.layout == "dense" and t.dtype == "float32"


def _check_producer(graph: Graph, node: Node, uses: dict[str, list[str]]) -> None:
    """Raise _NotPrunable unless ``node``'s own weight and bias can lose rows."""
    weight = node.inputs[1] if len(node.inputs) > 1 else ""
    if weight not in graph.initializers:
        raise _NotPrunable(f"weight {weight!r} is not a constant initializer")
    if not _dense_fp32(graph, weight):
        t = graph.initializers[weight]
        raise _NotPrunable(f"weight {weight!r} is not a dense fp32 initializer (layout {t.layout}, "
                           f"dtype {t.dtype}); channel pruning runs before quantization and packing")
    if node.op == "Conv" and int(node.attrs.get("group", 1) or 1) != 1:
        raise _NotPrunable(f"Conv with group={node.attrs['group']}: each output channel belongs to one "
                           f"input group, so removing one would unbalance the groups")
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    if bias:
        if bias not in graph.initializers:
            raise _NotPrunable(f"bias {bias!r} is not a constant initializer")
        if not _dense_fp32(graph, bias):
            raise _NotPrunable(f"bias {bias!r} is not a dense fp32 initializer")
    for what, name in (("weight", weight), ("bias", bias)):
        if name and len(uses.get(name, [])) > 1:   # (a node reading it twice counts too)
            others = sorted(set(uses[name]) - {node.name}) or [node.name]
            raise _NotPrunable(f"{what} {name!r} is shared with node(s) {others}: removing rows "
                               f"would change them too")


def _trace_consumers(graph: Graph, producer: Node, n_out: int, consumers_of: dict[str, list[Node]],
                     graph_outputs: set[str], uses: dict[str, list[str]]) -> list[_Consumer]:
    """Follow every path from ``producer``'s output through channel-wise ops to the layers
    that read the channels; raise _NotPrunable with the first obstacle found.

    State along a path: ``axis`` is "nchw" (channels on axis 1: a Conv output, before any
    Flatten) or "last" (channels on the last axis: a Linear output, or a Conv output after
    Flatten(axis=1)); ``spatial_one`` says the spatial size is known to be 1 (after a
    GlobalAveragePool, with no pooling after it that could pad it back up)."""
    start_axis = "nchw" if producer.op == "Conv" else "last"
    found: dict[str, _Consumer] = {}
    stack = [(producer.outputs[0], start_axis, False)]
    seen: set[tuple] = set()
    while stack:
        value, axis, spatial_one = stack.pop(0)
        if (value, axis, spatial_one) in seen:
            continue
        seen.add((value, axis, spatial_one))
        if value in graph_outputs:
            if value == producer.outputs[0]:
                raise _NotPrunable(REASON_MODEL_OUTPUT)
            raise _NotPrunable(f"{REASON_MODEL_OUTPUT} (it reaches model output {value!r})")
        for c in consumers_of.get(value, []):
            where = [k for k, i in enumerate(c.inputs) if i == value]
            label = f"{c.op} {c.name!r}"
            if c.op == "Add":
                raise _NotPrunable(f"output feeds {label}, which mixes channels (a residual or sum: the "
                                   f"other operand still has every channel)")
            if c.op not in CHANNELWISE_UNARY | CHANNELWISE_POOLS | {"Flatten", "Linear", "Conv"}:
                hint = _MIXING_HINTS.get(c.op)
                raise _NotPrunable(f"output feeds {label}, which mixes channels" + (f" ({hint})" if hint else ""))
            if where != [0]:
                raise _NotPrunable(f"output feeds {label} as input {where} rather than as its data "
                                   f"input 0, which mixes channels")
            if c.op in CHANNELWISE_UNARY:
                stack.append((c.outputs[0], axis, spatial_one))
            elif c.op in CHANNELWISE_POOLS:
                if axis != "nchw":
                    raise _NotPrunable(f"output feeds {label}, which pools over the channel axis and "
                                       f"mixes channels")
                stack.append((c.outputs[0], axis, c.op == "GlobalAveragePool"))
            elif c.op == "Flatten":
                if axis != "nchw" or int(c.attrs.get("axis", 1)) != 1:
                    raise _NotPrunable(f"output feeds {label} (axis={c.attrs.get('axis', 1)}), which mixes channels")
                if not spatial_one:
                    raise _NotPrunable(f"{REASON_FLATTEN_SPATIAL} ({label})")
                stack.append((c.outputs[0], "last", False))
            else:
                found.setdefault(c.name, _check_consumer(graph, c, axis, n_out, uses))
    if not found:
        raise _NotPrunable("output reaches no Linear or Conv layer, so there is no consumer whose "
                           "inputs could shrink with it")
    return list(found.values())


def _check_consumer(graph: Graph, c: Node, axis: str, n_out: int, uses: dict[str, list[str]]) -> _Consumer:
    label = f"{c.op} {c.name!r}"
    if c.op == "Linear" and axis != "last":
        raise _NotPrunable(f"output feeds {label} with channels on axis 1 (NCHW) while Linear reads "
                           f"the last axis")
    if c.op == "Conv":
        if axis != "nchw":
            raise _NotPrunable(f"output feeds {label} with channels on the last axis while Conv reads "
                               f"axis 1")
        if int(c.attrs.get("group", 1) or 1) != 1:
            raise _NotPrunable(f"output feeds {label} with group={c.attrs['group']}: a grouped Conv "
                               f"cannot lose single input channels")
    weight = c.inputs[1]
    if not _dense_fp32(graph, weight):
        raise _NotPrunable(f"consumer {label}'s weight {weight!r} is not a dense fp32 initializer")
    if len(uses.get(weight, [])) > 1:
        others = sorted({u for u in uses[weight] if u != c.name}) or [c.name]
        raise _NotPrunable(f"consumer {label}'s weight {weight!r} is shared with node(s) {others}")
    in_dim = graph.initializers[weight].shape[1] if len(graph.initializers[weight].shape) > 1 else None
    # after Flatten(axis=1) with spatial size 1, and for Linear -> Linear, channel j is column j
    if in_dim != n_out:
        raise _NotPrunable(f"consumer {label}'s weight {weight!r} has {in_dim} input columns, "
                           f"expected {n_out} (one per channel)")
    return _Consumer(c, weight)
