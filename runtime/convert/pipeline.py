"""The conversion pipeline: import -> prune -> calibrate -> quantize + pack -> report -> write.

docs/CONVERTER.md is the contract (layers, numerics, layouts); this module decides, per layer,
what to do and in which layout, and keeps the user informed:

* every weight layer (Linear / Conv with a constant weight) is pruned and quantized as asked;
  the only ways to keep one in fp32 are ``keep_fp32`` patterns, the ``max_error`` budget, the
  depthwise rule (``DEPTHWISE_REASON``, off with ``quant_depthwise``) and the small-patch rule
  (``SMALL_CONV_REASON``, off with ``quant_small_convs``), and the report says which layers
  were kept and why;
* every option is checked before any work (bad values, patterns that match no layer, NaN/Inf
  weights, calibration data that does not fit the model), and nothing is written unless the
  whole conversion succeeded (the file is written atomically at the very end).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import inspect
import io
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from kernels import registry
from kernels.core import layouts as L
from kernels.core.layouts import PackedTensor, dense_tensor

from ..format import atomic_write, save
from ..graph import Graph, Node, unique_name
from ..onnx_import import import_onnx
from ..session import InferenceSession
from . import calibrate as cal
from . import prune as pr
from . import sequential as seq
from .calibrate import CalibFeeds
from .data import load_npy_dir, load_text_feeds
from . import recover as recovery
from .report import EmbeddingReport, LayerReport, Report, output_metrics, rel_error, sqnr_db
from .sequential import calibratable

PRUNE_METHODS = ("none", "magnitude", "nm", "block", "channel", "random")
# how the kept weights of a magnitude (unstructured) / nm / block mask are chosen: "auto" is
# obs with real calibration data, else magnitude (runtime/convert/obs.py)
PRUNE_SELECTIONS = ("auto", "magnitude", "wanda", "obs")
MASK_KINDS = {"magnitude": "unstructured", "nm": "nm", "block": "block"}
QUANT_MODES = ("none", "int8", "int4")
# how weights are rounded to the grid: round to nearest, or GPTQ's error update from the
# layer's calibration inputs (runtime/convert/gptq.py)
QUANT_METHODS = ("rtn", "gptq")
DRIFT_CORRECTIONS = ("obs", "all", "off")      # what drift correction aims at the original model
# embedding tables: "auto" is int8 per row whenever weights are quantized (int8 or int4: an
# int4 table costs accuracy at the model's very input, measured on MiniLM in RESULTS.md)
EMBED_QUANTS = ("auto", "int8", "int4", "none")
ACT_MODES = ("dynamic", "static")
CALIB_METHODS = ("minmax", "percentile", "mse", "entropy")
SCOPES = ("layer", "global")
WEIGHT_BITS = (8, 7)
LAYER_OPS = ("Linear", "Conv")


@dataclass
class ConvertOptions:
    """Everything `qrt convert` can be asked; the same names as the CLI flags."""
    prune: str = "none"
    prune_method: str = "auto"
    sparsity: float = 0.0
    layer_sparsity: dict[str, float] = field(default_factory=dict)   # pattern -> sparsity
    nm: tuple[int, int] = (2, 4)
    block: tuple[int, int] = (1, 4)
    scope: str = "layer"
    channel_norm: str = "l2"
    quant: str = "none"
    quant_method: str = "rtn"
    # int8 weights on 8 bits ([-127, 127]) or 7 ([-63, 63]: the same layout, which the AVX2
    # kernels multiply 1.3x faster, exactly; twice the rounding step). Dense int8 only.
    weight_bits: int = 8
    embed_quant: str = "auto"       # EMBED_QUANTS
    act_order: bool = True          # GPTQ visits the inputs with the most energy first
    # SmoothQuant: an alpha in (0, 1), "auto" (searched per layer input) or "none"; None (the
    # default) is "auto" for int8 with real calibration data and "none" otherwise (resolved_smooth)
    smooth: float | str | None = None
    act: str = "dynamic"
    per_channel: bool = True
    symmetric: bool = True
    group_size: int = 64
    calib: Any = None               # path to .npz or to a folder of .npy, an iterable of feed dicts, or None
    calib_text: str | os.PathLike | None = None   # text file, one sample per line (runtime/convert/data.py) ...
    tokenizer: str | os.PathLike | None = None    # ... tokenized by this Hugging Face tokenizer folder
    seq_len: int = 128              # ... each line capped at this many tokens
    calib_method: str = "minmax"
    percentile: float = 99.99
    keep_fp32: list[str] = field(default_factory=list)
    # depthwise Convs (one input channel per group) stay dense fp32 unless this is set
    # (``depthwise_reason``)
    quant_depthwise: bool = False
    # with quant "int8", Convs whose patch (C/group x kernel) has at most SMALL_CONV_PATCH values
    # stay dense fp32 unless this is set (SMALL_CONV_REASON)
    quant_small_convs: bool = False
    skip: list[str] = field(default_factory=list)                   # not pruned (still quantized)
    max_error: float | None = None  # minimum cosine similarity of the outputs
    holdout: float = 0.2            # fraction of real calibration feeds kept for evaluation only
    bias_correction: bool = False   # shift biases by the mean output error on the calibration data
    # obs (and with "all" GPTQ) aim at the original model's layer output, not the changed
    # model's (sequential.py): DRIFT_CORRECTIONS; None: "obs" (resolved_drift_correction)
    drift_correction: str | None = None
    # distillation recovery (runtime/convert/recover.py): fine-tune the pruned fp32 model
    # toward the original on unlabeled data before quantizing (needs PyTorch)
    recover: bool = False
    recover_data: Any = None        # like calib (.npz, .npy folder, iterable); None: the calibration data
    recover_minutes: float | None = None   # time budget; default RECOVER_MINUTES without recover_steps
    recover_steps: int | None = None
    recover_lr: float = recovery.DEFAULT_LR
    recover_gradual: bool = False   # prune gradually during training (cubic schedule) instead of one-shot
    recover_precision: str = "auto"  # the student's forward pass while training: recovery.PRECISIONS
    seed: int = 0

    def validate(self) -> None:
        def choice(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        choice("prune", self.prune, PRUNE_METHODS)
        choice("prune_method", self.prune_method, PRUNE_SELECTIONS)
        choice("quant", self.quant, QUANT_MODES)
        choice("quant_method", self.quant_method, QUANT_METHODS)
        if self.drift_correction is not None:
            choice("drift_correction", self.drift_correction, DRIFT_CORRECTIONS)
        choice("embed_quant", self.embed_quant, EMBED_QUANTS)
        choice("act", self.act, ACT_MODES)
        choice("calib_method", self.calib_method, CALIB_METHODS)
        choice("scope", self.scope, SCOPES)
        choice("channel_norm", self.channel_norm, ("l1", "l2"))
        _check_sparsity("sparsity", self.sparsity)
        for pattern, s in self.layer_sparsity.items():
            _check_sparsity(f"sparsity for layers matching {pattern!r}", s)
        n, m = self.nm
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise ValueError(f"N:M needs 0 < N < M; got {n}:{m}")
        r, c = self.block
        if not (isinstance(r, int) and isinstance(c, int) and r >= 1 and c >= 1):
            raise ValueError(f"block shape must be two positive ints RxC; got {r}x{c}")
        if self.weight_bits not in WEIGHT_BITS or isinstance(self.weight_bits, bool):
            raise ValueError(f"weight_bits must be one of {', '.join(map(str, WEIGHT_BITS))}; got {self.weight_bits!r}")
        if self.weight_bits != 8:
            if self.quant != "int8":
                raise ValueError(f"weight_bits {self.weight_bits} narrows int8 weights: it needs quant='int8', "
                                 f"got {self.quant!r}")
            if not self.symmetric:
                raise ValueError(f"weight_bits {self.weight_bits} is a symmetric grid; asymmetric weights keep 8 bits")
        if self.group_size not in (32, 64, 128) and not (self.group_size > 0 and self.group_size % 2 == 0):
            raise ValueError(f"group size must be a positive even number (32, 64 or 128); got {self.group_size}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100]; got {self.percentile}")
        if self.calib is not None and self.calib_text is not None:
            raise ValueError("give one calibration source: calib (arrays) or calib_text (text), not both")
        if self.calib_text is not None and self.tokenizer is None:
            raise ValueError("calib_text needs a tokenizer: a Hugging Face tokenizer folder holding tokenizer.json")
        if self.tokenizer is not None and self.calib_text is None and self.recover_data is None:
            raise ValueError("a tokenizer was given without calib_text or recover_data (the text file it tokenizes)")
        if not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive int (tokens per text sample); got {self.seq_len!r}")
        if self.recover:
            if self.prune == "none":
                raise ValueError("recover fine-tunes a pruned model toward the original: it needs pruning "
                                 "(prune='magnitude', 'nm', 'block' or 'channel')")
            if self.recover_data is None and not self.has_calib:
                raise ValueError("recover needs real data (recover_data, or calibration data: calib / "
                                 "calib_text): trained on random inputs, the model would fit noise")
            if self.recover_minutes is not None and not (isinstance(self.recover_minutes, (int, float))
                                                         and self.recover_minutes > 0):
                raise ValueError(f"recover_minutes must be > 0, got {self.recover_minutes!r}")
            if self.recover_steps is not None and not (isinstance(self.recover_steps, int)
                                                       and self.recover_steps > 0):
                raise ValueError(f"recover_steps must be a positive int, got {self.recover_steps!r}")
            if not (isinstance(self.recover_lr, (int, float)) and self.recover_lr > 0):
                raise ValueError(f"recover_lr must be > 0, got {self.recover_lr!r}")
            choice("recover_precision", self.recover_precision, recovery.PRECISIONS)
            if self.recover_gradual and self.prune_method not in ("auto", "magnitude"):
                raise ValueError("recover_gradual grows the masks by magnitude during training: it takes "
                                 f"prune_method 'auto' or 'magnitude', got {self.prune_method!r}")
            if self.recover_gradual and self.prune not in ("magnitude", "block"):
                raise ValueError("recover_gradual raises unstructured or block sparsity step by step: it needs "
                                 f"prune='magnitude' or 'block', got {self.prune!r}")
        elif self.recover_data is not None or self.recover_gradual or self.recover_steps is not None \
                or self.recover_minutes is not None:
            raise ValueError("recover_data / recover_minutes / recover_steps / recover_gradual were given "
                             "without recover=True (--recover)")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) \
                or not 0.0 <= float(self.holdout) < 1.0:
            raise ValueError(f"holdout is the fraction of calibration feeds kept for evaluation, in [0, 1); "
                             f"got {self.holdout!r}")
        if self.max_error is not None and not 0.0 < self.max_error <= 1.0:
            raise ValueError(f"max_error is a minimum cosine similarity in (0, 1]; got {self.max_error}")
        if self.act == "static" and self.quant != "int8":
            raise ValueError("static activation quantization (act='static') needs quant='int8'")
        if self.quant_method == "gptq":
            if self.quant == "none":
                raise ValueError("quant_method='gptq' rounds weights to a grid: it needs quant='int8' or 'int4'")
            if not self.symmetric and self.quant != "int4":
                raise ValueError("quant_method='gptq' with asymmetric weights is int4 only: int8 GPTQ grids are "
                                 "symmetric (sparse int8 layouts need pruned zeros exactly 0)")
            if not self.has_calib:
                raise ValueError("quant_method='gptq' needs real calibration data (calib): it corrects each "
                                 "layer's rounding error on the layer's real inputs")
        if self.smooth is not None and self.smooth != "none":
            if self.smooth != "auto" and (isinstance(self.smooth, bool) or not isinstance(self.smooth, (int, float))
                                          or not 0.0 < float(self.smooth) < 1.0):
                raise ValueError(f"smooth is SmoothQuant's alpha, in (0, 1) (0.5 is usual), 'auto' (searched per "
                                 f"layer input) or 'none'; got {self.smooth!r}")
            if self.quant != "int8":
                raise ValueError("smooth (SmoothQuant) balances int8 activations against int8 weights: it needs "
                                 f"quant='int8', got quant={self.quant!r} (int4 layers are weight-only: their "
                                 "activations stay float, there is nothing to smooth)")
            if not self.has_calib:
                raise ValueError("smooth (SmoothQuant) needs real calibration data (calib): the activation "
                                 "ranges it balances are the layers' real inputs")
        if self.bias_correction:
            if not self.has_calib:
                raise ValueError("bias_correction needs real calibration data (calib): the shift is the mean "
                                 "output error on the layers' real inputs")
            if self.quant == "none" and self.prune in ("none", "channel"):
                raise ValueError("bias_correction corrects the error of pruning or quantization: it needs "
                                 "quant or a sparse prune")
            if not self.symmetric and self.quant != "none":
                raise ValueError("bias_correction takes symmetric weights (it predicts the packer's rounding)")
        if self.drift_correction in ("obs", "all"):     # asked for: it must have something to do
            if not self.has_calib:
                raise ValueError("drift_correction needs real calibration data (calib): it compares each layer's "
                                 "input in the changed model with the original model's on the same feeds")
            obs_runs = self.resolved_prune_method()[0] == "obs"
            if self.drift_correction == "obs" and not obs_runs:
                raise ValueError("drift_correction='obs' aims obs pruning at the original model: it needs "
                                 "prune_method 'obs' (or 'auto' with a prune)")
            if not obs_runs and self.quant_method != "gptq":
                raise ValueError("drift_correction='all' aims obs pruning and GPTQ rounding at the original model: "
                                 "it needs prune_method 'obs' (or 'auto' with a prune) or quant_method='gptq'")
        if not self.symmetric and self.prune not in ("none", "channel") and self.quant == "int8":
            raise ValueError("asymmetric int8 cannot be combined with sparse pruning: sparse int8 "
                             "layouts are symmetric so that a pruned weight stays exactly 0")
        if self.prune == "none" and (self.sparsity or self.layer_sparsity):
            raise ValueError("a sparsity was given but prune='none'; choose a pruning method")
        if self.prune not in ("none", "nm") and self.sparsity == 0 and not self.layer_sparsity:
            raise ValueError(f"prune={self.prune!r} needs a sparsity > 0 (e.g. 0.5)")
        if self.scope == "global" and self.prune != "magnitude":
            raise ValueError("scope='global' applies to magnitude pruning only")
        if self.prune_method not in ("auto", "magnitude"):
            if self.prune not in MASK_KINDS:
                raise ValueError(f"prune_method={self.prune_method!r} chooses the weights of a mask: it needs "
                                 f"prune='magnitude' (unstructured), 'nm' or 'block', got prune={self.prune!r}")
            if self.scope == "global":
                raise ValueError(f"prune_method={self.prune_method!r} prunes layer by layer; scope='global' "
                                 "takes prune_method='magnitude'")
            if not self.has_calib:
                raise ValueError(f"prune_method={self.prune_method!r} needs real calibration data (calib or "
                                 "calib_text): it weighs each weight by the layer's real inputs, and random "
                                 "inputs would fit the masks to noise")

    def resolved_prune_method(self) -> tuple[str, str | None]:
        """(the method that chooses the kept weights, a warning or None): "auto" is obs with
        real calibration data, magnitude without (and says why)."""
        if self.prune not in MASK_KINDS:
            return "magnitude", None
        if self.recover_gradual:      # the masks grow during training, by magnitude (recover.py)
            return "magnitude", None
        if self.prune_method != "auto":
            return self.prune_method, None
        if self.scope == "global":
            return "magnitude", None
        if not self.has_calib:
            return "magnitude", ("pruning by magnitude: no calibration data was given, and the calibration-"
                                 "aware methods (obs, wanda) need the layers' real inputs; one-shot magnitude "
                                 "pruning loses much more accuracy (pass calib or calib_text to use obs)")
        return "obs", None

    def resolved_drift_correction(self) -> str:
        """What drift correction aims at the original model's output (sequential.py): "obs"
        (obs pruning), "all" (obs and GPTQ) or "off". Unset: "obs". Measured (RESULTS.md): on
        the digits MLP and CNN at 90% + int8 one-shot obs it is worth 5.5 and 3.5 points of
        test accuracy, on all-MiniLM-L6-v2's 2:4 and 50% neither gain nor loss; for GPTQ alone
        it lowered MiniLM int4's min cosine (0.9742 -> 0.9646), hence not by default there."""
        return self.drift_correction or "obs"

    def resolved_smooth(self) -> float | str | None:
        """The SmoothQuant alpha the conversion uses ("auto", a float, or None: no smoothing).
        Unset, it is "auto" for int8 with real calibration data: per-row int8 activations of
        transformers lose most of their accuracy to a few outlier channels (MiniLM's min
        cosine 0.9865 -> 0.9975, RESULTS.md), and the search keeps a layer unsmoothed where
        smoothing does not lower its simulated error. int4 layers are weight-only (float
        activations): nothing to smooth."""
        if self.smooth is None:
            return "auto" if self.quant == "int8" and self.has_calib else None
        return None if self.smooth == "none" else self.smooth

    @property
    def has_calib(self) -> bool:
        """Real calibration data was given (arrays or text), not the random-input fallback."""
        return self.calib is not None or self.calib_text is not None

    @property
    def compresses(self) -> bool:
        return self.prune != "none" or self.quant != "none"


