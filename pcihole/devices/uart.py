"""A 16550A UART (COM1 at ``layout.SERIAL_COM1_PORT``, ISA IRQ 4), after QEMU's serial.c.

Eight byte registers. Transmission is instantaneous: each byte written to THR goes to
``sink`` at once, so LSR always shows THRE and TEMT by the time the guest looks, and the
THR-empty interrupt (when IER enables it) follows every write, as in QEMU. Bytes given to
``feed`` wait in an unbounded host-side queue and enter the receiver as it has room (the
16-byte FIFO, or the single RBR without FIFO), which is how QEMU's character backends are
flow-controlled. In loopback mode (MCR bit 4) transmitted bytes are received instead and
the queue waits.

Left out of QEMU's model: line parameters (the divisor and LCR are stored, not used),
break, modem lines of a real tty, and the receive-timeout timer: a FIFO holding fewer
bytes than its trigger level raises the character-timeout interrupt at once instead of
after four character times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pcihole.devices.irq import IrqLine, IrqPin, no_irq

# Register offsets.
RBR_THR = 0  # DLL when LCR.DLAB
IER = 1  # DLM when LCR.DLAB
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01
"""Received data available."""
IER_THRI = 0x02
"""Transmitter holding register empty."""
IER_RLSI = 0x04
"""Receiver line status."""
IER_MSI = 0x08
"""Modem status."""
IER_MASK = 0x0F

IIR_NO_INT = 0x01
IIR_ID = 0x06
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_CTI = 0x0C
"""Character timeout: data waits below the FIFO's trigger level."""
IIR_FIFO_ENABLED = 0xC0

FCR_FE = 0x01
FCR_RFR = 0x02
"""Receive FIFO reset."""
FCR_XFR = 0x04
"""Transmit FIFO reset."""
FCR_KEPT = 0xC9
"""Trigger level, DMA mode and enable stick; the reset bits do not."""
FCR_TRIGGER = 0xC0
TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_INT_ANY = 0x1E
"""Overrun, parity, framing and break: what raises a line-status interrupt."""

MSR_DELTAS = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_DCD = 0x80

FIFO_SIZE = 16
DEFAULT_DIVISOR = 0x0C
"""9600 baud from the 1.8432 MHz clock."""


