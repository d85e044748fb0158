"""Fold shape-computation subgraphs that depend on symbolic (dynamic) dims.

Exporters spell `x.view(batch, seq, heads, head_dim)` as Shape -> Gather -> Unsqueeze ->
Concat -> Reshape. With dynamic batch and sequence the target is not a constant, but it is
known *symbolically*: [batch, seq, 4, 16]. This pass propagates, in one forward walk over the
(topologically ordered) graph:

  * the symbolic shape of every value it can (ints, names of graph-input dims, None);
  * the symbolic *contents* of small int vectors computed from shapes ("symvals"), e.g. the
    output of that Concat is ["batch", "seq", 4, 16];

and then rewrites
  * a symval that turned out fully numeric into a constant (static shapes fold entirely);
  * a Reshape whose target is a symval into a Reshape with a constant target, using ONNX's
    0 ("copy this dim from the input") for dims equal to the input's dim at that position
    and -1 for at most one remaining dim.
After it, dead-code elimination drops the Shape/Gather/Concat chains nobody needs any more.

Unknown is always safe here: a value whose shape or contents cannot be derived is left
alone and computed at run time by the shape ops, exactly as the model says.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Node, unique_name

Dim = int | str | None


class _SymVal:
    """Contents of a small int tensor: ndim 0 (one entry) or 1; entries int, str or None."""
    __slots__ = ("ndim", "items")

    def __init__(self, ndim: int, items: list):
        self.ndim, self.items = ndim, items

    @property
    def numeric(self) -> bool:
        return all(isinstance(x, int) for x in self.items)


def fold_symbolic_shapes(graph: Graph, consts: dict[str, np.ndarray]) -> int:
    """Rewrite Reshape targets and numeric shape values; return how many rewrites were made."""
    shapes: dict[str, tuple | None] = {v.name: v.shape for v in graph.inputs}
    for k, a in consts.items():
        shapes[k] = tuple(int(d) for d in a.shape)
    symvals: dict[str, _SymVal] = {}
    for k, a in consts.items():
        if a.dtype.kind in "iu" and a.ndim <= 1 and a.size <= 16:
            symvals[k] = _SymVal(a.ndim, [int(x) for x in a.reshape(-1)])

    rewrites = 0
    taken = set(consts) | {o for n in graph.nodes for o in n.outputs} | {v.name for v in graph.inputs}
    made = {o: n for n in graph.nodes for o in n.outputs}
    for n in graph.nodes:
        try:
            _propagate(n, shapes, symvals, consts)
        except Exception:  # unknown stays unknown; never break import over an optimisation
            for o in n.outputs:
                shapes.setdefault(o, None)
        x = _swapped_last_two(n, made, shapes, symvals) if n.op == "Reshape" else None
        if x is not None:
            rank = len(shapes[x])
            n.op, n.inputs = "Transpose", [x]
            n.attrs = {"perm": list(range(rank - 2)) + [rank - 1, rank - 2]}
            rewrites += 1
            continue
        if n.op == "Reshape" and n.inputs[1] in consts and n.inputs[1] in symvals:
            target = _zero_form(symvals[n.inputs[1]].items, shapes.get(n.inputs[0]), n.attrs.get("allowzero", 0))
            if target is not None:
                _set_target(n, target, consts, symvals, taken)
                rewrites += 1
                try:        # the output's shape, which the -1 of the old target may have hidden
                    _propagate(n, shapes, symvals, consts)
                except Exception:
                    pass
        elif n.op == "Reshape" and n.inputs[1] not in consts and n.inputs[1] in symvals:
            target = _constant_reshape_target(symvals[n.inputs[1]], shapes.get(n.inputs[0]),
                                              n.attrs.get("allowzero", 0))
            if target is not None:
                _set_target(n, target, consts, symvals, taken)
                rewrites += 1
    # numeric symvals computed at run time become constants (their producers then go dead)
    out_names = {v.name for v in graph.outputs}
    for n in graph.nodes:
        for o in n.outputs:
            sv = symvals.get(o)
            if sv is not None and sv.numeric and o not in consts and o not in out_names:
                arr = np.array(sv.items, np.int64)
                consts[o] = arr.reshape(()) if sv.ndim == 0 else arr
                rewrites += 1
    graph.nodes = [n for n in graph.nodes if not all(o in consts for o in n.outputs)]
    return rewrites


def _set_target(n: Node, target: list[int], consts: dict, symvals: dict, taken: set) -> None:
    """Reshape ``n`` reads the constant ``target`` (a new initializer, its symbolic value
    recorded) with allowzero=0: its 0s copy the input's dims."""
    name = unique_name(f"{n.name}.shape", taken)
    taken.add(name)
    consts[name] = np.array(target, np.int64)
    symvals[name] = _SymVal(1, list(target))
    n.inputs = [n.inputs[0], name]
    n.attrs = {**n.attrs, "allowzero": 0}


