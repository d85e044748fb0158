"""Calibration: activation ranges for static int8 quantization (docs/CONVERTER.md, Numerics).

A Linear or Conv with ``act_quant="static"`` quantizes its input with one scale and one int8
zero point fixed at conversion time:

    qx = clip(rint(x / act_scale) + act_zero_point, -128, 127)          (round half to even)

Those two numbers come from running the float model on representative inputs, recording the
layer's input activations and choosing a range [lo, hi] to spend the 256 int8 levels on.
Every range here satisfies lo <= 0 <= hi, so that 0 (ReLU outputs, padding, masked positions)
is a grid point and quantizes exactly; ``scale_zero_point`` turns it into (scale, zero point).

The pieces, in the order the pipeline uses them:

    feeds   load_calib_npz(path, graph)           user data, one array per model input
            feeds_from_iterable(it, graph)        user data, an iterable of feed dicts
            random_feeds(graph)                   no data: random inputs (flagged as random)
            (a folder of .npy files, or a text file + tokenizer: runtime/convert/data.py)
    values  collect_inputs(graph, feeds, names)   run the float graph, keep those activations
    ranges  range_minmax / range_percentile / range_mse / range_entropy   (x: 1-D samples)
    result  calibrate(graph, feeds, layer_nodes, method) -> {node: (act_scale, act_zero_point)}

Every feed source returns a ``CalibFeeds``: a plain list of feed dicts that also says where
the data came from (``source``) and whether it is random (``is_random``), so the pipeline
and the report can say "calibrated on random inputs" instead of hiding it.

All bad input (files, arrays, names, methods) raises ValueError naming what was wrong.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..graph import Graph, Value, format_shape, shape_problem
from ..session import InferenceSession

# int8 activations use the full asymmetric range [-128, 127]: 255 steps between lo and hi.
QMIN, QMAX = -128, 127
_STEPS = QMAX - QMIN

DEFAULT_BATCH_SIZE = 32          # samples per feed when the model's batch axis is free
DEFAULT_MAX_VALUES = 2_000_000   # activation samples kept per value (bounds memory)
METHODS = ("minmax", "percentile", "mse", "entropy")

# Ops whose output is their input re-shaped or re-typed: an int graph input that reaches a
# Gather's indices through these still indexes that Gather's table (random_feeds).
_PASS_THROUGH = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


class CalibFeeds(list):
    """A list of feed dicts ({input name: array}, one dict per session.run) plus provenance.

    source:    human-readable origin, e.g. "calib.npz: 100 samples in 4 feeds".
    is_random: True when the feeds are random_feeds' synthetic inputs, not user data; ranges
               calibrated on them are a placeholder, and the pipeline should say so.
    """

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]] = (), source: str = "",
                 is_random: bool = False):
        super().__init__(feeds)
        self.source = source
        self.is_random = is_random


# ---------------------------------------------------------------------------- feeds -------

def _describe_inputs(graph: Graph) -> str:
    return ", ".join(f"{v.name!r} ({v.dtype} {format_shape(v.shape)})" for v in graph.inputs)


def _check_finite(name: str, a: np.ndarray, where: str) -> None:
    if a.dtype.kind in "fc":
        bad_nan = int(np.count_nonzero(np.isnan(a)))
        bad_inf = int(np.count_nonzero(np.isinf(a)))
        if bad_nan or bad_inf:
            parts = [f"{bad_nan} NaN" if bad_nan else "", f"{bad_inf} Inf" if bad_inf else ""]
            raise ValueError(f"{where}: array {name!r} contains {' and '.join(p for p in parts if p)} "
                             f"value(s) (of {a.size}); calibration data must be finite")


def _check_names(got: Iterable[str], graph: Graph, where: str) -> None:
    got = list(got)
    expected = [v.name for v in graph.inputs]
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(repr(n) for n in missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(repr(n) for n in extra)}")
        raise ValueError(f"{where}: {'; '.join(parts)}; the model's inputs are: {_describe_inputs(graph)}")


def _check_dtype(name: str, a: np.ndarray, v: Value, where: str) -> None:
    # Strict, like InferenceSession: a silent float64 -> float32 or int32 -> int64 cast would
    # hide a data pipeline that differs from the one the model will see in deployment.
    if str(a.dtype) != v.dtype:
        raise ValueError(f"{where}: array {name!r} has dtype {a.dtype}, the model's input {v.name!r} "
                         f"is {v.dtype} (convert it with .astype(np.{v.dtype}))")


def _check_feed(feed: Any, graph: Graph, where: str) -> dict[str, np.ndarray]:
    if not isinstance(feed, Mapping):
        raise ValueError(f"{where}: expected a dict of input name -> array, got {type(feed).__name__}")
    _check_names(feed.keys(), graph, where)
    out: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for v in graph.inputs:
        a = feed[v.name]
        a = a if isinstance(a, np.ndarray) else np.asarray(a)
        _check_dtype(v.name, a, v, where)
        problem = shape_problem(v, a.shape, symbols)
        if problem:
            raise ValueError(f"{where}: array {v.name!r} does not fit the model's input: {problem}")
        _check_finite(v.name, a, where)
        out[v.name] = a
    return out


def feeds_from_iterable(it: Iterable[Mapping[str, Any]], graph: Graph) -> CalibFeeds:
    """Calibration feeds from any iterable of {input name: array} dicts (one per run).

    Each feed is checked like InferenceSession would (exact input names, dtypes, ranks, fixed
    and symbolic dims) and, for float arrays, for NaN/Inf; the first bad feed raises
    ValueError naming its index and the problem."""
    if isinstance(it, Mapping):
        raise ValueError("feeds_from_iterable takes an iterable of feed dicts, got a single dict "
                         "(wrap it in a list)")
    try:
        iterator = iter(it)
    except TypeError:
        raise ValueError(f"calibration feeds must be an iterable of dicts, got {type(it).__name__}") from None
    feeds = CalibFeeds()
    for k, feed in enumerate(iterator):
        feeds.append(_check_feed(feed, graph, f"calibration feed {k}"))
    if not feeds:
        raise ValueError("calibration feeds: the iterable yielded no feeds (zero samples)")
    feeds.source = getattr(it, "source", "") or f"{len(feeds)} feed(s) from an iterable"
    return feeds


def load_calib_npz(path: str | os.PathLike, graph: Graph, *,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> CalibFeeds:
    """Calibration feeds from an .npz file holding one array per model input (np.savez(path,
    **{input_name: array})); the first axis of every array counts samples (the same count in
    every array).

    How samples become feeds, per array, by its rank R against the input's rank r:
      * R == r: axis 0 is the model's batch axis. A free batch dim (symbolic/unknown) is fed
        ``batch_size`` samples at a time (the last feed may be smaller); a fixed batch dim b
        is fed b samples at a time (the sample count must be a multiple of b).
      * R == r + 1: every sample is one whole input tensor, fed on its own.
    All arrays of a file must agree on how many samples make one feed. Inputs of unknown rank
    are treated as R == r.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    p = os.fspath(path)
    where = f"calibration data {p!r}"
    if not os.path.isfile(p):
        raise ValueError(f"{where}: no such file")
    try:
        obj = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- np.load raises many kinds (ValueError, OSError, BadZipFile, EOFError...)
        raise ValueError(f"{where} is not a readable .npz file ({type(e).__name__}: {e}); save "
                         f"calibration data with np.savez(path, **{{input_name: array}})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise ValueError(f"{where} holds a single array (.npy), not an .npz archive; save calibration "
                         f"data with np.savez(path, **{{input_name: array}})")
    try:
        with obj:
            arrays = {k: obj[k] for k in obj.files}
    except Exception as e:  # noqa: BLE001 -- any failure reading the archive is bad data
        raise ValueError(f"{where}: cannot read its arrays ({type(e).__name__}: {e})") from None
    return feeds_from_arrays(arrays, graph, where, os.path.basename(p), batch_size=batch_size)


