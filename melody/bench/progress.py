"""A progress bar for the long phases of a run (100,000 connections take a while to open).

On a terminal it redraws one line in place (``\\r``); anywhere else (a CI log, a file) it
prints one plain line per update, the same text without the bar, so logs stay readable.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 24


class Progress:
    """``show(tag, fraction, text)`` while a phase runs, ``end()`` after it."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.drawn = False

    def show(self, tag: str, fraction: float | None, text: str) -> None:
        if not self.enabled:
            return
        if not self.tty:
            print(f"[{tag}] {text}", file=self.stream, flush=True)
            return
        if fraction is None:
            line = f"[{tag}] {text}"
        else:
            fraction = min(max(fraction, 0.0), 1.0)
            filled = round(fraction * _WIDTH)
            line = (f"[{tag}] [{'#' * filled}{'.' * (_WIDTH - filled)}] "
                    f"{fraction * 100:3.0f}% {text}")
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        """Finish the bar's line (a terminal's next output starts on a fresh line)."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
