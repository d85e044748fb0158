"""Hugging Face model folders in one step: `qrt convert DIR -o model.qrt` (docs/CONVERTER.md).

A folder as transformers' ``save_pretrained`` or sentence-transformers' ``save`` writes it
(config.json, the weights, the tokenizer; for sentence-transformers also modules.json and
1_Pooling/config.json) becomes a .qrt that embeds text with numpy and the tokenizers package
alone (runtime/text.py: TextEncoder, `qrt embed`):

1. read_folder: what the folder is (layout, pooling, normalisation, longest sequence), with an
   error naming the file and what was expected for anything qrt cannot convert;
2. export_folder: transformers loads the model with eager attention (its export fuses into
   qrt's Attention node for every BERT-style encoder; the default sdpa export fuses for most),
   and torch.onnx.export (TorchScript exporter, opset 17, no onnxscript needed) writes a
   wrapper whose outputs are ``sentence_embedding`` (pooled and, where configured, normalised:
   the nodes of sentence-transformers' Pooling / Normalize) and ``token_embeddings``
   (last_hidden_state), with batch and sequence axes free;
3. from_folder: converts that ONNX model like any other (every compression option applies),
   calibrating on built-in English text (runtime/convert/builtin_text.py) when no calibration
   data is given, and stores the tokenizer and the pooling in the graph metadata.

Needs PyTorch and transformers at conversion time only (pip install -e '.[convert]').
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..graph import Graph
from ..text import METADATA_KEY, SENTENCE_OUTPUT, TEXT_INPUTS, TOKENS_OUTPUT, Padding, pad_batch
from .calibrate import CalibFeeds

# sentence-transformers' pooling modes, in the order it concatenates them (Pooling.forward)
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_SENTENCE_BERT_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json",
                          "sentence_distilbert_config.json", "sentence_xlm-roberta_config.json")
BUILTIN_SENTENCES = 256        # calibration sentences when none are given
BUILTIN_BATCH = 16
INSTALL_HINT = "pip install -e '.[convert]' in the qrt checkout (torch==2.13.0, transformers, onnx)"


@dataclass(frozen=True)
class ModelFolder:
    """What a Hugging Face model folder holds, as far as conversion needs it."""
    path: str
    layout: str                  # "sentence-transformers" or "transformers"
    model_type: str              # config.json's model_type, e.g. "bert"
    pooling: tuple[str, ...]     # POOLING_MODES, concatenated in this order
    normalize: bool              # sentence-transformers' Normalize module: unit-length embeddings
    max_seq_length: int          # longer texts are truncated to this many tokens


def is_model_folder(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path!r} is not readable JSON ({type(e).__name__}: {e})") from None


def read_folder(path: str | os.PathLike) -> ModelFolder:
    """Describe the model folder at ``path``; ValueError naming the file and what was expected
    for a folder qrt cannot convert (no config.json, no weights, no tokenizer, modules or
    pooling modes it does not implement)."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        raise ValueError(f"{p!r} is not a folder")
    listing = sorted(os.listdir(p))
    shown = ", ".join(listing[:12]) + (" ..." if len(listing) > 12 else "") if listing else "nothing"
    if "config.json" not in listing:
        raise ValueError(f"folder {p!r} has no config.json (it holds {shown}); expected a Hugging Face model "
                         f"folder as save_pretrained writes it: config.json, model.safetensors, tokenizer.json")
    config = _read_json(os.path.join(p, "config.json"), "model config")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{os.path.join(p, 'config.json')!r} has no model_type: not a transformers model config")
    if not any(f in listing for f in _WEIGHT_FILES):
        raise ValueError(f"folder {p!r} has no model weights (it holds {shown}); expected one of "
                         f"{', '.join(_WEIGHT_FILES)}")
    if "tokenizer.json" not in listing and not any(f in listing for f in ("vocab.txt", "vocab.json",
                                                                           "tokenizer.model", "spiece.model")):
        raise ValueError(f"folder {p!r} has no tokenizer (it holds {shown}); expected tokenizer.json (or the "
                         f"files of a slow tokenizer: vocab.txt, vocab.json + merges.txt, spiece.model) beside "
                         f"the model, as tokenizer.save_pretrained writes them")

    layout, pooling, normalize = "transformers", ("mean",), False   # sentence-transformers' default
    if "modules.json" in listing:
        layout = "sentence-transformers"
        pooling, normalize = _read_modules(p)
    max_len = _max_seq_length(p, listing, config)
    return ModelFolder(p, layout, config["model_type"], pooling, normalize, max_len)


