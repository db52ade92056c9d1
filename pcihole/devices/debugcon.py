"""QEMU's isa-debugcon: the port firmware prints to (0x402 on q35)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

DEBUGCON_READBACK = 0xE9
"""What QEMU's isa-debugcon answers to a read (firmware uses it to detect the port)."""

Stamp = tuple[float, int, int]
"""(seconds since the run started, exits so far, ECAM exits so far)."""


@dataclass(frozen=True)
class ConsoleLine:
    """One line of debug console output and the machine's counters around it."""

    text: str
    seconds: float
    """When its newline came, since the run started."""
    exits: int
    """Every exit so far, the newline's own OUT included."""
    config_exits: int
    """ECAM accesses that exited so far (holes and present functions)."""
    first_seconds: float
    """The same three when the line's first byte came."""
    first_exits: int
    first_config_exits: int

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "seconds": round(self.seconds, 6),
            "exits": self.exits,
            "config_exits": self.config_exits,
            "first_seconds": round(self.first_seconds, 6),
            "first_exits": self.first_exits,
            "first_config_exits": self.first_config_exits,
        }


class DebugConsole:
    """QEMU's isa-debugcon: each byte written goes out; reads answer 0xe9.

    Each line is kept as a ``ConsoleLine`` with ``clock``'s stamps at its first byte and
    at its newline, so a guest can time what happens between two lines it prints.
    ``after_write`` is called after every byte (the machine watches for ``--until``).
    """

    def __init__(
        self,
        sink: BinaryIO | None = None,
        clock: Callable[[], Stamp] | None = None,
        after_write: Callable[[], None] | None = None,
    ) -> None:
        self.sink = sink
        self.clock = clock or (lambda: (0.0, 0, 0))
        self.after_write = after_write
        self.output = bytearray()
        self.lines: list[ConsoleLine] = []
        self._line = bytearray()
        self._first: Stamp = (0.0, 0, 0)

    def read(self, offset: int, size: int) -> int:
        return DEBUGCON_READBACK

    def write(self, offset: int, size: int, value: int) -> None:
        byte = value & 0xFF
        if not self._line:
            self._first = self.clock()
        self.output.append(byte)
        self._line.append(byte)
        if byte == 0x0A:
            self._end_line()
        if self.after_write is not None:
            self.after_write()

    def _end_line(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        if self.sink is not None:
            self.sink.write(line)
            self.sink.flush()
        text = line.decode("utf-8", "replace").rstrip("\n")
        self.lines.append(ConsoleLine(text, *self.clock(), *self._first))

    def flush(self) -> None:
        """Hand on a last line without its newline."""
        if self._line:
            self._end_line()
