"""16550A UART: SeaBIOS's probe, transmission to the sink, loopback, FIFO, interrupts."""

from __future__ import annotations

from pcihole.devices.uart import Uart16550


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.levels.append(level)

    @property
    def up(self) -> bool:
        return bool(self.levels) and self.levels[-1]


def make() -> tuple[Uart16550, bytearray, Line]:
    out = bytearray()
    line = Line()
    return Uart16550(out.extend, line), out, line


def test_power_on_registers() -> None:
    uart, _, _ = make()
    assert [uart.read(r, 1) for r in range(1, 8)] == [0x00, 0x01, 0x00, 0x08, 0x60, 0xB0, 0x00]


def test_seabios_probe_sees_a_uart() -> None:
    # src/serial.c detect_serial: IER=2 must read back 2 and IIR report THR empty.
    uart, _, line = make()
    uart.write(1, 1, 0x02)
    assert uart.read(1, 1) == 0x02
    assert uart.read(2, 1) & 0x3F == 0x02
    assert line.levels == [True, False]  # reading IIR acknowledged it
    uart.write(1, 1, 0x00)
    assert uart.read(2, 1) == 0x01


def test_scratch_register() -> None:
    uart, _, _ = make()
    uart.write(7, 1, 0x5A)
    assert uart.read(7, 1) == 0x5A


def test_transmit_goes_to_the_sink_and_thr_is_empty_at_once() -> None:
    uart, out, line = make()
    uart.write(3, 1, 0x03)  # 8N1
    for byte in b"Hi\n":
        assert uart.read(5, 1) & 0x60 == 0x60
        uart.write(0, 1, byte)
    assert bytes(out) == b"Hi\n"
    assert uart.read(5, 1) == 0x60
    assert line.levels == []  # no interrupt enabled, none raised


def test_thr_empty_interrupt_after_each_write_when_enabled() -> None:
    uart, out, line = make()
    uart.write(1, 1, 0x02)
    assert uart.read(2, 1) == 0x02  # acknowledged
    uart.write(0, 1, ord("x"))
    assert out == b"x"
    assert line.levels == [True, False, True]
    assert uart.read(2, 1) == 0x02


def test_divisor_latch() -> None:
    uart, out, _ = make()
    uart.write(3, 1, 0x83)
    assert (uart.read(0, 1), uart.read(1, 1)) == (0x0C, 0x00)
    uart.write(0, 1, 0x01)
    uart.write(1, 1, 0x00)
    uart.write(3, 1, 0x03)
    assert uart.divisor == 1
    assert out == b""  # DLL writes are not data
    assert uart.read(1, 1) == 0x00  # IER again


def test_loopback_receives_what_is_sent_and_wires_modem_lines() -> None:
    uart, out, _ = make()
    uart.write(4, 1, 0x1F)  # loop, OUT2, OUT1, RTS, DTR
    uart.write(0, 1, 0xA5)
    assert out == b""
    assert uart.read(5, 1) & 0x01
    assert uart.read(0, 1) == 0xA5
    assert uart.read(5, 1) & 0x01 == 0
    assert uart.read(6, 1) == 0xF0
    uart.write(4, 1, 0x12)  # loop with RTS only: CTS
    assert uart.read(6, 1) == 0x10


def test_loopback_overrun_without_fifo() -> None:
    uart, _, _ = make()
    uart.write(4, 1, 0x10)
    uart.write(0, 1, 1)
    uart.write(0, 1, 2)
    assert uart.read(5, 1) & 0x03 == 0x03  # DR and OE
    assert uart.read(5, 1) & 0x02 == 0  # OE cleared by reading LSR
    assert uart.read(0, 1) == 2


def test_fed_input_without_fifo_one_byte_at_a_time() -> None:
    uart, _, line = make()
    uart.write(1, 1, 0x01)
    uart.feed(b"ab")
    assert line.up
    assert uart.read(2, 1) == 0x04
    assert uart.waiting == 2
    assert uart.read(0, 1) == ord("a")
    assert uart.read(0, 1) == ord("b")
    assert uart.read(5, 1) & 0x01 == 0
    assert not line.up
    assert uart.waiting == 0


def test_fifo_fills_to_16_and_the_rest_waits() -> None:
    uart, _, line = make()
    uart.write(2, 1, 0xC7)  # FIFO on, both reset, trigger 14
    assert uart.read(2, 1) == 0xC1
    uart.write(1, 1, 0x01)
    uart.feed(bytes(range(20)))
    assert uart.read(2, 1) == 0xC4  # 16 >= 14: data available
    assert line.up
    got = [uart.read(0, 1) for _ in range(20)]
    assert got == list(range(20))
    assert uart.read(5, 1) == 0x60
    assert uart.read(2, 1) == 0xC1
    assert not line.up


def test_fifo_below_trigger_level_raises_character_timeout() -> None:
    uart, _, _ = make()
    uart.write(2, 1, 0x81)  # trigger 8
    uart.write(1, 1, 0x01)
    uart.feed(b"xyz")
    assert uart.read(2, 1) == 0xCC
    assert uart.read(0, 1) == ord("x")


def test_fifo_reset_drops_received_bytes() -> None:
    uart, _, _ = make()
    uart.write(2, 1, 0x01)
    uart.write(4, 1, 0x10)
    uart.write(0, 1, 0x41)
    uart.write(2, 1, 0x03)
    assert uart.read(5, 1) & 0x01 == 0


def test_input_waits_during_loopback() -> None:
    uart, _, _ = make()
    uart.write(4, 1, 0x10)
    uart.feed(b"q")
    assert uart.read(5, 1) & 0x01 == 0
    uart.write(4, 1, 0x08)
    assert uart.read(0, 1) == ord("q")


def test_machine_reset() -> None:
    uart, _, line = make()
    uart.write(1, 1, 0x02)
    uart.write(7, 1, 0x33)
    uart.machine_reset()
    assert [uart.read(r, 1) for r in range(1, 8)] == [0x00, 0x01, 0x00, 0x08, 0x60, 0xB0, 0x00]
    assert not line.up
