"""What the ICH9 LPC function's configuration registers decide outside config space.

The registers themselves (their writable masks and reset values) live with the LPC
function in ``pcihole.pci``; this object, built for that function (00:1f.0 on q35),
listens to config writes, reads its registers after a write of its own and tells the
machine what changed, as QEMU 7.2's ``hw/isa/lpc_ich9.c`` does:

- PMBASE (0x40) and ACPI_CNTL (0x44): the ACPI PM block (``devices.acpi_pm``) is
  decoded at ``PMBASE & 0xff80`` while ACPI_EN (ACPI_CNTL bit 7) is set and that base is
  not 0; otherwise nowhere. ACPI_CNTL bits 2:0 choose the SCI's interrupt.
- PIRQ[A-D]_ROUT (0x60-0x63), PIRQ[E-H]_ROUT (0x68-0x6b): bits 3:0 name the ISA IRQ a
  PCI interrupt line reaches through the 8259s; bit 7 set disconnects it from them
  (in APIC mode PIRQ n always reaches GSI 16 + n).
- RCBA (0xf0): the 16 KiB root complex register block at ``RCBA & 0xffffc000`` while
  bit 0 is set.

Callbacks run only when a decoded value changes; ``sync`` evaluates every register (at
machine start and after a reset), and the first one reports every value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pcihole.pci.bdf import Bdf, BuiltBdf
from pcihole.pci.ecam import ConfigWrite

LPC = BuiltBdf(Bdf(0, 0x1F, 0))
"""Where q35 has the ICH9 LPC function."""
PMBASE = 0x40
PMBASE_ADDRESS_MASK = 0xFF80
"""Bits 15:7: the PM block is 128 ports, 128-aligned."""
PMBASE_RESET = 0x00000001
"""Bit 0 reads 1: the block lives in I/O space."""
ACPI_CNTL = 0x44
ACPI_EN = 0x80
SCI_IRQ_SELECT = 0x07
SCI_IRQS = {0: 9, 1: 10, 2: 11, 4: 20, 5: 21}
"""ACPI_CNTL bits 2:0 -> the SCI's IRQ (3, 6 and 7 are reserved)."""
PIRQA_ROUT = 0x60
PIRQE_ROUT = 0x68
PIRQ_ROUT_DISABLE = 0x80
"""Bit 7 (QEMU's IRQEN): set means not routed to the 8259s."""
PIRQ_ROUT_IRQ = 0x0F
PIRQ_ROUT_RESET = 0x80
PIRQ_COUNT = 8
PIRQ_REGISTERS = tuple((PIRQA_ROUT if n < 4 else PIRQE_ROUT - 4) + n for n in range(PIRQ_COUNT))
"""Config offset of PIRQ A..H's routing byte."""
RCBA = 0xF0
RCBA_ENABLE = 0x1
RCBA_ADDRESS_MASK = 0xFFFFC000
RCBA_SIZE = 0x4000


class ConfigReader(Protocol):
    """The LPC function's config space as it reads after the write (``ConfigSpace``)."""

    def read(self, offset: int, size: int) -> int: ...


def pm_base(pmbase: int, acpi_cntl: int) -> int | None:
    """Where the PM block is decoded, None when it is not."""
    base = pmbase & PMBASE_ADDRESS_MASK
    return base if acpi_cntl & ACPI_EN and base else None


def sci_irq(acpi_cntl: int) -> int | None:
    return SCI_IRQS.get(acpi_cntl & SCI_IRQ_SELECT)


def pirq_irq(route: int) -> int | None:
    """The ISA IRQ a PIRQ routing byte sends its line to, None when disconnected."""
    return None if route & PIRQ_ROUT_DISABLE else route & PIRQ_ROUT_IRQ


def rcba_base(rcba: int) -> int | None:
    return rcba & RCBA_ADDRESS_MASK if rcba & RCBA_ENABLE else None


_UNSET = object()


class Ich9LpcDecoder:
    """Turns LPC config writes into the PM block's place, SCI and PIRQ routes, RCBA."""

    def __init__(
        self,
        config: ConfigReader,
        *,
        bdf: BuiltBdf = LPC,
        on_pm_base: Callable[[int | None], None],
        on_pirq: Callable[[int, int | None], None],
        on_sci_irq: Callable[[int | None], None] | None = None,
        on_rcba: Callable[[int | None], None] | None = None,
    ) -> None:
        self.config = config
        self.bdf = bdf
        self._on_pm_base = on_pm_base
        self._on_pirq = on_pirq
        self._on_sci_irq = on_sci_irq
        self._on_rcba = on_rcba
        self._pm_base: object = _UNSET
        self._sci_irq: object = _UNSET
        self._rcba: object = _UNSET
        self._pirqs: list[object] = [_UNSET] * PIRQ_COUNT

    @property
    def pm_base(self) -> int | None:
        """Where the PM block is decoded now (None before ``sync`` too)."""
        return self._pm_base if isinstance(self._pm_base, int) else None

    @property
    def pirqs(self) -> tuple[int | None, ...]:
        """PIRQ A..H's ISA IRQs now (None: not routed to the 8259s)."""
        return tuple(p if isinstance(p, int) else None for p in self._pirqs)

    def sync(self) -> None:
        """Evaluate every register; callbacks run for what differs from before."""
        self.config_written(ConfigWrite(self.bdf, 0, 0x100))

    def config_written(self, write: ConfigWrite) -> None:
        """A guest's config write changed a function; the decoder follows its own."""
        if write.bdf != self.bdf:
            return
        config = self.config
        if write.touches(PMBASE, 4) or write.touches(ACPI_CNTL, 1):
            acpi_cntl = config.read(ACPI_CNTL, 1)
            self._pm_base = self._report(
                self._pm_base, pm_base(config.read(PMBASE, 4), acpi_cntl), self._on_pm_base
            )
            self._sci_irq = self._report(self._sci_irq, sci_irq(acpi_cntl), self._on_sci_irq)
        for index, register in enumerate(PIRQ_REGISTERS):
            if write.touches(register, 1):
                route = pirq_irq(config.read(register, 1))
                if route != self._pirqs[index]:
                    self._pirqs[index] = route
                    self._on_pirq(index, route)
        if write.touches(RCBA, 4):
            self._rcba = self._report(self._rcba, rcba_base(config.read(RCBA, 4)), self._on_rcba)

    @staticmethod
    def _report(
        old: object, new: int | None, callback: Callable[[int | None], None] | None
    ) -> int | None:
        if new != old and callback is not None:
            callback(new)
        return new
