"""Decoding configuration accesses: ECAM offsets and mechanism #1 (ports CF8/CFC).

The ECAM device itself is ``pcihole.machine``'s ``EcamDevice``. Both end in a lookup
``Bdf -> ConfigSpace | None``; ``None`` is a hole, where reads return
all ones (master abort) and writes vanish. A write that changed a function's registers
returns that function's address and the register written, so the caller can mirror its
page again and tell the chipset (``ConfigWrite``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pcihole import layout
from pcihole.bits import all_ones
from pcihole.pci.bdf import (
    BUSES,
    ECAM_BUS_MASK,
    ECAM_BUS_SHIFT,
    ECAM_DEVICE_MASK,
    ECAM_DEVICE_SHIFT,
    ECAM_FUNCTION_MASK,
    ECAM_FUNCTION_SHIFT,
    ECAM_REGISTER_MASK,
    Bdf,
    BuiltBdf,
    GuestBdf,
)
from pcihole.pci.config import CONFIG_SPACE_SIZE, ConfigSpace
from pcihole.pci.errors import EcamError

Lookup = Callable[[GuestBdf], ConfigSpace | None]
"""Finds the configuration space the guest reaches at an address; None where no function
exists."""


@dataclass(frozen=True, slots=True)
class ConfigWrite:
    """A guest's config write that changed a function's registers: the one event every
    listener hears (MCH, LPC, BAR decoder), whether it came through ECAM or CF8/CFC.

    ``bdf`` is where the function was built (``Function.bdf``), not the bus number the
    guest reached it at: listeners know their functions by what they are."""

    bdf: BuiltBdf
    offset: int
    size: int

    def touches(self, register: int, width: int) -> bool:
        """Whether the write reached any byte of ``width`` bytes at ``register``."""
        return self.offset < register + width and register < self.offset + self.size


ConfigListener = Callable[[ConfigWrite], None]
"""Hears every ``ConfigWrite``, after the function's mirror page is refreshed."""


def ecam_decode(offset: int) -> tuple[Bdf, int]:
    """Split an offset into an ECAM window into (function, register offset)."""
    if not 0 <= offset < BUSES << ECAM_BUS_SHIFT:
        raise EcamError(f"offset {offset:#x} is outside a 256-bus ECAM window")
    bdf = Bdf(
        offset >> ECAM_BUS_SHIFT & ECAM_BUS_MASK,
        offset >> ECAM_DEVICE_SHIFT & ECAM_DEVICE_MASK,
        offset >> ECAM_FUNCTION_SHIFT & ECAM_FUNCTION_MASK,
    )
    return bdf, offset & ECAM_REGISTER_MASK


def ecam_encode(bdf: Bdf, register: int = 0) -> int:
    """The ECAM offset of ``register`` in the function at ``bdf``."""
    if not 0 <= register <= ECAM_REGISTER_MASK:
        raise EcamError(f"register {register:#x} is outside a function's 4 KiB")
    return bdf.ecam_offset | register


# Mechanism #1: the dword written to port CF8.
CF8_ENABLE = 1 << 31
CF8_EXTENDED_REGISTER_SHIFT = 24
"""AMD-style extension: bits 27:24 give register bits 11:8, reaching extended space."""
CF8_EXTENDED_REGISTER_MASK = 0xF
CF8_BUS_SHIFT = 16
CF8_BUS_MASK = 0xFF
CF8_DEVICE_SHIFT = 11
CF8_DEVICE_MASK = 0x1F
CF8_FUNCTION_SHIFT = 8
CF8_FUNCTION_MASK = 0x7
CF8_REGISTER_MASK = 0xFC
"""Bits 7:2: a dword-aligned register; the low two bits come from which CFC port is used."""

CONFIG_ADDRESS_PORT = layout.PCI_CONFIG_ADDRESS_PORT
CONFIG_DATA_PORT = layout.PCI_CONFIG_DATA_PORT
PORTS = range(CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT + 4)
"""All eight ports the mechanism answers."""


