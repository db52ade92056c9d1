"""QEMU's fw_cfg read through its monitor: the reference for what pcihole's device serves.

QEMU runs paused (``-S``) with ``-machine q35 -nodefaults -accel kvm``; HMP's ``o /h``
(16-bit) selects an item at 0x510, ``i /b`` reads 0x511 byte by byte.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from types import TracebackType
from typing import Any

QEMU = "qemu-system-x86_64"
FILE_DIR = 0x19
CONNECT_TIMEOUT = 30.0


def qemu_missing_reason() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is absent (Debian package qemu-system-x86)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is absent or not usable: QEMU's KVM e820 reservation needs it"
    return None


class QemuFwCfg:
    """A paused QEMU q35 whose fw_cfg items can be read."""

    def __init__(self, *, memory: str = "128M", cpus: int = 1) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="pcihole-qemu-")
        path = os.path.join(self._dir.name, "qmp.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(CONNECT_TIMEOUT)
        self._log_path = os.path.join(self._dir.name, "qemu.log")
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [QEMU, "-accel", "kvm", "-machine", "q35", "-nodefaults", "-S", "-display",
                 "none", "-m", memory, "-smp", str(cpus), "-qmp", f"unix:{path}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            connection, _ = listener.accept()
        except OSError as error:
            with open(self._log_path, errors="replace") as log:
                said = log.read().strip()
            self.close()
            raise RuntimeError(f"QEMU did not connect ({error}): {said}") from None
        finally:
            listener.close()
        self._entries_cache: dict[str, tuple[int, int]] | None = None
        self._stream = connection.makefile("rw")
        self._stream.readline()  # greeting
        self._command("qmp_capabilities")

    def _command(self, name: str, **arguments: Any) -> Any:
        self._stream.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self._stream.flush()
        while True:
            reply = json.loads(self._stream.readline())
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def _hmp(self, line: str) -> str:
        return str(self._command("human-monitor-command", **{"command-line": line}))

    def item(self, selector: int, length: int) -> bytes:
        self._hmp(f"o /h 0x510 {selector:#x}")
        return bytes(int(self._hmp("i /b 0x511").split("=")[1], 16) for _ in range(length))

    def directory(self) -> dict[str, int]:
        """File name -> size."""
        return {name: size for name, (_, size) in self._entries().items()}

    def file(self, name: str, length: int) -> bytes:
        return self.item(self._entries()[name][0], length)

    def _entries(self) -> dict[str, tuple[int, int]]:
        if self._entries_cache is None:
            self._entries_cache = self._read_entries()
        return self._entries_cache

    def _read_entries(self) -> dict[str, tuple[int, int]]:
        count = int.from_bytes(self.item(FILE_DIR, 4), "big")
        raw = self.item(FILE_DIR, 4 + 64 * count)[4:]
        entries = {}
        for index in range(count):
            entry = raw[64 * index : 64 * (index + 1)]
            name = entry[8:].rstrip(b"\0").decode("ascii")
            entries[name] = (int.from_bytes(entry[4:6], "big"), int.from_bytes(entry[:4], "big"))
        return entries

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        self._dir.cleanup()

    def __enter__(self) -> QemuFwCfg:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
