"""Evaluate a dense fp32 qrt graph with PyTorch ops, so the converter can train it.

``OPS`` is one table like the reference kernels (kernels/reference): op name ->
``fn(attrs, *inputs) -> tuple of torch.Tensor``, ``attrs`` the node's attributes with the
op's defaults filled in (kernels/core/ops.py), absent optional inputs None. Each entry computes
what the op's ``*_ref`` function computes, in the inputs' dtype (float32 here, where the
reference works in float64 and rounds once: results agree to float32 rounding, a few ulps per
op), and is differentiable where the op is. Shape-like inputs (Reshape's shape, Slice's
starts...) are read into Python ints, as the reference does.

``TorchGraph`` holds a graph's initializers as torch tensors (the trainable ones as
``torch.nn.Parameter``) and runs the nodes in their stored (topological) order. Only dense
graphs: the converter trains before it quantizes and packs, so a packed layout here is a
caller's mistake, reported as such.

torch is optional: it is imported when a TorchGraph is built, never at module import.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kernels.core.ops import op_spec
from kernels.reference.shape_ops import slice_bounds
from kernels.registry import fill_attrs

from ..graph import Graph

TORCH_PIN = "torch==2.13.0"


def import_torch():
    """torch, or ImportError saying how to install it (it is an optional dependency)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"training a qrt graph (distillation recovery) needs PyTorch: pip install {TORCH_PIN}") from e
    return torch


# numpy dtype name (the IR's dtype vocabulary, Cast's 'to') -> torch dtype; filled on first use
_TORCH_DTYPES: dict[str, Any] = {}


def torch_dtype(name: str):
    torch = import_torch()
    if not _TORCH_DTYPES:
        _TORCH_DTYPES.update({
            "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
            "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
            "int64": torch.int64, "bool": torch.bool, "uint16": torch.uint16, "uint32": torch.uint32,
            "uint64": torch.uint64})
    try:
        return _TORCH_DTYPES[str(np.dtype(name))]
    except (KeyError, TypeError):
        raise ValueError(f"dtype {name!r} has no torch equivalent here") from None


def as_tensor(a):
    """A numpy array (or anything array-like) as a torch tensor; a torch tensor as is.
    Read-only arrays (memmapped initializers, reference outputs) are copied: torch tensors
    are writable and torch.from_numpy refuses to alias read-only memory silently."""
    torch = import_torch()
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, order="C")
    return torch.from_numpy(a)


# --------------------------------------------------------------------------- helpers ----

