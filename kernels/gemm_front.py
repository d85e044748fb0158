"""The one front of every Linear / Conv kernel on a packed weight: the policy written once.

A backend registers, per (op, layout), two functions and this module makes the kernel factory:

    prepare(weight: PackedTensor, a: GemmAttrs, weights: dict) -> plan   once, at plan time
    compute(x, plan, bias, a: GemmAttrs) -> Y                            every call

The front parses the attributes once (``GemmAttrs``), checks the weight and binds it: run's
weight slot is not read (kernels/registry.py), so the planner swaps whole kernels. The shared
pieces of ``compute`` live here too (``rows_of``, ``bias64`` / ``bias32_or_64``,
``weight_only``, ``activate_after``), so that no backend writes its own.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kernels.blas_activity import note_blas_call
from kernels.core.layouts import PackedTensor
from kernels.registry import EPILOGUE_OPS, apply_epilogue_op, fill_attrs, has_kernel, lookup

# The activations the quantized GEMMs' epilogues compute (csrc/activation.h, numba's, the GPU
# kernels'): a ``fused`` factory declares these; any other (hard_swish) kernels.registry.build
# applies after the kernel.
GEMM_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


@dataclass(frozen=True)
class GemmAttrs:
    """A Linear/Conv node's attributes (kernels/core/ops.py), defaults filled in."""
    op: str
    act_quant: str = "none"
    act_scale: Any = None
    act_zero_point: Any = 0
    activation: str = "none"          # the fused epilogue (kernels/registry.py EPILOGUE_OPS)
    group: int = 1                    # Conv only, as the rest
    strides: Any = None
    pads: Any = None
    dilations: Any = None

    @classmethod
    def of(cls, op: str, attrs: dict[str, Any]) -> "GemmAttrs":
        activation = attrs.get("activation", "none")
        if activation != "none" and activation not in EPILOGUE_OPS:
            raise ValueError(f"{op}: activation must be one of none, {', '.join(EPILOGUE_OPS)}; got {activation!r}")
        group = attrs.get("group")
        return cls(op, attrs.get("act_quant", "none"), attrs.get("act_scale"), attrs.get("act_zero_point", 0),
                   activation, int(group) if group is not None else 1,
                   attrs.get("strides"), attrs.get("pads"), attrs.get("dilations"))

    @property
    def quant(self) -> dict[str, Any]:
        """The activation quantization, as the plan constructors take it."""
        return {"act_quant": self.act_quant, "act_scale": self.act_scale, "act_zero_point": self.act_zero_point}

    @property
    def conv(self) -> dict[str, Any]:
        """The Conv geometry, as the conv drivers take it."""
        return {"strides": self.strides, "pads": self.pads, "dilations": self.dilations, "group": self.group}


class _Held:
    """A prepared plan, weakly referenceable (plans are tuples, dicts, objects of any kind)."""
    __slots__ = ("plan", "__weakref__")

    def __init__(self, plan: Any):
        self.plan = plan