RECOVER_MINUTES = 10.0   # the recovery budget when neither minutes nor steps are given

# a conversion whose outputs fall below this cosine to the fp32 model's ends with a warning
COLLAPSE_COSINE = 0.9


def _warn(report: Report, say: Callable[[str], None], text: str) -> None:
    say(f"warning: {text}")
    report.notes.append(text)


def _check_sparsity(what: str, s) -> None:
    if not isinstance(s, (int, float)) or not (0.0 <= float(s) < 1.0):
        raise ValueError(f"{what} must be in [0, 1), got {s!r}")


# ------------------------------------------------------------------------------ layers --

@dataclass
class Layer:
    node: Node
    weight_name: str

    @property
    def name(self) -> str:
        return self.node.name


def find_layers(graph: Graph) -> list[Layer]:
    """Linear / Conv nodes whose weight is a dense fp32 initializer, in graph order."""
    out = []
    for n in graph.nodes:
        if n.op in LAYER_OPS and len(n.inputs) > 1 and n.inputs[1] in graph.initializers:
            t = graph.initializers[n.inputs[1]]
            if t.layout == "dense" and t.dtype == "float32":
                out.append(Layer(n, n.inputs[1]))
    return out


# Why depthwise Convs stay fp32 by default. Their weights are tiny (kh * kw values a channel, a
# fraction of a percent of a MobileNet), and in int8 each kh x kw window of one channel is one
# GEMM row of kh * kw products, quantized on its own (dynamic): measured 30-70x slower than the
# native float32 depthwise kernel (RESULTS.md, "int8 Conv without numpy's im2col"). Pruning
# them saves nothing a kernel can use either.
DEPTHWISE_REASON = ("kept fp32 (depthwise Conv: one input channel per group, a few weights a channel; "
                    "int8 would be slower than float32; --quant-depthwise to compress it anyway)")


