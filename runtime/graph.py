"""qrt's graph IR: values, nodes, initializers, topological order, validation.

A Graph is what the importer builds, the converter rewrites, the writer stores (as JSON in the
.qrt header plus one file tensor per initializer field) and the session plans. It is plain
data: no kernels, no file handles.

Shapes: a tuple whose entries are ints (fixed), strings (symbolic, e.g. "batch", "seq": the
same string means the same size wherever it appears) or None (unknown). A Value whose shape
is None has unknown rank.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from kernels.core.layouts import DTYPES, LAYOUTS, PackedTensor
from kernels.core.ops import OPS

Dim = int | str | None


class GraphError(ValueError):
    """The graph is inconsistent (dangling name, cycle, unknown op, bad arity...)."""


@dataclass
class Value:
    name: str
    dtype: str
    shape: tuple[Dim, ...] | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}

    @staticmethod
    def from_dict(d: dict) -> "Value":
        shape = d.get("shape")
        return Value(str(d["name"]), str(d["dtype"]), None if shape is None else tuple(shape))


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]           # "" marks an absent optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": _jsonable(self.attrs)}

    @staticmethod
    def from_dict(d: dict) -> "Node":
        return Node(str(d["name"]), str(d["op"]), [str(x) for x in d["inputs"]],
                    [str(x) for x in d["outputs"]], dict(d.get("attrs") or {}))


@dataclass
class Graph:
    name: str
    inputs: list[Value]
    outputs: list[Value]
    nodes: list[Node]
    initializers: dict[str, PackedTensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    # --- queries --------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def weights_of(self, node: Node) -> dict[int, PackedTensor]:
        """Inputs of ``node`` that are initializers, by input position."""
        return {k: self.initializers[i] for k, i in enumerate(node.inputs) if i in self.initializers}

    def weight_layout(self, node: Node) -> str:
        """The layout that selects ``node``'s kernel: that of its weight input, else 'dense'."""
        wi = OPS[node.op].weight_input
        if wi is not None and wi < len(node.inputs) and node.inputs[wi] in self.initializers:
            return self.initializers[node.inputs[wi]].layout
        return "dense"

    # --- structure ------------------------------------------------------------------------
    def topological_sort(self) -> None:
        """Reorder ``nodes`` so every node follows the producers of its inputs (stable)."""
        producers = self.producers()
        indeg = {id(n): 0 for n in self.nodes}
        users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for i in set(x for x in n.inputs if x):
                p = producers.get(i)
                if p is not None and p is not n:
                    indeg[id(n)] += 1
                    users[id(p)].append(n)
        ready = [n for n in self.nodes if indeg[id(n)] == 0]
        order_index = {id(n): k for k, n in enumerate(self.nodes)}
        out: list[Node] = []
        while ready:
            ready.sort(key=lambda n: order_index[id(n)], reverse=True)
            n = ready.pop()
            out.append(n)
            for u in users[id(n)]:
                indeg[id(u)] -= 1
                if indeg[id(u)] == 0:
                    ready.append(u)
        if len(out) != len(self.nodes):
            stuck = [n.name for n in self.nodes if indeg[id(n)] > 0]
            raise GraphError(f"graph {self.name!r} has a cycle through nodes {stuck[:5]}")
        self.nodes = out

    def validate(self) -> None:
        """Check everything a kernel will rely on; raise GraphError naming the problem.

        Nodes must already be in topological order (the reader and the session rely on the
        stored order, so a file with a node before its producer is malformed)."""
        seen: dict[str, str] = {}
        for v in self.inputs:
            _check_value(v, "graph input")
            if v.name in seen:
                raise GraphError(f"value {v.name!r} is defined twice ({seen[v.name]} and graph input)")
            seen[v.name] = "graph input"
        for name, t in self.initializers.items():
            # '::' may appear (ONNX names like 'onnx::Conv_43'): file tensor names stay unique
            # because field names never contain '::' (see file_tensor_name)
            if not isinstance(name, str) or not name or not _NAME_OK.match(name):
                raise GraphError(f"initializer has an invalid name {name!r} (non-empty, no control characters)")
            if name in seen:
                raise GraphError(f"initializer {name!r} has the same name as a {seen[name]}")
            seen[name] = "initializer"
            _check_initializer(name, t)
        for n in self.nodes:
            spec = OPS.get(n.op)
            if spec is None:
                raise GraphError(f"node {n.name!r} has unknown op {n.op!r}")
            if not spec.min_inputs <= len(n.inputs) <= spec.max_inputs:
                raise GraphError(f"node {n.name!r} ({n.op}) has {len(n.inputs)} inputs, "
                                 f"expected {spec.min_inputs}..{spec.max_inputs}")
            if not spec.min_outputs <= len(n.outputs) <= spec.max_outputs:
                raise GraphError(f"node {n.name!r} ({n.op}) has {len(n.outputs)} outputs, "
                                 f"expected {spec.min_outputs}..{spec.max_outputs}")
            unknown = set(n.attrs) - set(spec.attrs)
            if unknown:
                raise GraphError(f"node {n.name!r} ({n.op}) has unknown attributes {sorted(unknown)}; "
                                 f"{n.op} takes {sorted(spec.attrs) or 'none'}")
            missing = [a for a, d in spec.attrs.items() if d is None and a not in n.attrs
                       and a in _REQUIRED_ATTRS.get(n.op, ())]
            if missing:
                raise GraphError(f"node {n.name!r} ({n.op}) lacks required attributes {missing}")
            for k, i in enumerate(n.inputs):
                if i and i not in seen:
                    raise GraphError(f"node {n.name!r} ({n.op}) input {k} names {i!r}, which is not a "
                                     f"graph input, an initializer or the output of an earlier node")
            for o in n.outputs:
                if not o:
                    raise GraphError(f"node {n.name!r} ({n.op}) has an empty output name")
                if o in seen:
                    raise GraphError(f"value {o!r} is defined twice ({seen[o]} and node {n.name!r})")
                seen[o] = f"output of node {n.name!r}"
        for v in self.outputs:
            _check_value(v, "graph output")
            if v.name not in seen:
                raise GraphError(f"graph output {v.name!r} is not produced by any node, input or initializer")

    # --- serialisation (the .qrt header's "graph"; arrays travel separately) ---------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "inputs": [v.to_dict() for v in self.inputs],
            "outputs": [v.to_dict() for v in self.outputs],
            "nodes": [n.to_dict() for n in self.nodes],
            "initializers": {name: {"layout": t.layout, "dtype": t.dtype, "shape": list(t.shape),
                                    "params": _jsonable(t.params),
                                    "fields": {f: file_tensor_name(name, f) for f in t.fields}}
                             for name, t in self.initializers.items()},
            "metadata": _jsonable(self.metadata),
        }

    @staticmethod
    def from_dict(d: dict, arrays: dict[str, np.ndarray]) -> "Graph":
        """Rebuild a graph; ``arrays`` maps file tensor names to arrays. Raises GraphError/
        KeyError/TypeError on malformed input (the reader turns those into QrtFormatError)."""
        inits = {}
        for name, desc in d["initializers"].items():
            fields = {}
            for f, tname in desc["fields"].items():
                if tname not in arrays:
                    raise GraphError(f"initializer {name!r} field {f!r} refers to tensor {tname!r}, "
                                     f"which the file does not contain")
                fields[f] = arrays[tname]
            inits[name] = PackedTensor(name, str(desc["layout"]), str(desc["dtype"]),
                                       tuple(int(x) for x in desc["shape"]), fields,
                                       dict(desc.get("params") or {}))
        return Graph(str(d["name"]), [Value.from_dict(v) for v in d["inputs"]],
                     [Value.from_dict(v) for v in d["outputs"]],
                     [Node.from_dict(n) for n in d["nodes"]], inits, dict(d.get("metadata") or {}))


