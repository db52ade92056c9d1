"""QEMU q35 under KVM as the reference: the one way pcihole's tests and benchmarks start it.

:func:`qemu_command` is ``qemu-system-x86_64 -accel kvm -machine q35 -nodefaults -display
none`` with the options a caller picks (paused with ``-S``, memory, firmware, the debug
console on stdout). :class:`Qemu` runs it and talks to it:

- QMP (``command``) and the human monitor through it (``hmp``), always;
- with ``qtest=True``, QEMU's qtest socket: guest-physical memory and I/O ports directly,
  4 KiB in one command, which the human monitor cannot do (its ``xp`` only reads, as text);
  commands can be sent in a batch and answered in order;
- with ``debugcon=True``, the port-0x402 console: ``read_until`` waits for a line by
  reading the pipe, never by sleeping.

Port I/O goes through qtest when it is open, else through the human monitor (``o``/``i``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pcihole.closing import Closeable
from pcihole.errors import EnvironmentProblem
from pcihole.layout import DEBUGCON_PORT

QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
SEABIOS = Path("/usr/share/seabios/bios.bin")
"""Debian's SeaBIOS (package ``seabios``), what ``-machine q35`` runs by default."""
CONNECT_TIMEOUT = 60.0
"""A hang guard for QEMU connecting its sockets, never a speed check."""
ROOT_PORTS_QEMU = (
    "-device",
    "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x1c.0,multifunction=on",
    "-device",
    "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x1c.1",
    "-device",
    "pcie-root-port,id=rp3,bus=pcie.0,chassis=3,addr=0x1c.2",
    "-device",
    "virtio-net-pci,bus=rp1",
    "-drive",
    "if=none,id=d0,file=/dev/null,format=raw,file.locking=off",
    "-device",
    "virtio-blk-pci,bus=rp2,drive=d0,bootindex=1",
    "-drive",
    "if=none,id=d1,file=/dev/null,format=raw,file.locking=off",
    "-device",
    "nvme,bus=rp3,drive=d1,serial=pcihole",
    # virtio-net's option ROM (iPXE) would boot from the network: boot the disk only.
    "-boot",
    "strict=on",
)
"""QEMU's arguments for three root ports (00:1c.0-2) with virtio-net, virtio-blk and
NVMe behind them: the machine the SeaBIOS test and benchmark compare with pcihole's."""
_SUFFIX = {1: "b", 2: "w", 4: "l"}
_HMP_SIZE = {1: "/b", 2: "/h", 4: "/w"}


class QemuError(EnvironmentProblem):
    """QEMU did not start, refused a command, or ended early."""


def qemu_missing_reason() -> str | None:
    """Why the reference QEMU cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package {QEMU_PACKAGE})"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is absent or not usable: the reference QEMU runs under KVM"
    return None


def qemu_command(
    args: Sequence[str] = (),
    *,
    machine: str = "q35",
    paused: bool = False,
    memory: str | None = None,
    bios: str | Path | None = None,
    debugcon: bool = False,
    kernel: str | Path | None = None,
    initrd: str | Path | None = None,
    append: str | None = None,
) -> list[str]:
    """The command line: the fixed part, the chosen options, then ``args``."""
    command = [QEMU, "-accel", "kvm", "-machine", machine, "-nodefaults", "-display", "none"]
    command += ["-S"] if paused else []
    command += ["-m", memory] if memory else []
    command += ["-bios", str(bios)] if bios else []
    command += ["-kernel", str(kernel)] if kernel else []
    command += ["-initrd", str(initrd)] if initrd else []
    command += ["-append", append] if append is not None else []
    if debugcon:
        command += ["-chardev", "stdio,id=dbg"]
        command += ["-device", f"isa-debugcon,iobase={DEBUGCON_PORT:#x},chardev=dbg"]
    return [*command, *args]


class Qemu(Closeable):
    """A running QEMU (see the module doc); killed by ``close`` or on leaving ``with``."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        machine: str = "q35",
        paused: bool = False,
        memory: str | None = None,
        bios: str | Path | None = None,
        debugcon: bool = False,
        qtest: bool = False,
        kernel: str | Path | None = None,
        initrd: str | Path | None = None,
        append: str | None = None,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="pcihole-qemu-")
        self._log = open(os.path.join(self._dir.name, "stderr"), "w+b")  # noqa: SIM115
        self._output = b""
        sockets = ["qmp", *(["qtest"] if qtest else [])]
        listeners = {name: self._listen(name) for name in sockets}
        extra = ["-qmp", f"unix:{self._dir.name}/qmp.sock"]
        if qtest:
            extra += ["-qtest", f"unix:{self._dir.name}/qtest.sock", "-qtest-log", "/dev/null"]
        command = qemu_command(
            [*extra, *args],
            machine=machine,
            paused=paused,
            memory=memory,
            bios=bios,
            debugcon=debugcon,
            kernel=kernel,
            initrd=initrd,
            append=append,
        )
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log
        )
        try:
            streams = {name: self._accept(listener) for name, listener in listeners.items()}
        except QemuError:
            self.close()
            raise
        self._qmp = streams["qmp"]
        self._qtest = streams.get("qtest")
        self._qmp.readline()  # greeting
        self.command("qmp_capabilities")

    def _listen(self, name: str) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(self._dir.name, f"{name}.sock"))
        listener.listen(1)
        listener.settimeout(CONNECT_TIMEOUT)
        return listener

    def _accept(self, listener: socket.socket) -> TextIO:
        with listener:
            try:
                connection, _ = listener.accept()
            except OSError as error:
                raise QemuError(f"QEMU did not connect ({error}): {self.stderr()}") from None
        connection.settimeout(None)
        return connection.makefile("rw", encoding="utf-8", newline="\n")

    # -- QMP and the human monitor ---------------------------------------------------------
    def command(self, name: str, **arguments: Any) -> Any:
        """One QMP command; its ``return`` value."""
        self._qmp.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self._qmp.flush()
        while True:
            line = self._qmp.readline()
            if not line:
                raise QemuError(f"QEMU closed QMP after {name}: {self.stderr()}")
            reply = json.loads(line)
            if "error" in reply:
                raise QemuError(f"QMP {name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def hmp(self, line: str) -> str:
        """One human-monitor command line; its text."""
        return str(self.command("human-monitor-command", **{"command-line": line}))

    # -- qtest -----------------------------------------------------------------------------
    def batch(self, commands: Sequence[str]) -> list[str]:
        """Send qtest commands at once, then read the answers (QEMU runs them in order)."""
        if self._qtest is None:
            raise QemuError("qtest commands need Qemu(qtest=True)")
        self._qtest.write("".join(f"{text}\n" for text in commands))
        self._qtest.flush()
        return [self._answer(text) for text in commands]

    def _answer(self, text: str) -> str:
        assert self._qtest is not None
        while True:
            line = self._qtest.readline()
            if not line:
                raise QemuError(f"QEMU closed the qtest socket after {text!r}: {self.stderr()}")
            if not line.startswith("IRQ"):  # asynchronous interrupt notes
                break
        if not line.startswith("OK"):
            raise QemuError(f"qtest {text!r}: {line.strip()}")
        return line[2:].strip()

    def read(self, address: int, size: int) -> bytes:
        """Guest-physical memory (qtest)."""
        return bytes.fromhex(self.batch([f"read {address:#x} {size:#x}"])[0][2:])

    def write(self, address: int, data: bytes) -> None:
        """Guest-physical memory (qtest)."""
        self.batch([f"write {address:#x} {len(data):#x} 0x{data.hex()}"])

    def readl(self, address: int) -> int:
        return int(self.batch([f"readl {address:#x}"])[0], 16)

    def writel(self, address: int, value: int) -> None:
        self.batch([f"writel {address:#x} {value:#x}"])

    # -- I/O ports -------------------------------------------------------------------------
    def port_out(self, port: int, size: int, value: int) -> None:
        """Write ``size`` (1, 2, 4) bytes to an I/O port."""
        if self._qtest is not None:
            self.batch([f"out{_SUFFIX[size]} {port:#x} {value:#x}"])
        else:
            self.hmp(f"o {_HMP_SIZE[size]} {port:#x} {value:#x}")

    def port_in(self, port: int, size: int) -> int:
        """Read ``size`` (1, 2, 4) bytes from an I/O port."""
        if self._qtest is not None:
            return int(self.batch([f"in{_SUFFIX[size]} {port:#x}"])[0], 16)
        return int(self.hmp(f"i {_HMP_SIZE[size]} {port:#x}").split("=")[1], 16)

    # -- debug console ---------------------------------------------------------------------
    def read_until(self, marker: bytes, timeout: float) -> bytes:
        """Debug console output up to and including ``marker``; ``timeout`` is a hang guard."""
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout
        while marker not in self._output:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._process.stdout], [], [], max(left, 0))
            chunk = os.read(self._process.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise QemuError(
                    f"no {marker!r} from QEMU; it said: {self._output[-500:]!r} {self.stderr()}"
                )
            self._output += chunk
        return self._output[: self._output.index(marker) + len(marker)]

    # -- the process -----------------------------------------------------------------------
    def stderr(self) -> str:
        """What QEMU wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-2000:]

    def close(self) -> None:
        if getattr(self, "_process", None) is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
        for name in ("_qmp", "_qtest"):
            stream = getattr(self, name, None)
            if stream is not None:
                stream.close()
        self._log.close()
        self._dir.cleanup()