def _ints(t) -> list[int]:
    """A 1-D integer tensor (shape-like input) as Python ints."""
    if t is None:
        return []
    return [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for a rank-{rank} tensor")
    return axis + rank if axis < 0 else axis


def _is_float(t) -> bool:
    return t.dtype.is_floating_point


def _is_int(t) -> bool:
    import torch
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _one(fn: Callable) -> Callable:
    """An entry that returns one tensor, wrapped to return the 1-tuple every entry returns."""
    def entry(attrs, *xs):
        return (fn(attrs, *xs),)
    entry.__name__ = fn.__name__
    entry.__doc__ = fn.__doc__
    return entry


OPS: dict[str, Callable[..., tuple]] = {}


def _op(*names: str):
    def deco(fn):
        for n in names:
            op_spec(n)            # KeyError for a name the IR does not know: the table stays honest
            OPS[n] = _one(fn)
        return fn
    return deco


def _op_multi(name: str):
    def deco(fn):
        op_spec(name)
        OPS[name] = fn
        return fn
    return deco


# --------------------------------------------------------------------- element-wise -----

@_op("Add")
def _add(a, x, y):
    return x + y


@_op("Sub")
def _sub(a, x, y):
    return x - y


@_op("Mul")
def _mul(a, x, y):
    return x * y


@_op("Div")
def _div(a, x, y):
    """Integer division truncates toward zero; integer division by zero gives 0 (as the ref)."""
    import torch
    if not _is_int(x):
        return x / y
    zero = y == 0
    q = torch.div(x, torch.where(zero, torch.ones_like(y), y), rounding_mode="trunc")
    return torch.where(zero, torch.zeros_like(q), q)


@_op("Mod")
def _mod(a, x, y):
    """fmod=0: sign of the divisor (Python %); fmod=1: sign of the dividend (C fmod)."""
    import torch
    if _is_int(x):
        zero = y == 0
        y1 = torch.where(zero, torch.ones_like(y), y)
        r = torch.fmod(x, y1) if a.get("fmod", 0) else torch.remainder(x, y1)
        return torch.where(zero, torch.zeros_like(r), r)
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


@_op("Pow")
def _pow(a, x, y):
    """Float base: in the base's dtype. Integer base: exact for a non-negative integer
    exponent, else the float64 power truncated toward zero (the ref's rule)."""
    import torch
    if _is_float(x):
        return torch.pow(x, y.to(x.dtype) if _is_float(y) else y).to(x.dtype)
    via_float = torch.trunc(torch.pow(x.double(), y.double())).to(x.dtype)
    if not _is_int(y):
        return via_float
    exact = torch.pow(x, torch.clamp(y, min=0).to(x.dtype))
    return torch.where(y >= 0, exact, via_float)


@_op("Equal")
def _equal(a, x, y):
    return x == y


@_op("Greater")
def _greater(a, x, y):
    return x > y


@_op("GreaterOrEqual")
def _greater_or_equal(a, x, y):
    return x >= y


@_op("Less")
def _less(a, x, y):
    return x < y


@_op("LessOrEqual")
def _less_or_equal(a, x, y):
    return x <= y


@_op("And")
def _and(a, x, y):
    import torch
    return torch.logical_and(x, y)


@_op("Or")
def _or(a, x, y):
    import torch
    return torch.logical_or(x, y)


@_op("Xor")
def _xor(a, x, y):
    import torch
    return torch.logical_xor(x, y)


@_op("IsNaN")
def _is_nan(a, x):
    import torch
    return torch.isnan(x)


@_op("Not")
def _not(a, x):
    import torch
    return torch.logical_not(x)


def _variadic(name: str, pair: Callable) -> None:
    """Max / Min / Sum: ``pair`` (torch) folded over the inputs, left to right."""
    def run(a, *xs):
        import functools

        import torch
        return functools.reduce(lambda x, y: pair(torch, x, y), xs)
    _op(name)(run)


_variadic("Max", lambda torch, x, y: torch.maximum(x, y))
_variadic("Min", lambda torch, x, y: torch.minimum(x, y))
_variadic("Sum", lambda torch, x, y: x + y)


# Elementwise ops that are one torch function of a float tensor (the reference's numpy
# function of the same name): the tensor method of that name.
_UNARY = {"Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Erf": "erf",
          "Sigmoid": "sigmoid", "Tanh": "tanh", "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil"}
for _name, _fn in _UNARY.items():
    _op(_name)(lambda a, x, _fn=_fn: getattr(x, _fn)())


@_op("Relu")
def _relu(a, x):
    import torch
    return torch.relu(x) if _is_float(x) else torch.clamp(x, min=0)


@_op("Identity")
def _identity(a, x):
    return x


_GELU = {"none": "none", "tanh": "tanh"}


@_op("Gelu")
def _gelu(a, x):
    """erf form, or the tanh form when approximate='tanh' (torch's formulas are the ref's)."""
    import torch.nn.functional as F
    approx = a.get("approximate", "none")
    if approx not in _GELU:
        raise ValueError(f"Gelu: approximate must be one of {tuple(_GELU)}, got {approx!r}")
    return F.gelu(x, approximate=_GELU[approx])


@_op("Sign")
def _sign(a, x):
    import torch
    return torch.sign(x)


@_op("HardSigmoid")
def _hard_sigmoid(a, x):
    import torch
    return torch.clamp(x * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0.0, 1.0)


@_op("HardSwish")
def _hard_swish(a, x):
    import torch
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@_op("CumSum")
def _cum_sum(a, x, axis):
    import torch
    ax = int(axis.reshape(-1)[0])
    y = torch.flip(x, [ax]) if a.get("reverse", 0) else x
    s = torch.cumsum(y, ax)
    if a.get("exclusive", 0):
        s = s - y
    return torch.flip(s, [ax]) if a.get("reverse", 0) else s


@_op("LeakyRelu")
def _leaky_relu(a, x):
    import torch
    return torch.where(x >= 0, x, x * float(a.get("alpha", 0.01)))


@_op("Clip")
def _clip(a, x, lo=None, hi=None):
    """max then min, as the ref: lo > hi gives hi everywhere."""
    import torch
    y = x
    if lo is not None:
        y = torch.maximum(y, lo.to(x.dtype).reshape(()))
    if hi is not None:
        y = torch.minimum(y, hi.to(x.dtype).reshape(()))
    return y


@_op("Cast")
def _cast(a, x):
    """Float -> int truncates toward zero, anything -> bool is x != 0 (torch's .to, as numpy)."""
    return x.to(torch_dtype(a["to"]))


@_op("Where")
def _where(a, cond, x, y):
    import torch
    return torch.where(cond.to(torch.bool), x, y)


# ----------------------------------------------------------- reductions and norms -------

def _reduce_dims(x, a) -> tuple[int, ...] | None:
    axes = a.get("axes")
    if axes is None or len(axes) == 0:
        return None if a.get("noop_with_empty_axes", 0) else tuple(range(x.ndim))
    dims = tuple(sorted(_axis(d, x.ndim, "reduction axis") for d in axes))
    if len(set(dims)) != len(dims):
        raise ValueError(f"reduction axes {list(axes)} repeat an axis")
    return dims


@_op("ReduceSum")
def _reduce_sum(a, x):
    import torch
    dims = _reduce_dims(x, a)
    if dims is None:
        return x
    return torch.sum(x, dim=dims, keepdim=bool(a.get("keepdims", 1)), dtype=x.dtype)


@_op("ReduceMean")
def _reduce_mean(a, x):
    """Integer means truncate toward zero (the ref's C integer division)."""
    import torch
    dims = _reduce_dims(x, a)
    if dims is None or not dims:
        return x
    keep = bool(a.get("keepdims", 1))
    if _is_float(x):
        return torch.mean(x, dim=dims, keepdim=keep)
    count = max(math.prod(x.shape[d] for d in dims), 1)
    total = torch.sum(x.to(torch.int64), dim=dims, keepdim=keep)
    return torch.div(total, count, rounding_mode="trunc").to(x.dtype)


@_op("ReduceMax")
def _reduce_max(a, x):
    import torch
    dims = _reduce_dims(x, a)
    if dims is None or not dims:
        return x
    keep = bool(a.get("keepdims", 1))
    if x.dtype == torch.bool:
        return x.to(torch.uint8).amax(dims, keep).bool()
    return torch.amax(x, dim=dims, keepdim=keep)


@_op("ReduceMin")
def _reduce_min(a, x):
    import torch
    dims = _reduce_dims(x, a)
    if dims is None or not dims:
        return x
    keep = bool(a.get("keepdims", 1))
    if x.dtype == torch.bool:
        return x.to(torch.uint8).amin(dims, keep).bool()
    return torch.amin(x, dim=dims, keepdim=keep)


@_op("Softmax")
def _softmax(a, x):
    import torch
    return torch.softmax(x, dim=_axis(a.get("axis", -1), x.ndim))


def _layer_norm(x, scale, bias, axis: int, eps: float):
    import torch.nn.functional as F
    axis = _axis(axis, x.ndim)
    d = tuple(x.shape[axis:])
    # F.layer_norm wants the affine parameters shaped exactly D; the op allows any shape that
    # broadcasts to D (a Parameter stays a leaf through expand, so its gradient is right)
    w = scale if tuple(scale.shape) == d else scale.expand(d)
    b = None if bias is None else (bias if tuple(bias.shape) == d else bias.expand(d))
    return F.layer_norm(x, d, w, b, float(eps))


@_op("LayerNormalization")
def _layer_normalization(a, x, scale, bias=None):
    """Biased variance over axes [axis, rank), epsilon inside the square root (as the ref)."""
    return _layer_norm(x, scale, bias, a.get("axis", -1), a.get("epsilon", 1e-5))


@_op("SkipLayerNormalization")
def _skip_layer_normalization(a, x, skip, scale, bias=None):
    return _layer_norm(x + skip, scale, bias, -1, a.get("epsilon", 1e-5))


@_op("BatchNormalization")
def _batch_normalization(a, x, scale, bias, mean, var):
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)

    def ch(p):
        return p.reshape(per_channel)
    return (x - ch(mean)) / (ch(var) + float(a.get("epsilon", 1e-5))).sqrt() * ch(scale) + ch(bias)