# Attributes that have no sensible default (their spec default is None but None means "absent"
# for optional ones such as Squeeze axes).
_REQUIRED_ATTRS = {"Cast": ("to",), "Concat": ("axis",), "Attention": ("head_dim", "scale")}

_NAME_OK = re.compile(r"^[^\x00-\x1f]+$")


def format_shape(shape) -> str:
    """[batch, 8] for display; '?' marks an unknown dim, '(any rank)' an unknown shape."""
    if shape is None:
        return "(any rank)"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def shape_problem(v: Value, got: tuple, symbols: dict[str, tuple[int, str]]) -> str | None:
    """Why an array of shape ``got`` cannot feed input ``v`` (rank, a fixed dim, or a symbolic
    dim whose size differs from the one another array of the same feed gave it), or None.
    ``symbols`` (symbol -> (size, input name)) carries those sizes across one feed's inputs."""
    if v.shape is None:
        return None
    if len(got) != len(v.shape):
        return (f"expected rank {len(v.shape)} (shape {format_shape(v.shape)}), "
                f"got rank {len(got)} (shape {list(got)})")
    for axis, (want, have) in enumerate(zip(v.shape, got)):
        if isinstance(want, int) and want != have:
            return f"dimension {axis} must be {want} (shape {format_shape(v.shape)}), got {have} (shape {list(got)})"
        if isinstance(want, str):
            seen = symbols.setdefault(want, (have, v.name))
            if seen[0] != have:
                return f"dimension {axis} ({want!r}) is {have}, but input {seen[1]!r} has {want!r} = {seen[0]}"
    return None


