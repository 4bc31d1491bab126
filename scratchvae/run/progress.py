"""A one-line progress display for long loops (stderr, redrawn in place on a terminal)."""
from __future__ import annotations

import sys
import time


class Progress:
    """``Progress(total, label)``; call ``update(done, text)``, then ``close()``.

    The line goes to ``file`` (as print's does; stderr by default). On a
    terminal it is redrawn at most ten times a second; elsewhere (logs, CI)
    nothing is drawn per update, so logs stay short. ``quiet`` silences it
    entirely.
    """

    def __init__(self, total: int, label: str, file=None, quiet: bool = False):
        self.total, self.label = total, label
        self.file = sys.stderr if file is None else file
        self.live = not quiet and getattr(self.file, "isatty", lambda: False)()
        self._last = 0.0
        self._width = 0

    def update(self, done: int, text: str = "") -> None:
        now = time.perf_counter()
        if not self.live or (now - self._last < 0.1 and done < self.total):
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(20 * frac)
        line = f"{self.label} [{bar:<20}] {done}/{self.total} {text}"
        self.file.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.file.flush()

    def close(self) -> None:
        if self.live and self._width:
            self.file.write("\r" + " " * self._width + "\r")
            self.file.flush()
