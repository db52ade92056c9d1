"""The ICH9 AHCI controller's memory registers (ABAR, BAR 5) with no drive on any port.

As QEMU 7.2's ``hw/ide/ahci.c`` presents them after reset for an ``ich9-ahci`` whose six
ports have nothing attached: CAP says 6 ports, 32 command slots, NCQ, 64-bit, AHCI-only,
Gen1 speed; GHC has AHCI enable set; PI = 0x3f; VS = 1.0. Each port's SStatus reads 0 (no
device, no link), its task file 0x7f and signature all ones, and its command register
mirrors FIS receive and start into their "running" bits at once, as QEMU's does when no
engine has work. So firmware finds six empty ports: links that never come up, engines
that stop when asked, and nothing that waits. Commands issued are never completed
(there is no device to complete them; firmware never issues any on a port without link).
"""

from __future__ import annotations

ABAR_SIZE = 0x1000
PORTS = 6
CAP = 0x00
GHC = 0x04
IS = 0x08
PI = 0x0C
VS = 0x10
PORT_BASE = 0x100
PORT_SIZE = 0x80

CAP_VALUE = (PORTS - 1) | 31 << 8 | 1 << 18 | 1 << 20 | 1 << 30 | 1 << 31
"""Ports - 1, command slots - 1, AHCI only, Gen1, NCQ, 64-bit addressing (QEMU's)."""
GHC_HR = 1 << 0
GHC_IE = 1 << 1
GHC_AE = 1 << 31
VS_VALUE = 0x00010000

# Port registers (offsets inside a port's 0x80 bytes).
P_CLB, P_CLBU, P_FB, P_FBU, P_IS, P_IE, P_CMD = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18
P_TFD, P_SIG, P_SSTS, P_SCTL, P_SERR, P_SACT, P_CI = 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38
CMD_ST = 1 << 0
CMD_SUD = 1 << 1
CMD_POD = 1 << 2
CMD_FRE = 1 << 4
CMD_FR = 1 << 14
CMD_CR = 1 << 15
CMD_RUNNING = CMD_FR | CMD_CR
TFD_NO_DEVICE = 0x7F
SIG_NO_DEVICE = 0xFFFFFFFF
STORED = {P_CLB, P_CLBU, P_FB, P_FBU, P_IE, P_SCTL}
"""Port registers that keep what is written (the rest are handled one by one or RO)."""


class IdleAhci:
    """ABAR as a bus device: 32-bit registers, any aligned access width."""

    def __init__(self) -> None:
        self.ghc = GHC_AE
        self.ports = [self._port_reset() for _ in range(PORTS)]

    @staticmethod
    def _port_reset() -> dict[int, int]:
        port = dict.fromkeys(range(0, PORT_SIZE, 4), 0)
        port[P_CMD] = CMD_SUD | CMD_POD
        port[P_TFD] = TFD_NO_DEVICE
        port[P_SIG] = SIG_NO_DEVICE
        return port

    def _read32(self, offset: int) -> int:
        if offset >= PORT_BASE:
            index, register = divmod(offset - PORT_BASE, PORT_SIZE)
            return self.ports[index][register] if index < PORTS else 0
        return {CAP: CAP_VALUE, GHC: self.ghc, PI: (1 << PORTS) - 1, VS: VS_VALUE}.get(offset, 0)

    def read(self, offset: int, size: int) -> int:
        word = self._read32(offset & ~3)
        return word >> 8 * (offset & 3) & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        shift = 8 * (offset & 3)
        mask = ((1 << 8 * size) - 1) << shift
        aligned = offset & ~3
        value = (self._read32(aligned) & ~mask) | (value << shift & mask)
        if aligned == GHC:
            self._write_ghc(value)
        elif aligned >= PORT_BASE:
            index, register = divmod(aligned - PORT_BASE, PORT_SIZE)
            if index < PORTS:
                self._write_port(self.ports[index], register, value, mask >> shift << shift)

    def _write_ghc(self, value: int) -> None:
        if value & GHC_HR:  # a controller reset completes at once
            self.ports = [self._port_reset() for _ in range(PORTS)]
            self.ghc = GHC_AE
            return
        self.ghc = GHC_AE | value & GHC_IE

    @staticmethod
    def _write_port(port: dict[int, int], register: int, value: int, mask: int) -> None:
        if register in STORED:
            port[register] = value
        elif register in (P_IS, P_SERR):  # write one to clear; nothing ever sets them
            port[register] &= ~(value & mask)
        elif register == P_CMD:
            value &= ~CMD_RUNNING
            running = (CMD_CR if value & CMD_ST else 0) | (CMD_FR if value & CMD_FRE else 0)
            port[P_CMD] = value | running