# --------------------------------------------------------------------- GEMM-like --------

def _epilogue(y, a):
    """Linear/Conv's fused ``activation`` (set by runtime/fuse.py; "none" on imported graphs)."""
    import torch
    import torch.nn.functional as F
    act = a.get("activation", "none")
    if act == "none":
        return y
    if act == "relu":
        return torch.relu(y)
    if act in ("gelu", "gelu_tanh"):
        return F.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")
    if act == "hard_swish":
        return F.hardswish(y)
    raise ValueError(f"unknown activation {act!r}")


def _float_activations(op: str, a) -> None:
    if a.get("act_quant", "none") != "none":
        raise ValueError(f"{op} with act_quant={a['act_quant']!r}: torch_eval runs dense fp32 graphs "
                         "(train before quantizing)")


@_op("MatMul")
def _matmul(a, x, y):
    import torch
    return torch.matmul(x, y)


@_op("Linear")
def _linear(a, x, weight, bias=None):
    """y = x @ weight.T + bias; x (..., K), weight (N, K), bias (N,); y (..., N)."""
    import torch.nn.functional as F
    _float_activations("Linear", a)
    if weight.ndim != 2 or tuple(x.shape[-1:]) != tuple(weight.shape[1:]):
        raise ValueError(f"Linear: X {tuple(x.shape)} and weight {tuple(weight.shape)} do not match "
                         "(need X (..., K), weight (N, K))")
    return _epilogue(F.linear(x, weight, bias), a)


