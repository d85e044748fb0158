"""The fused ops of runtime/fuse.py on the native backend: Attention, DisentangledAttention,
SkipLayerNormalization, Split (views); and LayerNormalization (the SkipLayerNorm kernel without
the skip).

Float32 in and out; other dtypes run the reference (kernels/reference/fused.py), as on the
numba backend. The kernels are csrc/attention.cpp and csrc/layer_norm.cpp, with their
numerics written down in csrc/attention.h and csrc/layer_norm.h:

* Attention: one work item per (batch, head), claimed by the threads of csrc/work_pool.h, each item on one thread
  in a fixed order (results identical for any thread count). Per head S = Qh Kh^T and Y = P Vh
  are float32 GEMMs with AVX-512 FMA register tiles (8 rows x 32 columns; AVX2 + FMA: 6 rows
  x 16 columns), the softmax along the key axis in float32 with a vectorised exp (relative
  error ~1e-7), scale and mask applied in one FMA; a scalar path where the CPU has neither.
  q, k, v are read in place with their strides (the Split of a merged QKV Linear gives
  views): no copy. Error bound against the float64 reference: tests/test_fusion.py
  ATTENTION_RTOL.
* SkipLayerNormalization: LayerNorm of float32(x + skip) with float64 statistics (the numba
  kernel's numerics), parallel over blocks of 16 rows; explicit AVX-512 (GCC does not
  vectorise the float64 sums of the generic code): 128 x 384 in 27.6 us on one thread,
  15.7 us on two (numba's kernel: 29.2 / 16.9 us, same run); explicit AVX2 with the generic
  code's sums in the same order (the scalar path's bits).

Paths: csrc's ``isa`` argument ('auto', 'avx512', 'avx2', 'scalar'; ``_native.fused_isas()``
lists this CPU's). 'auto' (``_native.fused_isa()``) is the best one, no wider than the int8
path when QRT_NATIVE_ISA / ``set_int8_isa`` forces one, so that forcing it runs the whole
backend on that ISA.

The thread count is the native backend's (``set_threads``).
"""
from __future__ import annotations

import numpy as np

from kernels.blas_activity import blas_recently_called
from kernels.fused_dispatch import all_f32, attention_factory, reference_of, skip_layer_normalization_factory
from kernels.registry import register
from kernels.reshape_views import reshape_views_factory
from kernels.split_views import split_views_factory

from . import _native

F32 = np.dtype(np.float32)


def _last_axis_contiguous(a: np.ndarray) -> np.ndarray:
    # the kernel reads rows of a head as vectors: the last axis must have unit stride
    return a if a.shape[-1] <= 1 or a.strides[-1] == a.itemsize else np.ascontiguousarray(a)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
              head_dim: int, scale: float, nan_to_zero: bool = False) -> np.ndarray:
    """Y (B, Sq, H*Dv) float32 for float32 q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv)
    and mask (None or broadcastable to (B, H, Sq, Sk)); see the module docstring."""
    args = (_last_axis_contiguous(q), _last_axis_contiguous(k), _last_axis_contiguous(v), mask, int(head_dim),
            float(scale), "auto", bool(nan_to_zero))
    if blas_recently_called():
        return _on_one_thread(_native.attention, *args)
    return _native.attention(*args)


def _on_one_thread(kernel, *args):
    """kernel(*args) on one thread: the callers' choice when a BLAS GEMM ran just before
    (blas_recently_called), whose spinning OpenBLAS workers would stall the second thread
    (kernels/blas_activity.py; fp32 BERT with native attention 64 ms per run, with native
    SkipLayerNorm too 104 ms, instead of ~25)."""
    threads = _native.get_threads()
    _native.set_threads(1)
    try:
        return kernel(*args)
    finally:
        _native.set_threads(threads)


# The session's steps: C++ callables bound once (csrc/bind_fused.cpp, AttentionStep /
# SkipLayerNormStep), the Python runs above for every call they do not take
register("Attention", "native")(attention_factory(
    attention, fast=lambda head_dim, scale, nan_to_zero, run: _native.AttentionStep(head_dim, scale, nan_to_zero, run,
                                                                                    blas_recently_called)))


