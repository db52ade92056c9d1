"""SeaBIOS under QEMU 7.2 q35 as the reference: its debug console log up to a marker.

QEMU (pcihole/measure/qemu.py) runs ``-bios`` with the debug console on its stdout; the
log is read from the pipe until the marker appears (no polling), then QEMU is killed (SeaBIOS
waits forever after ``No bootable device.``).

``SeabiosReference`` starts that QEMU when entered, so it boots beside whatever the test
runs meanwhile (pcihole's own boot), and keeps the log in the tests' cache directory
(``$PCIHOLE_CACHE``, else ``$XDG_CACHE_HOME/pcihole`` or ``~/.cache/pcihole``, under
``tests/``) keyed by QEMU's version, the SeaBIOS image's hash, the arguments and the
marker: a later run with the same QEMU, SeaBIOS and arguments reads it back instead of
booting QEMU again. ``PCIHOLE_FRESH_REFERENCE=1`` ignores what is cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pcihole import layout
from pcihole.arch.x86.acpi import AcpiTables, read_acpi_tables
from pcihole.measure.qemu import QEMU, Qemu
from pcihole.measure.qemu import SEABIOS as SEABIOS
from pcihole.measure.qemu import qemu_missing_reason as qemu_missing_reason
from tests.support import FIRMWARE_SECONDS

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


def cache_dir() -> Path:
    """Where the tests keep what they may reuse between runs (never the repository)."""
    base = os.environ.get("PCIHOLE_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = os.path.join(xdg, "pcihole")
    return Path(base) / "tests"


def reference_key(args: Sequence[str], marker: str) -> str:
    """QEMU's version line, SeaBIOS's SHA-256, the arguments and the marker, hashed."""
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    digest = hashlib.sha256()
    for part in (
        version.stdout.splitlines()[0],
        hashlib.sha256(SEABIOS.read_bytes()).hexdigest(),
        *args,
        marker,
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


class SeabiosReference:
    """QEMU's SeaBIOS log for ``args``: from the cache, or from a QEMU started on entering
    (so that it boots while the caller does its own work) and read by ``log()``."""

    def __init__(self, args: Sequence[str], marker: str = MARKER) -> None:
        self.args = ["-no-reboot", *args]
        self.marker = marker
        self.path = cache_dir() / f"seabios-{reference_key(self.args, marker)}.log"
        self.cached = os.environ.get("PCIHOLE_FRESH_REFERENCE") != "1" and self.path.is_file()
        self._qemu: Qemu | None = None

    def __enter__(self) -> SeabiosReference:
        if not self.cached:
            self._qemu = Qemu(self.args, bios=SEABIOS, debugcon=True)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._qemu is not None:
            self._qemu.close()
            self._qemu = None

    def log(self) -> str:
        if self._qemu is None:
            assert self.cached, "log() outside the with block"
            return self.path.read_text()
        raw = self._qemu.read_until(self.marker.encode(), FIRMWARE_SECONDS)  # a hang guard
        text = raw.decode("utf-8", "replace")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False) as tmp:
            tmp.write(text)
        os.replace(tmp.name, self.path)
        return text


def qemu_acpi_tables(machine: str, directory: Path) -> AcpiTables:
    """The ACPI tables QEMU's SeaBIOS left in RAM for ``-machine machine`` (QEMU's default
    -m): its RAM saved with ``pmemsave`` once SeaBIOS is done, read as an OS finds them."""
    image = directory / f"{machine}.ram"
    with Qemu(["-no-reboot"], machine=machine, bios=SEABIOS, debugcon=True) as qemu:
        qemu.read_until(MARKER.encode(), FIRMWARE_SECONDS)
        qemu.command("stop")
        qemu.command("pmemsave", val=0, size=layout.BOOT_RAM_SIZE, filename=str(image))
    ram = image.read_bytes()

    def read(address: int, length: int) -> bytes:
        if address + length > len(ram):
            raise ValueError(f"{address:#x} is past the end of RAM")
        return ram[address : address + length]

    return read_acpi_tables(read)
