"""Knowledge-distillation recovery: fine-tune a pruned fp32 graph toward the original one.

After one-shot pruning (magnitude, wanda, obs) a model has lost accuracy; a short training
run in which the pruned model (the student) learns to reproduce the original model (the
teacher) on unlabeled inputs wins most of it back. No labels are needed: the teacher's own
outputs and hidden states are the targets, so the calibration data the converter already has
is enough.

What is trained (``trainable_names``): the weight and bias of every Linear and Conv whose
weight is a dense float initializer, and the scale and bias of every LayerNormalization /
SkipLayerNormalization (cheap, and they re-centre what the pruned GEMMs feed them). Embedding
tables (Gather) and every other constant stay fixed: a (V, D) table is large, and its
gradient only touches the tokens of the calibration text. Masked weights stay exactly zero:
the mask is re-applied after each optimizer step (Adam is element-wise, so its work at a
pruned position never reaches a kept one), and the result holds +0.0 at every pruned position.

Speed (``precision``, ``_adam``): the student's forward pass may run in bfloat16 (autocast)
where the CPU has bfloat16 tiles; Adam is torch's fused CPU kernel. Together with the masks
applied by multiplication, 277 -> 489 steps a minute on all-MiniLM-L6-v2 (2 vCPUs, Xeon with
AMX; benchmarks/RESULTS.md, "Recovery in bfloat16").

The loss (``DistillLoss``), on each batch:

    loss = mean over float graph outputs o of  MSE(student_o, teacher_o) / Var(teacher_o)
         + hidden_weight * mean over hidden values h of  MSE(student_h, teacher_h) / Var(teacher_h)

Var is the variance of the teacher's value over all its elements on the first batch, fixed
for the run, so every term starts near the relative squared error of that value and terms of
different scales weigh alike. Hidden values (``hidden_values``): the outputs of every
LayerNormalization / SkipLayerNormalization (a transformer's hidden states, TinyBERT-style),
or, in a graph without them, the outputs of every Linear and Conv layer. Padded positions of
a padded batch count like real ones (their values are deterministic functions of the model
too; a feed padded to its longest sentence has few of them).

Optimizer: Adam (no weight decay: decay would pull the kept weights away from the teacher),
learning rate warmed up linearly over the first WARMUP_FRACTION of the budget, then
cosine-decayed to 0 over the rest; the budget is steps or wall-clock time, whichever runs out
first (a step that starts before the deadline runs to its end).

Batches: the feeds (dicts of numpy arrays with a leading batch axis, every input of one feed
the same batch size) are pooled by shape (all but the batch axis) and re-batched each epoch
from a shuffled order of rows, so an attention mask always travels with its own token ids.

Gradual pruning (``gradual``/``target``): sparsity ramps on Zhu & Gupta's cubic schedule from
the input mask's sparsity to the target over the first RAMP_FRACTION of the budget, the mask
recomputed from the current weights at RAMP_POINTS evenly spaced points, then fixed.

torch is optional and imported when recover() runs. Nothing here reads or writes files.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kernels.core.cpu import cpuinfo_flags

from ..feeds import available_memory
from ..graph import Graph
from .torch_eval import TorchGraph, import_torch

WARMUP_FRACTION = 0.05        # of the budget (steps or time, whichever is further along)
RAMP_FRACTION = 2.0 / 3.0     # gradual pruning reaches its target at this share of the budget
RAMP_POINTS = 10              # mask recomputations during the ramp (the last one at the target)
PROGRESS_SECONDS = 5.0        # between say() lines
EVAL_BATCHES = 2              # batches of the fixed loss measured before and after training
# The teacher's outputs and hidden values are computed once per row and cached when they fit
# in teacher_cache_bytes() (the teacher costs about a fifth of a training step otherwise:
# all-MiniLM-L6-v2, 2:4, 8,610 rows, 181 -> 218 steps/min with the float16 cache, RESULTS.md).
# Values are kept as float16 when they fit its range (half the memory; the rounding, 2^-11
# relative, is far below what the student still gets wrong), else float32.
TEACHER_CACHE_BYTES: int | None = None     # a fixed budget; None: teacher_cache_bytes() decides
TEACHER_CACHE_SHARE = 1.0 / 3.0            # of runtime.feeds.available_memory() (cgroup-aware)
TEACHER_CACHE_MAX_BYTES = 8 << 30
TEACHER_CACHE_FALLBACK_BYTES = 1 << 30     # where the available memory cannot be read
# The cache assumes a row's values do not depend on the other rows of its batch; the first
# batch is checked against a fresh teacher run, to this relative tolerance (float32 values;
# float16 ones to FP16_CHECK_RTOL, their rounding included).
CACHE_CHECK_RTOL = 1e-4
FP16_CHECK_RTOL = 2e-3
FP16_MAX = 65504.0
VAR_FLOOR = 1e-12             # a constant teacher value: its MSE is not divided by ~0
# Defaults, from 600-step runs on all-MiniLM-L6-v2 pruned 2:4 (benchmarks/RESULTS.md,
# "Recovery settings"; mean cosine of the fp32 student's sentence embeddings): Adam's peak rate
# 1e-3 and the hidden-state (LayerNorm output) terms weighted 10x the output's. Rate 1e-4 /
# 5e-4 / 1e-3 / 2e-3 at weight 1: 0.924 / 0.944 / 0.947 / 0.943; weight 0 / 1 / 4 / 10 at
# 5e-4: 0.940 / 0.944 / 0.946 / 0.946; 1e-3 with weight 10: 0.951. Matching every layer's
# hidden state, not only the last, is what a short budget gets furthest with. A graph without
# LayerNorms (hidden values = the Linear / Conv outputs, e.g. the digits MLP and CNN) keeps
# weight 1, the setting its figures were measured with.
DEFAULT_LR = 1e-3
NORM_HIDDEN_WEIGHT = 10.0
LAYER_HIDDEN_WEIGHT = 1.0

# The student's forward pass during training: "fp32", or "bf16" (torch.autocast: matmuls and
# convolutions in bfloat16 with float32 accumulation; the weights, the optimizer, the loss and
# the before/after evaluation stay float32). "auto" takes bf16 where the CPU multiplies
# bfloat16 in hardware tiles (AMX-BF16), where it was measured faster at the same accuracy
# (benchmarks/RESULTS.md, "Recovery in bfloat16"); else fp32.
PRECISIONS = ("auto", "fp32", "bf16")
BF16_FLAGS = ("amx_bf16",)

LAYER_OPS = ("Linear", "Conv")
NORM_OPS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}   # op -> affine inputs


@dataclass
class RecoverResult:
    weights: dict[str, np.ndarray]   # initializer name -> new fp32 array, same shape; masked positions exactly 0
    masks: dict[str, np.ndarray]     # final masks (== input masks unless gradual)
    steps: int
    seconds: float
    loss_start: float
    loss_end: float
    interrupted: bool
    hidden_weight: float             # the hidden-state terms' weight the run used (resolved default)
    precision: str                   # the forward pass's precision the run used: "fp32" or "bf16"


# --------------------------------------------------------------------- graph queries ----

def _float_initializer(graph: Graph, name: str) -> bool:
    t = graph.initializers.get(name)
    return t is not None and t.layout == "dense" and t.dtype in ("float32", "float64", "float16")


def trainable_names(graph: Graph, *, norms: bool = True) -> list[str]:
    """The initializers recover() trains: Linear/Conv weights (input 1) and biases (input 2)
    held as dense float initializers, and with ``norms`` the scale and bias of every
    LayerNormalization / SkipLayerNormalization. In graph order, each name once."""
    out: dict[str, None] = {}
    for n in graph.nodes:
        if n.op in LAYER_OPS and len(n.inputs) > 1 and _float_initializer(graph, n.inputs[1]):
            positions: tuple[int, ...] = (1, 2)
        elif norms and n.op in NORM_OPS:
            positions = NORM_OPS[n.op]
        else:
            continue
        for k in positions:
            if k < len(n.inputs) and n.inputs[k] and _float_initializer(graph, n.inputs[k]):
                out[n.inputs[k]] = None
    return list(out)


def hidden_values(graph: Graph) -> list[str]:
    """The intermediate values the hidden-state loss compares: the outputs of every
    LayerNormalization / SkipLayerNormalization, else of every Linear and Conv; graph outputs
    excluded (the output loss has them)."""
    outputs = {v.name for v in graph.outputs}
    for ops in (tuple(NORM_OPS), LAYER_OPS):
        names = [n.outputs[0] for n in graph.nodes if n.op in ops and n.outputs[0] not in outputs]
        if names:
            return names
    return []


# ---------------------------------------------------------------------------- batches ----

def _feed_rows(feed: Mapping[str, np.ndarray], input_names: list[str], k: int) -> int:
    missing = [n for n in input_names if n not in feed]
    if missing:
        raise ValueError(f"feed {k} lacks graph input(s) {missing}")
    sizes = {}
    for n in input_names:
        a = np.asarray(feed[n])
        if a.ndim == 0:
            raise ValueError(f"feed {k}: input {n!r} is 0-d; recover() needs a leading batch axis on every input")
        sizes[n] = a.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"feed {k}: inputs have different batch sizes {sizes}; every input of a feed "
                         "must share its leading (batch) axis")
    rows = next(iter(sizes.values()))
    if rows == 0:
        raise ValueError(f"feed {k} has 0 rows")
    return rows


class _Pool:
    """Rows of the feeds that share every input's shape (bar the batch axis) and dtype."""

    def __init__(self, names: list[str]):
        self.names = names
        self.parts: list[dict[str, np.ndarray]] = []
        self.data: dict[str, np.ndarray] = {}
        self.targets: dict[str, np.ndarray] | None = None    # teacher values per row, when cached

    def finish(self) -> None:
        self.data = {n: np.concatenate([p[n] for p in self.parts]) for n in self.names}
        self.parts = []

    @property
    def rows(self) -> int:
        return len(next(iter(self.data.values())))


