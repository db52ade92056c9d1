"""SeaBIOS under QEMU 7.2 q35 as the reference: its debug console log up to a marker.

QEMU (pcihole/measure/qemu.py) runs ``-bios`` with the debug console on its stdout; the
log is read from the pipe until the marker appears (no polling), then QEMU is killed (SeaBIOS
waits forever after ``No bootable device.``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

from pcihole.measure.qemu import SEABIOS as SEABIOS
from pcihole.measure.qemu import Qemu
from pcihole.measure.qemu import qemu_missing_reason as qemu_missing_reason
from tests.support import HANG_SECONDS

MARKER = "No bootable device."
PCI_LINE = re.compile(r"^(Found \d+ PCI devices.*|PCI: map device .*|PCI: init bdf=.*)$", re.M)
"""What SeaBIOS says of the PCI topology: the count, every BAR it maps, every function it
initialises (bus numbers as firmware assigned them)."""


def seabios_missing_reason() -> str | None:
    if not SEABIOS.exists():
        return f"{SEABIOS} is absent (Debian package seabios; bash scripts/setup installs it)"
    return None


def iasl_missing_reason() -> str | None:
    if shutil.which("iasl") is None:
        return "iasl is not installed (Debian package acpica-tools)"
    return None


def pci_lines(log: str) -> list[str]:
    return [match.group(1).rstrip() for match in PCI_LINE.finditer(log)]


def qemu_seabios_log(args: Sequence[str], marker: str = MARKER) -> str:
    """SeaBIOS's debug console under ``qemu -machine q35 ARGS`` up to ``marker``."""
    with Qemu(["-no-reboot", *args], bios=SEABIOS, debugcon=True) as qemu:
        log = qemu.read_until(marker.encode(), HANG_SECONDS)  # a hang guard, not a speed check
    return log.decode("utf-8", "replace")