def _swapped_last_two(n: Node, made: dict, shapes: dict, symvals: dict) -> str | None:
    """x when Reshape ``n`` is Reshape(Transpose([0, 2, 1])(Reshape(x, [-1, S, D])), [*lead, D, S])
    for x of shape (*lead, S, D): x with its last two axes swapped. The dynamo exporter writes
    a 4-D ``k.transpose(-2, -1)`` (attention's K^T) this way, through 3-D; as one Transpose the
    attention pattern of runtime/fuse.py sees it. Every dim is checked symbolically."""
    t = made.get(n.inputs[0])
    if t is None or t.op != "Transpose" or list(t.attrs.get("perm") or []) != [0, 2, 1]:
        return None
    r = made.get(t.inputs[0])
    if r is None or r.op != "Reshape":
        return None
    x = r.inputs[0]
    xs = shapes.get(x)
    s1, s2 = symvals.get(r.inputs[1]), symvals.get(n.inputs[1])
    if xs is None or len(xs) < 3 or None in xs or s1 is None or s2 is None:
        return None
    lead = list(xs[:-2])
    if s1.items not in ([-1, xs[-2], xs[-1]], [_product(lead), xs[-2], xs[-1]]):
        return None
    if s2.items == lead + [xs[-1], xs[-2]]:
        return x
    # a constant target with -1 for one lead dim ([-1, H, D, S]: ViT's export, its sequence
    # length fixed): the -1 is that dim, the element count being the same
    items = s2.items
    if (len(items) == len(lead) + 2 and items[-2:] == [xs[-1], xs[-2]] and items.count(-1) == 1
            and all(a == b or a == -1 for a, b in zip(items, lead))):
        return x
    return None


def _zero_form(target: list[int], xs: tuple | None, allowzero: int) -> list[int] | None:
    """[0, 0, H, D] for a constant Reshape target [-1 | B, S, H, D] of x (B, S, H * D) with S
    and H * D known ints: the head split written with ONNX's "copy this dim" as
    runtime/fuse.py matches it (ViT's dynamo export fixes the sequence length and writes -1 for
    the batch). None when the target is not that or is already in that form."""
    if xs is None or len(xs) != 3 or len(target) != 4 or (allowzero and 0 in target):
        return None
    a, b, h, d = target
    if h <= 0 or d <= 0 or not isinstance(xs[2], int) or h * d != xs[2]:
        return None
    if not (isinstance(xs[1], int) and b == xs[1]) or a not in (-1, xs[0]):
        return None
    return [0, 0, h, d]


def _constant_reshape_target(sv: _SymVal, in_shape, allowzero: int) -> list[int] | None:
    if sv.ndim != 1:
        return None
    if allowzero and any(x == 0 for x in sv.items):
        return None          # a literal 0-sized dim cannot be re-encoded with the 0 = copy rule
    out: list[int] = []
    unresolved = 0
    for i, d in enumerate(sv.items):
        if isinstance(d, int) and d != 0:
            out.append(d)
            if d == -1:
                unresolved += 1
        elif d == 0 and not allowzero:
            out.append(0)
        elif in_shape is not None and i < len(in_shape) and d is not None and in_shape[i] == d:
            out.append(0)    # same symbolic dim at the same position: copy it
        else:
            out.append(-1)
            unresolved += 1
    return out if unresolved <= 1 else None


