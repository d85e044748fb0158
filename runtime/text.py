"""Text in, embeddings out: the tokenizer side of text models, at run time.

    TextEncoder("model.qrt").encode(["a sentence", ...], batch_size=32) -> (n, dim) float32

A .qrt converted from a Hugging Face model folder (`qrt convert DIR`, runtime/convert/hf.py)
carries what turns text into its inputs and its output into sentence embeddings, in the
graph metadata under ``"text_encoder"`` (docs/FORMAT.md, "Text models"): the tokenizer
(tokenizer.json's text), the longest token sequence, and how the graph pools. The pooling and
the normalisation are nodes of the graph itself (output ``sentence_embedding``), so that
`qrt run`, the converter's accuracy report and ``--max-error`` all see the embedding users
compare; this module only tokenizes, batches and restores the order.

Run-time dependencies: numpy and the ``tokenizers`` package (Rust, no PyTorch). The padding
helpers here also serve the converter's text calibration (runtime/convert/data.py).
"""
from __future__ import annotations

import codecs
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

# The model inputs a tokenizer can fill, by their Hugging Face names.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Looked up when tokenizer.json has no padding settings; id 0 if none exists. Padded positions
# have attention_mask 0, so the id matters only to a model without an attention_mask.
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")
METADATA_KEY = "text_encoder"
SENTENCE_OUTPUT = "sentence_embedding"
TOKENS_OUTPUT = "token_embeddings"
INSTALL_HINT = "pip install tokenizers (or pip install -e '.[text]' in the qrt checkout)"


def import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f"text models need the tokenizers package: {INSTALL_HINT}") from None
    return tokenizers


@dataclass(frozen=True)
class Padding:
    """How a batch of token sequences is padded: the ids written on the padding, and the side."""
    pad_id: int
    pad_type_id: int
    left: bool


def padding_of(tok) -> Padding:
    """The padding a tokenizers.Tokenizer's saved settings ask for (the pad token's id if it
    has none), after which its own padding is switched off: batches are padded by pad_batch,
    to the longest row of each batch."""
    settings = tok.padding
    if settings:
        pad = Padding(int(settings["pad_id"]), int(settings["pad_type_id"]), settings.get("direction") == "left")
    else:
        pad_id = next((i for t in _PAD_TOKENS if (i := tok.token_to_id(t)) is not None), 0)
        pad = Padding(pad_id, 0, False)
    tok.no_padding()
    return pad