# Why Convs with a small patch stay fp32 by default. The int8 Conv quantizes each patch row on
# its own (dynamic activations: one scale per row) and moves X to channels-last and Y back; for
# a patch of a few dozen values that costs more than the products it saves. Measured (Intel
# Xeon, 2 threads, qrt native, one Conv, int8 ms / fp32 ms; RESULTS.md "Convs with a small
# patch"): K = 16 (1x1 16 -> 64 at 112^2) 0.66 / 0.16, K = 27 (3x3/2 3 -> 16 at 224^2) 0.70 /
# 0.28, K = 32 0.27 / 0.10, K = 64 0.18 / 0.12; but K = 144 (3x3 16 -> 16) 0.81 / 0.99 and
# K = 147 (7x7/2 3 -> 64) 1.09 / 1.64. Their weights are small (at most 64 values an output
# channel), so keeping them costs little in size, and nothing in accuracy.
SMALL_CONV_PATCH = 64
SMALL_CONV_REASON = (f"kept fp32 (Conv with a patch of at most {SMALL_CONV_PATCH} values: int8 would be slower "
                     "than float32; --quant-small-convs to compress it anyway)")


def is_small_conv(graph: Graph, layer: Layer) -> bool:
    """A Conv, not depthwise (that rule is is_depthwise's, with its own switch), whose weight
    W (M, C/group, *kernel) has at most SMALL_CONV_PATCH values a row."""
    shape = graph.initializers[layer.weight_name].shape
    return (layer.node.op == "Conv" and len(shape) >= 3 and int(np.prod(shape[1:])) <= SMALL_CONV_PATCH
            and not is_depthwise(graph, layer))


def is_depthwise(graph: Graph, layer: Layer) -> bool:
    """A Conv with more than one group and one input channel per group (W (M, 1, *kernel))."""
    shape = graph.initializers[layer.weight_name].shape
    return (layer.node.op == "Conv" and int(layer.node.attrs.get("group", 1)) > 1 and len(shape) >= 3
            and shape[1] == 1)


def _matches(layer: Layer, pattern: str) -> bool:
    return fnmatch.fnmatchcase(layer.name, pattern) or fnmatch.fnmatchcase(layer.weight_name, pattern)


def _check_patterns(layers: list[Layer], opts: ConvertOptions, embeddings: Sequence["Embedding"] = ()) -> None:
    # named as both the Python keyword and the CLI flag: the same check serves both
    groups = [("keep_fp32 (--keep-fp32)", opts.keep_fp32), ("skip (--skip)", opts.skip),
              ("layer_sparsity (--layer-sparsity)", list(opts.layer_sparsity))]
    for flag, patterns in groups:
        for p in patterns:
            # --keep-fp32 also keeps an embedding table fp32; tables are never pruned, so the
            # pruning flags name layers only
            keep = flag.startswith("keep_fp32")
            if keep and any(_embedding_matches(e, p) for e in embeddings):
                continue
            if not any(_matches(lr, p) for lr in layers):
                names = ", ".join(lr.name for lr in layers[:8]) + (" ..." if len(layers) > 8 else "")
                tables = ""
                if keep and embeddings:
                    tables = "; the embedding tables are: " + ", ".join(e.table for e in embeddings[:8]) + \
                        (" ..." if len(embeddings) > 8 else "")
                raise ValueError(f"{flag} pattern {p!r} matches no layer"
                                 f"{' or embedding table' if keep else ''} (patterns are fnmatch globs on "
                                 f"node or weight names); the layers are: {names or 'none'}{tables}")


# -------------------------------------------------------------------- embedding tables --
# A Gather reading rows of a constant fp32 (V, D) table (word / position / token-type
# embeddings) is quantized with the weights: int8 with one scale per row (per vocabulary
# entry: rows of one table can differ widely in norm, and one scale for all would leave a
# small row few levels), or int4_grouped with groups along D. The lookup kernels
# (kernels/reference/packed_gather.py, numba_cpu/gather.py, native_cpu/gather.py) dequantize
# only the gathered rows. Tables are never pruned (a pruned row would be a token that reads
# zeros), and the accuracy budget (max_error) reverts layers only; --keep-fp32 excludes one.

@dataclass
class Embedding:
    table: str                  # the initializer name
    nodes: list[str]            # the Gather nodes reading it, in graph order (packed once)
    shape: tuple[int, int]      # (V, D): V rows (vocabulary entries) of D values


def find_embeddings(graph: Graph) -> list[Embedding]:
    """Constant tables looked up by Gather, in graph order: a dense float32 2-D initializer
    that is input 0 of Gather nodes with axis 0 (or -2) and read by nothing else. A table also
    read by another node (a tied output projection, a Shape) is left alone: that node's kernel
    expects the dense array. So is a Linear/Conv weight, which is packed as that layer's."""
    readers = graph.consumers()
    out: dict[str, Embedding] = {}
    for n in graph.nodes:
        if n.op != "Gather" or len(n.inputs) < 2 or n.inputs[0] not in graph.initializers or n.inputs[0] in out:
            continue
        name = n.inputs[0]
        t = graph.initializers[name]
        if t.layout != "dense" or t.dtype != "float32" or len(t.shape) != 2 or min(t.shape) < 1:
            continue

        def is_lookup(r: Node) -> bool:
            return (r.op == "Gather" and r.inputs[0] == name and name not in r.inputs[1:]
                    and int(r.attrs.get("axis", 0)) in (0, -2))
        users = readers.get(name, [])
        if users and all(is_lookup(r) for r in users) and name not in {v.name for v in graph.outputs}:
            out[name] = Embedding(name, list(dict.fromkeys(r.name for r in users)), (int(t.shape[0]), int(t.shape[1])))
    return list(out.values())


def _embedding_matches(e: Embedding, pattern: str) -> bool:
    return fnmatch.fnmatchcase(e.table, pattern) or any(fnmatch.fnmatchcase(n, pattern) for n in e.nodes)