def _read_modules(p: str) -> tuple[tuple[str, ...], bool]:
    where = os.path.join(p, "modules.json")
    modules = _read_json(where, "sentence-transformers module list")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise ValueError(f"{where!r} is not a list of modules with a 'type' each")
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if not kinds or kinds[0] != "Transformer" or modules[0].get("path", "") not in ("", "."):
        raise ValueError(f"{where!r}: expected a Transformer module stored in the folder itself first; it lists "
                         f"{', '.join(kinds) or 'nothing'}")
    pooling: tuple[str, ...] | None = None
    normalize = False
    for m, kind in zip(modules[1:], kinds[1:]):
        if kind == "Pooling":
            pooling = _read_pooling(os.path.join(p, m.get("path", ""), "config.json"))
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"{where!r} lists a {m['type']} module, which qrt does not convert (it converts "
                             f"Transformer, Pooling and Normalize)")
    if pooling is None:
        raise ValueError(f"{where!r} has no Pooling module: the model gives token embeddings only, and qrt "
                         f"converts sentence-embedding models (or a plain transformers folder)")
    return pooling, normalize


def _read_pooling(where: str) -> tuple[str, ...]:
    cfg = _read_json(where, "pooling config")
    if not isinstance(cfg, dict):
        raise ValueError(f"pooling config {where!r} is not a JSON object")
    if "pooling_mode" in cfg:                  # sentence-transformers >= 6
        mode = cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode) if isinstance(mode, list) else None
        if not modes or not all(isinstance(m, str) for m in modes):
            raise ValueError(f"pooling config {where!r}: pooling_mode {mode!r} is not a mode name or a list of them")
    else:                                      # the earlier pooling_mode_* flags
        modes = [m for k, m in _LEGACY_POOLING.items() if cfg.get(k)] or ["mean"]
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise ValueError(f"pooling config {where!r}: pooling mode {', '.join(bad)} is not converted by qrt "
                         f"(it converts {', '.join(POOLING_MODES)})")
    return tuple(sorted(set(modes), key=POOLING_MODES.index))


def _max_seq_length(p: str, listing: list[str], config: dict) -> int:
    """sentence-transformers' rule: its config's max_seq_length, else the tokenizer's
    model_max_length, else the model's positions; never more than the model's positions."""
    positions = config.get("max_position_embeddings")
    found = None
    for name in _SENTENCE_BERT_CONFIGS:
        if name in listing:
            v = _read_json(os.path.join(p, name), "sentence-transformers config")
            found = v.get("max_seq_length") if isinstance(v, dict) else None
            break
    if found is None and "tokenizer_config.json" in listing:
        v = _read_json(os.path.join(p, "tokenizer_config.json"), "tokenizer config")
        m = v.get("model_max_length") if isinstance(v, dict) else None
        found = m if isinstance(m, (int, float)) and m < 1_000_000 else None   # 1e30: "no limit"
    if found is None:
        found = positions
    if not isinstance(found, (int, float)) or found < 1:
        raise ValueError(f"folder {p!r}: cannot tell the longest token sequence (no max_seq_length, "
                         f"model_max_length or max_position_embeddings)")
    if isinstance(positions, int) and positions > 0:
        found = min(found, positions)
    return int(found)