def _pools(feeds: Sequence[Mapping[str, np.ndarray]], input_names: list[str]) -> list[_Pool]:
    pools: dict[tuple, _Pool] = {}
    for k, feed in enumerate(feeds):
        _feed_rows(feed, input_names, k)
        arrays = {n: np.asarray(feed[n]) for n in input_names}
        key = tuple((n, arrays[n].shape[1:], str(arrays[n].dtype)) for n in input_names)
        pools.setdefault(key, _Pool(input_names)).parts.append(arrays)
    for p in pools.values():
        p.finish()
    return list(pools.values())


def _epoch(pools: list[_Pool], batch: int, rng: np.random.Generator) -> list[tuple[_Pool, np.ndarray]]:
    """One pass over every row: (pool, row indices) chunks in shuffled order. A tail chunk
    under half a batch is left out (its rows are reshuffled into the next epoch)."""
    chunks = []
    for p in pools:
        order = rng.permutation(p.rows)
        for i in range(0, p.rows, batch):
            idx = order[i:i + batch]
            if len(idx) * 2 >= batch or i == 0:
                chunks.append((p, np.sort(idx)))
    return [chunks[i] for i in rng.permutation(len(chunks))]


# ------------------------------------------------------------------------------- loss ----

class DistillLoss:
    """Output MSE plus hidden-state MSE, each divided by the teacher value's variance (the
    module docstring). ``scales`` come from the first batch's teacher values."""

    def __init__(self, output_names: list[str], hidden: list[str], hidden_weight: float,
                 teacher_first: dict[str, Any]):
        self.outputs = [n for n in output_names if teacher_first[n].dtype.is_floating_point]
        if not self.outputs and not hidden:
            raise ValueError("the graph has no float output and no hidden value to distill")
        self.hidden = hidden
        self.hidden_weight = float(hidden_weight)
        self.scales = {n: max(float(teacher_first[n].double().var(unbiased=False)), VAR_FLOOR)
                       for n in self.outputs + hidden}

    def __call__(self, student: dict[str, Any], teacher: dict[str, Any]):
        def term(names):
            return sum(((student[n] - teacher[n]) ** 2).mean() / self.scales[n] for n in names) / len(names)
        loss = term(self.outputs) if self.outputs else 0.0
        if self.hidden and self.hidden_weight:
            loss = loss + self.hidden_weight * term(self.hidden)
        return loss


