"""Helpers shared by the tests: guests and host threads that overlap by construction,
joins that fail instead of hanging, and child processes that run this checkout.

A test in which a guest must run while the host changes something never counts on
relative speeds: the guest loops until the host raises its stop flag, the host waits
for the guest's reports (not for a time) before each step, and raises the flag when its
changes are done. The only time limit is ``HANG_SECONDS``, a guard that turns a hung
test into a failure; no correct run on any machine comes near it.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pcihole import layout
from pcihole.guest.vm import GuestVm
from pcihole.q35 import BootResult, Q35Machine

HANG_SECONDS = 300.0
"""Past this a thread, guest or child is hung (a hang guard, never a speed check)."""
FIRMWARE_SECONDS = 60.0
"""Past this one firmware boot in a test (pcihole's or QEMU's) is hung: SeaBIOS needs ~3 s
on an idle host and 16-25 s measured with both cores busy (load 8), the test programs far
less, so a broken firmware path fails its test in about a minute instead of at
``HANG_SECONDS``. A hang guard too, never a speed check."""

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout these tests belong to: children import pcihole from here, not from
whatever is installed."""
CHILD_ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "PYTHONPATH": str(REPO_ROOT),
    # compiled once, outside the checkout: a third of each child's start-up otherwise
    "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "pcihole-test-pycache"),
}


def frame_of(address: int, pid: int | str = "self") -> int:
    """The physical frame behind ``address`` in process ``pid`` (/proc/PID/pagemap; frame
    numbers need root). Equal frames at two mappings are one page of memory, whatever
    other processes on the host allocate meanwhile."""
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(address // 4096 * 8)
        entry = int.from_bytes(pagemap.read(8), "little")
    assert entry >> 63, f"{address:#x} is not present in process {pid}"
    frame = entry & ((1 << 55) - 1)
    assert frame, "frame numbers hidden: /proc/PID/pagemap shows them to root only"
    return frame


def pcihole_command(*args: str) -> list[str]:
    """The command line running ``python -m pcihole ARGS`` (with ``CHILD_ENV``)."""
    return [sys.executable, "-m", "pcihole", *args]


def run_pcihole(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pcihole ARGS`` from this checkout; capture its text output."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        pcihole_command(*args),
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        cwd=REPO_ROOT,
        timeout=HANG_SECONDS,
        **kwargs,
    )


def run_firmware(
    machine: Q35Machine, seconds: float = FIRMWARE_SECONDS, max_exits: int | None = None
) -> BootResult:
    """``machine.run()`` ended by a guard after ``seconds`` (status 1, reason "hang
    guard"), or by ``max_exits`` exits: a guest that loops or halts cannot hang the test."""
    guard = threading.Timer(seconds, machine.stop, (f"hang guard: {seconds:g} s", 1))
    guard.start()
    try:
        return machine.run(max_exits)
    finally:
        guard.cancel()


def raise_stop_flag(guest: GuestVm) -> None:
    """Ask a guest polling ``layout.STOP_FLAG_ADDR`` to stop (safe while it runs)."""
    ram = guest.ram
    assert ram is not None, "the guest has no RAM (closed?)"
    ram.write(layout.STOP_FLAG_ADDR, struct.pack("<Q", 1))


def join(thread: threading.Thread, what: str | None = None) -> None:
    """Join ``thread``; fail (rather than hang or go on) if it does not end."""
    thread.join(HANG_SECONDS)
    assert not thread.is_alive(), f"{what or thread.name} did not end"


def wait_until(
    condition: Callable[[], bool], what: str, alive: Callable[[], bool] | None = None
) -> None:
    """Poll until ``condition`` holds; fail if ``alive`` says the thing waited for is
    gone, or past the hang guard."""
    deadline = time.monotonic() + HANG_SECONDS
    while not condition():
        if alive is not None and not alive():
            if condition():
                return
            raise AssertionError(f"stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"hung waiting for {what}")
        time.sleep(0.0005)


class Syncs:
    """The values a guest syncs, recorded on its vCPU thread (pass ``record`` as the
    ``on_sync`` callback); host threads wait on them. Call ``ended`` when the run
    returns, so a waiter learns the guest will sync no more."""

    def __init__(self) -> None:
        self.values: list[int] = []
        self._cond = threading.Condition()
        self._ended = False

    def record(self, value: int) -> None:
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    def ended(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.values)

    def wait_for(self, count: int) -> None:
        """Until the guest has synced ``count`` times; fail if it ended first."""
        with self._cond:
            reached = self._cond.wait_for(
                lambda: len(self.values) >= count or self._ended, HANG_SECONDS
            )
            if not reached or len(self.values) < count:
                state = "ended" if self._ended else "hung"
                raise AssertionError(
                    f"guest {state} after {len(self.values)} syncs, waiting for {count}"
                )


class Worker(threading.Thread):
    """A host thread whose exception reaches the test: ``finish`` re-raises it."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # re-raised by finish() on the test's thread
            self.error = error

    def finish(self) -> None:
        join(self)
        if self.error is not None:
            raise self.error
