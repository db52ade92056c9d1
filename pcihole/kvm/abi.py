"""The KVM kernel ABI for x86_64: raw structs, ioctl numbers, constants.

Nothing here talks to the kernel; ``pcihole.kvm.system`` does. Struct sizes are checked
at import against the sizes the kernel's uapi headers give, and every ioctl number is
computed from the ``_IO/_IOR/_IOW/_IOWR`` encoding and the size of its argument.
"""

from __future__ import annotations

import ctypes
import enum

# --- ioctl number encoding (include/uapi/asm-generic/ioctl.h) --------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: int, number: int, size: int) -> int:
    assert size < (1 << _IOC_SIZEBITS)
    return (
        (direction << _IOC_DIRSHIFT)
        | (kind << _IOC_TYPESHIFT)
        | (number << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _io(kind: int, number: int) -> int:
    return _ioc(_IOC_NONE, kind, number, 0)


def _ior(kind: int, number: int, argtype: type) -> int:
    return _ioc(_IOC_READ, kind, number, ctypes.sizeof(argtype))


def _iow(kind: int, number: int, argtype: type) -> int:
    return _ioc(_IOC_WRITE, kind, number, ctypes.sizeof(argtype))


def _iowr(kind: int, number: int, argtype: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, number, ctypes.sizeof(argtype))


# --- structs (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h) ---------------
u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_userspace_memory_region2(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
        ("guest_memfd_offset", u64),
        ("guest_memfd", u32),
        ("pad1", u32),
        ("pad2", u64 * 14),
    ]


class kvm_regs(ctypes.Structure):
    _fields_ = [
        (name, u64)
        for name in (
            *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"),
            *("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
            *("rip", "rflags"),
        )
    ]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * 4),
    ]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring_header(ctypes.Structure):
    """The ring's head; ``kvm_coalesced_mmio`` entries follow it to the end of the page."""

    _fields_ = [("first", u32), ("last", u32)]


class kvm_run_header(ctypes.Structure):
    """The fixed head of ``struct kvm_run``; the exit union starts at ``RUN_EXIT_OFFSET``."""

    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
    ]


class kvm_run_io(ctypes.Structure):
    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    ]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_emulation_failure(ctypes.Structure):
    """The internal-error exit for suberror KVM_INTERNAL_ERROR_EMULATION: an overlay of
    ``kvm_run_internal`` (``flags`` is data[0], the instruction window data[1..2])."""

    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("flags", u64),
        ("insn_size", u8),
        ("insn_bytes", u8 * 15),
    ]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """The head of a CPUID table; ``nent`` entries follow (see ``cpuid2_table``)."""

    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2_table(entries: int) -> ctypes.Structure:
    """A ``kvm_cpuid2`` with room for ``entries`` entries, ``nent`` set to that room."""

    class Table(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * entries)]

    table = Table()
    table.nent = entries
    return table


class kvm_pit_config(ctypes.Structure):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_irq_level(ctypes.Structure):
    """``irq`` shares a union with ``status`` (KVM_IRQ_LINE_STATUS); pcihole writes irq."""

    _fields_ = [("irq", u32), ("level", u32)]


class kvm_vcpu_events_exception(ctypes.Structure):
    _fields_ = [
        ("injected", u8),
        ("nr", u8),
        ("has_error_code", u8),
        ("pending", u8),
        ("error_code", u32),
    ]