# ------------------------------------------------------------------------- schedules ----

def cubic_sparsity(s_start: float, s_target: float, r: float) -> float:
    """Zhu & Gupta (2017): s(r) = s_target + (s_start - s_target) * (1 - r)^3, r in [0, 1]
    the share of the ramp done; fast early, when the network has the most redundancy."""
    r = min(max(r, 0.0), 1.0)
    return s_target + (s_start - s_target) * (1.0 - r) ** 3


def _lr_factor(progress: float, progress_after: float) -> float:
    """Linear warmup over the first WARMUP_FRACTION of the budget, then cosine from 1 to 0.
    ``progress`` is the budget share used when the step starts, ``progress_after`` when it
    will have run (by step count), so that the very first step does not get a zero rate."""
    warm = min(1.0, max(progress, progress_after) / WARMUP_FRACTION)
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------- recover ----

def recover(student: Graph, teacher: Graph, masks: dict[str, np.ndarray], feeds: Sequence[dict[str, np.ndarray]], *,
            minutes: float | None = None, steps: int | None = None, lr: float = DEFAULT_LR,
            gradual: dict[str, Callable[[np.ndarray, float], np.ndarray]] | None = None,
            target: dict[str, float] | None = None, seed: int = 0,
            say: Callable[[str], None] = lambda s: None,
            batch_size: int | None = None, hidden: Sequence[str] | None = None,
            hidden_weight: float | None = None,
            train_norms: bool = True, keep_on_interrupt: bool = False,
            precision: str = "auto") -> RecoverResult:
    """Distill ``teacher`` (the original fp32 graph) into ``student`` (the pruned fp32 graph,
    same structure and value names) on the unlabeled ``feeds``; the graphs are not modified.

    masks:     weight initializer name -> bool mask of its shape (True = kept); those
               positions are zeroed at the start and stay exactly 0.
    minutes, steps: the budget; training stops at whichever runs out first (one is required).
    lr:        Adam's peak learning rate (DEFAULT_LR, measured on a pretrained transformer).
    gradual:   weight name -> mask function (w (fp32, the weight's shape), sparsity) -> bool
               mask; with ``target`` (name -> final sparsity in [0, 1)) the sparsity of those
               weights ramps from the input mask's (0 without one) to the target.
    seed:      seeds the row shuffling (the forward and backward passes have no randomness).
    say:       progress lines, one every PROGRESS_SECONDS.
    batch_size: rows per step (default: the largest feed's batch).
    hidden:    value names for the hidden-state loss (default ``hidden_values(student)``);
               ``hidden_weight`` its weight against the output terms' (0 disables it; None:
               NORM_HIDDEN_WEIGHT for LayerNorm outputs, else LAYER_HIDDEN_WEIGHT).
    train_norms: also train LayerNorm scale/bias (``trainable_names``).
    keep_on_interrupt: on Ctrl-C return what was trained so far (interrupted=True) instead of
               re-raising KeyboardInterrupt (the default: the caller then writes nothing).
    precision: the student's forward pass while training, one of PRECISIONS
               (resolve_precision()); the result is float32 either way.

    Returns RecoverResult: ``weights`` holds every trained initializer (fp32, its shape, masked
    positions exactly +0.0); ``loss_start`` / ``loss_end`` are the distillation loss on the same
    EVAL_BATCHES batches before and after training.
    """
    if minutes is None and steps is None:
        raise ValueError("recover() needs a budget: steps=..., minutes=... or both")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ValueError(f"minutes must be > 0, got {minutes!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not feeds:
        raise ValueError("recover() needs at least one feed (a dict of input arrays)")
    precision = resolve_precision(precision)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    gradual, target = dict(gradual or {}), dict(target or {})
    if set(gradual) != set(target):
        raise ValueError(f"gradual and target must name the same weights; gradual: {sorted(gradual)}, "
                         f"target: {sorted(target)}")
    torch = import_torch()

    input_names = [v.name for v in student.inputs]
    output_names = [v.name for v in student.outputs]
    if input_names != [v.name for v in teacher.inputs] or output_names != [v.name for v in teacher.outputs]:
        raise ValueError("student and teacher must have the same inputs and outputs (the student is the "
                         "pruned copy of the teacher)")
    trainable = trainable_names(student, norms=train_norms)
    masks = {k: np.asarray(m, dtype=bool) for k, m in masks.items()}
    for name, m in list(masks.items()) + [(k, None) for k in gradual]:
        if name not in trainable:
            raise ValueError(f"{name!r} is not a trainable weight (a dense Linear/Conv weight of the student)")
        if m is not None and tuple(m.shape) != tuple(student.initializers[name].shape):
            raise ValueError(f"mask of {name!r} has shape {m.shape}, the weight "
                             f"{tuple(student.initializers[name].shape)}")
    start_sparsity = {k: (1.0 - float(masks[k].mean())) if k in masks else 0.0 for k in gradual}
    for k, s in target.items():
        if not (isinstance(s, (int, float)) and 0.0 <= s < 1.0):
            raise ValueError(f"target sparsity of {k!r} must be in [0, 1), got {s!r}")
        if s < start_sparsity[k]:
            raise ValueError(f"target sparsity of {k!r} ({s}) is below its mask's ({start_sparsity[k]:.3f}); "
                             "gradual pruning only raises sparsity")
    hidden = list(hidden_values(student) if hidden is None else hidden)
    if hidden_weight is None:
        norm_outputs = {n.outputs[0] for n in student.nodes if n.op in NORM_OPS}
        hidden_weight = NORM_HIDDEN_WEIGHT if hidden and set(hidden) <= norm_outputs else LAYER_HIDDEN_WEIGHT
    produced = {o for n in student.nodes for o in n.outputs} & {o for n in teacher.nodes for o in n.outputs}
    bad = [h for h in hidden if h not in produced]
    if bad:
        raise ValueError(f"hidden values {bad[:5]} are not produced by both student and teacher")

    t_setup = time.perf_counter()
    pools = _pools(feeds, input_names)
    batch = int(batch_size or max(_feed_rows(f, input_names, k) for k, f in enumerate(feeds)))
    student_t = TorchGraph(student, trainable)
    teacher_t = TorchGraph(teacher)
    params = student_t.params
    # Each step multiplies the masked weights by their mask as float32 (1 kept, 0 pruned):
    # torch's masked_fill_ took 1.3 ms on a (1536, 384) weight where mul_ takes 76 us
    # (benchmarks/RESULTS.md, "Recovery in bfloat16"). A product leaves -0.0 where a pruned
    # weight was negative; clear_pruned() writes +0.0 once at the end.
    mask_t = {k: torch.from_numpy(m.astype(np.float32)) for k, m in masks.items()}

    def clear_pruned() -> None:
        with torch.no_grad():
            for k in mask_t:
                params[k].masked_fill_(torch.from_numpy(~masks[k]), 0.0)

    clear_pruned()

    keep = output_names + [h for h in hidden if h not in output_names]

    def teacher_values(feed) -> dict[str, Any]:
        with torch.no_grad():
            outs, vals = teacher_t(feed, keep=keep)
        return vals

    def student_values(feed, train: bool = False) -> dict[str, Any]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train and precision == "bf16"):
            outs, vals = student_t(feed, keep=keep)
        return vals

    first_teacher = teacher_values({n: pools[0].data[n][:batch] for n in input_names})
    loss_fn = DistillLoss(output_names, hidden, hidden_weight, first_teacher)
    keep = loss_fn.outputs + [h for h in hidden if h not in loss_fn.outputs]   # the float values the loss reads
    _cache_teacher(pools, feeds, input_names, keep, teacher_values, say)

    eval_feeds = [dict(f) for f in feeds[:EVAL_BATCHES]]
    eval_targets = [teacher_values(f) for f in eval_feeds]

    def eval_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_fn(student_values(f), t)) for f, t in zip(eval_feeds, eval_targets)]))

    loss_start = eval_loss()
    rows = sum(p.rows for p in pools)
    say(f"recover: training {len(params)} tensors ({sum(p.numel() for p in params.values()):,} values, "
        f"{len(masks)} masked{f', {len(gradual)} pruned gradually' if gradual else ''}) on {rows} rows in "
        f"batches of {batch}, forward in {precision}; loss on {len(loss_fn.outputs)} output(s) + {len(hidden)} hidden value(s); "
        f"start loss {loss_start:.4g}; budget "
        + " or ".join(([f"{steps} steps"] if steps else []) + ([f"{minutes:g} min"] if minutes else []))
        + f"; setup {time.perf_counter() - t_setup:.1f} s")

    opt = _adam(torch, list(params.values()), lr)
    rng = np.random.default_rng(seed)
    ramp_done = 0
    budget_s = None if minutes is None else 60.0 * minutes

    def progress(step: int, elapsed: float) -> float:
        p = 0.0
        if steps:
            p = max(p, step / steps)
        if budget_s:
            p = max(p, elapsed / budget_s)
        return p

    def ramp_to(point: int) -> None:
        """Recompute the gradual masks at ramp point ``point`` (1..RAMP_POINTS)."""
        r = point / RAMP_POINTS
        with torch.no_grad():
            for k, fn in gradual.items():
                s = cubic_sparsity(start_sparsity[k], float(target[k]), r)
                w = params[k].detach().numpy().copy()
                m = np.asarray(fn(w, s), dtype=bool)
                if m.shape != w.shape:
                    raise ValueError(f"the mask function of {k!r} returned shape {m.shape}, not {w.shape}")
                mask_t[k] = torch.from_numpy(m.astype(np.float32))
                params[k].mul_(mask_t[k])
                masks[k] = m

    step, interrupted, recent = 0, False, []
    t0 = time.perf_counter()
    last_say = t0
    try:
        while True:
            for pool, idx in _epoch(pools, batch, rng):
                elapsed = time.perf_counter() - t0
                p = progress(step, elapsed)
                if p >= 1.0:
                    break
                while gradual and ramp_done < RAMP_POINTS and p >= RAMP_FRACTION * (ramp_done + 1) / RAMP_POINTS:
                    ramp_done += 1
                    if not (ramp_done < RAMP_POINTS and p >= RAMP_FRACTION * (ramp_done + 1) / RAMP_POINTS):
                        ramp_to(ramp_done)       # several points passed at once: only the latest
                feed = {n: pool.data[n][idx] for n in input_names}
                if pool.targets is not None:
                    want = {n: torch.from_numpy(pool.targets[n][idx]).float() for n in keep}
                else:
                    want = teacher_values(feed)
                for g in opt.param_groups:
                    g["lr"] = lr * _lr_factor(p, (step + 1) / steps if steps else 0.0)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(student_values(feed, train=True), want)
                loss.backward()
                with torch.no_grad():
                    # The pruned entries' gradients are not masked: Adam works element by
                    # element, so what it does at a pruned position (zeroed right after) never
                    # reaches a kept one.
                    opt.step()
                    for k, m in mask_t.items():
                        params[k].mul_(m)
                step += 1
                recent.append(float(loss.detach()))
                now = time.perf_counter()
                if now - last_say >= PROGRESS_SECONDS:
                    last_say = now
                    p = max(progress(step, now - t0), 1e-9)
                    eta = max(0.0, (now - t0) * (1.0 - p) / p)
                    say(f"recover: step {step}{f'/{steps}' if steps else ''}, loss {np.mean(recent):.4g} "
                        f"(start {loss_start:.4g}), lr {opt.param_groups[0]['lr']:.2g}, "
                        f"{now - t0:.0f} s elapsed, ETA {eta:.0f} s")
                    recent = []
            else:
                continue
            break
    except KeyboardInterrupt:
        if not keep_on_interrupt:
            say(f"recover: interrupted at step {step}; nothing kept")
            raise
        interrupted = True
        say(f"recover: interrupted at step {step}; keeping the weights trained so far")
    seconds = time.perf_counter() - t0
    if gradual and not interrupted and ramp_done < RAMP_POINTS:
        ramp_done = RAMP_POINTS
        ramp_to(RAMP_POINTS)            # the budget ended between ramp points: reach the target
    loss_end = eval_loss()
    say(f"recover: {step} steps in {seconds:.1f} s ({60.0 * step / max(seconds, 1e-9):.1f} steps/min); "
        f"loss {loss_start:.4g} -> {loss_end:.4g}")
    clear_pruned()                      # +0.0 at every masked position (the steps may leave -0.0)
    weights = {k: w.astype(np.float32, copy=False) for k, w in student_t.weights().items()}
    return RecoverResult(weights=weights, masks={k: m.copy() for k, m in masks.items()}, steps=step,
                         seconds=seconds, loss_start=loss_start, loss_end=loss_end, interrupted=interrupted,
                         hidden_weight=float(hidden_weight), precision=precision)


