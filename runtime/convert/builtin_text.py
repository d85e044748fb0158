"""English text that is on every machine: sentences of the Python standard library's docstrings.

Used where a text model is converted without calibration text (`qrt convert DIR` on a Hugging
Face folder, runtime/convert/hf.py): token statistics of real English calibrate far better than
random token ids, and nothing has to be downloaded. The text is technical English (it documents
code); a user's own text (--calib-text) is better, and the report names which one was used.
The benchmarks take their distillation text from here too (benchmarks/minilm_prune.py).
"""
from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

# 8 to 40 words, none of the characters of code, doctests or markup
_CODE = re.compile(r"[{}\[\]=<>*|_]|\.\.\.|>>>")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def is_sentence(s: str) -> bool:
    """A plain English sentence of 8 to 40 words (no code characters)."""
    return 8 <= len(s.split()) <= 40 and not _CODE.search(s)


def docstring_sentences(limit: int, *, exclude: set[str] = frozenset(), per_file: int | None = None) -> list[str]:
    """Distinct sentences of the docstrings of CPython's own standard library sources (read
    with ast, nothing imported; test folders skipped), in a fixed order (sorted paths, then
    source order), none of ``exclude``, at most ``per_file`` from one file (None: no cap, so the
    first files give most), at most ``limit`` in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    seen = set(exclude)
    for f in sorted(root.rglob("*.py")):
        if any(part in ("test", "tests", "idle_test", "site-packages") for part in f.parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        taken = 0
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for s in _SENTENCE_END.split(re.sub(r"\s+", " ", ast.get_docstring(node) or "")):
                if per_file is not None and taken >= per_file:
                    break
                if is_sentence(s) and s not in seen:
                    seen.add(s)
                    out.append(s)
                    taken += 1
                    if len(out) >= limit:
                        return out
    return out
