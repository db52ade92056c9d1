"""Ask a real guest whether this host's CPUID obeys the monitor.

A one-page real-mode guest gets the CPUID a booting vCPU gets (``boot_cpuid``) with every
``linux_cmdline.FEATURES`` bit cleared, executes CPUID for leaf 0 and for each probed
register, reports each answer as a 32-bit OUT to ``layout.REPORT_PORT`` and halts. Bits
it still sees leak (``CpuidLeaks``). The answer is the host's, so it is asked once per
process (``host_cpuid_leaks``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pcihole import layout
from pcihole.arch.x86.cpuid import boot_cpuid
from pcihole.arch.x86.linux_cmdline import FEATURES, PROBED_REGISTERS, CpuidLeaks
from pcihole.arch.x86.reset import prepare_real_mode
from pcihole.errors import EnvironmentProblem
from pcihole.kvm import Kvm, abi
from pcihole.kvm.exits import Hlt, IoOut
from pcihole.memory import GuestRam

MAX_EXITS = 16
"""The probe makes one exit per report and one HLT; more means it went astray."""

_MOV_EAX = b"\x66\xb8"
_MOV_ECX = b"\x66\xb9"
_CPUID = b"\x0f\xa2"
_MOV_EAX_FROM = {"eax": b"", "ebx": b"\x66\x89\xd8", "ecx": b"\x66\x89\xc8", "edx": b"\x66\x89\xd0"}
_REPORT = b"\xba" + struct.pack("<H", layout.REPORT_PORT) + b"\x66\xef"  # mov dx; out dx, eax
_HLT = b"\xf4"


class CpuidProbeError(EnvironmentProblem):
    """The probe guest did not report as it should; the message says what it did."""


def probe_code(registers: Sequence[tuple[int, int, str]] = PROBED_REGISTERS) -> bytes:
    """16-bit code: leaf 0's EAX, then each (leaf, subleaf, register), reported; HLT."""
    code = _MOV_EAX + struct.pack("<I", 0) + _MOV_ECX + struct.pack("<I", 0) + _CPUID + _REPORT
    for leaf, subleaf, register in registers:
        code += _MOV_EAX + struct.pack("<I", leaf) + _MOV_ECX + struct.pack("<I", subleaf)
        code += _CPUID + _MOV_EAX_FROM[register] + _REPORT
    return code + _HLT


def cleared_cpuid(entries: list[abi.kvm_cpuid_entry2]) -> list[abi.kvm_cpuid_entry2]:
    """``entries`` with every ``FEATURES`` bit cleared (in place; returned for chaining)."""
    for entry in entries:
        for feature in FEATURES:
            leaf, subleaf, register = feature.register
            if entry.function == leaf and entry.index == subleaf:
                setattr(entry, register, getattr(entry, register) & ~(1 << feature.bit))
    return entries


def run_probe(kvm: Kvm) -> CpuidLeaks:
    """Run the probe guest once (a VM of its own) and decide from what it saw."""
    reports = probe_answers(kvm, probe_code(), cleared_cpuid(boot_cpuid(kvm)))
    if len(reports) != 1 + len(PROBED_REGISTERS):
        raise CpuidProbeError(f"the CPUID probe guest reported {len(reports)} values")
    answers = dict(zip(PROBED_REGISTERS, reports[1:], strict=True))
    return CpuidLeaks.from_answers(answers, max_leaf=reports[0])


def probe_answers(kvm: Kvm, code: bytes, cpuid: list[abi.kvm_cpuid_entry2]) -> list[int]:
    """Run ``code`` in real mode at ``layout.CPUID_PROBE_CODE`` under ``cpuid``; the
    values it reported, in order, once it halts."""
    with kvm.create_vm() as vm:
        prepare_real_mode(vm)
        ram = GuestRam(0, layout.CPUID_PROBE_RAM_SIZE)
        try:
            ram.write(layout.CPUID_PROBE_CODE, code)
            vm.set_memory_region(0, 0, ram.size, ram.host_address, 0)
            vcpu = vm.create_vcpu()
            vcpu.set_cpuid2(cpuid)
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags = layout.CPUID_PROBE_CODE, 0x2
            vcpu.set_regs(regs)
            reports: list[int] = []
            for _ in range(MAX_EXITS):
                exit = vcpu.run()
                if isinstance(exit, Hlt):
                    return reports
                if not (isinstance(exit, IoOut) and exit.port == layout.REPORT_PORT):
                    raise CpuidProbeError(f"the CPUID probe guest stopped: {exit}")
                reports.append(int.from_bytes(exit.data[:4], "little"))
            raise CpuidProbeError(f"the CPUID probe guest did not halt after {MAX_EXITS} exits")
        finally:
            ram.close()


_cached: CpuidLeaks | None = None


def host_cpuid_leaks(kvm: Kvm) -> CpuidLeaks:
    """``run_probe``'s answer, asked once per process."""
    global _cached
    if _cached is None:
        _cached = run_probe(kvm)
    return _cached