@_op("Gemm")
def _gemm(a, x, y, c=None):
    x2 = x.T if a.get("transA", 0) else x
    y2 = y.T if a.get("transB", 0) else y
    out = float(a.get("alpha", 1.0)) * (x2 @ y2)
    if c is not None:
        out = out + float(a.get("beta", 1.0)) * c
    return out


def _heads(a, q, k, v):
    """q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv) split into heads: (B, H, Sq, D),
    (B, H, Sk, D), (B, H, Sk, Dv)."""
    d = int(a["head_dim"])
    b, sq, qd = q.shape
    sk = k.shape[1]
    h = qd // d
    dv = v.shape[2] // h
    return (q.reshape(b, sq, h, d).transpose(1, 2), k.reshape(b, sk, h, d).transpose(1, 2),
            v.reshape(b, sk, h, dv).transpose(1, 2))


def _merge_heads(y):
    """(B, H, Sq, Dv) -> (B, Sq, H*Dv)."""
    b, h, sq, dv = y.shape
    return y.transpose(1, 2).reshape(b, sq, h * dv)


@_op("Attention")
def _attention(a, q, k, v, mask=None):
    """Per head softmax(scale * q_h k_h^T + mask) v_h; q (B, Sq, H*D), k (B, Sk, H*D),
    v (B, Sk, H*Dv), mask broadcastable to (B, H, Sq, Sk); y (B, Sq, H*Dv)."""
    import torch
    qh, kh, vh = _heads(a, q, k, v)
    s = (qh @ kh.transpose(-1, -2)) * float(a["scale"])
    if mask is not None:
        s = s + mask
    p = torch.softmax(s, dim=-1)
    if a.get("nan_to_zero", 0):
        p = torch.where(torch.isnan(p), torch.zeros_like(p), p)
    return _merge_heads(p @ vh)


@_op("DisentangledAttention")
def _disentangled_attention(a, q, k, v, mask=None, pos_key=None, c2p_index=None, pos_query=None, p2c_index=None):
    """Attention with DeBERTa's relative-position terms in the scores (kernels/reference/fused.py):
    s = q_i.k_j + q_i.pos_key[h, c2p[i, j]] + k_j.pos_query[h, p2c[j, i]], then as Attention."""
    import torch
    qh, kh, vh = _heads(a, q, k, v)
    b, h, sq, _ = qh.shape
    sk = kh.shape[2]
    s = qh @ kh.transpose(-1, -2)
    if pos_key is not None:
        idx = c2p_index.reshape(sq, sk).long().expand(b, h, sq, sk)
        s = s + torch.gather(qh @ pos_key.transpose(-1, -2), -1, idx)
    if pos_query is not None:
        idx = p2c_index.reshape(sk, sq).long().expand(b, h, sk, sq)
        s = s + torch.gather(kh @ pos_query.transpose(-1, -2), -1, idx).transpose(-1, -2)
    s = s * float(a["scale"])
    if mask is not None:
        s = s + mask
    return _merge_heads(torch.softmax(s, dim=-1) @ vh)


