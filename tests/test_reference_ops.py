"""The numpy reference kernels (kernels/reference) against onnxruntime, one op at a time.

Each case builds a one-node ONNX model with onnx.helper, runs it in onnxruntime, and runs the
same inputs through ``lookup(op, "dense", "reference")(fill_attrs(op, attrs), {})``. The IR
form of an op can differ from its ONNX form: Unsqueeze/Squeeze/Reduce*/Split keep their axes
(or split sizes) as attributes in qrt but as inputs in ONNX >= 13/18, Cast's ``to`` is a numpy
dtype name, ConstantOfShape's value is a Python scalar. A case therefore carries its IR
attributes and, where they differ, the ONNX attributes and extra ONNX inputs.

Linear (no ONNX op) is checked against x @ W.T + b in float64; Gelu against onnxruntime's
Gelu (opset 20) and a float64 formula.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import kernels.reference as reference_pkg  # noqa: E402
from kernels.reference._common import snake_name  # noqa: E402
from kernels.registry import fill_attrs, kernels, lookup  # noqa: E402
from kernels.core.ops import OPS  # noqa: E402

# float32 outputs: the reference computes in float64 (or float32 for plain element-wise ops)
# and rounds once, i.e. within 0.5 ulp (6e-8 relative); onnxruntime's MLAS kernels use float32
# accumulation and polynomial exp/tanh/erf/logistic, a few ulp off. rtol 1e-5 is ~100 ulp:
# wide enough for those, far tighter than any semantic mistake (off-by-one window, wrong axis,
# missing epsilon give errors of 1e-3 or more). atol 1e-6 covers results that cancel to ~0.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-6
# GEMM-like ops (MatMul, Gemm, Conv): onnxruntime accumulates K products in float32, an
# error that grows like sqrt(K) * eps * sum|a_i b_i|; with K <= 64 and inputs in [-3, 3] that
# is below 1e-5 absolute, while the results are O(1..10).
GEMM_RTOL = 1e-5
GEMM_ATOL = 1e-5
# Integer, bool and shape results must match exactly.

OPSET = 17          # ONNX form used by default
OPSET_AXES_INPUT = 18   # Reduce*/Split with axes/split as inputs, Split's num_outputs
OPSET_GELU = 20
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


# --- input generators: fresh random data per case, never all zeros ---------------------------

Gen = Callable[[np.random.Generator], np.ndarray]


def f32(*shape, lo=-3.0, hi=3.0) -> Gen:
    return lambda rng: rng.uniform(lo, hi, shape).astype(np.float32)


def away_from_zero(*shape, lo=0.5, hi=3.0) -> Gen:
    """float32 with |x| in [lo, hi] and random signs (divisors, Reciprocal)."""
    return lambda rng: (rng.uniform(lo, hi, shape) * rng.choice([-1, 1], shape)).astype(np.float32)


def small_grid(*shape) -> Gen:
    """float32 on a coarse grid, so comparisons meet equal values."""
    return lambda rng: rng.integers(-2, 3, shape).astype(np.float32)


def ints(*shape, lo=-9, hi=10, dtype=np.int64) -> Gen:
    return lambda rng: rng.integers(lo, hi, shape).astype(dtype)


def nonzero_ints(*shape, lo=-7, hi=8, dtype=np.int64) -> Gen:
    def gen(rng):
        v = rng.integers(lo, hi - 1, shape)
        return np.where(v >= 0, v + 1, v).astype(dtype)  # skips 0
    return gen


def bools(*shape) -> Gen:
    return lambda rng: rng.random(shape) < 0.5


def const(values, dtype=np.int64) -> Gen:
    return lambda rng: np.array(values, dtype=dtype)


# --- cases --------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    op: str
    inputs: list                      # Gen or None (an absent optional input)
    attrs: dict = field(default_factory=dict)          # qrt IR attributes
    onnx_attrs: dict | None = None                     # None: the IR attrs, minus None values
    onnx_extra: list = field(default_factory=list)     # arrays appended to the ONNX inputs
    onnx_op: str | None = None
    opset: int = OPSET
    n_outputs: int = 1
    rtol: float = FLOAT_RTOL
    atol: float = FLOAT_ATOL


CASES: list[Case] = []


def case(id, op, inputs, attrs=None, **kw):
    CASES.append(Case(f"{op}-{id}", op, list(inputs), dict(attrs or {}), **kw))


# element-wise binary arithmetic: broadcasting, scalars, size-1 dims, empty tensors
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((), ()), ((1, 3, 1), (2, 1, 5)),
                    ((4, 1), ()), ((0, 3), (3,))]
for op in ("Add", "Sub", "Mul", "Div"):
    for sa, sb in BROADCAST_SHAPES:
        divisor = away_from_zero(*sb) if op == "Div" else f32(*sb)
        case(f"f32-{sa}-{sb}", op, [f32(*sa), divisor])
    case("int32", op, [ints(3, 4, dtype=np.int32),
                       nonzero_ints(4, dtype=np.int32) if op == "Div" else ints(4, dtype=np.int32)])
    case("int64-scalar", op, [ints(2, 3), nonzero_ints() if op == "Div" else ints()])
case("int-truncates", "Div", [const([-7, 7, -7, 7, 6, -6, 0]), const([2, -2, -2, 2, -3, 4, 5])])
case("int-sign-of-divisor", "Mod", [const([-7, 7, -7, 7, 6, -6, 0]), const([2, -2, -2, 2, -3, 4, 5])])
case("int32-broadcast", "Mod", [ints(3, 4, lo=-50, hi=50, dtype=np.int32), nonzero_ints(4, dtype=np.int32)])
case("f32-fmod", "Mod", [f32(3, 4, lo=-10, hi=10), away_from_zero(4)], {"fmod": 1})
case("f32", "Pow", [f32(3, 4, lo=0.1, hi=3), f32(3, 4, lo=-2, hi=2)])
case("f32-broadcast", "Pow", [f32(2, 3, 4, lo=0.1, hi=3), f32(4, lo=-2, hi=2)])
case("f32-int-exponent", "Pow", [f32(3, 4), ints(4, lo=0, hi=4)])
case("int64", "Pow", [ints(3, 4, lo=-4, hi=5), ints(4, lo=0, hi=5)])
case("scalar", "Pow", [f32(lo=0.5, hi=2), f32(lo=-1, hi=1)])

for op in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"):
    case("f32", op, [small_grid(3, 4), small_grid(3, 4)])
    case("broadcast", op, [small_grid(2, 1, 4), small_grid(3, 1)])
    case("int64-scalar", op, [ints(5, lo=-2, hi=3), ints(lo=-2, hi=3)])
for op in ("And", "Or", "Xor"):
    case("same", op, [bools(3, 4), bools(3, 4)])
    case("broadcast", op, [bools(2, 1, 4), bools(3, 1)])
    case("scalar", op, [bools(), bools(5)])
case("bool", "Not", [bools(3, 4)])
case("scalar", "Not", [bools()])

for op in ("Max", "Min", "Sum"):
    case("one", op, [f32(3, 4)])
    case("two-broadcast", op, [f32(3, 4), f32(4)])
    case("three", op, [f32(2, 1, 4), f32(3, 1), f32()])
    if op != "Sum":  # ONNX Sum is float-only
        case("int32", op, [ints(3, 4, dtype=np.int32), ints(3, 4, dtype=np.int32)])

UNARY_SHAPES = [(), (1,), (2, 3, 4), (0, 5)]
UNARY = {
    "Sqrt": lambda *s: f32(*s, lo=0.0, hi=9.0), "Neg": f32, "Abs": f32,
    "Exp": lambda *s: f32(*s, lo=-10, hi=10), "Log": lambda *s: f32(*s, lo=1e-3, hi=100),
    "Erf": f32, "Relu": f32, "Sigmoid": lambda *s: f32(*s, lo=-30, hi=30), "Tanh": f32,
    "Reciprocal": away_from_zero, "Floor": lambda *s: f32(*s, lo=-5, hi=5),
    "Ceil": lambda *s: f32(*s, lo=-5, hi=5), "Identity": f32,
}
for op, gen in UNARY.items():
    for shape in UNARY_SHAPES:
        case(f"f32-{shape}", op, [gen(*shape)])
for op in ("Neg", "Abs", "Relu", "Identity"):
    case("int32", op, [ints(3, 4, dtype=np.int32)])
case("int64", "Identity", [ints(2, 0, 3)])

for approximate in ("none", "tanh"):
    for shape in [(), (3, 4), (2, 3, 7)]:
        case(f"{approximate}-{shape}", "Gelu", [f32(*shape, lo=-6, hi=6)],
             {"approximate": approximate}, opset=OPSET_GELU)
case("specials", "IsNaN", [const([1.0, np.nan, -np.inf, 0.0], np.float32)])
case("f32", "Sign", [f32(3, 4)])
case("zeros-nan", "Sign", [const([0.0, -0.0, np.nan, 2.0, -np.inf], np.float32)])
case("int32", "Sign", [ints(6, dtype=np.int32)])
case("default", "HardSigmoid", [f32(3, 4, lo=-6, hi=6)])
case("alpha-beta", "HardSigmoid", [f32(5, lo=-6, hi=6)], {"alpha": 0.3, "beta": 0.4})
case("f32", "HardSwish", [f32(3, 4, lo=-6, hi=6)], opset=max(OPSET, 14))
case("axis1", "CumSum", [f32(3, 4), const(1)])
case("axis-neg-exclusive-reverse", "CumSum", [f32(2, 3, 4), const(-1)], {"exclusive": 1, "reverse": 1})
case("exclusive", "CumSum", [f32(5), const(0)], {"exclusive": 1})
case("int32", "CumSum", [ints(2, 6, dtype=np.int32), const(1, np.int32)], {"reverse": 1})
case("default", "LeakyRelu", [f32(3, 4)])
case("alpha", "LeakyRelu", [f32(2, 3, 4)], {"alpha": 0.2})
case("scalar", "LeakyRelu", [f32()], {"alpha": 0.5})

case("both", "Clip", [f32(3, 4), f32(lo=-2, hi=-1), f32(lo=0.5, hi=1.5)])
case("min-only", "Clip", [f32(3, 4), f32(lo=-1, hi=0)])
case("max-only", "Clip", [f32(3, 4), None, f32(lo=0, hi=1)])
case("none", "Clip", [f32(3, 4)])
case("min-above-max", "Clip", [f32(3, 4), const(1.0, np.float32), const(-1.0, np.float32)])
case("int32", "Clip", [ints(3, 4, dtype=np.int32), const(-3, np.int32), const(4, np.int32)])

CASTS = [("float32", "int32", f32(3, 4, lo=-5, hi=5)), ("float32", "int64", f32(7, lo=-100, hi=100)),
         ("float32", "bool", small_grid(3, 4)), ("int64", "float32", ints(3, 4, lo=-1000, hi=1000)),
         ("bool", "float32", bools(3, 4)), ("float32", "float16", f32(3, 4, lo=-100, hi=100)),
         ("int32", "int8", ints(3, 4, lo=-128, hi=128, dtype=np.int32)),
         ("float32", "uint8", f32(3, 4, lo=0, hi=255)), ("int64", "int64", ints()),
         ("float16", "float32", lambda rng: rng.uniform(-4, 4, (3, 4)).astype(np.float16))]
for src, to, gen in CASTS:
    case(f"{src}-{to}", "Cast", [gen], {"to": to},
         onnx_attrs={"to": helper.np_dtype_to_tensor_dtype(np.dtype(to))})

case("broadcast", "Where", [bools(3, 1), f32(1, 4), f32()])
case("int64", "Where", [bools(2, 3), ints(2, 3), ints(2, 3)])
case("scalar", "Where", [bools(), f32(), f32()])

# reductions: IR axes attribute; ONNX 18 axes input
for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
    for axes, keepdims in [([1], 1), ([-1], 0), ([0, 2], 1), ([2, 0], 0), (None, 1), (None, 0)]:
        attrs = {"axes": axes, "keepdims": keepdims}
        extra = [] if axes is None else [np.array(axes, np.int64)]
        case(f"f32-{axes}-k{keepdims}", op, [f32(2, 3, 4)], attrs,
             onnx_attrs={"keepdims": keepdims}, onnx_extra=extra, opset=OPSET_AXES_INPUT)
    case("int64", op, [ints(3, 5, lo=-50, hi=50)], {"axes": [1]}, onnx_attrs={},
         onnx_extra=[np.array([1], np.int64)], opset=OPSET_AXES_INPUT)
    case("noop", op, [f32(2, 3)], {"noop_with_empty_axes": 1},
         onnx_attrs={"noop_with_empty_axes": 1}, opset=OPSET_AXES_INPUT)
    case("size1-dim", op, [f32(3, 1, 2)], {"axes": [1]}, onnx_attrs={},
         onnx_extra=[np.array([1], np.int64)], opset=OPSET_AXES_INPUT)
    case("empty-batch", op, [f32(0, 3)], {"axes": [1]}, onnx_attrs={},
         onnx_extra=[np.array([1], np.int64)], opset=OPSET_AXES_INPUT)
case("int-truncates", "ReduceMean", [const([[-7, 2], [7, 2], [-1, 0]])], {"axes": [1]},
     onnx_attrs={}, onnx_extra=[np.array([1], np.int64)], opset=OPSET_AXES_INPUT)

for axis in (-1, 0, 1):
    case(f"axis{axis}", "Softmax", [f32(2, 3, 5)], {"axis": axis})
case("large-values", "Softmax", [f32(4, 6, lo=-80, hi=80)], {"axis": -1})
case("size1", "Softmax", [f32(3, 1)], {"axis": -1})

for axis in (-1, 1, -2):
    case(f"axis{axis}-bias", "LayerNormalization",
         [f32(2, 3, 5), f32(*(2, 3, 5)[axis:]), f32(*(2, 3, 5)[axis:])], {"axis": axis})
case("no-bias-eps", "LayerNormalization", [f32(4, 8), f32(8)], {"epsilon": 1e-3})
# inputs with a large common offset: onnxruntime's float32 statistics lose ~4 digits to
# cancellation here (2e-5 absolute on O(1) outputs) while the reference's float64 ones do not,
# so this one case is compared at 1e-3 relative.
case("offset-input", "LayerNormalization", [f32(3, 16, lo=100, hi=101), f32(16), f32(16)],
     rtol=1e-3, atol=1e-4)
case("nchw", "BatchNormalization",
     [f32(2, 3, 4, 5), f32(3), f32(3), f32(3), f32(3, lo=0.1, hi=2)], {"epsilon": 1e-3})
case("nc", "BatchNormalization", [f32(4, 3), f32(3), f32(3), f32(3), f32(3, lo=0.1, hi=2)])
case("ncw", "BatchNormalization", [f32(1, 2, 7), f32(2), f32(2), f32(2), f32(2, lo=0.1, hi=2)])

GEMM_TOL = {"rtol": GEMM_RTOL, "atol": GEMM_ATOL}
for sa, sb in [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
               ((2, 1, 3, 4), (3, 4, 2)), ((1, 64), (64, 7)), ((3, 1), (1, 5)), ((0, 4), (4, 3))]:
    case(f"{sa}@{sb}", "MatMul", [f32(*sa), f32(*sb)], **GEMM_TOL)
case("int32", "MatMul", [ints(3, 4, dtype=np.int32), ints(4, 2, dtype=np.int32)])
case("int64-batched", "MatMul", [ints(2, 3, 4), ints(4, 5)])

for ta in (0, 1):
    for tb in (0, 1):
        a = f32(4, 3) if ta else f32(3, 4)
        b = f32(5, 4) if tb else f32(4, 5)
        case(f"tA{ta}-tB{tb}", "Gemm", [a, b, f32(5)], {"transA": ta, "transB": tb}, **GEMM_TOL)
case("alpha-beta", "Gemm", [f32(3, 4), f32(4, 5), f32(3, 5)], {"alpha": 0.5, "beta": -2.0}, **GEMM_TOL)
case("c-column", "Gemm", [f32(3, 4), f32(4, 5), f32(3, 1)], {"beta": 0.25}, **GEMM_TOL)
case("c-scalar", "Gemm", [f32(3, 4), f32(4, 5), f32()], **GEMM_TOL)
case("no-c", "Gemm", [f32(1, 7), f32(5, 7)], {"transB": 1, "alpha": 2.0}, **GEMM_TOL)

CONVS = [
    # id, x shape, w shape, attrs
    ("1d", (2, 3, 10), (4, 3, 3), {}),
    ("1d-stride-dilation-pads", (1, 2, 11), (3, 2, 3), {"strides": [2], "dilations": [2], "pads": [1, 2]}),
    ("2d", (2, 3, 6, 7), (4, 3, 3, 3), {}),
    ("2d-groups-strides-dilations-asym-pads", (2, 4, 9, 8), (6, 2, 3, 2),
     {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1]}),
    ("2d-depthwise", (1, 3, 5, 5), (3, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    ("2d-1x1", (1, 8, 3, 4), (5, 8, 1, 1), {}),
    ("2d-kernel-is-input", (2, 2, 3, 3), (4, 2, 3, 3), {}),
    ("2d-stride-larger-than-kernel", (1, 2, 7, 7), (2, 2, 2, 2), {"strides": [3, 3]}),
]
for cid, xs, ws, attrs in CONVS:
    case(f"{cid}-bias", "Conv", [f32(*xs), f32(*ws), f32(ws[0])], attrs, **GEMM_TOL)
    case(f"{cid}-no-bias", "Conv", [f32(*xs), f32(*ws)], attrs, **GEMM_TOL)

POOLS = [
    ("2d", (2, 3, 6, 7), {"kernel_shape": [2, 2]}),
    ("2d-strides-pads", (1, 2, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("2d-ceil", (1, 2, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("2d-ceil-asym-pads", (1, 2, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 1, 1],
                                         "ceil_mode": 1}),
    # L=6, k=3, s=3, end pad 2: ceil gives 3 windows, the third would start in the end padding
    ("1d-ceil-drops-window-in-padding", (1, 2, 6), {"kernel_shape": [3], "strides": [3], "pads": [0, 2],
                                                    "ceil_mode": 1}),
    ("1d", (2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
]
for pid, xs, attrs in POOLS:
    case(pid, "MaxPool", [f32(*xs)], attrs)
    for cip in (0, 1):
        case(f"{pid}-cip{cip}", "AveragePool", [f32(*xs)], {**attrs, "count_include_pad": cip})
case("2d-dilations", "MaxPool", [f32(1, 2, 9, 8)], {"kernel_shape": [3, 2], "dilations": [2, 3], "pads": [2, 1, 2, 1]})
case("2d-dilations-ceil", "MaxPool", [f32(1, 1, 8, 8)],
     {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [2, 2], "ceil_mode": 1})
case("uint8", "MaxPool", [ints(1, 2, 5, 5, lo=0, hi=256, dtype=np.uint8)],
     {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]})
case("2d", "GlobalAveragePool", [f32(2, 3, 4, 5)])
case("1d", "GlobalAveragePool", [f32(2, 3, 7)])
case("1x1", "GlobalAveragePool", [f32(1, 4, 1, 1)])

for axis in (0, 1, 2, 3, -1, -3):
    case(f"axis{axis}", "Flatten", [f32(2, 3, 4)], {"axis": axis})
case("empty", "Flatten", [f32(2, 0, 4)], {"axis": 2})

# shape and indexing
for start, end in [(0, None), (1, None), (-2, None), (0, -1), (-10, 10), (2, 1)]:
    case(f"{start}-{end}", "Shape", [f32(2, 3, 4)], {"start": start, "end": end})
case("scalar", "Shape", [f32()])
for shape, allowzero in [([4, 6], 0), ([0, -1], 0), ([-1], 0), ([2, 0, 2, 2], 0), ([1, 2, 3, 1, 4], 0)]:
    case(f"{shape}-az{allowzero}", "Reshape", [f32(2, 3, 4), const(shape)], {"allowzero": allowzero},
         opset=18)
case("allowzero-empty", "Reshape", [f32(0, 4), const([4, 0])], {"allowzero": 1}, opset=18)
case("to-scalar", "Reshape", [f32(1, 1), const([], np.int64)])
for perm in (None, [1, 0, 2], [2, 0, 1], [0, 1, 2]):
    case(f"{perm}", "Transpose", [f32(2, 3, 4)], {"perm": perm})
case("scalar", "Transpose", [f32()])
case("4d", "Transpose", [ints(2, 1, 3, 4)], {"perm": [0, 2, 3, 1]})
for axes, shape in [([0], (3, 4)), ([-1], (3, 4)), ([0, 3], (3, 4)), ([1, -1], (3, 4)), ([0], ())]:
    case(f"{axes}-{shape}", "Unsqueeze", [f32(*shape)], {"axes": axes}, onnx_attrs={},
         onnx_extra=[np.array(axes, np.int64)])
for axes, shape in [(None, (1, 3, 1, 4)), ([1], (2, 1, 4)), ([-1], (3, 1)), ([0, 2], (1, 3, 1)),
                    (None, (1,)), ([], (1, 3, 1)), (None, (2, 3))]:
    case(f"{axes}-{shape}", "Squeeze", [f32(*shape)], {"axes": axes}, onnx_attrs={},
         onnx_extra=[] if axes is None else [np.array(axes, np.int64)])

SLICES = [
    # id, data shape, starts, ends, axes, steps
    ("basic", (5, 6), [1, 2], [4, 5], None, None),
    ("axes-negative", (5, 6), [1], [-1], [-1], None),
    ("steps", (7, 6), [0, 1], [7, 6], [0, 1], [2, 3]),
    ("negative-steps", (7, 6), [-1, 4], [-8, 0], [0, 1], [-1, -2]),
    ("negative-step-start-out-of-range", (7,), [100], [1], [0], [-2]),
    ("out-of-range-ends", (5, 6), [-100, 2], [100, 1000], [0, 1], None),
    ("int64-sentinels", (5, 6), [1, INT64_MAX], [INT64_MAX, INT64_MIN], [0, 1], [1, -1]),
    ("empty-result", (5, 6), [3], [1], [0], None),
    ("empty-input", (0, 6), [0, 1], [10, 4], [0, 1], None),
    ("3d-middle-axis", (2, 7, 3), [5], [-9], [1], [-3]),
]
for sid, shape, starts, ends, axes, steps in SLICES:
    ins = [f32(*shape), const(starts), const(ends)]
    if axes is not None or steps is not None:
        ins.append(const(axes if axes is not None else list(range(len(starts)))))
    if steps is not None:
        ins.append(const(steps))
    case(sid, "Slice", ins)
case("int32-indices", "Slice", [ints(4, 5), const([1], np.int32), const([3], np.int32)])

case("axis0", "Concat", [f32(2, 3), f32(4, 3)], {"axis": 0})
case("axis-neg", "Concat", [f32(2, 3), f32(2, 1), f32(2, 5)], {"axis": -1})
case("one", "Concat", [f32(2, 3)], {"axis": 1})
case("empty-part", "Concat", [f32(2, 3), f32(0, 3), f32(1, 3)], {"axis": 0})
case("int64", "Concat", [ints(2), ints(3)], {"axis": 0})

case("sizes", "Split", [f32(2, 5)], {"axis": 1, "split": [2, 3]}, onnx_attrs={"axis": 1},
     onnx_extra=[np.array([2, 3], np.int64)], n_outputs=2)
case("sizes-with-zero", "Split", [f32(6, 2)], {"split": [1, 0, 5]}, onnx_attrs={},
     onnx_extra=[np.array([1, 0, 5], np.int64)], n_outputs=3)
case("num-outputs-uneven", "Split", [f32(3, 7)], {"axis": -1, "num_outputs": 3},
     opset=OPSET_AXES_INPUT, n_outputs=3)
case("num-outputs-even", "Split", [ints(6, 2)], {"num_outputs": 2}, opset=OPSET_AXES_INPUT, n_outputs=2)
case("opset13-equal", "Split", [f32(4, 6)], {"axis": 1, "num_outputs": 3}, onnx_attrs={"axis": 1},
     n_outputs=3)

case("embedding", "Gather", [f32(10, 4), const([[1, -1, 3], [0, 9, -10]])])
case("axis1", "Gather", [f32(3, 5, 2), const([4, 0, -2])], {"axis": 1})
case("axis-neg", "Gather", [ints(3, 5), const([1, 1])], {"axis": -1})
case("scalar-index", "Gather", [f32(4, 3), const(2)])
case("int32-indices", "Gather", [f32(6, 2), const([5, -6], np.int32)])
case("empty-indices", "Gather", [f32(6, 2), const(np.zeros((0, 2)))])
case("axis0", "GatherElements", [f32(3, 4), const([[1, 2, 0, -1], [0, -3, 2, 1]])])
case("axis1", "GatherElements", [ints(3, 4), const([[3, 0], [-1, 1], [2, 2]])], {"axis": 1})
case("3d-axis-neg", "GatherElements", [f32(2, 3, 4), const(np.arange(12).reshape(2, 3, 2) % 4 - 2)],
     {"axis": -1})
case("k2", "GatherND", [f32(3, 4, 5), const([[0, 1], [2, -1], [1, 3]])])
case("k1", "GatherND", [f32(3, 4), const([[[2], [0]], [[1], [-1]]])])
case("k3-scalars", "GatherND", [ints(2, 3, 4), const([[1, 2, 3], [0, 0, -1]])])
case("batch1", "GatherND", [f32(2, 3, 4), const([[[1], [0]], [[2], [2]]])], {"batch_dims": 1})
case("batch1-k2", "GatherND", [f32(2, 3, 4), const([[1, 3], [-1, 0]])], {"batch_dims": 1})

case("bidirectional", "Expand", [f32(3, 1), const([2, 1, 4])])
case("same-rank", "Expand", [f32(1, 4), const([3, 4])])
case("scalar", "Expand", [f32(), const([2, 3])])
case("shape-smaller", "Expand", [ints(2, 3), const([3])])
case("ones", "Expand", [f32(2, 3), const([1, 1])])
case("2x", "Tile", [f32(2, 3), const([2, 1])])
case("3d", "Tile", [ints(1, 2, 3), const([3, 1, 2])])
case("zero-repeat", "Tile", [f32(2, 3), const([0, 2])])

RANGES = [("int64", np.int64, 1, 10, 3), ("int64-negative-delta", np.int64, 10, 1, -2),
          ("int64-empty", np.int64, 5, 1, 1), ("int32", np.int32, -3, 4, 1),
          ("float32", np.float32, 0.5, 3.7, 0.3), ("float32-negative", np.float32, 1.0, -2.0, -0.25)]
for rid, dtype, start, limit, delta in RANGES:
    case(rid, "Range", [const(start, dtype), const(limit, dtype), const(delta, dtype)])

for sid, shape, value, dtype in [("f32", [2, 3], 1.5, "float32"), ("int64", [4], 7, "int64"),
                                 ("scalar", [], 2.5, "float32"), ("zero-dim", [0, 3], 1.0, "float32"),
                                 ("bool", [2, 2], True, "bool")]:
    case(sid, "ConstantOfShape", [const(shape)], {"value": value, "dtype": dtype},
         onnx_attrs={"value": helper.make_tensor("value", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                 [1], [value])})
case("default", "ConstantOfShape", [const([3, 2])], onnx_attrs={})


# --- edge cases: empty sets, NaN, 3-D spatial dims, newer opset forms ---------------------------
case("int-negative-exponent", "Pow", [const([2, -2, 1, -1, 3, 0]), const([-1, -1, -3, -3, 0, 2])])
case("int-float-exponent", "Pow", [const([2, 5, 9], np.int32), const([0.5, 1.5, 0.5], np.float32)])
for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
    # sum of nothing 0, max -inf, min +inf (ONNX 18); mean undefined, 0 as in onnxruntime
    case("empty-set-axis", op, [f32(3, 0)], {"axes": [1]}, onnx_attrs={},
         onnx_extra=[np.array([1], np.int64)], opset=OPSET_AXES_INPUT)
    case("empty-set-all", op, [f32(0, 2)], opset=OPSET_AXES_INPUT)
    case("empty-axes-list-noop", op, [f32(2, 3)], {"axes": [], "noop_with_empty_axes": 1},
         onnx_attrs={"noop_with_empty_axes": 1}, onnx_extra=[np.array([], np.int64)],
         opset=OPSET_AXES_INPUT)
    case("scalar", op, [f32()], {"keepdims": 0}, opset=OPSET_AXES_INPUT)
for op in ("ReduceMax", "ReduceMin"):
    case("bool", op, [bools(3, 4)], {"axes": [1]}, onnx_attrs={},
         onnx_extra=[np.array([1], np.int64)], opset=20)
case("empty", "Softmax", [f32(0, 3)], {"axis": -1})
case("nan-propagates", "Max", [const([np.nan, 1.0], np.float32), const([1.0, np.nan], np.float32)])
case("nan", "Clip", [const([np.nan, 1.0, -1.0], np.float32), const(0.0, np.float32), const(0.5, np.float32)])
case("nan", "Relu", [const([np.nan, -1.0, 2.0], np.float32)])
case("truncates", "Cast", [const([-1.7, 1.7, -0.5, 2.5, -2.5], np.float32)], {"to": "int32"},
     onnx_attrs={"to": helper.np_dtype_to_tensor_dtype(np.dtype("int32"))})
case("nan-to-bool", "Cast", [const([np.nan, 0.0, -0.0, 1e-30], np.float32)], {"to": "bool"},
     onnx_attrs={"to": helper.np_dtype_to_tensor_dtype(np.dtype("bool"))})
case("3d", "Conv", [f32(1, 2, 4, 5, 6), f32(3, 2, 2, 3, 2), f32(3)], {"pads": [0, 1, 0, 1, 0, 1]}, **GEMM_TOL)
case("3d-ceil", "MaxPool", [f32(1, 2, 4, 5, 6)], {"kernel_shape": [2, 3, 2], "ceil_mode": 1, "strides": [2, 2, 2]})
case("int8", "MaxPool", [ints(1, 1, 5, 5, lo=-128, hi=128, dtype=np.int8)],
     {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]})
case("3d-cip1", "AveragePool", [f32(1, 2, 4, 5, 6)],
     {"kernel_shape": [2, 3, 2], "pads": [1, 1, 1, 0, 0, 0], "count_include_pad": 1})
for cip in (0, 1):
    # the ceil_mode overhang past the explicit end pad never counts, even with count_include_pad
    case(f"1d-ceil-overhang-past-pads-cip{cip}-opset19", "AveragePool", [f32(1, 1, 6)],
         {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1, "count_include_pad": cip},
         opset=19)
    case(f"1d-ceil-drops-window-in-padding-cip{cip}-opset19", "AveragePool", [f32(1, 2, 6)],
         {"kernel_shape": [3], "strides": [3], "pads": [0, 2], "ceil_mode": 1, "count_include_pad": cip},
         opset=19)
case("uneven-last-empty", "Split", [f32(4)], {"num_outputs": 3}, opset=OPSET_AXES_INPUT, n_outputs=3)
case("scalar-axis0", "Flatten", [f32()], {"axis": 0})
case("k0-whole-slices", "GatherND", [f32(2, 3), const(np.zeros((4, 0)))])
case("batch2", "GatherND", [f32(2, 3, 4, 5), const([[[[1], [0]], [[3], [2]], [[0], [-1]]]] * 2)],
     {"batch_dims": 2})
case("empty-negative-step", "Slice", [f32(0, 3), const([-1]), const([-10]), const([0]), const([-1])])
case("float32-long", "Range", [const(0.1, np.float32), const(30.0, np.float32), const(0.1, np.float32)])


# --- running both sides ------------------------------------------------------------------------


def run_onnxruntime(c: Case, inputs: list) -> list[np.ndarray]:
    names, value_infos, feeds = [], [], {}
    for i, x in enumerate(list(inputs) + list(c.onnx_extra)):
        if x is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        value_infos.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape))
        feeds[name] = x
    while names and names[-1] == "":
        names.pop()
    outs = [f"out{i}" for i in range(c.n_outputs)]
    attrs = c.onnx_attrs if c.onnx_attrs is not None else {k: v for k, v in c.attrs.items() if v is not None}
    node = helper.make_node(c.onnx_op or c.op, names, outs, **attrs)
    graph = helper.make_graph([node], "one_node", value_infos,
                              [helper.make_empty_tensor_value_info(o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", c.opset)], ir_version=9)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # an older onnxruntime without this opset (Gelu is opset 20)
        if c.opset > OPSET_AXES_INPUT:
            pytest.skip(f"onnxruntime {ort.__version__} cannot run {c.op} at opset {c.opset}: {e}")
        raise
    return sess.run(None, feeds)


def run_reference(op: str, attrs: dict, inputs: list) -> tuple:
    run = lookup(op, "dense", "reference")(fill_attrs(op, attrs), {})
    return run(*inputs)


def read_only(x):
    """A read-only copy: a reference kernel must never write into its inputs."""
    if x is None:
        return None
    x = np.array(x)
    x.flags.writeable = False
    return x


def assert_same(got, want, rtol, atol):
    assert isinstance(got, np.ndarray), f"output is {type(got).__name__}, not np.ndarray"
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_reference_matches_onnxruntime(c: Case):
    rng = np.random.default_rng(zlib.crc32(c.id.encode()))
    inputs = [None if g is None else np.asarray(g(rng)) for g in c.inputs]
    want = run_onnxruntime(c, inputs)
    got = run_reference(c.op, c.attrs, [read_only(x) for x in inputs])
    assert isinstance(got, tuple) and len(got) == len(want)
    for g, w in zip(got, want):
        assert_same(g, w, c.rtol, c.atol)
        # C-contiguous inputs give C-contiguous outputs (what a fast kernel downstream expects)
        assert g.flags.c_contiguous


# --- ops with no ONNX counterpart, or a float64 formula as the oracle -----------------------------


@pytest.mark.parametrize("x_shape,n,bias", [((5, 8), 3, True), ((2, 3, 8), 4, True), ((8,), 2, True),
                                            ((1, 13), 7, False), ((0, 4), 3, True), ((4, 1), 5, True)])
def test_linear_matches_float64(x_shape, n, bias):
    rng = np.random.default_rng(zlib.crc32(repr((x_shape, n, bias)).encode()))
    k = x_shape[-1]
    x = rng.uniform(-3, 3, x_shape).astype(np.float32)
    w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    b = rng.uniform(-1, 1, n).astype(np.float32) if bias else None
    want = x.astype(np.float64) @ w.astype(np.float64).T
    if bias:
        want = want + b
    (got,) = run_reference("Linear", {}, [read_only(x), read_only(w)] + ([read_only(b)] if bias else []))
    assert_same(got, want.astype(np.float32), FLOAT_RTOL, FLOAT_ATOL)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_float64_formula(approximate):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-8, 8, 200), [0.0, -1e-3, 1e-3, 10.0, -10.0]]).astype(np.float32)
    x64 = x.astype(np.float64)
    if approximate == "none":
        want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x64])
    else:
        want = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    (got,) = run_reference("Gelu", {"approximate": approximate}, [read_only(x)])
    assert_same(got, want.astype(np.float32), FLOAT_RTOL, FLOAT_ATOL)


def test_erf_is_accurate_in_float64():
    from kernels.reference._common import erf64
    x = np.linspace(-6, 6, 1001)
    assert np.max(np.abs(erf64(x) - np.array([math.erf(v) for v in x]))) == 0.0
    (y,) = run_reference("Erf", {}, [np.float32([0.5, -2.0])])
    assert y.dtype == np.float32


# --- coverage and conventions --------------------------------------------------------------------


def _ref_functions():
    return {name: fn for mod in reference_pkg.MODULES for name, fn in vars(mod).items()
            if name.endswith("_ref") and callable(fn)}


def test_every_op_has_a_reference_kernel():
    registered = {op for (op, layout, backend) in kernels("reference") if layout == "dense"}
    assert sorted(set(OPS) - registered) == []
    names = _ref_functions()
    assert sorted(f"{snake_name(op)}_ref" for op in OPS if f"{snake_name(op)}_ref" not in names) == []


def test_every_ref_function_has_a_docstring():
    missing = sorted(name for name, fn in _ref_functions().items() if not (fn.__doc__ or "").strip())
    assert missing == []


def test_every_op_is_tested():
    # ops with no ONNX counterpart are tested elsewhere: Linear in test_onnx_import and the
    # backends' tests, the fused ops against the math they replace in test_fusion, and
    # DisentangledAttention (the reference backend's run of the fused DeBERTa-v3 export against
    # onnxruntime on the unfused one) in test_default_exports
    tested = {c.op for c in CASES} | {"Linear", "Attention", "SkipLayerNormalization", "DisentangledAttention"}
    assert sorted(set(OPS) - tested) == []


def test_zero_d_results_are_arrays():
    a, b = np.float32(1.5), np.float32(2.0)
    for op, inputs in [("Add", [np.asarray(a), np.asarray(b)]), ("Sigmoid", [np.asarray(a)]),
                       ("ReduceSum", [np.float32([1, 2])]), ("Identity", [np.asarray(a)])]:
        attrs = {"keepdims": 0} if op == "ReduceSum" else {}
        (y,) = run_reference(op, attrs, inputs)
        assert isinstance(y, np.ndarray) and y.ndim == 0 and y.dtype == np.float32, (op, type(y))


def test_missing_required_attribute_is_an_error_at_plan_time():
    with pytest.raises(ValueError, match="to"):
        lookup("Cast", "dense", "reference")(fill_attrs("Cast", {}), {})
    with pytest.raises(ValueError, match="num_outputs"):
        lookup("Split", "dense", "reference")(fill_attrs("Split", {}), {})
    with pytest.raises(ValueError, match="approximate"):
        lookup("Gelu", "dense", "reference")(fill_attrs("Gelu", {"approximate": "fast"}), {})


@pytest.mark.parametrize("axis, message", [(np.array([0, 1]), "axis must be one integer"),
                                           (np.array(0.0), "axis must be one integer"),
                                           (np.array(2), "axis 2 is out of range for rank 2"),
                                           (np.array(-3), "axis -3 is out of range for rank 2")])
def test_cum_sum_refuses_a_bad_axis(axis, message):
    from kernels.reference.elementwise import cum_sum_ref
    with pytest.raises(ValueError, match=message):
        cum_sum_ref(np.zeros((2, 3), np.float32), axis)
