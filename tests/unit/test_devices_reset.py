"""Port 0x92 and ICH9 reset control (0xcf9): reset requests, kept bits, read-back."""

from __future__ import annotations

from pcihole.devices.reset import Port92, ResetControl


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_port92_reset_on_rising_edge_only() -> None:
    reset = Counter()
    port = Port92(reset)
    assert port.read(0, 1) == 0x00
    port.write(0, 1, 0x02)  # A20 on: no reset
    assert reset.calls == 0
    assert port.read(0, 1) == 0x02
    port.write(0, 1, 0x03)
    assert reset.calls == 1
    port.write(0, 1, 0x03)  # bit 0 already set: no new edge
    assert reset.calls == 1
    assert port.read(0, 1) == 0x03
    port.machine_reset()
    assert port.read(0, 1) == 0x02  # fast reset clears, A20 stays
    port.write(0, 1, 0x01)
    assert reset.calls == 2


def test_port92_a20_reported_when_it_changes() -> None:
    levels: list[bool] = []
    port = Port92(Counter(), a20=levels.append)
    port.write(0, 1, 0x02)
    port.write(0, 1, 0x02)
    port.write(0, 1, 0x00)
    assert levels == [True, False]


def test_reset_control_keeps_sys_and_full_reset_bits() -> None:
    reset = Counter()
    rst = ResetControl(reset)
    assert rst.read(0, 1) == 0x00
    rst.write(0, 1, 0xFB)  # everything but RST_CPU
    assert rst.read(0, 1) == 0x0A
    assert reset.calls == 0


def test_reset_control_resets_once_per_write_with_bit_2() -> None:
    reset = Counter()
    rst = ResetControl(reset)
    rst.write(0, 1, 0x02)
    rst.write(0, 1, 0x06)  # the classic "hard reset" sequence
    assert reset.calls == 1
    assert rst.read(0, 1) == 0x02  # a reset request leaves the register as it was
    rst.write(0, 1, 0x0E)
    assert reset.calls == 2
    rst.machine_reset()
    assert rst.read(0, 1) == 0x00
