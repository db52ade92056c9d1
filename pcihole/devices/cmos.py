"""MC146818 RTC and its 128 bytes of CMOS RAM, as QEMU's q35 machine presents them.

Two ports at ``layout.CMOS_PORT``: offset 0 takes the index (bit 7 masks NMI; reads
answer 0xff), offset 1 reads and writes the indexed byte. The clock runs from the host's
UTC time at construction plus the time elapsed on ``clock`` since, in BCD or binary and
12 or 24 hours as status register B says. Status A's update-in-progress bit is set only
in the last 244 us of each second, so it clears by itself for a guest that polls it.

There is no timer thread: interrupt flags (update-ended, alarm, periodic) are brought up
to date on every access and on ``poll()``, which returns when the next enabled interrupt
is due so the machine can call it again then.

The memory-size, CPU-count, boot-order and equipment bytes are filled as QEMU 7.2's
``pc_cmos_init`` fills them for a q35 machine without floppy or IDE drives; like QEMU,
the standard checksum at 0x2e/0x2f is left zero.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from pcihole.arch.x86.e820 import Q35Ram
from pcihole.devices.irq import IrqLine, IrqPin, no_irq
from pcihole.errors import Bug
from pcihole.layout import KiB, MiB

CMOS_SIZE = 128
INDEX_MASK = 0x7F
NMI_DISABLE = 0x80
"""Index port bit 7: masks NMI (remembered, nothing else)."""
INDEX_READBACK = 0xFF
"""What a read of the index port answers (QEMU: the port is write-only)."""

# Clock registers.
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
SHUTDOWN_STATUS = 0x0F
"""Why the CPU was reset; a machine reset clears it unless it says S3 resume (0xfe)."""
S3_RESUME = 0xFE
CENTURY = 0x32
PS2_CENTURY = 0x37
"""IBM PS/2 alias of the century byte: selecting it selects 0x32."""
CLOCK_REGISTERS = frozenset(
    {SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY}
)

# Configuration bytes QEMU's pc_cmos_init writes.
FLOPPY_TYPES = 0x10
HARD_DISKS = 0x12
EQUIPMENT = 0x14
BASE_MEMORY = 0x15
"""KiB below 1 MiB (at most 640), 16 bits at 0x15/0x16."""
EXTENDED_MEMORY = 0x17
"""KiB from 1 MiB, at most 65535, 16 bits at 0x17/0x18 and again at 0x30/0x31."""
EXTENDED_MEMORY_COPY = 0x30
MEMORY_ABOVE_16M = 0x34
"""64 KiB units between 16 MiB and 4 GiB, 16 bits at 0x34/0x35."""
BOOT_ORDER_3 = 0x38
"""High nibble: third boot device; bit 0 set: skip the floppy boot-sector check."""
HD_TRANSLATION = 0x39
BOOT_ORDER_12 = 0x3D
"""Low nibble: first boot device, high nibble: second."""
MEMORY_ABOVE_4G = 0x5B
"""64 KiB units above 4 GiB, 24 bits at 0x5b-0x5d."""
CPU_COUNT = 0x5F
"""CPUs at power-on minus one (0 when more than 255)."""

EQUIPMENT_FPU = 0x02
EQUIPMENT_PS2_MOUSE = 0x04
BOOT_DEVICES = {"a": 0x01, "c": 0x02, "d": 0x03, "n": 0x04}
"""QEMU's boot-order letters: floppy, hard disk, CD-ROM, network."""

# Status register A.
A_UIP = 0x80
A_DIVIDER = 0x70
A_DIVIDER_NORMAL_MAX = 0x20
"""Dividers 000-010 run the clock; 11x hold it in reset."""
A_DIVIDER_RESET = 0x60
A_RATE = 0x0F
# Status register B.
B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_SQWE = 0x08
B_DM_BINARY = 0x04
B_24H = 0x02
# Status register C.
C_IRQF = 0x80
C_PF = 0x40
C_AF = 0x20
C_UF = 0x10
C_FLAGS = C_PF | C_AF | C_UF
# Status register D.
D_VRT = 0x80
"""Valid RAM and time: the battery is good."""

POWER_ON_STATUS = {REG_A: 0x26, REG_B: B_24H, REG_C: 0x00, REG_D: D_VRT}
"""32.768 kHz time base, 1024 Hz periodic rate; 24 hours, BCD."""

