"""ICH9 AHCI host bus adapter with nothing attached, as QEMU 7.2's hw/ide/ahci.c shows it.

Two register blocks, both given to the machine to place where the guest programs them:
``Ahci`` is the ABAR (BAR5, 4 KiB of memory): generic host control at 0x00 (CAP, GHC, IS,
PI, VS) and one 0x80-byte block per port from 0x100. ``AhciIndexData`` is the index/data
pair in BAR4 (I/O): index at 0x10, data at 0x14, reaching the ABAR registers by port I/O.

Every port is empty: PxSSTS.DET reads 0 (no device, no PHY), so firmware waiting for a
link gives up at its own time-out (SeaBIOS: ``AHCI/n: link down`` after 10 ms per port,
ports probed in parallel). The rest behaves as QEMU's with no drive, read back from a
running QEMU 7.2 through the index/data pair:

- PxCMD.FRE (FIS receive enable) starts the FIS engine (PxCMD.FR) if the FIS base is in
  guest memory, and the first time after a reset the port posts the initial D2H register
  FIS there (status 0x50, signature 0xffff0101: QEMU's empty IDE slot), setting PxTFD,
  PxSIG and PxIS.DHRS; PxCMD.ST likewise starts the command engine (PxCMD.CR) if the
  command list is in guest memory. Clearing FRE/ST stops them at once.
- Commands issued (PxCI) are never completed: there is no drive to run them.
- PxSCTL.DET going 1 -> 0 (COMRESET) resets the port: PxTFD 0x7f, PxSIG all ones.
- GHC.HR resets the HBA; GHC.AE is always set (CAP.SAM); GHC.IE gates the interrupt.
- Writes must be aligned dwords (QEMU ignores misaligned ones and takes a narrower write as
  the whole register); reads may be narrower or unaligned within a dword, or 8 bytes.

The interrupt is the PCI INTx line: raised while GHC.IE and any port's PxIS & PxIE. MSI
is not modelled (SeaBIOS polls).
"""

from __future__ import annotations

from dataclasses import dataclass

from pcihole.devices.irq import IrqLine, IrqPin, no_irq
from pcihole.memory.access import MEMORY_ERRORS, GuestMemory

ABAR_SIZE = 0x1000
"""QEMU's AHCI_MEM_BAR_SIZE: the registers need 0x400 but QEMU maps 4 KiB."""
IDP_SIZE = 0x20
"""The index/data pair BAR."""
IDP_INDEX = 0x10
"""ICH9's index register inside BAR4 (QEMU's ``idp_offset``)."""
IDP_DATA = IDP_INDEX + 4
PORTS = 6
"""ICH9 has six SATA ports."""
PORT_BASE = 0x100
PORT_SIZE = 0x80
COMMAND_SLOTS = 32

# Generic host control.
CAP, GHC, IS, PI, VS = 0x00, 0x04, 0x08, 0x0C, 0x10
CAP_S64A = 1 << 31
CAP_SNCQ = 1 << 30
CAP_SAM = 1 << 18
CAP_ISS_GEN1 = 1 << 20
GHC_HR = 1 << 0
GHC_IE = 1 << 1
GHC_AE = 1 << 31
VERSION_1_0 = 0x00010000

# Per-port registers (offsets inside a port's block).
PXCLB, PXCLBU, PXFB, PXFBU = 0x00, 0x04, 0x08, 0x0C
PXIS, PXIE, PXCMD = 0x10, 0x14, 0x18
PXTFD, PXSIG, PXSSTS, PXSCTL, PXSERR, PXSACT, PXCI = 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38
PXIE_WRITABLE = 0xFDC000FF
"""Interrupt-enable bits QEMU keeps; the rest read 0."""
CMD_ST = 1 << 0
CMD_SUD = 1 << 1
CMD_POD = 1 << 2
CMD_FRE = 1 << 4
CMD_FR = 1 << 14
CMD_CR = 1 << 15
CMD_READ_ONLY = 0x007DFFE0
"""QEMU's PORT_CMD_RO_MASK: engine status (FR, CR, CCS) and capability bits."""
CMD_ICC_MASK = 0xF << 28
"""Interface-communication-control requests: QEMU reads them back as 0."""
CMD_RESET = CMD_SUD | CMD_POD
"""PxCMD after an HBA reset: spun up and powered on."""
TFD_RESET = 0x7F
SIG_RESET = 0xFFFFFFFF
IS_DHRS = 1 << 0
"""Device-to-host register FIS received."""
SCTL_DET_MASK = 0xF
FIS_AREA = 256
"""The received-FIS structure a port writes into guest memory."""
COMMAND_LIST = 1024
D2H_FIS_OFFSET = 0x40
NO_DRIVE_STATUS = 0x50
"""QEMU's empty IDE slot after reset: READY | SEEK."""
NO_DRIVE_SIGNATURE = 0xFFFF0101
"""An empty slot's signature (lcyl = hcyl = 0xff, sector = nsector = 1)."""


