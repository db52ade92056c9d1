"""Instructions KVM hands over (``EmulationFailure`` exits), finished in the monitor.

The run loop gives each such exit to ``RefusedInstructions.handle``: the vCPU's state is
read, ``arch.x86.emulate`` finishes the instruction (or the exception it raises is
injected, KVM then delivers it through the guest's IDT), and the loop runs on. What
cannot be finished ends the run with one line naming the bytes, RIP, mode and CPL.
Guest memory is reached as the guest would reach it: linear addresses through
KVM_TRANSLATE, then the memslot's host memory, or the MMIO bus where no writable slot is.
"""

from __future__ import annotations

import ctypes
import struct
from collections import Counter

from pcihole import layout
from pcihole.arch.x86.emulate import (
    CR0_WP,
    PF_VECTOR,
    CpuState,
    EmulationError,
    GuestException,
    Mode,
    UnknownInstruction,
    emulate,
    hex_bytes,
)
from pcihole.kvm import Vcpu, abi, exits
from pcihole.machine.bus import Bus

_CR0_PE = 1 << 0
_EFER_LMA = 1 << 10
_RFLAGS_VM = 1 << 17
_GPRS = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)
"""kvm_regs fields in x86 encoding order."""
_PF_PRESENT, _PF_WRITE, _PF_USER = 1 << 0, 1 << 1, 1 << 2


def cpu_state(regs: abi.kvm_regs, sregs: abi.kvm_sregs) -> CpuState:
    """The emulator's view of a vCPU: mode and CPL from CR0, EFER, CS and SS."""
    if not sregs.cr0 & _CR0_PE:
        mode, bits, cpl = Mode.REAL, 16, 0
    elif regs.rflags & _RFLAGS_VM:
        mode, bits, cpl = Mode.VM86, 16, 3
    elif sregs.efer & _EFER_LMA and sregs.cs.l:
        mode, bits, cpl = Mode.LONG, 64, sregs.ss.dpl
    else:
        long = sregs.efer & _EFER_LMA
        mode = Mode.COMPATIBILITY if long else Mode.PROTECTED
        bits, cpl = 32 if sregs.cs.db else 16, sregs.ss.dpl
    bases = tuple(getattr(sregs, name).base for name in ("es", "cs", "ss", "ds", "fs", "gs"))
    return CpuState(
        [getattr(regs, name) for name in _GPRS],
        regs.rip,
        regs.rflags,
        mode,
        bits,
        cpl,
        bases,
        sregs.cr0,
        sregs.cr4,
    )


