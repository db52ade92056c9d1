"""Every guest-physical address pcihole uses, in one place.

Each constant says why it is where it is; later ones are derived from earlier ones.
The guest assembly receives the same values as preprocessor definitions (``-D``, see
``asm_symbols`` and ``pcihole.guest.build``), so the host and the guest can never
disagree.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
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
RECURSIVE_RESULTS_OFFSET = RESULTS_SIZE // 2
"""The scan guest's recursive results follow its brute-force ones, halfway in."""
DUMP_ROOM = RESULTS_SIZE // PAGE_SIZE
"""Config pages the ecam_dump guest's result buffer holds (512 with a 2 MiB buffer)."""
DUMP_LIST_ADDR = SCRATCH_ADDR
"""Where ecam_dump lists the address (u32 bus << 8 | devfn) of each page it copied."""
STOP_FLAG_ADDR = SCRATCH_ADDR + SCRATCH_SIZE - 8
"""The last u64 of scratch: a test guest that must keep running while the host changes
something polls it and stops once the host makes it non-zero."""
RAM_SIZE = SCRATCH_ADDR + SCRATCH_SIZE
"""Test guests need only this much RAM."""

# ---------------------------------------------------------------------------------------
# Firmware machines (``pcihole boot``): a PC's memory below 4 GiB, as QEMU's q35 lays it out.
BOOT_RAM_SIZE = 128 * MiB
"""QEMU's default -m."""
LOW_RAM_END = 0xA0000
"""Conventional memory ends at 640 KiB; the VGA window and option ROM space follow."""
HIGH_RAM_START = 1 * MiB
ISA_BIOS_MAX = 128 * KiB
"""The tail of the image that also appears just below 1 MiB (QEMU's isa-bios alias)."""
PAM_SHADOW_BASE = 0xC0000
"""The first byte the MCH's PAM registers govern (option ROMs, then the BIOS)."""
PAM_BIOS_SEGMENT = 0xF0000
"""PAM0's one 64 KiB segment: the BIOS's own."""
PAM_SHADOW_END = HIGH_RAM_START

# ---------------------------------------------------------------------------------------
# Linux as QEMU 7.2's -kernel places it (hw/i386/x86.c x86_load_linux).
LINUX_SETUP_ADDR = 0x10000
"""A protocol 2.02+ kernel's real-mode setup; its heap ends at the command line."""
LINUX_CMDLINE_ADDR = 0x20000
"""A protocol 2.02+ kernel's command line."""
LINUX_KERNEL_ADDR = HIGH_RAM_START
"""A bzImage's protected-mode part."""
LINUX_LOW_SETUP_ADDR = 0x90000
"""Setup of a kernel before protocol 2.02 (or not loaded high)."""
LINUX_LOW_CMDLINE_END = 0x9A000
"""Such a kernel's command line ends here (it starts 16-byte rounded below)."""
LINUX_LOW_KERNEL_ADDR = 0x10000
"""A zImage's protected-mode part (not loaded high)."""
LINUX_OLD_INITRD_MAX = 0x37FFFFFF
"""The highest initrd byte before protocol 2.03 gave ``initrd_addr_max``."""
Q35_ACPI_DATA_SIZE = 0x28000
"""QEMU's pc/q35 ``acpi_data_size``: the top of low RAM an initrd must leave free."""
PVH_DATA_ADDR = 0x8000
"""pcihole's PVH option ROM builds its GDT, hvm_start_info, module list and memory map
here (above SeaBIOS's stack below 0x7000, free once SeaBIOS hands over to a boot ROM)."""
PVH_CMDLINE_ADDR = LINUX_CMDLINE_ADDR
"""Where the PVH option ROM puts the command line, as linuxboot does."""
PVH_CMDLINE_MAX = 0x10000
"""The room there (64 KiB, below 0x30000)."""