def file_tensor_name(initializer: str, field_name: str) -> str:
    """Name of the file tensor holding ``field_name`` of an initializer. Unique per (initializer,
    field) because layout field names never contain '::' (the part after the last '::' is the
    field)."""
    return f"{initializer}::{field_name}"


def _check_value(v: Value, what: str) -> None:
    if not isinstance(v.name, str) or not v.name or not _NAME_OK.match(v.name):
        raise GraphError(f"{what} has an invalid name {v.name!r}")
    if v.dtype not in DTYPES:
        raise GraphError(f"{what} {v.name!r} has unknown dtype {v.dtype!r}; expected one of {DTYPES}")
    if v.shape is not None:
        for d in v.shape:
            if not (d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)):
                raise GraphError(f"{what} {v.name!r} has an invalid dimension {d!r} in shape {v.shape}")


def _check_initializer(name: str, t: PackedTensor) -> None:
    spec = LAYOUTS.get(t.layout)
    if spec is None:
        raise GraphError(f"initializer {name!r} has unknown layout {t.layout!r}; known: {sorted(LAYOUTS)}")
    if t.dtype not in DTYPES:
        raise GraphError(f"initializer {name!r} has unknown dtype {t.dtype!r}")
    wanted = {f.name: f for f in spec.field_specs(t)}
    if set(t.fields) != set(wanted):
        raise GraphError(f"initializer {name!r} ({t.layout}) has fields {sorted(t.fields)}, "
                         f"layout {t.layout!r} needs {sorted(wanted)}")
    for f, arr in t.fields.items():
        if str(arr.dtype) not in wanted[f].dtypes:
            raise GraphError(f"initializer {name!r} field {f!r} has dtype {arr.dtype}, "
                             f"layout {t.layout!r} allows {wanted[f].dtypes}")
    try:
        spec.check(t)
    except ValueError as e:
        raise GraphError(f"initializer {name!r} ({t.layout}): {e}") from None


def _jsonable(x: Any) -> Any:
    """Attributes and params as JSON: numpy scalars/arrays become Python numbers/lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def unique_name(base: str, taken: Iterable[str] | set[str]) -> str:
    taken = taken if isinstance(taken, set) else set(taken)
    if base not in taken:
        return base
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"