@dataclass
class AhciPort:
    """One port's registers (QEMU's ``AHCIPortRegs``) and engine state."""

    clb: int = 0
    clbu: int = 0
    fb: int = 0
    fbu: int = 0
    irq_stat: int = 0
    irq_mask: int = 0
    cmd: int = CMD_RESET
    tfd: int = TFD_RESET
    sig: int = SIG_RESET
    sctl: int = 0
    serr: int = 0
    sact: int = 0
    ci: int = 0
    init_d2h_sent: bool = False

    @property
    def fis_base(self) -> int:
        return self.fbu << 32 | self.fb

    @property
    def list_base(self) -> int:
        return self.clbu << 32 | self.clb

    def reset_link(self) -> None:
        """QEMU's ``ahci_reset_port`` for an empty port: taskfile and signature as after a
        COMRESET with nothing answering."""
        self.serr = 0
        self.sact = 0
        self.tfd = TFD_RESET
        self.sig = SIG_RESET
        self.init_d2h_sent = False


class Ahci:
    """The ABAR register block of an ICH9 AHCI controller whose ports are all empty."""

    def __init__(self, memory: GuestMemory, irq: IrqLine = no_irq, ports: int = PORTS) -> None:
        if not 1 <= ports <= 32:
            raise ValueError(f"an AHCI HBA has 1 to 32 ports, not {ports}")
        self.memory = memory
        self._irq = IrqPin(irq)
        self.cap = (
            (ports - 1) | (COMMAND_SLOTS - 1) << 8 | CAP_ISS_GEN1 | CAP_SAM | CAP_SNCQ | CAP_S64A
        )
        self.implemented = (1 << ports) - 1
        self.ports = [AhciPort() for _ in range(ports)]
        self.ghc = GHC_AE
        self.irq_status = 0
        self.dma_failures = 0
        """FIS or command-list bases outside guest memory (the engine did not start)."""
        self.reset()

    def reset(self) -> None:
        """QEMU's ``ahci_reset``: GHC, interrupts and every port's control registers."""
        self.irq_status = 0
        self.ghc = GHC_AE
        for port in self.ports:
            port.irq_stat = port.irq_mask = port.sctl = 0
            port.cmd = CMD_RESET
            port.reset_link()
        self._update_irq()

    # -- guest accesses --------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        aligned = offset & ~3
        value = self._read_dword(aligned)
        if (offset - aligned) + size > 4:
            value |= self._read_dword(aligned + 4) << 32
        return value >> 8 * (offset - aligned) & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset & 3:
            return  # QEMU: "ahci: Mis-aligned write", dropped
        if size == 8:
            self._write_dword(offset, value & 0xFFFFFFFF)
            self._write_dword(offset + 4, value >> 32)
        else:
            self._write_dword(offset, value)

    def _read_dword(self, offset: int) -> int:
        if offset < PORT_BASE:
            host = {CAP: self.cap, GHC: self.ghc, IS: self.irq_status, PI: self.implemented}
            return host.get(offset, VERSION_1_0 if offset == VS else 0)
        index, register = divmod(offset - PORT_BASE, PORT_SIZE)
        if index >= len(self.ports):
            return 0
        port = self.ports[index]
        return {
            PXCLB: port.clb,
            PXCLBU: port.clbu,
            PXFB: port.fb,
            PXFBU: port.fbu,
            PXIS: port.irq_stat,
            PXIE: port.irq_mask,
            PXCMD: port.cmd,
            PXTFD: port.tfd,
            PXSIG: port.sig,
            PXSSTS: 0,
            PXSCTL: port.sctl,
            PXSERR: port.serr,
            PXSACT: port.sact,
            PXCI: port.ci,
        }.get(register, 0)

    def _write_dword(self, offset: int, value: int) -> None:
        if offset < PORT_BASE:
            self._write_host(offset, value)
            return
        index, register = divmod(offset - PORT_BASE, PORT_SIZE)
        if index < len(self.ports):
            self._write_port(self.ports[index], register, value)

    def _write_host(self, offset: int, value: int) -> None:
        if offset == GHC:
            if value & GHC_HR:
                self.reset()
            else:
                self.ghc = value & (GHC_HR | GHC_IE) | GHC_AE
                self._update_irq()
        elif offset == IS:
            self.irq_status &= ~value
            self._update_irq()
        # CAP and PI are write-once on real parts; QEMU ignores writes, as here.

    def _write_port(self, port: AhciPort, register: int, value: int) -> None:
        if register in (PXCLB, PXCLBU, PXFB, PXFBU):
            name = {PXCLB: "clb", PXCLBU: "clbu", PXFB: "fb", PXFBU: "fbu"}[register]
            setattr(port, name, value)
        elif register == PXIS:
            port.irq_stat &= ~value
            self._update_irq()
        elif register == PXIE:
            port.irq_mask = value & PXIE_WRITABLE
            self._update_irq()
        elif register == PXCMD:
            port.cmd = port.cmd & CMD_READ_ONLY | value & ~(CMD_READ_ONLY | CMD_ICC_MASK)
            self._start_engines(port)
        elif register == PXSCTL:
            if port.sctl & SCTL_DET_MASK == 1 and value & SCTL_DET_MASK == 0:
                port.reset_link()  # COMRESET released: nothing answers
            port.sctl = value
        elif register == PXSERR:
            port.serr &= ~value
        elif register == PXSACT:
            port.sact |= value
        elif register == PXCI:
            port.ci |= value  # no drive: the commands stay outstanding

    # -- engines ---------------------------------------------------------------------------

    def _mappable(self, address: int, length: int) -> bool:
        try:
            self.memory.read(address, length)
        except MEMORY_ERRORS:
            self.dma_failures += 1
            return False
        return True

    def _start_engines(self, port: AhciPort) -> None:
        """QEMU's ``ahci_cond_start_engines``, then the initial D2H FIS once FR runs."""
        if port.cmd & CMD_ST and not port.cmd & CMD_CR:
            if not self._mappable(port.list_base, COMMAND_LIST):
                port.cmd &= ~CMD_ST
                return  # QEMU gives up here, FIS engine untouched
            port.cmd |= CMD_CR
        elif not port.cmd & CMD_ST:
            port.cmd &= ~CMD_CR
        if port.cmd & CMD_FRE and not port.cmd & CMD_FR:
            if self._mappable(port.fis_base, FIS_AREA):
                port.cmd |= CMD_FR
            else:
                port.cmd &= ~CMD_FRE
        elif not port.cmd & CMD_FRE:
            port.cmd &= ~CMD_FR
        if port.cmd & CMD_FR and not port.init_d2h_sent:
            self._post_initial_d2h(port)

    def _post_initial_d2h(self, port: AhciPort) -> None:
        # Register FIS (type 0x34) with the interrupt bit, from an empty IDE slot.
        fis = bytearray(20)
        fis[0:8] = bytes([0x34, 0x40, NO_DRIVE_STATUS, 0x00, 0x01, 0xFF, 0xFF, 0xA0])
        fis[12] = 0x01
        try:
            self.memory.write(port.fis_base + D2H_FIS_OFFSET, bytes(fis))
        except MEMORY_ERRORS:
            self.dma_failures += 1
            return
        port.init_d2h_sent = True
        port.tfd = NO_DRIVE_STATUS
        port.sig = NO_DRIVE_SIGNATURE
        port.irq_stat |= IS_DHRS
        self._update_irq()

    def _update_irq(self) -> None:
        """QEMU's ``ahci_check_irq``: IS follows the ports' enabled status bits."""
        self.irq_status = 0
        for index, port in enumerate(self.ports):
            if port.irq_stat & port.irq_mask:
                self.irq_status |= 1 << index
        self._irq.set(bool(self.irq_status and self.ghc & GHC_IE))


class AhciIndexData:
    """BAR4 of ICH9 AHCI: an index register and a data window onto the ABAR registers."""

    def __init__(self, hba: Ahci) -> None:
        self.hba = hba
        self.index = 0

    def read(self, offset: int, size: int) -> int:
        if offset == IDP_INDEX:
            return self.index & ((1 << 8 * size) - 1)
        if offset == IDP_DATA:
            return self.hba.read(self.index, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IDP_INDEX:
            self.index = value & (ABAR_SIZE - 1) & ~3
        elif offset == IDP_DATA:
            self.hba.write(self.index, size, value)