def _pack_embeddings(graph: Graph, opts: ConvertOptions,
                     say: Callable[[str], None]) -> tuple[Graph, list[EmbeddingReport]]:
    """A copy of ``graph`` with every embedding table (find_embeddings) quantized as ``opts``
    asks (opts.embed_quant: int8 per row, or int4_grouped with opts.group_size along D; "auto"
    is int8 whenever quant is not "none"; symmetric or not as opts.symmetric), except those
    --keep-fp32 matches; and one report row per table. Tables are never pruned."""
    mode = opts.embed_quant if opts.embed_quant != "auto" else ("int8" if opts.quant != "none" else "none")
    tables = find_embeddings(graph) if mode != "none" else []
    if not tables:
        return graph, []
    out = _copy(graph)
    rows = []
    for k, e in enumerate(tables):
        w = np.asarray(graph.initializers[e.table].fields["data"])
        hit = next((p for p in opts.keep_fp32 if _embedding_matches(e, p)), None)
        bad = 0 if hit else int(w.size - np.count_nonzero(np.isfinite(w)))
        if bad:     # a NaN row would get a NaN scale, which the layout refuses
            raise ValueError(f"embedding table {e.table!r} (read by {', '.join(e.nodes)}) has {bad} NaN/Inf "
                             f"value(s); fix the model or keep it fp32 (--keep-fp32 {e.table})")
        if hit:
            t, note = graph.initializers[e.table], f"kept fp32 (--keep-fp32 {hit})"
        elif mode == "int8":
            # per row always (not opts.per_channel, a layers' choice): one scale for a whole
            # vocabulary would flatten every rare token's small row to a few levels
            t, note = L.pack("int8", e.table, w, per_channel=True, symmetric=opts.symmetric), ""
        else:
            t, note = L.pack("int4_grouped", e.table, w, group_size=opts.group_size, symmetric=opts.symmetric), ""
        out.initializers[e.table] = t
        deq = t.to_dense()
        rows.append(EmbeddingReport(
            name=e.table, nodes=list(e.nodes), shape=list(e.shape), layout=t.layout, bytes=t.nbytes,
            fp32_bytes=int(w.nbytes), max_abs_error=float(np.max(np.abs(deq - w))) if w.size else 0.0,
            sqnr_db=sqnr_db(w, deq), note=note))
        say(f"[embedding {k + 1}/{len(tables)}] {e.table} {e.shape[0]}x{e.shape[1]}: {t.layout}"
            f", {t.nbytes / 1024:.1f} KiB ({t.nbytes / max(w.nbytes, 1):.3f}x fp32)"
            f"{' - ' + note if note else ''}")
    out.validate()
    return out, rows


# ---------------------------------------------------------------------------- convert ---

@dataclass
class _Plan:
    """What to do with one layer."""
    keep_fp32: str = ""            # non-empty: the reason it stays dense fp32
    sparsity: float = 0.0
    mask: np.ndarray | None = None
    act_scale: float | None = None
    act_zero_point: int = 0
    note: str = ""
    # the weight before the calibrated pass changed it (obs update, GPTQ rounding): what
    # "kept in fp32" and "unpruned" restore (None: not changed); smoothed if ``smooth`` is set
    fp32_weight: np.ndarray | None = None
    use_original: bool = False     # the budget unpruned it: pack fp32_weight, rounded to nearest
    qscale: np.ndarray | None = None   # GPTQ's scales: the packer uses these, not max|w| / levels
    qzero: np.ndarray | None = None    # GPTQ's zero points (asymmetric int4), with qscale
    smooth: np.ndarray | None = None   # SmoothQuant's s (K,): the layer reads X / s, its weight is W * s
    bias_shift: np.ndarray | None = None   # bias correction (N,): added to the bias when packed as planned


def convert(model: Any, out_path: str | os.PathLike | None = None, *, name: str | None = None,
            progress: Callable[[str], None] | None = None, report_path: str | os.PathLike | None = None,
            options: ConvertOptions | None = None, metadata: dict | None = None, **kwargs) -> Graph:
    """Convert an ONNX model (path, bytes or ModelProto) with pruning/quantization options.

    Options are the ConvertOptions fields (as keyword arguments or one ``options`` object).
    ``metadata`` entries are added to the graph's metadata (e.g. a text model's tokenizer).
    Returns the converted Graph, whose ``metadata["report"]`` holds the accuracy report;
    writes ``out_path`` (and the JSON report to ``report_path``) only if everything succeeded.
    ``progress`` receives one line per step (the CLI passes a printer).
    """
    # keyword options override the fields of an options object
    opts = dataclasses.replace(options, **kwargs) if options is not None else ConvertOptions(**kwargs)
    opts.validate()
    say = progress or (lambda line: None)
    t_start = time.perf_counter()
    graph = import_onnx(model, name=name)
    if opts.compresses or opts.max_error is not None:
        graph = compress(graph, opts, say)
    if metadata:
        graph.metadata = {**graph.metadata, **metadata}
    if out_path is not None:
        save(graph, out_path)
    if report_path is not None and "report" in graph.metadata:
        import json
        data = json.dumps(graph.metadata["report"], indent=1).encode()
        atomic_write(report_path, lambda f: f.write(data))
    if "report" in graph.metadata:
        say(f"converted in {time.perf_counter() - t_start:.1f} s")
    return graph


def compress(graph: Graph, opts: ConvertOptions, say: Callable[[str], None] = lambda s: None) -> Graph:
    """Prune, quantize and pack the weight layers of an imported fp32 graph (a new Graph)."""
    graph = _copy(graph)
    layers = find_layers(graph)
    if not layers:
        raise ValueError("the model has no Linear/Conv layer with a constant weight to compress")
    _check_patterns(layers, opts, find_embeddings(graph))
    for lr in layers:
        w = graph.initializers[lr.weight_name].fields["data"]
        bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
        if bad:
            raise ValueError(f"layer {lr.name!r}: weight {lr.weight_name!r} has {bad} NaN/Inf value(s)")

    if opts.prune == "block":     # a block must tile every layer it prunes: say so before any work
        r, c = opts.block
        for lr in layers:
            shape = graph.initializers[lr.weight_name].shape
            n, k = shape[0], int(np.prod(shape[1:]))
            pruned = _layer_sparsity(lr, opts) > 0 and not any(_matches(lr, p) for p in opts.keep_fp32)
            if pruned and (n % r or k % c):
                raise ValueError(f"block {r}x{c} does not tile layer {lr.name!r}: its weight is {n}x{k} "
                                 f"(2-D view of {tuple(shape)}); need R | {n} and C | {k} "
                                 f"(or --skip / --layer-sparsity {lr.name}=0 for this layer)")

    # Calibration / evaluation inputs, checked against the model before any work.
    if opts.calib_text is not None:
        feeds = load_text_feeds(opts.calib_text, opts.tokenizer, graph, seq_len=opts.seq_len)
    elif opts.calib is None:
        feeds = cal.random_feeds(graph, seed=opts.seed)
    elif isinstance(opts.calib, (str, os.PathLike)) and os.path.isdir(opts.calib):
        feeds = load_npy_dir(opts.calib, graph)
    elif isinstance(opts.calib, (str, os.PathLike)):
        feeds = cal.load_calib_npz(opts.calib, graph)
    else:
        feeds = cal.feeds_from_iterable(opts.calib, graph)
    feeds, held = _split_holdout(feeds, opts.holdout)
    recover_feeds = _load_recover_data(opts.recover_data, graph, opts) if opts.recover else None
    source = feeds.source
    say(f"{len(layers)} weight layers; evaluating on {source}")
    fp32_graph = graph
    ref_outputs = _run_feeds(fp32_graph, feeds, opts)

    report = Report(options=_options_dict(opts), calibration=source,
                    held_out_source=held.source if held else "")
    plans: dict[str, _Plan] = {lr.name: _Plan() for lr in layers}
    for lr in layers:
        hit = next((p for p in opts.keep_fp32 if _matches(lr, p)), None)
        if hit:
            plans[lr.name].keep_fp32 = f"kept fp32 (--keep-fp32 {hit})"
        elif not opts.quant_depthwise and is_depthwise(graph, lr):
            plans[lr.name].keep_fp32 = DEPTHWISE_REASON
        elif not opts.quant_small_convs and opts.quant == "int8" and is_small_conv(graph, lr):
            plans[lr.name].keep_fp32 = SMALL_CONV_REASON

    # --- pruning --------------------------------------------------------------------------
    if opts.prune == "channel":
        selectable = {lr.name for lr in layers if not plans[lr.name].keep_fp32
                      and not any(_matches(lr, p) for p in opts.skip)}
        result = pr.channel_prune(graph, opts.sparsity, norm=opts.channel_norm,
                                  select=lambda node: node.name in selectable)
        for line in _channel_notes(result):
            say(line)
        notes = _channel_note_map(result)
        for lr in layers:
            plans[lr.name].note = notes.get(lr.name, plans[lr.name].note)
        layers = find_layers(graph)
    elif opts.prune != "none":
        method, warning = opts.resolved_prune_method()
        if warning:
            _warn(report, say, warning)
        report.options["prune_method"] = method
        graph = _plan_masks(graph, layers, plans, opts, pr, method, feeds, say)

    # --- layer by layer on the real inputs: SmoothQuant, obs / wanda, GPTQ ------------------
    # (with recovery: obs / wanda first, then training, then SmoothQuant and GPTQ on the
    # trained weights)
    method = report.options.get("prune_method", "magnitude")
    calibrated_prune = opts.prune in MASK_KINDS and method in ("wanda", "obs") and not opts.recover_gradual
    report.options["smooth"] = opts.resolved_smooth()
    report.options["drift_correction"] = opts.resolved_drift_correction()
    quant_steps = opts.quant_method == "gptq" or opts.resolved_smooth() is not None or opts.bias_correction
    if opts.recover:
        if calibrated_prune:
            graph = _calibrated_pass(graph, layers, plans, opts, method, feeds, say, quant=False)
        graph = _recover(graph, fp32_graph, layers, plans, opts, feeds, recover_feeds or feeds, report, say)
        if quant_steps:
            graph = _calibrated_pass(graph, layers, plans, opts, "magnitude", feeds, say)
    elif calibrated_prune or quant_steps:
        graph = _calibrated_pass(graph, layers, plans, opts, method, feeds, say)

    # --- static activation ranges (on the pruned fp32 model) ------------------------------
    quantized = [lr for lr in layers if not plans[lr.name].keep_fp32]
    if opts.quant == "int8" and opts.act == "static" and quantized:
        if not opts.has_calib:
            _warn(report, say, "static activation ranges come from random inputs (no calibration data was "
                               "given): the model's real activations may fall outside them; pass calib")
        say(f"calibrating {len(quantized)} activation ranges ({opts.calib_method})")
        masked = _build(graph, layers, plans, opts, pack=False)
        ranges = cal.calibrate(masked, feeds, [lr.name for lr in quantized], method=opts.calib_method,
                               percentile=opts.percentile)
        for lr in quantized:
            plans[lr.name].act_scale, plans[lr.name].act_zero_point = ranges[lr.name]

    # --- embedding tables: quantized into the graph every _build below starts from, so the
    # evaluation, the budget's trials and the written file all have them -------------------
    graph, report.embeddings = _pack_embeddings(graph, opts, say)

    # --- pack, evaluate, and (with a budget) fall back the most sensitive layers -----------
    converted = _build(graph, layers, plans, opts, pack=True, say=say)
    metrics = output_metrics(_run(converted, feeds), ref_outputs)
    if opts.max_error is not None and metrics["cosine"] < opts.max_error:
        converted, metrics = _meet_budget(graph, layers, plans, opts, feeds, ref_outputs, metrics, report, say)
    elif opts.max_error is not None:
        report.budget = {"min_cosine": opts.max_error, "unpruned": [], "reverted": [],
                         "summary": f"cosine {metrics['cosine']:.6f} >= {opts.max_error}: nothing reverted"}
    report.end_to_end = metrics
    if held:
        report.held_out = output_metrics(_run(converted, held), _run(fp32_graph, held))
    report.layers = _layer_reports(fp32_graph, graph, converted, layers, plans, feeds)
    top1 = metrics.get("top1_agreement")
    if metrics["cosine"] < COLLAPSE_COSINE or top1 == 0:
        worst = sorted((lr for lr in report.layers if lr.output_rel_error is not None),
                       key=lambda lr: -lr.output_rel_error)[:3]
        _warn(report, say, f"the converted model's outputs collapsed: cosine {metrics['cosine']:.3f} to the fp32 "
                           f"model" + ("" if top1 is None else f", top-1 agreement {top1:.0%}") + "; the layers "
                           "with the largest output error: " + ", ".join(f"{lr.name} ({lr.output_rel_error:.2f})"
                                                                          for lr in worst)
                           + "; try a lower sparsity, calibration data (prune_method obs), max_error, or "
                             "keep_fp32 for those layers")
    if opts.quant == "int4" and opts.prune not in ("none", "channel"):
        report.notes.append("int4 has no sparse layout: pruned weights are stored as zeros in int4_grouped")
    converted.metadata = {**converted.metadata, "report": report.to_dict()}
    say(report.table())
    return converted