# ------------------------------------------------------------------ conv and pool -------

def _spatial(nsp: int, a) -> tuple[list[int], list[int], list[int], list[int]]:
    """strides, begin pads, end pads, dilations (pads are [b0, b1, ..., e0, e1, ...])."""
    strides = [1] * nsp if a.get("strides") is None else [int(s) for s in a["strides"]]
    pads = [0] * (2 * nsp) if a.get("pads") is None else [int(p) for p in a["pads"]]
    dil = [1] * nsp if a.get("dilations") is None else [int(d) for d in a["dilations"]]
    if len(strides) != nsp or len(pads) != 2 * nsp or len(dil) != nsp:
        raise ValueError(f"{nsp} spatial dims need {nsp} strides, {2 * nsp} pads and {nsp} dilations; "
                         f"got strides={strides}, pads={pads}, dilations={dil}")
    return strides, pads[:nsp], pads[nsp:], dil


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    """F.pad's order: the last dim first, (begin, end) per dim."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


_CONV = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
_MAXPOOL = {1: "max_pool1d", 2: "max_pool2d", 3: "max_pool3d"}
_AVGPOOL = {1: "avg_pool1d", 2: "avg_pool2d", 3: "avg_pool3d"}


@_op("Conv")
def _conv(a, x, w, b=None):
    """Cross-correlation, zero padding ([b..., e...] may be asymmetric), grouped, dilated."""
    import torch.nn.functional as F
    _float_activations("Conv", a)
    nsp = x.ndim - 2
    if nsp not in _CONV:
        raise ValueError(f"Conv: {nsp} spatial dims; 1 to 3 are supported")
    strides, pb, pe, dil = _spatial(nsp, a)
    if pb == pe:
        padding = pb
    else:
        x = F.pad(x, _torch_pad(pb, pe))
        padding = [0] * nsp
    y = getattr(F, _CONV[nsp])(x, w, b, stride=strides, padding=padding, dilation=dil,
                               groups=int(a.get("group", 1)))
    return _epilogue(y, a)


def _pool_geometry(x, a, dilations: bool = True):
    """The ref's pooling geometry: kernel, strides, dilations, output sizes, and the padding
    per spatial dim, the end grown where ceil_mode makes the last window overhang."""
    kernel = [int(k) for k in a["kernel_shape"]]
    nsp = len(kernel)
    if x.ndim != nsp + 2:
        raise ValueError(f"pool: X {tuple(x.shape)} does not have 2 + {nsp} dims for kernel_shape {kernel}")
    strides, pb, pe, dil = _spatial(nsp, {**a, "dilations": a.get("dilations") if dilations else None})
    ceil_mode = int(a.get("ceil_mode", 0))
    out, pads = [], []
    for i in range(nsp):
        length, k, s, d = x.shape[2 + i], kernel[i], strides[i], dil[i]
        span = length + pb[i] + pe[i] - (d * (k - 1) + 1)
        if span < 0:
            raise ValueError(f"kernel extent {d * (k - 1) + 1} is larger than the padded input "
                             f"{length + pb[i] + pe[i]}")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= length + pb[i]:
            o -= 1      # a last window starting inside the end padding is dropped (ONNX >= 19)
        needed = (o - 1) * s + d * (k - 1) + 1
        out.append(o)
        pads.append((pb[i], max(pe[i], needed - length - pb[i])))
    return kernel, strides, dil, out, pads, (pb, pe)


def _crop(y, out: list[int]):
    """The first out[i] windows per spatial dim (padding to the ref's width can leave more)."""
    return y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]


