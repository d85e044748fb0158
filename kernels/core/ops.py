"""The op vocabulary: the one table of every op a qrt graph may contain.

Ops follow ONNX semantics (opset 13..28) unless the entry says otherwise, with two kinds of
normalisation done by the importer so kernels see one form per op:
  * axes-like inputs that ONNX moved between attributes and inputs across opsets
    (Unsqueeze, Squeeze, ReduceMean/ReduceSum/ReduceMax, Split) are attributes here;
  * fused ops that ONNX has no single node for: ``Linear`` (y = x @ weight.T + bias, weight
    stored (N, K) like torch.nn.Linear and every GEMM kernel in qrt) and ``Gelu`` (erf or tanh
    form, whatever opset the model had).

Each entry says how many inputs/outputs the op takes, the attributes it understands with
their defaults, and ``weight_input``: the input position whose initializer layout selects the
kernel (e.g. a Linear's weight may later be dense fp32, int8, CSR...). Nothing else in qrt
hard-codes op names for validation; the numpy reference of every op lives in
``kernels/reference`` under the same name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OpSpec:
    name: str
    min_inputs: int
    max_inputs: int
    min_outputs: int = 1
    max_outputs: int = 1
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> default (None: required)
    weight_input: int | None = None  # input index whose initializer layout picks the kernel
    doc: str = ""


def _spec(name, inputs, outputs=(1, 1), attrs=None, weight_input=None, doc=""):
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs
    olo, ohi = (outputs, outputs) if isinstance(outputs, int) else outputs
    return OpSpec(name, lo, hi, olo, ohi, dict(attrs or {}), weight_input, doc)


_VARIADIC = 1 << 16

# How a Linear/Conv quantizes its input activations (docs/CONVERTER.md, Numerics):
# "none" (float activations; the only choice for a dense fp32 weight, and weight-only int4),
# "dynamic" (per GEMM row at run time) or "static" (act_scale / act_zero_point from calibration).
_ACT_QUANT = {"act_quant": "none", "act_scale": None, "act_zero_point": 0}
# An activation applied to a Linear/Conv output before it is written (the GEMM epilogue):
# set by the session's fusion pass (runtime/fuse.py) from a following Relu, Gelu or HardSwish
# node. The quantized GEMMs' epilogues apply the first four (kernels/gemm_front.py
# GEMM_ACTIVATIONS); hard_swish and silu (x * sigmoid(x): EfficientNet's Sigmoid -> Mul) are fused
# by the native Convs (MobileNetV3's and EfficientNet's layers) and applied after the kernel
# everywhere else (kernels/registry.py build).
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "hard_swish", "silu")
_EPILOGUE = {"activation": "none"}

_SPECS = [
    # --- element-wise, numpy broadcasting -------------------------------------------------
    _spec("Add", 2, attrs=_EPILOGUE,
          doc="activation: 'none', or 'relu' fused from Add -> Relu (runtime/fuse.py), applied after the sum"),
    *[_spec(n, 2) for n in ("Sub", "Mul", "Div", "Pow", "Equal", "Greater",
                            "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor")],
    _spec("Mod", 2, attrs={"fmod": 0}),
    *[_spec(n, (1, _VARIADIC)) for n in ("Max", "Min", "Sum")],
    *[_spec(n, 1) for n in ("Sqrt", "Neg", "Abs", "Exp", "Log", "Erf", "Relu", "Sigmoid",
                            "Tanh", "Not", "Reciprocal", "Floor", "Ceil", "Identity")],
    _spec("IsNaN", 1, doc="bool output; transformers' sdpa export zeroes NaN softmax rows with it"),
    _spec("Sign", 1),
    _spec("HardSigmoid", 1, attrs={"alpha": 0.2, "beta": 0.5}),
    _spec("HardSwish", 1),
    _spec("CumSum", 2, attrs={"exclusive": 0, "reverse": 0}, doc="axis is input 1, a scalar int tensor"),
    _spec("Gelu", 1, attrs={"approximate": "none"}, doc="erf form, or tanh form when approximate='tanh'"),
    _spec("LeakyRelu", 1, attrs={"alpha": 0.01}),
    _spec("Clip", (1, 3), doc="min/max as optional inputs (opset >= 11 form)"),
    _spec("Cast", 1, attrs={"to": None}, doc="'to' is a numpy dtype name, e.g. 'float32'"),
    _spec("Where", 3),
    # --- reductions and normalisation -----------------------------------------------------
    *[_spec(n, 1, attrs={"axes": None, "keepdims": 1, "noop_with_empty_axes": 0})
      for n in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")],
    _spec("Softmax", 1, attrs={"axis": -1}),
    _spec("LayerNormalization", (2, 3), attrs={"axis": -1, "epsilon": 1e-5}),
    _spec("SkipLayerNormalization", (3, 4), attrs={"epsilon": 1e-5},
          doc="LayerNormalization over the last axis of (x + skip), the sum rounded to x's dtype "
              "first; x, skip (..., D), scale, bias (D,); fused from Add + LayerNormalization"),
    _spec("BatchNormalization", 5, attrs={"epsilon": 1e-5},
          doc="inference form: scale, bias, mean, var; normally folded into the Conv before it"),
    # --- GEMM-like ------------------------------------------------------------------------
    _spec("MatMul", 2, doc="numpy matmul semantics; between activations (or a non-2D constant)"),
    _spec("Linear", (2, 3), attrs={**_ACT_QUANT, **_EPILOGUE}, weight_input=1,
          doc="y = act(x @ weight.T + bias); x (..., K), weight (N, K), bias (N,), y (..., N)"),
    _spec("Attention", (3, 4), attrs={"head_dim": None, "scale": None, "nan_to_zero": 0},
          doc="multi-head scaled dot-product attention: q (B, Sq, H*D), k (B, Sk, H*D), "
              "v (B, Sk, H*Dv), optional additive mask broadcastable to (B, H, Sq, Sk); "
              "y (B, Sq, H*Dv) = per head softmax(scale * q_h k_h^T + mask) v_h; fused from "
              "the Reshape/Transpose/MatMul/Softmax pattern. nan_to_zero=1: softmax "
              "probabilities that are NaN count as 0 (the IsNaN + Where that transformers' "
              "sdpa export puts after its Softmax), so a query row masked everywhere with "
              "-inf gives zeros"),
    _spec("DisentangledAttention", 8, attrs={"head_dim": None, "scale": None},
          doc="DeBERTa-v2/v3 attention: Attention (q, k, v, mask as there; no nan_to_zero) with "
              "relative-position terms in the scores, per head "
              "softmax(scale * (q_i.k_j + q_i.pos_key[h, c2p[i, j]] + k_j.pos_query[h, p2c[j, i]]) "
              "+ mask) v; inputs q, k, v, mask, pos_key, c2p_index, pos_query, p2c_index; "
              "pos_key / pos_query (H, P, D), c2p_index (Sq, Sk) and p2c_index (Sk, Sq) integer in "
              "[0, P) (leading axes of size 1 allowed); mask and either term ('' for both its "
              "inputs) may be absent; fused from the exported c2p / p2c MatMul + GatherElements"),
    _spec("Gemm", (2, 3), attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
          doc="kept only when B is not a constant; constant-B Gemm becomes Linear"),
    _spec("Conv", (2, 3), outputs=(1, 2), weight_input=1,
          attrs={"strides": None, "pads": None, "dilations": None, "group": 1, **_ACT_QUANT, **_EPILOGUE,
                 "channel_mean": 0},
          doc="NCHW (1-D and 2-D), weight (C_out, C_in/group, kh, kw), explicit pads; channel_mean = 1 (2-D "
              "only, set by runtime/fuse.py): a second output (N, C_out, 1, 1), ReduceMean of the first over "
              "axes [2, 3] (the squeeze-excite mean after a depthwise Conv)"),
    _spec("MaxPool", 1, attrs={"kernel_shape": None, "strides": None, "pads": None,
                               "dilations": None, "ceil_mode": 0}),
    _spec("AveragePool", 1, attrs={"kernel_shape": None, "strides": None, "pads": None,
                                   "ceil_mode": 0, "count_include_pad": 0}),
    _spec("GlobalAveragePool", 1),
    _spec("Flatten", 1, attrs={"axis": 1}),
    # --- shape and indexing ---------------------------------------------------------------
    _spec("Shape", 1, attrs={"start": 0, "end": None}),
    _spec("Reshape", 2, attrs={"allowzero": 0}),
    _spec("Transpose", 1, attrs={"perm": None}),
    _spec("Unsqueeze", 1, attrs={"axes": None}),
    _spec("Squeeze", 1, attrs={"axes": None}),
    _spec("Slice", (3, 5)),
    _spec("Concat", (1, _VARIADIC), attrs={"axis": None}),
    _spec("Split", 1, (1, _VARIADIC), attrs={"axis": 0, "split": None, "num_outputs": None},
          doc="split: list of sizes, or None for num_outputs equal parts (last one smaller)"),
    _spec("Gather", 2, attrs={"axis": 0}, weight_input=0,
          doc="embedding lookup when input 0 is a constant table"),
    _spec("GatherElements", 2, attrs={"axis": 0}),
    _spec("GatherND", 2, attrs={"batch_dims": 0}),
    _spec("Expand", 2),
    _spec("Tile", 2),
    _spec("Range", 3),
    _spec("ConstantOfShape", 1, attrs={"value": 0.0, "dtype": "float32"}),
]

OPS: dict[str, OpSpec] = {s.name: s for s in _SPECS}


def op_spec(op: str) -> OpSpec:
    """The spec of ``op``; KeyError naming the op if it is not in the vocabulary."""
    try:
        return OPS[op]
    except KeyError:
        raise KeyError(f"unknown op {op!r}; qrt knows {len(OPS)} ops: {', '.join(sorted(OPS))}") from None
