"""Put a vCPU straight into 64-bit long mode, the way KVM selftests do.

The host writes the GDT, IDT, TSS and identity page tables into guest RAM and sets the
segment and control registers directly: no real-mode trampoline, which matters because
ring-0 guest code is emulated (slow) on these machines. The guest's runtime can then drop
to ring 3 with IOPL=3 (see ``pcihole/guest/asm/runtime.inc``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pcihole import layout
from pcihole.kvm import Vcpu, abi
from pcihole.memory import GuestRam

KERNEL_CS = 0x08
KERNEL_DS = 0x10
USER_DS = 0x18
USER_CS = 0x20
TSS_SELECTOR = 0x28
EXCEPTION_VECTORS = 32

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_USER = 1 << 2
PTE_HUGE = 1 << 7


def _segment_descriptor(access: int, flags: int) -> int:
    """A flat code/data descriptor: base 0, limit 0xfffff (4 GiB with G)."""
    limit = 0xFFFFF
    return (limit & 0xFFFF) | (access << 40) | (((limit >> 16) & 0xF) << 48) | (flags << 52)


# access byte: P | DPL | S | type ; flags nibble: G | D/B | L | AVL
_GDT = [
    0,
    _segment_descriptor(0x9A, 0xA),  # kernel code: P, DPL0, exec/read; G, L
    _segment_descriptor(0x92, 0xC),  # kernel data: P, DPL0, read/write; G, D/B
    _segment_descriptor(0xF2, 0xC),  # user data: P, DPL3
    _segment_descriptor(0xFA, 0xA),  # user code: P, DPL3, L
]
TSS_LIMIT = layout.TSS_SIZE - 1


def _tss_descriptor(base: int) -> bytes:
    low = (
        (TSS_LIMIT & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (0x89 << 40)  # P, DPL0, type 9: available 64-bit TSS
        | (((TSS_LIMIT >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56)
    )
    return struct.pack("<QQ", low, base >> 32)


def _gate(offset: int) -> bytes:
    """A 64-bit interrupt gate to ``offset`` in the kernel code segment."""
    return struct.pack(
        "<HHBBHII",
        offset & 0xFFFF,
        KERNEL_CS,
        0,  # IST
        0x8E,  # P, DPL0, type 14: interrupt gate
        (offset >> 16) & 0xFFFF,
        offset >> 32,
        0,
    )


def write_system_tables(ram: GuestRam, exception_stubs: Sequence[int]) -> None:
    """GDT, IDT (gate ``v`` to ``exception_stubs[v]``), TSS and page tables into RAM."""
    gdt = b"".join(struct.pack("<Q", d) for d in _GDT) + _tss_descriptor(layout.TSS_ADDR)
    ram.write(layout.GDT_ADDR, gdt)
    if len(exception_stubs) != EXCEPTION_VECTORS:
        raise ValueError(f"{len(exception_stubs)} exception stubs, need {EXCEPTION_VECTORS}")
    idt = b"".join(_gate(stub) for stub in exception_stubs)
    ram.write(layout.IDT_ADDR, idt)
    # TSS: RSP0 at offset 4, then an I/O permission bitmap granting every port. IOPL=3
    # alone would do on bare metal, but this host's KVM clears IOPL at ring 3 (measured:
    # RFLAGS reads 0x10002 after IRETQ with IOPL=3); the bitmap is honoured.
    tss = bytearray(layout.TSS_SIZE)
    struct.pack_into("<Q", tss, 4, layout.KERNEL_STACK_TOP)
    struct.pack_into("<H", tss, 0x66, layout.TSS_IO_BITMAP_OFFSET)
    tss[-1] = 0xFF
    ram.write(layout.TSS_ADDR, bytes(tss))
    # Identity map of the first IDENTITY_MAP_GIB GiB with 2 MiB user pages.
    flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER
    ram.write(layout.PML4_ADDR, struct.pack("<Q", layout.PDPT_ADDR | flags))
    pdpt = b"".join(
        struct.pack("<Q", (layout.PD_ADDR + i * layout.PAGE_SIZE) | flags)
        for i in range(layout.IDENTITY_MAP_GIB)
    )
    ram.write(layout.PDPT_ADDR, pdpt)
    entries = layout.IDENTITY_MAP_GIB * 512
    pds = struct.pack(
        f"<{entries}Q", *((i * layout.HUGE_PAGE_SIZE) | flags | PTE_HUGE for i in range(entries))
    )
    ram.write(layout.PD_ADDR, pds)


def _flat_segment(selector: int, code: bool) -> abi.kvm_segment:
    segment = abi.kvm_segment()
    segment.base = 0
    segment.limit = 0xFFFFFFFF
    segment.selector = selector
    segment.present = 1
    segment.s = 1
    segment.g = 1
    if code:
        segment.type = 0xB  # execute/read, accessed
        segment.l = 1
    else:
        segment.type = 0x3  # read/write, accessed
        segment.db = 1
    return segment


def enter_long_mode(vcpu: Vcpu, entry: int) -> None:
    """Registers for 64-bit ring 0 at ``entry``, tables already in RAM."""
    sregs = vcpu.get_sregs()
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr3 = layout.PML4_ADDR
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.efer = EFER_LME | EFER_LMA
    sregs.cs = _flat_segment(KERNEL_CS, code=True)
    data = _flat_segment(KERNEL_DS, code=False)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    tr = abi.kvm_segment()
    tr.base = layout.TSS_ADDR
    tr.limit = TSS_LIMIT
    tr.selector = TSS_SELECTOR
    tr.type = 0xB  # busy 64-bit TSS
    tr.present = 1
    sregs.tr = tr
    sregs.gdt.base = layout.GDT_ADDR
    sregs.gdt.limit = len(_GDT) * 8 + 16 - 1
    sregs.idt.base = layout.IDT_ADDR
    sregs.idt.limit = EXCEPTION_VECTORS * 16 - 1
    vcpu.set_sregs(sregs)
    regs = abi.kvm_regs()
    regs.rip = entry
    regs.rsp = layout.KERNEL_STACK_TOP
    regs.rflags = 0x3002
    vcpu.set_regs(regs)
