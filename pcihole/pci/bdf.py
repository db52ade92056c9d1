"""PCI addresses: bus, device, function, written the way lspci writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from pcihole.pci.errors import BdfError

BUSES = 256
DEVICES_PER_BUS = 32
FUNCTIONS_PER_DEVICE = 8

# ECAM packs an address as bus[27:20] device[19:15] function[14:12] register[11:0].
ECAM_BUS_SHIFT = 20
ECAM_DEVICE_SHIFT = 15
ECAM_FUNCTION_SHIFT = 12
ECAM_BUS_MASK = 0xFF
ECAM_DEVICE_MASK = 0x1F
ECAM_FUNCTION_MASK = 0x7
ECAM_REGISTER_MASK = 0xFFF

# Optional domain "0000:", then bus and device in 1-2 hex digits, then one hex digit of
# function (so "00:01.8" is reported as an out-of-range function, not as gibberish).
_BDF_RE = re.compile(
    r"(?:(?P<domain>[0-9a-f]{4}):)?(?P<bus>[0-9a-f]{1,2}):(?P<device>[0-9a-f]{1,2})"
    r"\.(?P<function>[0-9a-f])",
    re.IGNORECASE,
)


@dataclass(frozen=True, order=True)
class Bdf:
    """One PCI function's address in domain 0. Orders by bus, then device, then function."""

    bus: int
    device: int
    function: int

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("bus", self.bus, BUSES),
            ("device", self.device, DEVICES_PER_BUS),
            ("function", self.function, FUNCTIONS_PER_DEVICE),
        ):
            if not 0 <= value < limit:
                raise BdfError(f"{name} {value} is out of range 0-{limit - 1}")

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """Parse ``BB:DD.F`` or ``0000:BB:DD.F`` (hexadecimal, as lspci prints)."""
        match = _BDF_RE.fullmatch(text.strip())
        if match is None:
            raise BdfError(f"malformed PCI address {text!r} (want BB:DD.F in hex, like 00:1f.3)")
        domain = match["domain"]
        if domain is not None and int(domain, 16) != 0:
            raise BdfError(f"PCI domain {domain} in {text!r}: only domain 0000 exists")
        return cls(int(match["bus"], 16), int(match["device"], 16), int(match["function"], 16))

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.device:02x}.{self.function:x}"

    @property
    def devfn(self) -> int:
        """Device and function in one byte, as in ``PCI_DEVFN``."""
        return self.device << 3 | self.function

    @property
    def ecam_offset(self) -> int:
        """Offset of this function's 4 KiB configuration page inside an ECAM window."""
        return (
            self.bus << ECAM_BUS_SHIFT
            | self.device << ECAM_DEVICE_SHIFT
            | self.function << ECAM_FUNCTION_SHIFT
        )

    @classmethod
    def from_ecam_offset(cls, offset: int) -> Bdf:
        """The function whose configuration page starts at ``offset`` (page aligned)."""
        if offset & ECAM_REGISTER_MASK or not 0 <= offset < BUSES << ECAM_BUS_SHIFT:
            raise BdfError(f"ECAM offset {offset:#x} is not the start of a function's page")
        return cls(
            offset >> ECAM_BUS_SHIFT & ECAM_BUS_MASK,
            offset >> ECAM_DEVICE_SHIFT & ECAM_DEVICE_MASK,
            offset >> ECAM_FUNCTION_SHIFT & ECAM_FUNCTION_MASK,
        )


BuiltBdf = NewType("BuiltBdf", Bdf)
"""Where a function was built (``Function.bdf``, the ``--device`` text): what it is, for
good. Topologies, mirrors and config-write listeners know functions by it."""
GuestBdf = NewType("GuestBdf", Bdf)
"""Where the guest reaches a function now, under the bus numbers it gave the bridges
(``pci.routing``): what CF8 and ECAM decode. Equal to the built address until firmware
renumbers a bridge; mypy keeps the two apart, so a lookup by the wrong one cannot pass
every test and fail only then."""