def feeds_from_arrays(arrays: Mapping[str, np.ndarray], graph: Graph, where: str, label: str, *,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> CalibFeeds:
    """Feeds from {input name: array holding every sample}, checked and batched as described
    in load_calib_npz (which reads the arrays from an .npz; runtime/convert/data.py reads them
    from a folder of .npy files). ``where`` starts every error message; ``label`` starts the
    feeds' source ("calib.npz: 100 sample(s) in 4 feed(s)")."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _check_names(arrays, graph, where)

    counts: dict[str, int] = {}
    group_of: dict[str, int] = {}       # arrays that fix how many samples make one feed
    per_sample: set[str] = set()        # arrays whose every sample is a whole input (R == r + 1)
    for v in graph.inputs:
        a = arrays[v.name]
        _check_dtype(v.name, a, v, where)
        if a.ndim == 0:
            raise ValueError(f"{where}: array {v.name!r} is a scalar; its first axis must count samples")
        r = None if v.shape is None else len(v.shape)
        if r is None or a.ndim == r:
            inner = None if v.shape is None else v.shape[1:]
            if r is not None and isinstance(v.shape[0], int):
                group_of[v.name] = v.shape[0]
        elif a.ndim == r + 1:
            inner = v.shape
            per_sample.add(v.name)
            group_of[v.name] = 1
        else:
            raise ValueError(f"{where}: array {v.name!r} has shape {list(a.shape)} (rank {a.ndim}); the "
                             f"model's input is {format_shape(v.shape)}, so expected rank {r} (samples along "
                             f"the batch axis) or {r + 1} (samples, then one whole input each)")
        if inner is not None:
            for axis, (want, have) in enumerate(zip(inner, a.shape[1:]), start=1):
                if isinstance(want, int) and want != have:
                    raise ValueError(f"{where}: array {v.name!r} has shape {list(a.shape)}; with samples on "
                                     f"axis 0 the model's input {format_shape(v.shape)} needs dimension {axis} "
                                     f"= {want}, got {have}")
        _check_finite(v.name, a, where)
        counts[v.name] = int(a.shape[0])

    if len(set(counts.values())) > 1:
        raise ValueError(f"{where}: arrays have different sample counts (first axis): "
                         + ", ".join(f"{k!r}: {n}" for k, n in counts.items()))
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise ValueError(f"{where}: zero samples (the arrays' first axis is empty)")
    fixed = set(group_of.values())
    if len(fixed) > 1:
        raise ValueError(f"{where}: arrays disagree on how many samples make one feed: "
                         + ", ".join(f"{k!r}: {g}" for k, g in group_of.items()))
    if fixed:
        group = fixed.pop()
        if n % group:
            raise ValueError(f"{where}: {n} samples is not a multiple of the model's fixed batch size {group}")
    else:
        group = batch_size

    feeds = CalibFeeds()
    for i in range(0, n, group):
        feed = {}
        for v in graph.inputs:
            a = arrays[v.name]
            feed[v.name] = a[i] if v.name in per_sample else a[i:i + group]
        feeds.append(feed)
    # names, dtypes and fixed dims are checked above; this catches symbolic dims that differ
    # between inputs (e.g. input_ids and attention_mask of different lengths)
    for k in sorted({0, len(feeds) - 1}):
        _check_feed(feeds[k], graph, f"{where}, feed {k}")
    feeds.source = f"{label}: {n} sample(s) in {len(feeds)} feed(s)"
    return feeds


def _gather_rows(graph: Graph, name: str) -> int | None:
    """Rows of the constant tables that value ``name`` indexes as Gather indices (directly or
    through reshapes/casts), the smallest if several; None if it indexes none."""
    consumers = graph.consumers()
    rows: list[int] = []
    todo, seen = [name], set()
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        for node in consumers.get(cur, []):
            if node.op == "Gather" and len(node.inputs) > 1 and node.inputs[1] == cur \
                    and node.inputs[0] in graph.initializers:
                shape = graph.initializers[node.inputs[0]].shape
                axis = int(node.attrs.get("axis", 0))
                axis = axis + len(shape) if axis < 0 else axis
                if 0 <= axis < len(shape):
                    rows.append(int(shape[axis]))
            elif node.op in _PASS_THROUGH and node.inputs and node.inputs[0] == cur:
                todo.extend(node.outputs)
    return min(rows) if rows else None


def random_feeds(graph: Graph, n_batches: int = 4, batch: int = 8, seq: int = 16, seed: int = 0,
                 dims: Mapping[str, int] | None = None) -> CalibFeeds:
    """Synthetic calibration feeds for when the user gives no data (``is_random`` is True).

    Ranges calibrated on these describe random inputs, not real ones: use them to exercise
    the static path, and calibrate on real data for accuracy.

    Dims: a fixed dim is kept; a symbolic or unknown dim is ``dims[name]`` when given, else
    ``batch`` on axis 0 and ``seq`` elsewhere (one size per symbolic name, so inputs sharing
    "seq" agree). Values, by input:
      * float:  standard normal.
      * int/uint indexing a constant table (Gather indices, directly or through Cast/Reshape/
        (Un)Squeeze/Flatten/Identity): uniform in [0, rows of the smallest such table).
      * int/uint/bool whose name contains "mask" (any case): an attention-style mask, ones
        along the last axis with a random number of trailing zeros (at least one 1 per row).
      * any other int/uint/bool: zeros (valid as an index, a segment id or a flag).
    """
    for what, k in (("n_batches", n_batches), ("batch", batch), ("seq", seq)):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"random_feeds: {what} must be a positive int, got {k!r}")
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for v in graph.inputs:
        if v.shape is None:
            raise ValueError(f"random_feeds: input {v.name!r} has unknown rank, so no random data can be "
                             f"made for it; give calibration data instead")
        shape = []
        for axis, d in enumerate(v.shape):
            if isinstance(d, int):
                shape.append(d)
                continue
            default = batch if axis == 0 else seq
            if d is None:
                shape.append(default)
            else:
                shape.append(int(sizes.setdefault(d, int(dims.get(d, default)))))
        shapes[v.name] = tuple(shape)
    plans = {}
    for v in graph.inputs:
        kind = np.dtype(v.dtype).kind
        if kind in "fc":
            plans[v.name] = ("normal", None)
        elif kind in "iu" and (rows := _gather_rows(graph, v.name)) is not None:
            if rows < 1:
                raise ValueError(f"random_feeds: input {v.name!r} indexes an empty table")
            plans[v.name] = ("index", rows)
        elif "mask" in v.name.lower():
            plans[v.name] = ("mask", None)
        else:
            plans[v.name] = ("zeros", None)
    feeds = CalibFeeds(source=f"random inputs (no calibration data): {n_batches} feed(s), seed {seed}",
                       is_random=True)
    for _ in range(n_batches):
        feed = {}
        for v in graph.inputs:
            shape, (how, rows) = shapes[v.name], plans[v.name]
            dt = np.dtype(v.dtype)
            if how == "normal":
                a = rng.standard_normal(shape).astype(dt)
            elif how == "index":
                a = rng.integers(0, rows, size=shape).astype(dt)
            elif how == "mask":
                a = np.ones(shape, dt)
                if len(shape) and shape[-1] > 0:
                    flat = a.reshape(-1, shape[-1])
                    keep = rng.integers(1, shape[-1] + 1, size=flat.shape[0])
                    flat[np.arange(shape[-1])[None, :] >= keep[:, None]] = 0
            else:
                a = np.zeros(shape, dt)
            feed[v.name] = a
        feeds.append(feed)
    return feeds


# ------------------------------------------------------------------- activations ----------

def probe_session(graph: Graph, value_names: Sequence[str], *, backend: str = "reference"):
    """An InferenceSession on a copy of ``graph`` whose outputs also include ``value_names``
    (intermediate activations), so ``run(value_names, feed)`` returns them. The graph itself
    is not modified."""

    known = {v.name: v for v in graph.inputs}
    produced = {o for n in graph.nodes for o in n.outputs}
    unknown = [n for n in value_names if n not in known and n not in produced and n not in graph.initializers]
    if unknown:
        raise ValueError(f"collect_inputs: values {unknown} are not graph inputs, initializers or node outputs")
    outputs = list(graph.outputs)
    have = {v.name for v in outputs}
    for n in dict.fromkeys(value_names):
        if n not in have:
            # dtype is informational for an output the session only hands back; calibrated
            # values are float activations (a graph input keeps its own dtype)
            outputs.append(Value(n, known[n].dtype if n in known else "float32", None))
    probe = Graph(graph.name, list(graph.inputs), outputs, list(graph.nodes), dict(graph.initializers),
                  dict(graph.metadata))
    return InferenceSession(probe, backend=backend)


def upstream(graph: Graph, value_names: Sequence[str]) -> Graph:
    """The part of ``graph`` that computes ``value_names``: the nodes they depend on (in the
    graph's order), the initializers those read, every graph input, and no outputs (a
    ``probe_session`` adds the values). Running it gives the same values as the whole graph,
    for less work: what sequential calibration (obs, wanda) needs per layer."""
    needed = set(value_names)
    keep = []
    for n in reversed(graph.nodes):
        if needed.intersection(n.outputs):
            keep.append(n)
            needed.update(i for i in n.inputs if i)
    keep.reverse()
    used = {i for n in keep for i in n.inputs}
    return Graph(graph.name, list(graph.inputs), [], keep,
                 {k: t for k, t in graph.initializers.items() if k in used}, dict(graph.metadata))


def collect_inputs(graph: Graph, feeds_list: Sequence[Mapping[str, np.ndarray]], value_names: Iterable[str],
                   *, max_values: int = DEFAULT_MAX_VALUES, seed: int = 0,
                   backend: str = "reference") -> dict[str, np.ndarray]:
    """Run the float graph on every feed and return, per requested value, its elements as one
    1-D float32 array (all feeds concatenated).

    The graph is not modified: a copy whose outputs are the requested values runs through
    InferenceSession. To bound memory a value keeps at most about ``max_values`` elements: an
    equal share per feed, drawn at random (fixed ``seed``), always including each feed's
    minimum and maximum so min/max calibration stays exact.
    """
    names = list(dict.fromkeys(value_names))
    if not isinstance(max_values, int) or max_values < 2:
        raise ValueError(f"max_values must be an int >= 2, got {max_values!r}")
    if not feeds_list:
        raise ValueError("collect_inputs: no calibration feeds")
    sess = probe_session(graph, names, backend=backend)
    rng = np.random.default_rng(seed)
    quota = max(2, max_values // len(feeds_list))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k, feed in enumerate(feeds_list):
        results = sess.run(names, feed)
        for n, a in zip(names, results):
            flat = np.asarray(a).reshape(-1)
            if flat.size > quota:
                if flat.dtype.kind in "fc" and not np.isfinite(flat).all():
                    keep = np.arange(flat.size)   # let the caller see (and name) the non-finite values
                else:
                    pick = rng.choice(flat.size, size=quota - 2, replace=False)
                    keep = np.concatenate([pick, [int(np.argmin(flat)), int(np.argmax(flat))]])
                flat = flat[keep]
            parts[n].append(flat.astype(np.float32, copy=True))
    return {n: np.concatenate(p) if p else np.zeros(0, np.float32) for n, p in parts.items()}


# ------------------------------------------------------------------------ ranges ----------

def _samples(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{what}: no samples to calibrate on")
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{what}: {bad} of {x.size} samples are NaN or Inf")
    return x


def _around_zero(lo: float, hi: float) -> tuple[float, float]:
    # 0 must be inside the range so it is a grid point (exact zero padding, ReLU zeros...)
    return float(min(lo, 0.0)), float(max(hi, 0.0))


def range_minmax(x: Any) -> tuple[float, float]:
    """The observed [min, max]. Every value is represented without clipping, so one outlier
    stretches the step for all the others: fine for bounded activations (sigmoid, tanh,
    normalised inputs), wasteful for heavy tails."""
    x = _samples(x, "range_minmax")
    return _around_zero(x.min(), x.max())


def range_percentile(x: Any, p: float = 99.99) -> tuple[float, float]:
    """[percentile(100 - p), percentile(p)]: ignore the rarest (100 - p)% on each side. Rare
    outliers (a few huge activations) then saturate instead of coarsening every other value's
    step; p close to 100 keeps almost everything."""
    if not (isinstance(p, (int, float)) and 50.0 <= p <= 100.0):
        raise ValueError(f"range_percentile: p must be a number in [50, 100], got {p!r}")
    x = _samples(x, "range_percentile")
    lo, hi = np.percentile(x, [100.0 - p, p])
    return _around_zero(lo, hi)


def scale_zero_point(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero_point) mapping [lo, hi] onto int8 [-128, 127] (docs/CONVERTER.md):
    scale = (hi - lo) / 255, zero_point = clip(rint(-128 - lo / scale), -128, 127); lo <= 0 <= hi
    is forced first, so x = 0 quantizes to exactly zero_point. An empty range (lo = hi = 0)
    gets scale 1 (everything quantizes to the zero point), never a division by zero."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"scale_zero_point: range [{lo}, {hi}] is not finite")
    lo, hi = _around_zero(lo, hi)
    scale = (hi - lo) / _STEPS
    if not (scale > 0.0 and math.isfinite(scale)):
        return 1.0, 0   # lo == hi == 0 (or a range so tiny its step underflows)
    zero_point = int(np.clip(np.rint(QMIN - lo / scale), QMIN, QMAX))
    return float(scale), zero_point


def _fake_quant(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Quantize-dequantize exactly as the static int8 kernels do (round half to even)."""
    q = np.clip(np.rint(x / scale) + zero_point, QMIN, QMAX)
    return (q - zero_point) * scale


def range_mse(x: Any, *, n_grid: int = 100, max_samples: int = 1 << 17, seed: int = 0) -> tuple[float, float]:
    """The range [a * min, a * max], a in {1/n_grid, 2/n_grid, ..., 1}, whose quantize-
    dequantize mean squared error on x is smallest.

    Clipping error (values outside the range saturate) and rounding error (step / sqrt(12) per
    value) pull in opposite directions; MSE weighs both directly instead of fixing a percentile.
    Heavy tails (Laplace-like activations) get a range well inside [min, max]; bounded uniform
    data keeps about the full range. a = 1 (minmax) is a candidate, so the result is never
    worse than minmax on the samples searched. At most ``max_samples`` elements (random, fixed
    seed, plus the min and max) are used for the search.
    """
    x = _samples(x, "range_mse")
    lo, hi = _around_zero(x.min(), x.max())
    if lo == hi:
        return lo, hi
    if x.size > max_samples:
        pick = np.random.default_rng(seed).choice(x.size, size=max_samples - 2, replace=False)
        x = np.concatenate([x[pick], [x.min(), x.max()]])
    best = (math.inf, 1.0)
    for a in np.linspace(1.0 / n_grid, 1.0, n_grid):
        s, z = scale_zero_point(lo * a, hi * a)
        err = float(np.mean((_fake_quant(x, s, z) - x) ** 2))
        if err < best[0]:
            best = (err, a)
    a = best[1]
    return _around_zero(lo * a, hi * a)


# Below this many distinct values (in the first 65536 samples), entropy calibration falls
# back to min-max (see range_entropy).
ENTROPY_MIN_DISTINCT = 256


def range_entropy(x: Any, *, n_bins: int = 2048, min_bin: int = 128) -> tuple[float, float]:
    """KL-divergence calibration (TensorRT's "entropy" calibrator, Migacz 2017): the clip
    threshold t whose quantized distribution loses the least information about the original.

    Choice made here: the histogram is of |x| (``n_bins`` bins over [0, max|x|]), as in
    TensorRT, and t clips both sides: the range is [max(min, -t), min(max, t)]. Our int8 is
    asymmetric, so instead of TensorRT's fixed 128 levels each candidate t is quantized to the
    number of int8 steps that really fall in [0, t] for that range, 255 t / (hi - lo): 255 for
    one-sided data (post-ReLU), ~128 for symmetric data, in between for skewed data (GELU).

    For each candidate t = edge of bin i (i = min_bin .. n_bins): P = the first i bins with
    everything beyond t added to the last one (clipped values saturate there), exact zeros
    left out (they quantize exactly for every t); Q = the first i
    bins merged into that many levels, each level's mass spread evenly over its non-empty bins
    (as in the TensorRT/MXNet reference). t = argmin KL(P || Q). Like minmax it ignores the
    cost of rounding within a level only to the histogram's resolution; unlike minmax, a long
    sparse tail is clipped. As in TensorRT, t >= max|x| * min_bin / n_bins: one outlier 1000x
    the bulk still leaves a wide range (percentile handles that case better).
    """
    x = _samples(x, "range_entropy")
    xmin, xmax = _around_zero(x.min(), x.max())
    top = max(-xmin, xmax)
    # Data with few distinct values (an input of pixel levels k/16, one-hot features) is a
    # set of spikes, for which the histogram KL is meaningless: a threshold that puts one
    # spike at the end of the reference distribution scores best while clipping nearly all
    # the data (seen on the digits MLP: t = 1/16 for pixels in [0, 1], 31% accuracy). int8
    # represents a few hundred levels over the full range with little error, so keep it.
    if np.unique(x[: 1 << 16]).size <= ENTROPY_MIN_DISTINCT:
        return range_minmax(x)
    # Exact zeros are left out of the histogram: 0 is a grid point of every candidate range,
    # so they are never distorted, while as a spike in bin 0 (half of a post-ReLU tensor)
    # they would dominate the KL and drag t down to wherever level 0 happens to be one bin.
    ax = np.abs(x[x != 0.0])
    if top == 0.0 or ax.size == 0:
        return 0.0, 0.0
    hist, edges = np.histogram(ax, bins=n_bins, range=(0.0, top))
    hist = hist.astype(np.float64)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])   # tail[i] = sum(hist[i:])
    best = (math.inf, n_bins)
    for i in range(min(min_bin, n_bins), n_bins + 1):
        t = float(edges[i])
        hi, lo = min(xmax, t), max(xmin, -t)
        levels = max(1, min(i, round(_STEPS * t / (hi - lo))))
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += tail[i]
        nonzero = p > 0
        starts = np.floor(np.linspace(0, i, levels + 1)[:-1]).astype(np.int64)
        level_mass = np.add.reduceat(sliced, starts)
        level_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
        level_of_bin = np.repeat(np.arange(levels), np.diff(np.append(starts, i)))
        q = np.where(nonzero, level_mass[level_of_bin] / np.maximum(level_nonzero[level_of_bin], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0.0:
            continue
        pn, qn = p[nonzero] / p_sum, q[nonzero] / q_sum
        # a bin with mass in P but none in Q (only clipped mass in its level) is smoothed to a
        # tiny probability: a large but finite penalty instead of an infinite KL
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
        if kl < best[0]:
            best = (kl, i)
    t = float(edges[best[1]])
    return _around_zero(max(xmin, -t), min(xmax, t))


_RANGE_FNS = {
    "minmax": lambda x, p: range_minmax(x),
    "percentile": lambda x, p: range_percentile(x, p),
    "mse": lambda x, p: range_mse(x),
    "entropy": lambda x, p: range_entropy(x),
}


def calibrate(graph: Graph, feeds_list: Sequence[Mapping[str, np.ndarray]], layer_nodes: Sequence[str],
              method: str = "minmax", percentile: float = 99.99, *,
              max_values: int = DEFAULT_MAX_VALUES, seed: int = 0) -> dict[str, tuple[float, int]]:
    """Static activation quantization parameters for the input 0 of each named Linear/Conv:
    {node name: (act_scale, act_zero_point)}, from ``method`` ("minmax", "percentile" with
    ``percentile``, "mse" or "entropy") on the input's values over all feeds. Layers that share
    an input (e.g. attention Q, K, V) get the same parameters, collected once."""
    if method not in _RANGE_FNS:
        raise ValueError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "percentile" and not (isinstance(percentile, (int, float)) and 50.0 <= percentile <= 100.0):
        raise ValueError(f"percentile must be a number in [50, 100], got {percentile!r}")
    by_name = {n.name: n for n in graph.nodes}
    value_of: dict[str, str] = {}
    for name in layer_nodes:
        node = by_name.get(name)
        if node is None:
            raise ValueError(f"calibrate: no node named {name!r} in graph {graph.name!r}")
        if node.op not in ("Linear", "Conv"):
            raise ValueError(f"calibrate: node {name!r} is a {node.op}; only Linear and Conv inputs are calibrated")
        value_of[name] = node.inputs[0]
    if not value_of:
        return {}
    values = collect_inputs(graph, feeds_list, value_of.values(), max_values=max_values, seed=seed)
    ranges: dict[str, tuple[float, int]] = {}
    out = {}
    for name, v in value_of.items():
        if v not in ranges:
            x = values[v]
            if x.size == 0:
                raise ValueError(f"calibrate: layer {name!r} input {v!r} produced no values")
            bad = x.size - int(np.count_nonzero(np.isfinite(x)))
            if bad:
                raise ValueError(f"calibrate: layer {name!r} input {v!r} has {bad} NaN/Inf value(s) "
                                 f"on the calibration data")
            ranges[v] = scale_zero_point(*_RANGE_FNS[method](x, percentile))
        out[name] = ranges[v]
    return out