def _split_holdout(feeds, fraction: float):
    """(calibration feeds, held-back feeds or None): the last round(fraction * n) feeds of real
    data (at least 1, and at least 1 left for calibration), by whole feeds, so no sample is in
    both. Random inputs are not split: they stand for no data the model will see."""
    if feeds.is_random or fraction <= 0 or len(feeds) < 2:
        return feeds, None
    k = min(len(feeds) - 1, max(1, round(fraction * len(feeds))))
    n = len(feeds) - k
    rows = lambda fs: sum(int(next(iter(f.values())).shape[0]) if f else 0 for f in fs)   # noqa: E731
    calib = CalibFeeds(feeds[:n], f"{feeds.source}; calibration: the first {n} feed(s), {rows(feeds[:n])} sample(s)")
    held = CalibFeeds(feeds[n:], f"{k} held-back feed(s), {rows(feeds[n:])} sample(s), not used to calibrate")
    return calib, held


# ---------------------------------------------------------------------------- pruning ---

def _layer_sparsity(lr: Layer, opts: ConvertOptions) -> float:
    if any(_matches(lr, p) for p in opts.skip):
        return 0.0
    for pattern, s in opts.layer_sparsity.items():
        if _matches(lr, pattern):
            return float(s)
    return float(opts.sparsity)


def _plan_masks(graph: Graph, layers: list[Layer], plans: dict[str, _Plan], opts: ConvertOptions, pr,
                method: str = "magnitude", feeds=None, say: Callable[[str], None] = lambda s: None) -> Graph:
    """Masks for every layer to prune (plans[...].mask), by ``method``; returns the graph to
    pack from: ``graph`` itself, or for obs a copy holding the updated weights."""
    todo = [lr for lr in layers if not plans[lr.name].keep_fp32]
    if method in ("wanda", "obs"):      # the calibrated pass prunes these (_calibrated_pass)
        todo = [lr for lr in todo if not calibratable(lr.node)]    # these fall back to magnitude below
    weights = {lr.name: np.asarray(graph.initializers[lr.weight_name].fields["data"]) for lr in todo}
    if opts.prune == "magnitude" and opts.scope == "global":
        masks = pr.global_magnitude_masks({k: w for k, w in weights.items() if _layer_sparsity(
            next(lr for lr in todo if lr.name == k), opts) > 0}, opts.sparsity)
        for lr in todo:
            if lr.name in masks:
                plans[lr.name].mask = masks[lr.name]
    else:
        for k, lr in enumerate(todo):
            s = _layer_sparsity(lr, opts)
            w = weights[lr.name]
            if opts.prune == "nm":
                if any(_matches(lr, p) for p in opts.skip):
                    continue
                k_in = int(np.prod(w.shape[1:]))
                if k_in % opts.nm[1]:
                    # N:M groups run along the input dim; a layer whose K' they do not tile
                    # (a first conv with 1 channel x 3x3 = 9 inputs) stays unpruned, and says so
                    plans[lr.name].note = (f"not N:M-pruned: its {k_in} inputs are not a multiple "
                                           f"of M={opts.nm[1]}")
                    continue
                plans[lr.name].mask = _magnitude_mask(w, "nm", s, opts)
            elif s == 0:
                continue
            elif opts.prune == "random":
                plans[lr.name].mask = pr.random_mask(w, s, seed=opts.seed + k)
            else:
                try:
                    plans[lr.name].mask = _magnitude_mask(w, MASK_KINDS[opts.prune], s, opts)
                except ValueError as e:
                    raise ValueError(f"layer {lr.name!r}: {e}") from None
    if method in ("wanda", "obs"):
        for lr in todo:
            if plans[lr.name].mask is not None and not plans[lr.name].note:
                plans[lr.name].note = f"pruned by magnitude ({method} takes Linear and group-1 Conv layers)"
    _finish_notes(todo, plans, opts)
    return graph


def _magnitude_mask(w: np.ndarray, kind: str, s: float, opts: ConvertOptions) -> np.ndarray:
    """The mask of ``kind`` (MASK_KINDS) that prune_method="magnitude" keeps for one layer."""
    if kind == "nm":
        return pr.nm_mask(w, *opts.nm)
    if kind == "block":
        return pr.block_mask(w, s, block_shape=tuple(opts.block))
    return pr.magnitude_mask(w, s)


def _finish_notes(todo: list[Layer], plans: dict[str, _Plan], opts: ConvertOptions) -> None:
    for lr in todo:
        if any(_matches(lr, p) for p in opts.skip):
            plans[lr.name].note = "not pruned (--skip)"
        elif plans[lr.name].mask is None and not plans[lr.name].note and opts.prune != "nm":
            plans[lr.name].note = "not pruned (sparsity 0 for this layer)"
        mask = plans[lr.name].mask
        plans[lr.name].sparsity = 0.0 if mask is None else 1.0 - float(np.count_nonzero(mask)) / mask.size


