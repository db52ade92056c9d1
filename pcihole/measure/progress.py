"""Progress for long steps: a bar on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``step(label)`` ``total`` times; ``done()`` at the end. Writes to stderr."""

    def __init__(self, title: str, total: int, stream: TextIO | None = None) -> None:
        self.title = title
        self.total = max(total, 1)
        self.count = 0
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.count += 1
        elapsed = time.monotonic() - self.started
        if self.terminal:
            width = 30
            filled = width * self.count // self.total
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(
                f"\r{self.title} [{bar}] {self.count}/{self.total} {label:<40.40} {elapsed:5.1f}s"
            )
        else:
            self.stream.write(
                f"{self.title}: {self.count}/{self.total} {label} ({elapsed:.1f} s)\n"
            )
        self.stream.flush()

    def done(self) -> None:
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()