@register("DisentangledAttention", "native")
def disentangled_attention_factory(attrs: dict, weights: dict):
    """DeBERTa's disentangled attention (csrc/attention.h): float32 q, k, v, mask and position
    tables, integer indices (as int64); anything else runs the reference."""
    ref = reference_of("DisentangledAttention", attrs, weights)     # checks head_dim, scale
    head_dim, scale = int(attrs["head_dim"]), float(attrs["scale"])
    # position tables that are initializers (DeBERTa's, folded by the exporter) are transposed
    # for the kernel once, here: {input position: (the session's array, its PositionTable)}
    bound = {}
    for pos in (4, 6):
        t = weights.get(pos)
        data = None if t is None or t.layout != "dense" else t.fields["data"]
        if isinstance(data, np.ndarray) and data.dtype == F32 and data.ndim == 3 and data.size:
            bound[pos] = (data, _native.PositionTable(np.ascontiguousarray(data)))

    def table(pos: int, given):
        # the bound table for the session's own array, else the array (transposed per call)
        held = bound.get(pos)
        if held is not None and given is held[0]:
            return held[1]
        return None if given is None else np.ascontiguousarray(given)

    def run(q, k, v, mask=None, pos_key=None, c2p_index=None, pos_query=None, p2c_index=None):
        tables = [t for t in (pos_key, pos_query) if t is not None]
        indices = [i for i in (c2p_index, p2c_index) if i is not None]
        if not (all_f32(q, k, v, mask, *tables) and all(isinstance(i, np.ndarray) and i.dtype.kind in "iu"
                                                         for i in indices)):
            return ref(q, k, v, mask, pos_key, c2p_index, pos_query, p2c_index)
        c = np.ascontiguousarray
        idx = [None if i is None else c(i, np.int64) for i in (c2p_index, p2c_index)]
        args = (_last_axis_contiguous(q), _last_axis_contiguous(k), _last_axis_contiguous(v), mask,
                table(4, pos_key), idx[0], table(6, pos_query), idx[1], head_dim, scale)
        if blas_recently_called():
            return (_on_one_thread(_native.disentangled_attention, *args),)
        return (_native.disentangled_attention(*args),)
    return run


def skip_layer_norm(x: np.ndarray, skip: np.ndarray | None, scale: np.ndarray, bias: np.ndarray | None,
                    epsilon: float) -> np.ndarray:
    """LayerNorm over the last axis of float32(x + skip), x and skip float32 of one shape; skip
    None: of x alone (LayerNormalization)."""
    c = np.ascontiguousarray
    args = (c(x), None if skip is None else c(skip), c(scale), None if bias is None else c(bias))
    if blas_recently_called():
        return _on_one_thread(_native.skip_layer_norm, *args, float(epsilon))
    return _native.skip_layer_norm(*args, float(epsilon))


@register("LayerNormalization", "native")
def layer_normalization_factory(attrs: dict, weights: dict):
    """LayerNormalization over the last axis of float32 x (pre-LN transformers: GPT-2, ViT; and
    every LayerNorm SkipLayerNormalization did not take) by the SkipLayerNorm kernel with no
    skip (csrc/layer_norm.h, float64 statistics); another axis, shapes or dtypes: the reference."""
    ref = reference_of("LayerNormalization", attrs, weights)
    axis, eps = int(attrs["axis"]), float(attrs["epsilon"])

    def run(x, scale, bias=None):
        if (type(x) is np.ndarray and x.ndim and axis in (-1, x.ndim - 1) and x.shape[-1] and all_f32(x, scale, bias)
                and scale.shape == x.shape[-1:] and (bias is None or bias.shape == scale.shape)):
            return (skip_layer_norm(x, None, scale, bias, eps),)
        return ref(x, scale, bias)
    return run


register("SkipLayerNormalization", "native")(skip_layer_normalization_factory(
    skip_layer_norm, fast=lambda eps, run: _native.SkipLayerNormStep(eps, run, blas_recently_called)))
register("Split", "native")(split_views_factory)      # views, kernels/split_views.py
register("Reshape", "native")(reshape_views_factory)      # views, kernels/reshape_views.py
