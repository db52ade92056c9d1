"""SeaBIOS under QEMU 7.2 q35 as the reference: its debug console log up to a marker.

QEMU runs ``-bios`` with the debug console (isa-debugcon on 0x402) on its stdout; the log
is read from the pipe until the marker appears (no polling), then QEMU is killed (SeaBIOS
waits forever after ``No bootable device.``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.support import HANG_SECONDS

QEMU = "qemu-system-x86_64"
SEABIOS = Path("/usr/share/seabios/bios.bin")
MARKER = "No bootable device."
PCI_LINE = re.compile(r"^(Found \d+ PCI devices.*|PCI: map device .*|PCI: init bdf=.*)$", re.M)
"""What SeaBIOS says of the PCI topology: the count, every BAR it maps, every function it
initialises (bus numbers as firmware assigned them)."""


def seabios_missing_reason() -> str | None:
    if not SEABIOS.exists():
        return f"{SEABIOS} is absent (Debian package seabios; bash scripts/setup installs it)"
    return None


def qemu_missing_reason() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    return None


def iasl_missing_reason() -> str | None:
    if shutil.which("iasl") is None:
        return "iasl is not installed (Debian package acpica-tools)"
    return None


def pci_lines(log: str) -> list[str]:
    return [match.group(1).rstrip() for match in PCI_LINE.finditer(log)]


def qemu_seabios_log(args: Sequence[str], marker: str = MARKER) -> str:
    """SeaBIOS's debug console under ``qemu -machine q35 ARGS`` up to ``marker``."""
    command = [
        QEMU, "-accel", "kvm", "-machine", "q35", "-bios", str(SEABIOS), "-display", "none",
        "-monitor", "none", "-serial", "none", "-no-reboot", "-chardev", "stdio,id=dbg",
        "-device", "isa-debugcon,iobase=0x402,chardev=dbg", *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    log = bytearray()
    guard = threading.Timer(HANG_SECONDS, process.kill)  # a hang guard, not a speed check
    guard.start()
    try:
        while marker.encode() not in log:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                _, errors = process.communicate(timeout=HANG_SECONDS)
                raise AssertionError(f"QEMU ended before {marker!r}: {errors.decode()[-2000:]}")
            log += chunk
    finally:
        guard.cancel()
        process.kill()
        process.communicate(timeout=HANG_SECONDS)
    return log.decode("utf-8", "replace")