class kvm_vcpu_events_interrupt(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class kvm_vcpu_events_nmi(ctypes.Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class kvm_vcpu_events_smi(ctypes.Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class kvm_vcpu_events(ctypes.Structure):
    _fields_ = [
        ("exception", kvm_vcpu_events_exception),
        ("interrupt", kvm_vcpu_events_interrupt),
        ("nmi", kvm_vcpu_events_nmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", kvm_vcpu_events_smi),
        ("triple_fault_pending", u8),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_mp_state(ctypes.Structure):
    _fields_ = [("mp_state", u32)]


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_translation(ctypes.Structure):
    """KVM_TRANSLATE: a linear address in, the guest-physical one out (through the
    guest's page tables as the vCPU has them now)."""

    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


class kvm_xsave(ctypes.Structure):
    """The XSAVE image (KVM_GET_XSAVE/KVM_SET_XSAVE); KVM_GET_XSAVE2 may give more than
    these 4096 bytes (as many as KVM_CAP_XSAVE2 says)."""

    _fields_ = [("region", u32 * 1024)]


XSAVE_MXCSR_OFFSET = 24
"""MXCSR inside the FXSAVE legacy area at the start of an XSAVE image. KVM_GET_FPU and
KVM_SET_FPU leave it out (measured here: KVM_GET_FPU reads 0 while the guest's is set)."""
XSAVE_MXCSR_MASK_OFFSET = 28
XSAVE_XSTATE_BV_OFFSET = 512
"""XSTATE_BV in the XSAVE header: the state components the image holds."""
XFEATURE_SSE = 1 << 1
"""XSTATE_BV bit for SSE state; KVM_SET_XSAVE loads MXCSR only when it is set (or FP's)."""


# Sizes from the kernel's uapi headers (x86_64): a mismatch means a typo above.
_EXPECTED_SIZES: dict[type, int] = {
    kvm_userspace_memory_region: 32,
    kvm_userspace_memory_region2: 160,
    kvm_regs: 144,
    kvm_segment: 24,
    kvm_dtable: 16,
    kvm_sregs: 312,
    kvm_coalesced_mmio_zone: 16,
    kvm_coalesced_mmio: 24,
    kvm_coalesced_mmio_ring_header: 8,
    kvm_run_header: 32,
    kvm_run_io: 16,
    kvm_run_mmio: 24,
    kvm_cpuid_entry2: 40,
    kvm_cpuid2: 8,
    kvm_pit_config: 64,
    kvm_irq_level: 8,
    kvm_vcpu_events: 64,
    kvm_mp_state: 4,
    kvm_run_emulation_failure: 32,
    kvm_enable_cap: 104,
    kvm_translation: 24,
    kvm_xsave: 4096,
}
for _struct, _size in _EXPECTED_SIZES.items():
    if ctypes.sizeof(_struct) != _size:
        raise ImportError(
            f"{_struct.__name__} is {ctypes.sizeof(_struct)} bytes, the kernel ABI says {_size}"
        )

RUN_EXIT_OFFSET = ctypes.sizeof(kvm_run_header)
"""Offset of the exit union inside ``struct kvm_run``."""
RUN_EXIT_REASON_OFFSET = kvm_run_header.exit_reason.offset
RUN_IMMEDIATE_EXIT_OFFSET = kvm_run_header.immediate_exit.offset
MMIO_DATA_OFFSET = RUN_EXIT_OFFSET + kvm_run_mmio.data.offset
COALESCED_RING_ENTRY_OFFSET = ctypes.sizeof(kvm_coalesced_mmio_ring_header)

# --- ioctl numbers ---------------------------------------------------------------------
KVMIO = 0xAE

KVM_GET_API_VERSION = _io(KVMIO, 0x00)
KVM_CREATE_VM = _io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _io(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(KVMIO, 0x05, kvm_cpuid2)
KVM_CREATE_VCPU = _io(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _iow(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(KVMIO, 0x48, u64)
KVM_SET_USER_MEMORY_REGION2 = _iow(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_CREATE_IRQCHIP = _io(KVMIO, 0x60)
KVM_IRQ_LINE = _iow(KVMIO, 0x61, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _iow(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _iow(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_CREATE_PIT2 = _iow(KVMIO, 0x77, kvm_pit_config)
KVM_RUN = _io(KVMIO, 0x80)
KVM_GET_REGS = _ior(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _iow(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _ior(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _iow(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _iowr(KVMIO, 0x85, kvm_translation)
KVM_SET_CPUID2 = _iow(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_MP_STATE = _ior(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _iow(KVMIO, 0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _ior(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(KVMIO, 0xA0, kvm_vcpu_events)
KVM_ENABLE_CAP = _iow(KVMIO, 0xA3, kvm_enable_cap)
KVM_GET_TSC_KHZ = _io(KVMIO, 0xA3)
KVM_GET_XSAVE = _ior(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _iow(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XSAVE2 = _ior(KVMIO, 0xCF, kvm_xsave)

KVM_API_VERSION = 12
"""The only API version there has ever been; anything else is refused."""

# Memslot flags. Bit 2 is KVM_MEM_GUEST_MEMFD today (the 2020 proposal's bit): never
# set it for holes.
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
"""kvm_run.internal.suberror: KVM's instruction emulator failed (or refused)."""
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0
"""kvm_run.emulation_failure.flags: insn_size and insn_bytes hold the fetched bytes."""

KVM_PIT_SPEAKER_DUMMY = 1
"""kvm_pit_config.flags: the PC speaker port (0x61) is a dummy in the kernel too."""

CPUID_TABLE_MAX = 4096
"""Entries KVM_GET_SUPPORTED_CPUID may return at most (the kernel's KVM_MAX_CPUID_ENTRIES
is 256; this leaves room for kernels to grow)."""


class MpState(enum.IntEnum):
    """kvm_mp_state.mp_state values for x86."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    """The vCPU executed HLT and waits for an interrupt (in-kernel irqchip only)."""
    SIPI_RECEIVED = 4
    AP_RESET_HOLD = 9
    SUSPENDED = 10


class Cap(enum.IntEnum):
    """KVM capabilities pcihole asks about (KVM_CHECK_EXTENSION numbers, uapi kvm.h)."""

    IRQCHIP = 0
    """KVM_CREATE_IRQCHIP: PIC, IOAPIC and local APICs in the kernel."""
    USER_MEMORY = 3
    """KVM_SET_USER_MEMORY_REGION exists."""
    SET_TSS_ADDR = 4
    NR_VCPUS = 9
    """Recommended vCPUs per VM."""
    NR_MEMSLOTS = 10
    """Memslots per address space: the hole planner's budget."""
    MP_STATE = 14
    """KVM_GET/SET_MP_STATE."""
    COALESCED_MMIO = 15
    """Page offset of the coalesced MMIO ring in the vCPU mmap (0 = absent)."""
    PIT2 = 33
    """KVM_CREATE_PIT2: the i8254 timer in the kernel."""
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    """KVM_SET_IDENTITY_MAP_ADDR (real mode on VMX without unrestricted guest)."""
    VCPU_EVENTS = 41
    """KVM_GET/SET_VCPU_EVENTS: pending exceptions, interrupts, NMIs."""
    XSAVE = 55
    """KVM_GET_XSAVE/KVM_SET_XSAVE."""
    GET_TSC_KHZ = 61
    """KVM_GET_TSC_KHZ."""
    MAX_VCPUS = 66
    SYNC_REGS = 74
    READONLY_MEM = 81
    """Read-only memslots: reads stay in the guest, writes exit as MMIO."""
    IMMEDIATE_EXIT = 136
    """kvm_run.immediate_exit, so another thread can stop a vCPU."""
    COALESCED_PIO = 162
    EXIT_ON_EMULATION_FAILURE = 204
    """KVM_ENABLE_CAP on the VM: an instruction KVM's emulator refuses exits to the monitor
    with its bytes, and no #UD is queued for the guest."""
    XSAVE2 = 208
    """Bytes KVM_GET_XSAVE2 writes (at least 4096)."""
    USER_MEMORY2 = 231
    """KVM_SET_USER_MEMORY_REGION2."""
    GUEST_MEMFD = 234
    PRE_FAULT_MEMORY = 236


class ExitReason(enum.IntEnum):
    """kvm_run.exit_reason values pcihole decodes (others become ``Unsupported``)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