def _calibrated_pass(graph: Graph, layers: list[Layer], plans: dict[str, _Plan], opts: ConvertOptions,
                     method: str, feeds, say: Callable[[str], None], quant: bool = True) -> Graph:
    """SmoothQuant, obs / wanda pruning and GPTQ, layer by layer in graph order on the real
    inputs (runtime/convert/sequential.py), for Linear and group-1 Conv layers not kept in
    fp32. Returns a copy of ``graph`` with the changed weights (and any smoothing nodes);
    ``graph`` is unchanged. Masks already chosen by magnitude are kept."""
    chosen = [lr for lr in layers if not plans[lr.name].keep_fp32 and seq.calibratable(lr.node)]
    calibrated_prune = method in ("wanda", "obs")
    kind = MASK_KINDS.get(opts.prune, "unstructured")
    steps = seq.Steps(prune_method=method if calibrated_prune else None, mask_kind=kind, nm=tuple(opts.nm),
                      block=tuple(opts.block), gptq_bits={"int8": opts.weight_bits, "int4": 4}.get(opts.quant)
                      if opts.quant_method == "gptq" and quant else None, per_channel=opts.per_channel,
                      group_size=opts.group_size, act_order=opts.act_order, symmetric=opts.symmetric,
                      smooth_alpha=opts.resolved_smooth() if quant else None,
                      bias_correction=opts.bias_correction and quant,
                      quant_bits={"int8": opts.weight_bits, "int4": 4}.get(opts.quant), act=opts.act,
                      drift_obs=opts.resolved_drift_correction() in ("obs", "all"),
                      drift_gptq=opts.resolved_drift_correction() == "all")

    def prune_sparsity(lr: Layer) -> float | None:
        s = _layer_sparsity(lr, opts)
        if any(_matches(lr, p) for p in opts.skip) or (kind != "nm" and s == 0):
            return None
        return s

    original, graph = graph, _copy(graph)
    seq.run(graph, chosen, plans, steps, feeds, prune_sparsity=prune_sparsity,
            baseline_mask=lambda w, s: _magnitude_mask(w, kind, s, opts), say=say, original=original)
    if calibrated_prune:
        _finish_notes(chosen, plans, opts)
    return graph


def _load_recover_data(data, graph: Graph, opts: ConvertOptions):
    """The training feeds of recovery: None (use the calibration feeds), an .npz, a folder of
    .npy files, a text file (with opts.tokenizer), or an iterable of feed dicts."""
    if data is None:
        return None
    if not isinstance(data, (str, os.PathLike)):
        return cal.feeds_from_iterable(data, graph)
    if os.path.isdir(data):
        return load_npy_dir(data, graph)
    if os.fspath(data).endswith(".npz"):
        return cal.load_calib_npz(data, graph)
    if opts.tokenizer is None:
        raise ValueError(f"recover data {os.fspath(data)!r}: expected an .npz file, a folder of .npy files, or a "
                         "text file with a tokenizer (tokenizer / --tokenizer DIR)")
    return load_text_feeds(data, opts.tokenizer, graph, seq_len=opts.seq_len)


def _recover(graph: Graph, teacher: Graph, layers: list[Layer], plans: dict[str, _Plan], opts: ConvertOptions,
             feeds, data, report: Report, say: Callable[[str], None]) -> Graph:
    """Distillation recovery (runtime/convert/recover.py): the pruned fp32 ``graph`` trained
    toward ``teacher`` (the original) on opts.recover_data (default: the calibration feeds),
    masks fixed (or, with recover_gradual, grown on a cubic schedule from dense to each layer's
    sparsity). Returns a copy with the trained weights; plans get the final masks."""
    masks = {lr.weight_name: plans[lr.name].mask for lr in layers if plans[lr.name].mask is not None}
    gradual, target = {}, {}
    if opts.recover_gradual:
        kind = MASK_KINDS[opts.prune]
        for lr in layers:
            plan = plans[lr.name]
            if plan.mask is not None:
                gradual[lr.weight_name] = lambda w, s, kind=kind: _magnitude_mask(
                    w.reshape(w.shape[0], -1), kind, s, opts).reshape(w.shape)
                target[lr.weight_name] = plan.sparsity
        masks = {}
    minutes = opts.recover_minutes if opts.recover_minutes or opts.recover_steps else RECOVER_MINUTES
    budget = " and ".join(x for x in (f"{minutes:g} min" if minutes else "",
                                      f"{opts.recover_steps} steps" if opts.recover_steps else "") if x)
    say(f"recovery: distilling the pruned model toward the original on {data.source if hasattr(data, 'source') else 'the given data'}"
        f", {len(masks) or len(gradual)} pruned weight(s), budget {budget}"
        f"{', gradual pruning' if gradual else ''}")
    before = output_metrics(_run(graph, feeds), _run(teacher, feeds))["cosine"]
    result = recovery.recover(graph, teacher, masks, data, minutes=minutes, steps=opts.recover_steps,
                              lr=opts.recover_lr, gradual=gradual or None, target=target or None, seed=opts.seed,
                              say=say, precision=opts.recover_precision)
    out = _copy(graph)
    for name, w in result.weights.items():
        out.initializers[name] = dense_tensor(name, np.asarray(w, np.float32))
    originals = teacher.initializers
    for lr in layers:
        plan = plans[lr.name]
        if lr.weight_name in result.masks:
            plan.mask = np.asarray(result.masks[lr.weight_name], bool)
            plan.sparsity = 1.0 - float(np.count_nonzero(plan.mask)) / plan.mask.size
        orig = originals.get(lr.weight_name)
        if plan.fp32_weight is None and orig is not None and tuple(orig.shape) == tuple(out.initializers[lr.weight_name].shape):
            plan.fp32_weight = np.asarray(orig.fields["data"])    # what a budget fallback gives back
        if plan.mask is not None:
            plan.note = "; ".join(x for x in (plan.note, "recovered by distillation") if x)
    after = output_metrics(_run(out, feeds), _run(teacher, feeds))["cosine"]
    report.recovery = {"steps": result.steps, "seconds": round(result.seconds, 1), "loss_start": result.loss_start,
                       "loss_end": result.loss_end, "interrupted": result.interrupted,
                       "cosine_before": before, "cosine_after": after, "gradual": bool(gradual),
                       "lr": opts.recover_lr, "hidden_weight": result.hidden_weight, "precision": result.precision,
                       "data": getattr(data, "source", "the given data")}
    say(f"recovery: {result.steps} steps in {result.seconds:.0f} s, loss {result.loss_start:.4f} -> "
        f"{result.loss_end:.4f}, fp32 cosine to the original {before:.4f} -> {after:.4f}")
    return out


def _channel_note_map(result) -> dict[str, str]:
    """Layer name -> what channel pruning did to it, or why it left it whole."""
    notes = {}
    for lr in result.layers:
        if lr.pruned:
            notes[lr.name] = f"channels {lr.channels_before} -> {lr.channels_after}"
        elif lr.reason:
            notes[lr.name] = f"not channel-pruned: {lr.reason}"
    return notes


def _channel_notes(result) -> list[str]:
    return [f"channel pruning: {k}: {v}" for k, v in _channel_note_map(result).items()]


# ------------------------------------------------------------------------------ build ---

def _layout_for(opts: ConvertOptions, plan: _Plan) -> str:
    if plan.keep_fp32:
        return "dense"
    sparse = plan.mask is not None and opts.quant != "int4"
    if sparse:
        return {"magnitude": "csr", "random": "csr", "block": "bsr", "nm": "nm"}[opts.prune]
    return {"none": "dense", "int8": "int8", "int4": "int4_grouped"}[opts.quant]


# The options each layout's packer (kernels/core/layouts.py) takes from ConvertOptions; the
# packing itself, and its checks, are the layouts table's.
_PACK_OPTS: dict[str, Callable[[ConvertOptions, str], dict]] = {
    "int8": lambda o, q: {"per_channel": o.per_channel, "symmetric": o.symmetric,
                          "qmax": L.INT8_QMAX_OF_BITS[o.weight_bits]},
    "int4_grouped": lambda o, q: {"group_size": o.group_size, "symmetric": o.symmetric},
    "csr": lambda o, q: {"quant": q, "per_channel": o.per_channel, "qmax": _sparse_qmax(o, q)},
    "bsr": lambda o, q: {"quant": q, "per_channel": o.per_channel, "block_shape": tuple(o.block),
                         "qmax": _sparse_qmax(o, q)},
    "nm": lambda o, q: {"quant": q, "per_channel": o.per_channel, "n": o.nm[0], "m": o.nm[1],
                        "qmax": _sparse_qmax(o, q)},
}