def _broadcast(*shapes) -> tuple | None:
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if d != 1}
        if len(known) > 1:
            # an unknown dim beside a known one is either 1 or equal to it (the model is valid),
            # so the known one is the result
            known.discard(None)
        if not known:
            out.append(1)
        elif len(known) == 1:
            out.append(known.pop())
        else:
            ints = {d for d in known if isinstance(d, int)}
            out.append(ints.pop() if len(ints) == 1 else None)
    return tuple(out)


_SAME_SHAPE = {"Relu", "Sigmoid", "Tanh", "Gelu", "Erf", "Sqrt", "Neg", "Abs", "Exp", "Log", "Not", "IsNaN", "Sign",
               "HardSigmoid", "HardSwish", "CumSum",
               "Reciprocal", "Floor", "Ceil", "Identity", "LeakyRelu", "Softmax", "Cast",
               "LayerNormalization", "Clip"}
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Greater", "GreaterOrEqual", "Less",
              "LessOrEqual", "And", "Or", "Xor", "Mod", "Max", "Min", "Sum", "Where"}


def _propagate(n: Node, shapes: dict, symvals: dict, consts: dict) -> None:
    ins = [shapes.get(i) if i else None for i in n.inputs]
    sv = [symvals.get(i) for i in n.inputs]
    out_shape = None
    op = n.op
    if op in _SAME_SHAPE:
        out_shape = ins[0]
        if op == "Cast" and sv[0] is not None and n.attrs.get("to") in ("int64", "int32"):
            symvals[n.outputs[0]] = sv[0]
    elif op in _BROADCAST:
        out_shape = _broadcast(*[s for s, i in zip(ins, n.inputs) if i])
        if op in ("Add", "Sub", "Mul", "Div") and sv[0] is not None and sv[1] is not None:
            symvals[n.outputs[0]] = _arith(op, sv[0], sv[1])
        elif op == "Equal" and sv[0] is not None and sv[1] is not None:
            symvals[n.outputs[0]] = _zip_items(sv[0], sv[1], _sym_equal)
        elif op == "Where" and all(x is not None for x in sv):
            c, a, b = sv
            size = max(len(c.items), len(a.items), len(b.items))
            if all(len(x.items) in (1, size) for x in sv):
                pick = [None if ci is None else (ai if ci else bi) for ci, ai, bi in
                        zip(*[x.items * size if len(x.items) == 1 else x.items for x in sv])]
                symvals[n.outputs[0]] = _SymVal(max(x.ndim for x in sv), pick)
    elif op == "Linear":
        w = shapes.get(n.inputs[1])
        if ins[0] is not None and w is not None:
            out_shape = tuple(ins[0][:-1]) + (w[0],)
    elif op == "MatMul":
        a, b = ins
        if a is not None and b is not None and len(a) >= 2 and len(b) >= 2:
            batch = _broadcast(a[:-2], b[:-2])
            out_shape = None if batch is None else batch + (a[-2], b[-1])
    elif op == "Transpose":
        if ins[0] is not None:
            perm = n.attrs.get("perm") or list(range(len(ins[0])))[::-1]
            out_shape = tuple(ins[0][p] for p in perm)
    elif op == "Shape":
        if ins[0] is not None:
            start, end = n.attrs.get("start", 0), n.attrs.get("end")
            dims = list(ins[0])[start:end] if end is not None else list(ins[0])[start:]
            symvals[n.outputs[0]] = _SymVal(1, dims)
            out_shape = (len(dims),)
    elif op == "Gather" and sv[0] is not None and n.inputs[1] in consts and n.attrs.get("axis", 0) == 0:
        idx = consts[n.inputs[1]]
        items = [sv[0].items[int(i)] for i in idx.reshape(-1)]
        symvals[n.outputs[0]] = _SymVal(idx.ndim, items)
        out_shape = tuple(idx.shape)
    elif op == "Gather":
        axis = n.attrs.get("axis", 0)
        if ins[0] is not None and ins[1] is not None:
            axis %= len(ins[0])
            out_shape = tuple(ins[0][:axis]) + tuple(ins[1]) + tuple(ins[0][axis + 1:])
    elif op == "Unsqueeze":
        if sv[0] is not None and sv[0].ndim == 0:
            symvals[n.outputs[0]] = _SymVal(1, list(sv[0].items))
        if ins[0] is not None:
            shape = list(ins[0])
            rank = len(shape) + len(n.attrs["axes"])
            for a in sorted(x % rank for x in n.attrs["axes"]):
                shape.insert(a, 1)
            out_shape = tuple(shape)
    elif op == "Squeeze":
        if sv[0] is not None and sv[0].ndim == 1 and len(sv[0].items) == 1:
            symvals[n.outputs[0]] = _SymVal(0, list(sv[0].items))
        if ins[0] is not None and n.attrs.get("axes") is not None:
            drop = {a % len(ins[0]) for a in n.attrs["axes"]}
            out_shape = tuple(d for i, d in enumerate(ins[0]) if i not in drop)
    elif op == "Concat":
        if all(s is not None and s.ndim == 1 for s in sv):
            symvals[n.outputs[0]] = _SymVal(1, [x for s in sv for x in s.items])
        if all(s is not None for s in ins):
            axis = n.attrs["axis"] % len(ins[0])
            parts = [s[axis] for s in ins]
            total = sum(parts) if all(isinstance(p, int) for p in parts) else None
            out_shape = tuple(ins[0][:axis]) + (total,) + tuple(ins[0][axis + 1:])
    elif op == "Slice" and sv[0] is not None and sv[0].ndim == 1 and all(i in consts for i in n.inputs[1:] if i):
        starts, ends = (int(consts[i].reshape(-1)[0]) for i in n.inputs[1:3])
        steps = int(consts[n.inputs[4]].reshape(-1)[0]) if len(n.inputs) > 4 and n.inputs[4] else 1
        items = sv[0].items[slice(starts, ends, steps)]
        symvals[n.outputs[0]] = _SymVal(1, items)
        out_shape = (len(items),)
    elif op == "Slice" and ins[0] is not None:
        axes = None
        if len(n.inputs) > 3 and n.inputs[3]:
            axes = consts[n.inputs[3]].reshape(-1) if n.inputs[3] in consts else None
        else:
            axes = range(len(consts[n.inputs[1]].reshape(-1))) if n.inputs[1] in consts else None
        if axes is not None:
            sliced = {int(a) % len(ins[0]) for a in axes}
            out_shape = tuple(None if i in sliced else d for i, d in enumerate(ins[0]))
    elif op == "Range":
        start, limit, delta = (x.items[0] if x is not None and x.ndim == 0 else None for x in sv)
        if start == 0 and delta == 1 and limit is not None:
            out_shape = (limit,)
    elif op == "Flatten" and ins[0] is not None:
        axis = n.attrs.get("axis", 1) % max(len(ins[0]), 1)
        head, tail = ins[0][:axis], ins[0][axis:]
        out_shape = tuple(_product(head) for _ in [0]) + tuple(_product(tail) for _ in [0])
    elif op == "GatherElements":
        out_shape = ins[1]
    elif op == "GatherND" and ins[0] is not None and ins[1] is not None and isinstance(ins[1][-1], int):
        # indices (*B, *I, k) into data (*B, *D): (*B, *I, *D[k:]) (the dynamo export's padding
        # mask; without it the attention output's shape, and its merging Reshape, stay unknown)
        b = int(n.attrs.get("batch_dims", 0))
        out_shape = tuple(ins[1][:-1]) + tuple(ins[0][b + ins[1][-1]:])
    elif op == "Reshape":
        t = sv[1]
        if sv[0] is not None and sv[0].ndim == 1 and t is not None and t.items in ([-1], [len(sv[0].items)]):
            symvals[n.outputs[0]] = sv[0]   # a 1-D shape vector reshaped to itself
        if t is not None and t.ndim == 1:
            out_shape = _reshape_shape(ins[0], t.items, n.attrs.get("allowzero", 0))
    elif op == "ConstantOfShape" and sv[0] is not None and sv[0].ndim == 1:
        out_shape = tuple(sv[0].items)      # MPNet's relative-position buckets start from one
    elif op == "Expand" and sv[1] is not None and ins[0] is not None:
        out_shape = _broadcast(ins[0], tuple(sv[1].items))
    elif op == "Split" and ins[0] is not None:
        # every output's shape, for explicit sizes (attribute, or a constant second input) or
        # equal parts of an int dim (ONNX 18: ceil(dim / parts), the last part what is left);
        # GPT-2's heads are reshaped to shapes read off the Q, K and V parts of one projection
        axis = n.attrs.get("axis", 0) % len(ins[0])
        sizes = n.attrs.get("split")
        if sizes is None and len(n.inputs) > 1 and n.inputs[1] in consts:
            sizes = consts[n.inputs[1]].reshape(-1)
        dim, parts = ins[0][axis], len(n.outputs)
        if sizes is None and isinstance(dim, int) and parts and len(n.inputs) < 2:
            step = -(-dim // parts)
            sizes = [min(step, max(dim - k * step, 0)) for k in range(parts)]
        if sizes is not None and len(sizes) == len(n.outputs):
            for o, size in zip(n.outputs, sizes):
                shapes[o] = tuple(ins[0][:axis]) + (int(size),) + tuple(ins[0][axis + 1:])
            return
    for k, o in enumerate(n.outputs):
        shapes[o] = out_shape if k == 0 else None


def _product(dims) -> Dim:
    """Product of dims: int if all are ints, the dim itself if it is the only non-1, else None."""
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims)) if dims else 1
    rest = [d for d in dims if d != 1]
    return rest[0] if len(rest) == 1 else None


