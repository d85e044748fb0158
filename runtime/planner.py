"""Per-layer planning: which layout and backend runs each weight layer fastest on this machine.

A converted file stores each weight in one layout (csr, int8, int4_grouped...), but whether
that layout is the fastest *here* depends on the CPU, the sparsity and the number of rows:
90% unstructured sparsity beats dense int8 by 2-3x on AVX-512 VNNI, 10% sparsity is slower
than dense int8 everywhere. So the session measures, once per machine and shape, every
*equivalent* way to run a Linear/Conv layer and runs the fastest.

Equivalent means computing the same function from what the file already holds, so a file
needs nothing extra for the fallback:

* a sparse layout with int8 values (csr, bsr, nm; quant "int8") -> the dense ``int8`` layout
  with the same integers and scales (kernels/reference/packed.py sees both through
  ``int_weight``);
* a sparse layout with float values -> dense float32 (the same dequantized weight);
* int4_grouped weight-only (act_quant "none") -> dense float32 of the dequantized weight.

Not a candidate: dense float32 for an int8 layer with quantized activations (it would drop
the activation rounding and change results), or an int8 layer for a float one.

Each equivalent layout runs on every backend of the session's list that has a kernel for it
("auto": native, numba; an explicit backend: that one), and of those the planner keeps only
the ones that give the *same bits* as the stored layout on the session's backend for it
(``same_bits``), so the choice, which follows timings and so may differ from session to
session, never changes a bit of what the model computes. For integer layers that is every
layout on the same backend, and every backend unless a GELU is fused (each backend has its own
erf / tanh). Float layers (float sparse, int4 weight-only) sum in another order on every
other layout and backend, so they are not planned: they run as stored. The stored layout is
kept unless another candidate is at least ``MARGIN`` faster: timings on a shared machine
wobble by a few percent and the stored layout is what the user asked for. With several
threads, a candidate on another backend is first charged ``POOL_SWITCH_S`` for the switch of
thread pools that its isolated timing does not see (``SPINNING_POOL_SWITCH_S`` where the
OpenMP workers spin). The cache keeps the timings, and the choice is made from them by the
rule of the running version, so a changed charge or margin applies to cached layers too.

When: lazily, at the first run that gives a layer an input of a new size (a power-of-two
bucket of its GEMM rows for Linear, the exact input shape for Conv), on that very input. The
measurements are cached on disk, keyed by the machine (runtime.bench.machine: CPU model, ISA
flags, cores, and any forced code path: QRT_NATIVE_ISA / QRT_NUMBA_ISA) and the kernels' build
(``kernel_build_key``), the thread count and the layer's shape and structure (not its values),
in ``$QRT_CACHE_DIR`` or ``~/.cache/qrt``; a second session of the same build on the same
machine measures nothing. ``InferenceSession(plan="off")`` turns planning off, ``plan="measure"`` ignores
the cache (and refreshes it).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kernels import registry
from kernels.core import config, cpu
from kernels.core import threads as core_threads
from kernels.core.layouts import PackedTensor, dense_view_2d, int_weight
from runtime.format import atomic_write

PLAN_MODES = ("auto", "measure", "off")
PLANNED_OPS = ("Linear", "Conv")
# another candidate must be this much faster than the stored layout to replace it
MARGIN = 0.10
# With more than one thread, a candidate on another backend than the stored one also pays a
# switch of thread pools each time the model passes through the layer: the previous pool's
# workers still spin (native: 50 us after each job, csrc/work_pool.cpp) on the cores the next
# pool's workers need, and parked workers take tens of microseconds to wake. Isolated timings
# do not see it. Measured on all-MiniLM-L6-v2 at seq 16 on Zen 3 (2 threads): moving the six
# FFN-output Linears to numba, each 0.04 ms faster alone, made the model 1.1 ms slower, about
# 0.18 ms per moved layer (benchmarks/RESULTS.md, "7-bit weights"). So such a candidate is
# charged this much (seconds) before it is compared.
POOL_SWITCH_S = 150e-6
# The same switch when numba's OpenMP workers spin for milliseconds after each of their calls
# (kernels.core.threads.openmp_may_spin: torch imported before qrt brings its libgomp with the
# default wait policy): they hold a core while the native pool's next kernels need it.
# Measured on all-MiniLM-L6-v2 at 8 x 128 on Zen 3 (2 threads), torch imported first, the six
# FFN-output Linears on numba against all native: 128.6 against 97.3 ms, about 5 ms per moved
# layer (benchmarks/RESULTS.md, "A GPU check that loaded torch").
SPINNING_POOL_SWITCH_S = 5e-3
# per candidate and round: at least MIN_CALLS timed calls, more until MIN_SECONDS, at most
# MAX_CALLS; ROUNDS rounds over all candidates, each candidate's quietest round counts
MIN_CALLS, MAX_CALLS, MIN_SECONDS, ROUNDS = 3, 30, 0.01, 3
CACHE_VERSION = 5        # bumped when the measurement, the decision rule or a kernel's speed changes: older entries are re-measured
# (4: candidates on a backend other than the stored one are timed with the session's thread count;
# before, a threads=1 session timed numba on its whole pool; 5: native csr / nm byte-lane ELL over
# 64-byte segments, 12-17% faster on MiniLM's Linears, so stored sparse layouts win more often)


@dataclass(frozen=True)
class Candidate:
    """One way to run a layer: ``layout`` on ``backend``; ``weight`` is the tensor the kernel
    reads (the stored one, or its equivalent in ``layout``): a PackedTensor, or the numpy
    array itself for a dense layout (what a session's slot holds)."""
    layout: str
    backend: str
    weight: Any

    @property
    def label(self) -> str:
        return f"{self.layout}/{self.backend}"


# --- equivalent layouts -----------------------------------------------------------------------

def equivalent_weights(t: PackedTensor, attrs: dict) -> dict[str, Any]:
    """layout -> the weight in that layout, for every layout that computes the same function
    as ``t`` under the node's ``attrs`` (module docstring); the stored layout included."""
    out: dict[str, Any] = {t.layout: t if t.layout != "dense" else t.fields["data"]}
    float_acts = attrs.get("act_quant", "none") == "none"      # a float32 weight needs float activations
    if t.layout in ("csr", "bsr", "nm") and t.params.get("quant", "none") == "int8":
        out["int8"] = _as_dense_int8(t)
    elif t.layout in ("csr", "bsr", "nm", "int4_grouped") and float_acts:
        out["dense"] = t.to_dense()
    return out


def _as_dense_int8(t: PackedTensor) -> PackedTensor:
    """A sparse int8 tensor as the ``int8`` layout: the same integers (0 where pruned) and the
    same per-row or per-tensor scales, symmetric."""
    iw = int_weight(t)
    per_channel = bool(t.params.get("per_channel", True))
    scale = np.asarray(t.fields["scale"], np.float32).reshape(-1)
    q = iw.q.astype(np.int8).reshape(t.shape)
    return PackedTensor(t.name, "int8", "float32", tuple(t.shape), {"qdata": q, "scale": scale},
                        {"per_channel": per_channel, "symmetric": True})


# Fused activations whose epilogue every backend computes with the same IEEE operations (a
# max for relu), so an integer layer's output bits do not depend on the backend. The GELUs are
# not among them: native and numba each evaluate erf / tanh with their own code (1 ulp apart
# on ~20% of the outputs, measured in tests/test_planner.py).
SAME_BITS_ACTIVATIONS = ("none", "relu")


def same_bits(stored: Candidate, c: Candidate, attrs: dict) -> bool:
    """Whether candidate ``c`` computes exactly the bits of ``stored`` for every input.

    Integer layers (quantized activations): the integer sums are exact on every layout and
    backend, and a backend's epilogue is shared by its layouts, so the same backend always
    matches; another backend only for SAME_BITS_ACTIVATIONS. Float layers (float activations:
    dense, float sparse, int4 weight-only): layouts and backends sum in different orders, so
    only the stored candidate itself."""
    if (c.layout, c.backend) == (stored.layout, stored.backend):
        return True
    if attrs.get("act_quant", "none") == "none":
        return False
    return c.backend == stored.backend or attrs.get("activation", "none") in SAME_BITS_ACTIVATIONS


def candidates(op: str, t: PackedTensor, attrs: dict, backends: tuple[str, ...]) -> list[Candidate]:
    """Every (equivalent layout, backend with a kernel for it) that gives the same bits as the
    stored layout on the first such backend (same_bits), that one first, backends in
    ``backends`` order. The reference backend counts only where nothing else has a kernel (it
    is the spec, never the fast path)."""
    fast = tuple(b for b in backends if b != "reference")
    out = []
    for layout, weight in equivalent_weights(t, attrs).items():
        have = [b for b in fast if registry.has_kernel(op, layout, b)]
        out += [Candidate(layout, b, weight) for b in have]
    return [c for c in out if same_bits(out[0], c, attrs)] if out else out


# --- the cache ----------------------------------------------------------------------------------

def cache_dir() -> Path:
    root = config.get("QRT_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qrt"


_MACHINE_KEY: str | None = None


def machine_key() -> str:
    """The machine part of the cache key (CPU model, ISA flags, cores, forced code paths;
    kernels/core/cpu.py)."""
    global _MACHINE_KEY
    if _MACHINE_KEY is None:
        _MACHINE_KEY = cpu.machine_key(threads=0)
    return _MACHINE_KEY


_BUILD_KEY: str | None = None


def kernel_build_key() -> str:
    """12 hex digits of blake2b over the kernels package's files that decide kernel speed: every
    ``.py`` under kernels/ (numba kernels, drivers) and the built extension (``.so`` / ``.pyd``).
    Part of the cache file's name, so that timings measured with other kernels (an upgrade, a
    rebuild) are not taken for this build's: a stale cache had kept choosing the numba Conv
    after the native one became 2-5x faster (RESULTS.md, "int8 Conv without numpy's im2col").
    Read once per process (about 2.5 MB, a few ms)."""
    global _BUILD_KEY
    if _BUILD_KEY is None:
        import hashlib
        root = Path(registry.__file__).resolve().parent        # the kernels package
        h = hashlib.blake2b(digest_size=6)
        files = sorted(f for f in root.rglob("*") if f.suffix in (".py", ".so", ".pyd") and f.is_file()
                       and "__pycache__" not in f.parts)
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(f.read_bytes())
        _BUILD_KEY = h.hexdigest()
    return _BUILD_KEY


def cache_file() -> Path:
    """This machine's and this build's plan cache: ``plans-<machine>-<kernels>.json``."""
    return cache_dir() / f"plans-{machine_key()}-{kernel_build_key()}.json"


class QrtCacheWarning(UserWarning):
    """The plan cache could not be read or written; planning goes on in memory."""


def valid_entry(entry: Any) -> bool:
    """A cache entry as PlannedLayer.decide writes it: {"chosen": label, "times_ms": {label:
    positive finite ms}}, the chosen label among the timed ones."""
    if not (isinstance(entry, dict) and isinstance(entry.get("chosen"), str) and isinstance(entry.get("times_ms"), dict)):
        return False
    times = entry["times_ms"]
    return entry["chosen"] in times and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for k, v in times.items())


class PlanCache:
    """Measured choices, one JSON file per machine and kernel build: ``{"version", "entries": {key: {"chosen",
    "times_ms"}}}``. The file is shared by every process on the machine, so nothing in it is
    trusted: a file that is not such an object, or an entry of the wrong shape, is ignored
    (with a QrtCacheWarning) and re-measured, and the next write replaces it. Unreadable or
    unwritable caches degrade to memory only, with a warning (planning still works). Writers
    hold an exclusive lock on ``<path>.lock`` while they read, merge and replace the file, so
    two processes planning at once both keep their entries."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_file()
        self._entries: dict[str, dict] | None = None

    def _warn(self, what: str) -> None:
        import warnings
        warnings.warn(f"qrt plan cache {self.path}: {what}", QrtCacheWarning, stacklevel=4)

    def _read(self, warn: bool) -> dict[str, dict]:
        """The valid entries on disk ({} when there is no file)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError) as e:
            if warn:
                self._warn(f"unreadable ({type(e).__name__}: {e}); ignored, choices are measured again")
            return {}
        if not (isinstance(data, dict) and isinstance(data.get("entries"), dict)):
            if warn:
                self._warn('not a qrt plan cache (expected {"version": ..., "entries": {...}}); ignored, '
                           "it will be rewritten")
            return {}
        if data.get("version") != CACHE_VERSION:
            return {}       # another measurement method: re-measured, silently (expected after upgrades)
        entries = {k: v for k, v in data["entries"].items() if isinstance(k, str) and valid_entry(v)}
        if warn and len(entries) < len(data["entries"]):
            self._warn(f"{len(data['entries']) - len(entries)} malformed entr"
                       f"{'y' if len(data['entries']) - len(entries) == 1 else 'ies'} ignored (re-measured)")
        return entries

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = self._read(warn=True)
        return self._entries

    def get(self, key: str) -> dict | None:
        return self._load().get(key)       # only valid entries are ever held (_read, put)

    def put(self, key: str, entry: dict) -> None:
        if not valid_entry(entry):
            raise ValueError(f"not a plan cache entry: {entry!r}")
        entries = self._load()
        entries[key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.path.with_name(self.path.name + ".lock")):
                # re-read under the lock: entries other processes wrote since our first read stay
                merged = {**self._read(warn=False), **entries}
                payload = json.dumps({"version": CACHE_VERSION, "entries": merged}, indent=0, sort_keys=True)
                atomic_write(self.path, lambda f: f.write(payload.encode()), durable=False)
        except OSError as e:
            self._warn(f"not written ({type(e).__name__}: {e}); this session's choices hold in memory only")


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` (created if missing) for the with-block;
    where the OS has no flock (Windows), no lock: the last writer's merge wins."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)        # closing releases the lock


_DEFAULT_CACHE: PlanCache | None = None


def default_cache() -> PlanCache:
    """One cache object per process and cache directory (the directory may change in tests)."""
    global _DEFAULT_CACHE
    path = cache_file()
    if _DEFAULT_CACHE is None or _DEFAULT_CACHE.path != path:
        _DEFAULT_CACHE = PlanCache(path)
    return _DEFAULT_CACHE


# --- the planned layer --------------------------------------------------------------------------

def rows_bucket(op: str, x: np.ndarray) -> tuple:
    """What a choice is keyed by: Linear, the GEMM rows rounded up to a power of two (the
    speed of a layout changes slowly with M); Conv, the exact input shape."""
    if op == "Conv":
        return tuple(int(d) for d in x.shape)
    rows = math.prod(x.shape[:-1])
    return (1 << max(0, (rows - 1).bit_length()),)


def _structure(t: PackedTensor) -> str:
    """The layer's weight structure for the cache key: layout, params, shape, stored entries
    (not the values: two layers of one shape and sparsity share their measurements)."""
    n, k = dense_view_2d(t.shape)
    nnz = ""
    for f in ("indices", "values", "qdata"):
        if t.layout in ("csr", "bsr", "nm") and f in t.fields:
            nnz = f",stored={t.fields[f].size}"
            break
    return f"{t.layout}{json.dumps(t.params, sort_keys=True)},{n}x{k}{nnz}"


class PlannedLayer:
    """A session step's ``run`` for a Linear/Conv layer with several candidates: runs the
    choice made for the input's size, measuring it the first time (module docstring)."""

    def __init__(self, node_name: str, op: str, attrs: dict, stored: PackedTensor, cands: list[Candidate],
                 build: Callable[[Candidate], Callable], threads: int, mode: str, cache: PlanCache | None,
                 log: list, timer: Callable[[dict, tuple], dict] | None = None):
        if mode not in ("auto", "measure"):
            raise ValueError(f"plan must be one of {PLAN_MODES}, got {mode!r}")
        self.node_name, self.op, self.stored = node_name, op, stored
        self.cands = cands
        self._build = build
        self._runs: dict[str, Callable] = {}
        self._chosen: dict[tuple, Callable] = {}
        # the previous call's (input shape, run): one tuple, replaced whole, so a thread never
        # reads one call's shape with another's run
        self._last: tuple[tuple | None, Callable | None] = (None, None)
        # one decision at a time: a session's run() may be called from many threads, and the
        # first call of a new size measures; the others wait for that choice instead of
        # measuring at the same time (which would also skew the timings) or racing on _chosen
        self._deciding = threading.Lock()
        self._mode, self._cache, self._log = mode, cache, log
        self._threads = threads
        self._timer = timer or measure
        labels = ",".join(c.label for c in cands)
        acts = {k: attrs.get(k) for k in ("act_quant", "act_scale", "act_zero_point", "activation", "group",
                                          "strides", "pads", "dilations") if k in attrs}
        self._key_prefix = f"{op}|{_structure(stored)}|{json.dumps(acts, sort_keys=True, default=str)}|" \
                           f"threads={threads}|{labels}"

    def run_of(self, c: Candidate) -> Callable:
        """The candidate's kernel, built on its own form of the weight, which it binds: the
        weight slot (still the stored tensor) is not read (kernels/registry.py)."""
        if c.label not in self._runs:
            self._runs[c.label] = self._build(c)
        return self._runs[c.label]

    def __call__(self, *inputs):
        shape = inputs[0].shape
        last_shape, last_run = self._last
        if shape == last_shape:                 # the common case: the same input size as last call
            return last_run(*inputs)
        bucket = rows_bucket(self.op, inputs[0])
        run = self._chosen.get(bucket)
        if run is None:
            with self._deciding:
                run = self._chosen.get(bucket) or self.decide(bucket, inputs)
        self._last = (shape, run)
        return run(*inputs)

    def switch_cost(self, c: Candidate) -> float:
        """Seconds a candidate is charged for leaving the stored candidate's thread pool
        (nothing with one thread or on the same backend)."""
        return switch_charge(self._threads) if c.backend != self.cands[0].backend else 0.0

    def choose(self, times_ms: dict[str, float]) -> str:
        """The rule: the stored candidate, unless another one, charged switch_cost, is more
        than MARGIN faster."""
        labels = {c.label: c for c in self.cands}
        stored = self.cands[0].label
        charged = {k: times_ms[k] + 1e3 * self.switch_cost(labels[k]) for k in labels}
        best = min(charged, key=charged.get)
        return best if charged[best] < times_ms[stored] * (1 - MARGIN) else stored

    def decide(self, bucket: tuple, inputs: tuple) -> Callable:
        """Choose for ``bucket`` (from the cache's timings, or by timing every candidate on
        ``inputs``)."""
        key = f"{self._key_prefix}|in={'x'.join(map(str, bucket))}"
        entry = self._cache.get(key) if (self._cache is not None and self._mode == "auto") else None
        labels = {c.label: c for c in self.cands}
        source = "cached"
        if entry is None or not set(labels) <= set(entry["times_ms"]):
            times = self._timer({c.label: self.run_of(c) for c in self.cands}, inputs)
            times_ms = {k: v * 1e3 for k, v in times.items()}
            entry = {"chosen": self.choose(times_ms), "times_ms": times_ms}
            if self._cache is not None:
                self._cache.put(key, entry)
            source = "measured"
        chosen = self.choose(entry["times_ms"])
        rows = math.prod(inputs[0].shape[:-1]) if self.op == "Linear" else int(inputs[0].shape[0])
        self._log.append(plan_record(self.node_name, self.cands[0].label, chosen, rows, bucket, entry["times_ms"],
                                     source, switch_charge(self._threads)))
        run = self.run_of(labels[chosen])
        self._chosen[bucket] = run
        return run


def switch_charge(threads: int) -> float:
    """Seconds charged to a candidate on another backend's thread pool (none on one thread)."""
    if threads <= 1:
        return 0.0
    return SPINNING_POOL_SWITCH_S if core_threads.openmp_may_spin() else POOL_SWITCH_S


def plan_record(node: str, stored: str, chosen: str, rows: int, bucket: tuple, times_ms: dict, source: str,
                charge_s: float = POOL_SWITCH_S) -> dict:
    """One decision as reports show it (runtime/bench/report.py's "plan" rows): ``rows`` the
    GEMM rows it was measured on (Conv: the batch), ``bucket`` the inputs it holds for,
    ``charge_s`` what a candidate on another backend was charged."""
    st = times_ms.get(stored)
    if chosen == stored:
        others = [v for k, v in times_ms.items() if k != stored]
        reason = (f"stored layout kept: {stored} {st:.3f} ms" +
                  (f", best other {min(others):.3f} ms" if others else "") +
                  f" (another must be > {MARGIN:.0%} faster, and one on another backend "
                  f"{charge_s * 1e3:.2f} ms more)")
    else:
        reason = f"{chosen} {times_ms[chosen]:.3f} ms vs stored {stored} {st:.3f} ms: " \
                 f"{st / times_ms[chosen]:.2f}x faster"
    held = f"up to {bucket[0]} rows" if len(bucket) == 1 else "input " + "x".join(map(str, bucket))
    return {"node": node, "stored": stored, "chosen": chosen, "rows": int(rows), "holds_for": held,
            "times_ms": dict(times_ms), "source": source, "reason": f"{reason} ({source})"}


def measure(runs: dict[str, Callable], inputs: tuple) -> dict[str, float]:
    """label -> seconds per call of ``runs[label](*inputs)``: one warm-up call each (compilation,
    packing), then ROUNDS rounds over all candidates, in each MIN_CALLS..MAX_CALLS calls for
    at least MIN_SECONDS; the median of each candidate's quietest round. Rounds spread a burst
    of noise from another process over every candidate instead of one."""
    for run in runs.values():
        run(*inputs)
    best = {label: float("inf") for label in runs}
    for _ in range(ROUNDS):
        for label, run in runs.items():
            ts: list[float] = []
            start = time.perf_counter()
            while len(ts) < MIN_CALLS or (len(ts) < MAX_CALLS and time.perf_counter() - start < MIN_SECONDS):
                t0 = time.perf_counter()
                run(*inputs)
                ts.append(time.perf_counter() - t0)
            best[label] = min(best[label], statistics.median(ts))
    return best
