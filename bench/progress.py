"""Progress on stderr: on a terminal one line rewritten in place; elsewhere one line per step.

A step is what is being done ("sfu S=5: subscribers"); its detail ("ready 3/5") changes while it
runs. Without a terminal (a log file, CI) each step is written once, with its last detail, when
the next one starts: no carriage returns in the file.
"""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0
        self.step: str | None = None
        self.line = ""

    def show(self, step: str, detail: str = "") -> None:
        if not self.enabled:
            return
        text = f"{step} {detail}".rstrip()
        if not self.tty:
            if self.step is not None and step != self.step:
                self._write_line()
            self.step, self.line = step, text
            return
        pad = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self.width = len(text)

    def bar(self, step: str, done: float, total: float, extra: str = "") -> None:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(frac * 30)
        self.show(step, f"[{'#' * filled}{'.' * (30 - filled)}] {done:5.1f}/{total:.0f} s {extra}")

    def done(self) -> None:
        """The current step is over."""
        if not self.enabled:
            return
        if not self.tty:
            if self.step is not None:
                self._write_line()
            return
        if self.width:
            self.stream.write("\n")
            self.stream.flush()
        self.width = 0

    def _write_line(self) -> None:
        self.stream.write(self.line + "\n")
        self.stream.flush()
        self.step, self.line = None, ""
