"""The test guests' report protocol as a port device (see ``guest/asm/runtime.inc``).

Like KVM selftests' ucall: a 4-byte OUT to ``layout.REPORT_PORT`` with the command in EAX
and its arguments in RDI/RSI/RCX/R8, read back with KVM_GET_REGS. A sync is kept and the
guest resumes; done, a failed assert and an exception end the run, by raising
``machine.runloop.Stop`` with the result. Firmware machines do not have this device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pcihole.kvm import Vcpu
from pcihole.machine.runloop import RunResult, Stop, StopReason

REPORT_SYNC = 1
REPORT_DONE = 2
REPORT_ASSERT = 3
REPORT_EXCEPTION = 4
REPORT_SIZE = 4
"""The port decodes one dword."""

EXCEPTION_NAMES = {
    0: "#DE",
    1: "#DB",
    2: "NMI",
    3: "#BP",
    4: "#OF",
    5: "#BR",
    6: "#UD",
    7: "#NM",
    8: "#DF",
    10: "#TS",
    11: "#NP",
    12: "#SS",
    13: "#GP",
    14: "#PF",
    16: "#MF",
    17: "#AC",
    18: "#MC",
    19: "#XM",
    20: "#VE",
    21: "#CP",
}


@dataclass(frozen=True, slots=True)
class GuestException:
    """An exception the guest raised and reported (the test guests' runtime does)."""

    vector: int
    rip: int
    error_code: int
    ring: int
    cr2: int

    @property
    def name(self) -> str:
        return EXCEPTION_NAMES.get(self.vector, f"vector {self.vector}")

    def describe(self) -> str:
        text = (
            f"{self.name} (vector {self.vector}) at RIP {self.rip:#x}, ring {self.ring}, "
            f"error code {self.error_code:#x}"
        )
        return text + (f", CR2 {self.cr2:#x}" if self.vector == 14 else "")


class ReportPort:
    """The host side of the protocol for one vCPU; ``syncs`` holds this run's values."""

    def __init__(self, vcpu: Vcpu, on_sync: Callable[[int], None] | None = None) -> None:
        self.vcpu = vcpu
        self.on_sync = on_sync
        self.syncs: list[int] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        regs = self.vcpu.get_regs()
        if value == REPORT_SYNC:
            self.syncs.append(regs.rdi)
            if self.on_sync is not None:
                self.on_sync(regs.rdi)
            return
        raise Stop(self._end(value, regs.rdi, regs.rsi, regs.rcx, regs.r8))

    def _end(self, command: int, rdi: int, rsi: int, rcx: int, r8: int) -> RunResult:
        syncs = self.syncs
        if command == REPORT_DONE:
            return RunResult(StopReason.DONE, "guest reported done", syncs)
        if command == REPORT_ASSERT:
            return RunResult(
                StopReason.ASSERT_FAILED,
                f"guest assertion failed at line {rdi} (value {rsi:#x})",
                syncs,
                assert_line=rdi,
            )
        if command == REPORT_EXCEPTION:
            exception = GuestException(rdi, rsi, rcx, r8 & 3, self.vcpu.get_sregs().cr2)
            return RunResult(
                StopReason.GUEST_EXCEPTION, exception.describe(), syncs, exception=exception
            )
        return RunResult(StopReason.DEVICE_ERROR, f"unknown guest report {command}", syncs)