# ---------------------------------------------------------------------------------------
# Port I/O.
REPORT_PORT = 0x500
"""Guest reports (sync, done, assert, exception): see ``pcihole/guest/asm/runtime.inc``."""
CPUID_PROBE_CODE = 0x1000
"""Where the CPUID probe guest's real-mode code sits (``arch.x86.cpuid_probe``); it
reports to ``REPORT_PORT``."""
CPUID_PROBE_RAM_SIZE = 0x10000
"""The probe guest's RAM: 64 KiB from 0, what real mode reaches with CS and DS at 0."""
PCI_CONFIG_ADDRESS_PORT = 0xCF8
"""PCI configuration mechanism #1: address register."""
PCI_CONFIG_DATA_PORT = 0xCFC
"""PCI configuration mechanism #1: data window (4 bytes)."""
DEBUGCON_PORT = 0x402
"""QEMU's debug console (isa-debugcon on q35)."""
DEBUG_EXIT_PORT = 0xF4
"""QEMU's isa-debug-exit device."""

# Legacy PC and q35 platform ports and ISA interrupts (as QEMU's q35 machine places them;
# the i8254 PIT at 0x40-0x43 and 0x61 is KVM_CREATE_PIT2's, in the kernel).
PORT_92 = 0x92
"""System control port A: bit 0 is a fast reset, bit 1 the A20 gate."""
APM_PORT = 0xB2
"""ICH9 APM control (APM_CNT, the FADT's SMI_CMD) at 0xb2, APM status (APM_STS) at 0xb3."""
APM_PORTS = 2
CMOS_PORT = 0x70
"""MC146818 RTC/CMOS: index register at 0x70 (bit 7 masks NMI), data at 0x71."""
CMOS_PORTS = 2
CMOS_IRQ = 8
"""The RTC's ISA interrupt."""
SERIAL_COM1_PORT = 0x3F8
"""16550A UART (COM1): eight registers; its interrupt is ISA IRQ 4."""
SERIAL_COM1_IRQ = 4
SERIAL_PORTS = 8
I8042_PORT = 0x60
"""i8042 PS/2 controller: data at 0x60, status/command at 0x64 (0x61 between is the PIT's
speaker port, which KVM_CREATE_PIT2 answers in the kernel)."""
I8042_PORTS = 5
KEYBOARD_IRQ = 1
"""The i8042's keyboard port interrupts on ISA IRQ 1, its mouse port on 12."""
MOUSE_IRQ = 12
FW_CFG_PORT = 0x510
"""QEMU's fw_cfg: selector (16 bits) at 0x510, data (8 bits) at 0x511."""
FW_CFG_DMA_PORT = 0x514
"""fw_cfg DMA address register: 64 bits, big-endian, written high half then low half."""
FW_CFG_PORTS = 2
FW_CFG_DMA_PORTS = 8
ACPI_PM_BASE = 0x600
"""Where SeaBIOS puts the ICH9 ACPI PM block through PMBASE when fw_cfg has
``etc/table-loader`` (0xb000 without it): the address pcihole's FADT names."""
ACPI_PM_SIZE = 0x80
"""PM1 event/control, PM timer, GPE0 and the rest of the ICH9 PMIO block, wherever the
LPC's PMBASE puts it (SeaBIOS: 0x600)."""
RESET_CONTROL_PORT = 0xCF9
"""ICH9 reset control register (a write of 0x06 or 0x0e resets the machine)."""
SCI_IRQ = 9
"""The ACPI SCI: ISA IRQ 9, where the ICH9's ACPI_CNTL routes it as SeaBIOS programs it."""