# ------------------------------------------------------------------------------ export ----

def _imports():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"converting a Hugging Face model folder needs PyTorch and transformers ({e.name} is "
                          f"missing): {INSTALL_HINT}") from None
    return torch, transformers


def _wrapper(torch, model, names: list[str], pooling: tuple[str, ...], normalize: bool):
    class SentenceEncoder(torch.nn.Module):
        """model(**inputs).last_hidden_state -> (pooled, normalised embedding, token embeddings),
        the arithmetic of sentence-transformers' Pooling and Normalize modules."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            feeds = dict(zip(names, args))
            h = self.model(**feeds).last_hidden_state                   # [batch, sequence, hidden]
            m = feeds["attention_mask"].unsqueeze(-1).to(h.dtype)        # [batch, sequence, 1]
            parts = []
            for mode in pooling:
                if mode == "cls":       # the first token: qrt's TextEncoder pads on the right
                    parts.append(h[:, 0])
                elif mode == "max":
                    parts.append(h.masked_fill(m == 0, float("-inf")).max(dim=1).values)
                else:
                    total = torch.clamp(m.sum(dim=1), min=1e-9)
                    parts.append((h * m).sum(dim=1) / (total if mode == "mean" else torch.sqrt(total)))
            e = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
            if normalize:               # F.normalize(e, p=2, dim=1), written out (ReduceL2 is not imported)
                e = e / torch.clamp(torch.sqrt((e * e).sum(dim=-1, keepdim=True)), min=1e-12)
            return e, h
    return SentenceEncoder().eval()


def export_folder(folder: ModelFolder, *, opset: int = 17) -> tuple[bytes, str, list[str]]:
    """(ONNX model bytes, the tokenizer as tokenizer.json text, the model's input names)."""
    torch, transformers = _imports()
    with _quiet(transformers):
        return _export(torch, transformers, folder, opset)


@contextlib.contextmanager
def _quiet(transformers):
    """Keep transformers' warnings and progress bars ("Loading weights") and torch.onnx's
    tracer warnings out of qrt's output: the export is qrt's business, not the user's."""
    from .pipeline import quiet_export
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with quiet_export():
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def _export(torch, transformers, folder: ModelFolder, opset: int) -> tuple[bytes, str, list[str]]:
    p = folder.path
    try:
        tok = transformers.AutoTokenizer.from_pretrained(p)
    except Exception as e:  # noqa: BLE001 -- transformers raises many kinds for unreadable tokenizers
        raise ValueError(f"folder {p!r}: transformers cannot load its tokenizer ({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise ValueError(f"folder {p!r}: its tokenizer ({type(tok).__name__}) has no fast (tokenizers) form, "
                         f"which qrt stores to tokenize at run time without transformers")
    try:
        model = transformers.AutoModel.from_pretrained(p, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"folder {p!r}: transformers cannot load the model ({type(e).__name__}: {e})") from None
    params = inspect.signature(model.forward).parameters
    names = [n for n in TEXT_INPUTS if n in params and (n == "input_ids" or n in tok.model_input_names)]
    if "input_ids" not in names or "attention_mask" not in names:
        raise ValueError(f"folder {p!r}: the model ({type(model).__name__}) does not take input_ids and "
                         f"attention_mask; qrt converts text encoders that do")
    enc = tok(["An example sentence.", "A second, somewhat longer example sentence for the export."],
              padding=True, return_tensors="pt")
    args = tuple(enc[n].to(torch.int64) for n in names)
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    dyn[SENTENCE_OUTPUT] = {0: "batch"}
    dyn[TOKENS_OUTPUT] = {0: "batch", 1: "sequence"}
    wrapper = _wrapper(torch, model.eval(), names, folder.pooling, folder.normalize)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(wrapper, args, buf, input_names=names, output_names=[SENTENCE_OUTPUT, TOKENS_OUTPUT],
                          dynamic_axes=dyn, opset_version=opset, dynamo=False)
    return buf.getvalue(), tok.backend_tokenizer.to_str(), names


def builtin_feeds(tokenizer_json: str, names: list[str], max_len: int, *, n: int = BUILTIN_SENTENCES,
                  batch: int = BUILTIN_BATCH) -> CalibFeeds:
    """Calibration feeds from the built-in English sentences: batches of similar length (so
    little padding enters the statistics), the batches in a fixed shuffled order (so the
    report's held-back batches are of every length)."""
    from ..text import import_tokenizers, padding_of
    from .builtin_text import docstring_sentences
    texts = docstring_sentences(n, per_file=1)
    tok = import_tokenizers().Tokenizer.from_str(tokenizer_json)
    pad: Padding = padding_of(tok)
    tok.enable_truncation(max_length=max_len)
    encodings = sorted(tok.encode_batch(texts), key=lambda e: len(e.ids))
    chunks = [encodings[i:i + batch] for i in range(0, len(encodings), batch)]
    feeds = CalibFeeds(source=f"{len(texts)} built-in English sentences (Python standard library docstrings; "
                              f"no --calib / --calib-text given) in {len(chunks)} feed(s)")
    for k in np.random.default_rng(0).permutation(len(chunks)):
        arrays = pad_batch(chunks[k], max(len(e.ids) for e in chunks[k]), pad)
        feeds.append({name: arrays[name] for name in names})
    return feeds


# ----------------------------------------------------------------------------- convert ----

def from_folder(path: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                progress: Callable[[str], None] | None = None, report_path: str | os.PathLike | None = None,
                options: Any = None, **kwargs) -> Graph:
    """Convert a Hugging Face / sentence-transformers model folder (see the module docstring);
    options as runtime.convert.convert. Without calibration data a compressing conversion
    calibrates on the built-in sentences; ``tokenizer`` defaults to the folder itself."""
    from .pipeline import ConvertOptions, convert
    say = progress or (lambda line: None)
    folder = read_folder(path)
    opts = dataclasses.replace(options, **kwargs) if options is not None else ConvertOptions(**kwargs)
    if opts.tokenizer is None and (opts.calib_text is not None or isinstance(opts.recover_data, (str, os.PathLike))
                                   and str(opts.recover_data).endswith(".txt")):
        opts = dataclasses.replace(opts, tokenizer=folder.path)
    if opts.seq_len > folder.max_seq_length:     # calibration text longer than the model reads
        opts = dataclasses.replace(opts, seq_len=folder.max_seq_length)
    builtin = (opts.compresses or opts.max_error is not None) and not opts.has_calib
    # every option is checked before the export (the built-in feeds need its tokenizer: a
    # stand-in says "calibration data will be there")
    (dataclasses.replace(opts, calib=CalibFeeds()) if builtin else opts).validate()
    say(f"{folder.layout} folder {folder.path}: {folder.model_type}, pooling {'+'.join(folder.pooling)}"
        f"{', normalized' if folder.normalize else ''}, at most {folder.max_seq_length} tokens; exporting "
        f"(transformers, eager attention, torch.onnx.export opset 17)")
    data, tokenizer_json, names = export_folder(folder)
    if builtin:
        opts = dataclasses.replace(opts, calib=builtin_feeds(tokenizer_json, names, opts.seq_len))
    meta = {METADATA_KEY: {"tokenizer": tokenizer_json, "max_seq_length": folder.max_seq_length,
                           "pooling": list(folder.pooling), "normalize": folder.normalize,
                           "layout": folder.layout, "model_type": folder.model_type,
                           "source": os.path.basename(os.path.normpath(folder.path))}}
    return convert(data, out_path, name=os.path.basename(os.path.normpath(folder.path)), progress=progress,
                   report_path=report_path, options=opts, metadata=meta)
