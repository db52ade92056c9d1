"""ICH9 ACPI PM block: PM1 w1c status, sleep control, the PM timer, GPE0, SMI_EN, SCI."""

from __future__ import annotations

from pcihole.devices.acpi_pm import AcpiPm

NS = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ns = 123 * NS

    def __call__(self) -> int:
        return self.ns


class Calls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def make() -> tuple[AcpiPm, FakeClock, Calls, list[bool]]:
    clock = FakeClock()
    off = Calls()
    sci: list[bool] = []
    return AcpiPm(power_off=off, sci=sci.append, clock=clock), clock, off, sci


def test_pm_timer_counts_3_579545_mhz_modulo_2_24() -> None:
    pm, clock, _, _ = make()
    assert pm.read(0x08, 4) == 0
    clock.ns += NS // 1000  # 1 ms
    assert pm.read(0x08, 4) == 3579
    clock.ns += 5 * NS - NS // 1000  # 5 s: 17_897_725 ticks, past 2**24
    assert pm.read(0x08, 4) == 17_897_725 - (1 << 24) == 1_120_509
    assert pm.read(0x0A, 2) == 1_120_509 >> 16  # a word read of the top half


def test_pm_timer_is_monotonic_with_the_clock_and_read_only() -> None:
    pm, clock, _, _ = make()
    pm.write(0x08, 4, 0x123456)
    last = -1
    for _ in range(100):
        clock.ns += 7919
        now = pm.read(0x08, 4)
        assert now > last
        last = now


def test_timer_status_set_at_power_on_then_at_each_bit_23_toggle() -> None:
    pm, clock, _, _ = make()
    assert pm.read(0x00, 2) == 0x0001  # as QEMU: TMR_STS reads set after reset
    pm.write(0x00, 2, 0x0001)
    assert pm.read(0x00, 2) == 0x0000
    clock.ns += 2_343_000_000  # 8_386_997 ticks: just below 0x800000
    assert pm.read(0x00, 2) == 0x0000
    clock.ns += 1_000_000  # past 0x800000
    assert pm.read(0x00, 2) == 0x0001


def test_pm1_status_is_write_one_to_clear() -> None:
    pm, _, _, _ = make()
    pm.write(0x00, 2, 0x0001)
    pm.press_power_button()
    assert pm.read(0x00, 2) == 0x0100
    pm.write(0x00, 2, 0x0000)
    assert pm.read(0x00, 2) == 0x0100
    pm.write(0x00, 2, 0xFEFF)  # every bit but the one set
    assert pm.read(0x00, 2) == 0x0100
    pm.write(0x01, 1, 0x01)  # a byte write to the high half
    assert pm.read(0x00, 2) == 0x0000


def test_pm1_enable_and_control_read_back_in_one_dword() -> None:
    pm, _, _, _ = make()
    pm.write(0x00, 2, 0x0001)
    pm.write(0x02, 2, 0x0121)
    pm.write(0x04, 2, 0x0001)
    assert pm.read(0x00, 4) == 0x0121_0000
    assert pm.read(0x04, 2) == 0x0001


def test_slp_en_with_type_0_powers_off_once_and_is_not_stored() -> None:
    pm, _, off, _ = make()
    pm.write(0x04, 2, 0x0001 | (0 << 10))
    assert off.count == 0
    pm.write(0x04, 2, 0x2001 | (0 << 10))
    assert off.count == 1
    assert pm.read(0x04, 2) == 0x0001
    pm.write(0x05, 1, 0x20 | (2 << 2))  # S4, as a byte write to the high half
    assert off.count == 2


def test_slp_en_with_s3_calls_suspend_not_power_off() -> None:
    clock = FakeClock()
    off, suspend = Calls(), Calls()
    pm = AcpiPm(power_off=off, suspend=suspend, clock=clock)
    pm.write(0x04, 2, 0x2000 | (1 << 10))
    assert (off.count, suspend.count) == (0, 1)
    assert pm.read(0x04, 2) == 1 << 10
    pm.write(0x04, 2, 0x2000 | (5 << 10))  # a type nobody defined: nothing happens
    assert (off.count, suspend.count) == (0, 1)


def test_gpe0_status_w1c_and_enable() -> None:
    pm, _, _, _ = make()
    assert pm.read(0x20, 4) == 0
    pm.raise_gpe(1)
    pm.raise_gpe(9)
    assert pm.read(0x20, 2) == 0x0202
    pm.write(0x21, 1, 0x02)
    assert pm.read(0x20, 2) == 0x0002
    pm.write(0x28, 4, 0xFFFF_FFFF)
    assert pm.read(0x28, 4) == 0xFFFF_FFFF
    assert pm.read(0x2C, 4) == 0
    assert pm.read(0x30 - 4, 4) == 0


def test_sci_follows_sci_en_status_and_enable() -> None:
    pm, _, _, sci = make()
    pm.write(0x00, 2, 0x0001)
    pm.write(0x02, 2, 0x0100)
    pm.press_power_button()
    assert sci == []  # SCI_EN off
    pm.write(0x04, 2, 0x0001)
    assert sci == [True]
    pm.write(0x00, 2, 0x0100)
    assert sci == [True, False]
    pm.write(0x2A, 1, 0x10)  # GPE0 bit 20 enabled
    pm.raise_gpe(20)
    assert sci == [True, False, True]
    pm.set_sci_enabled(False)
    assert sci == [True, False, True, False]


def test_timer_overflow_raises_sci_via_poll() -> None:
    pm, clock, _, sci = make()
    pm.write(0x00, 2, 0x0001)
    pm.write(0x02, 2, 0x0001)
    pm.write(0x04, 2, 0x0001)
    due = pm.poll()
    assert due == 123 * NS + 2_343_484_438  # ceil(0x800000 / 3.579545 MHz)
    clock.ns = due - 1
    pm.poll()
    assert sci == []
    clock.ns = due
    assert pm.poll() is None
    assert sci == [True]


def test_smi_en_resets_with_apmc_en_and_smi_sts_is_read_only() -> None:
    pm, _, _, _ = make()
    assert pm.read(0x30, 4) == 0x20
    pm.write(0x30, 4, 0x21)
    assert pm.read(0x30, 4) == 0x21
    pm.write(0x34, 4, 0xFFFF_FFFF)
    assert pm.read(0x34, 4) == 0
    pm.machine_reset()
    assert pm.read(0x30, 4) == 0x20
    assert pm.read(0x40, 4) == 0  # nothing there
