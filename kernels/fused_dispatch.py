"""The factories of the fused ops that the CPU backends share: a fast float32 kernel where the
inputs fit it, the reference kernel for everything else (other dtypes, broadcasting, empty
rows). Each backend passes its own kernel function; the dispatch rule is written once, here.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kernels.registry import lookup

F32 = np.dtype(np.float32)


def reference_of(op: str, attrs: dict, weights: dict) -> Callable[..., tuple]:
    """The reference kernel of this node: what runs for inputs a fast kernel does not take."""
    return lookup(op, "dense", "reference")(attrs, weights)


def all_f32(*arrays: Any) -> bool:
    """Every array given is a float32 numpy array (None: an absent optional input)."""
    return all(a is None or (isinstance(a, np.ndarray) and a.dtype == F32) for a in arrays)


def attention_factory(attention: Callable[..., np.ndarray], fast: Callable[..., Any] | None = None):
    """Kernel factory of Attention: ``attention(q, k, v, mask, head_dim, scale, nan_to_zero)
    -> y`` on float32 q, k, v, mask; other dtypes run the reference (which also checks the
    attributes). ``fast(head_dim, scale, nan_to_zero, run)``: a backend's run for the common
    call, bound once (the native backend's C++ AttentionStep), which hands every other call to
    ``run``; the factory returns it instead of ``run``."""
    def factory(attrs: dict, weights: dict):
        ref = reference_of("Attention", attrs, weights)     # checks head_dim, scale, nan_to_zero
        head_dim, scale = int(attrs["head_dim"]), float(attrs["scale"])
        nan_to_zero = bool(attrs.get("nan_to_zero", 0))

        def run(q, k, v, mask=None):
            # type() and dtype compared one by one: all_f32's generator costs more than the
            # whole check on a small model's every call
            if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray
                    and q.dtype == F32 and k.dtype == F32 and v.dtype == F32
                    and (mask is None or (type(mask) is np.ndarray and mask.dtype == F32))):
                return ref(q, k, v, mask)
            return (attention(q, k, v, mask, head_dim, scale, nan_to_zero),)
        return run if fast is None else fast(head_dim, scale, nan_to_zero, run)
    return factory


def skip_layer_normalization_factory(skip_layer_norm: Callable[..., np.ndarray], fast: Callable[..., Any] | None = None):
    """Kernel factory of SkipLayerNormalization: ``skip_layer_norm(x, skip, scale, bias, eps)
    -> y`` for float32 x and skip of one shape (..., D), D >= 1, and (D,) scale and bias.
    x and skip that broadcast to one shape (BERT's embeddings: the (1, S, D) position table
    added to the (B, S, D) words) are broadcast here, a copy of the smaller one, so they take
    the fast kernel too (the reference's float64 path took 3 ms at 8 x 128 x 384 against
    0.2); anything else (other dtypes, shapes that do not broadcast) runs the reference.
    ``fast(epsilon, run)``: as attention_factory's (the native C++ SkipLayerNormStep)."""
    def factory(attrs: dict, weights: dict):
        ref = reference_of("SkipLayerNormalization", attrs, weights)
        eps = float(attrs["epsilon"])

        def run(x, skip, scale, bias=None):
            # the common call (a residual and its Linear's output, the same C-contiguous
            # float32 (..., D), constant (D,) scale and bias), checked inline (see attention)
            if (type(x) is np.ndarray and type(skip) is np.ndarray and x.dtype == F32 and skip.dtype == F32
                    and x.shape == skip.shape and x.ndim and type(scale) is np.ndarray and scale.dtype == F32
                    and scale.shape == x.shape[-1:] and x.shape[-1] and x.flags.c_contiguous
                    and skip.flags.c_contiguous and scale.flags.c_contiguous
                    and (bias is None or (type(bias) is np.ndarray and bias.dtype == F32
                                          and bias.shape == scale.shape and bias.flags.c_contiguous))):
                return (skip_layer_norm(x, skip, scale, bias, eps),)
            if not all_f32(x, skip, scale, bias) or x.ndim == 0 or skip.ndim == 0:
                return ref(x, skip, scale, bias)
            if x.shape != skip.shape:
                try:
                    shape = np.broadcast_shapes(x.shape, skip.shape)
                except ValueError:
                    return ref(x, skip, scale, bias)       # raises the error that names both shapes
                x = np.ascontiguousarray(np.broadcast_to(x, shape))
                skip = np.ascontiguousarray(np.broadcast_to(skip, shape))
            if (x.shape[-1] == 0 or scale.shape != (x.shape[-1],)
                    or (bias is not None and bias.shape != (x.shape[-1],))):
                return ref(x, skip, scale, bias)
            return (skip_layer_norm(x, skip, scale, bias, eps),)
        return run if fast is None else fast(eps, run)
    return factory
