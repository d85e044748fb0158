"""The session's cache of values that depend on the input *shapes* alone (Shape, and nodes
whose inputs are constants or such values: position ids, Range, ConstantOfShape...). A run
with input shapes seen before takes them from here and runs only ``value_steps``; the frees of
skipped steps are dropped, so such a value may live until the end of the run."""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph

# Shape-only values are cached for this many distinct input shapes per session (oldest
# dropped first), and only when they take at most this many bytes for one input shape.
SHAPE_CACHE_ENTRIES = 16
SHAPE_CACHE_MAX_BYTES = 1 << 22
# Ops whose output shape depends on the *values* of these inputs (kernels/core/ops.py semantics);
# every other op's output shape follows from its inputs' shapes and attributes.
SHAPE_GIVING_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4),
                       "Range": (0, 1, 2), "ConstantOfShape": (0,)}


class ShapeCache:
    """From the planned graph, its slots and steps. ``watch``: the slots of shape-only values a
    value step (or the caller) reads; ``value_steps``: the steps a cached run still runs."""

    def __init__(self, graph: Graph, slots: dict[str, int], steps: list):
        shape_only = set(graph.initializers) | {""}
        shape_known = shape_only | {v.name for v in graph.inputs}
        shape_steps = set()
        for k, node in enumerate(graph.nodes):
            if node.op == "Shape" and node.inputs[0] in shape_known or all(i in shape_only for i in node.inputs):
                shape_only.update(node.outputs)
                shape_steps.add(k)
            # an output's shape follows from the input shapes when the node's inputs' shapes
            # do and, for ops whose output shape is given by an input's *values*, those
            # values are shape-only
            sizing = SHAPE_GIVING_INPUTS.get(node.op, ())
            if (all(i in shape_known for i in node.inputs)
                    and all(node.inputs[i] in shape_only for i in sizing if i < len(node.inputs))):
                shape_known.update(node.outputs)
        needed = {slots[o.name] for o in graph.outputs}
        for k, step in enumerate(steps):
            if k not in shape_steps:
                needed.update(step[1])
        self.watch = frozenset({s for k in shape_steps for s in steps[k][2]} & needed)
        self.value_steps = [step for k, step in enumerate(steps) if k not in shape_steps]
        self._entries: dict[tuple, list] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, shapes: tuple) -> list[tuple[int, Any]] | None:
        """(slot, value) pairs remembered for these input shapes, or None."""
        return self._entries.get(shapes)

    def remember(self, shapes: tuple, record: dict[int, Any]) -> None:
        values = [(s, record[s]) for s in self.watch if s in record]
        if sum(np.asarray(v).nbytes for _, v in values) > SHAPE_CACHE_MAX_BYTES:
            return
        frozen = []
        for s, v in values:
            # a read-only copy: this run hands the original to its caller or kernels, and
            # later runs share the copy (run() copies read-only outputs before returning them)
            v = np.array(v)
            v.flags.writeable = False
            frozen.append((s, v))
        if len(self._entries) >= SHAPE_CACHE_ENTRIES:
            self._entries.pop(next(iter(self._entries)))      # the oldest shapes
        self._entries[shapes] = frozen
