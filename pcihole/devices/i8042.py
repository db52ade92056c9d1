"""The i8042 PS/2 controller with a keyboard and a mouse that never type, after QEMU 7.2's
``hw/input/pckbd.c`` and ``ps2.c``.

Two ports: data at offset 0 (``layout.I8042_DATA_PORT``), status/command at offset 4.
Firmware probes it, runs the controller's self-tests, resets the keyboard and sets it up
(SeaBIOS: ``PS2 keyboard initialized``); without it, it times out in ``i8042_flush``.
Replies queue in one output buffer; the status register's OBF says a byte waits, AUXDATA
that it came from the mouse. IRQ 1 (keyboard) and IRQ 12 (mouse) are high while a byte of
theirs waits and the command byte enables their interrupt. Controller command 0xfe (pulse
the reset line) and an output-port write with bit 0 clear call ``reset``.

Left out: scancodes (nobody types), the mouse's streaming, A20 through the output port
(port 0x92 has it), and the keyboard's typematic timing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pcihole.devices.irq import IrqLine, IrqPin, no_irq

DATA = 0
STATUS_COMMAND = 4
PORT_SPAN = 5

STATUS_OBF = 0x01
STATUS_SYSTEM = 0x04
STATUS_COMMAND_LAST = 0x08
STATUS_UNLOCKED = 0x10
STATUS_AUXDATA = 0x20

CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_KBD_DISABLE = 0x10
CTR_AUX_DISABLE = 0x20
CTR_RESET = CTR_KBD_INT | CTR_AUX_INT
"""QEMU's reset mode byte."""

ACK = 0xFA
RESEND = 0xFE
SELF_TEST_OK = 0x55
BAT_OK = 0xAA
KEYBOARD_ID = (0xAB, 0x83)
OUTPUT_PORT_RESET = 0x01
"""Output port bit 0 low holds the CPU in reset."""

# Controller commands (port 0x64) that reply with one byte.
REPLIES = {0xA9: 0x00, 0xAA: SELF_TEST_OK, 0xAB: 0x00, 0xC0: 0x00}
# Controller commands that take the next data byte.
WRITE_CTR, WRITE_OUTPUT, WRITE_KBD_OUT, WRITE_AUX_OUT, WRITE_AUX = 0x60, 0xD1, 0xD2, 0xD3, 0xD4
# Keyboard commands that take a parameter byte (each acknowledged).
KBD_WITH_PARAMETER = frozenset({0xED, 0xF0, 0xF3})


class I8042:
    """The controller as a port device over ``PORT_SPAN`` ports (0x60-0x64)."""

    def __init__(
        self, reset: Callable[[], None], kbd_irq: IrqLine = no_irq, aux_irq: IrqLine = no_irq
    ) -> None:
        self.reset = reset
        self._kbd_irq = IrqPin(kbd_irq)
        self._aux_irq = IrqPin(aux_irq)
        self.machine_reset()

    def machine_reset(self) -> None:
        self.ctr = CTR_RESET
        self.status = STATUS_COMMAND_LAST | STATUS_UNLOCKED
        self.output: deque[tuple[int, bool]] = deque()
        self.last = 0
        self._pending: int | None = None
        """A controller command waiting for its data byte."""
        self._kbd_pending: int | None = None
        """A keyboard command waiting for its parameter byte."""
        self._update()

    # --- bus device ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == STATUS_COMMAND:
            return self.status_byte()
        if offset != DATA:
            return 0xFF
        if self.output:
            self.last, _ = self.output.popleft()
            self._update()
        return self.last

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == STATUS_COMMAND:
            self.status |= STATUS_COMMAND_LAST
            self._command(value)
        elif offset == DATA:
            self.status &= ~STATUS_COMMAND_LAST
            self._data(value)

    def status_byte(self) -> int:
        status = self.status & ~(STATUS_OBF | STATUS_AUXDATA)
        if self.output:
            status |= STATUS_OBF | (STATUS_AUXDATA if self.output[0][1] else 0)
        return status

    # --- the controller ------------------------------------------------------------------------
    def _command(self, command: int) -> None:
        self._pending = None
        if command == 0x20:
            self._queue(self.ctr)
        elif command in REPLIES:
            if command == 0xAA:
                self.status |= STATUS_SYSTEM
            self._queue(REPLIES[command])
        elif command in (0xA7, 0xA8):
            self._set_ctr(
                self.ctr | CTR_AUX_DISABLE if command == 0xA7 else self.ctr & ~CTR_AUX_DISABLE
            )
        elif command in (0xAD, 0xAE):
            self._set_ctr(
                self.ctr | CTR_KBD_DISABLE if command == 0xAD else self.ctr & ~CTR_KBD_DISABLE
            )
        elif command in (WRITE_CTR, WRITE_OUTPUT, WRITE_KBD_OUT, WRITE_AUX_OUT, WRITE_AUX):
            self._pending = command
        elif command == 0xFE:
            self.reset()

    def _data(self, value: int) -> None:
        pending, self._pending = self._pending, None
        if pending == WRITE_CTR:
            self._set_ctr(value)
        elif pending == WRITE_OUTPUT:
            if not value & OUTPUT_PORT_RESET:
                self.reset()
        elif pending in (WRITE_KBD_OUT, WRITE_AUX_OUT):
            self._queue(value, aux=pending == WRITE_AUX_OUT)
        elif pending == WRITE_AUX:
            self._mouse(value)
        else:
            self._keyboard(value)

    def _set_ctr(self, value: int) -> None:
        self.ctr = value
        self._update()

    # --- the devices behind it -----------------------------------------------------------------
    def _keyboard(self, value: int) -> None:
        if self._kbd_pending is not None:
            command, self._kbd_pending = self._kbd_pending, None
            self._queue(ACK)
            if command == 0xF0 and value == 0:
                self._queue(0x02)  # the current scancode set
            return
        if value in KBD_WITH_PARAMETER:
            self._kbd_pending = value
            self._queue(ACK)
        elif value == 0xFF:
            self._queue(ACK)
            self._queue(BAT_OK)
        elif value == 0xF2:
            for byte in (ACK, *KEYBOARD_ID):
                self._queue(byte)
        elif value == 0xEE:
            self._queue(0xEE)
        elif value in (0xF4, 0xF5, 0xF6):
            self._queue(ACK)
        else:
            self._queue(RESEND)

    def _mouse(self, value: int) -> None:
        self._queue(ACK, aux=True)
        if value == 0xFF:
            self._queue(BAT_OK, aux=True)
            self._queue(0x00, aux=True)  # device ID: standard mouse
        elif value == 0xF2:
            self._queue(0x00, aux=True)

    def _queue(self, byte: int, *, aux: bool = False) -> None:
        self.output.append((byte, aux))
        self._update()

    def _update(self) -> None:
        waiting = self.output[0][1] if self.output else None
        self._kbd_irq.set(waiting is False and bool(self.ctr & CTR_KBD_INT))
        self._aux_irq.set(waiting is True and bool(self.ctr & CTR_AUX_INT))