def _sym_equal(x, y):
    if isinstance(x, int) and isinstance(y, int):
        return int(x == y)
    if x is not None and x == y:
        return 1
    if (isinstance(x, str) and isinstance(y, int) and y < 0) or (isinstance(y, str) and isinstance(x, int) and x < 0):
        return 0        # a dimension is never negative (torch's "-1 = keep" sentinels)
    return None


def _zip_items(a: _SymVal, b: _SymVal, fn) -> _SymVal | None:
    size = max(len(a.items), len(b.items))
    if len(a.items) not in (1, size) or len(b.items) not in (1, size):
        return None
    xs = a.items * size if len(a.items) == 1 else a.items
    ys = b.items * size if len(b.items) == 1 else b.items
    return _SymVal(max(a.ndim, b.ndim), [fn(x, y) for x, y in zip(xs, ys)])


def _arith(op: str, a: _SymVal, b: _SymVal) -> _SymVal | None:
    def one(x, y):
        if isinstance(x, int) and isinstance(y, int):
            if op == "Div":
                return None if y == 0 else int(x / y)  # C-style truncation, as ONNX int Div
            return {"Add": x + y, "Sub": x - y, "Mul": x * y}[op]
        if op == "Mul" and (x == 1 or y == 1):
            return y if x == 1 else x
        if op in ("Add", "Sub") and y == 0:
            return x
        return None
    return _zip_items(a, b, one)


