"""The ICH9 ACPI power-management I/O block, as QEMU q35 presents it at PMBASE.

``layout.ACPI_PM_SIZE`` (0x80) bytes wherever the LPC function's PMBASE puts it (see
``pcihole.q35.lpc``), after QEMU 7.2's ``hw/acpi/ich9.c`` and ``hw/acpi/core.c``:

- PM1a event block: status (w1c) at +0, enable at +2;
- PM1a control at +4: SCI_EN, and SLP_TYP with SLP_EN, which is never stored: sleep
  type 0 (QEMU's S5) and 2 (its S4) call ``power_off``, type 1 (S3) calls ``suspend``;
- the PM timer at +8: 24 bits counting at 3.579545 MHz from ``clock``; its status bit
  (TMR_STS) rises each time bit 23 toggles, and, as in QEMU, reads set at power-on;
- GPE0: 8 status bytes (w1c) at +0x20, 8 enable bytes at +0x28;
- SMI_EN at +0x30 (writable) and SMI_STS at +0x34 (read-only). Without SMM emulation
  SMI_EN comes out of reset with APMC_EN set, as QEMU does when SMM is off: SeaBIOS takes
  it to mean SMM is already set up and leaves it alone.

Registers take accesses of any width at any byte; bytes no register covers read 0 and
ignore writes. The SCI (``sci``) is high while SCI_EN is set and an enabled PM1 or GPE0
status bit is set; there is no timer thread, so the PM timer's overflow is noticed on
accesses and on ``poll()``.

The APM control port (0xb2, ``devices.apm``) reaches ``apm_command``: ACPI enable and
disable set and clear SCI_EN.

Left out: the TCO watchdog at +0x60, the SMI generation itself, and the periodic and
software SMI timers of later QEMUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pcihole.devices.irq import IrqLine, IrqPin, no_irq

PM1_STS = 0x00
PM1_EN = 0x02
PM1_CNT = 0x04
PM_TMR = 0x08
GPE0_STS = 0x20
GPE0_EN = 0x28
GPE0_LEN = 0x10
"""Status and enable halves together (ICH9: 8 bytes each)."""
SMI_EN = 0x30
SMI_STS = 0x34

# PM1 status and enable bits.
TMR_STS = 0x0001
BM_STS = 0x0010
GBL_STS = 0x0020
PWRBTN_STS = 0x0100
SLPBTN_STS = 0x0200
RTC_STS = 0x0400
WAK_STS = 0x8000
TMR_EN = 0x0001
GBL_EN = 0x0020
PWRBTN_EN = 0x0100
RTC_EN = 0x0400
PM1_SCI_SOURCES = TMR_EN | GBL_EN | PWRBTN_EN | RTC_EN
"""Enables whose status raises the SCI (QEMU's ACPI_BITMASK_PM1_COMMON_ENABLED)."""

# PM1 control bits.
SCI_EN = 0x0001
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7
SLP_EN = 0x2000
SLEEP_OFF = 0
"""SLP_TYP QEMU's DSDT gives \\_S5 (soft off)."""
SLEEP_S3 = 1
SLEEP_S4 = 2
"""QEMU's ICH9 S4 value: handled as power off."""

SMI_EN_GBL_SMI = 0x01
SMI_EN_APMC = 0x20

APM_ACPI_ENABLE = 0x02
"""The APM_CNT byte SeaBIOS's FADT names ACPI_ENABLE (QEMU's ICH9_APM_ACPI_ENABLE)."""
APM_ACPI_DISABLE = 0x03

PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFFFFFF
PM_TIMER_HALF = 0x800000
"""TMR_STS rises each time bit 23 of the count toggles."""
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Register:
    offset: int
    width: int
    get: Callable[[], int]
    put: Callable[[int, int], None] | None
    """Takes (value, mask of the bits written); None: read-only."""


class AcpiPm:
    """The PM block's 0x80 ports, offsets relative to PMBASE."""

    def __init__(
        self,
        *,
        power_off: Callable[[], None],
        sci: IrqLine = no_irq,
        suspend: Callable[[], None] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """``clock`` counts nanoseconds (monotonic); the PM timer starts at 0 here."""
        self._power_off = power_off
        self._suspend = suspend
        self._sci = IrqPin(sci)
        self._clock = clock
        self._start = clock()
        self.smi_requests = 0
        """APM commands that would have raised an SMI on QEMU (no SMM here)."""
        self._registers = (
            _Register(PM1_STS, 2, self._get_pm1_sts, self._put_pm1_sts),
            _Register(PM1_EN, 2, lambda: self.pm1_en, self._put_pm1_en),
            _Register(PM1_CNT, 2, lambda: self.pm1_cnt, self._put_pm1_cnt),
            _Register(PM_TMR, 4, self.timer, None),
            _Register(GPE0_STS, 8, lambda: self.gpe0_sts, self._put_gpe0_sts),
            _Register(GPE0_EN, 8, lambda: self.gpe0_en, self._put_gpe0_en),
            _Register(SMI_EN, 4, lambda: self.smi_en, self._put_smi_en),
            _Register(SMI_STS, 4, lambda: self.smi_sts, None),
        )
        self.machine_reset()

    def machine_reset(self) -> None:
        """Power-on state (QEMU ``pm_reset``); the timer keeps counting."""
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self.gpe0_sts = 0
        self.gpe0_en = 0
        self.smi_en = SMI_EN_APMC
        self.smi_sts = 0
        self._overflow = 0
        """Timer count at which TMR_STS next rises (0: already, as after QEMU's reset)."""
        self._update_sci()

    # --- host side ---------------------------------------------------------------------
    def ticks(self) -> int:
        """PM timer ticks since construction, unwrapped."""
        return (self._clock() - self._start) * PM_TIMER_HZ // NS

    def timer(self) -> int:
        """The PM_TMR register: the tick count modulo 2**24."""
        return self.ticks() & PM_TIMER_MASK

    def set_sci_enabled(self, enabled: bool) -> None:
        """ACPI enable/disable through the APM control port (0xb2), as QEMU's LPC does."""
        self.pm1_cnt = self.pm1_cnt | SCI_EN if enabled else self.pm1_cnt & ~SCI_EN
        self._update_sci()

    def apm_command(self, command: int) -> None:
        """A byte written to APM_CNT (``devices.apm``), as QEMU 7.2's
        ``ich9_apm_ctrl_changed``: ACPI_ENABLE sets SCI_EN, ACPI_DISABLE clears it. QEMU
        raises an SMI for any other byte while SMI_EN has APMC_EN set, and does nothing
        while it is clear; without SMM here such bytes are only counted (``smi_requests``)."""
        if command in (APM_ACPI_ENABLE, APM_ACPI_DISABLE):
            self.set_sci_enabled(command == APM_ACPI_ENABLE)
        elif self.smi_en & SMI_EN_APMC:
            self.smi_requests += 1

    def press_power_button(self) -> None:
        """Flag a power-button press (the guest powers off if its ACPI enabled it)."""
        self.pm1_sts |= PWRBTN_STS
        self._update_sci()

    def raise_gpe(self, bit: int) -> None:
        """Set a GPE0 status bit (0-63), as a hot-plug controller would."""
        self.gpe0_sts |= 1 << bit
        self._update_sci()

    def poll(self) -> int | None:
        """Bring the SCI up to date; returns the ``clock`` instant the timer's overflow
        would raise it next (None if it cannot)."""
        self._update_sci()
        if not (self.pm1_cnt & SCI_EN and self.pm1_en & TMR_EN) or self._timer_flagged():
            return None
        return self._start - (-self._overflow * NS // PM_TIMER_HZ)  # ceiling division

    # --- ports -------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        value = 0
        for register in self._registers:
            first = max(offset, register.offset)
            end = min(offset + size, register.offset + register.width)
            if first >= end:
                continue
            whole = register.get()
            for byte in range(first, end):
                part = (whole >> (8 * (byte - register.offset))) & 0xFF
                value |= part << (8 * (byte - offset))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for register in self._registers:
            first = max(offset, register.offset)
            end = min(offset + size, register.offset + register.width)
            if first >= end or register.put is None:
                continue
            shift = 8 * (first - register.offset)
            mask = ((1 << (8 * (end - first))) - 1) << shift
            aligned = (value >> (8 * (first - offset))) << shift
            register.put(aligned & mask, mask)
        self._update_sci()

    # --- registers ---------------------------------------------------------------------
    def _timer_flagged(self) -> bool:
        return self.ticks() >= self._overflow

    def _get_pm1_sts(self) -> int:
        if self._timer_flagged():
            self.pm1_sts |= TMR_STS
        return self.pm1_sts

    def _put_pm1_sts(self, value: int, mask: int) -> None:
        if value & self._get_pm1_sts() & TMR_STS:
            # Acknowledged: the next rise is the next toggle of bit 23.
            self._overflow = (self.ticks() + PM_TIMER_HALF) & ~(PM_TIMER_HALF - 1)
        self.pm1_sts &= ~value

    def _put_pm1_en(self, value: int, mask: int) -> None:
        self.pm1_en = (self.pm1_en & ~mask) | value

    def _put_pm1_cnt(self, value: int, mask: int) -> None:
        control = (self.pm1_cnt & ~mask) | value
        self.pm1_cnt = control & ~SLP_EN
        if control & SLP_EN:
            self._sleep((control >> SLP_TYP_SHIFT) & SLP_TYP_MASK)

    def _sleep(self, sleep_type: int) -> None:
        if sleep_type in (SLEEP_OFF, SLEEP_S4):
            self._power_off()
        elif sleep_type == SLEEP_S3 and self._suspend is not None:
            self._suspend()

    def _put_gpe0_sts(self, value: int, mask: int) -> None:
        self.gpe0_sts &= ~value

    def _put_gpe0_en(self, value: int, mask: int) -> None:
        self.gpe0_en = (self.gpe0_en & ~mask) | value

    def _put_smi_en(self, value: int, mask: int) -> None:
        self.smi_en = (self.smi_en & ~mask) | value

    def _update_sci(self) -> None:
        pm1 = self._get_pm1_sts() & self.pm1_en & PM1_SCI_SOURCES
        gpe = self.gpe0_sts & self.gpe0_en
        self._sci.set(bool(self.pm1_cnt & SCI_EN and (pm1 or gpe)))
