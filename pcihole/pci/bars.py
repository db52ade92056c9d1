"""Which address ranges a function's BARs decode right now, from its configuration space.

Pure functions over ``ConfigSpace``: the machine calls them after every configuration write
and moves register blocks on its MMIO and port buses to match. The rules are QEMU 7.2's
(``pci_bar_address`` in hw/pci/pci.c, ``pci_bridge_region_init`` in hw/pci/pci_bridge.c):

- an I/O BAR decodes while COMMAND bit 0 (I/O space) is set, a memory BAR while bit 1
  (memory space) is set;
- a BAR at address 0 decodes nothing (firmware leaves unassigned BARs at 0), nor does one
  whose range wraps or leaves its address space (a 32-bit BAR past 4 GiB; an I/O BAR past
  the 64 KiB of x86 port space; the all-ones a guest writes to size a BAR);
- a bridge forwards to its secondary side only what falls inside its windows (I/O window
  while its own I/O bit is set; memory and prefetchable windows while its memory bit is
  set; an empty window when base > limit), so a function behind bridges decodes the part of
  its BAR that every bridge above it forwards. The VGA and ISA bridge-control modes are not
  modelled (no device here answers legacy VGA ranges).

The expansion ROM BAR is left out: no model has ROM contents behind it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pcihole.pci.config import (
    COMMAND,
    IO_BASE,
    IO_BASE_UPPER16,
    IO_LIMIT,
    IO_LIMIT_UPPER16,
    MEMORY_BASE,
    MEMORY_LIMIT,
    PREF_BASE_UPPER32,
    PREF_LIMIT_UPPER32,
    PREF_MEMORY_BASE,
    PREF_MEMORY_LIMIT,
    BarKind,
    ConfigSpace,
)

COMMAND_IO = 0x1
"""COMMAND bit 0: the function answers I/O-space accesses."""
COMMAND_MEMORY = 0x2
"""COMMAND bit 1: the function answers memory-space accesses."""
IO_SPACE_END = 1 << 16
"""x86 port space: ``in``/``out`` reach 64 KiB of ports, nothing above."""
MEMORY32_END = 1 << 32
MEMORY64_END = 1 << 64
_IO_WINDOW_32BIT = 0x1
"""Low nibble of I/O base/limit: 1 means the upper 16 bits live at 0x30/0x32."""
_PREF_WINDOW_64BIT = 0x1
"""Low nibble of prefetchable base/limit: 1 means the upper 32 bits live at 0x28/0x2c."""
_IO_WINDOW_GRANULE = 1 << 12
_MEMORY_WINDOW_GRANULE = 1 << 20


class Space(enum.Enum):
    """The address space a range lives in."""

    IO = "io"
    """Ports, reached by ``in``/``out``."""
    MEMORY = "memory"
    """Guest-physical addresses."""


@dataclass(frozen=True, order=True)
class Span:
    """``[base, end)`` in one address space."""

    space: Space
    base: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.base

    def intersect(self, other: Span) -> Span | None:
        if other.space is not self.space:
            return None
        base, end = max(self.base, other.base), min(self.end, other.end)
        return Span(self.space, base, end) if base < end else None

    def __str__(self) -> str:
        return f"{self.space.value} [{self.base:#x}, {self.end:#x})"


@dataclass(frozen=True)
class DecodedBar:
    """A BAR that decodes: which one, the whole range the function claims, and the part of
    it that reaches the function through the bridges above (``offset`` is where ``span``
    starts inside the BAR, so a register block serves ``offset`` onwards)."""

    index: int
    claimed: Span
    span: Span

    @property
    def offset(self) -> int:
        return self.span.base - self.claimed.base


def _space_of(kind: BarKind) -> Space:
    return Space.IO if kind is BarKind.IO else Space.MEMORY


def claimed_bars(config: ConfigSpace) -> tuple[tuple[int, Span], ...]:
    """``(BAR index, range)`` of every BAR the function decodes now, by its own registers."""
    command = config.read(COMMAND, 2)
    claimed: list[tuple[int, Span]] = []
    for bar in config.bars:
        enabled = command & (COMMAND_IO if bar.kind is BarKind.IO else COMMAND_MEMORY)
        if not enabled:
            continue
        base = config.bar_address(bar.index) & ~(bar.size - 1)
        end = base + bar.size
        # QEMU: address 0 means unassigned, and a memory BAR whose last byte is the last of
        # its space is what sizing (all ones) leaves behind: neither decodes. Ports end at
        # 64 KiB; a BAR may use the last one.
        if bar.kind is BarKind.IO:
            outside = end > IO_SPACE_END
        else:
            outside = end >= (MEMORY32_END if bar.kind is BarKind.MEMORY32 else MEMORY64_END)
        if base == 0 or outside:
            continue
        claimed.append((bar.index, Span(_space_of(bar.kind), base, end)))
    return tuple(claimed)


def bridge_windows(bridge: ConfigSpace) -> tuple[Span, ...]:
    """What a type 1 bridge forwards from its primary to its secondary side right now."""
    command = bridge.read(COMMAND, 2)
    windows: list[Span] = []
    if command & COMMAND_IO:
        base, limit = bridge.read(IO_BASE, 1), bridge.read(IO_LIMIT, 1)
        start = (base & 0xF0) * (_IO_WINDOW_GRANULE >> 4)
        last = (limit & 0xF0) * (_IO_WINDOW_GRANULE >> 4) + _IO_WINDOW_GRANULE - 1
        if base & 0xF == _IO_WINDOW_32BIT:
            start |= bridge.read(IO_BASE_UPPER16, 2) << 16
            last |= bridge.read(IO_LIMIT_UPPER16, 2) << 16
        windows.append(Span(Space.IO, start, last + 1))
    if command & COMMAND_MEMORY:
        windows.append(_memory_window(bridge.read(MEMORY_BASE, 2), bridge.read(MEMORY_LIMIT, 2)))
        base, limit = bridge.read(PREF_MEMORY_BASE, 2), bridge.read(PREF_MEMORY_LIMIT, 2)
        upper = (0, 0)
        if base & 0xF == _PREF_WINDOW_64BIT:
            upper = (bridge.read(PREF_BASE_UPPER32, 4), bridge.read(PREF_LIMIT_UPPER32, 4))
        windows.append(_memory_window(base, limit, upper))
    return tuple(window for window in windows if window.base < window.end)


def _memory_window(base: int, limit: int, upper: tuple[int, int] = (0, 0)) -> Span:
    start = (base & 0xFFF0) << 16 | upper[0] << 32
    last = (limit & 0xFFF0) << 16 | (_MEMORY_WINDOW_GRANULE - 1) | upper[1] << 32
    return Span(Space.MEMORY, start, last + 1)


def forwarded(span: Span, bridges: Sequence[ConfigSpace]) -> Span | None:
    """The part of ``span`` every bridge in ``bridges`` (root side first) forwards.

    A BAR that straddles a window edge is cut to the part inside. Should two windows of one
    bridge each hold part of it (memory and prefetchable windows side by side), the first
    piece is kept: no firmware assigns a BAR across two windows.
    """
    remaining: Span | None = span
    for bridge in bridges:
        if remaining is None:
            return None
        windows = [remaining.intersect(window) for window in bridge_windows(bridge)]
        remaining = next((piece for piece in windows if piece is not None), None)
    return remaining


def decoded_bars(
    config: ConfigSpace, bridges: Iterable[ConfigSpace] = ()
) -> tuple[DecodedBar, ...]:
    """Every BAR of ``config`` that reaches the function now, with the bridges above it
    (root side first) taken into account."""
    path = tuple(bridges)
    decoded: list[DecodedBar] = []
    for index, claimed in claimed_bars(config):
        span = forwarded(claimed, path)
        if span is not None:
            decoded.append(DecodedBar(index, claimed, span))
    return tuple(decoded)
