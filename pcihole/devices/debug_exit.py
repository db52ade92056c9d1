"""QEMU's isa-debug-exit (0xf4 on pcihole's q35): how a test firmware ends the machine."""

from __future__ import annotations

from collections.abc import Callable

DEBUG_EXIT_SIZE = 4
"""Ports the device decodes (QEMU's iosize=4)."""


def exit_status(value: int) -> int:
    """The process exit status QEMU's isa-debug-exit gives for ``value`` (8 bits of it)."""
    return ((value << 1) | 1) & 0xFF


class DebugExit:
    """A write of ``value`` ends the machine with status ``(value << 1) | 1``, as QEMU's
    process does; only the first write counts. Reads answer 0."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.value: int | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if self.value is None:
            self.value = value
            self.stop()
