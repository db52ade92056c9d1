"""The e820 memory map QEMU 7.2 gives a q35 guest through fw_cfg's ``etc/e820``.

QEMU lists KVM's private pages first (KVM's accelerator adds them before the machine adds
its RAM), then, for an AMD vCPU, the HyperTransport range below 1 TiB, then RAM below
4 GiB, then RAM above 4 GiB when there is any. ``Q35Ram`` computes where that RAM goes for
a vCPU. QEMU does not carve out the legacy 640 KiB - 1 MiB hole or the BIOS: SeaBIOS adds
those reservations itself.
Each entry is 20 bytes, little-endian: u64 address, u64 length, u32 type.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from pcihole import layout
from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.errors import Bug, EnvironmentProblem

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
    """A malformed e820 table, or a RAM layout QEMU's q35 machine would refuse (callers
    check the user's sizes first)."""


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


class RamLayoutError(E820Error):
    """A RAM size QEMU's q35 machine refuses: not a positive number of whole pages."""


class AddressBitsError(EnvironmentProblem):
    """RAM and the 64-bit PCI window would end past what the vCPU (the host's CPU under
    KVM) addresses: the same size fits a host with more physical address bits."""


@dataclass(frozen=True, slots=True)
class Q35Ram:
    """RAM as QEMU 7.2's q35 machine lays it out for a vCPU (``pc_q35_init``,
    ``pc_memory_init``): the one computation of the split that the memslots, CMOS, e820
    and fw_cfg all read. Build it with ``for_vcpu``."""

    size: int
    below_4g: int
    """Bytes from address 0."""
    above_4g: int
    """Bytes from ``above_4g_start``; the host memory right after ``below_4g``'s."""
    above_4g_start: int
    """4 GiB, or 1 TiB for an AMD vCPU whose RAM and 64-bit PCI window would reach
    AMD's HyperTransport range."""
    ht_reserved: bool
    """e820 reserves AMD's HyperTransport range (AMD vCPU, 40 or more address bits)."""

    @classmethod
    def for_vcpu(cls, size: int, vcpu: VcpuIdentity) -> Q35Ram:
        """``size`` bytes of RAM for ``vcpu``; where QEMU refuses, ``RamLayoutError`` (the
        size) or ``AddressBitsError`` (the vCPU)."""
        if size <= 0 or size % layout.PAGE_SIZE:
            raise RamLayoutError(f"RAM size {size:#x} must be a positive number of 4 KiB pages")
        below = q35_below_4g(size)
        above = size - below
        start = layout.HIGH_RAM_BASE
        if vcpu.amd and _max_used_address(start + above, vcpu) >= layout.AMD_HT_START:
            start = layout.AMD_ABOVE_1TB_START
        used, reachable = _max_used_address(start + above, vcpu), (1 << vcpu.phys_bits) - 1
        if used > reachable:
            raise AddressBitsError(
                f"{size // layout.MiB} MiB of RAM and q35's 64-bit PCI window end at "
                f"{used:#x}, past the {reachable:#x} a vCPU with {vcpu.phys_bits} physical "
                "address bits reaches"
            )
        return cls(size, below, above, start, vcpu.amd and vcpu.phys_bits >= 40)

    @property
    def banks(self) -> list[tuple[int, int]]:
        """(guest address, length) of each piece, in host-memory order."""
        banks = [(layout.RAM_BASE, self.below_4g)]
        if self.above_4g:
            banks.append((self.above_4g_start, self.above_4g))
        return banks

    @property
    def pci_hole64(self) -> tuple[int, int]:
        """The 64-bit PCI window after RAM (first and last byte), as QEMU's DSDT gives it."""
        return pci_hole64(self.above_4g_start + self.above_4g)

    def e820(self) -> list[E820Entry]:
        """QEMU's ``etc/e820``, in QEMU's order: KVM's pages (the accelerator adds them
        first), the HyperTransport range, RAM below 4 GiB, RAM above."""
        kvm = E820Entry(layout.KVM_IDENTITY_MAP_ADDR, layout.KVM_PRIVATE_SIZE, E820Type.RESERVED)
        entries = [kvm]
        if self.ht_reserved:
            entries.append(E820Entry(layout.AMD_HT_START, layout.AMD_HT_SIZE, E820Type.RESERVED))
        entries += [E820Entry(start, length, E820Type.RAM) for start, length in self.banks]
        return entries


def q35_below_4g(size: int) -> int:
    """How much of ``size`` bytes of RAM q35 puts below 4 GiB, whatever the vCPU: once RAM
    reaches the ECAM window only 2 GiB stay low, so that the rest starts 1 GiB aligned in
    host memory (QEMU's lowmem rule)."""
    return size if size < layout.Q35_LOW_RAM_MAX else layout.Q35_LOW_RAM_SPLIT


def pci_hole64(ram_end: int) -> tuple[int, int]:
    """The 64-bit PCI window (first and last byte) QEMU's q35 reserves after RAM that
    ends at ``ram_end``: from the next 1 GiB boundary, ``Q35_PCI_HOLE64_SIZE`` long."""
    hole_start = -(-ram_end // layout.GiB) * layout.GiB
    return hole_start, hole_start + layout.Q35_PCI_HOLE64_SIZE - 1


def _max_used_address(ram_end: int, vcpu: VcpuIdentity) -> int:
    """QEMU's pc_max_used_gpa: the 64-bit PCI window's last byte, after RAM (1 GiB
    aligned); a vCPU of 32 bits or fewer has no window, only its address space."""
    if vcpu.phys_bits <= 32:
        return (1 << vcpu.phys_bits) - 1
    return pci_hole64(ram_end)[1]


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