def pad_batch(encodings: Sequence[Any], width: int, pad: Padding) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids, int64 [len(encodings), width], from
    tokenizers Encodings of at most ``width`` tokens each: the rows on the side ``pad`` names,
    the pad ids and attention_mask 0 on the rest."""
    n = len(encodings)
    arrays = {"input_ids": np.full((n, width), pad.pad_id, np.int64),
              "attention_mask": np.zeros((n, width), np.int64),
              "token_type_ids": np.full((n, width), pad.pad_type_id, np.int64)}
    for row, enc in enumerate(encodings):
        k = len(enc.ids)
        at = slice(width - k, width) if pad.left else slice(0, k)
        arrays["input_ids"][row, at] = enc.ids
        arrays["attention_mask"][row, at] = enc.attention_mask
        arrays["token_type_ids"][row, at] = enc.type_ids
    return arrays


class TextEncoder:
    """Sentence embeddings from a .qrt text model, without PyTorch.

    model:    a .qrt path (converted from a Hugging Face / sentence-transformers folder) or an
              InferenceSession of one.
    backend, threads: as InferenceSession.

    ``encode(texts)`` tokenizes with the stored tokenizer (truncating to ``max_seq_length``
    tokens, as sentence-transformers does), runs batches of similar length (sorted, like
    sentence-transformers, so little padding is computed), and returns the graph's
    ``sentence_embedding`` rows in the order of ``texts``: pooled (``pooling``) and, where the
    model was configured so, L2-normalised (``normalize``), all inside the graph.
    """

    def __init__(self, model: str | os.PathLike | Any, *, backend: str = "auto", threads: int | None = None):
        from .session import InferenceSession
        if isinstance(model, InferenceSession):
            if backend != "auto" or threads is not None:
                raise ValueError("backend and threads are the session's: give them to InferenceSession, "
                                 "or pass a path here")
            self.session = model
        else:
            self.session = InferenceSession(model, backend=backend, threads=threads)
        where = f"{os.fspath(model)!r}" if isinstance(model, (str, os.PathLike)) else "this model"
        meta = self.session.metadata.get(METADATA_KEY)
        if not isinstance(meta, dict):
            raise ValueError(f"{where} holds no tokenizer (no {METADATA_KEY!r} metadata): it was not converted "
                             f"from a Hugging Face model folder; convert the folder itself (qrt convert DIR -o "
                             f"model.qrt) to embed text, or run the model on token ids with InferenceSession")
        names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if SENTENCE_OUTPUT not in outputs or "input_ids" not in names or any(n not in TEXT_INPUTS for n in names):
            raise ValueError(f"{where}: a text model has inputs among {', '.join(TEXT_INPUTS)} (input_ids "
                             f"included) and an output {SENTENCE_OUTPUT!r}; this one has inputs {names} and "
                             f"outputs {outputs}")
        tokenizers = import_tokenizers()
        try:
            self.tokenizer = tokenizers.Tokenizer.from_str(meta["tokenizer"])
            self.max_seq_length = int(meta["max_seq_length"])
            self.pooling = list(meta["pooling"])
            self.normalize = bool(meta["normalize"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: its {METADATA_KEY!r} metadata is damaged ({type(e).__name__}: {e}); "
                             f"convert the model folder again") from None
        self._inputs = names
        self._pad = padding_of(self.tokenizer)
        trunc = self.tokenizer.truncation
        self.tokenizer.enable_truncation(max_length=self.max_seq_length,
                                         direction=(trunc or {}).get("direction", "right"))
        dims = next(o.shape for o in self.session.get_outputs() if o.name == SENTENCE_OUTPUT)
        self.dimension = dims[-1] if dims and isinstance(dims[-1], int) else None

    def tokenize(self, texts: Sequence[str]) -> list[Any]:
        """tokenizers Encodings of ``texts`` (special tokens added, truncated to max_seq_length)."""
        texts = _check_texts(texts)
        return self.tokenizer.encode_batch(texts) if texts else []

    def encode(self, texts: Sequence[str], *, batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Embeddings of ``texts``, float32 [len(texts), dimension], row i for texts[i].
        ``progress(done, total)`` is called after each batch."""
        texts = _check_texts(texts)
        return assemble(((rows, self.run_batch(encodings)) for rows, encodings in self.plan(texts, batch_size)),
                        len(texts), self.dimension, progress)

    def plan(self, texts: Sequence[str], batch_size: int) -> list[tuple[np.ndarray, list[Any]]]:
        """The model batches ``encode`` runs: (row indices into ``texts``, their Encodings),
        longest texts first, ``batch_size`` a batch. runtime/ray_embed.py runs the same
        batches on other processes, hence the same bits."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        encodings = self.tokenize(texts)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        return [(order[k:k + batch_size], [encodings[i] for i in order[k:k + batch_size]])
                for k in range(0, len(encodings), batch_size)]

    def run_batch(self, encodings: Sequence[Any]) -> np.ndarray:
        """One model run: the sentence embeddings [len(encodings), dimension] of Encodings
        padded together to the longest of them."""
        arrays = pad_batch(encodings, max(len(e.ids) for e in encodings), self._pad)
        (emb,) = self.session.run([SENTENCE_OUTPUT], {k: arrays[k] for k in self._inputs})
        return emb


def assemble(batches: Iterable[tuple[np.ndarray, np.ndarray]], total: int, dimension: int | None,
             progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embeddings of (row indices, rows [len(indices), D]) batches, in any order, as one
    float32 [total, D] array; ``progress(done, total)`` after each batch."""
    out: np.ndarray | None = None
    done = 0
    for rows, emb in batches:
        if out is None:
            out = np.empty((total, emb.shape[1]), np.float32)
        out[rows] = emb
        done += len(rows)
        if progress is not None:
            progress(done, total)
    return out if out is not None else np.zeros((0, dimension or 0), np.float32)


def read_text_lines(path: str | os.PathLike, where: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark and "\r" line ends allowed), blank
    ones included; ValueError naming ``where`` and the line for a file that is not text."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"{where}: no such file")
    with open(p, "rb") as f:
        data = f.read()
    # a byte-order mark (some Windows editors write one) is not text of the first line
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{where} is not UTF-8 text: byte 0x{body[e.start]:02x} on line {line} ({e.reason}); "
                         f"expected a UTF-8 text file, one sentence or paragraph per line") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ValueError(f"{where} holds a NUL byte (line {line}): a binary file, not text; expected a UTF-8 "
                         f"text file, one sentence or paragraph per line")
    # "\n" only: str.splitlines would also split on form feeds and Unicode separators inside
    # a paragraph
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()                       # the newline that ends the last line
    return [s[:-1] if s.endswith("\r") else s for s in raw]


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("encode takes a list of strings; got one string (wrap it in a list)")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"encode takes strings; item {bad} is a {type(texts[bad]).__name__}")
    return texts


class ProgressLine:
    """``done / total`` with rate and time left on one stderr line, redrawn in place on a
    terminal and at most every ``every`` seconds (plus the last) otherwise."""

    def __init__(self, what: str, stream=None, every: float = 5.0):
        self.what, self.stream, self.every = what, stream or sys.stderr, every
        self.t0 = time.perf_counter()
        self.last = -1.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter() - self.t0
        if done < total and now - self.last < (0.2 if self.tty else self.every):
            return
        self.last = now
        rate = done / now if now > 0 else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        line = (f"{self.what}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {rate:.1f}/s, "
                f"{'done in' if done >= total else 'about'} {now if done >= total else left:.1f} s"
                f"{'' if done >= total else ' left'}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
