"""General English sentences from a Debian package, one a line: distillation text for a
general-purpose sentence encoder.

    apt-get install fortunes
    python benchmarks/generic_text.py OUT.txt

Why: the recovery text of minilm_prune.py was technical (Python's documentation and
docstrings). all-MiniLM-L6-v2 embeds any English, and the evaluation sentences it recovered
worst were the generic ones ("Read more about that in the next section."): they lie outside
what that text covers (benchmarks/RESULTS.md, "General English as distillation text").
The source is fortune-mod's databases (Debian's fortunes, /usr/share/games/fortunes: plain
files, nothing downloaded at run time): quotations, proverbs and jokes. The databases of
offensive or stereotyping humour are left out (SKIP_FORTUNES); attributions ("-- Author") are
cut. Sentences of 4 to 40 words without code or markup characters, distinct, in file order.
(WordNet's usage examples, Debian's wordnet-base, were tried as well and recovered worse:
RESULTS.md, same section.)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
SKIP_FORTUNES = {"ascii-art", "ethnic", "drugs", "men-women", "sex", "kids", "love"}
_MARKUP = re.compile(r"[{}\[\]=<>*|_@#~^\\]|\.\.\.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _ok(s: str) -> bool:
    return 4 <= len(s.split()) <= 40 and not _MARKUP.search(s)


def fortune_sentences() -> list[str]:
    out = []
    for f in sorted(FORTUNES.iterdir()):
        if "." in f.name or f.name in SKIP_FORTUNES or f.is_symlink() or not f.is_file():
            continue          # .dat / .u8 indexes, and the databases left out
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = re.sub(r"\s--\s.*$", "", re.sub(r"\s+", " ", entry).strip())
            out += [s.strip() for s in _SENTENCE_END.split(text) if _ok(s.strip())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the text file to write, one sentence a line")
    args = ap.parse_args()
    if not FORTUNES.is_dir():
        sys.exit(f"{FORTUNES} not found: install the source with `apt-get install fortunes`")
    sentences = list(dict.fromkeys(fortune_sentences()))
    if not sentences:
        sys.exit(f"no sentences found in {FORTUNES}")
    Path(args.out).write_text("\n".join(sentences) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(sentences)} sentences from {FORTUNES}")


if __name__ == "__main__":
    main()