def _sparse_qmax(o: ConvertOptions, quant: str) -> int:
    """The int8 grid of a sparse layout's values: weight_bits 7 narrows it as for dense int8
    (float values: the packer's default)."""
    return L.INT8_QMAX_OF_BITS[o.weight_bits] if quant == "int8" else 127


def _pack(name: str, w: np.ndarray, layout: str, plan: _Plan, opts: ConvertOptions) -> PackedTensor:
    """w (N, K') float32 -> the layer's PackedTensor in ``layout``, pruned by plan.mask and on
    GPTQ's grid plan.qscale (and plan.qzero) where set (None: the packer's own grid, round to
    nearest)."""
    if layout == "dense":
        return dense_tensor(name, w if plan.mask is None or plan.keep_fp32 else (w * plan.mask).astype(np.float32))
    quant = "int8" if opts.quant == "int8" else "none"
    grid = {"scale": plan.qscale} if plan.qzero is None else {"scale": plan.qscale, "zero_point": plan.qzero}
    return L.pack(layout, name, w, plan.mask, **grid, **_PACK_OPTS[layout](opts, quant))


def _act_attrs(layout: str, plan: _Plan, opts: ConvertOptions) -> dict:
    if plan.keep_fp32 or opts.quant != "int8":
        return {"act_quant": "none"}
    if opts.act == "static":
        return {"act_quant": "static", "act_scale": float(plan.act_scale), "act_zero_point": int(plan.act_zero_point)}
    return {"act_quant": "dynamic"}


def _build(graph: Graph, layers: list[Layer], plans: dict[str, _Plan], opts: ConvertOptions, *,
           pack: bool, say: Callable[[str], None] = lambda s: None) -> Graph:
    """A new graph with every layer's weight replaced: packed (pack=True) or, for
    calibration, just masked in fp32 (pack=False)."""
    out = _copy(graph)
    packed: dict[str, PackedTensor] = {}
    for k, lr in enumerate(layers):
        plan = plans[lr.name]
        node = next(n for n in out.nodes if n.name == lr.name and n.op == lr.node.op)
        w = np.asarray(graph.initializers[lr.weight_name].fields["data"])
        if (plan.keep_fp32 or plan.use_original) and plan.fp32_weight is not None:
            w = plan.fp32_weight                # a layer the pass changed, given back: its own weight
        layout = _layout_for(opts, plan) if pack else "dense"
        if lr.weight_name not in packed:
            p = plan if pack else _Plan(mask=None if plan.keep_fp32 else plan.mask)
            if plan.keep_fp32 or plan.use_original:
                p = dataclasses.replace(p, qscale=None, qzero=None)   # GPTQ's grid was for the changed weight
            packed[lr.weight_name] = _pack(lr.weight_name, w, layout, p, opts)
            if pack:
                t = packed[lr.weight_name]
                say(f"[{k + 1}/{len(layers)}] {lr.name}: {layout}"
                    f"{'' if plan.mask is None else f', sparsity {plan.sparsity * 100:.1f}%'}"
                    f", {t.nbytes / 1024:.1f} KiB ({t.nbytes / max(w.nbytes, 1):.3f}x fp32)"
                    f"{' - ' + plan.keep_fp32 if plan.keep_fp32 else ''}")
        out.initializers[lr.weight_name] = packed[lr.weight_name]
        if pack and plan.bias_shift is not None and not (plan.keep_fp32 or plan.use_original):
            _shift_bias(out, node, plan.bias_shift)
        node.attrs = {k2: v for k2, v in node.attrs.items() if not k2.startswith("act_")}
        if pack:
            node.attrs.update(_act_attrs(layout, plan, opts))
    out.validate()
    return out


def _shift_bias(graph: Graph, node: Node, shift: np.ndarray) -> None:
    """node's bias + shift (N,), as a new initializer (the old one may be shared); a node with
    no bias gets one."""
    old = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    base = np.zeros_like(shift) if old is None else np.asarray(graph.initializers[old].fields["data"], np.float32)
    name = unique_name(f"{old or node.name + '.bias'}.corrected", graph.initializers)
    graph.initializers[name] = dense_tensor(name, (base + shift).astype(np.float32))
    node.inputs[2:] = [name]


def _copy(graph: Graph) -> Graph:
    """Structure copied, arrays shared (they are never written)."""
    return Graph(graph.name, copy.deepcopy(graph.inputs), copy.deepcopy(graph.outputs),
                 [Node(n.name, n.op, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs)) for n in graph.nodes],
                 dict(graph.initializers), copy.deepcopy(graph.metadata))


def _run_feeds(graph: Graph, feeds, opts: ConvertOptions) -> list[list[np.ndarray]]:
    """The fp32 model's outputs on the calibration feeds; a feed the model cannot run (most
    often text longer than its position table) is named with its shapes and what to do."""
    sess = InferenceSession(graph, backend="reference")
    out = []
    for k, f in enumerate(feeds):
        try:
            out.append(sess.run(None, f))
        except Exception as e:  # noqa: BLE001 -- any kernel error: the message says where
            shapes = ", ".join(f"{n} {list(np.shape(a))}" for n, a in f.items())
            hint = (f"; if the model reads fewer tokens than that, lower --seq-len (now {opts.seq_len})"
                    if opts.calib_text is not None else "")
            raise ValueError(f"the fp32 model fails on calibration feed {k} ({shapes}): {e}{hint}") from None
    return out


def _run(graph: Graph, feeds: list[dict]) -> list[list[np.ndarray]]:
    sess = InferenceSession(graph, backend="reference")
    return [sess.run(None, f) for f in feeds]


# ----------------------------------------------------------------------------- budget ---

def _meet_budget(graph, layers, plans, opts, feeds, ref_outputs, metrics, report, say):
    """Give back compression, the most sensitive layers first, until the output cosine meets
    the budget, and as little as that takes.

    Sensitivity of a layer = how much the end-to-end cosine improves when only that layer is
    kept in fp32 (one evaluation per compressed layer). Then passes in that order, each
    re-measuring after every step and stopping as soon as cosine >= max_error, cheapest give-
    back first: a pruned layer at half its sparsity (unstructured and block masks: the
    magnitude mask of its original weight); a pruned layer unpruned but still quantized (dense
    int8 / int4, from its original weight); then layers back to fp32."""
    candidates = [lr for lr in layers if not plans[lr.name].keep_fp32]
    say(f"cosine {metrics['cosine']:.6f} < budget {opts.max_error}: measuring {len(candidates)} layer sensitivities")
    gains = []
    for lr in candidates:
        trial = dict(plans)
        trial[lr.name] = _Plan(keep_fp32="trial", fp32_weight=plans[lr.name].fp32_weight, smooth=plans[lr.name].smooth)
        m = output_metrics(_run(_build(graph, layers, trial, opts, pack=True), feeds), ref_outputs)
        gains.append((m["cosine"] - metrics["cosine"], lr))
    gains.sort(key=lambda g: -g[0])
    lowered, unpruned, reverted = [], [], []

    def remeasure(what: str) -> bool:
        nonlocal metrics
        metrics = output_metrics(_run(_build(graph, layers, plans, opts, pack=True), feeds), ref_outputs)
        say(f"{what}: cosine {metrics['cosine']:.6f}")
        return metrics["cosine"] >= opts.max_error

    met = False
    kind = MASK_KINDS.get(opts.prune)
    if kind in ("unstructured", "block"):  # N:M has no lower rung of the same pattern
        for gain, lr in gains:
            plan = plans[lr.name]
            if plan.mask is None or plan.sparsity < 0.2:
                continue
            w = plan.fp32_weight if plan.fp32_weight is not None else \
                np.asarray(graph.initializers[lr.weight_name].fields["data"])
            half = plan.sparsity / 2
            mask = _magnitude_mask(w, kind, half, opts)
            plans[lr.name] = dataclasses.replace(
                plan, mask=mask, sparsity=1.0 - float(mask.mean()), use_original=True, qscale=None, qzero=None,
                note=f"accuracy budget: sparsity {plan.sparsity:.0%} -> {1.0 - float(mask.mean()):.0%} (magnitude "
                     f"mask of its original weight)")
            lowered.append(lr.name)
            if (met := remeasure(f"{lr.name} at sparsity {half:.0%}")):
                break
    if not met and opts.quant != "none":   # unpruned fp32 would be the fp32 step itself
        for gain, lr in gains:
            plan = plans[lr.name]
            if plan.mask is None:
                continue
            plans[lr.name] = dataclasses.replace(
                plan, mask=None, sparsity=0.0, use_original=True, qscale=None, qzero=None,
                note=f"accuracy budget: not pruned, {opts.quant} kept (was {plan.sparsity:.0%} sparse)")
            unpruned.append(lr.name)
            if (met := remeasure(f"unpruned {lr.name}, kept {opts.quant}")):
                break
    if not met:
        for gain, lr in gains:
            plans[lr.name] = _Plan(keep_fp32=f"kept fp32 (accuracy budget: most sensitive, +{gain:.2e} cosine alone)",
                                   fp32_weight=plans[lr.name].fp32_weight, smooth=plans[lr.name].smooth)
            reverted.append(lr.name)
            if (met := remeasure(f"reverted {lr.name} to fp32")):
                break
    report.budget = {"min_cosine": opts.max_error, "lowered": [n for n in lowered if n not in unpruned + reverted],
                     "unpruned": unpruned, "reverted": reverted, "met": met,
                     "summary": f"halved the sparsity of {len(lowered)} layer(s), "
                                f"unpruned {len(unpruned)} layer(s) (still {opts.quant}), reverted "
                                f"{len(reverted)} to fp32; cosine {metrics['cosine']:.6f} "
                                f"{'>=' if met else '< (not met even with every layer in fp32)'} {opts.max_error}"}
    converted = _build(graph, layers, plans, opts, pack=True, say=say)
    return converted, metrics