# ---------------------------------------------------------------------------------------
# PCI: the ECAM (MMCONFIG) window and room for devices.
ECAM_BASE = 0xB0000000
"""Where q35 puts MMCONFIG by default; 256 MiB aligned, so any bus count fits below 4 GiB."""
ECAM_BUS_SIZE = 1 * MiB
"""32 devices x 8 functions x 4 KiB."""
ECAM_MAX_BUSES = 256
ECAM_MAX_SIZE = ECAM_MAX_BUSES * ECAM_BUS_SIZE
TEST_MMIO_BASE = 0xD0000000
"""Where tests place small MMIO devices (in the 32-bit BAR space after the largest ECAM
window, never under a window)."""
IOAPIC_ADDR = 0xFEC00000
"""The I/O APIC (KVM's in-kernel one): the 32-bit PCI window ends below it."""
LAPIC_ADDR = 0xFEE00000
"""Every local APIC's registers."""
FIRMWARE_TOP = 1 << 32
"""A flat firmware image ends here; the reset vector is its last 16 bytes."""
IMAGE_ALIGN = 64 * KiB
"""QEMU takes a -bios image only in whole 64 KiB units."""
MAX_IMAGE_SIZE = 16 * MiB
"""Images stay clear of the real-mode TSS pages KVM may use just below 0xff000000."""

# ---------------------------------------------------------------------------------------
# The PC memory map real firmware sees (QEMU 7.2 q35): e820, BIOS areas, ACPI search.
BDA_EBDA_SEGMENT = 0x40E
"""BIOS data area word holding the EBDA's segment: the first place ACPI looks for the RSDP."""
EBDA_RSDP_SEARCH_SIZE = 1 * KiB
"""ACPI searches only the EBDA's first KiB."""
BIOS_AREA_START = 0xE0000
"""Read-only BIOS area below 1 MiB: ACPI's second RSDP search range, 16-byte steps."""
BIOS_AREA_END = HIGH_RAM_START
Q35_LOW_RAM_MAX = ECAM_BASE
"""q35 keeps at most this much RAM below 4 GiB: MMCONFIG (where the MCH puts it by
default) and the 32-bit PCI hole follow (QEMU's pc_q35_init)."""
Q35_LOW_RAM_SPLIT = 2 * GiB
"""With Q35_LOW_RAM_MAX or more RAM, QEMU keeps only 2 GiB low so that guest 1 GiB
boundaries stay 1 GiB aligned in host memory; the rest goes above 4 GiB."""
HIGH_RAM_BASE = 4 * GiB
"""RAM that does not fit below the PCI hole continues here."""
Q35_PCI_HOLE64_SIZE = 32 * GiB
"""The 64-bit PCI window QEMU's q35 host reserves after RAM (its pci-hole64-size): the
vCPU's physical address bits must reach its end (pc_max_used_gpa)."""
AMD_HT_START = 0xFD_0000_0000
"""AMD's HyperTransport range, up to 1 TiB: QEMU reserves it in e820 for AMD vCPUs with
40 or more physical address bits, and moves RAM above 4 GiB past it when RAM and the
64-bit PCI window would reach it."""
AMD_ABOVE_1TB_START = 1 << 40
AMD_HT_SIZE = AMD_ABOVE_1TB_START - AMD_HT_START
BOOT_RAM_MAX = 16 * GiB
"""The most RAM ``pcihole boot`` gives: with QEMU's 64-bit PCI window it ends below 64 GiB,
so every x86-64 vCPU (36 physical address bits or more) reaches it; a 16 GiB private
mapping is lazily backed, and KVM keeps ~2.5 MiB of page metadata per GiB of memslot
(VmallocUsed grew 40 MiB for a 16 GiB VM here, 0.4 MiB for 128 MiB)."""
KVM_IDENTITY_MAP_ADDR = 0xFEFFC000
"""KVM's private pages, where QEMU puts them, just below the 16 MiB of the BIOS and APIC
range; reserved in e820: first the page of its real-mode identity map
(KVM_SET_IDENTITY_MAP_ADDR), then ..."""
KVM_TSS_ADDR = KVM_IDENTITY_MAP_ADDR + PAGE_SIZE
"""... the three pages KVM may use to run real mode on VMX without unrestricted guest
(KVM_SET_TSS_ADDR)."""
KVM_PRIVATE_SIZE = 4 * PAGE_SIZE


assert DUMP_ROOM * 4 <= SCRATCH_SIZE, "the dump's address list does not fit in scratch RAM"
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
