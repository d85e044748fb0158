"""The session's caches of values that need not be computed again.

Shape-only values: values that depend on the input *shapes* alone (Shape, and nodes whose
inputs are constants or such values: position ids, Range, ConstantOfShape...). A run with
input shapes seen before takes them from here and runs only ``value_steps``; the frees of
skipped steps are dropped, so such a value may live until the end of the run.

Mask values: values computed from the *integer* inputs (an attention mask, token type ids),
scalars, small integer constants and shape-only values made of those alone, through no
weight: the attention-mask plumbing of a transformer export (the dynamo export of BERT: Cast,
GatherND, And, Where, four tiny steps per run before any layer). They are remembered per input
shapes and the bytes of those integer inputs, so a run whose mask equals an earlier one's skips
them too (``mask_steps``); a new mask computes them as before. Why: each such step costs 10-25
us of Python on caches the GEMMs just emptied, about the time onnxruntime's C++ takes for the
whole op, and the four together 5-9% of all-MiniLM-L6-v2 at 1 x 16 (benchmarks/RESULTS.md,
"Less Python per run"). Model compute never qualifies: a value that reads a weight (a float
initializer of more than one element, e.g. an embedding table, or a shape-only value made from
one, e.g. gathered position embeddings) or a float input is outside the rule, so a benchmark
repeating one feed does not skip any layer."""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph

# Shape-only values are cached for this many distinct input shapes per session (oldest
# dropped first), and only when they take at most this many bytes for one input shape.
SHAPE_CACHE_ENTRIES = 16
SHAPE_CACHE_MAX_BYTES = 1 << 22
# Mask values: remembered for this many (shapes, integer input bytes) keys, at most this many
# bytes of values each. The constants of the plumbing: integer initializers of at most this
# many elements (shape vectors, axes) and scalars (a Where's 0 and -inf); a float initializer
# of more than one element is a weight (an embedding table, however small).
MASK_CACHE_ENTRIES = 16
MASK_CACHE_MAX_BYTES = 1 << 22
MASK_CONST_MAX_ELEMENTS = 64
# the integer inputs that key an entry: at most this many bytes (a 64 x 128 int64 mask is 64 KB)
MASK_KEY_MAX_BYTES = 1 << 16
# after this many runs in a row whose integer inputs were not remembered, stop keeping them
MASK_MISSES_OFF = 8
INTEGER_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
# ops whose result is not a function of their inputs (kernels/core/ops.py has none today; listed so
# that adding one cannot make its values remembered)
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
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

        # mask values: a node reading an integer input or a mask value, and otherwise only
        # small constants and the shape-only values made of them (and of Shape), gives mask values
        integer_inputs = {v.name for v in graph.inputs if v.dtype in INTEGER_DTYPES}
        plumbing = {name for name, t in graph.initializers.items()
                    if int(np.prod(t.shape)) <= (MASK_CONST_MAX_ELEMENTS if t.dtype in INTEGER_DTYPES else 1)}
        plumbing.add("")
        for k, node in enumerate(graph.nodes):
            if k in shape_steps and (node.op == "Shape" or all(i in plumbing for i in node.inputs)):
                plumbing.update(node.outputs)
        mask_vals: set[str] = set()
        mask_steps: set[int] = set()
        key_inputs: set[str] = set()
        for k, node in enumerate(graph.nodes):
            if k in shape_steps or node.op in RANDOM_OPS:
                continue
            reads = [i for i in node.inputs if i in integer_inputs or i in mask_vals]
            if reads and all(i in plumbing or i in integer_inputs or i in mask_vals for i in node.inputs):
                mask_vals.update(node.outputs)
                mask_steps.add(k)
                key_inputs.update(i for i in reads if i in integer_inputs)
        mask_needed = {slots[o.name] for o in graph.outputs}
        for k, step in enumerate(steps):
            if k not in shape_steps and k not in mask_steps:
                mask_needed.update(step[1])
        self.mask_watch = frozenset({s for k in mask_steps for s in steps[k][2]} & mask_needed)
        # the slots whose bytes key a mask entry, in the graph's input order
        self.mask_key_slots = tuple(slots[v.name] for v in graph.inputs if v.name in key_inputs)
        self.mask_steps = [step for k, step in enumerate(steps) if k not in shape_steps and k not in mask_steps]
        self._masks: dict[tuple, list] = {}
        self._mask_misses = 0         # masks() misses in a row

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, shapes: tuple) -> list[tuple[int, Any]] | None:
        """(slot, value) pairs remembered for these input shapes, or None."""
        return self._entries.get(shapes)

    def remember(self, shapes: tuple, record: dict[int, Any]) -> None:
        _remember(self._entries, shapes, [(s, record[s]) for s in self.watch if s in record],
                  SHAPE_CACHE_ENTRIES, SHAPE_CACHE_MAX_BYTES)

    def mask_key(self, shapes: tuple, env: list) -> tuple | None:
        """The mask cache's key for this run's integer inputs (already in ``env``), or None:
        no mask values, an input that is not a numpy array (a device array), inputs of more
        than MASK_KEY_MAX_BYTES, or MASK_MISSES_OFF misses in a row (integer inputs that are
        data, e.g. uint8 images, differ on every run: keeping their values would only cost)."""
        if not self.mask_watch or self._mask_misses >= MASK_MISSES_OFF:
            return None
        parts = [shapes]
        size = 0
        for s in self.mask_key_slots:
            a = env[s]
            if type(a) is not np.ndarray:
                return None
            size += a.nbytes
            if size > MASK_KEY_MAX_BYTES:
                return None
            parts.append((a.dtype.str, a.tobytes()))
        return tuple(parts)

    def masks(self, key: tuple) -> list[tuple[int, Any]] | None:
        """(slot, value) pairs of the mask values remembered for ``key``, or None (a miss,
        counted towards MASK_MISSES_OFF; a hit resets the count)."""
        found = self._masks.get(key)
        self._mask_misses = 0 if found is not None else self._mask_misses + 1
        return found

    def remember_masks(self, key: tuple, record: dict[int, Any]) -> None:
        values = [(s, record[s]) for s in self.mask_watch if s in record]
        if all(isinstance(v, np.ndarray) for _, v in values):     # not a GPU kernel's device array
            _remember(self._masks, key, values, MASK_CACHE_ENTRIES, MASK_CACHE_MAX_BYTES)


def _remember(entries: dict, key: tuple, values: list[tuple[int, Any]], max_entries: int, max_bytes: int) -> None:
    """entries[key] = read-only copies of ``values`` when they take at most ``max_bytes``; the
    oldest entry goes when there are ``max_entries``."""
    if sum(np.asarray(v).nbytes for _, v in values) > max_bytes:
        return
    frozen = []
    for s, v in values:
        # a read-only copy: this run hands the original to its caller or kernels, and
        # later runs share the copy (run() copies read-only outputs before returning them)
        v = np.array(v)
        v.flags.writeable = False
        frozen.append((s, v))
    if len(entries) >= max_entries:
        # the oldest; another thread's run may have dropped it first
        entries.pop(next(iter(entries), None), None)
    entries[key] = frozen
