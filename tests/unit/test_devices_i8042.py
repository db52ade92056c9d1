"""The i8042 answers SeaBIOS's set-up sequence as QEMU's does, and drives IRQ 1/12."""

from __future__ import annotations

from pcihole.devices import i8042
from pcihole.devices.i8042 import DATA, I8042, STATUS_COMMAND


def make() -> tuple[I8042, list[str], list[bool], list[bool]]:
    resets: list[str] = []
    kbd: list[bool] = []
    aux: list[bool] = []
    return I8042(lambda: resets.append("reset"), kbd.append, aux.append), resets, kbd, aux


def drain(device: I8042) -> list[int]:
    out = []
    while device.read(STATUS_COMMAND, 1) & i8042.STATUS_OBF:
        out.append(device.read(DATA, 1))
    return out


def test_empty_at_reset_so_a_flush_ends_at_once() -> None:
    device, *_ = make()
    assert device.read(STATUS_COMMAND, 1) == i8042.STATUS_COMMAND_LAST | i8042.STATUS_UNLOCKED


def test_seabios_keyboard_setup() -> None:
    device, resets, kbd, _ = make()
    device.write(STATUS_COMMAND, 1, 0xAD)  # keyboard disable
    device.write(STATUS_COMMAND, 1, 0xA7)  # aux disable
    assert drain(device) == []
    device.write(STATUS_COMMAND, 1, 0xAA)
    assert drain(device) == [0x55]
    assert device.read(STATUS_COMMAND, 1) & i8042.STATUS_SYSTEM
    device.write(STATUS_COMMAND, 1, 0xAB)
    assert drain(device) == [0x00]
    device.write(STATUS_COMMAND, 1, 0x60)  # write CTR: interrupts off
    device.write(DATA, 1, 0x70)
    assert kbd == [True, False, True, False]  # the two test replies, CTR's interrupt on
    device.write(STATUS_COMMAND, 1, 0x20)
    assert drain(device) == [0x70]
    device.write(DATA, 1, 0xFF)  # keyboard reset
    assert drain(device) == [0xFA, 0xAA]
    device.write(DATA, 1, 0xF0)  # set scancode set: a parameter follows
    device.write(DATA, 1, 0x02)
    assert drain(device) == [0xFA, 0xFA]
    device.write(DATA, 1, 0xF2)
    assert drain(device) == [0xFA, 0xAB, 0x83]
    assert kbd == [True, False, True, False] and resets == []  # masked by the CTR since


def test_irq1_follows_a_waiting_keyboard_byte_when_enabled() -> None:
    device, _, kbd, aux = make()  # CTR enables both interrupts at reset
    device.write(DATA, 1, 0xF4)
    assert kbd == [True]
    assert device.read(DATA, 1) == 0xFA
    assert kbd == [True, False] and aux == []
    device.write(STATUS_COMMAND, 1, 0xD4)  # to the mouse
    device.write(DATA, 1, 0xFF)
    assert device.read(STATUS_COMMAND, 1) & i8042.STATUS_AUXDATA and aux == [True]
    assert drain(device) == [0xFA, 0xAA, 0x00] and aux == [True, False]


def test_reset_line_and_output_port() -> None:
    device, resets, _, _ = make()
    device.write(STATUS_COMMAND, 1, 0xFE)
    device.write(STATUS_COMMAND, 1, 0xD1)
    device.write(DATA, 1, 0x03)  # bit 0 set: running
    assert resets == ["reset"]
    device.write(STATUS_COMMAND, 1, 0xD1)
    device.write(DATA, 1, 0x02)
    assert resets == ["reset", "reset"]
