"""The e820 memory map QEMU 7.2 gives a q35 guest through fw_cfg's ``etc/e820``.

QEMU lists KVM's private pages first (KVM's accelerator adds them before the machine adds
its RAM), then RAM below 4 GiB, then RAM above 4 GiB when there is any. It does not carve
out the legacy 640 KiB - 1 MiB hole or the BIOS: SeaBIOS adds those reservations itself.
Each entry is 20 bytes, little-endian: u64 address, u64 length, u32 type.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from pcihole import layout
from pcihole.errors import Bug

ENTRY = struct.Struct("<QQI")
"""One ``struct e820_entry`` as QEMU packs it (no padding)."""


class E820Type(enum.IntEnum):
    """Kinds of e820 range."""

    RAM = 1
    """Usable memory."""
    RESERVED = 2
    """Not for the OS: firmware, KVM's private pages, MMIO."""
    ACPI = 3
    """ACPI tables, reclaimable once read."""
    NVS = 4
    """ACPI non-volatile storage."""
    UNUSABLE = 5
    """Memory with errors."""


class E820Error(Bug):
    """A RAM size QEMU's q35 machine would refuse, or a malformed e820 table."""


@dataclass(frozen=True, slots=True)
class E820Entry:
    address: int
    length: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.address + self.length

    def pack(self) -> bytes:
        return ENTRY.pack(self.address, self.length, self.type)


def q35_ram_split(ram_size: int) -> tuple[int, int]:
    """(RAM below 4 GiB, RAM above 4 GiB) for ``ram_size`` bytes, as pc_q35_init splits it."""
    if ram_size <= 0 or ram_size % layout.PAGE_SIZE:
        raise E820Error(f"RAM size {ram_size:#x} must be a positive number of 4 KiB pages")
    low_limit = (
        layout.Q35_LOW_RAM_SPLIT if ram_size >= layout.Q35_LOW_RAM_MAX else layout.Q35_LOW_RAM_MAX
    )
    if ram_size >= low_limit:
        return low_limit, ram_size - low_limit
    return ram_size, 0


def q35_e820(ram_size: int) -> list[E820Entry]:
    """The entries of QEMU's ``etc/e820`` for a q35 guest under KVM, in QEMU's order."""
    below, above = q35_ram_split(ram_size)
    entries = [
        E820Entry(layout.KVM_IDENTITY_MAP_ADDR, layout.KVM_PRIVATE_SIZE, E820Type.RESERVED),
        E820Entry(layout.RAM_BASE, below, E820Type.RAM),
    ]
    if above:
        entries.append(E820Entry(layout.HIGH_RAM_BASE, above, E820Type.RAM))
    return entries


def pack(entries: Iterable[E820Entry]) -> bytes:
    """The ``etc/e820`` file: the entries back to back."""
    return b"".join(entry.pack() for entry in entries)


def unpack(data: bytes) -> list[E820Entry]:
    """Entries of an ``etc/e820`` file; a partial entry or an unknown type is an error."""
    if len(data) % ENTRY.size:
        raise E820Error(f"e820 table of {len(data)} bytes is not a whole number of entries")
    entries = []
    for address, length, kind in ENTRY.iter_unpack(data):
        try:
            entries.append(E820Entry(address, length, E820Type(kind)))
        except ValueError:
            raise E820Error(f"e820 entry at {address:#x} has unknown type {kind}") from None
    return entries