def _adam(torch, params: list, lr: float):
    """Adam, fused (one pass over each tensor: 4.1x faster than the default loop over 36
    (1536, 384) tensors on 2 cores) where this torch has the fused CPU kernel."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def resolve_precision(precision: str) -> str:
    """"fp32" or "bf16" for a PRECISIONS name; "auto": bf16 where the CPU has one of BF16_FLAGS
    (and this torch can run bfloat16 on it), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    torch = import_torch()
    if not any(f in cpuinfo_flags() for f in BF16_FLAGS) or not torch.backends.mkldnn.is_available():
        return "fp32"
    return "bf16"


def teacher_cache_bytes() -> int:
    """The teacher cache's budget: TEACHER_CACHE_BYTES when set, else TEACHER_CACHE_SHARE of
    available_memory() up to TEACHER_CACHE_MAX_BYTES (TEACHER_CACHE_FALLBACK_BYTES unknown)."""
    if TEACHER_CACHE_BYTES is not None:
        return int(TEACHER_CACHE_BYTES)
    avail = available_memory()
    if avail is None:
        return TEACHER_CACHE_FALLBACK_BYTES
    return int(min(TEACHER_CACHE_MAX_BYTES, avail * TEACHER_CACHE_SHARE))


def _compact(v) -> np.ndarray:
    """A teacher value (float32 torch tensor) as numpy float16 when every element is finite
    and within float16's range, else float32."""
    a = v.numpy()
    if a.dtype == np.float32 and a.size and np.isfinite(a).all() and float(np.abs(a).max()) <= FP16_MAX:
        return a.astype(np.float16)
    return a


