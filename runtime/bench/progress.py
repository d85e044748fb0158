"""A progress line for long benchmark sweeps, without dependencies.

Quiet by default: nothing is written until the work has lasted ``min_seconds``, so a quick run
prints nothing at all. After that, on a terminal, one line redrawn in place (carriage return)
at most REDRAW_SECONDS apart; on anything else (a log file, CI output), a plain line at most
every LOG_SECONDS, so logs stay short.

    with Progress(len(cases), "gemm") as bar:
        for case in cases:
            run(case)
            bar.update(note=case.name)
"""
from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_SECONDS = 0.1     # a terminal line redrawn faster than this only flickers
LOG_SECONDS = 5.0        # one log line per this many seconds keeps a 30-minute sweep readable
BAR_WIDTH = 24


class Progress:
    """Counts ``total`` units of work labelled ``label``; use as a context manager."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 min_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.total = max(0, int(total))
        self.label = label
        # Resolved now, not at import: pytest and callers swap sys.stderr after import.
        self.stream = sys.stderr if stream is None else stream
        self.min_seconds = min_seconds
        self.clock = clock
        self.done = 0
        self.note = ""
        self._start = clock()
        self._last_write: float | None = None   # clock() of the last line written
        self._drawn_width = 0                   # characters of the terminal line on screen
        self._tty = _is_tty(self.stream)

    def __enter__(self) -> Progress:
        self._start = self.clock()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, note: str = "") -> None:
        """Record ``n`` more units done; ``note`` (e.g. the case just finished) is shown."""
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        self.note = note
        now = self.clock()
        if now - self._start <= self.min_seconds:
            return
        interval = REDRAW_SECONDS if self._tty else LOG_SECONDS
        if self._last_write is None or now - self._last_write >= interval:
            self._write(now)

    def close(self) -> None:
        """Leave the final state on screen, if anything was shown at all."""
        if self._last_write is None:
            return
        now = self.clock()
        if self._tty:
            self._write(now)
            self.stream.write("\n")
        else:
            self.stream.write(f"{self.label}: {self.done}/{self.total} done in "
                              f"{format_duration(now - self._start)}\n")
        self.stream.flush()
        self._last_write = None

    def _write(self, now: float) -> None:
        self._last_write = now
        if self._tty:
            line = self._bar_line(now)
            width = shutil.get_terminal_size((80, 24)).columns - 1
            line = line[:width]
            # Pad over the previous, possibly longer, line instead of relying on ANSI clears.
            self.stream.write("\r" + line.ljust(self._drawn_width))
            self._drawn_width = len(line)
        else:
            self.stream.write(self._log_line(now) + "\n")
        self.stream.flush()

    def _fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def _eta(self, now: float) -> str:
        if not self.done or not self.total:
            return "?"
        elapsed = now - self._start
        return format_duration(elapsed / self.done * (self.total - self.done))

    def _log_line(self, now: float) -> str:
        line = (f"{self.label}: {self.done}/{self.total} ({self._fraction():.0%}), "
                f"eta {self._eta(now)}")
        return f"{line}, {self.note}" if self.note else line

    def _bar_line(self, now: float) -> str:
        filled = round(self._fraction() * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = (f"{self.label} [{bar}] {self.done}/{self.total} {self._fraction():.0%} "
                f"eta {self._eta(now)}")
        return f"{line} {self.note}" if self.note else line


def format_duration(seconds: float) -> str:
    """12s, 1m05s, 2h03m: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):    # no isatty, or a closed stream
        return False