class Uart16550:
    """The UART's eight ports; ``sink`` takes transmitted bytes, ``irq`` is its line."""

    def __init__(self, sink: Callable[[bytes], None] | None = None, irq: IrqLine = no_irq) -> None:
        self._sink = sink
        self._irq = IrqPin(irq)
        self._pending: deque[int] = deque()
        """Host input not yet taken by the receiver."""
        self._rx: deque[int] = deque()
        self.machine_reset()

    def machine_reset(self) -> None:
        """Power-on state (QEMU ``serial_reset``); host input still queued stays queued."""
        self.rbr = 0
        self.ier = 0
        self.iir = IIR_NO_INT
        self.fcr = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.divisor = DEFAULT_DIVISOR
        self._rx.clear()
        self._trigger = 1
        self._thr_pending = False
        self._timeout_pending = False
        self._irq.set(False)
        self._accept()

    # --- host side ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to receive."""
        self._pending.extend(data)
        self._accept()
        self._update_irq()

    @property
    def waiting(self) -> int:
        """Bytes fed but not yet read by the guest."""
        return len(self._pending) + len(self._rx) + (1 if self._rbr_full() else 0)

    # --- ports -------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, register: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if register == RBR_THR:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if register == IER:
            return self.divisor >> 8 if dlab else self.ier
        if register == IIR_FCR:
            value = self.iir
            if value & (IIR_ID | IIR_NO_INT) == IIR_THRI:
                self._thr_pending = False  # reading IIR acknowledges THR empty
                self._update_irq()
            return value
        if register == LCR:
            return self.lcr
        if register == MCR:
            return self.mcr
        if register == LSR:
            return self._read_lsr()
        if register == MSR:
            return self._read_msr()
        return self.scr

    def _write_byte(self, register: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if register == RBR_THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif register == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | value << 8
            else:
                self._write_ier(value)
        elif register == IIR_FCR:
            self._write_fcr(value)
        elif register == LCR:
            self.lcr = value
        elif register == MCR:
            self._write_mcr(value)
        elif register == SCR:
            self.scr = value
        # LSR and MSR are read-only.

    # --- registers ---------------------------------------------------------------------
    def _read_rbr(self) -> int:
        if self.fcr & FCR_FE:
            value = self._rx.popleft() if self._rx else 0
            if not self._rx:
                self.lsr &= ~(LSR_DR | LSR_BI)
            self._timeout_pending = 0 < len(self._rx) < self._trigger
        else:
            value = self.rbr
            self.lsr &= ~(LSR_DR | LSR_BI)
        self._accept()
        self._update_irq()
        return value

    def _read_lsr(self) -> int:
        value = self.lsr
        if self.lsr & (LSR_BI | LSR_OE):
            self.lsr &= ~(LSR_BI | LSR_OE)
            self._update_irq()
        return value

    def _read_msr(self) -> int:
        if self.mcr & MCR_LOOP:
            # Loopback wires the modem outputs to the inputs: OUT2->DCD, OUT1->RI,
            # RTS->CTS, DTR->DSR.
            return (self.mcr & 0x0C) << 4 | (self.mcr & MCR_RTS) << 3 | (self.mcr & MCR_DTR) << 5
        value = self.msr
        if self.msr & MSR_DELTAS:
            self.msr &= 0xF0
            self._update_irq()
        return value

    def _write_ier(self, value: int) -> None:
        changed = (self.ier ^ value) & IER_MASK
        self.ier = value & IER_MASK
        # Enabling THRI with the holding register empty raises it afresh (Windows and
        # SeaBIOS's probe rely on it; QEMU does the same).
        if changed & IER_THRI:
            self._thr_pending = bool(self.ier & IER_THRI and self.lsr & LSR_THRE)
        if changed:
            self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_FE:
            value |= FCR_RFR | FCR_XFR  # switching the FIFOs on or off flushes them
        if value & FCR_RFR:
            self.lsr &= ~(LSR_DR | LSR_BI)
            self._timeout_pending = False
            self._rx.clear()
        if value & FCR_XFR:
            self.lsr |= LSR_THRE
            self._thr_pending = True
        self.fcr = value & FCR_KEPT
        if self.fcr & FCR_FE:
            self.iir |= IIR_FIFO_ENABLED
            self._trigger = TRIGGER_LEVELS[self.fcr & FCR_TRIGGER]
        else:
            self.iir &= ~IIR_FIFO_ENABLED
        self._accept()
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        was_loop = self.mcr & MCR_LOOP
        self.mcr = value & MCR_MASK
        if was_loop and not self.mcr & MCR_LOOP:
            self._accept()  # host input was held back during loopback
            self._update_irq()

    def _transmit(self, byte: int) -> None:
        self._thr_pending = False
        self.lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update_irq()
        if self.mcr & MCR_LOOP:
            self._receive(byte)
        elif self._sink is not None:
            self._sink(bytes((byte,)))
        # The byte is gone at once: THR and the shift register are empty again, and a
        # fresh THR-empty interrupt follows the write.
        self.lsr |= LSR_THRE | LSR_TEMT
        self._thr_pending = True
        self._update_irq()

    # --- receiver ----------------------------------------------------------------------
    def _rbr_full(self) -> bool:
        return not self.fcr & FCR_FE and bool(self.lsr & LSR_DR)

    def _receive(self, byte: int) -> None:
        if self.fcr & FCR_FE:
            if len(self._rx) < FIFO_SIZE:
                self._rx.append(byte)
            else:
                self.lsr |= LSR_OE  # overruns do not overwrite the FIFO
            self.lsr |= LSR_DR
            self._timeout_pending = len(self._rx) < self._trigger
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = byte
            self.lsr |= LSR_DR
        self._update_irq()

    def _accept(self) -> None:
        """Move queued host input into the receiver while it has room."""
        if self.mcr & MCR_LOOP:
            return
        while self._pending:
            if self.fcr & FCR_FE:
                if len(self._rx) >= FIFO_SIZE:
                    return
            elif self.lsr & LSR_DR:
                return
            self._receive(self._pending.popleft())

    def _update_irq(self) -> None:
        ier, lsr = self.ier, self.lsr
        if ier & IER_RLSI and lsr & LSR_INT_ANY:
            cause = IIR_RLSI
        elif ier & IER_RDI and self._timeout_pending:
            cause = IIR_CTI
        elif (
            ier & IER_RDI
            and lsr & LSR_DR
            and (not self.fcr & FCR_FE or len(self._rx) >= self._trigger)
        ):
            cause = IIR_RDI
        elif ier & IER_THRI and self._thr_pending:
            cause = IIR_THRI
        elif ier & IER_MSI and self.msr & MSR_DELTAS:
            cause = IIR_MSI
        else:
            cause = IIR_NO_INT
        self.iir = cause | (self.iir & 0xF0)
        self._irq.set(cause != IIR_NO_INT)
