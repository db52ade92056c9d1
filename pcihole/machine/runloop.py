"""The run loop: KVM_RUN, decode, dispatch to the buses, until the guest stops.

Exits are counted per kind; a device ends the run by raising ``Stop`` (the test guests'
report port does, see ``pcihole.guest.report``); writes absorbed by coalesced MMIO zones
are drained after every exit and at stop and handed to ``on_coalesced`` in guest order.
Nothing is printed or timed here: the caller reads ``RunResult``.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pcihole.errors import GuestFault
from pcihole.kvm import CoalescedWrite, Vcpu, exits
from pcihole.machine.bus import Bus
from pcihole.machine.refused import RefusedInstructions


class StopReason(enum.Enum):
    """Why a vCPU stopped running: the first three are what a device's ``Stop`` says (the
    test guests' report port, ``guest.report``), the rest the run loop's own."""

    DONE = "done"
    ASSERT_FAILED = "assert-failed"
    GUEST_EXCEPTION = "guest-exception"
    SHUTDOWN = "shutdown"
    HLT = "hlt"
    INTERRUPTED = "interrupted"
    EXIT_LIMIT = "exit-limit"
    KVM_ERROR = "kvm-error"
    REFUSED_INSTRUCTION = "refused-instruction"
    """KVM handed over an instruction the monitor cannot finish."""
    DEVICE_ERROR = "device-error"


class GuestError(GuestFault):
    """The guest did not finish cleanly; the message says why (vector, RIP, line...)."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(f"guest stopped: {result.reason.value}: {result.detail}")


class Reported(Protocol):
    """What a device reported the guest raised (``guest.report.GuestException``)."""

    def describe(self) -> str: ...


@dataclass
class RunResult:
    """How a run ended and what happened on the way."""

    reason: StopReason
    detail: str = ""
    syncs: list[int] = field(default_factory=list)
    exit_counts: dict[str, int] = field(default_factory=dict)
    exception: Reported | None = None
    """What the guest's report said it raised (test guests only)."""
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


class Stop(Exception):
    """Raised by a device to end the run with ``result`` (the test guests' report port)."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.detail)
        self.result = result


class RunLoop:
    """Runs one vCPU, dispatching its exits to a port bus and an MMIO bus."""

    def __init__(
        self,
        vcpu: Vcpu,
        ports: Bus,
        mmio: Bus,
        *,
        on_coalesced: Callable[[list[CoalescedWrite]], None] | None = None,
    ) -> None:
        self.vcpu = vcpu
        self.ports = ports
        self.mmio = mmio
        self.on_coalesced = on_coalesced
        self.counts: Counter[type] = Counter()
        self.refused = RefusedInstructions(vcpu, mmio)
        self._stop = threading.Event()
        # The ring may be drained from another thread (a hot-plug) while the vCPU runs.
        self._drain_lock = threading.Lock()

    def request_stop(self) -> None:
        """Stop the vCPU soon; safe from any thread, even while the guest runs."""
        self._stop.set()
        self.vcpu.request_stop()

    def exit_counts(self) -> dict[str, int]:
        """Exits so far, by kind (``IoOut``, ``MmioRead``, ...)."""
        return {
            kind.__name__: count
            for kind, count in sorted(self.counts.items(), key=lambda item: item[0].__name__)
        }

    def emulated_instructions(self) -> dict[str, int]:
        """Instructions KVM handed over and the monitor finished, by mnemonic."""
        return dict(sorted(self.refused.counts.items()))

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
        except Stop as stop:
            result = stop.result
        except Exception as error:  # a device or callback failed: keep it for the caller
            result = RunResult(
                StopReason.DEVICE_ERROR, f"{type(error).__name__}: {error}", error=error
            )
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
        remaining = -1 if max_exits is None else max_exits
        IoOut, IoIn, MmioRead, MmioWrite = (
            exits.IoOut,
            exits.IoIn,
            exits.MmioRead,
            exits.MmioWrite,
        )
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
                stopped = self._other(exit)
                if stopped is not None:
                    return stopped
        return RunResult(StopReason.EXIT_LIMIT, f"stopped after {max_exits} exits")

    def _other(self, exit: exits.Exit) -> RunResult | None:
        if isinstance(exit, exits.Interrupted):
            if self._stop.is_set():
                return RunResult(StopReason.INTERRUPTED, "stopped by the monitor")
            return None  # a stray signal: carry on
        if isinstance(exit, exits.Hlt):
            rip = self.vcpu.get_regs().rip
            return RunResult(StopReason.HLT, f"guest halted at RIP {rip:#x}")
        if isinstance(exit, exits.Shutdown):
            return RunResult(StopReason.SHUTDOWN, "triple fault or shutdown")
        if isinstance(exit, exits.FailEntry):
            return RunResult(
                StopReason.KVM_ERROR,
                f"entry failed: hardware reason {exit.hardware_reason:#x} on CPU {exit.cpu}",
            )
        if isinstance(exit, exits.EmulationFailure):
            line = self.refused.handle(exit)
            if line is None:
                return None
            # No bytes: KVM could not even fetch (code where no memory is): the guest's doing.
            refused = StopReason.REFUSED_INSTRUCTION if exit.window else StopReason.KVM_ERROR
            return RunResult(refused, line)
        if isinstance(exit, exits.InternalError):
            rip = self.vcpu.get_regs().rip
            data = ", ".join(f"{d:#x}" for d in exit.data)
            return RunResult(
                StopReason.KVM_ERROR,
                f"KVM internal error {exit.suberror} at RIP {rip:#x} (data: {data})",
            )
        if isinstance(exit, exits.SystemEvent):
            return RunResult(StopReason.SHUTDOWN, f"system event {exit.kind}")
        reason = exit.reason if isinstance(exit, exits.Unsupported) else exit
        return RunResult(StopReason.KVM_ERROR, f"unsupported exit {reason}")
