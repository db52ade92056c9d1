"""Every guest-physical address pcihole uses, in one place.

Each constant says why it is where it is; later ones are derived from earlier ones.
The guest assembly receives the same values through ``--defsym`` (see
``pcihole.guest.build``), so the host and the guest can never disagree.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

PAGE_SIZE = 4 * KiB
"""The smallest unit of a memslot and of a PCI function's configuration space."""
HUGE_PAGE_SIZE = 2 * MiB
"""x86 large page: hole windows keep host and guest addresses congruent modulo this."""

# ---------------------------------------------------------------------------------------
# Low RAM: system tables of the long-mode test guests, then code, stacks and buffers.
RAM_BASE = 0x0
"""Guest RAM starts at zero, like a PC."""
GDT_ADDR = 0x1000
"""Global descriptor table (kernel and user segments, the TSS descriptor)."""
IDT_ADDR = 0x2000
"""Interrupt descriptor table: 32 exception gates that report to the host."""
TSS_ADDR = 0x3000
"""64-bit task-state segment: RSP0 for exceptions raised at ring 3, then the I/O
permission bitmap (this host's KVM clears IOPL at ring 3, so the bitmap grants ports)."""
TSS_IO_BITMAP_OFFSET = 0x68
TSS_SIZE = TSS_IO_BITMAP_OFFSET + 65536 // 8 + 1
"""Header, one bit per port, and the terminating 0xff byte the CPU requires."""
PARAMS_ADDR = 0x6000
"""Host-to-guest parameter block: u64 slots the host fills before the first run."""
PARAMS_SLOTS = PAGE_SIZE // 8
PML4_ADDR = 0x8000
"""Page-map level 4; the PDPT and page directories follow it page by page."""
PDPT_ADDR = PML4_ADDR + PAGE_SIZE
PD_ADDR = PDPT_ADDR + PAGE_SIZE
IDENTITY_MAP_GIB = 4
"""Long-mode guests see the first 4 GiB identity-mapped with 2 MiB user pages."""
PD_END = PD_ADDR + IDENTITY_MAP_GIB * PAGE_SIZE
CODE_ADDR = 0x10000
"""Where a guest program is loaded and linked (its first byte is its entry point)."""
CODE_MAX = 0x60000
"""Room for guest code: 64 KiB below the kernel stack top are left for the stack."""
KERNEL_STACK_TOP = 0x80000
"""Ring-0 stack (and the TSS's RSP0): grows down towards the code."""
USER_STACK_TOP = 0xF0000
"""Ring-3 stack: grows down from below the 1 MiB mark."""
RESULTS_ADDR = 0x100000
"""Guest-to-host result buffer: guests store what they found here, the host reads it."""
RESULTS_SIZE = 2 * MiB
SCRATCH_ADDR = RESULTS_ADDR + RESULTS_SIZE
"""Free RAM for guest programs' own use."""
SCRATCH_SIZE = 1 * MiB
RAM_SIZE = SCRATCH_ADDR + SCRATCH_SIZE
"""Test guests need only this much RAM."""

# ---------------------------------------------------------------------------------------
# Port I/O.
REPORT_PORT = 0x500
"""Guest reports (sync, done, assert, exception): see ``pcihole/guest/asm/runtime.inc``."""
PCI_CONFIG_ADDRESS_PORT = 0xCF8
"""PCI configuration mechanism #1: address register."""
PCI_CONFIG_DATA_PORT = 0xCFC
"""PCI configuration mechanism #1: data window (4 bytes)."""
DEBUGCON_PORT = 0x402
"""QEMU's debug console (isa-debugcon on q35)."""
DEBUG_EXIT_PORT = 0xF4
"""QEMU's isa-debug-exit device."""

# ---------------------------------------------------------------------------------------
# PCI: the ECAM (MMCONFIG) window and room for devices.
ECAM_BASE = 0xB0000000
"""Where q35 puts MMCONFIG by default; 256 MiB aligned, so any bus count fits below 4 GiB."""
ECAM_BUS_SIZE = 1 * MiB
"""32 devices x 8 functions x 4 KiB."""
ECAM_MAX_BUSES = 256
ECAM_MAX_SIZE = ECAM_MAX_BUSES * ECAM_BUS_SIZE
ECAM_FUNCTION_SIZE = PAGE_SIZE
PCI_MMIO_BASE = ECAM_BASE + ECAM_MAX_SIZE
"""32-bit BAR space starts right after the largest ECAM window."""
TEST_MMIO_BASE = 0xD0000000
"""Where tests place small MMIO devices (inside the BAR space, never under a window)."""
FIRMWARE_TOP = 1 << 32
"""A flat firmware image ends here; the reset vector is its last 16 bytes."""

assert TSS_ADDR + TSS_SIZE <= PARAMS_ADDR, "TSS overlaps the parameter block"
assert PD_END <= CODE_ADDR, "page tables overlap guest code"
assert CODE_ADDR + CODE_MAX <= KERNEL_STACK_TOP - 0x10000, "code overlaps the ring-0 stack"
assert ECAM_BASE % ECAM_MAX_SIZE == 0
assert IDENTITY_MAP_GIB * GiB >= ECAM_BASE + ECAM_MAX_SIZE


def ecam_size(buses: int) -> int:
    """Bytes of ECAM window for ``buses`` buses."""
    return buses * ECAM_BUS_SIZE


def asm_symbols() -> dict[str, int]:
    """The constants guest assembly may use, by name."""
    return {
        name: value
        for name, value in globals().items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }
