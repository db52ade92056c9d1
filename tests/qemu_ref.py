"""QEMU 7.2 q35 as the reference: every function's 4 KiB of config space, and how it answers writes.

One paused QEMU (``-S``) per topology. Its qtest socket (``-qtest``, usable beside
``-accel kvm``) reads and writes guest-physical memory and I/O ports directly, 4 KiB in one
command, which the human monitor cannot do (its ``xp`` only reads, as text). MMCONFIG is
enabled by writing PCIEXBAR through CF8/CFC; bridges are then numbered depth-first as
firmware would (``bus=`` on pcihole's ``root-port``), and every function is read through ECAM.

``probe`` measures writable and write-1-to-clear bits by writing each dword zeros, then ones,
then its old value; ``probe_model`` runs the same sequence on a pcihole ``ConfigSpace``, so a
test compares answers rather than masks guessed from them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pcihole.pci.bdf import Bdf
from pcihole.pci.config import ConfigSpace

QEMU = "qemu-system-x86_64"
PAGE = 4096
ECAM_BASE = 0xB000_0000
"""QEMU's PCIEXBAR reset base; 256 buses fit below 0xc0000000."""
PCIEXBAR = 0x60
PCIEXBAR_ENABLE = 0x1
CF8, CFC = 0xCF8, 0xCFC
CF8_ENABLE = 0x8000_0000
HOST_BRIDGE = Bdf(0, 0, 0)
START_TIMEOUT = 10.0

Probe = tuple[int, int, int]
"""Per dword: (reads back after writing zeros, after writing ones, after writing old value)."""


def qemu_missing_reason() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm is absent: QEMU runs here with -accel kvm"
    return None


@dataclass(frozen=True)
class QemuFunction:
    bdf: Bdf
    config: bytes
    """All 4096 bytes at reset (bridges already given their bus numbers)."""
    probes: tuple[Probe, ...] = ()
    """One per dword when asked for, see ``probe``."""


class Qtest:
    """QEMU's qtest line protocol: one command, one ``OK ...`` answer."""

    def __init__(self, connection: socket.socket) -> None:
        self._file = connection.makefile("rw", encoding="ascii", newline="\n")

    def command(self, text: str) -> str:
        return self.batch([text])[0]

    def batch(self, commands: Sequence[str]) -> list[str]:
        """Send every command at once, then read the answers: QEMU runs them in order."""
        self._file.write("".join(f"{text}\n" for text in commands))
        self._file.flush()
        return [self._answer(text) for text in commands]

    def _answer(self, text: str) -> str:
        while True:
            line = self._file.readline()
            if not line:
                raise RuntimeError(f"QEMU closed the qtest socket after {text!r}")
            if not line.startswith("IRQ"):  # asynchronous interrupt notes
                break
        if not line.startswith("OK"):
            raise RuntimeError(f"qtest {text!r}: {line.strip()}")
        return line[2:].strip()

    def read(self, address: int, size: int) -> bytes:
        return bytes.fromhex(self.command(f"read {address:#x} {size:#x}")[2:])

    def readl(self, address: int) -> int:
        return int(self.command(f"readl {address:#x}"), 16)

    def writel(self, address: int, value: int) -> None:
        self.command(f"writel {address:#x} {value:#x}")

    def outl(self, port: int, value: int) -> None:
        self.command(f"outl {port:#x} {value:#x}")

    def inl(self, port: int) -> int:
        return int(self.command(f"inl {port:#x}"), 16)


class QemuQ35:
    """Config-space accessors of a paused q35 QEMU (ECAM enabled at ``ECAM_BASE``)."""

    def __init__(self, qtest: Qtest) -> None:
        self.qtest = qtest
        self.cf8_write(HOST_BRIDGE, PCIEXBAR + 4, 0)
        self.cf8_write(HOST_BRIDGE, PCIEXBAR, ECAM_BASE | PCIEXBAR_ENABLE)

    def cf8_write(self, bdf: Bdf, offset: int, value: int) -> None:
        self.qtest.outl(CF8, CF8_ENABLE | bdf.bus << 16 | bdf.devfn << 8 | offset)
        self.qtest.outl(CFC, value)

    def cf8_read(self, bdf: Bdf, offset: int) -> int:
        self.qtest.outl(CF8, CF8_ENABLE | bdf.bus << 16 | bdf.devfn << 8 | offset)
        return self.qtest.inl(CFC)

    def page(self, bdf: Bdf) -> bytes:
        return self.qtest.read(ECAM_BASE + bdf.ecam_offset, PAGE)

    def read(self, bdf: Bdf, offset: int) -> int:
        return self.qtest.readl(ECAM_BASE + bdf.ecam_offset + offset)

    def write(self, bdf: Bdf, offset: int, value: int) -> None:
        self.qtest.writel(ECAM_BASE + bdf.ecam_offset + offset, value)

    def probe(self, bdf: Bdf, reset: bytes) -> tuple[Probe, ...]:
        """``probe`` of one function, all its commands in one batch (``reset``: its page)."""
        commands = []
        for offset in range(0, PAGE, 4):
            old = int.from_bytes(reset[offset : offset + 4], "little")
            for value in (0, 0xFFFF_FFFF, old):
                commands += self._write_read(bdf, offset, value)
        answers = self.qtest.batch(commands)
        values = [int(answer, 16) for answer in answers if answer]
        return tuple(zip(values[0::3], values[1::3], values[2::3], strict=True))

    def _write_read(self, bdf: Bdf, offset: int, value: int) -> list[str]:
        if bdf == HOST_BRIDGE and offset in (PCIEXBAR, PCIEXBAR + 4):
            # Moving PCIEXBAR moves ECAM itself: go through CF8/CFC.
            address = CF8_ENABLE | bdf.devfn << 8 | offset
            return [f"outl {CF8:#x} {address:#x}", f"outl {CFC:#x} {value:#x}", f"inl {CFC:#x}"]
        address = ECAM_BASE + bdf.ecam_offset + offset
        return [f"writel {address:#x} {value:#x}", f"readl {address:#x}"]

    def number_buses(self) -> list[Bdf]:
        """Find every function, giving bridges buses depth-first as firmware does."""
        found: list[Bdf] = []
        self._scan_bus(0, found, [1])
        return found

    def _scan_bus(self, bus: int, found: list[Bdf], next_bus: list[int]) -> None:
        for device in range(32):
            for function in range(8):
                bdf = Bdf(bus, device, function)
                if self.read(bdf, 0) & 0xFFFF == 0xFFFF:
                    if function == 0:
                        break
                    continue
                found.append(bdf)
                header = self.read(bdf, 0xC) >> 16 & 0xFF
                if header & 0x7F == 1:
                    self._number_bridge(bdf, found, next_bus)
                if function == 0 and not header & 0x80:
                    break

    def _number_bridge(self, bdf: Bdf, found: list[Bdf], next_bus: list[int]) -> None:
        secondary = next_bus[0]
        next_bus[0] += 1
        latency = self.read(bdf, 0x18) & 0xFF00_0000
        self.write(bdf, 0x18, latency | 0xFF << 16 | secondary << 8 | bdf.bus)
        self._scan_bus(secondary, found, next_bus)
        subordinate = next_bus[0] - 1
        self.write(bdf, 0x18, latency | subordinate << 16 | secondary << 8 | bdf.bus)


def probe_model(config: ConfigSpace) -> tuple[Probe, ...]:
    """What ``QemuQ35.probe`` does, on a pcihole function: each dword written zeros, ones,
    then its value at the start, read back after each write."""
    reset = config.snapshot()
    answers = []
    for offset in range(0, PAGE, 4):
        read_backs = []
        for value in (0, 0xFFFF_FFFF, int.from_bytes(reset[offset : offset + 4], "little")):
            config.write(offset, 4, value)
            read_backs.append(config.read(offset, 4))
        zeros, ones, back = read_backs
        answers.append((zeros, ones, back))
    return tuple(answers)


@contextmanager
def running_qemu(devices: Sequence[str], args: Sequence[str] = ()) -> Iterator[QemuQ35]:
    """A paused q35 QEMU with ``args``, then ``-device`` for each of ``devices``; killed on exit.

    ``args`` carries what devices refer to, e.g. ``-blockdev null-co,node-name=d0``.
    """
    with tempfile.TemporaryDirectory(prefix="pcihole-qemu-") as directory:
        path = os.path.join(directory, "qtest.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(START_TIMEOUT)
        command = [
            QEMU,
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-nodefaults",
            "-S",
            "-display",
            "none",
            "-qtest",
            f"unix:{path}",
            "-qtest-log",
            "/dev/null",
        ]
        command += args
        for device in devices:
            command += ["-device", device]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                process.kill()
                _, errors = process.communicate()
                raise RuntimeError(f"QEMU did not start: {errors.decode().strip()}") from None
            with connection:
                try:
                    yield QemuQ35(Qtest(connection))
                except (OSError, RuntimeError) as error:
                    try:
                        errors = process.communicate(timeout=2)[1].decode().strip()
                    except subprocess.TimeoutExpired:
                        raise error from None
                    raise RuntimeError(f"QEMU exited: {errors}") from error
        finally:
            listener.close()
            if process.poll() is None:
                process.kill()
            process.communicate()


def read_qemu(
    devices: Sequence[str], args: Sequence[str] = (), *, probes: bool = False
) -> dict[Bdf, QemuFunction]:
    """Every function's reset config space (and, with ``probes``, its write answers).

    Probing goes deepest bus first, so that bridge writes (secondary bus reset, slot power
    off, bus numbers) only touch functions already measured.
    """
    with running_qemu(devices, args) as qemu:
        functions = qemu.number_buses()
        pages = {bdf: qemu.page(bdf) for bdf in functions}
        answers: dict[Bdf, tuple[Probe, ...]] = {}
        if probes:
            for bdf in sorted(functions, key=lambda b: (-b.bus, b.devfn)):
                answers[bdf] = qemu.probe(bdf, pages[bdf])
    return {bdf: QemuFunction(bdf, pages[bdf], answers.get(bdf, ())) for bdf in functions}
