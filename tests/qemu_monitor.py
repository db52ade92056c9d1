"""QEMU as the reference: a q35 QEMU under KVM driven through QMP (and HMP through it).

``Qemu`` starts ``qemu-system-x86_64 -accel kvm -machine q35 -nodefaults -display none``
with the caller's extra arguments; its debug console, when asked for, is QEMU's stdout,
so a test waits for a firmware line by reading, never by sleeping. The fw_cfg helpers read
items as firmware does: HMP ``o /h`` (16-bit) selects at 0x510, ``i /b`` reads 0x511.
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
from types import TracebackType
from typing import Any

QEMU = "qemu-system-x86_64"
SEABIOS = "/usr/share/seabios/bios.bin"
FW_CFG_FILE_DIR = 0x19
CONNECT_TIMEOUT = 30.0


def qemu_missing_reason() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is absent (Debian package qemu-system-x86)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is absent or not usable: the reference QEMU runs under KVM"
    return None


class Qemu:
    """A running QEMU q35; ``debugcon=True`` puts its port-0x402 console on ``read_until``."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        machine: str = "q35",
        memory: str = "128M",
        debugcon: bool = False,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="pcihole-qemu-")
        path = os.path.join(self._dir.name, "qmp.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(CONNECT_TIMEOUT)
        console = ["-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        command = [QEMU, "-accel", "kvm", "-machine", machine, "-nodefaults", "-display", "none"]
        command += ["-m", memory, "-qmp", f"unix:{path}", *(console if debugcon else []), *args]
        self._log = open(os.path.join(self._dir.name, "stderr"), "w+b")  # noqa: SIM115
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log
        )
        try:
            connection, _ = listener.accept()
        except OSError as error:
            self.close()
            raise RuntimeError(f"QEMU did not connect ({error}): {self._stderr()}") from None
        finally:
            listener.close()
        self._stream = connection.makefile("rw")
        self._stream.readline()  # greeting
        self.command("qmp_capabilities")
        self._output = b""

    def command(self, name: str, **arguments: Any) -> Any:
        self._stream.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self._stream.flush()
        while True:
            reply = json.loads(self._stream.readline())
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def hmp(self, line: str) -> str:
        return str(self.command("human-monitor-command", **{"command-line": line}))

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        """Debug console output up to and including ``marker``; fails after ``timeout``."""
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout
        while marker not in self._output:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._process.stdout], [], [], max(left, 0))
            chunk = os.read(self._process.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise RuntimeError(f"no {marker!r} from QEMU; it said: {self._output[-500:]!r}")
            self._output += chunk
        return self._output[: self._output.index(marker) + len(marker)]

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> Qemu:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def fw_cfg_item(qemu: Qemu, selector: int, length: int) -> bytes:
    qemu.hmp(f"o /h 0x510 {selector:#x}")
    return bytes(int(qemu.hmp("i /b 0x511").split("=")[1], 16) for _ in range(length))


def fw_cfg_directory(qemu: Qemu) -> dict[str, tuple[int, int]]:
    """File name -> (selector, size), from QEMU's fw_cfg file directory."""
    count = int.from_bytes(fw_cfg_item(qemu, FW_CFG_FILE_DIR, 4), "big")
    raw = fw_cfg_item(qemu, FW_CFG_FILE_DIR, 4 + 64 * count)[4:]
    entries = {}
    for index in range(count):
        entry = raw[64 * index : 64 * (index + 1)]
        name = entry[8:].rstrip(b"\0").decode("ascii")
        entries[name] = (int.from_bytes(entry[4:6], "big"), int.from_bytes(entry[:4], "big"))
    return entries
