"""Calibration data in the forms users have it (docs/CONVERTER.md, "Calibration data").

    load_npy_dir(folder, graph)                      FOLDER/<input name>.npy, one per model input
    load_text_feeds(file, tokenizer_dir, graph)      a text file, one sample per line, tokenized

(The .npz file and the Python iterable of feed dicts are read by calibrate.py.) Both return a
calibrate.CalibFeeds whose ``source`` says how many samples came from where, and both refuse
bad data with a ValueError naming the file and what was expected, before the converter does
any work: wrong names, shapes or dtypes, empty files, NaN/Inf, a tokenizer folder without
tokenizer.json, a text file that is not UTF-8 or has no non-blank line.
"""
from __future__ import annotations

import os

import numpy as np

from ..graph import Graph, format_shape
from ..text import TEXT_INPUTS, import_tokenizers, pad_batch, padding_of, read_text_lines
from .calibrate import (DEFAULT_BATCH_SIZE, CalibFeeds, _check_feed, _describe_inputs, _gather_rows,
                        feeds_from_arrays)

DEFAULT_SEQ_LEN = 128
# Files that show a folder holds a tokenizer, only not in the form qrt reads (tokenizer.json).
_SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                         "tokenizer.model", "tokenizer_config.json")


def _positive_int(what: str, k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{what} must be a positive int, got {k!r}")
    return k


# -------------------------------------------------------------------- .npy folder --------

def load_npy_dir(path: str | os.PathLike, graph: Graph, *, batch_size: int = DEFAULT_BATCH_SIZE) -> CalibFeeds:
    """Calibration feeds from a folder holding one ``<input name>.npy`` per model input
    (np.save(folder / "input_ids.npy", ids), ...), each array holding every sample along its
    first axis: the arrays of an .npz (load_calib_npz), one file each. How samples become feeds
    (rank against the model's input, a fixed or free batch axis) and every check (names, dtypes,
    shapes, equal sample counts, NaN/Inf, zero samples) are load_calib_npz's. Files that do not
    end in .npy are ignored (a README beside the data is fine); a .npy not named after a model
    input is refused, so a misspelt name cannot be silently left out."""
    _positive_int("batch_size", batch_size)
    p = os.fspath(path)
    convention = ", ".join(f"{v.name}.npy" for v in graph.inputs)
    where = f"calibration folder {p!r} (expected one .npy per model input: {convention})"
    if not os.path.isdir(p):
        raise ValueError(f"calibration folder {p!r}: no such folder")
    entries = sorted(os.listdir(p))
    files = [f for f in entries if f.endswith(".npy") and os.path.isfile(os.path.join(p, f))]
    if not files:
        npz = [f for f in entries if f.endswith(".npz")]
        hint = f"; it holds {npz[0]!r}: pass that file itself as --calib" if npz else ""
        raise ValueError(f"{where}: the folder holds no .npy file{hint}")
    arrays: dict[str, np.ndarray] = {}
    for f in files:
        fp = os.path.join(p, f)
        try:
            a = np.load(fp, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 -- np.load raises many kinds (ValueError, OSError, EOFError...)
            raise ValueError(f"calibration file {fp!r} is not a readable .npy array ({type(e).__name__}: {e}); "
                             f"save each input with np.save(path, array)") from None
        if not isinstance(a, np.ndarray):   # an .npz archive renamed .npy
            a.close()
            raise ValueError(f"calibration file {fp!r} is an .npz archive, not one .npy array; save each "
                             f"input with np.save(path, array), or pass the archive as --calib FILE.npz")
        arrays[f[:-len(".npy")]] = a
    label = f"{os.path.basename(os.path.normpath(p))}/ ({', '.join(files)})"
    return feeds_from_arrays(arrays, graph, where, label, batch_size=batch_size)


# ---------------------------------------------------------------------------- text -------

def load_text_feeds(path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None, graph: Graph, *,
                    seq_len: int = DEFAULT_SEQ_LEN, batch_size: int = DEFAULT_BATCH_SIZE) -> CalibFeeds:
    """Calibration feeds for a text model from a UTF-8 text file, one sentence or paragraph
    per line (blank lines skipped), tokenized with the Hugging Face tokenizer in
    ``tokenizer_dir`` (a folder with tokenizer.json, or that file itself; needs the
    ``tokenizers`` package).

    Each line is one sample: encoded with the tokenizer's special tokens ([CLS] ... [SEP]) and
    truncated to ``seq_len`` tokens (the tokenizer's own truncation, so the special tokens
    stay). ``batch_size`` samples make one feed (the model's batch size if its batch axis is
    fixed; lines beyond the last full batch are then left out, and ``source`` says so), padded
    to the longest sample in the feed with the tokenizer's pad id (on the side its padding
    settings name; right by default), attention_mask 0 and token_type_ids = the pad type id on
    the padding. A model input with a fixed sequence length L gets every row truncated to
    min(seq_len, L) and padded to exactly L.

    The model's inputs must all be among input_ids, attention_mask and token_type_ids, with
    input_ids one of them; each is filled and cast to the input's dtype. Token ids beyond the
    model's embedding table (a tokenizer of another model) are refused."""
    _positive_int("seq_len", seq_len)
    _positive_int("batch_size", batch_size)
    p = os.fspath(path)
    where = f"calibration text {p!r}"
    batch, length = _text_inputs(graph, where)
    lines, n_blank = _read_lines(p, where)
    tok, tok_label = _load_tokenizer(tokenizer_dir)
    cap = seq_len if length is None else min(seq_len, length)

    # tokenizer.json may carry padding / truncation settings (MiniLM's pads every row to 128):
    # padding is done here per feed, and truncation is re-set to this call's cap, keeping the
    # saved direction.
    truncation = tok.truncation
    pad = padding_of(tok)
    try:
        tok.enable_truncation(max_length=cap, direction=(truncation or {}).get("direction", "right"))
        encodings = tok.encode_batch([text for _, text in lines])
    except Exception as e:  # noqa: BLE001 -- the Rust side raises plain Exceptions
        raise ValueError(f"{where}: tokenizer {tok_label} failed with seq-len {cap} "
                         f"({type(e).__name__}: {e})") from None

    for (lineno, _), enc in zip(lines, encodings):
        if not enc.ids:
            raise ValueError(f"{where}, line {lineno}: the tokenizer made no tokens of it (only characters "
                             f"it drops?); a sample needs at least one token")
    _check_token_range(graph, lines, encodings, where, tok_label, pad={"input_ids": pad.pad_id,
                                                                      "token_type_ids": pad.pad_type_id})

    group = batch or batch_size
    used = len(encodings) - len(encodings) % group if batch else len(encodings)
    if used == 0:
        raise ValueError(f"{where}: {len(encodings)} non-blank line(s), fewer than the model's fixed batch "
                         f"size {batch}; one feed needs {batch} samples")
    feeds = CalibFeeds()
    for start in range(0, used, group):
        chunk = encodings[start:start + group]
        width = length or max(len(e.ids) for e in chunk)          # every row is <= cap <= width
        arrays = pad_batch(chunk, width, pad)
        feeds.append({v.name: arrays[v.name].astype(v.dtype) for v in graph.inputs})
    # names, dtypes and ranks follow from _text_inputs; this is the same final check every
    # other feed source gets
    for k in sorted({0, len(feeds) - 1}):
        _check_feed(feeds[k], graph, f"{where}, feed {k}")

    truncated = sum(1 for e in encodings[:used] if e.overflowing)
    details = [f"tokenizer {tok_label}", f"seq-len {cap}", f"{truncated} truncated"]
    if length is not None:
        details.append(f"padded to the model's fixed length {length}")
    blank = f" ({n_blank} blank skipped)" if n_blank else ""
    left_out = (f"; {len(encodings) - used} line(s) left out: not a full batch of the model's fixed batch "
                f"size {batch}" if used < len(encodings) else "")
    feeds.source = (f"{os.path.basename(p)}: {len(lines)} line(s){blank} -> {used} sample(s) in {len(feeds)} "
                    f"feed(s) ({', '.join(details)}){left_out}")
    return feeds


def _text_inputs(graph: Graph, where: str) -> tuple[int | None, int | None]:
    """Check that a tokenizer can fill every model input; return the model's fixed (batch,
    sequence length), None where the axis is free."""
    names = [v.name for v in graph.inputs]
    other = [n for n in names if n not in TEXT_INPUTS]
    if other:
        raise ValueError(f"{where}: a tokenizer cannot provide the model's input(s) "
                         f"{', '.join(repr(n) for n in other)} (it gives {', '.join(TEXT_INPUTS)}); the "
                         f"model's inputs are: {_describe_inputs(graph)}; give --calib data (FILE.npz or a "
                         f"folder of .npy) instead")
    if "input_ids" not in names:
        raise ValueError(f"{where}: the model has no 'input_ids' input, so it does not read token ids; its "
                         f"inputs are: {_describe_inputs(graph)}")
    fixed: dict[int, dict[str, int]] = {0: {}, 1: {}}
    for v in graph.inputs:
        kinds = "iub" if v.name == "attention_mask" else "iu"   # a mask may be bool; ids are integers
        if v.name == "attention_mask" and np.dtype(v.dtype).kind == "f":
            kinds += "f"                                         # some exports take a float mask
        if np.dtype(v.dtype).kind not in kinds:
            raise ValueError(f"{where}: the model's input {v.name!r} is {v.dtype}; token data needs an "
                             f"integer input")
        if v.shape is None:
            continue
        if len(v.shape) != 2:
            raise ValueError(f"{where}: the model's input {v.name!r} has shape {format_shape(v.shape)}; text "
                             f"feeds are [batch, sequence] (rank 2)")
        for axis, d in enumerate(v.shape):
            if isinstance(d, int):
                if d < 1:
                    raise ValueError(f"{where}: the model's input {v.name!r} has shape {format_shape(v.shape)}; "
                                     f"a text feed needs at least one sample and one token")
                fixed[axis][v.name] = d
    out = []
    for axis, what in ((0, "batch size"), (1, "sequence length")):
        sizes = set(fixed[axis].values())
        if len(sizes) > 1:
            raise ValueError(f"{where}: the model's inputs fix different {what}s: "
                             + ", ".join(f"{n!r}: {d}" for n, d in fixed[axis].items()))
        out.append(sizes.pop() if sizes else None)
    return out[0], out[1]


def _read_lines(p: str, where: str) -> tuple[list[tuple[int, str]], int]:
    """The non-blank lines of a UTF-8 file as (line number, stripped text), and how many
    blank lines were skipped."""
    lines = [(k, s.strip()) for k, s in enumerate(read_text_lines(p, where), start=1)]
    kept = [(k, s) for k, s in lines if s]
    if not kept:
        raise ValueError(f"{where} has no non-blank line ({len(lines)} line(s), blank lines are skipped); "
                         f"expected one sentence or paragraph per line")
    return kept, len(lines) - len(kept)


def _load_tokenizer(tokenizer_dir):
    """(tokenizers.Tokenizer, a label for messages) from a tokenizer folder or its tokenizer.json."""
    if tokenizer_dir is None:
        raise ValueError("calibrating on text needs a tokenizer: a Hugging Face tokenizer folder holding "
                         "tokenizer.json (--tokenizer DIR)")
    d = os.fspath(tokenizer_dir)
    if os.path.isfile(d) and d.endswith(".json"):
        file = d
    elif os.path.isdir(d):
        file = os.path.join(d, "tokenizer.json")
        if not os.path.isfile(file):
            have = sorted(os.listdir(d))
            listing = ", ".join(have[:10]) + (" ..." if len(have) > 10 else "") if have else "nothing"
            hint = ""
            if any(f in have for f in _SLOW_TOKENIZER_FILES):
                hint = ("; those files are a tokenizer in another form: write tokenizer.json with transformers, "
                        "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)")
            raise ValueError(f"tokenizer folder {d!r} has no tokenizer.json (it holds {listing}); expected a "
                             f"Hugging Face tokenizer folder with tokenizer.json{hint}")
    else:
        raise ValueError(f"tokenizer {d!r}: no such folder; expected a Hugging Face tokenizer folder holding "
                         f"tokenizer.json")
    Tokenizer = import_tokenizers().Tokenizer
    try:
        tok = Tokenizer.from_file(file)
    except Exception as e:  # noqa: BLE001 -- the Rust side raises plain Exceptions for bad JSON
        raise ValueError(f"tokenizer file {file!r} cannot be read by tokenizers ({type(e).__name__}: "
                         f"{str(e).strip()})") from None
    return tok, repr(d)


def _check_token_range(graph: Graph, lines, encodings, where: str, tok_label: str, pad: dict[str, int]) -> None:
    """Refuse ids the model cannot embed: a tokenizer of another model gives ids past the end
    of the embedding table, which would fail (or read garbage) deep inside the first run.
    ``pad``: the id each input is padded with, checked too."""
    for name, field in (("input_ids", "ids"), ("token_type_ids", "type_ids")):
        if name not in {v.name for v in graph.inputs}:
            continue
        rows = _gather_rows(graph, name)
        if rows is None:
            continue
        if not 0 <= pad[name] < rows:
            raise ValueError(f"{where}: tokenizer {tok_label} pads {name} with id {pad[name]}, but the model's "
                             f"embedding table for {name!r} has {rows} rows; is this the model's own tokenizer?")
        for (lineno, _), enc in zip(lines, encodings):
            top = max(getattr(enc, field), default=0)
            if top >= rows:
                raise ValueError(f"{where}, line {lineno}: tokenizer {tok_label} gave {name} {top}, but the "
                                 f"model's embedding table for {name!r} has {rows} rows (ids 0..{rows - 1}); "
                                 f"is this the model's own tokenizer?")
