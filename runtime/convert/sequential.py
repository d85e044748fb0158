"""The converter's layer-by-layer calibrated pass: SmoothQuant, OBS / Wanda pruning and GPTQ,
each layer from the statistics of its real input (docs/CONVERTER.md).

The layers are visited in graph order. For each one, G = X^T X (and the per-column max of
|X|) is measured on the model *as the layers before it were already changed* (smoothed,
pruned, updated and GPTQ-rounded), so each layer corrects the error that reaches it: that is
SparseGPT's and GPTQ's sequential mode. Per layer, in this order, all with the same G:

1. smooth (SmoothQuant, when the first layer reading an input is reached: every Linear
   reading that input gets one s, smooth.py), G becomes G / (s s^T);
2. prune (obs or wanda, obs.py), unless the mask was already chosen by magnitude;
3. quantize (GPTQ, gptq.py) on the pruned weight, keeping its zeros; the scales go to
   the packer through plans[...].qscale.

Drift correction (Steps.drift_obs / drift_gptq, obs.drift_corrected): before 2 (and 3), the
weight moves to the least-squares fit of the *original* model's layer output X0 W0^T on the
changed input X, measured by running the original model (run()'s ``original``) on the same
feeds, so each layer also makes up for the error the earlier layers passed on.

A Conv weight (M, C, *kernel) is handled as its 2-D view (M, C * prod(kernel)) with the
im2col rows of its input as X; grouped Convs are not visited (the caller prunes them by
magnitude and quantizes them by rounding). SmoothQuant takes Linear layers only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from kernels.core.layouts import dense_tensor
from kernels.reference.conv_pool import conv_by_gemm
from kernels.registry import fill_attrs

from ..graph import Graph
from . import calibrate as cal
from . import gptq, obs
from .obs import output_error
from .smooth import apply_smoothing, search_alpha, smooth_factors


@dataclass
class Steps:
    """What the pass does to each layer it visits."""
    prune_method: str | None = None     # "obs" / "wanda", or None: keep plans[...].mask as is
    mask_kind: str = "unstructured"     # obs.KINDS
    nm: tuple[int, int] = (2, 4)
    block: tuple[int, int] = (1, 4)
    gptq_bits: int | None = None        # 8 / 4, or None: no GPTQ (round to nearest at packing)
    per_channel: bool = True
    group_size: int = 64
    act_order: bool = True
    symmetric: bool = True              # False: asymmetric int4 grids (zero points), GPTQ int4 only
    smooth_alpha: float | str | None = None   # SmoothQuant's alpha, "auto" (searched per input), or None
    act: str = "dynamic"                # how the activations will be quantized (the alpha search simulates it)
    # bias correction: shift each layer's bias by the mean output error of its final weight
    # (pruned, updated, rounded) on the calibration inputs; quant_bits says how the packer
    # will round a weight GPTQ did not (8 / 4, None: not quantized)
    bias_correction: bool = False
    quant_bits: int | None = None
    # drift correction: obs-prune (drift_obs) / GPTQ-round (drift_gptq) toward the original
    # model's layer output X0 W0^T rather than X W^T on the changed input X
    # (obs.drift_corrected); run() needs original=
    drift_obs: bool = False
    drift_gptq: bool = False


def _drift_corrects(steps: Steps, obs_prunes: bool) -> bool:
    """Whether drift correction moves a layer's weight: before GPTQ (drift_gptq), or before obs
    pruning (drift_obs) when ``obs_prunes`` (the layer is pruned by obs)."""
    return (steps.drift_gptq and steps.gptq_bits is not None) or \
        (steps.drift_obs and steps.prune_method == "obs" and obs_prunes)


def calibratable(node) -> bool:
    """The pass takes a Linear, or a Conv without groups (its im2col rows are the X)."""
    return node.op == "Linear" or (node.op == "Conv" and int(node.attrs.get("group", 1)) == 1)


def input_key(node, wshape: tuple) -> tuple:
    """Layers with equal keys see the same X: the same input value, and for Conv the same
    kernel size and window attributes (the im2col rows)."""
    if node.op == "Linear":
        return (node.inputs[0],)
    a = node.attrs
    return (node.inputs[0], tuple(wshape[1:]), str(a.get("strides")), str(a.get("pads")), str(a.get("dilations")))


def _rows(node, x: np.ndarray, wshape: tuple) -> np.ndarray:
    """One batch of the layer's input rows: X (..., K) for Linear; for Conv the im2col rows (one
    per image and output position, columns in the weight's (C, *kernel) order, as its 2-D view
    (M, C * prod(kernel)))."""
    if node.op == "Linear":
        return np.asarray(x)
    a = fill_attrs("Conv", dict(node.attrs))
    chunks = []

    def gemm(cols, rows):
        chunks.append(np.array(cols))
        return np.zeros((cols.shape[0], wshape[0]))
    conv_by_gemm(x, wshape, a["strides"], a["pads"], a["dilations"], 1, gemm)
    return np.concatenate(chunks) if chunks else np.zeros((0, int(np.prod(wshape[1:]))), np.float32)


SAMPLE_ROWS = 512    # rows per calibration batch kept for SmoothQuant's alpha search


def _measure(graph: Graph, node, wshape: tuple, feeds, sample: bool = False, original: Graph | None = None):
    """The layer input's statistics on ``graph``; with ``original``, also the cross moments
    with the same input in the original model (drift correction)."""
    x_name = node.inputs[0]
    stats = obs.LayerInputStats(int(np.prod(wshape[1:])), sample_rows=SAMPLE_ROWS if sample else 0,
                                cross=original is not None)
    sess = cal.probe_session(cal.upstream(graph, [x_name]), [x_name])
    sess0 = None if original is None else cal.probe_session(cal.upstream(original, [x_name]), [x_name])
    for feed in feeds:
        rows = _rows(node, sess.run([x_name], feed)[0], wshape)
        stats.add(rows)
        if sess0 is not None:
            stats.add_original(rows, _rows(node, sess0.run([x_name], feed)[0], wshape))
    return stats


def run(graph: Graph, layers: list, plans: dict, steps: Steps, feeds, *,
        prune_sparsity: Callable[[object], float | None], baseline_mask: Callable[[np.ndarray, float], np.ndarray],
        say: Callable[[str], None] = lambda s: None, original: Graph | None = None) -> None:
    """The pass (module docstring), in place on ``graph`` (the converter's working copy).

    layers: the layers to visit (Layer objects: .name, .node, .weight_name), in graph order;
    plans: layer name -> the converter's _Plan (mask, fp32_weight, qscale, smooth, note);
    prune_sparsity(layer): the sparsity to prune it to with steps.prune_method, or None to
    leave its mask alone; baseline_mask(w2d, sparsity): magnitude's mask, for the report's
    "before" error; original: the model before the pass (the same value and weight names),
    needed by drift correction (steps.drift_obs, drift_gptq)."""
    drift = _drift_corrects(steps, obs_prunes=True)      # for some layer: the original model is run
    if drift and original is None:
        raise ValueError("drift correction needs the original model (original=)")
    nodes = {n.name: n for n in graph.nodes}
    stats_by_key: dict[tuple, object] = {}
    done: dict[str, str] = {}              # weight name -> the layer that already handled it
    for idx, lr in enumerate(layers):
        node = nodes[lr.name]
        plan = plans[lr.name]
        w_full = np.asarray(graph.initializers[lr.weight_name].fields["data"])
        if lr.weight_name in done:         # a weight read by two layers: handled once
            first = plans[done[lr.weight_name]]
            plan.mask, plan.qscale, plan.qzero, plan.fp32_weight = first.mask, first.qscale, first.qzero, first.fp32_weight
            continue
        key = input_key(node, w_full.shape)
        if key not in stats_by_key:
            # Exact to cache by value: every layer that could change this input comes before
            # its producer, so before its first reader, in graph order.
            auto = steps.smooth_alpha == "auto" and node.op == "Linear"
            stats = _measure(graph, node, w_full.shape, feeds, sample=auto,
                             original=original if drift else None)
            alpha = steps.smooth_alpha
            if auto:
                group = [m for m in layers[idx:] if nodes[m.name].op == "Linear"
                         and input_key(nodes[m.name], ()) == key]
                stacked = np.concatenate([np.asarray(graph.initializers[n].fields["data"]) for n in
                                          dict.fromkeys(m.weight_name for m in group)])
                alpha, errors = search_alpha(stats.sample, stats.col_min, stats.col_max, stacked, steps.act,
                                             weight_bits=steps.quant_bits if steps.quant_bits in (7, 8) else 8)
                say(f"smooth {node.inputs[0]}: alpha search ({steps.act} int8 output error) "
                    + ", ".join(f"{'none' if a is None else a}: {e:.4f}" for a, e in errors.items())
                    + f" -> {'no smoothing' if alpha is None else alpha}")
                stats._samples = []            # only the search needs the rows
                if alpha is None:
                    for m in group:
                        plans[m.name].note = "; ".join(x for x in (plans[m.name].note, "not smoothed (alpha search: "
                                                                   "smoothing did not lower the error)") if x)
            if alpha is not None and node.op == "Linear":
                group = [m for m in layers[idx:] if nodes[m.name].op == "Linear"
                         and input_key(nodes[m.name], ()) == key]
                wnames = list(dict.fromkeys(m.weight_name for m in group))
                w_absmax = np.max([np.abs(np.asarray(graph.initializers[n].fields["data"])).max(axis=0)
                                   for n in wnames], axis=0)
                s = smooth_factors(stats.absmax, w_absmax, alpha)
                how = apply_smoothing(graph, node.inputs[0], [nodes[m.name] for m in group], wnames, s)
                s64 = s.astype(np.float64)
                stats.scale_rows(s64)
                for m in group:
                    plans[m.name].smooth = s
                    plans[m.name].note = "; ".join(x for x in (plans[m.name].note, f"smoothed (alpha {alpha}, {how})") if x)
                    if plans[m.name].fp32_weight is not None:
                        plans[m.name].fp32_weight = (plans[m.name].fp32_weight * s[None, :]).astype(np.float32)
                say(f"smooth {node.inputs[0]}: max|X| {float(stats.absmax.max() * s64.max()):.3g} over "
                    f"{len(group)} layer(s), {how}")
                w_full = np.asarray(graph.initializers[lr.weight_name].fields["data"])
                key = input_key(node, w_full.shape)     # the readers now read X / s
            stats_by_key[key] = stats
        st = stats_by_key[key]
        g = st.gram
        w = w_full.reshape(w_full.shape[0], -1)
        notes = [plan.note] if plan.note else []
        new_w = w
        s_prune = prune_sparsity(lr) if steps.prune_method else None
        # the weight pruning and GPTQ start from, and the output error they are judged by: the
        # layer's own output on X, or with drift correction the original model's X0 W0^T
        start, w0 = w, None
        if st.cross is not None and _drift_corrects(steps, obs_prunes=s_prune is not None):
            w0 = np.asarray(original.initializers[lr.weight_name].fields["data"]).reshape(w.shape)
            start = obs.drift_corrected(w, w0, g, st.cross)

        def error(x, w=w, g=g, w0=w0, st=st):
            return obs.output_error(x, w, g) if w0 is None else obs.target_error(x, w0, g, st.cross, st.gram0)
        if w0 is not None:
            moved = f"error to the original layer output {error(w):.4f} -> {error(start):.4f}"
            notes.append(f"drift corrected: {moved}")
            say(f"[{idx + 1}/{len(layers)}] {lr.name}: drift corrected, {moved}")
            new_w = start
        if s_prune is not None:
            if steps.mask_kind == "nm" and w.shape[1] % steps.nm[1]:
                plan.note = f"not N:M-pruned: its {w.shape[1]} inputs are not a multiple of M={steps.nm[1]}"
                notes = [plan.note]
            else:
                args = dict(kind=steps.mask_kind, sparsity=s_prune, nm=steps.nm, block=steps.block)
                baseline = w * baseline_mask(w, s_prune)
                try:
                    if steps.prune_method == "wanda":
                        mask = obs.wanda_mask(w, g, **args)
                        new_w = (w * mask).astype(np.float32)
                    else:
                        new_w, mask = obs.obs_prune(start, g, **args)
                except ValueError as e:
                    raise ValueError(f"layer {lr.name!r}: {e}") from None
                before, after = error(baseline), error(new_w)
                plan.mask = mask.reshape(w_full.shape)
                notes.append(f"{steps.prune_method}: layer output error {after:.4f} (magnitude, no update: {before:.4f})")
                say(f"[{idx + 1}/{len(layers)}] {lr.name}: {steps.prune_method}, output error {before:.4f} -> {after:.4f}")
        if steps.gptq_bits is not None:
            m2 = None if plan.mask is None else plan.mask.reshape(w.shape)
            kw = dict(per_channel=steps.per_channel, group_size=steps.group_size if steps.gptq_bits == 4 else None,
                      symmetric=steps.symmetric)
            try:
                wq, scale, zero = gptq.gptq_quantize(new_w, g, steps.gptq_bits, mask=m2, act_order=steps.act_order, **kw)
            except ValueError as e:
                raise ValueError(f"layer {lr.name!r}: {e}") from None
            rtn = gptq.rtn_quantize(new_w, steps.gptq_bits, mask=m2, **kw)
            before, after = obs.output_error(rtn, new_w, g), obs.output_error(wq, new_w, g)
            notes.append(f"gptq int{steps.gptq_bits}: output error {after:.4f} (round to nearest: {before:.4f})")
            say(f"[{idx + 1}/{len(layers)}] {lr.name}: gptq int{steps.gptq_bits}, output error {before:.4f} -> {after:.4f}")
            new_w, plan.qscale, plan.qzero = wq, scale, zero
        if steps.bias_correction:
            st = stats_by_key[key]
            # the weight the packer will store: masked (magnitude masks are applied at packing),
            # rounded to nearest where GPTQ did not round it
            m2 = None if plan.mask is None else plan.mask.reshape(w.shape)
            final = new_w if m2 is None else np.where(m2, new_w, np.float32(0))
            if steps.gptq_bits is None and steps.quant_bits is not None:
                final = gptq.rtn_quantize(final, steps.quant_bits, per_channel=steps.per_channel,
                                          group_size=steps.group_size if steps.quant_bits == 4 else None, mask=m2)
            plan.bias_shift, before, after = bias_shift(w, final, g, st.col_sum, st.rows)
            notes.append(f"bias corrected: output error {before:.4f} -> {after:.4f}")
        if new_w is not w:
            plan.fp32_weight = w_full if plan.fp32_weight is None else plan.fp32_weight
            graph.initializers[lr.weight_name] = dense_tensor(lr.weight_name, new_w.reshape(w_full.shape))
        if notes:
            plan.note = "; ".join(notes)
        done[lr.weight_name] = lr.name


def bias_shift(w: np.ndarray, final: np.ndarray, gram: np.ndarray, col_sum: np.ndarray,
               rows: int) -> tuple[np.ndarray, float, float]:
    """Bias correction (Nagel et al. 2019, "Data-free quantization", with measured means): the
    constant c (N,) that, added to the bias, minimises ||X final^T + c - X w^T|| over the
    calibration rows X (G = X^T X, column sums, row count): c = (w - final) mu with mu the
    mean input row. It removes the mean of the output error pruning and rounding leave; on
    the calibration rows it can only lower the error (least squares), by rows * ||c||^2.
    w, final (N, K); returns (c float32, relative output error before, after)."""
    d = np.asarray(w, np.float64) - np.asarray(final, np.float64)
    c = d @ (np.asarray(col_sum, np.float64) / max(int(rows), 1))
    before = output_error(final, w, gram)
    # ||X D^T + c||^2 = ||X D^T||^2 - rows ||c||^2 for this c: the error falls by rows ||c||^2
    w64 = np.asarray(w, np.float64)
    den = float(np.einsum("nk,kj,nj->", w64, gram, w64))
    after = float(np.sqrt(max(before * before * den - rows * float(c @ c), 0.0) / den)) if den > 0 else 0.0
    return c.astype(np.float32), before, after
