"""One object per KVM file descriptor: ``Kvm`` (/dev/kvm) -> ``Vm`` -> ``Vcpu``.

A parent creates its children and closes them when it is closed. Every fd is opened with
O_CLOEXEC, released by ``close()``, by ``with``, and by a finalizer as a backstop. Every
failed ioctl raises ``KvmError`` naming the operation.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_codes
import fcntl
import mmap
import os
import signal
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from pcihole.closing import Closeable
from pcihole.errors import Bug
from pcihole.kvm import abi, exits
from pcihole.kvm.errors import KvmError, open_advice

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int
_ioctl_raw = _libc.ioctl
_KVM_RUN = abi.KVM_RUN
_decode = exits.decode
_MMIO_DATA = abi.MMIO_DATA_OFFSET
_get_ident = threading.get_ident

# The signal used to kick a vCPU thread out of KVM_RUN. Its handler does nothing: the
# point is only that the blocked ioctl returns EINTR (see ``Vcpu.request_stop``).
KICK_SIGNAL = signal.SIGUSR1


def _ioctl(fd: int, request: int, arg: int | ctypes.Structure | ctypes.c_uint64, what: str) -> int:
    """ioctl that raises ``KvmError`` naming ``what``; returns the ioctl's result.

    A struct argument is passed by address and updated in place (for _IOR/_IOWR)."""
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        result: int = fcntl.ioctl(fd, request, arg, True)
        return result
    except OSError as error:
        raise KvmError(what, error.errno) from None


class _FdObject(Closeable):
    """Owns one fd; subclasses add what the fd can do."""

    _kind = "fd"

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise Bug(f"use of closed {self._kind}")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            self._fd = -1
            self._finalizer()


class Kvm(_FdObject):
    """The KVM subsystem: ``/dev/kvm``."""

    _kind = "/dev/kvm"

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise KvmError(f"open {path}", error.errno, open_advice(path, error.errno)) from None
        super().__init__(fd)
        self.path = path
        version = _ioctl(fd, abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != abi.KVM_API_VERSION:
            self.close()
            raise KvmError("KVM_GET_API_VERSION", detail=f"API {version}, need 12")
        self.api_version = version
        self.vcpu_mmap_size = _ioctl(fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        self._vms: weakref.WeakSet[Vm] = weakref.WeakSet()

    def check_extension(self, cap: abi.Cap | int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value."""
        name = cap.name if isinstance(cap, abi.Cap) else str(int(cap))
        return _ioctl(self.fd, abi.KVM_CHECK_EXTENSION, int(cap), f"KVM_CHECK_EXTENSION({name})")

    def supported_cpuid(self) -> list[abi.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID: every leaf this KVM can give a guest, as it gives them."""
        entries = 64
        while True:
            table = abi.cpuid2_table(entries)
            try:
                fcntl.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, table, True)
            except OSError as error:
                # E2BIG: the table was too small; the kernel does not say how small.
                if error.errno != errno_codes.E2BIG or entries >= abi.CPUID_TABLE_MAX:
                    raise KvmError("KVM_GET_SUPPORTED_CPUID", error.errno) from None
                entries *= 2
                continue
            return [table.entries[i] for i in range(table.nent)]

    def capabilities(self) -> dict[str, int]:
        """Every capability pcihole knows, by name, with the value this kernel gives."""
        return {cap.name: self.check_extension(cap) for cap in abi.Cap}

    def create_vm(self) -> Vm:
        fd = _ioctl(self.fd, abi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        # KVM fds are created with O_CLOEXEC by the kernel; make sure of it anyway.
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        vm = Vm(self, fd)
        self._vms.add(vm)
        return vm

    def close(self) -> None:
        for vm in list(getattr(self, "_vms", ())):
            vm.close()
        super().close()


@dataclass(frozen=True, slots=True)
class Memslot:
    """One memslot as the kernel knows it."""

    slot: int
    guest_address: int
    size: int
    host_address: int
    flags: int


@dataclass(frozen=True, slots=True)
class Translation:
    """Where a linear address leads (KVM_TRANSLATE)."""

    physical: int
    valid: bool
    """False: not mapped (the guest would take a page fault)."""
    writable: bool
    user: bool


@dataclass(frozen=True, slots=True)
class CoalescedWrite:
    """One write absorbed by a coalesced MMIO zone."""

    address: int
    size: int
    data: bytes


class Vm(_FdObject):
    """One virtual machine: memslots, coalesced zones, vCPUs."""

    _kind = "VM"

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm
        self.max_memslots = kvm.check_extension(abi.Cap.NR_MEMSLOTS)
        self.has_readonly_memory = kvm.check_extension(abi.Cap.READONLY_MEM) > 0
        self.coalesced_mmio_page = kvm.check_extension(abi.Cap.COALESCED_MMIO)
        self.has_memory_region2 = kvm.check_extension(abi.Cap.USER_MEMORY2) > 0
        self.has_irqchip = False
        self.exits_on_emulation_failure = False
        self.memslots: dict[int, Memslot] = {}
        self.coalesced_zones: set[tuple[int, int]] = set()
        self.vcpus: list[Vcpu] = []

    # --- memory ------------------------------------------------------------------------
    def set_memory_region(
        self, slot: int, guest_address: int, size: int, host_address: int, flags: int = 0
    ) -> Memslot:
        """Create or move a memslot (KVM_SET_USER_MEMORY_REGION[2]); size 0 deletes it."""
        if not 0 <= slot < self.max_memslots:
            raise Bug(
                f"KVM_SET_USER_MEMORY_REGION: slot {slot} is outside "
                f"0..{self.max_memslots - 1} (KVM_CAP_NR_MEMSLOTS)"
            )
        if flags & abi.KVM_MEM_READONLY and not self.has_readonly_memory:
            raise KvmError("KVM_SET_USER_MEMORY_REGION", detail="no KVM_CAP_READONLY_MEM here")
        what = f"set memslot {slot} at {guest_address:#x}+{size:#x}"
        if self.has_memory_region2:
            region2 = abi.kvm_userspace_memory_region2(
                slot=slot,
                flags=flags,
                guest_phys_addr=guest_address,
                memory_size=size,
                userspace_addr=host_address,
            )
            _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION2, region2, what)
        else:
            region = abi.kvm_userspace_memory_region(
                slot=slot,
                flags=flags,
                guest_phys_addr=guest_address,
                memory_size=size,
                userspace_addr=host_address,
            )
            _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, what)
        memslot = Memslot(slot, guest_address, size, host_address, flags)
        if size:
            self.memslots[slot] = memslot
        else:
            self.memslots.pop(slot, None)
        return memslot

    def delete_memory_region(self, slot: int) -> None:
        old = self.memslots.get(slot)
        if old is None:
            raise Bug(f"delete memslot: slot {slot} is not in use")
        self.set_memory_region(slot, old.guest_address, 0, 0, old.flags)

    # --- coalesced MMIO -------------------------------------------------------------------
    def register_coalesced_mmio(self, address: int, size: int) -> None:
        """Writes in [address, address+size) are queued in the ring instead of exiting."""
        if not self.coalesced_mmio_page:
            raise KvmError("KVM_REGISTER_COALESCED_MMIO", detail="no KVM_CAP_COALESCED_MMIO here")
        zone = abi.kvm_coalesced_mmio_zone(addr=address, size=size, pio=0)
        _ioctl(
            self.fd,
            abi.KVM_REGISTER_COALESCED_MMIO,
            zone,
            f"KVM_REGISTER_COALESCED_MMIO {address:#x}+{size:#x}",
        )
        self.coalesced_zones.add((address, size))

    def unregister_coalesced_mmio(self, address: int, size: int) -> None:
        zone = abi.kvm_coalesced_mmio_zone(addr=address, size=size, pio=0)
        _ioctl(
            self.fd,
            abi.KVM_UNREGISTER_COALESCED_MMIO,
            zone,
            f"KVM_UNREGISTER_COALESCED_MMIO {address:#x}+{size:#x}",
        )
        self.coalesced_zones.discard((address, size))

    # --- the x86 platform in the kernel ----------------------------------------------------
    def set_tss_addr(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages KVM may use to run real mode on VMX (before vCPUs)."""
        # An unsigned long argument by value: fcntl.ioctl would take only a C int.
        if _ioctl_raw(self.fd, abi.KVM_SET_TSS_ADDR, address) < 0:
            raise KvmError(f"KVM_SET_TSS_ADDR {address:#x}", ctypes.get_errno())

    def set_identity_map_addr(self, address: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: the page KVM's real-mode identity map goes in."""
        value = ctypes.c_uint64(address)
        _ioctl(
            self.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, value, f"KVM_SET_IDENTITY_MAP_ADDR {address:#x}"
        )

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: two 8259 PICs, an IOAPIC and a local APIC per vCPU, in the
        kernel (before any vCPU exists)."""
        _ioctl(self.fd, abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
        self.has_irqchip = True

    def create_pit2(self, flags: int = abi.KVM_PIT_SPEAKER_DUMMY) -> None:
        """KVM_CREATE_PIT2: the i8254 on ports 0x40-0x43 in the kernel (after the irqchip:
        it raises IRQ 0 there)."""
        config = abi.kvm_pit_config(flags=flags)
        _ioctl(self.fd, abi.KVM_CREATE_PIT2, config, "KVM_CREATE_PIT2")

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive GSI ``irq`` to ``level`` (1 raised, 0 lowered); an edge is
        a raise then a lower."""
        line = abi.kvm_irq_level(irq=irq, level=level)
        _ioctl(self.fd, abi.KVM_IRQ_LINE, line, f"KVM_IRQ_LINE {irq}={level}")

    def enable_cap(self, cap: abi.Cap, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM with up to four arguments."""
        request = abi.kvm_enable_cap(cap=cap)
        for index, value in enumerate(args):
            request.args[index] = value
        _ioctl(self.fd, abi.KVM_ENABLE_CAP, request, f"KVM_ENABLE_CAP({cap.name})")

    def exit_on_emulation_failure(self) -> bool:
        """Have instructions KVM's emulator refuses exit with their bytes and nothing
        queued for the guest (KVM_CAP_EXIT_ON_EMULATION_FAILURE), where the kernel offers
        it; True when on. Without it KVM queues #UD for the guest as it exits."""
        offered = self.kvm.check_extension(abi.Cap.EXIT_ON_EMULATION_FAILURE) > 0
        if offered and not self.exits_on_emulation_failure:
            self.enable_cap(abi.Cap.EXIT_ON_EMULATION_FAILURE, 1)
            self.exits_on_emulation_failure = True
        return self.exits_on_emulation_failure

    def memslot_at(self, address: int) -> Memslot | None:
        """The memslot holding guest-physical ``address``, None where none does."""
        for memslot in list(self.memslots.values()):
            if memslot.guest_address <= address < memslot.guest_address + memslot.size:
                return memslot
        return None

    # --- vCPUs --------------------------------------------------------------------------
    def create_vcpu(self, index: int | None = None) -> Vcpu:
        index = len(self.vcpus) if index is None else index
        fd = _ioctl(self.fd, abi.KVM_CREATE_VCPU, index, f"KVM_CREATE_VCPU {index}")
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        vcpu = Vcpu(self, fd, index)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for vcpu in getattr(self, "vcpus", ()):
            vcpu.close()
        super().close()


_RING_HEAD = struct.Struct("<II")
_RING_ENTRY = struct.Struct("<QII8s")


class Vcpu(_FdObject):
    """One virtual CPU: registers, KVM_RUN and its shared ``kvm_run`` page."""

    _kind = "vCPU"

    def __init__(self, vm: Vm, fd: int, index: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.index = index
        try:
            self._run_map = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED)
        except OSError as error:
            self.close()
            raise KvmError("mmap kvm_run", error.errno) from None
        self.run_page = memoryview(self._run_map)
        self._ring_offset = vm.coalesced_mmio_page * mmap.PAGESIZE
        self._ring_entries = (mmap.PAGESIZE - _RING_HEAD.size) // _RING_ENTRY.size
        self._thread_id: int | None = None

    # --- registers ------------------------------------------------------------------------
    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        _ioctl(self.fd, abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        _ioctl(self.fd, abi.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        _ioctl(self.fd, abi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        _ioctl(self.fd, abi.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_xsave(self) -> bytearray:
        """The XSAVE image (KVM_GET_XSAVE2 where offered: it can be over 4096 bytes)."""
        size = self.vm.kvm.check_extension(abi.Cap.XSAVE2)
        if size <= 0 and not self.vm.kvm.check_extension(abi.Cap.XSAVE):
            raise KvmError("KVM_GET_XSAVE", detail="no KVM_CAP_XSAVE here")
        image = bytearray(max(size, ctypes.sizeof(abi.kvm_xsave)))
        request, what = (
            (abi.KVM_GET_XSAVE2, "KVM_GET_XSAVE2")
            if size > 0
            else (abi.KVM_GET_XSAVE, "KVM_GET_XSAVE")
        )
        try:
            fcntl.ioctl(self.fd, request, image, True)
        except OSError as error:
            raise KvmError(what, error.errno) from None
        return image

    def set_xsave(self, image: bytearray) -> None:
        """KVM_SET_XSAVE with an image from ``get_xsave``."""
        try:
            fcntl.ioctl(self.fd, abi.KVM_SET_XSAVE, image, True)
        except OSError as error:
            raise KvmError("KVM_SET_XSAVE", error.errno) from None

    def translate(self, linear: int) -> Translation:
        """KVM_TRANSLATE: ``linear`` through the guest's paging as the vCPU has it now."""
        request = abi.kvm_translation(linear_address=linear)
        _ioctl(self.fd, abi.KVM_TRANSLATE, request, f"KVM_TRANSLATE {linear:#x}")
        return Translation(
            request.physical_address,
            bool(request.valid),
            bool(request.writeable),
            bool(request.usermode),
        )

    def set_cpuid2(self, entries: Sequence[abi.kvm_cpuid_entry2]) -> None:
        """KVM_SET_CPUID2: what CPUID tells the guest. Without it a guest has no long mode
        (its WRMSR of EFER.LME faults)."""
        table = abi.cpuid2_table(len(entries))
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        _ioctl(self.fd, abi.KVM_SET_CPUID2, table, "KVM_SET_CPUID2")

    def tsc_khz(self) -> int | None:
        """The guest TSC frequency (KVM_GET_TSC_KHZ), None where KVM cannot tell."""
        if not self.vm.kvm.check_extension(abi.Cap.GET_TSC_KHZ):
            return None
        return _ioctl(self.fd, abi.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ") or None

    def get_vcpu_events(self) -> abi.kvm_vcpu_events:
        events = abi.kvm_vcpu_events()
        _ioctl(self.fd, abi.KVM_GET_VCPU_EVENTS, events, "KVM_GET_VCPU_EVENTS")
        return events

    def set_vcpu_events(self, events: abi.kvm_vcpu_events) -> None:
        _ioctl(self.fd, abi.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def get_mp_state(self) -> abi.MpState:
        state = abi.kvm_mp_state()
        _ioctl(self.fd, abi.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return abi.MpState(state.mp_state)

    def set_mp_state(self, state: abi.MpState) -> None:
        value = abi.kvm_mp_state(mp_state=state)
        _ioctl(self.fd, abi.KVM_SET_MP_STATE, value, f"KVM_SET_MP_STATE {state.name}")

    # --- running --------------------------------------------------------------------------
    def run(self) -> exits.Exit:
        """Enter the guest until it exits; return the exit, decoded."""
        if self._fd < 0:
            raise Bug("use of closed vCPU")
        self._thread_id = _get_ident()
        # ctypes, not fcntl.ioctl: a signal must make KVM_RUN return EINTR to us rather
        # than be retried, or another thread could never stop a looping guest.
        if _ioctl_raw(self._fd, _KVM_RUN, 0) < 0:
            err = ctypes.get_errno()
            if err in (errno_codes.EINTR, errno_codes.EAGAIN):
                self._run_map[abi.RUN_IMMEDIATE_EXIT_OFFSET] = 0
                return exits.Interrupted()
            raise KvmError("KVM_RUN", err)
        return _decode(self._run_map)

    def complete_read(self, exit: exits.IoIn | exits.MmioRead, data: bytes) -> None:
        """Give the guest the bytes its port or MMIO read returns (before the next run)."""
        if isinstance(exit, exits.MmioRead):
            self.complete_mmio_read(data)
        else:
            offset = struct.unpack_from("<Q", self.run_page, abi.RUN_EXIT_OFFSET + 8)[0]
            self.run_page[offset : offset + len(data)] = data

    def complete_mmio_read(self, data: bytes) -> None:
        """Give the guest the bytes its MMIO read returns (the run loop's hot path)."""
        self._run_map[_MMIO_DATA : _MMIO_DATA + len(data)] = data

    def request_stop(self) -> None:
        """Make the running (or next) KVM_RUN return ``Interrupted``; callable from any thread."""
        if self.closed:
            return
        self.run_page[abi.RUN_IMMEDIATE_EXIT_OFFSET] = 1
        thread_id = self._thread_id
        if thread_id is not None and thread_id != threading.get_ident():
            # ProcessLookupError: the thread has ended, so nothing is running.
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(thread_id, KICK_SIGNAL)

    # --- coalesced MMIO ring ----------------------------------------------------------------
    def drain_coalesced(self) -> list[CoalescedWrite]:
        """Empty the VM's coalesced ring (mapped through this vCPU), oldest write first.

        The ring is memory the kernel and this process share: an index outside it, or a
        walk that does not reach ``last`` within the ring's size, is a corrupt ring and
        a ``KvmError``, never an endless loop.
        """
        if not self._ring_offset:
            return []
        page = self.run_page
        base = self._ring_offset
        first, last = _RING_HEAD.unpack_from(page, base)
        entries = self._ring_entries
        if first >= entries or last >= entries:
            raise KvmError(
                "coalesced MMIO ring",
                detail=f"first {first} or last {last} is "
                f"outside its {entries} entries: the ring is corrupt",
            )
        writes: list[CoalescedWrite] = []
        for _ in range(entries):
            if first == last:
                break
            address, size, _pio, data = _RING_ENTRY.unpack_from(
                page, base + _RING_HEAD.size + first * _RING_ENTRY.size
            )
            writes.append(CoalescedWrite(address, size, data[:size]))
            first = (first + 1) % entries
        else:
            raise KvmError(
                "coalesced MMIO ring",
                detail=f"{entries} entries read without reaching last {last}: the ring is corrupt",
            )
        struct.pack_into("<I", page, base, first)
        return writes

    @property
    def ring_capacity(self) -> int:
        """Writes the ring holds before the next one exits (one entry always stays free)."""
        return self._ring_entries - 1

    def close(self) -> None:
        run_page = getattr(self, "run_page", None)
        if run_page is not None:
            run_page.release()
            self._run_map.close()
            del self.run_page
        super().close()


def _install_kick_handler() -> None:
    """A do-nothing handler for KICK_SIGNAL, so it interrupts KVM_RUN without killing us."""
    if threading.current_thread() is threading.main_thread():
        current = signal.getsignal(KICK_SIGNAL)
        if current in (signal.SIG_DFL, None):
            signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


_install_kick_handler()