NS = 1_000_000_000
RTC_HZ = 32768
UIP_HOLD_NS = 8 * NS // RTC_HZ
"""UIP rises this long (244 us) before each second's update."""
DONT_CARE = 0xC0
"""An alarm byte with both top bits set matches any value."""
SECONDS_PER_DAY = 86400


def _periodic_ns(rate: int) -> int | None:
    """Period of the periodic interrupt for status A's rate bits (None: off)."""
    if rate == 0:
        return None
    shift = rate + 6 if rate <= 2 else rate - 1  # rates 1 and 2 alias 8 and 9
    return (NS << shift) // RTC_HZ


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date, out-of-range months and days carried over as
    ``mktime`` would (a guest may write anything into the clock registers)."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    first = datetime.date(min(max(year, 1), 9999), month, 1)
    return first.toordinal() - EPOCH_ORDINAL + day - 1


EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _q35_memory_bytes(ram: Q35Ram, cpus: int) -> dict[int, int]:
    """The memory-size and CPU-count bytes, from QEMU's ``pc_cmos_init``."""
    below, above = ram.below_4g, ram.above_4g
    base = min(below // KiB, 640)
    extended = min(max(below - 1 * MiB, 0) // KiB, 0xFFFF)
    above_16m = min(max(below - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
    high = above // (64 * KiB)
    values = {
        BASE_MEMORY: base,
        BASE_MEMORY + 1: base >> 8,
        EXTENDED_MEMORY: extended,
        EXTENDED_MEMORY + 1: extended >> 8,
        EXTENDED_MEMORY_COPY: extended,
        EXTENDED_MEMORY_COPY + 1: extended >> 8,
        MEMORY_ABOVE_16M: above_16m,
        MEMORY_ABOVE_16M + 1: above_16m >> 8,
        MEMORY_ABOVE_4G: high,
        MEMORY_ABOVE_4G + 1: high >> 8,
        MEMORY_ABOVE_4G + 2: high >> 16,
        CPU_COUNT: cpus - 1 if cpus <= 0xFF else 0,
    }
    return {index: value & 0xFF for index, value in values.items()}


def _boot_order_bytes(boot_order: str) -> dict[int, int]:
    if not 1 <= len(boot_order) <= 3 or any(c not in BOOT_DEVICES for c in boot_order):
        raise Bug(f"CMOS boot order {boot_order!r}: give 1 to 3 of {''.join(BOOT_DEVICES)}")
    nibbles = [BOOT_DEVICES[c] for c in boot_order] + [0, 0]
    return {BOOT_ORDER_12: nibbles[1] << 4 | nibbles[0], BOOT_ORDER_3: nibbles[2] << 4}


class Cmos:
    """The RTC and CMOS RAM (two ports: index, data); ``irq`` is ISA IRQ 8."""

    def __init__(
        self,
        *,
        ram: Q35Ram,
        cpus: int,
        irq: IrqLine = no_irq,
        clock: Callable[[], int] = time.monotonic_ns,
        wall_time: float | None = None,
        boot_order: str = "cad",
    ) -> None:
        """``ram`` is the machine's RAM layout (its split below and above 4 GiB);
        ``clock`` counts nanoseconds (monotonic); ``wall_time`` is the UTC time in seconds
        since the epoch the clock starts from (the host's now by default)."""
        if ram.size < 1 * MiB or ram.size % (64 * KiB) or cpus < 1:
            raise Bug(
                f"CMOS: RAM must be a multiple of 64 KiB from 1 MiB ({ram.size} bytes given)"
                f" and CPUs at least 1 ({cpus} given)"
            )
        self._clock = clock
        self._irq = IrqPin(irq)
        self.data = bytearray(CMOS_SIZE)
        """The 128 bytes as last stored (clock bytes refresh when read)."""
        self.index = 0
        self.nmi_masked = False
        for index, value in POWER_ON_STATUS.items():
            self.data[index] = value
        self.data[EQUIPMENT] = EQUIPMENT_FPU | EQUIPMENT_PS2_MOUSE
        for index, value in {
            **_q35_memory_bytes(ram, cpus),
            **_boot_order_bytes(boot_order),
        }.items():
            self.data[index] = value
        now = clock()
        start = time.time() if wall_time is None else wall_time
        self._base_ns = int(start * NS)
        """Guest RTC time (ns since the epoch) at monotonic instant ``_ref``."""
        self._ref = now
        self._phase_ref = now
        """Origin of the periodic interrupt's phase."""
        self._checked = now
        self._store_time(self._base_ns // NS)

    # --- ports -------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            byte = INDEX_READBACK if (offset + i) & 1 == 0 else self._read_data()
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            if (offset + i) & 1 == 0:
                self.index = byte & INDEX_MASK
                self.nmi_masked = bool(byte & NMI_DISABLE)
            else:
                self._write_data(byte)

    def poll(self) -> int | None:
        """Bring the interrupt flags up to date (raising ``irq`` if one is enabled and
        due); returns the ``clock`` instant the next enabled interrupt is due, or None."""
        now = self._clock()
        self._update_flags(now)
        return self._next_deadline(now)

    def machine_reset(self) -> None:
        """What a machine reset does (QEMU ``rtc_reset``); the RAM bytes stay."""
        if self.data[SHUTDOWN_STATUS] != S3_RESUME:
            self.data[SHUTDOWN_STATUS] = 0
        self.data[REG_B] &= ~(B_PIE | B_AIE | B_SQWE) & 0xFF
        self.data[REG_C] &= ~(C_UF | C_IRQF | C_PF | C_AF) & 0xFF
        self._irq.set(False)

    # --- registers ---------------------------------------------------------------------
    def _read_data(self) -> int:
        if self.index == PS2_CENTURY:
            self.index = CENTURY
        index = self.index
        now = self._clock()
        self._update_flags(now)
        if index in CLOCK_REGISTERS and self._running():
            self._store_time(self._guest_ns(now) // NS)
        if index == REG_A:
            return self.data[REG_A] | (A_UIP if self._update_in_progress(now) else 0)
        if index == REG_C:
            value = self.data[REG_C]
            self.data[REG_C] = 0
            self._irq.set(False)
            return value
        return self.data[index]

    def _write_data(self, value: int) -> None:
        if self.index == PS2_CENTURY:
            self.index = CENTURY
        index = self.index
        now = self._clock()
        self._update_flags(now)
        if index in CLOCK_REGISTERS:
            self.data[index] = value
            if self._running():
                self._set_time(now, fraction_ns=0)
        elif index == REG_A:
            self._write_a(now, value)
        elif index == REG_B:
            self._write_b(now, value)
        elif index not in (REG_C, REG_D):  # C and D are read-only
            self.data[index] = value

    def _write_a(self, now: int, value: int) -> None:
        old = self.data[REG_A]
        was_reset = old & A_DIVIDER_RESET == A_DIVIDER_RESET
        if value & A_DIVIDER_RESET == A_DIVIDER_RESET and self._running():
            self._store_time(self._guest_ns(now) // NS)  # freeze at the current second
        self.data[REG_A] = value & ~A_UIP
        if was_reset and self._running():
            # Leaving divider reset, the first update comes half a second later.
            self._set_time(now, fraction_ns=NS // 2)
        if (value ^ old) & A_RATE:
            self._phase_ref = now

    def _write_b(self, now: int, value: int) -> None:
        old = self.data[REG_B]
        if value & B_SET:
            if self._running():
                self._store_time(self._guest_ns(now) // NS)
            value &= ~B_UIE  # no update interrupts while the clock is being set
        if value & B_PIE and not old & B_PIE:
            self._phase_ref = now
        leaving_set = old & B_SET and not value & B_SET
        fraction = self._guest_ns(now) % NS
        self.data[REG_B] = value
        if leaving_set and self._running():
            self._set_time(now, fraction_ns=fraction)
        # An interrupt already flagged when its enable bit is set fires at once.
        if value & self.data[REG_C] & C_FLAGS:
            self.data[REG_C] |= C_IRQF
            self._irq.set(True)
        else:
            self.data[REG_C] &= ~C_IRQF
            self._irq.set(False)

    # --- the clock ---------------------------------------------------------------------
    def _running(self) -> bool:
        return not self.data[REG_B] & B_SET and self.data[REG_A] & A_DIVIDER <= A_DIVIDER_NORMAL_MAX

    def _guest_ns(self, now: int) -> int:
        return self._base_ns + now - self._ref

    def _update_in_progress(self, now: int) -> bool:
        return self._running() and self._guest_ns(now) % NS >= NS - UIP_HOLD_NS

    def _to_rtc(self, value: int) -> int:
        if self.data[REG_B] & B_DM_BINARY:
            return value
        return (value // 10) << 4 | value % 10

    def _from_rtc(self, value: int) -> int:
        if self.data[REG_B] & B_DM_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0x0F)

    def _encode_hour(self, hour: int) -> int:
        if self.data[REG_B] & B_24H:
            return self._to_rtc(hour)
        return self._to_rtc(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _decode_hour(self, value: int) -> int:
        hour = self._from_rtc(value & 0x7F)
        if self.data[REG_B] & B_24H:
            return hour
        return hour % 12 + (12 if value & 0x80 else 0)

    def _store_time(self, seconds: int) -> None:
        """Write ``seconds`` since the epoch into the clock registers."""
        tm = time.gmtime(seconds)
        self.data[SECONDS] = self._to_rtc(tm.tm_sec)
        self.data[MINUTES] = self._to_rtc(tm.tm_min)
        self.data[HOURS] = self._encode_hour(tm.tm_hour)
        self.data[DAY_OF_WEEK] = self._to_rtc((tm.tm_wday + 1) % 7 + 1)  # Sunday is 1
        self.data[DAY_OF_MONTH] = self._to_rtc(tm.tm_mday)
        self.data[MONTH] = self._to_rtc(tm.tm_mon)
        self.data[YEAR] = self._to_rtc(tm.tm_year % 100)
        self.data[CENTURY] = self._to_rtc(tm.tm_year // 100)

    def _stored_seconds(self) -> int:
        """The clock registers as seconds since the epoch (the guest's chosen time)."""
        year = self._from_rtc(self.data[CENTURY]) * 100 + self._from_rtc(self.data[YEAR])
        days = _days_since_epoch(
            year, self._from_rtc(self.data[MONTH]), self._from_rtc(self.data[DAY_OF_MONTH])
        )
        hour = self._decode_hour(self.data[HOURS])
        return ((days * 24 + hour) * 60 + self._from_rtc(self.data[MINUTES])) * 60 + (
            self._from_rtc(self.data[SECONDS])
        )

    def _set_time(self, now: int, fraction_ns: int) -> None:
        """The guest set the clock: it runs on from the registers' time."""
        self._base_ns = self._stored_seconds() * NS + fraction_ns
        self._ref = now
        self._checked = now  # a time set is not an update cycle

    # --- interrupts --------------------------------------------------------------------
    def _update_flags(self, now: int) -> None:
        then, self._checked = self._checked, now
        flags = self._periodic_flag(then, now)
        if self.data[REG_A] & A_DIVIDER_RESET != A_DIVIDER_RESET:
            first = (self._guest_ns(then) // NS) + 1
            last = self._guest_ns(now) // NS
            if last >= first:
                flags |= C_UF
                if self._alarm_between(first, last):
                    flags |= C_AF
        new = flags & ~self.data[REG_C]
        self.data[REG_C] |= flags
        if new & self.data[REG_B]:
            self.data[REG_C] |= C_IRQF
            self._irq.set(True)

    def _periodic_flag(self, then: int, now: int) -> int:
        # As in QEMU, the periodic flag runs only while its interrupt is enabled.
        period = _periodic_ns(self.data[REG_A] & A_RATE)
        if (
            period is None
            or not self.data[REG_B] & B_PIE
            or self.data[REG_A] & A_DIVIDER_RESET == A_DIVIDER_RESET
        ):
            return 0
        ticks = (now - self._phase_ref) // period - (then - self._phase_ref) // period
        return C_PF if ticks > 0 else 0

    def _alarm_field(self, index: int) -> int | None:
        value = self.data[index]
        if value & DONT_CARE == DONT_CARE:
            return None
        return self._decode_hour(value) if index == HOURS_ALARM else self._from_rtc(value)

    def _alarm_between(self, first: int, last: int) -> bool:
        """Whether the alarm matched at any second in ``[first, last]``."""
        fields = [self._alarm_field(i) for i in (HOURS_ALARM, MINUTES_ALARM, SECONDS_ALARM)]
        for second in range(max(first, last - SECONDS_PER_DAY + 1), last + 1):
            of_day = second % SECONDS_PER_DAY
            now = (of_day // 3600, of_day // 60 % 60, of_day % 60)
            if all(f is None or f == v for f, v in zip(fields, now, strict=True)):
                return True
        return False

    def _next_deadline(self, now: int) -> int | None:
        enabled = self.data[REG_B]
        deadlines = []
        if enabled & (B_UIE | B_AIE) and self._running():
            deadlines.append(now + NS - self._guest_ns(now) % NS)
        period = _periodic_ns(self.data[REG_A] & A_RATE)
        if enabled & B_PIE and period is not None:
            deadlines.append(now + period - (now - self._phase_ref) % period)
        return min(deadlines, default=None)
