"""Shape ops and indexing: any dtype, data moved, never changed.

Shape-like inputs (Reshape's shape, Slice's starts/ends/axes/steps, Expand's shape, Tile's
repeats, ConstantOfShape's shape) are 1-D integer tensors, read once per call into Python
ints. Negative axes count from the end, as in ONNX.

Aliasing: Reshape, Flatten, Squeeze, Unsqueeze may return views of their input (outputs are
read-only). Transpose, Slice, Split, Expand, Tile, Gather* return new C-order arrays, so a
C-contiguous input always gives a C-contiguous output. (np.array(..., order="C") rather than
np.ascontiguousarray, which would turn a 0-d result into shape (1,).)
"""
from __future__ import annotations

import numpy as np

from ._common import is_float, normalize_axis, prod, reference_kernel


def _ints(t):
    """A 1-D integer tensor (or sequence) as a list of Python ints (no int64 overflow)."""
    return [int(v) for v in np.asarray(t).reshape(-1)]


@reference_kernel("Shape")
def shape_ref(x, start=0, end=None):
    """X's shape as a 1-D int64 tensor, dims [start, end) with negative values counting from
    the end and both clamped to [0, rank] (ONNX 15); any X."""
    rank = x.ndim

    def clamp(i):
        return min(max(i + rank if i < 0 else i, 0), rank)

    s = clamp(int(start))
    e = rank if end is None else clamp(int(end))
    return np.array(x.shape[s:e], dtype=np.int64)


@reference_kernel("Reshape")
def reshape_ref(x, shape, allowzero=0):
    """X with a new shape; ``shape`` 1-D int64: 0 copies X's dim at that position (unless
    allowzero=1, where 0 is a real zero dim), -1 (at most one) is inferred. May be a view."""
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        raise ValueError(f"Reshape: shape {dims} has more than one -1")
    if -1 in dims:
        known = prod(d for d in dims if d != -1)
        if known == 0 or x.size % known:
            raise ValueError(f"Reshape: cannot infer -1 in {dims} for an input of shape {x.shape}")
        dims[dims.index(-1)] = x.size // known
    if prod(dims) != x.size:
        raise ValueError(f"Reshape: cannot reshape {x.shape} ({x.size} elements) to {dims}")
    return x.reshape(dims)


