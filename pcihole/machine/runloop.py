"""The run loop: KVM_RUN, decode, dispatch to the buses, until the guest stops.

Exits are counted per kind; guest reports (see ``guest/asm/runtime.inc``) are decoded
here; writes absorbed by coalesced MMIO zones are drained after every exit and at stop
and handed to ``on_coalesced`` in guest order. Nothing is printed or timed here: the
caller reads ``RunResult``.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pcihole import layout
from pcihole.errors import EnvironmentProblem
from pcihole.kvm import CoalescedWrite, Vcpu, exits
from pcihole.machine.bus import Bus

REPORT_SYNC = 1
REPORT_DONE = 2
REPORT_ASSERT = 3
REPORT_EXCEPTION = 4

EXCEPTION_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
    8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
    17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP",
}  # fmt: skip


class StopReason(enum.Enum):
    """Why a vCPU stopped running."""

    DONE = "done"
    ASSERT_FAILED = "assert-failed"
    GUEST_EXCEPTION = "guest-exception"
    SHUTDOWN = "shutdown"
    HLT = "hlt"
    INTERRUPTED = "interrupted"
    EXIT_LIMIT = "exit-limit"
    KVM_ERROR = "kvm-error"
    DEVICE_ERROR = "device-error"


class GuestError(EnvironmentProblem):
    """The guest did not finish cleanly; the message says why (vector, RIP, line...)."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(f"guest stopped: {result.reason.value}: {result.detail}")


@dataclass(frozen=True, slots=True)
class GuestException:
    """An exception the guest raised and its runtime reported."""

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


@dataclass
class RunResult:
    """How a run ended and what happened on the way."""

    reason: StopReason
    detail: str = ""
    syncs: list[int] = field(default_factory=list)
    exit_counts: dict[str, int] = field(default_factory=dict)
    exception: GuestException | None = None
    assert_line: int | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.reason is StopReason.DONE

    def check(self) -> RunResult:
        """Return self when the guest finished; raise ``GuestError`` (or the device's
        own exception) otherwise."""
        if self.error is not None and self.reason is StopReason.DEVICE_ERROR:
            raise self.error
        if not self.ok:
            raise GuestError(self)
        return self


