"""MC146818 RTC/CMOS: the running clock, status registers, interrupts, QEMU's CMOS bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.devices.cmos import Cmos
from pcihole.errors import Bug
from pcihole.layout import CMOS_PORT, GiB, KiB, MiB
from pcihole.measure.qemu import Qemu, qemu_missing_reason

LEAP_DAY = 1709214359
"""2024-02-29 13:45:59 UTC, a Thursday."""
NS = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ns = 5 * NS  # any origin: the device only counts differences

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * NS)


def make(
    clock: FakeClock, irq: list[bool] | None = None, ram: int = 128 * MiB, cpus: int = 1
) -> Cmos:
    levels = irq if irq is not None else []
    return Cmos(ram=q35_ram(ram), cpus=cpus, irq=levels.append, clock=clock, wall_time=LEAP_DAY)


def q35_ram(size: int) -> Q35Ram:
    """RAM laid out for a vCPU (CMOS reads only the split, the same for every vendor)."""
    return Q35Ram.for_vcpu(size, VcpuIdentity("GenuineIntel", 39))


def get(cmos: Cmos, index: int) -> int:
    cmos.write(0, 1, 0x80 | index)  # SeaBIOS sets the NMI mask bit on every access
    return cmos.read(1, 1)


def put(cmos: Cmos, index: int, value: int) -> None:
    cmos.write(0, 1, 0x80 | index)
    cmos.write(1, 1, value)


def clock_bytes(cmos: Cmos) -> list[int]:
    return [get(cmos, i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32)]


def test_clock_reads_bcd_24h_at_the_injected_time() -> None:
    cmos = make(FakeClock())
    assert clock_bytes(cmos) == [0x59, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
    assert get(cmos, 0x37) == 0x20  # the PS/2 century alias
    assert cmos.read(0, 1) == 0xFF  # the index port is write-only
    assert cmos.nmi_masked


def test_clock_runs_with_elapsed_time_across_midnight_and_month() -> None:
    clock = FakeClock()
    cmos = make(clock)
    clock.advance(1.0)
    assert clock_bytes(cmos)[:2] == [0x00, 0x46]
    clock.advance(10 * 3600 + 14 * 60)  # 2024-03-01 00:00:00, a Friday
    assert clock_bytes(cmos) == [0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24, 0x20]


def test_binary_and_12_hour_modes() -> None:
    cmos = make(FakeClock())
    put(cmos, 0x0B, 0x06)  # binary, 24 h
    assert clock_bytes(cmos)[:3] == [59, 45, 13]
    put(cmos, 0x0B, 0x00)  # BCD, 12 h: 1 PM
    assert get(cmos, 4) == 0x81
    put(cmos, 0x0B, 0x04)  # binary, 12 h
    assert get(cmos, 4) == 0x81


def test_status_registers_at_power_on_and_read_only_ones() -> None:
    cmos = make(FakeClock())
    assert [get(cmos, i) for i in (0x0A, 0x0B, 0x0C, 0x0D)] == [0x26, 0x02, 0x00, 0x80]
    put(cmos, 0x0C, 0xFF)
    put(cmos, 0x0D, 0x00)
    assert [get(cmos, 0x0C), get(cmos, 0x0D)] == [0x00, 0x80]
    put(cmos, 0x0A, 0xA6)  # UIP is read-only
    assert get(cmos, 0x0A) == 0x26


def test_uip_is_set_only_in_the_last_244_us_of_a_second() -> None:
    clock = FakeClock()
    cmos = make(clock)
    clock.advance(0.9995)
    assert get(cmos, 0x0A) == 0x26
    clock.advance(0.0003)  # 0.9998 s into the second
    assert get(cmos, 0x0A) == 0xA6
    clock.advance(0.0003)  # the update happened
    assert get(cmos, 0x0A) == 0x26
    assert get(cmos, 0) == 0x00


def test_uip_stays_clear_while_setting_the_clock() -> None:
    clock = FakeClock()
    cmos = make(clock)
    put(cmos, 0x0B, 0x82)
    clock.advance(0.9998)
    assert get(cmos, 0x0A) == 0x26


def test_guest_sets_the_time_and_it_runs_on_from_there() -> None:
    clock = FakeClock()
    cmos = make(clock)
    put(cmos, 0x0B, 0x82)  # SET: the clock stops
    for index, value in ((0, 0x30), (2, 0x59), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99)):
        put(cmos, index, value)
    put(cmos, 0x32, 0x19)
    clock.advance(5)
    assert get(cmos, 0) == 0x30  # stopped while SET
    put(cmos, 0x0B, 0x02)
    clock.advance(30)
    assert clock_bytes(cmos) == [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]  # a Saturday


def test_update_ended_interrupt_raised_then_cleared_by_reading_c() -> None:
    clock = FakeClock()
    levels: list[bool] = []
    cmos = make(clock, levels)
    put(cmos, 0x0B, 0x12)  # UIE
    assert cmos.poll() == clock.ns + NS  # the next update is a second away
    assert levels == []
    clock.advance(1)
    cmos.poll()
    assert levels == [True]
    assert get(cmos, 0x0C) == 0x90  # IRQF | UF
    assert levels == [True, False]
    assert get(cmos, 0x0C) == 0x00


def test_update_flag_without_enable_raises_nothing() -> None:
    clock = FakeClock()
    levels: list[bool] = []
    cmos = make(clock, levels)
    clock.advance(2)
    assert get(cmos, 0x0C) == 0x10
    assert levels == []
    assert cmos.poll() is None


def test_flag_already_set_fires_when_enabled() -> None:
    clock = FakeClock()
    levels: list[bool] = []
    cmos = make(clock, levels)
    clock.advance(1)
    cmos.poll()
    put(cmos, 0x0B, 0x12)
    assert levels == [True]
    assert get(cmos, 0x0C) == 0x90


def test_periodic_interrupt_at_1024_hz() -> None:
    clock = FakeClock()
    levels: list[bool] = []
    cmos = make(clock, levels)
    put(cmos, 0x0B, 0x42)  # PIE, rate 6 from status A: 976.5625 us
    start = clock.ns
    assert cmos.poll() == start + 976_562
    clock.advance(0.0009)
    assert get(cmos, 0x0C) == 0x00
    clock.advance(0.0001)
    assert get(cmos, 0x0C) == 0xC0
    assert levels == [True, False]


def test_alarm_flag_at_the_alarm_second() -> None:
    clock = FakeClock()
    levels: list[bool] = []
    cmos = make(clock, levels)
    put(cmos, 0x01, 0x05)  # 13:46:05
    put(cmos, 0x03, 0x46)
    put(cmos, 0x05, 0xFF)  # any hour
    put(cmos, 0x0B, 0x22)  # AIE
    clock.advance(5)  # 13:46:04
    assert get(cmos, 0x0C) & 0x20 == 0
    clock.advance(1)
    assert get(cmos, 0x0C) == 0xB0  # IRQF | AF | UF
    assert levels == [True, False]


def test_machine_reset_keeps_ram_and_clears_interrupt_enables() -> None:
    clock = FakeClock()
    cmos = make(clock)
    put(cmos, 0x0F, 0x05)
    put(cmos, 0x40, 0xAB)
    put(cmos, 0x0B, 0x72)
    cmos.machine_reset()
    assert [get(cmos, 0x0F), get(cmos, 0x40), get(cmos, 0x0B)] == [0x00, 0xAB, 0x12]
    put(cmos, 0x0F, 0xFE)  # S3 resume survives a reset
    cmos.machine_reset()
    assert get(cmos, 0x0F) == 0xFE


def test_word_access_writes_index_then_data() -> None:
    cmos = make(FakeClock())
    cmos.write(0, 2, 0x5A40)
    assert get(cmos, 0x40) == 0x5A


# The bytes QEMU 7.2 q35 shows, read with `o /b 0x70 IDX` / `i /b 0x71` in its monitor
# (-nodefaults -m 128M -smp 1, and -m 5G -smp 3); the clock bytes 0x00-0x09 left out.
QEMU_128M_1CPU = {
    0x0A: 0x26,
    0x0B: 0x02,
    0x0C: 0x00,
    0x0D: 0x80,
    0x10: 0x00,
    0x12: 0x00,
    0x14: 0x06,
    0x15: 0x80,
    0x16: 0x02,
    0x17: 0xFF,
    0x18: 0xFF,
    0x2E: 0x00,
    0x2F: 0x00,
    0x30: 0xFF,
    0x31: 0xFF,
    0x32: 0x20,
    0x34: 0x00,
    0x35: 0x07,
    0x37: 0x20,
    0x38: 0x30,
    0x39: 0x00,
    0x3D: 0x12,
    0x5B: 0x00,
    0x5C: 0x00,
    0x5D: 0x00,
    0x5F: 0x00,
}
QEMU_5G_3CPUS = {
    **QEMU_128M_1CPU,
    0x34: 0x00,
    0x35: 0x7F,
    0x5B: 0x00,
    0x5C: 0xC0,
    0x5D: 0x00,
    0x5F: 0x02,
}


@pytest.mark.parametrize(
    ("ram", "cpus", "expected"),
    [(128 * MiB, 1, QEMU_128M_1CPU), (5 * GiB, 3, QEMU_5G_3CPUS)],
)
def test_memory_and_cpu_bytes_as_qemu_fills_them(
    ram: int, cpus: int, expected: dict[int, int]
) -> None:
    cmos = make(FakeClock(), ram=ram, cpus=cpus)
    assert {i: get(cmos, i) for i in expected} == expected
    others = set(range(0x0E, 0x80)) - set(expected)
    assert [i for i in sorted(others) if get(cmos, i) != 0] == []


# Memory bytes QEMU 7.2 q35 puts in CMOS (pc_cmos_init), read in its monitor as above
# for each -m: base memory 0x15/0x16, extended memory 0x17/0x18 and its copy 0x30/0x31
# (KiB above 1 MiB, at most 0xffff), 64 KiB units from 16 MiB to the split 0x34/0x35,
# 64 KiB units above 4 GiB 0x5b-0x5d. Around 0xb0000000 the split moves to 2 GiB.
MEMORY_BYTES = [0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D]
QEMU_MEMORY_BYTES = {
    16 * MiB + 64 * KiB: [0x80, 0x02, 0x40, 0x3C, 0x40, 0x3C, 0x01, 0x00, 0x00, 0x00, 0x00],
    32 * MiB: [0x80, 0x02, 0x00, 0x7C, 0x00, 0x7C, 0x00, 0x01, 0x00, 0x00, 0x00],
    0xB0000000 - 64 * KiB: [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xAE, 0x00, 0x00, 0x00],
    0xB0000000: [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x7F, 0x00, 0x30, 0x00],
    0xB0000000 + 64 * KiB: [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x7F, 0x01, 0x30, 0x00],
    16 * GiB: [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x7F, 0x00, 0x80, 0x03],
}


@pytest.mark.parametrize("ram", sorted(QEMU_MEMORY_BYTES), ids=hex)
def test_memory_bytes_around_the_q35_split_as_qemu_fills_them(ram: int) -> None:
    cmos = make(FakeClock(), ram=ram)
    assert [get(cmos, index) for index in MEMORY_BYTES] == QEMU_MEMORY_BYTES[ram]


def test_more_than_255_cpus_leave_the_count_byte_zero() -> None:
    assert get(make(FakeClock(), cpus=288), 0x5F) == 0x00


def test_bad_arguments() -> None:
    with pytest.raises(Bug):
        make(FakeClock(), cpus=0)
    with pytest.raises(Bug):
        Cmos(ram=q35_ram(128 * MiB), cpus=1, boot_order="x")


@pytest.fixture
def qemu_q35() -> Iterator[Qemu]:
    """A paused QEMU q35 (128 MiB, 1 CPU)."""
    reason = qemu_missing_reason()
    if reason:
        pytest.skip(reason)
    with Qemu(["-smp", "1"], paused=True, memory="128M") as qemu:
        yield qemu


def test_cmos_bytes_equal_qemus(qemu_q35: Qemu) -> None:
    def qemu_byte(index: int) -> int:
        qemu_q35.port_out(CMOS_PORT, 1, index)
        return qemu_q35.port_in(CMOS_PORT + 1, 1)

    ours = make(FakeClock())
    indexes = range(0x0A, 0x80)
    theirs = {i: qemu_byte(i) & (0x7F if i == 0x0A else 0xFF) for i in indexes}  # no UIP
    assert {i: get(ours, i) for i in indexes} == theirs
