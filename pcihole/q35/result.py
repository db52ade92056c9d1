"""How a run of the q35 machine ended, and the process exit status that says so."""

from __future__ import annotations

from dataclasses import dataclass, field

from pcihole.devices.debug_exit import exit_status
from pcihole.devices.debugcon import ConsoleLine
from pcihole.errors import GUEST_FAULT_STATUS
from pcihole.machine.runloop import RunResult

GUEST_STOPPED_STATUS = GUEST_FAULT_STATUS
"""Exit status when the guest stopped without debug-exit (even: never a debug-exit one)."""
TIMEOUT_STATUS = 124
"""As timeout(1)."""
SIGNAL_STATUS_OFFSET = 128
"""A run ended by signal N exits with 128 + N, as a shell reports it."""


@dataclass(frozen=True)
class Interval:
    """What happened between two console lines."""

    seconds: float
    exits: int
    config_exits: int


@dataclass(frozen=True)
class Ending:
    """Why the machine ended a run, and the process exit status that says so."""

    reason: str
    status: int


@dataclass
class BootResult:
    """How a boot ended."""

    run: RunResult
    exit_value: int | None
    """What the guest wrote to debug-exit; None if it never did."""
    console: bytes
    lines: list[ConsoleLine]
    seconds: float
    placements: list[tuple[int | None, int]] = field(default_factory=list)
    """Every place the ECAM window went to: ``(base or None, buses)``."""
    ending: Ending | None = None
    """Why the machine stopped it (power off, reset, time limit, signal, ``until``)."""

    @property
    def status(self) -> int:
        """The process exit status: QEMU's for debug-exit, the ending's, else
        GUEST_STOPPED_STATUS (the vCPU stopped by itself: a shutdown, a KVM error)."""
        if self.exit_value is not None:
            return exit_status(self.exit_value)
        return GUEST_STOPPED_STATUS if self.ending is None else self.ending.status

    @property
    def reason(self) -> str:
        """One line saying how the run ended."""
        if self.exit_value is not None:
            return f"the guest wrote {self.exit_value:#x} to debug-exit"
        if self.ending is not None:
            return self.ending.reason
        return f"the guest stopped: {self.run.reason.value}: {self.run.detail}"

    @property
    def text(self) -> str:
        return self.console.decode("utf-8", "replace")

    def between(self, start: int, end: int) -> Interval:
        """From the newline of line ``start`` to the first byte of line ``end``: a guest
        prints a line, does something, prints the next; this is what that something cost.
        The first byte's own OUT exit is not counted."""
        before, after = self.lines[start], self.lines[end]
        return Interval(
            after.first_seconds - before.seconds,
            after.first_exits - before.exits - 1,
            after.first_config_exits - before.config_exits,
        )


__all__ = ["BootResult", "ConsoleLine", "Ending", "Interval"]
