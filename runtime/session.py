"""InferenceSession: load a .qrt file, plan once, run many times.

Shaped like onnxruntime.InferenceSession so users can swap one for the other:
``sess.run(output_names_or_None, {input_name: array}) -> list[np.ndarray]``,
``get_inputs()`` / ``get_outputs()`` returning objects with ``name``, ``shape`` and ``type``.

Planning (once, at load): every value gets an integer slot; constants are put in their slots
once; each node becomes a ``Step(run, ins, outs, frees, where)`` (input, output and freed slots) where
``run`` is the kernel the registry prepared for that node (weights packed there, attributes
bound there). ``run()`` is then a loop over steps with no dict lookups, no attribute
handling and no kernel choice; a slot is cleared right after its last reader so memory of
intermediate activations is released as early as possible. ``execute`` is that loop, for
run and profile alike. Feed checks are runtime/feeds.py, the cache of values that depend on
the input shapes alone runtime/shape_cache.py, per-layer choices runtime/planner.py, host/GPU placement runtime/placement.py.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from kernels import registry
from kernels.core.device import is_device_array, to_numpy
from kernels.core.layouts import dense_tensor, dense_view_2d
from kernels.core.threads import usable_cpus

from . import planner
from .format import load
from .fuse import fuse as fuse_graph
from .feeds import check_feeds, check_memory, feed_signature, recheck_feeds
from .graph import Graph
from .placement import place
from .planner import PLAN_MODES, rows_bucket
from .shape_cache import ShapeCache

# onnxruntime's type strings, so code written against onnxruntime's NodeArg keeps working.
_ORT_TYPE = {"float32": "tensor(float)", "float16": "tensor(float16)", "float64": "tensor(double)",
             "int8": "tensor(int8)", "uint8": "tensor(uint8)", "int16": "tensor(int16)",
             "uint16": "tensor(uint16)", "int32": "tensor(int32)", "uint32": "tensor(uint32)",
             "int64": "tensor(int64)", "uint64": "tensor(uint64)", "bool": "tensor(bool)"}


@dataclass(frozen=True)
class NodeArg:
    """A model input or output: ``shape`` entries are ints, symbolic names (str) or None."""
    name: str
    shape: list
    dtype: str

    @property
    def type(self) -> str:
        return _ORT_TYPE.get(self.dtype, f"tensor({self.dtype})")


@dataclass(frozen=True)
class PlannedNode:
    """What the planner chose for one node (for `qrt inspect`, profiling and tests)."""
    name: str
    op: str
    layout: str
    backend: str


class InferenceSession:
    """Run a qrt model.

    model:   path to a .qrt file, or a runtime.graph.Graph (e.g. straight from convert).
    backend: "auto" (fastest available kernel per node), or one of
             runtime.available_backends(); an explicit backend that is unavailable here is
             refused with the reason. Ops the chosen backend has no kernel for run on the
             reference kernels, and ``plan`` says so node by node.
    threads: worker threads for backends that parallelise (None: the CPUs this process may use:
             its affinity mask, capped by its cgroup CPU quota; kernels.core.threads.usable_cpus).
    fuse:    rewrite op patterns into fused ops before planning (runtime/fuse.py: attention,
             Add + LayerNorm, Linear/Conv + Relu/Gelu); False runs the graph as stored.
    plan:    per-layer planning (runtime/planner.py): "auto" measures, once per machine and
             input size (cached on disk), every equivalent layout and backend of each
             sparse / int4 / int8 Linear and Conv and runs the fastest, so a sparse layer that
             is slower than dense int8 here falls back to it (same results: only layouts that
             compute the same function are candidates); "measure" ignores the cache; "off"
             runs every weight in its stored layout. ``layer_plan`` lists the choices made.
    """

    def __init__(self, model: str | os.PathLike | Graph, backend: str = "auto", *, threads: int | None = None,
                 fuse: bool = True, plan: str = "auto"):
        if isinstance(model, Graph):
            graph = model
            graph.validate()
        else:
            graph = load(model)
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.threads = threads or usable_cpus()
        self.backend = _check_backend(backend)
        if plan not in PLAN_MODES:
            raise ValueError(f"plan must be one of {', '.join(PLAN_MODES)}, got {plan!r}")
        self.plan_mode = plan
        self._layer_plan: list[dict] = []
        self._graph = graph
        self._inputs = [NodeArg(v.name, list(v.shape) if v.shape is not None else [], v.dtype) for v in graph.inputs]
        self._outputs = [NodeArg(v.name, list(v.shape) if v.shape is not None else [], v.dtype) for v in graph.outputs]
        if fuse:
            graph = fuse_graph(graph)
        self._plan(graph)

    # --- onnxruntime-shaped API -----------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    @property
    def metadata(self) -> dict:
        """The graph's free-form metadata as stored (source model, conversion report, a text
        model's tokenizer: runtime/text.py); a shallow copy."""
        return dict(self._graph.metadata)

    @property
    def plan(self) -> list[PlannedNode]:
        """Each node's op, stored layout and backend (before per-layer planning's choices)."""
        return list(self._planned)

    @property
    def layer_plan(self) -> list[dict]:
        """The per-layer planning decisions made so far (runtime/planner.py plan_record):
        node, stored and chosen "layout/backend", GEMM rows, measured ms per candidate, and
        the reason. Decisions are made at the first run of each input size, or by
        ``plan_layers``."""
        return list(self._layer_plan)

    def plan_layers(self, rows: int, seed: int = 0) -> list[dict]:
        """Decide now, for ``rows`` GEMM rows, every planned Linear layer (on random inputs of
        that many rows; Conv layers need the real input's spatial shape and are decided at
        their first run). Returns the decisions (also added to ``layer_plan``)."""
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise ValueError(f"rows must be a positive int, got {rows!r}")
        rng = np.random.default_rng(seed)
        start = len(self._layer_plan)
        for set_threads in self._thread_setters:
            set_threads(self.threads)
        for layer, k, extra in self._planned_layers:
            if layer.op != "Linear":
                continue
            x = rng.standard_normal((rows, k)).astype(np.float32)
            bucket = rows_bucket("Linear", x)
            if bucket not in layer._chosen:
                layer.decide(bucket, (x, layer.stored, *extra))
        return self._layer_plan[start:]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """Run the model; returns the requested outputs (all when output_names is None).

        On a GPU backend, feeds may be numpy arrays (uploaded once) or device arrays (CuPy
        arrays, torch tensors: used in place), and values stay on the device between GPU
        nodes; outputs come back as numpy unless ``run_options`` asks for device arrays
        (``{"device_outputs": True}``, or an object with that attribute)."""
        if output_names is None:
            out_slots = self._default_out_slots
        else:
            out_slots = [self._output_slot(n) for n in output_names]
        for set_threads in self._thread_setters:
            set_threads(self.threads)
        env = list(self._template)
        sig = self._feed_signature
        fed = None if sig is None else recheck_feeds(input_feed, self._input_slots, sig)
        if fed is None:
            fed = check_feeds(input_feed, self._input_slots, self._placement.on_gpu)
            self._feed_signature = feed_signature(fed)
        shapes = tuple(tuple(a.shape) for _, a in fed)
        if shapes != self._memory_checked:       # once per input size (it costs ~8 us)
            check_memory(fed, self._widest, self._attention)
            self._memory_checked = shapes
        self._placement.feed(env, fed)
        cached = self._shape_cache.get(shapes)
        if cached is not None:
            # values that depend on the input shapes alone (Shape, Range, position ids, ...)
            # were computed by an earlier run with these shapes: set them, skip their nodes
            for s, value in cached:
                env[s] = value
            cache = self._shape_cache
            key = cache.mask_key(shapes, env)
            masks = None if key is None else cache.masks(key)
            if masks is not None:
                # the mask values (the attention-mask plumbing) of these integer inputs too
                for s, value in masks:
                    env[s] = value
                execute(cache.mask_steps, env)
            elif key is not None:
                record = {}
                execute(cache.value_steps, env, cache.mask_watch, record)
                cache.remember_masks(key, record)
            else:
                execute(cache.value_steps, env)
        elif self._shape_cache.watch or self._shape_cache.mask_watch:
            # (with mask values but no shape-only ones, the entry is empty: it marks the shapes seen)
            cache = self._shape_cache
            key = cache.mask_key(shapes, env)
            record: dict[int, Any] = {}
            execute(self._steps, env, cache.watch | cache.mask_watch, record)
            cache.remember(shapes, record)
            if key is not None:
                cache.remember_masks(key, record)
        else:
            execute(self._steps, env)
        # Like onnxruntime, hand back arrays the caller owns: an output that is a constant
        # (a read-only view of the file map) or that aliases a fed array (Identity, Reshape
        # views) is copied, so writing to it can neither fail nor change the caller's input.
        device_outputs = bool(run_options.get("device_outputs", False) if isinstance(run_options, Mapping)
                              else getattr(run_options, "device_outputs", False))
        out = []
        for s in out_slots:
            a = env[s]
            if is_device_array(a):
                out.append(a if device_outputs else to_numpy(a))
                continue
            a = np.asarray(a)
            if not a.flags.writeable or any(isinstance(f, np.ndarray) and np.may_share_memory(a, f) for _, f in fed):
                a = a.copy()
            out.append(a)
        return out

    def profile(self, input_feed: Mapping[str, Any], repeats: int = 10) -> list[tuple[PlannedNode, float]]:
        """Median seconds per node of the plan over ``repeats`` runs on ``input_feed`` (after
        one warm-up run); every node runs, shape-only ones included (no shape cache)."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        times: list[list[float]] = [[] for _ in self._steps]
        for rep in range(repeats + 1):
            for set_threads in self._thread_setters:
                set_threads(self.threads)
            env = list(self._template)
            self._placement.feed(env, check_feeds(input_feed, self._input_slots, self._placement.on_gpu))
            execute(self._steps, env, times=times if rep else None)
        return [(p, float(np.median(t))) for p, t in zip(self._planned, times)]

    # --- planning -------------------------------------------------------------------------
    def _plan(self, graph: Graph) -> None:
        slots: dict[str, int] = {"": 0}          # slot 0 always holds None (absent input)
        template: list[Any] = [None]

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(template)
                template.append(None)
            return slots[name]

        self._input_slots = [(v, slot(v.name)) for v in graph.inputs]
        constant_slots = set()
        for name, t in graph.initializers.items():
            s = slot(name)
            template[s] = t.fields["data"] if t.layout == "dense" else t
            constant_slots.add(s)
        output_names = {v.name for v in graph.outputs}

        last_use: dict[int, int] = {}
        raw_steps = []
        self._planned = []
        self._planned_layers = []
        for k, node in enumerate(graph.nodes):
            layout = graph.weight_layout(node)
            backend = self._choose_backend(node.op, layout)
            attrs = registry.fill_attrs(node.op, node.attrs)
            run = self._planned_layer(node, graph, layout, backend, attrs)
            if run is None:
                run = registry.build(node.op, layout, backend, attrs, graph.weights_of(node), self._candidates())
            ins = tuple(slot(i) for i in node.inputs)
            outs = tuple(slot(o) for o in node.outputs)
            for s in ins:
                last_use[s] = k
            raw_steps.append((run, ins, outs, step_name(node)))
            self._planned.append(PlannedNode(node.name, node.op, layout, backend))

        self._placement = place(graph, [p.backend for p in self._planned], raw_steps, slots)
        self.host_transfers = self._placement.host_transfers
        keep = constant_slots | {slots[o] for o in output_names} | {0}
        frees_at: dict[int, list[int]] = {}
        for s, k in last_use.items():
            if s not in keep:
                frees_at.setdefault(k, []).append(s)
        # outputs nobody reads (e.g. unused Split parts) are dropped right after their node
        for k, (_, _, outs, _) in enumerate(raw_steps):
            for s in outs:
                if s not in last_use and s not in keep:
                    frees_at.setdefault(k, []).append(s)
        self._steps = [Step(run, ins, outs, tuple(frees_at.get(k, ())), where)
                       for k, (run, ins, outs, where) in enumerate(raw_steps)]
        self._shape_cache = ShapeCache(graph, slots, self._steps)
        # every backend a step may run on: the planned nodes' and the candidates of the layers
        # the planner decides at run time (a threads=1 session whose planner picked numba for a
        # layer ran it on numba's whole pool before: RESULTS.md, "Two threads on one CPU")
        used = dict.fromkeys([p.backend for p in self._planned]
                             + [c.backend for layer, _, _ in self._planned_layers for c in layer.cands])
        self._thread_setters = [f for f in map(registry.thread_setter, used) if f is not None]
        self._template = template
        self._slots = slots
        # what check_memory needs: the widest Linear output / embedding row, and attention
        widths = [int(graph.initializers[n.inputs[1]].shape[0]) for n in graph.nodes
                  if n.op == "Linear" and len(n.inputs) > 1 and n.inputs[1] in graph.initializers]
        widths += [int(graph.initializers[n.inputs[0]].shape[-1]) for n in graph.nodes
                   if n.op == "Gather" and n.inputs[0] in graph.initializers
                   and len(graph.initializers[n.inputs[0]].shape) == 2]
        self._widest = max(widths, default=0)
        self._attention = any(n.op == "Attention" for n in graph.nodes)
        self._memory_checked: tuple | None = None      # the input shapes check_memory last passed
        self._feed_signature: tuple | None = None       # of the last feed check_feeds accepted (feeds.py)
        self._default_out_slots = [slots[v.name] for v in graph.outputs]

    def _planned_layer(self, node, graph: Graph, layout: str, backend: str, attrs: dict):
        """A planner.PlannedLayer for a Linear/Conv whose weight has more than one candidate
        (layout, backend), else None (the node runs its stored layout on ``backend``)."""
        if self.plan_mode == "off" or node.op not in planner.PLANNED_OPS or layout in ("dense", None):
            return None
        weights = graph.weights_of(node)
        stored = weights.get(1)
        if stored is None:
            return None
        cands = planner.candidates(node.op, stored, attrs, self._candidates())
        if len(cands) < 2 or (cands[0].layout, cands[0].backend) != (layout, backend):
            return None
        fallbacks = self._candidates()

        def build(c: planner.Candidate):
            w = dict(weights)
            w[1] = c.weight if c.layout != "dense" else dense_tensor(stored.name, c.weight)
            return registry.build(node.op, c.layout, c.backend, attrs, w, fallbacks)

        cache = planner.default_cache()
        layer = planner.PlannedLayer(node.name, node.op, attrs, stored, cands, build, self.threads,
                                     self.plan_mode, cache, self._layer_plan)
        # for plan_layers: K of the weight's 2-D view, and the inputs after the weight (bias)
        extra = tuple(graph.initializers[i].fields["data"] if i in graph.initializers
                      and graph.initializers[i].layout == "dense" else None for i in node.inputs[2:])
        self._planned_layers.append((layer, dense_view_2d(stored.shape)[1], extra))
        return layer

    def _candidates(self) -> tuple[str, ...]:
        """The backends a node may run on: "auto" tries them fastest first (the GPU backends
        where a CUDA GPU is usable); an explicit backend falls back to the other GPU backend
        on the same device (for a GPU backend), then to the reference."""
        return registry.auto_order() if self.backend == "auto" else registry.fallback_order(self.backend)

    def _choose_backend(self, op: str, layout: str) -> str:
        candidates = self._candidates()
        for b in candidates:
            if registry.has_kernel(op, layout, b):
                return b
        raise ValueError(f"no available backend has a kernel for op {op!r} with layout {layout!r} "
                         f"(tried {', '.join(candidates)})")

    def _output_slot(self, name: str) -> int:
        if name not in self._slots or name not in {o.name for o in self._outputs}:
            raise ValueError(f"unknown output {name!r}; the model's outputs are: "
                             f"{', '.join(o.name for o in self._outputs)}")
        return self._slots[name]


class Step(NamedTuple):
    """One planned node: its kernel, the slots it reads and writes, the slots freed after it,
    and how errors name it ("node 'fc1' (Linear reading 'x', 'fc1.weight')")."""
    run: Callable[..., tuple]
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    frees: tuple[int, ...]
    where: str = ""


# Errors a kernel raises for what it was given (an index out of range, a shape it cannot take,
# an allocation that does not fit): re-raised by execute as the same built-in type with the node
# named, since a bare "index 5473 is out of bounds" does not say which input or layer it was.
_NAMED_ERRORS = (IndexError, ValueError, TypeError, OverflowError, MemoryError)


def step_name(node) -> str:
    ins = ", ".join(repr(i) for i in node.inputs if i)
    return f"node {node.name!r} ({node.op}{' reading ' + ins if ins else ''})"


def execute(steps: list, env: list, watch: frozenset = frozenset(), record: dict | None = None,
            times: list[list[float]] | None = None) -> None:
    """Run planned steps on ``env`` (slots), the one loop of run and profile: outputs landing
    in ``watch`` slots are also put in ``record`` (before a later step may free them);
    ``times`` (one list per step) receives each step's seconds."""
    k = 0
    try:
        if times is None and not watch:
            # the loop of every inference, kept lean: map() reads the inputs without a Python
            # frame of its own (a list comprehension is one), a single output is stored
            # directly (52 steps: 41 -> 24 us per run on Zen 3, hot caches)
            get = env.__getitem__
            for k, (run, ins, outs, frees, _) in enumerate(steps):
                results = run(*map(get, ins))
                if len(outs) == 1:
                    env[outs[0]] = results[0]
                else:
                    for s, r in zip(outs, results):
                        env[s] = r
                for s in frees:
                    env[s] = None
            return
        for k, (run, ins, outs, frees, _) in enumerate(steps):
            if times is not None:
                t0 = time.perf_counter()
                results = run(*[env[i] for i in ins])
                times[k].append(time.perf_counter() - t0)
            else:
                results = run(*[env[i] for i in ins])
            for s, r in zip(outs, results):
                env[s] = r
                if s in watch:
                    record[s] = r
            for s in frees:
                env[s] = None
    except _NAMED_ERRORS as e:
        base = next(c for c in type(e).__mro__ if c in _NAMED_ERRORS)
        raise base(f"{steps[k].where}: {e}") from e


def _check_backend(backend: str) -> str:
    if backend == "auto":
        return backend
    if backend not in registry.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {', '.join(registry.BACKENDS)}")
    reason = registry.backend_status(backend)
    if reason is not None:
        raise ValueError(f"backend {backend!r} is unavailable here: {reason}")
    return backend
