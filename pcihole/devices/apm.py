"""The ICH9 APM ports: APM_CNT at 0xb2 (the FADT's SMI_CMD) and APM_STS at 0xb3.

After QEMU 7.2's ``hw/isa/apm.c``: two byte registers that read back what was last
written (0 at power-on; QEMU never resets them). The device handles bytes only; a wider
access is split into bytes, low port first, as QEMU's memory core splits it. Every byte
written to APM_CNT goes to ``on_command`` (QEMU's ``apm_ctrl_changed`` callback); what it
means is the PM block's business (``AcpiPm.apm_command``: 2 enables ACPI, 3 disables it).
"""

from __future__ import annotations

from collections.abc import Callable

APM_CNT = 0
APM_STS = 1


class Apm:
    """APM_CNT and APM_STS, offsets relative to ``layout.APM_PORT``."""

    def __init__(self, on_command: Callable[[int], None] | None = None) -> None:
        self._on_command = on_command
        self.registers = bytearray(2)
        """APM_CNT, APM_STS."""
        self.commands = 0
        """Bytes written to APM_CNT."""

    def read(self, offset: int, size: int) -> int:
        value = 0
        for index in range(size):
            port = (offset + index) & 1  # QEMU decodes one address bit
            value |= self.registers[port] << (8 * index)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for index in range(size):
            port = (offset + index) & 1
            byte = value >> (8 * index) & 0xFF
            self.registers[port] = byte
            if port == APM_CNT:
                self.commands += 1
                if self._on_command is not None:
                    self._on_command(byte)