@dataclass(frozen=True)
class ConfigAddress:
    """A decoded CF8 value."""

    enabled: bool
    bdf: Bdf
    register: int


def decode_config_address(value: int, *, extended_registers: bool = False) -> ConfigAddress:
    register = value & CF8_REGISTER_MASK
    if extended_registers:
        extended = value >> CF8_EXTENDED_REGISTER_SHIFT & CF8_EXTENDED_REGISTER_MASK
        register |= extended << 8
    bdf = Bdf(
        value >> CF8_BUS_SHIFT & CF8_BUS_MASK,
        value >> CF8_DEVICE_SHIFT & CF8_DEVICE_MASK,
        value >> CF8_FUNCTION_SHIFT & CF8_FUNCTION_MASK,
    )
    return ConfigAddress(bool(value & CF8_ENABLE), bdf, register)


def encode_config_address(bdf: Bdf, register: int, *, extended_registers: bool = False) -> int:
    """The CF8 value a guest writes to reach ``register`` of ``bdf``."""
    limit = CONFIG_SPACE_SIZE if extended_registers else 256
    if not 0 <= register < limit:
        raise EcamError(f"register {register:#x} is not reachable through CF8 (< {limit:#x})")
    value = CF8_ENABLE | bdf.bus << CF8_BUS_SHIFT | bdf.devfn << CF8_FUNCTION_SHIFT
    value |= register & CF8_REGISTER_MASK
    return value | (register >> 8) << CF8_EXTENDED_REGISTER_SHIFT


class ConfigMechanism1:
    """The legacy PC configuration ports: an address latch at CF8, data at CFC-CFF.

    Only dword accesses reach the latch (byte port CF9 is the reset register on PCs);
    other accesses to CF8-CFB read all ones and are dropped. With the enable bit clear, or
    for an access that would run past CFF, data reads are all ones and writes are dropped.
    """

    def __init__(self, lookup: Lookup, *, extended_registers: bool = False) -> None:
        self._lookup = lookup
        self._extended_registers = extended_registers
        self.address = 0
        """The latched CF8 value."""

    def _target(self, port: int, size: int) -> tuple[GuestBdf, ConfigSpace, int] | None:
        """The function and register a data-port access reaches, if any."""
        decoded = decode_config_address(self.address, extended_registers=self._extended_registers)
        lane = port - CONFIG_DATA_PORT
        if not decoded.enabled or lane + size > 4:
            return None
        bdf = GuestBdf(decoded.bdf)  # the guest's own bus numbering: what it asked for
        config = self._lookup(bdf)
        return None if config is None else (bdf, config, decoded.register + lane)

    @staticmethod
    def _check(port: int, size: int) -> None:
        if port not in PORTS:
            raise EcamError(f"port {port:#x} is not a PCI configuration port (CF8-CFF)")
        if size not in (1, 2, 4):
            raise EcamError(f"port access size {size} is not 1, 2 or 4")

    def io_read(self, port: int, size: int) -> int:
        self._check(port, size)
        if port < CONFIG_DATA_PORT:
            return self.address if (port, size) == (CONFIG_ADDRESS_PORT, 4) else all_ones(size)
        target = self._target(port, size)
        if target is None:
            return all_ones(size)
        _, config, register = target
        return config.read(register, size)

    def io_write(self, port: int, size: int, value: int) -> tuple[GuestBdf, int] | None:
        """Apply a port write; returns the address of the function whose registers
        changed and the register written, if any."""
        self._check(port, size)
        if port < CONFIG_DATA_PORT:
            if (port, size) == (CONFIG_ADDRESS_PORT, 4):
                self.address = value & 0xFFFFFFFF
            return None
        target = self._target(port, size)
        if target is None:
            return None
        bdf, config, register = target
        changed = config.write(register, size, value & all_ones(size))
        return (bdf, register) if changed else None