class RunLoop:
    """Runs one vCPU, dispatching its exits to a port bus and an MMIO bus."""

    def __init__(
        self,
        vcpu: Vcpu,
        ports: Bus,
        mmio: Bus,
        *,
        on_sync: Callable[[int], None] | None = None,
        on_coalesced: Callable[[list[CoalescedWrite]], None] | None = None,
        report_port: int | None = layout.REPORT_PORT,
    ) -> None:
        self.vcpu = vcpu
        self.report_port = report_port
        """Where guest reports arrive (None: no report protocol, e.g. for firmware)."""
        self.ports = ports
        self.mmio = mmio
        self.on_sync = on_sync
        self.on_coalesced = on_coalesced
        self.counts: Counter[type] = Counter()
        self._stop = threading.Event()
        # The ring may be drained from another thread (a hot-plug) while the vCPU runs.
        self._drain_lock = threading.Lock()

    def request_stop(self) -> None:
        """Stop the vCPU soon; safe from any thread, even while the guest runs."""
        self._stop.set()
        self.vcpu.request_stop()

    def exit_counts(self) -> dict[str, int]:
        """Exits so far, by kind (``IoOut``, ``MmioRead``, ...)."""
        return {kind.__name__: count for kind, count in sorted(
            self.counts.items(), key=lambda item: item[0].__name__)}  # fmt: skip

    def drain(self) -> None:
        """Hand every write waiting in the coalesced ring to ``on_coalesced``."""
        if self.on_coalesced is not None and self.vcpu.vm.coalesced_zones:
            with self._drain_lock:
                writes = self.vcpu.drain_coalesced()
                if writes:
                    self.on_coalesced(writes)

    def run(self, max_exits: int | None = None) -> RunResult:
        """Run until the guest is done or stops for another reason."""
        try:
            result = self._loop(max_exits)
        except Exception as error:  # a device or callback failed: keep it for the caller
            result = RunResult(StopReason.DEVICE_ERROR, f"{type(error).__name__}: {error}",
                               error=error)  # fmt: skip
        try:
            self.drain()
        except Exception as error:
            result = RunResult(StopReason.DEVICE_ERROR, f"draining writes: {error}", error=error)
        result.exit_counts = self.exit_counts()
        return result

    def _loop(self, max_exits: int | None) -> RunResult:
        run = self.vcpu.run
        counts = self.counts
        ports, mmio = self.ports, self.mmio
        complete_read = self.vcpu.complete_read
        complete_mmio_read = self.vcpu.complete_mmio_read
        # The VM's live set of zones: windows placed or moved mid-run are drained too.
        zones = self.vcpu.vm.coalesced_zones
        drain = self.drain
        syncs: list[int] = []
        remaining = -1 if max_exits is None else max_exits
        IoOut, IoIn, MmioRead, MmioWrite = (
            exits.IoOut, exits.IoIn, exits.MmioRead, exits.MmioWrite)  # fmt: skip
        report_port = -1 if self.report_port is None else self.report_port
        # No per-exit check of the stop flag: request_stop() sets immediate_exit, so the
        # next (or current) KVM_RUN returns Interrupted and _other() sees the flag.
        while remaining:
            remaining -= 1
            exit = run()
            counts[exit.__class__] += 1
            if zones:
                drain()
            # Most frequent kinds first: this chain runs once per exit.
            if isinstance(exit, MmioRead):
                size = exit.size
                complete_mmio_read(mmio.read(exit.address, size).to_bytes(size, "little"))
            elif isinstance(exit, MmioWrite):
                mmio.write(exit.address, exit.size, int.from_bytes(exit.data, "little"))
            elif isinstance(exit, IoOut):
                if exit.port == report_port:
                    result = self._report(exit, syncs)
                    if result is not None:
                        return result
                    continue
                step = exit.size
                if exit.count == 1:
                    ports.write(exit.port, step, int.from_bytes(exit.data, "little"))
                    continue
                for index in range(exit.count):
                    value = int.from_bytes(exit.data[index * step : (index + 1) * step], "little")
                    ports.write(exit.port, step, value)
            elif isinstance(exit, IoIn):
                data = b"".join(
                    ports.read(exit.port, exit.size).to_bytes(exit.size, "little")
                    for _ in range(exit.count)
                )
                complete_read(exit, data)
            else:
                stopped = self._other(exit, syncs)
                if stopped is not None:
                    return stopped
        return RunResult(StopReason.EXIT_LIMIT, f"stopped after {max_exits} exits", syncs)

    def _other(self, exit: exits.Exit, syncs: list[int]) -> RunResult | None:
        if isinstance(exit, exits.Interrupted):
            if self._stop.is_set():
                return RunResult(StopReason.INTERRUPTED, "stopped by the monitor", syncs)
            return None  # a stray signal: carry on
        if isinstance(exit, exits.Hlt):
            rip = self.vcpu.get_regs().rip
            return RunResult(StopReason.HLT, f"guest halted at RIP {rip:#x}", syncs)
        if isinstance(exit, exits.Shutdown):
            return RunResult(StopReason.SHUTDOWN, "triple fault or shutdown", syncs)
        if isinstance(exit, exits.FailEntry):
            return RunResult(
                StopReason.KVM_ERROR,
                f"entry failed: hardware reason {exit.hardware_reason:#x} on CPU {exit.cpu}",
                syncs,
            )
        if isinstance(exit, exits.InternalError):
            rip = self.vcpu.get_regs().rip
            data = ", ".join(f"{d:#x}" for d in exit.data)
            return RunResult(
                StopReason.KVM_ERROR,
                f"KVM internal error {exit.suberror} at RIP {rip:#x} (data: {data})",
                syncs,
            )
        if isinstance(exit, exits.SystemEvent):
            return RunResult(StopReason.SHUTDOWN, f"system event {exit.kind}", syncs)
        reason = exit.reason if isinstance(exit, exits.Unsupported) else exit
        return RunResult(StopReason.KVM_ERROR, f"unsupported exit {reason}", syncs)

    def _report(self, exit: exits.IoOut, syncs: list[int]) -> RunResult | None:
        command = int.from_bytes(exit.data[:4], "little")
        regs = self.vcpu.get_regs()
        if command == REPORT_SYNC:
            syncs.append(regs.rdi)
            if self.on_sync is not None:
                self.on_sync(regs.rdi)
            return None
        if command == REPORT_DONE:
            return RunResult(StopReason.DONE, "guest reported done", syncs)
        if command == REPORT_ASSERT:
            line = regs.rdi
            return RunResult(
                StopReason.ASSERT_FAILED,
                f"guest assertion failed at line {line} (value {regs.rsi:#x})",
                syncs,
                assert_line=line,
            )
        if command == REPORT_EXCEPTION:
            cr2 = self.vcpu.get_sregs().cr2
            exception = GuestException(regs.rdi, regs.rsi, regs.rcx, regs.r8 & 3, cr2)
            return RunResult(
                StopReason.GUEST_EXCEPTION, exception.describe(), syncs, exception=exception
            )
        return RunResult(StopReason.DEVICE_ERROR, f"unknown guest report {command}", syncs)