# Prepared plans (repacked panels, transposed or widened weights: as large as the weights, on
# the heap) shared by every kernel whose weights have the same bytes, prepared by the same
# function with the same attributes: sessions of one file in one process, and the planner's
# candidates of one layer, prepare each weight once (issue 16). Weak: a plan goes with the
# last kernel that holds it. Plans are read-only after prepare (compute allocates its own
# outputs and scratch), so sharing them between sessions and threads is safe.
_SHARED: "weakref.WeakValueDictionary[tuple, _Held]" = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _digest(arrays: list[tuple[str, np.ndarray]]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        if a.size:                   # (a view with a zero in its shape cannot be cast to bytes)
            h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.digest()


def _content_key(weights: dict) -> tuple:
    """The weights' identity by content: layout, shape, params and a digest of every array's
    bytes (about 1 GB/s: a MiniLM-sized int8 model, 22 MB, in ~20 ms per session)."""
    parts = []
    for k in sorted(weights, key=str):
        w = weights[k]
        if isinstance(w, PackedTensor):
            parts.append((k, w.layout, tuple(w.shape), repr(sorted(w.params.items())),
                          _digest(sorted(w.fields.items()))))
        elif isinstance(w, np.ndarray):
            parts.append((k, _digest([("", w)])))
        else:                        # nothing else is bound today; never share what is not known
            parts.append((k, object()))
    return tuple(parts)


def shared_plan(prepare: Callable, weight: PackedTensor, a: GemmAttrs, weights: dict) -> _Held:
    """prepare(weight, a, weights), or the plan an identical call already made (the same
    prepare function, attributes and weight bytes)."""
    with np.printoptions(threshold=np.inf):      # repr of an array attribute: every value
        attrs = repr(a)
    key = (prepare, attrs, _content_key(weights))
    with _SHARED_LOCK:
        held = _SHARED.get(key)
    if held is not None:
        return held
    held = _Held(prepare(weight, a, weights))
    with _SHARED_LOCK:
        return _SHARED.setdefault(key, held)


def bound_weight(op: str, weights: dict) -> PackedTensor:
    """The node's weight initializer (input 1), which the kernel binds; TypeError otherwise.
    A Linear's weight is (N, K)."""
    w = weights.get(1)
    if not isinstance(w, PackedTensor):
        raise TypeError(f"{op}: the weight must be an initializer in a packed layout, got {type(w).__name__}")
    if op == "Linear" and len(w.shape) != 2:
        raise ValueError(f"Linear: packed weight {w.name!r} has shape {w.shape}, expected (N, K)")
    return w


def gemm_factory(op: str, prepare: Callable[[PackedTensor, GemmAttrs, dict], Any],
                 compute: Callable[[Any, Any, Any, GemmAttrs], Any], *, fused: bool = False,
                 name: str | None = None,
                 fast: Callable[[Any, GemmAttrs, Callable[..., tuple]], Callable[..., tuple] | None] | None = None
                 ) -> Callable[[dict, dict], Callable[..., tuple]]:
    """The kernel factory of ``op`` on a packed weight (module docstring). ``fused``: compute
    applies ``a.activation`` itself (kernels.registry.build then adds no activation kernel).
    ``fast(plan, a, run)``: a backend's run for the common call (float32 rows straight into
    its kernel, everything bound at plan time), which hands any other call to ``run`` (the
    general one, which it must keep: it holds the shared plan); None where it has none.
    Why: a small model's Linear takes tens of microseconds, and each Python layer between
    the session and the kernel costs about a microsecond of it, more on caches the kernels
    just emptied."""

    def factory(attrs: dict[str, Any], weights: dict) -> Callable[..., tuple]:
        a = GemmAttrs.of(op, attrs)
        held = shared_plan(prepare, bound_weight(op, weights), a, weights)
        plan = held.plan

        def run(x, _weight=None, bias=None, _held=held):    # _held: keeps the shared plan alive
            return (compute(x, plan, bias, a),)
        quick = None if fast is None else fast(plan, a, run)
        return run if quick is None else quick

    if fused:
        factory.fused_activations = GEMM_ACTIVATIONS
    factory.__name__ = factory.__qualname__ = name or f"{op.lower()}_factory"
    return factory


# --- the shared pieces of compute -------------------------------------------------------------

def rows_of(x: Any, k: int, weight: PackedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(X as an array, X as (M, K) rows) for a Linear of K inputs, or ValueError naming the shapes."""
    x = np.asarray(x)
    if not x.shape or x.shape[-1] != k or x.dtype.kind != "f":
        raise ValueError(f"Linear: X {x.shape} ({x.dtype}) does not match packed weight "
                         f"{weight.name!r} of shape {weight.shape} (need float X (..., K))")
    return x, x.reshape(-1, k)


def bias64(bias: Any, n: int, op: str) -> np.ndarray | None:
    """The bias as contiguous float64 (N,) (exact from any float32 / integer bias), or None."""
    if bias is None:
        return None
    b = bias if (type(bias) is np.ndarray and bias.dtype == np.float64 and bias.flags.c_contiguous) \
        else np.ascontiguousarray(bias, np.float64)
    if b.shape != (n,):
        raise ValueError(f"{op}: bias has shape {b.shape}, expected ({n},)")
    return b


F32 = np.dtype(np.float32)
F32_F64 = (F32, np.dtype(np.float64))


def bias32_or_64(bias: Any, n: int, op: str = "Linear") -> np.ndarray | None:
    """The bias as float32 or float64 (N,), as the native bindings read both (other dtypes to
    float64, exactly), or None."""
    if bias is None:
        return None
    b = np.asarray(bias)
    if b.dtype not in F32_F64:
        b = b.astype(np.float64)
    if b.shape != (n,):
        raise ValueError(f"{op}: bias has shape {b.shape}, expected ({n},)")
    return b


def activate_after(y: np.ndarray, activation: str, backend: str = "reference") -> np.ndarray:
    """The epilogue activation as its own op's kernel on Y, for the paths that do not fuse it
    (weight-only, X other than float32: the unfused pair rounds Y to its dtype first); the
    reference's kernel unless Y is float32 and ``backend`` has one."""
    if activation == "none":
        return y
    op, attrs = EPILOGUE_OPS[activation]
    backend = backend if y.dtype == np.float32 and has_kernel(op, "dense", backend) else "reference"
    return apply_epilogue_op(activation, lookup(op, "dense", backend)(fill_attrs(op, attrs), {}), y)


def weight_only(x2: np.ndarray, dense32: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """act_quant "none": Y (M, N) = X (M, K) @ W.T + bias with the weight dequantized once to
    float32 (N, K). float32 X: float32 BLAS (not bit exact: the float32 accumulation error is
    bounded by (K + 2) * 2^-24 * sum_k |x_k w_nk|); other float X: float64 BLAS (the reference's
    arithmetic), rounded once to X's dtype."""
    if x2.dtype == np.float32:
        y = x2 @ dense32.T
        note_blas_call()
        if bias is not None:
            y += bias.astype(np.float32, copy=False)
        return y
    y = np.asarray(x2, np.float64) @ dense32.T.astype(np.float64)
    if bias is not None:
        y += bias
    return y.astype(x2.dtype)