def _reshape_shape(in_shape, target: list, allowzero: int) -> tuple | None:
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            out.append(in_shape[i] if in_shape is not None and i < len(in_shape) else None)
        elif d == -1:
            out.append(None)
        else:
            out.append(d)
    if out.count(None) == 1 and in_shape is not None and None not in in_shape:
        # -1 = (product of input dims) / (product of the other output dims): cancel the
        # symbolic dims both sides share; then the rest must be ints, or one symbolic input
        # dim and ints of the same product on both sides (x.view(-1, seq) of (batch, seq)
        # is (batch, seq))
        rest_in = list(in_shape)
        rest_out = []
        for d in out:
            if isinstance(d, str) and d in rest_in:
                rest_in.remove(d)
            elif d is not None:
                rest_out.append(d)
        syms_in = [d for d in rest_in if isinstance(d, str)]
        ints_in = [d for d in rest_in if isinstance(d, int)]
        if all(isinstance(d, int) for d in rest_out):
            known = int(np.prod(rest_out))
            if not syms_in and known and int(np.prod(ints_in)) % known == 0:
                out[out.index(None)] = int(np.prod(ints_in)) // known
            elif len(syms_in) == 1 and known and int(np.prod(ints_in)) == known:
                out[out.index(None)] = syms_in[0]
    return tuple(out)