@reference_kernel("Flatten")
def flatten_ref(x, axis=1):
    """X as 2-D (prod(X.shape[:axis]), prod(X.shape[axis:])), axis in [-rank, rank]
    (a 0-d X counts as rank 0: shape (1, 1)). May be a view."""
    rank = x.ndim
    if not -rank <= axis <= rank:
        raise ValueError(f"Flatten: axis {axis} out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    return x.reshape(prod(x.shape[:axis]), prod(x.shape[axis:]))


@reference_kernel("Transpose")
def transpose_ref(x, perm=None):
    """X with its axes permuted: output axis i is input axis perm[i]; perm None reverses the
    axes. A new C-order array."""
    return np.array(np.transpose(x, None if perm is None else [int(p) for p in perm]), order="C")


@reference_kernel("Unsqueeze", required=("axes",))
def unsqueeze_ref(x, axes):
    """X with size-1 dims inserted at ``axes`` (an attribute in the qrt IR, an input in ONNX
    >= 13); axes index the output, whose rank is rank(X) + len(axes), and may be negative.
    May be a view."""
    rank = x.ndim + len(axes)
    out_axes = [normalize_axis(a, rank, "Unsqueeze axis") for a in axes]
    if len(set(out_axes)) != len(out_axes):
        raise ValueError(f"Unsqueeze: axes {list(axes)} repeat an axis")
    return np.expand_dims(x, tuple(out_axes))


@reference_kernel("Squeeze")
def squeeze_ref(x, axes=None):
    """X without the size-1 dims at ``axes`` (an attribute in the qrt IR); axes None removes
    every size-1 dim, and so does an empty list (as onnxruntime treats an empty axes input).
    Squeezing a dim that is not 1 is an error. May be a view."""
    if axes is None or len(axes) == 0:
        return np.squeeze(x)
    ax = tuple(normalize_axis(a, x.ndim, "Squeeze axis") for a in axes)
    bad = [a for a in ax if x.shape[a] != 1]
    if bad:
        raise ValueError(f"Squeeze: dims {bad} of shape {x.shape} are not 1")
    return np.squeeze(x, axis=ax)


def slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice's clamping of one axis (see slice_ref): (start, end) with a negative first
    given the dim, then clamped to [0, dim] for step > 0, to [0, dim-1] and [-1, dim-1] for
    step < 0 (end -1: past the front). Also used by the converter's PyTorch evaluation."""
    if step == 0:
        raise ValueError("Slice: a step is 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    if dim == 0:
        return 0, 0
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


@reference_kernel("Slice")
def slice_ref(data, starts, ends, axes=None, steps=None):
    """data[starts:ends:steps] along ``axes``; starts, ends, axes, steps 1-D int tensors (axes
    None means 0..len(starts)-1, steps None means ones). A new C-order array.

    Clamping, per ONNX: a negative start/end first gets the dim added; then for step > 0 both
    clamp to [0, dim], for step < 0 start clamps to [0, dim-1] and end to [-1, dim-1], where
    -1 means "past the front" (so INT64_MIN/INT64_MAX sentinels mean "to the very end").
    """
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError(f"Slice: starts {starts}, ends {ends}, axes {axes}, steps {steps} "
                         "differ in length")
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, data.ndim, "Slice axis")
        start, end = slice_bounds(start, end, step, data.shape[axis])
        # numpy reads end=-1 as "the last element"; None is "past the front" for step < 0
        index[axis] = slice(start, None if end < 0 else end, step)
    return np.array(data[tuple(index)], order="C")


@reference_kernel("Concat", required=("axis",))
def concat_ref(*xs, axis):
    """The inputs joined along ``axis``; all of one dtype and rank, equal except along axis
    (where a dim may be 0). A new array."""
    axis = normalize_axis(axis, xs[0].ndim, "Concat axis")
    return np.concatenate(xs, axis=axis)


def _check_split(attrs):
    if attrs["split"] is None and attrs["num_outputs"] is None:
        raise ValueError("Split: set 'split' (sizes) or 'num_outputs' (the importer sets it "
                         "from the node's outputs when ONNX had neither)")


@reference_kernel("Split", check=_check_split)
def split_ref(x, axis=0, split=None, num_outputs=None):
    """X cut along ``axis`` into parts of sizes ``split`` (summing to the dim), or, when split
    is None, into ``num_outputs`` parts of ceil(dim / num_outputs), the last one smaller
    (ONNX 18; an even split when it divides). Returns a tuple of new C-order arrays."""
    axis = normalize_axis(axis, x.ndim, "Split axis")
    dim = x.shape[axis]
    if split is None:
        n = int(num_outputs)
        chunk = -(-dim // n)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
    else:
        sizes = [int(s) for s in split]
    if sum(sizes) != dim or min(sizes, default=0) < 0:
        raise ValueError(f"Split: sizes {sizes} do not add up to dim {axis} of shape {x.shape}")
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.array(p, order="C") for p in np.split(x, bounds, axis=axis))


@reference_kernel("Expand")
def expand_ref(x, shape):
    """X broadcast with ``shape`` (1-D int64) in both directions, as ONNX Expand: the output
    shape is np.broadcast_shapes(X.shape, shape), so a 1 in ``shape`` keeps X's dim.
    A new C-order array."""
    out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    return np.array(np.broadcast_to(x, out), order="C")


@reference_kernel("Tile")
def tile_ref(x, repeats):
    """X repeated ``repeats[i]`` times along axis i; repeats 1-D int64 of length rank(X).
    A new array."""
    reps = _ints(repeats)
    if len(reps) != x.ndim:
        raise ValueError(f"Tile: {len(reps)} repeats for a rank-{x.ndim} input")
    return np.tile(x, reps)


@reference_kernel("Range")
def range_ref(start, limit, delta):
    """[start, start + delta, ...) up to ``limit`` (exclusive); start, limit, delta 0-d
    tensors of one dtype T; output 1-D T of max(ceil((limit - start) / delta), 0) elements,
    element i = start + i * delta (float: computed in float64, rounded once to T)."""
    dtype = np.asarray(start).dtype
    if is_float(dtype):
        s, l, d = (float(np.asarray(v).reshape(())) for v in (start, limit, delta))
        n = max(int(np.ceil((l - s) / d)), 0)
        return (s + np.arange(n, dtype=np.float64) * d).astype(dtype)
    s, l, d = (int(np.asarray(v).reshape(())) for v in (start, limit, delta))
    if d == 0:
        raise ValueError("Range: delta is 0")
    n = max(-((s - l) // d), 0)  # exact integer ceil((l - s) / d)
    return (s + np.arange(n, dtype=np.int64) * d).astype(dtype)


@reference_kernel("ConstantOfShape")
def constant_of_shape_ref(shape, value=0.0, dtype="float32"):
    """A tensor of ``shape`` (1-D int64; empty gives a 0-d tensor) filled with ``value``,
    of numpy dtype ``dtype``."""
    return np.full(tuple(_ints(shape)), value, dtype=np.dtype(dtype))


# --- indexing ---------------------------------------------------------------------------------


@reference_kernel("Gather")
def gather_ref(data, indices, axis=0):
    """data indexed along ``axis`` by ``indices`` (int32/int64 of any shape, negative values
    count from the end); output shape data.shape[:axis] + indices.shape + data.shape[axis+1:].
    With axis 0 and a constant (V, D) table this is an embedding lookup. Out-of-range
    indices raise IndexError."""
    axis = normalize_axis(axis, data.ndim, "Gather axis")
    return np.take(data, indices, axis=axis)  # np.take reads negative indices like Python


@reference_kernel("GatherElements")
def gather_elements_ref(data, indices, axis=0):
    """out[i0, ..., ik, ...] = data[i0, ..., indices[i0, ..., ik, ...], ...] with the index
    replacing position ``axis``; indices of the same rank as data (other dims no larger);
    output shape indices.shape. Negative indices count from the end."""
    axis = normalize_axis(axis, data.ndim, "GatherElements axis")
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = np.asarray(indices)
    return data[tuple(index)]  # numpy fancy indexing wraps negative indices


@reference_kernel("GatherND")
def gather_nd_ref(data, indices, batch_dims=0):
    """Gather slices of data by index tuples: indices (*B, *I, k) with B = the first
    ``batch_dims`` dims, shared with data (*B, *D); each k-tuple indexes the first k dims of
    D; output (*B, *I, *D[k:]). Negative indices count from the end."""
    b = int(batch_dims)
    k = indices.shape[-1]
    if data.shape[:b] != indices.shape[:b] or k > data.ndim - b:
        raise ValueError(f"GatherND: data {data.shape} and indices {indices.shape} do not match "
                         f"for batch_dims={b}")
    nb = prod(data.shape[:b])
    out_shape = indices.shape[:-1] + data.shape[b + k:]
    data_b = data.reshape((nb,) + data.shape[b:])
    idx_b = indices.reshape((nb,) + indices.shape[b:])
    out = np.empty((nb,) + out_shape[b:], dtype=data.dtype)
    for i in range(nb):
        # the last axis of indices holds one coordinate per leading axis of this batch's data
        out[i] = data_b[i][tuple(np.moveaxis(idx_b[i], -1, 0))]
    return out.reshape(out_shape)