@_op("MaxPool")
def _max_pool(a, x):
    """Maximum over each window; padding (and any ceil_mode overhang) is -inf and never wins."""
    import torch.nn.functional as F
    kernel, strides, dil, out, pads, _ = _pool_geometry(x, a)
    nsp = len(kernel)
    lowest = float("-inf") if _is_float(x) else None
    if lowest is None:
        raise ValueError(f"MaxPool on {x.dtype}: torch_eval pools float tensors")
    xp = F.pad(x, _torch_pad([p[0] for p in pads], [p[1] for p in pads]), value=lowest)
    y = getattr(F, _MAXPOOL[nsp])(xp, kernel, stride=strides, padding=0, dilation=dil)
    return _crop(y, out)


@_op("AveragePool")
def _average_pool(a, x):
    """Mean over each window; the divisor counts positions inside the input
    (count_include_pad=0) or inside input + explicit pads (1), never the ceil_mode overhang."""
    import torch
    import torch.nn.functional as F
    kernel, strides, _, out, pads, (pb, pe) = _pool_geometry(x, a, dilations=False)
    nsp = len(kernel)
    pool = getattr(F, _AVGPOOL[nsp])
    taps = math.prod(kernel)
    xp = F.pad(x, _torch_pad([p[0] for p in pads], [p[1] for p in pads]))
    total = _crop(pool(xp, kernel, stride=strides, padding=0, count_include_pad=True), out) * taps
    counted = torch.zeros((1, 1) + tuple(xp.shape[2:]), dtype=x.dtype)
    lengths = x.shape[2:]
    if a.get("count_include_pad", 0):
        region = tuple(slice(0, pb[i] + lengths[i] + pe[i]) for i in range(nsp))
    else:
        region = tuple(slice(pb[i], pb[i] + lengths[i]) for i in range(nsp))
    counted[(0, 0) + region] = 1.0
    count = _crop(pool(counted, kernel, stride=strides, padding=0, count_include_pad=True), out) * taps
    return total / count


@_op("GlobalAveragePool")
def _global_average_pool(a, x):
    import torch
    return torch.mean(x, dim=tuple(range(2, x.ndim)), keepdim=True)


@_op("Flatten")
def _flatten(a, x):
    axis = int(a.get("axis", 1))
    rank = x.ndim
    if not -rank <= axis <= rank:
        raise ValueError(f"Flatten: axis {axis} out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


# ---------------------------------------------------------------- shape and indexing -----

@_op("Shape")
def _shape(a, x):
    import torch
    rank = x.ndim

    def clamp(i):
        return min(max(i + rank if i < 0 else i, 0), rank)
    s = clamp(int(a.get("start", 0) or 0))
    e = rank if a.get("end") is None else clamp(int(a["end"]))
    return torch.tensor(list(x.shape[s:e]), dtype=torch.int64)


@_op("Reshape")
def _reshape(a, x, shape):
    """0 copies the input's dim (unless allowzero), one -1 is inferred."""
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@_op("Transpose")
def _transpose(a, x):
    perm = a.get("perm")
    return x.permute(*(reversed(range(x.ndim)) if perm is None else [int(p) for p in perm]))


@_op("Unsqueeze")
def _unsqueeze(a, x):
    axes = a["axes"]
    rank = x.ndim + len(axes)
    for d in sorted(_axis(ax, rank, "Unsqueeze axis") for ax in axes):
        x = x.unsqueeze(d)
    return x


@_op("Squeeze")
def _squeeze(a, x):
    axes = a.get("axes")
    if axes is None or len(axes) == 0:
        return x.reshape([d for d in x.shape if d != 1])
    dims = [_axis(ax, x.ndim, "Squeeze axis") for ax in axes]
    bad = [d for d in dims if x.shape[d] != 1]
    if bad:
        raise ValueError(f"Squeeze: dims {bad} of shape {tuple(x.shape)} are not 1")
    return x.reshape([n for i, n in enumerate(x.shape) if i not in dims])


@_op("Slice")
def _slice(a, data, starts, ends, axes=None, steps=None):
    """data[starts:ends:steps] along axes, with ONNX's clamping (the reference's slice_bounds)."""
    import torch
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    out = data
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, data.ndim, "Slice axis")
        dim = data.shape[axis]
        start, end = slice_bounds(start, end, step, dim)
        if step > 0:
            index = [slice(None)] * data.ndim
            index[axis] = slice(start, max(end, start), step)
            out = out[tuple(index)]
        else:
            # torch slicing takes no negative step: pick the indices explicitly
            picks = list(range(start, end, step)) if dim else []
            out = out.index_select(axis, torch.tensor(picks, dtype=torch.int64))
    return out