class VcpuAccess:
    """``GuestAccess`` for a stopped vCPU: its paging, the VM's memslots, the MMIO bus."""

    def __init__(self, vcpu: Vcpu, mmio: Bus, state: CpuState) -> None:
        self.vcpu = vcpu
        self.mmio = mmio
        self.state = state
        self._xsave: bytearray | None = None

    def _physical(self, linear: int, write: bool) -> int:
        translation = self.vcpu.translate(linear)
        user = self.state.cpl == 3
        code = (_PF_WRITE if write else 0) | (_PF_USER if user else 0)
        if not translation.valid:
            raise GuestException(PF_VECTOR, code, linear)
        if write and not translation.writable and (user or self.state.cr0 & CR0_WP):
            raise GuestException(PF_VECTOR, code | _PF_PRESENT, linear)
        return translation.physical

    def _pieces(self, linear: int, size: int) -> list[tuple[int, int]]:
        """(linear, size) pieces that do not cross a page."""
        pieces = []
        while size:
            step = min(size, layout.PAGE_SIZE - linear % layout.PAGE_SIZE)
            pieces.append((linear, step))
            linear, size = linear + step, size - step
        return pieces

    def read(self, linear: int, size: int) -> bytes:
        physical = [(self._physical(at, False), step) for at, step in self._pieces(linear, size)]
        data = b""
        for address, step in physical:
            slot = self.vcpu.vm.memslot_at(address)
            if slot is not None and address + step <= slot.guest_address + slot.size:
                data += ctypes.string_at(slot.host_address + address - slot.guest_address, step)
            else:
                data += self.mmio.read(address, step).to_bytes(step, "little")
        return data

    def write(self, linear: int, data: bytes) -> None:
        pieces = self._pieces(linear, len(data))
        physical = [(self._physical(at, True), step) for at, step in pieces]
        for address, step in physical:
            piece, data = data[:step], data[step:]
            slot = self.vcpu.vm.memslot_at(address)
            writable = slot is not None and not slot.flags & abi.KVM_MEM_READONLY
            if slot is not None and writable and address + step <= slot.guest_address + slot.size:
                ctypes.memmove(slot.host_address + address - slot.guest_address, piece, step)
            else:  # where KVM would exit with an MMIO write
                self.mmio.write(address, step, int.from_bytes(piece, "little"))

    def mxcsr(self) -> tuple[int, int]:
        # KVM_GET_FPU leaves MXCSR out: the XSAVE image's legacy area has it.
        self._xsave = self.vcpu.get_xsave()
        value, mask = struct.unpack_from("<II", self._xsave, abi.XSAVE_MXCSR_OFFSET)
        return value, mask or 0xFFBF  # a zero mask means the default (SDM 11.6.6)

    def set_mxcsr(self, value: int) -> None:
        image = self._xsave if self._xsave is not None else self.vcpu.get_xsave()
        struct.pack_into("<I", image, abi.XSAVE_MXCSR_OFFSET, value)
        bv = struct.unpack_from("<Q", image, abi.XSAVE_XSTATE_BV_OFFSET)[0]
        struct.pack_into("<Q", image, abi.XSAVE_XSTATE_BV_OFFSET, bv | abi.XFEATURE_SSE)
        self.vcpu.set_xsave(image)


class RefusedInstructions:
    """Finishes what KVM hands over for one vCPU; ``counts`` is mnemonic -> times."""

    def __init__(self, vcpu: Vcpu, mmio: Bus) -> None:
        self.vcpu = vcpu
        self.mmio = mmio
        self.enabled = vcpu.vm.exit_on_emulation_failure()
        self.counts: Counter[str] = Counter()

    def handle(self, exit: exits.EmulationFailure) -> str | None:
        """Finish the instruction and return None, or say in one line why the run ends."""
        regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
        state = cpu_state(regs, sregs)
        where = f"at RIP {regs.rip:#x}, {state.mode.value} mode, CPL {state.cpl}"
        if not exit.window:
            return f"KVM could not emulate an instruction {where} and gave no bytes"
        refused = f"KVM refused the instruction in bytes {hex_bytes(exit.window)} {where}"
        if not self.enabled:
            return f"{refused} (no KVM_CAP_EXIT_ON_EMULATION_FAILURE: KVM queued #UD)"
        try:
            outcome = emulate(exit.window, state, VcpuAccess(self.vcpu, self.mmio, state))
        except UnknownInstruction:
            return f"{refused}: not one the monitor emulates"
        except EmulationError as error:
            return f"{refused}: {error}"
        except GuestException as fault:
            self._inject(fault.vector, fault.error_code, fault.address)
            return None
        for name, value in zip(_GPRS, state.gprs, strict=True):
            setattr(regs, name, value)
        regs.rip, regs.rflags = state.rip, state.rflags
        self.vcpu.set_regs(regs)  # before the event: KVM_SET_REGS drops pending exceptions
        if outcome.exception is not None:
            self._inject(outcome.exception)
        self.counts[outcome.instruction.mnemonic] += 1
        return None

    def _inject(self, vector: int, error_code: int | None = None, address: int = 0) -> None:
        """Have KVM deliver exception ``vector`` through the guest's IDT on the next entry."""
        if vector == PF_VECTOR:
            sregs = self.vcpu.get_sregs()
            sregs.cr2 = address
            self.vcpu.set_sregs(sregs)
        events = self.vcpu.get_vcpu_events()
        events.exception.injected = 1
        events.exception.pending = 0
        events.exception.nr = vector
        events.exception.has_error_code = int(error_code is not None)
        events.exception.error_code = error_code or 0
        self.vcpu.set_vcpu_events(events)