# ----------------------------------------------------------------------------- report ---

def _layer_reports(fp32_graph, graph, converted, layers, plans, feeds) -> list[LayerReport]:
    """Per-layer rows. Output error: the converted layer and the original one run on the
    same fp32 inputs of that layer (first calibration batch), so error does not compound.
    A smoothed layer (SmoothQuant) reads X / s with the weight W * s: it is compared with the
    original W on X = (X / s) * s."""
    conv_nodes = {lr.name: next(n for n in converted.nodes if n.name == lr.name and n.op == lr.node.op)
                  for lr in layers}
    names = list(dict.fromkeys(n.inputs[0] for n in conv_nodes.values()))
    inputs = dict(zip(names, cal.probe_session(graph, names).run(names, feeds[0])))
    orig_nodes = {n.name: n for n in fp32_graph.nodes}
    rows = []
    for lr in layers:
        node = conv_nodes[lr.name]
        plan = plans.get(lr.name, _Plan())
        t = converted.initializers[lr.weight_name]
        orig_t = fp32_graph.initializers.get(lr.weight_name)
        dense = t.to_dense()
        sparsity = 1.0 - float(np.count_nonzero(dense)) / max(dense.size, 1)
        same_shape = orig_t is not None and tuple(orig_t.shape) == tuple(t.shape)
        s = plan.smooth if plan.smooth is not None and lr.node.op == "Linear" else None
        # against the original weight: pruning, any obs update and quantization together
        if same_shape:
            w_orig = np.asarray(orig_t.fields["data"])
            sq = sqnr_db(w_orig, dense if s is None else (dense / s[None, :]).astype(np.float32))
        else:
            sq = None
        err = None
        x = inputs.get(node.inputs[0])
        if same_shape and x is not None:
            bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
            b = None if bias is None else np.asarray(converted.initializers[bias].fields["data"])
            got = _run_layer(registry, node, t, x, b)
            x_orig = x if s is None else (x * s).astype(np.float32)
            orig_node = orig_nodes.get(lr.name, node)
            ob = orig_node.inputs[2] if len(orig_node.inputs) > 2 and orig_node.inputs[2] else None
            b_orig = np.asarray(fp32_graph.initializers[ob].fields["data"]) if ob in fp32_graph.initializers else \
                (None if ob is None else b)       # the model's own bias, not a corrected one
            want = _run_layer(registry, orig_node, orig_t, x_orig, b_orig, fp32=True)
            err = rel_error(got, want)
        rows.append(LayerReport(
            name=lr.name, op=lr.node.op, shape=list(t.shape), layout=t.layout, sparsity=sparsity,
            bytes=t.nbytes, fp32_bytes=orig_t.nbytes if orig_t is not None else t.nbytes,
            act_quant=node.attrs.get("act_quant", "none"), sqnr_db=sq, output_rel_error=err,
            note=plan.keep_fp32 or plan.note))
    return rows


def _run_layer(registry, node, t, x, bias, fp32=False):
    attrs = registry.fill_attrs(node.op, {k: v for k, v in node.attrs.items()
                                          if not (fp32 and k.startswith("act_"))})
    arg = t.fields["data"] if t.layout == "dense" else t
    run = registry.lookup(node.op, t.layout, "reference")(attrs, {1: t})
    return run(x, arg, bias)[0]


def _options_dict(opts: ConvertOptions) -> dict:
    d = asdict(opts)
    calib = d.pop("calib")
    d["calib"] = None if calib is None else (os.fspath(calib) if isinstance(calib, (str, os.PathLike))
                                             else "python iterable")
    rd = d.pop("recover_data")
    d["recover_data"] = None if rd is None else (os.fspath(rd) if isinstance(rd, (str, os.PathLike))
                                                 else "python iterable")
    for key in ("calib_text", "tokenizer"):      # JSON: a PathLike becomes its string
        d[key] = None if d[key] is None else os.fspath(d[key])
    d["nm"] = f"{opts.nm[0]}:{opts.nm[1]}"
    d["block"] = f"{opts.block[0]}x{opts.block[1]}"
    return d


# ------------------------------------------------------------------- front doors ------

def from_onnx(model: Any, out_path: str | os.PathLike | None = None, *, name: str | None = None,
              **options) -> Graph:
    """Convert an ONNX model (path, bytes or ModelProto) to a qrt Graph; write it to
    ``out_path`` when given (atomically: a failed write leaves no partial file). Keyword
    ``options`` are ConvertOptions fields (plus progress / report_path); without any, the
    model is imported as is (dense fp32)."""
    return convert(model, out_path, name=name, **options)


@contextlib.contextmanager
def quiet_export():
    """torch.onnx.export's chatter (its warnings, the dynamo exporter's progress prints) kept
    out of the caller's output: the export is an internal step of the conversion here."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _argument_names(module: Any, n: int) -> list[str] | None:
    """The names of ``module.forward``'s first ``n`` positional parameters (what the dynamo
    exporter names the inputs; the TorchScript one would say 'onnx::Gemm_0'), or None when
    forward takes *args or fewer."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[:n] if len(positional) >= n else None


def _name_outputs(data: bytes) -> bytes:
    """The TorchScript exporter names unnamed outputs after internal values ('18'): rename
    them output (one) or output_0, output_1, ... through Identity nodes."""
    import onnx
    model = onnx.load_from_string(data)
    outs = list(model.graph.output)
    names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    taken = {v for n in model.graph.node for v in n.output} | {i.name for i in model.graph.input}
    if any(n in taken for n in names):
        return data
    for o, new in zip(outs, names):
        model.graph.node.append(onnx.helper.make_node("Identity", [o.name], [new], name=f"{new}_name"))
        o.name = new
    return model.SerializeToString()


def from_torch(module: Any, example_inputs: Any, out_path: str | os.PathLike | None = None, *,
               input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
               dynamic_axes: dict | None = None, opset: int = 17, dynamo: bool = False,
               name: str | None = None, **options) -> Graph:
    """Export a torch.nn.Module through ONNX in memory, then convert it like from_onnx.

    example_inputs: a tensor or tuple of tensors, passed to torch.onnx.export.
    input_names:    default: the names of forward's parameters (x for ``forward(self, x)``).
    output_names:   default: output (one output) or output_0, output_1, ...
    dynamic_axes:   as torch.onnx.export, e.g. {"x": {0: "batch"}}; names become the
                    symbolic dims of the qrt model's inputs.
    dynamo:         use torch's dynamo-based exporter (needs onnxscript) instead of the
                    TorchScript one; both produce graphs qrt imports.
    options:        ConvertOptions fields (prune=..., quant=..., ...), as from_onnx.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("from_torch needs PyTorch: pip install torch") from e
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if input_names is None:
        input_names = _argument_names(module, len(example_inputs))
    buf = io.BytesIO()
    kwargs = dict(input_names=list(input_names) if input_names else None,
                  output_names=list(output_names) if output_names else None,
                  dynamic_axes=dynamic_axes, opset_version=opset, dynamo=dynamo)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), quiet_export():
            if dynamo:
                prog = torch.onnx.export(module, tuple(example_inputs), None, verbose=False, **kwargs)
                data = prog.model_proto.SerializeToString()
            else:
                torch.onnx.export(module, tuple(example_inputs), buf, **kwargs)
                data = buf.getvalue()
    finally:
        module.train(was_training)
    if not output_names and not dynamo:
        data = _name_outputs(data)
    return from_onnx(data, out_path, name=name or type(module).__name__, **options)
