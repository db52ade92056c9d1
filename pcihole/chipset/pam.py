"""q35 MCH PAM registers (config 0x90-0x96): what backs 0xc0000-0xfffff, decoded.

Seven bytes split the upper 256 KiB below 1 MiB into 13 segments, as QEMU 7.2's
``hw/pci-host/pam.c`` and ``q35.c`` do: PAM0 bits 5:4 govern 0xf0000-0xfffff (64 KiB);
PAM1-PAM6 each govern two 16 KiB segments from 0xc0000 up, bits 1:0 the lower, bits 5:4
the upper. Each two-bit field is a mode:

- 0 ``PCI``: reads and writes go to the PCI side (the BIOS image's alias at
  0xe0000-0xfffff, QEMU's empty ``pc.rom`` below it); writes are dropped there.
- 1 ``READ_ONLY``: reads from RAM, writes go to the PCI side (dropped).
- 2 ``WRITE_ONLY``: reads from the PCI side, writes to RAM (how firmware copies itself).
- 3 ``READ_WRITE``: RAM.

Firmware (SeaBIOS's ``make_bios_writable``/``make_bios_readonly``) writes 0x30/0x33 to
copy itself into RAM and 0x10/0x11/0x31 to lock it. Nothing here touches the VM: the
machine turns ``runs()`` into memslots (``pcihole.machine.shadow``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pcihole import layout

PAM0 = 0x90
"""MCH config offset of PAM0; PAM1-PAM6 follow."""
PAM_REGISTERS = 7
SHADOW_BASE = layout.PAM_SHADOW_BASE
SHADOW_END = layout.PAM_SHADOW_END
SHADOW_SIZE = SHADOW_END - SHADOW_BASE
BIOS_SEGMENT = layout.PAM_BIOS_SEGMENT
SMALL_SEGMENT = 16 * layout.KiB
ISA_BIOS_MAX = layout.ISA_BIOS_MAX
LOW_FIELD_SHIFT = 0
HIGH_FIELD_SHIFT = 4
FIELD_MASK = 3


class PamMode(enum.IntEnum):
    """One segment's two-bit field."""

    PCI = 0
    READ_ONLY = 1
    WRITE_ONLY = 2
    READ_WRITE = 3

    @property
    def reads_ram(self) -> bool:
        return self in (PamMode.READ_ONLY, PamMode.READ_WRITE)

    @property
    def writes_ram(self) -> bool:
        return self in (PamMode.WRITE_ONLY, PamMode.READ_WRITE)


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of [0xc0000, 0x100000) in one mode."""

    start: int
    size: int
    mode: PamMode

    @property
    def end(self) -> int:
        return self.start + self.size


def _fields() -> list[tuple[int, int, int, int]]:
    """(register index, bit shift, start, size) for each of the 13 segments, by address."""
    fields = []
    for index in range(1, PAM_REGISTERS):
        for half, shift in enumerate((LOW_FIELD_SHIFT, HIGH_FIELD_SHIFT)):
            start = SHADOW_BASE + ((index - 1) * 2 + half) * SMALL_SEGMENT
            fields.append((index, shift, start, SMALL_SEGMENT))
    fields.append((0, HIGH_FIELD_SHIFT, BIOS_SEGMENT, SHADOW_END - BIOS_SEGMENT))
    return fields


FIELDS = tuple(_fields())


def segments(registers: Sequence[int]) -> list[Segment]:
    """The 13 segments, ascending, for PAM0..PAM6 given as seven byte values."""
    if len(registers) != PAM_REGISTERS:
        raise ValueError(f"want {PAM_REGISTERS} PAM registers, got {len(registers)}")
    return [
        Segment(start, size, PamMode(registers[index] >> shift & FIELD_MASK))
        for index, shift, start, size in FIELDS
    ]


def runs(registers: Sequence[int]) -> list[Segment]:
    """Neighbouring segments of one mode merged: one memslot each, the fewest slots."""
    merged: list[Segment] = []
    for segment in segments(registers):
        last = merged[-1] if merged else None
        if last is not None and last.mode is segment.mode and last.end == segment.start:
            merged[-1] = Segment(last.start, last.size + segment.size, last.mode)
        else:
            merged.append(segment)
    return merged


def mode_at(registers: Sequence[int], address: int) -> PamMode:
    """The mode governing ``address`` (inside [0xc0000, 0x100000))."""
    for segment in segments(registers):
        if segment.start <= address < segment.end:
            return segment.mode
    raise ValueError(f"{address:#x} is outside the PAM range")


def touches_pam(offset: int, size: int) -> bool:
    """Whether a config write at ``offset`` reaches a PAM register."""
    return offset < PAM0 + PAM_REGISTERS and offset + size > PAM0