def _cache_teacher(pools: list[_Pool], feeds, input_names: list[str], keep: list[str],
                   teacher_values: Callable[[dict], dict], say: Callable[[str], None]) -> None:
    """Fill each pool's ``targets`` (teacher value per row, float16 where it fits: _compact)
    when every value has the batch as its leading axis, the whole fits in
    teacher_cache_bytes(), and a re-batched run of the teacher agrees with the cached rows
    (rows do not interact); else leave them None and the teacher runs at every step."""
    budget = teacher_cache_bytes()
    total = 0
    t0 = time.perf_counter()

    def too_big() -> bool:
        if total > budget:
            say(f"recover: the teacher runs at every step (its values exceed the cache's {budget >> 20} MiB)")
            _drop(pools)
        return total > budget

    for pool in pools:
        # one array per value and pool, allocated at its first chunk (so the budget is
        # checked before the teacher has run over every row) and filled in place
        store: dict[str, np.ndarray] = {}
        for i in range(0, pool.rows, 64):
            rows = min(64, pool.rows - i)
            vals = teacher_values({n: pool.data[n][i:i + rows] for n in input_names})
            for n in keep:
                v = vals[n]
                if v.ndim == 0 or v.shape[0] != rows or (n in store and tuple(v.shape[1:]) != store[n].shape[1:]):
                    say(f"recover: the teacher runs at every step (value {n!r} has no batch axis of fixed shape)")
                    _drop(pools)
                    return
                a = _compact(v)
                if n not in store:
                    store[n] = np.empty((pool.rows,) + a.shape[1:], a.dtype)
                    total += store[n].nbytes
                elif store[n].dtype == np.float16 and a.dtype != np.float16:
                    # a chunk out of float16's range: the value is float32 throughout
                    total += store[n].nbytes
                    store[n] = store[n].astype(np.float32)
                if too_big():
                    return
                store[n][i:i + rows] = a
        pool.targets = store
    # rows must not interact: a batch of rows taken from two places gives the cached values
    pool = max(pools, key=lambda p: p.rows)
    idx = np.unique(np.r_[np.arange(min(2, pool.rows)), pool.rows - 1 - np.arange(min(2, pool.rows))])
    fresh = teacher_values({n: pool.data[n][idx] for n in input_names})
    for n in keep:
        want, got = pool.targets[n][idx].astype(np.float32), fresh[n].numpy()
        tol = FP16_CHECK_RTOL if pool.targets[n].dtype == np.float16 else CACHE_CHECK_RTOL
        if not np.allclose(got, want, rtol=tol, atol=tol * float(np.abs(want).max() or 1.0)):
            say(f"recover: the teacher runs at every step (value {n!r} depends on the other rows of a batch)")
            _drop(pools)
            return
    halves = sum(1 for n in keep if pools[0].targets[n].dtype == np.float16)
    say(f"recover: the teacher's values cached ({total / 2 ** 20:.0f} MiB of a {budget >> 20} MiB budget; "
        f"{halves} of {len(keep)} value(s) as float16) in {time.perf_counter() - t0:.1f} s")


def _drop(pools: list[_Pool]) -> None:
    for p in pools:
        p.targets = None
