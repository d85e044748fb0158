"""ONNX -> qrt IR.

Steps, in order (each a small function below):
  1. read the ModelProto, check the opset (13..28) and that every op is importable; an
     unsupported model gets ONE error listing every unsupported op type with node names;
  2. translate node by node into IR ops (kernels/core/ops.py), turning constant axes inputs into
     attributes and ONNX type codes into numpy dtype names;
  3. simplify: drop Identity/Dropout, fold every node whose inputs are all constant
     (evaluated with the numpy reference kernels, so folding and running agree), fold Shape
     of statically known shapes, rewrite shape computations on symbolic dims (batch, seq)
     into constant Reshape targets (runtime/shape_fold.py), remove dead nodes;
  4. fuse the patterns exporters spell out op by op: MatMul/Gemm (+ bias Add) with a constant
     weight -> Linear, the erf form of GELU -> Gelu, a decomposed LayerNorm ->
     LayerNormalization, BatchNormalization after a Conv -> folded into the Conv weights.

onnx is imported lazily: loading and running a .qrt file never needs it.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from kernels import registry
from kernels.core.layouts import DTYPES, dense_tensor
from kernels.core.ops import OPS

from .errors import UnsupportedModelError
from .graph import Graph, Node, Value, unique_name
from .shape_fold import fold_symbolic_shapes

# 28: the newest opset of onnx 1.23, checked op by op against its schemas. Between 21 and 28
# the ops qrt imports changed only by types qrt does not take (bfloat16, float4/6/8, int2:
# refused as dtypes) or by attributes that concern only those (Cast round_mode, Range
# stash_type: refused as unknown attributes when set). Opset 23's Attention is not qrt's
# fused Attention (INTERNAL_OPS) and is refused by name.
MIN_OPSET, MAX_OPSET = 13, 28

# ONNX TensorProto element type -> numpy dtype name (only the ones qrt can hold).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}

# ONNX ops the importer understands: the IR vocabulary plus ops that disappear on import.
_IMPORT_ONLY = {"Constant", "Dropout"}
# qrt's own fused ops (runtime/fuse.py, kernels/core/ops.py): a node of that name in a model is
# someone else's op with other inputs and attributes (ONNX opset 23's Attention takes 3-D or
# 4-D Q/K/V, num_heads attributes, a KV cache...), never imported as ours.
INTERNAL_OPS = {"Linear": "qrt's fused Linear", "Attention": "qrt's fused Attention",
                "SkipLayerNormalization": "qrt's fused Add + LayerNormalization",
                "DisentangledAttention": "qrt's fused DeBERTa attention"}


def _onnx():
    try:
        import onnx  # noqa: F401
        from onnx import numpy_helper
        return onnx, numpy_helper
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("converting ONNX models needs the 'onnx' package: pip install onnx (or pip install -e '.[convert]' in the qrt checkout)") from e


def load_onnx_file(path: Any):
    """onnx.load, with the weights a model keeps in files beside it (external data: what
    torch.onnx.export's dynamo exporter writes for large models, model.onnx.data) checked
    first, so a .onnx copied without them is refused by name instead of with onnx's
    ValidationError from deep inside."""
    onnx, _ = _onnx()
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    p = os.fspath(path)
    model = onnx.load(p, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(p))
    wanted = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})
    missing = [w for w in wanted if not os.path.isfile(os.path.join(folder, w))]
    if missing:
        raise ValueError(f"{p!r} keeps its weights in {', '.join(repr(m) for m in missing)} beside it (ONNX "
                         f"external data, as torch.onnx.export's dynamo exporter writes it), which is not in "
                         f"{folder!r}: copy {'that file' if len(missing) == 1 else 'those files'} next to the "
                         f".onnx file")
    if wanted:
        onnx.load_external_data_for_model(model, folder)
    return model


def import_onnx(model: Any, *, name: str | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into a validated qrt Graph."""
    onnx, numpy_helper = _onnx()
    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    elif not isinstance(model, onnx.ModelProto):
        model = load_onnx_file(model)
    opset = _default_opset(model)
    g = model.graph
    _check_supported(g)

    consts: dict[str, np.ndarray] = {}
    for init in g.initializer:
        consts[init.name] = numpy_helper.to_array(init)
    init_names = set(consts)
    inputs = [_value_from_onnx(v) for v in g.input if v.name not in init_names]
    outputs = [_value_from_onnx(v) for v in g.output]

    b = _Builder(consts, opset, {v.name for v in outputs})
    for n in g.node:
        b.translate(n, numpy_helper)

    graph = Graph(name or g.name or "model", inputs, outputs, b.nodes, {}, {
        "source": "onnx", "opset": opset, "producer": f"{model.producer_name} {model.producer_version}".strip()})
    inferred = _inferred_shapes(model)
    _simplify(graph, b.consts, inferred)
    _fuse_linear(graph, b.consts)
    _fuse_gelu(graph, b.consts)
    _fuse_layernorm(graph, b.consts)
    _fold_batchnorm(graph, b.consts)
    if fold_symbolic_shapes(graph, b.consts):  # after fusing: fewer ops to reason about
        _simplify(graph, b.consts, inferred)   # newly constant shape values fold further
    _remove_dead(graph)
    # Only constants something still reads are stored; a graph output that is a constant
    # (an initializer listed as an output) is stored under its own name.
    used = {i for n in graph.nodes for i in n.inputs} | {o.name for o in graph.outputs}
    graph.initializers = {k: dense_tensor(k, _storable(v, k)) for k, v in b.consts.items() if k in used}
    graph.topological_sort()
    graph.validate()
    return graph


# --------------------------------------------------------------------------- reading -----

def _default_opset(model) -> int:
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
    if opset is None:
        raise UnsupportedModelError("the model imports no default-domain ONNX opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(f"the model uses ONNX opset {opset}; qrt imports opsets "
                                    f"{MIN_OPSET} to {MAX_OPSET} (convert it with "
                                    f"onnx.version_converter.convert_version first)")
    return opset


def _check_supported(g) -> None:
    bad: dict[str, list[str]] = {}
    for k, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx") or (n.op_type not in OPS and n.op_type not in _IMPORT_ONLY) \
                or n.op_type in INTERNAL_OPS:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            if key in INTERNAL_OPS:
                key += f" (the ONNX op, not {INTERNAL_OPS[key]}; not imported yet)"
            bad.setdefault(key, []).append(n.name or f"#{k}")
    if bad:
        lines = [f"  {op}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" for op, names in sorted(bad.items())]
        raise UnsupportedModelError(f"the model has {len(bad)} unsupported op type(s):\n" + "\n".join(lines))


def _inferred_shapes(model) -> dict[str, tuple]:
    """Shapes ONNX shape inference finds for intermediate values (static ones let Shape fold).
    Inference failing is not an error: folding just does less."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return {}
    out = {}
    for v in inferred.graph.value_info:
        try:
            val = _value_from_onnx(v)
        except UnsupportedModelError:
            continue
        if val.shape is not None:
            out[v.name] = val.shape
    return out


def _value_from_onnx(v) -> Value:
    tt = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"graph input/output {v.name!r} is not a tensor")
    dtype = _ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise UnsupportedModelError(f"graph input/output {v.name!r} has unsupported element type {tt.elem_type}")
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return Value(v.name, dtype, shape)


def _storable(a: np.ndarray, name: str) -> np.ndarray:
    if str(a.dtype) in DTYPES:
        return a
    raise UnsupportedModelError(f"constant {name!r} has dtype {a.dtype}, which qrt cannot store")


# ----------------------------------------------------------------------- translating -----

class _Builder:
    """Translates ONNX nodes into IR nodes; constants live in ``consts`` until the end."""

    def __init__(self, consts: dict[str, np.ndarray], opset: int, graph_outputs: set[str]):
        self.consts = consts
        self.opset = opset
        self.graph_outputs = graph_outputs
        self.nodes: list[Node] = []

    def const(self, name: str, what: str, node) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedModelError(f"node {node.name!r} ({node.op_type}): {what} must be a constant "
                                        f"(it is computed at run time from {name!r})")
        return self.consts[name]

    def translate(self, n, numpy_helper) -> None:
        import onnx
        op = n.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        ins, outs = list(n.input), list(n.output)
        while ins and ins[-1] == "":
            ins.pop()
        name = n.name or f"{op}_{len(self.nodes)}"

        def emit(op2, inputs, a=None, outputs=None):
            node = Node(name, op2, list(inputs), list(outputs or outs), a or {})
            present = [i for i in node.inputs if i]
            if present and all(i in self.consts for i in present) and not set(node.outputs) & self.graph_outputs:
                # fold right away, so a later node whose axes/sizes input is computed from
                # constants (Cast, Concat of Constants...) sees it as a constant
                for o, v in zip(node.outputs, _evaluate(node, [self.consts[i] if i else None for i in node.inputs])):
                    self.consts[o] = np.asarray(v)
            else:
                self.nodes.append(node)

        if op == "Constant":
            self.consts[outs[0]] = _constant_value(n, attrs, numpy_helper)
        elif op == "Dropout":
            if len(ins) >= 3 and ins[2] and (ins[2] not in self.consts or bool(self.consts[ins[2]])):
                raise UnsupportedModelError(f"node {name!r}: Dropout in training mode")
            if len(outs) > 1 and outs[1]:
                raise UnsupportedModelError(f"node {name!r}: Dropout mask output is used")
            emit("Identity", ins[:1], outputs=outs[:1])
        elif op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes")
            if len(ins) > 1:
                axes = [int(x) for x in self.const(ins[1], "axes", n).reshape(-1)]
            emit(op, ins[:1], {"axes": None if axes is None else list(axes)})
        elif op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
            axes = attrs.get("axes")
            if len(ins) > 1:
                axes = [int(x) for x in self.const(ins[1], "axes", n).reshape(-1)]
            emit(op, ins[:1], {"axes": None if axes is None else list(axes),
                               "keepdims": int(attrs.get("keepdims", 1)),
                               "noop_with_empty_axes": int(attrs.get("noop_with_empty_axes", 0))})
        elif op == "Split":
            split = attrs.get("split")
            if len(ins) > 1:
                split = [int(x) for x in self.const(ins[1], "split", n).reshape(-1)]
            emit(op, ins[:1], {"axis": int(attrs.get("axis", 0)),
                               "split": None if split is None else list(split), "num_outputs": len(outs)})
        elif op == "Cast":
            to = _ONNX_DTYPES.get(attrs["to"])
            if to is None:
                raise UnsupportedModelError(f"node {name!r}: Cast to ONNX type {attrs['to']} is not supported")
            emit(op, ins, {"to": to})
        elif op == "ConstantOfShape":
            value, dtype = 0.0, "float32"
            if "value" in attrs:
                v = numpy_helper.to_array(attrs["value"]).reshape(-1)
                value, dtype = v[0].item(), str(v.dtype)
            emit(op, ins, {"value": value, "dtype": dtype})
        elif op in ("LayerNormalization", "BatchNormalization", "MaxPool"):
            if any(outs[1:]):
                raise UnsupportedModelError(f"node {name!r}: {op} optional outputs (statistics/indices) are used")
            if op == "BatchNormalization" and attrs.get("training_mode", 0):
                raise UnsupportedModelError(f"node {name!r}: BatchNormalization in training mode")
            keep = {"LayerNormalization": ("axis", "epsilon"), "BatchNormalization": ("epsilon",),
                    "MaxPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode")}[op]
            a = {k: attrs[k] for k in keep if k in attrs}
            if op == "MaxPool":
                a = _explicit_pads(name, attrs, a)
                if attrs.get("storage_order", 0):
                    raise UnsupportedModelError(f"node {name!r}: MaxPool storage_order=1")
            emit(op, ins, a, outputs=outs[:1])
        elif op in ("Conv", "AveragePool"):
            if op == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
                raise UnsupportedModelError(f"node {name!r}: AveragePool with dilations {attrs['dilations']}")
            keep = {"Conv": ("strides", "pads", "dilations", "group"),
                    "AveragePool": ("kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad")}[op]
            a = _explicit_pads(name, attrs, {k: attrs[k] for k in keep if k in attrs})
            emit(op, ins, a)
        elif op == "Gelu":
            emit(op, ins, {"approximate": attrs.get("approximate", "none")})
        else:
            allowed = OPS[op].attrs
            dropped = set(attrs) - set(allowed)
            if dropped - {"stash_type"}:
                raise UnsupportedModelError(f"node {name!r} ({op}): attributes {sorted(dropped)} are not supported")
            emit(op, ins, {k: v for k, v in attrs.items() if k in allowed})


def _explicit_pads(name: str, attrs: dict, a: dict) -> dict:
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        if auto == "VALID":
            a.pop("pads", None)
        return a
    raise UnsupportedModelError(f"node {name!r}: auto_pad={auto} is not supported; export with explicit pads")


def _constant_value(n, attrs: dict, numpy_helper) -> np.ndarray:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], np.int64)
    raise UnsupportedModelError(f"Constant node {n.name!r}: only tensor/float/int values are supported")


# ----------------------------------------------------------------------- simplifying -----

def _evaluate(node: Node, args: list) -> tuple:
    """Run ``node`` on constant inputs with the reference kernel (constant folding)."""
    try:
        factory = registry.lookup(node.op, "dense", "reference")
        return factory(registry.fill_attrs(node.op, node.attrs), {})(*args)
    except Exception as e:
        shapes = ", ".join("None" if a is None else f"{a.dtype}{list(a.shape)}" for a in args)
        raise UnsupportedModelError(f"node {node.name!r} ({node.op}) fails on its constant inputs "
                                    f"({shapes}): {type(e).__name__}: {e}") from e


def _rename(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def _is_static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)


def _simplify(graph: Graph, consts: dict[str, np.ndarray], inferred: dict[str, tuple]) -> None:
    """Drop identities, fold constant subgraphs and static Shape ops, in one forward pass."""
    out_names = {v.name for v in graph.outputs}
    static_shapes = {v.name: v.shape for v in graph.inputs if _is_static(v.shape)}
    static_shapes.update({k: s for k, s in inferred.items() if _is_static(s)})
    in_names = {v.name for v in graph.inputs}
    producers = graph.producers()
    kept: list[Node] = []
    for n in graph.nodes:
        # a Concat of one input is that input (GPT-2's key / value cache, exported without a
        # past: Concat(k) along the sequence axis)
        identity = n.op == "Identity" or (n.op == "Concat" and len([i for i in n.inputs if i]) == 1)
        if identity and n.inputs[0] and n.outputs[0] not in out_names:
            _rename(graph, n.outputs[0], n.inputs[0])
            continue
        src = n.inputs[0] if identity else None
        if src and src in producers and src not in out_names and src not in in_names and src not in consts:
            # Identity onto a graph output (exporters' Dropout/Identity tails): let the
            # producer write the graph output directly
            p = producers[src]
            p.outputs = [n.outputs[0] if o == src else o for o in p.outputs]
            _rename(graph, src, n.outputs[0])
            producers[n.outputs[0]] = p
            continue
        if n.op == "Shape" and n.inputs[0] in static_shapes:
            full = np.array(static_shapes[n.inputs[0]], np.int64)
            consts[n.outputs[0]] = _shape_slice(full, n.attrs)
            continue
        present = [i for i in n.inputs if i]
        if present and all(i in consts for i in present) and not any(o in out_names for o in n.outputs):
            args = [consts[i] if i else None for i in n.inputs]
            for o, v in zip(n.outputs, _evaluate(n, args)):
                consts[o] = np.asarray(v)
            continue
        if n.op == "Shape" and n.inputs[0] in consts:
            consts[n.outputs[0]] = _shape_slice(np.array(consts[n.inputs[0]].shape, np.int64), n.attrs)
            continue
        kept.append(n)
    graph.nodes = kept


def _shape_slice(full: np.ndarray, attrs: dict) -> np.ndarray:
    start, end = attrs.get("start", 0), attrs.get("end")
    return np.asarray(full[start:end] if end is not None else full[start:], np.int64)


def _remove_dead(graph: Graph) -> None:
    live = {v.name for v in graph.outputs}
    kept = []
    for n in reversed(graph.nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(i for i in n.inputs if i)
    graph.nodes = kept[::-1]


# --------------------------------------------------------------------------- fusing ------

def _single_consumer(graph: Graph, value: str) -> Node | None:
    users = graph.consumers().get(value, [])
    if len(users) == 1 and value not in {v.name for v in graph.outputs}:
        return users[0]
    return None


def _scalar(consts: dict, name: str) -> float | None:
    a = consts.get(name)
    if a is None or a.size != 1 or a.dtype.kind != "f":
        return None
    return float(a.reshape(-1)[0])


def _fuse_linear(graph: Graph, consts: dict) -> None:
    """MatMul(x, W const 2-D) [+ Add(bias)] and Gemm(A, B const) -> Linear(x, W.T, bias).

    Linear stores the weight (N, K) (row n = the K input weights of output n) because every
    GEMM kernel in qrt, dense or packed, walks a weight row per output."""
    taken = {o for n in graph.nodes for o in n.outputs} | set(consts) | {v.name for v in graph.inputs}
    new_nodes: list[Node] = []
    fused_adds: set[int] = set()
    transposed: dict[tuple, str] = {}
    for n in graph.nodes:
        if id(n) in fused_adds:
            continue
        weight = bias = None
        if n.op == "MatMul" and n.inputs[1] in consts and consts[n.inputs[1]].ndim == 2 \
                and consts[n.inputs[1]].dtype == np.float32 and n.inputs[0] not in consts:
            weight = np.ascontiguousarray(consts[n.inputs[1]].T)
        elif n.op == "Gemm" and n.inputs[1] in consts and not n.attrs.get("transA", 0) \
                and consts[n.inputs[1]].dtype == np.float32:
            b = consts[n.inputs[1]]
            weight = np.ascontiguousarray((b if n.attrs.get("transB", 0) else b.T) * np.float32(n.attrs.get("alpha", 1.0)))
            if len(n.inputs) > 2 and n.inputs[2]:
                if n.inputs[2] not in consts:
                    new_nodes.append(n)
                    continue
                c = consts[n.inputs[2]] * np.float32(n.attrs.get("beta", 1.0))
                if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                    new_nodes.append(n)   # a per-row bias is not a Linear; keep the Gemm
                    continue
                bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)).astype(np.float32)
        if weight is None:
            new_nodes.append(n)
            continue
        out = n.outputs[0]
        if bias is None:
            add = _single_consumer(graph, out)
            if add is not None and add.op == "Add":
                other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
                c = consts.get(other)
                if c is not None and c.dtype == np.float32 and c.ndim <= 1 and c.size in (1, weight.shape[0]):
                    bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)).astype(np.float32)
                    fused_adds.add(id(add))
                    out = add.outputs[0]
        # a weight shared by several MatMuls (tied weights) is transposed and stored once
        key = (n.inputs[1], n.op, n.attrs.get("transB", 0), n.attrs.get("alpha", 1.0))
        wname = transposed.get(key)
        if wname is None:
            wname = transposed[key] = unique_name(f"{n.name}.weight", taken)
            taken.add(wname)
            consts[wname] = weight
        inputs = [n.inputs[0], wname]
        if bias is not None:
            bname = unique_name(f"{n.name}.bias", taken)
            taken.add(bname)
            consts[bname] = np.ascontiguousarray(bias)
            inputs.append(bname)
        new_nodes.append(Node(n.name, "Linear", inputs, [out], {}))
    graph.nodes = new_nodes


def _fuse_gelu(graph: Graph, consts: dict) -> None:
    """0.5 * x * (1 + erf(x / sqrt(2))) -> Gelu(x), and 0.5 * x * (1 + tanh(sqrt(2 / pi) *
    (x + 0.044715 * x^3))) -> Gelu(x, approximate="tanh") (GPT-2's gelu_new), in any
    association of the two outer Muls."""
    producers = graph.producers()
    remove: set[int] = set()
    replace: dict[int, Node] = {}
    for inner in graph.nodes:
        if inner.op == "Erf":
            found, approximate = _erf_argument(graph, producers, consts, inner), "none"
        elif inner.op == "Tanh":
            found, approximate = _tanh_argument(graph, producers, consts, inner), "tanh"
        else:
            continue
        if found is None:
            continue
        x, pre = found
        add = _single_consumer(graph, inner.outputs[0])
        if add is None or add.op != "Add" or _scalar(consts, _other(add, inner.outputs[0])) != 1.0:
            continue
        m1 = _single_consumer(graph, add.outputs[0])
        if m1 is None or m1.op != "Mul":
            continue
        other = _other(m1, add.outputs[0])
        m2 = _single_consumer(graph, m1.outputs[0])
        half = producers.get(other)
        if other == x and m2 is not None and m2.op == "Mul" and _scalar(consts, _other(m2, m1.outputs[0])) == 0.5:
            chain, final = [*pre, inner, add, m1, m2], m2         # (x * (1 + f)) * 0.5
        elif _scalar(consts, other) == 0.5 and m2 is not None and m2.op == "Mul" and _other(m2, m1.outputs[0]) == x:
            chain, final = [*pre, inner, add, m1, m2], m2         # x * ((1 + f) * 0.5)
        elif half is not None and half.op == "Mul" and x in half.inputs and _scalar(consts, _other(half, x)) == 0.5 \
                and _single_consumer(graph, half.outputs[0]) is m1:
            chain, final = [*pre, inner, add, half, m1], m1       # (x * 0.5) * (1 + f)
        else:
            continue
        remove.update(id(k) for k in chain)
        replace[id(final)] = Node(final.name, "Gelu", [x], [final.outputs[0]], {"approximate": approximate})
    graph.nodes = [replace.get(id(n), n) for n in graph.nodes if id(n) not in remove or id(n) in replace]


def _erf_argument(graph: Graph, producers: dict, consts: dict, erf: Node) -> tuple[str, list[Node]] | None:
    """Erf's input is x / sqrt(2) (or x * (1 / sqrt(2))), read by Erf alone: (x, [that node])."""
    pre = producers.get(erf.inputs[0])
    if pre is None or pre.op not in ("Div", "Mul") or _single_consumer(graph, pre.outputs[0]) is not erf:
        return None
    c = _scalar(consts, pre.inputs[1])
    if not c or not math.isclose(c if pre.op == "Div" else 1.0 / c, math.sqrt(2.0), rel_tol=1e-3):
        return None
    return pre.inputs[0], [pre]


def _tanh_argument(graph: Graph, producers: dict, consts: dict, tanh: Node) -> tuple[str, list[Node]] | None:
    """Tanh's input is sqrt(2 / pi) * (x + 0.044715 * Pow(x, 3)), each intermediate read by the
    next node alone (the constants to 1e-3): (x, [Pow, Mul, Add, Mul])."""
    def scaled(value: str, c: float) -> str | None:     # value = c * t: t
        mul = producers.get(value)
        if mul is None or mul.op != "Mul":
            return None
        for a, b in (mul.inputs, mul.inputs[::-1]):
            k = _scalar(consts, b)
            if k is not None and math.isclose(k, c, rel_tol=1e-3):
                return a
        return None
    outer = producers.get(tanh.inputs[0])
    inner = scaled(tanh.inputs[0], math.sqrt(2.0 / math.pi))
    add = producers.get(inner) if inner is not None else None
    if add is None or add.op != "Add" or _single_consumer(graph, outer.outputs[0]) is not tanh \
            or _single_consumer(graph, add.outputs[0]) is not outer:
        return None
    for x, term in (add.inputs, add.inputs[::-1]):
        cube = scaled(term, 0.044715)
        mul, pow_ = producers.get(term), producers.get(cube) if cube is not None else None
        if (pow_ is not None and pow_.op == "Pow" and pow_.inputs[0] == x and _scalar(consts, pow_.inputs[1]) == 3.0
                and _single_consumer(graph, pow_.outputs[0]) is mul and _single_consumer(graph, term) is add):
            return x, [pow_, mul, add, outer]
    return None


def _other(node: Node, name: str) -> str:
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def _fuse_layernorm(graph: Graph, consts: dict) -> None:
    """ReduceMean/Sub/Pow 2/ReduceMean/Add eps/Sqrt/Div [Mul gamma][Add beta] over the last
    axis -> LayerNormalization (the form torch exports below opset 17)."""
    producers = graph.producers()
    remove: set[int] = set()
    replace: dict[int, Node] = {}
    taken = set(consts) | {o for n in graph.nodes for o in n.outputs}
    for sub in graph.nodes:
        if sub.op != "Sub":
            continue
        x, mean = sub.inputs
        rm1 = producers.get(mean)
        if rm1 is None or rm1.op != "ReduceMean" or rm1.inputs[0] != x or rm1.attrs.get("axes") != [-1] \
                or not rm1.attrs.get("keepdims", 1):
            continue
        users = graph.consumers().get(sub.outputs[0], [])
        pow_ = next((u for u in users if u.op == "Pow" and _scalar(consts, u.inputs[1]) == 2.0), None)
        div = next((u for u in users if u.op == "Div" and u.inputs[0] == sub.outputs[0]), None)
        if pow_ is None or div is None or len(users) != 2:
            continue
        rm2 = _single_consumer(graph, pow_.outputs[0])
        if rm2 is None or rm2.op != "ReduceMean" or rm2.attrs.get("axes") != [-1]:
            continue
        add = _single_consumer(graph, rm2.outputs[0])
        eps = _scalar(consts, _other(add, rm2.outputs[0])) if add is not None and add.op == "Add" else None
        sqrt = _single_consumer(graph, add.outputs[0]) if eps is not None else None
        if sqrt is None or sqrt.op != "Sqrt" or _single_consumer(graph, sqrt.outputs[0]) is not div \
                or div.inputs[1] != sqrt.outputs[0]:
            continue
        chain = [rm1, sub, pow_, rm2, add, sqrt, div]
        if len(graph.consumers().get(mean, [])) != 1:
            continue
        gamma = beta = None
        out = div.outputs[0]
        mul = _single_consumer(graph, out)
        if mul is not None and mul.op == "Mul" and _other(mul, out) in consts and consts[_other(mul, out)].ndim == 1:
            gamma = consts[_other(mul, out)]
            chain.append(mul)
            out = mul.outputs[0]
            add2 = _single_consumer(graph, out)
            if add2 is not None and add2.op == "Add" and _other(add2, out) in consts \
                    and consts[_other(add2, out)].shape == gamma.shape:
                beta = consts[_other(add2, out)]
                chain.append(add2)
                out = add2.outputs[0]
        if gamma is None:
            continue  # without gamma the width is unknown here; leave the ops as they are
        gname = unique_name(f"{sub.name}.ln_scale", taken)
        taken.add(gname)
        consts[gname] = gamma.astype(np.float32)
        inputs = [x, gname]
        if beta is not None:
            bname = unique_name(f"{sub.name}.ln_bias", taken)
            taken.add(bname)
            consts[bname] = beta.astype(np.float32)
            inputs.append(bname)
        for k in chain:
            remove.add(id(k))
        last = chain[-1]
        replace[id(last)] = Node(last.name, "LayerNormalization", inputs, [out], {"axis": -1, "epsilon": eps})
    graph.nodes = [replace.get(id(n), n) for n in graph.nodes if id(n) not in remove or id(n) in replace]


def _fold_batchnorm(graph: Graph, consts: dict) -> None:
    """Conv -> BatchNormalization (constant statistics) becomes one Conv with scaled weights:
    w' = w * s[:, None...], b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    producers = graph.producers()
    remove: set[int] = set()
    taken = set(consts) | {o for n in graph.nodes for o in n.outputs}
    for bn in graph.nodes:
        if bn.op != "BatchNormalization":
            continue
        conv = producers.get(bn.inputs[0])
        if conv is None or conv.op != "Conv" or conv.inputs[1] not in consts \
                or _single_consumer(graph, conv.outputs[0]) is not bn \
                or not all(i in consts for i in bn.inputs[1:]):
            continue
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in bn.inputs[1:])
        s = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        w = consts[conv.inputs[1]].astype(np.float64)
        b = consts[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(w.shape[0])
        wname = unique_name(f"{conv.name}.weight_bn", taken)
        bname = unique_name(f"{conv.name}.bias_bn", taken)
        taken.update((wname, bname))
        consts[wname] = (w * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        consts[bname] = ((b - mean) * s + beta).astype(np.float32)
        conv.inputs = [conv.inputs[0], wname, bname]
        conv.outputs = [bn.outputs[0]]
        remove.add(id(bn))
    graph.nodes = [n for n in graph.nodes if id(n) not in remove]