@_op("Concat")
def _concat(a, *xs):
    import torch
    return torch.cat(xs, dim=_axis(a["axis"], xs[0].ndim, "Concat axis"))


@_op_multi("Split")
def _split(a, x):
    axis = _axis(a.get("axis", 0), x.ndim, "Split axis")
    dim = x.shape[axis]
    if a.get("split") is None:
        n = int(a["num_outputs"])
        chunk = -(-dim // n)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
    else:
        sizes = [int(s) for s in a["split"]]
    if sum(sizes) != dim:
        raise ValueError(f"Split: sizes {sizes} do not add up to dim {axis} of shape {tuple(x.shape)}")
    return tuple(x.split(sizes, dim=axis))


@_op("Expand")
def _expand(a, x, shape):
    import torch
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@_op("Tile")
def _tile(a, x, repeats):
    reps = _ints(repeats)
    if len(reps) != x.ndim:
        raise ValueError(f"Tile: {len(reps)} repeats for a rank-{x.ndim} input")
    return x.repeat(*reps) if reps else x


@_op("Range")
def _range(a, start, limit, delta):
    """start + i * delta for i < max(ceil((limit - start) / delta), 0)."""
    import torch
    if _is_float(start):
        s, lim, d = (float(v.reshape(())) for v in (start, limit, delta))
        n = max(int(math.ceil((lim - s) / d)), 0)
        return (s + torch.arange(n, dtype=torch.float64) * d).to(start.dtype)
    s, lim, d = (int(v.reshape(())) for v in (start, limit, delta))
    if d == 0:
        raise ValueError("Range: delta is 0")
    n = max(-((s - lim) // d), 0)
    return (s + torch.arange(n, dtype=torch.int64) * d).to(start.dtype)


@_op("ConstantOfShape")
def _constant_of_shape(a, shape):
    import torch
    return torch.full(tuple(_ints(shape)), a.get("value", 0.0), dtype=torch_dtype(a.get("dtype", "float32")))


def _wrap(indices, dim: int):
    """Negative indices count from the end (as np.take)."""
    import torch
    return torch.where(indices < 0, indices + dim, indices)


@_op("Gather")
def _gather(a, data, indices):
    """data indexed along axis by indices of any shape; output data.shape[:axis] +
    indices.shape + data.shape[axis+1:] (an embedding lookup for a (V, D) table, axis 0)."""
    import torch
    axis = _axis(a.get("axis", 0), data.ndim, "Gather axis")
    idx = _wrap(indices.to(torch.int64), data.shape[axis])
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]))


@_op("GatherElements")
def _gather_elements(a, data, indices):
    import torch
    axis = _axis(a.get("axis", 0), data.ndim, "GatherElements axis")
    return torch.gather(data, axis, _wrap(indices.to(torch.int64), data.shape[axis]))


@_op("GatherND")
def _gather_nd(a, data, indices):
    import torch
    b = int(a.get("batch_dims", 0))
    k = indices.shape[-1]
    if tuple(data.shape[:b]) != tuple(indices.shape[:b]) or k > data.ndim - b:
        raise ValueError(f"GatherND: data {tuple(data.shape)} and indices {tuple(indices.shape)} do not "
                         f"match for batch_dims={b}")
    nb = math.prod(data.shape[:b])
    out_shape = tuple(indices.shape[:-1]) + tuple(data.shape[b + k:])
    data_b = data.reshape((nb,) + tuple(data.shape[b:]))
    idx_b = indices.to(torch.int64).reshape((nb,) + tuple(indices.shape[b:]))
    parts = []
    for i in range(nb):
        coords = tuple(_wrap(idx_b[i][..., j], data_b.shape[1 + j]) for j in range(k))
        parts.append(data_b[i][coords])
    return torch.stack(parts).reshape(out_shape)


# ------------------------------------------------------------------------- the graph -----

