"""Interrupt lines as devices see them: a callable taking the line's new level.

A device is given an ``IrqLine`` at construction (``True`` raises the line, ``False``
lowers it) and knows nothing of what is behind it: the machine may connect it to
``KVM_IRQ_LINE``, to a test's list, or to nothing.
"""

from __future__ import annotations

from collections.abc import Callable

IrqLine = Callable[[bool], None]
"""Set an interrupt line's level: ``True`` raised, ``False`` lowered."""


def no_irq(level: bool) -> None:
    """An unconnected line: the device may drive it, nobody listens."""


class IrqPin:
    """A device's output line that forwards only changes of level.

    Every forwarded change may cost the machine an ioctl, so asserting a level that is
    already asserted is swallowed here, once, rather than in every device.
    """

    __slots__ = ("_line", "level")

    def __init__(self, line: IrqLine) -> None:
        self._line = line
        self.level = False
        """The level the line was last driven to (lines start lowered)."""

    def set(self, level: bool) -> None:
        if level != self.level:
            self.level = level
            self._line(level)

    def pulse(self) -> None:
        """Lower then raise: a fresh edge for an edge-triggered ISA interrupt."""
        self.set(False)
        self.set(True)
