"""The q35 MCH (00:00.0): its registers that reshape the machine, decoded, and the one
listener that applies them.

PCIEXBAR (config 0x60, 64 bits): enable in bit 0, length in bits 2:1, base in bits 35:25
as QEMU 7.2 masks it (bits above 35 are kept in the register but never decoded). It
places the ECAM window; until firmware enables it there is none.

PAM0-PAM6 (config 0x90-0x96): what backs 0xc0000-0xfffff. Seven bytes split the upper
256 KiB below 1 MiB into 13 segments, as QEMU 7.2's ``hw/pci-host/pam.c`` and ``q35.c``
do: PAM0 bits 5:4 govern 0xf0000-0xfffff (64 KiB); PAM1-PAM6 each govern two 16 KiB
segments from 0xc0000 up, bits 1:0 the lower, bits 5:4 the upper. Each two-bit field is
a mode:

- 0 ``PCI``: reads and writes go to the PCI side (the BIOS image's alias at
  0xe0000-0xfffff, QEMU's empty ``pc.rom`` below it); writes are dropped there.
- 1 ``READ_ONLY``: reads from RAM, writes go to the PCI side (dropped).
- 2 ``WRITE_ONLY``: reads from the PCI side, writes to RAM (how firmware copies itself).
- 3 ``READ_WRITE``: RAM.

Firmware (SeaBIOS's ``make_bios_writable``/``make_bios_readonly``) writes 0x30/0x33 to
copy itself into RAM and 0x10/0x11/0x31 to lock it. Firmware writes these registers
through CF8/CFC (or ECAM itself, once placed); ``Mch.config_written`` hears every such
write and hands the decoded values on: the window's place to the machine, the PAM
registers to the shadow (``q35.shadow`` turns ``runs()`` into memslots).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pcihole import layout
from pcihole.pci.bdf import Bdf, BuiltBdf
from pcihole.pci.devices import PCIEXBAR, Function
from pcihole.pci.ecam import ConfigWrite
from pcihole.pci.topology import Topology

HOST_BRIDGE = BuiltBdf(Bdf(0, 0, 0))
PCIEXBAR_SIZE = 8
PCIEXBAR_ENABLE = 1
PCIEXBAR_LENGTH_SHIFT = 1
PCIEXBAR_LENGTH_BUSES = {0: 256, 1: 128, 2: 64}
"""Length code -> buses decoded (1 MiB each); code 3 is reserved (no window here)."""
PCIEXBAR_BASE_BITS = (1 << 36) - (1 << 28)
"""Base bits every length decodes: 35:28 (QEMU's MCH_HOST_BRIDGE_PCIEXBAR_ADMSK)."""
PCIEXBAR_LOW_BASE_BITS = {256: 0, 128: 1 << 26 | 1 << 25, 64: 1 << 25}
"""Base bits below 28 each length adds, by buses: QEMU 7.2's 128ADMSK (bit 26) and 64ADMSK
(bit 25), one bit lower than the datasheet's 27 and 26; a guest finds the window where
QEMU puts it (checked against a running QEMU in tests/kvm/test_boot.py)."""

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


PlaceWindow = Callable[[int | None, int], None]
"""Put the ECAM window at ``base`` (None: nowhere) decoding ``buses`` buses."""
SetPam = Callable[[Sequence[int]], object]
"""Make 0xc0000-0xfffff follow PAM0..PAM6 (``ShadowMemory.apply``)."""


def decode_pciexbar(value: int) -> tuple[int, int] | None:
    """``(base, buses)`` of the window a PCIEXBAR value asks for, None when disabled.

    The base keeps the address bits QEMU 7.2 keeps: 35:28 for 256 MiB, 35:28, 26 and 25
    for 128 MiB, 35:28 and 25 for 64 MiB (so a window is 32 MiB aligned at least).
    """
    if not value & PCIEXBAR_ENABLE:
        return None
    buses = PCIEXBAR_LENGTH_BUSES.get(value >> PCIEXBAR_LENGTH_SHIFT & 3)
    if buses is None:
        return None
    return value & (PCIEXBAR_BASE_BITS | PCIEXBAR_LOW_BASE_BITS[buses]), buses


def host_bridge(topology: Topology) -> Function:
    """The MCH's function; ValueError when the topology has none at 00:00.0."""
    bridge = topology.get(HOST_BRIDGE)
    if bridge is None or bridge.model != "host-bridge":
        raise ValueError(f"q35 firmware needs the host bridge at {HOST_BRIDGE}")
    return bridge


class Mch:
    """The host bridge's registers: a ``ConfigWrite`` listener that places the ECAM window
    as PCIEXBAR says and the PAM range as PAM0-6 say."""

    def __init__(self, topology: Topology, place_window: PlaceWindow, set_pam: SetPam) -> None:
        self.host_bridge = host_bridge(topology)
        self.max_buses = topology.buses
        self.place_window = place_window
        self.set_pam = set_pam

    def config_written(self, write: ConfigWrite) -> None:
        """A guest's config write changed a function; the MCH follows its own."""
        if write.bdf != HOST_BRIDGE:
            return
        if write.touches(PCIEXBAR, PCIEXBAR_SIZE):
            self.apply_pciexbar()
        if write.touches(PAM0, PAM_REGISTERS):
            self.set_pam(self.pam_registers())

    def apply_pciexbar(self) -> None:
        wanted = decode_pciexbar(self.host_bridge.config.read(PCIEXBAR, PCIEXBAR_SIZE))
        base, buses = (None, self.max_buses) if wanted is None else wanted
        self.place_window(base, min(buses, self.max_buses))

    def pam_registers(self) -> list[int]:
        config = self.host_bridge.config
        return [config.read(PAM0 + index, 1) for index in range(PAM_REGISTERS)]