class TorchGraph:
    """A dense fp32 qrt graph as a differentiable PyTorch function.

    graph:     an imported (or pruned, not yet quantized) Graph; every initializer must be
               dense (``fields["data"]``), every node's op in ``OPS``.
    trainable: names of float initializers to hold as ``torch.nn.Parameter`` (requires_grad);
               the others are constant tensors. ``params`` maps those names to the Parameters.

    ``forward(feeds)`` runs the graph: feeds maps every graph input name to a numpy array or
    torch tensor; returns the graph outputs as a list of tensors (graph order). With
    ``keep=[value names]`` it returns ``(outputs, {name: tensor})``, the named intermediate
    values too (hidden states for a distillation loss). Gradients flow to ``params`` unless
    the caller runs under ``torch.no_grad()``.
    """

    def __init__(self, graph: Graph, trainable: Iterable[str] = ()):
        torch = import_torch()
        self.graph = graph
        trainable = set(trainable)
        unknown = sorted(trainable - set(graph.initializers))
        if unknown:
            raise ValueError(f"trainable names {unknown[:5]} are not initializers of graph {graph.name!r}")
        missing = sorted({n.op for n in graph.nodes if n.op not in OPS})
        if missing:
            raise NotImplementedError(f"torch_eval has no implementation of op(s) {', '.join(missing)} "
                                      f"(graph {graph.name!r})")
        self.params: dict[str, Any] = {}
        self.constants: dict[str, Any] = {}
        for name, t in graph.initializers.items():
            if t.layout != "dense":
                raise ValueError(f"initializer {name!r} has layout {t.layout!r}: torch_eval runs dense "
                                 "graphs (train before packing)")
            if name in trainable:
                if t.dtype not in ("float32", "float64", "float16"):
                    raise ValueError(f"trainable initializer {name!r} has dtype {t.dtype}; only float "
                                     "initializers can be trained")
                self.params[name] = torch.nn.Parameter(as_tensor(np.array(t.fields["data"], order="C")))
            else:
                self.constants[name] = as_tensor(t.fields["data"])
        self._steps = [(n, OPS[n.op], fill_attrs(n.op, n.attrs)) for n in graph.nodes]
        # the index of the last node that reads each value: intermediates are dropped after
        # it, so autograd alone decides what stays alive for the backward pass
        self._last_use: dict[str, int] = {}
        for k, n in enumerate(graph.nodes):
            for i in n.inputs:
                if i:
                    self._last_use[i] = k
        self._output_names = [v.name for v in graph.outputs]

    def parameters(self) -> list:
        return list(self.params.values())

    def weights(self) -> dict[str, np.ndarray]:
        """The current values of the trainable initializers, as numpy copies."""
        return {k: p.detach().cpu().numpy().copy() for k, p in self.params.items()}

    def __call__(self, feeds: Mapping[str, Any], *, keep: Sequence[str] | None = None):
        return self.forward(feeds, keep=keep)

    def forward(self, feeds: Mapping[str, Any], *, keep: Sequence[str] | None = None):
        missing = [v.name for v in self.graph.inputs if v.name not in feeds]
        if missing:
            raise ValueError(f"feeds lack graph input(s) {missing}")
        env: dict[str, Any] = {**self.constants, **self.params}
        for v in self.graph.inputs:
            env[v.name] = as_tensor(feeds[v.name])
        keep_set = set(keep or ()) | set(self._output_names)
        kept: dict[str, Any] = {k: env[k] for k in keep_set if k in env}
        for k, (node, fn, attrs) in enumerate(self._steps):
            args = [env[i] if i else None for i in node.inputs]
            try:
                outs = fn(attrs, *args)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                raise type(e)(f"node {node.name!r} ({node.op}): {e}") from e
            for name, val in zip(node.outputs, outs):
                env[name] = val
                if name in keep_set:
                    kept[name] = val
            for i in node.inputs:
                if i and self._last_use.get(i) == k and i not in self.constants and i not in self.params:
                    env.pop(i, None)
        unknown = sorted(keep_set - set(kept))
        if unknown:
            raise ValueError(f"values {unknown[:5]} are not produced by graph {self.graph.name!r}")
        outputs = [kept[n] for n in self._output_names]
        if keep is None:
            return outputs
        return outputs, {n: kept[n] for n in keep}
