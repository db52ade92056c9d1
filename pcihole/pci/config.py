"""One PCI function's configuration space: 4 KiB of registers plus what a write may change.

Modelled on cloud-hypervisor's ``pci/src/configuration.rs``: the registers are plain bytes,
and two masks of the same size say which bits a guest write may set (``writable``) and which
bits a guest clears by writing a one (``w1c``, the status bits hardware raises). Every other
bit is read-only. BARs need no special code: a BAR's writable mask is its address bits, so
writing all ones reads back the size mask with the read-only type bits, the way sizing works.

Device models build a space with ``define`` and the ``add_*`` helpers, which bypass the masks;
guests only ever go through ``write``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pcihole.pci.errors import ConfigSpaceError

CONFIG_SPACE_SIZE = 4096
"""PCI Express configuration space per function: one ECAM page."""
LEGACY_CONFIG_SIZE = 256
"""Conventional PCI configuration space; extended capabilities live above it."""
ACCESS_SIZES = (1, 2, 4, 8)
"""8 is two dwords in one go (a guest ``mov`` of a u64 into ECAM)."""

# Common header (both types).
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_CODE = 0x09
"""Three bytes: programming interface, subclass, base class."""
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10
CAPABILITIES_POINTER = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
# Type 0 (endpoint) header.
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
# Type 1 (PCI-to-PCI bridge) header.
PRIMARY_BUS = 0x18
SECONDARY_BUS = 0x19
SUBORDINATE_BUS = 0x1A
SECONDARY_LATENCY_TIMER = 0x1B
IO_BASE = 0x1C
IO_LIMIT = 0x1D
SECONDARY_STATUS = 0x1E
MEMORY_BASE = 0x20
MEMORY_LIMIT = 0x22
PREF_MEMORY_BASE = 0x24
PREF_MEMORY_LIMIT = 0x26
PREF_BASE_UPPER32 = 0x28
PREF_LIMIT_UPPER32 = 0x2C
IO_BASE_UPPER16 = 0x30
IO_LIMIT_UPPER16 = 0x32
BRIDGE_ROM_ADDRESS = 0x38
BRIDGE_CONTROL = 0x3E

FIRST_CAPABILITY = 0x40
"""Capabilities live between the end of the header and the end of legacy space."""
FIRST_EXTENDED_CAPABILITY = 0x100
"""PCI Express extended capabilities start exactly here."""

HEADER_TYPE_MULTIFUNCTION = 0x80
STATUS_CAPABILITIES_LIST = 0x10
STATUS_W1C = 0xF900
"""Master data parity, signalled/received target abort, master abort, SERR, parity error."""
COMMAND_WRITABLE = 0x0507
"""I/O space, memory space, bus master, SERR enable, INTx disable (QEMU's pci_init_wmask)."""
BRIDGE_CONTROL_WRITABLE = 0x005F
"""Parity, SERR, ISA, VGA, VGA 16-bit, secondary bus reset (QEMU's bridge: no master abort
mode)."""
FREE_WRITABLE = 0xFF
"""QEMU leaves every byte past the header that no capability claims writable by the guest."""
EXTENDED_HEADER_SIZE = 4
"""A PCI Express function's first extended header (0x100) stays read-only even when empty."""
ROM_ENABLE = 0x1


class HeaderType(enum.IntEnum):
    """Layout of bytes 0x10-0x3f, from the header type register's low 7 bits."""

    ENDPOINT = 0
    """Type 0: a function with six BARs and a subsystem ID."""
    BRIDGE = 1
    """Type 1: a PCI-to-PCI bridge (root port, switch port) with bus numbers and windows."""


class BarKind(enum.Enum):
    """What a base address register decodes."""

    IO = "io"
    """Port I/O; bit 0 reads 1."""
    MEMORY32 = "memory32"
    """Memory below 4 GiB."""
    MEMORY64 = "memory64"
    """Memory anywhere; takes this BAR slot and the next one for the high dword."""


@dataclass(frozen=True)
class Bar:
    """One base address register as the device defines it (its address lives in the space)."""

    index: int
    kind: BarKind
    size: int
    prefetchable: bool = False

    @property
    def offset(self) -> int:
        return BAR0 + 4 * self.index

    @property
    def type_bits(self) -> int:
        """The read-only low bits: I/O flag, or memory type and prefetchable flag."""
        if self.kind is BarKind.IO:
            return 0x1
        bits = 0x4 if self.kind is BarKind.MEMORY64 else 0x0
        return bits | (0x8 if self.prefetchable else 0)

    @property
    def type_mask(self) -> int:
        return 0x3 if self.kind is BarKind.IO else 0xF

    @property
    def width(self) -> int:
        """Bytes of configuration space the BAR takes (8 for a 64-bit BAR)."""
        return 8 if self.kind is BarKind.MEMORY64 else 4


# Smallest and largest BAR sizes the PCI specification allows for each kind.
_BAR_SIZE_LIMITS = {
    BarKind.IO: (4, 256),
    BarKind.MEMORY32: (16, 1 << 31),
    BarKind.MEMORY64: (16, 1 << 63),
}
_ROM_SIZE_LIMITS = (2048, 1 << 31)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class ConfigSpace:
    """Registers, writable-bits mask and write-1-to-clear mask of one function."""

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        header_type: HeaderType = HeaderType.ENDPOINT,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
        multifunction: bool = False,
        express: bool = False,
    ) -> None:
        """``express``: the function has extended space (0x100-0xfff) as on a PCI Express
        bus; otherwise, like QEMU's conventional functions, it reads all ones there."""
        self._registers = bytearray(CONFIG_SPACE_SIZE)
        self._writable = bytearray(CONFIG_SPACE_SIZE)
        self._w1c = bytearray(CONFIG_SPACE_SIZE)
        self._used = bytearray(CONFIG_SPACE_SIZE)
        """Bytes a capability claims (QEMU's ``used``): where new ones cannot go."""
        self._bars: dict[int, Bar] = {}
        self._last_extended: int | None = None
        self._next_extended = FIRST_EXTENDED_CAPABILITY
        self.express = express
        free, legacy_end = FIRST_CAPABILITY, LEGACY_CONFIG_SIZE
        self._writable[free:legacy_end] = bytes([FREE_WRITABLE] * (legacy_end - free))
        extended = legacy_end + EXTENDED_HEADER_SIZE
        if express:
            self._writable[extended:] = bytes([FREE_WRITABLE] * (CONFIG_SPACE_SIZE - extended))
        else:
            self._registers[legacy_end:] = bytes([0xFF] * (CONFIG_SPACE_SIZE - legacy_end))

        self.define(VENDOR_ID, 2, vendor_id)
        self.define(DEVICE_ID, 2, device_id)
        self.define(COMMAND, 2, 0, writable=COMMAND_WRITABLE)
        self.define(STATUS, 2, 0, w1c=STATUS_W1C)
        self.define(REVISION_ID, 1, revision)
        self.define(CLASS_CODE, 3, class_code)
        self.define(CACHE_LINE_SIZE, 1, 0, writable=0xFF)
        self.define(LATENCY_TIMER, 1, 0)  # read-only 0 on QEMU
        multifunction_bit = HEADER_TYPE_MULTIFUNCTION if multifunction else 0
        self.define(HEADER_TYPE, 1, header_type | multifunction_bit)
        self.define(INTERRUPT_LINE, 1, 0, writable=0xFF)
        self.define(INTERRUPT_PIN, 1, interrupt_pin)
        if header_type is HeaderType.ENDPOINT:
            self.define(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
            self.define(SUBSYSTEM_ID, 2, subsystem_id)
        else:
            self._define_bridge_registers()

    def _define_bridge_registers(self) -> None:
        for register in (PRIMARY_BUS, SECONDARY_BUS, SUBORDINATE_BUS, SECONDARY_LATENCY_TIMER):
            self.define(register, 1, 0, writable=0xFF)
        self.define(SECONDARY_STATUS, 2, 0, w1c=STATUS_W1C)
        # Windows start closed (base above limit): no firmware has given the bridge
        # resources yet. The low nibbles are read-only address-width flags.
        self.define(IO_BASE, 1, 0xF0, writable=0xF0)
        self.define(IO_LIMIT, 1, 0x00, writable=0xF0)
        self.define(MEMORY_BASE, 2, 0xFFF0, writable=0xFFF0)
        self.define(MEMORY_LIMIT, 2, 0x0000, writable=0xFFF0)
        self.define(PREF_MEMORY_BASE, 2, 0xFFF1, writable=0xFFF0)  # 1: 64-bit window
        self.define(PREF_MEMORY_LIMIT, 2, 0x0001, writable=0xFFF0)
        self.define(PREF_BASE_UPPER32, 4, 0, writable=0xFFFFFFFF)
        self.define(PREF_LIMIT_UPPER32, 4, 0, writable=0xFFFFFFFF)
        self.define(BRIDGE_CONTROL, 2, 0, writable=BRIDGE_CONTROL_WRITABLE)

    # -- guest accesses ----------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """Little-endian read of ``size`` bytes (1, 2, 4 or 8) at ``offset``."""
        self._check_access(offset, size)
        return int.from_bytes(self._registers[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> bool:
        """A guest write: only writable bits take ``value``, ones clear W1C bits.

        Returns whether any register bit changed (so the caller knows to re-mirror the page).
        """
        self._check_access(offset, size)
        self._check_value(value, size)
        changed = False
        for i in range(size):
            at = offset + i
            byte = value >> (8 * i) & 0xFF
            old = self._registers[at]
            writable = self._writable[at]
            new = (old & ~writable | byte & writable) & ~(byte & self._w1c[at])
            if new != old:
                self._registers[at] = new
                changed = True
        return changed

    def snapshot(self) -> bytes:
        """The current 4096 bytes, as the guest must see them through ECAM."""
        return bytes(self._registers)

    # -- device-side updates -------------------------------------------------------------

    def define(
        self, offset: int, size: int, value: int, *, writable: int = 0, w1c: int = 0
    ) -> None:
        """Set a register's value and its masks, as the device model defines it."""
        self._check_range(offset, size)
        for mask in (value, writable, w1c):
            self._check_value(mask, size)
        if writable & w1c:
            raise ConfigSpaceError(
                f"register {offset:#x}: bits {writable & w1c:#x} both writable and W1C"
            )
        end = offset + size
        self._registers[offset:end] = value.to_bytes(size, "little")
        self._writable[offset:end] = writable.to_bytes(size, "little")
        self._w1c[offset:end] = w1c.to_bytes(size, "little")

    def set_bits(self, offset: int, size: int, bits: int) -> bool:
        """Hardware raises ``bits`` (e.g. an error status); masks do not apply. Changed?"""
        old = self.read(offset, size)
        self._check_value(bits, size)
        if old | bits == old:
            return False
        self._registers[offset : offset + size] = (old | bits).to_bytes(size, "little")
        return True

    def clear_bits(self, offset: int, size: int, bits: int) -> bool:
        """Hardware drops ``bits`` (e.g. a presence state); masks do not apply. Changed?"""
        old = self.read(offset, size)
        self._check_value(bits, size)
        if old & ~bits == old:
            return False
        self._registers[offset : offset + size] = (old & ~bits).to_bytes(size, "little")
        return True

    def set_multifunction(self) -> bool:
        """Mark the function as part of a multi-function device. Returns whether it changed."""
        return self.set_bits(HEADER_TYPE, 1, HEADER_TYPE_MULTIFUNCTION)

    def set_bus_numbers(self, primary: int, secondary: int, subordinate: int) -> None:
        """A bridge's bus numbers as firmware would program them (guests may rewrite them)."""
        if not self.is_bridge:
            raise ConfigSpaceError("bus numbers exist only in a type 1 (bridge) header")
        for register, bus in (
            (PRIMARY_BUS, primary),
            (SECONDARY_BUS, secondary),
            (SUBORDINATE_BUS, subordinate),
        ):
            self.define(register, 1, bus, writable=0xFF)

    # -- BARs --------------------------------------------------------------------------

    def add_bar(
        self, index: int, size: int, kind: BarKind = BarKind.MEMORY32, *, prefetchable: bool = False
    ) -> Bar:
        """Define BAR ``index`` decoding ``size`` bytes (a power of two)."""
        bar = Bar(index, kind, size, prefetchable)
        slots = 6 if self.header_type is HeaderType.ENDPOINT else 2
        taken = set(range(index, index + bar.width // 4))
        if not taken <= set(range(slots)):
            raise ConfigSpaceError(f"BAR {index} ({kind.value}) does not fit in {slots} slots")
        for other in self._bars.values():
            if taken & set(range(other.index, other.index + other.width // 4)):
                raise ConfigSpaceError(f"BAR {index} overlaps BAR {other.index}")
        low, high = _BAR_SIZE_LIMITS[kind]
        if not (_is_power_of_two(size) and low <= size <= high):
            raise ConfigSpaceError(
                f"BAR {index} size {size:#x} is not a power of two in {low:#x}-{high:#x}"
            )
        if kind is BarKind.IO and prefetchable:
            raise ConfigSpaceError(f"BAR {index}: I/O BARs cannot be prefetchable")
        # Address bits above the size are writable; bits below it and the type bits are not.
        address_bits = ~(size - 1) & ~bar.type_mask & ((1 << 8 * bar.width) - 1)
        self.define(bar.offset, bar.width, bar.type_bits, writable=address_bits)
        self._bars[index] = bar
        return bar

    def add_rom_bar(self, size: int) -> None:
        """Define the expansion ROM BAR (address bits 31:11 and the enable bit writable)."""
        low, high = _ROM_SIZE_LIMITS
        if not (_is_power_of_two(size) and low <= size <= high):
            raise ConfigSpaceError(
                f"ROM size {size:#x} is not a power of two in {low:#x}-{high:#x}"
            )
        offset = ROM_ADDRESS if self.header_type is HeaderType.ENDPOINT else BRIDGE_ROM_ADDRESS
        self.define(offset, 4, 0, writable=(~(size - 1) & 0xFFFFF800) | ROM_ENABLE)

    @property
    def bars(self) -> tuple[Bar, ...]:
        return tuple(self._bars[i] for i in sorted(self._bars))

    def bar_address(self, index: int) -> int:
        """The address the guest has programmed into BAR ``index`` (type bits removed)."""
        bar = self._bars.get(index)
        if bar is None:
            raise ConfigSpaceError(f"BAR {index} is not implemented")
        return self.read(bar.offset, bar.width) & ~bar.type_mask

    # -- capabilities ------------------------------------------------------------------

    def add_capability(self, capability_id: int, length: int, offset: int | None = None) -> int:
        """Add a capability of ``length`` bytes at ``offset`` (default: the first free run,
        as QEMU's ``pci_find_space``); returns its offset.

        As in QEMU's ``pci_add_capability``, the newest capability heads the list at 0x34
        and its bytes turn read-only. The ID and next pointer are filled in; the caller
        defines the body.
        """
        if offset is None:
            offset = self._find_space(length)
        end = offset + length
        if (
            length < 2
            or offset < FIRST_CAPABILITY
            or end > LEGACY_CONFIG_SIZE
            or any(self._used[offset:end])
        ):
            raise ConfigSpaceError(
                f"capability {capability_id:#04x} of {length} bytes does not fit at {offset:#x}"
            )
        self._claim(offset, length)
        head = self.read(CAPABILITIES_POINTER, 1)
        self.define(offset, 2, capability_id | head << 8)
        self.define(CAPABILITIES_POINTER, 1, offset)
        self.set_bits(STATUS, 2, STATUS_CAPABILITIES_LIST)
        return offset

    def _find_space(self, length: int) -> int:
        start = FIRST_CAPABILITY
        for at in range(FIRST_CAPABILITY, LEGACY_CONFIG_SIZE):
            if self._used[at]:
                start = at + 1
            elif at - start + 1 == length:
                return start
        return LEGACY_CONFIG_SIZE  # reported as not fitting

    def _claim(self, offset: int, length: int) -> None:
        """Mark bytes as a capability's: read-only until the caller defines its registers."""
        end = offset + length
        self._used[offset:end] = b"\x01" * length
        self._writable[offset:end] = bytes(length)
        self._w1c[offset:end] = bytes(length)

    def add_extended_capability(self, capability_id: int, version: int, length: int) -> int:
        """Append a PCI Express extended capability (from 0x100); returns its offset."""
        offset = self._next_extended
        if not self.express:
            raise ConfigSpaceError("a conventional function has no extended space")
        if length < 4 or offset + length > CONFIG_SPACE_SIZE:
            raise ConfigSpaceError(
                f"extended capability {capability_id:#06x} of {length} bytes "
                f"does not fit at {offset:#x}"
            )
        self._claim(offset, length)
        # Header: ID in bits 15:0, version in 19:16, next offset in 31:20 (0 ends the list).
        self.define(offset, 4, capability_id | (version & 0xF) << 16)
        if self._last_extended is not None:
            self.set_bits(self._last_extended, 4, offset << 20)
        self._last_extended = offset
        self._next_extended = (offset + length + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """``(offset, id)`` of each capability, walking the list the way a guest does."""
        found: list[tuple[int, int]] = []
        if not self.read(STATUS, 2) & STATUS_CAPABILITIES_LIST:
            return found
        offset = self.read(CAPABILITIES_POINTER, 1) & ~3
        while offset and len(found) < 48:  # 48 caps fill legacy space: stops a loop
            found.append((offset, self.read(offset, 1)))
            offset = self.read(offset + 1, 1) & ~3
        return found

    def extended_capabilities(self) -> list[tuple[int, int]]:
        """``(offset, id)`` of each extended capability, walking from 0x100."""
        found: list[tuple[int, int]] = []
        offset = FIRST_EXTENDED_CAPABILITY
        while offset and len(found) < 960:
            header = self.read(offset, 4)
            if header in (0, 0xFFFF_FFFF):  # none, or no extended space at all
                break
            found.append((offset, header & 0xFFFF))
            offset = header >> 20 & ~3
        return found

    def find_capability(self, capability_id: int) -> int | None:
        return next((at for at, cap in self.capabilities() if cap == capability_id), None)

    def find_extended_capability(self, capability_id: int) -> int | None:
        return next((at for at, cap in self.extended_capabilities() if cap == capability_id), None)

    # -- identity ----------------------------------------------------------------------

    @property
    def vendor_id(self) -> int:
        return self.read(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.read(DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        return self.read(REVISION_ID, 4) >> 8 * (CLASS_CODE - REVISION_ID)

    @property
    def revision(self) -> int:
        return self.read(REVISION_ID, 1)

    @property
    def header_type(self) -> HeaderType:
        return HeaderType(self.read(HEADER_TYPE, 1) & ~HEADER_TYPE_MULTIFUNCTION)

    @property
    def is_bridge(self) -> bool:
        return self.header_type is HeaderType.BRIDGE

    @property
    def is_multifunction(self) -> bool:
        return bool(self.read(HEADER_TYPE, 1) & HEADER_TYPE_MULTIFUNCTION)

    def writable_bits(self, offset: int, size: int) -> int:
        """The writable mask over ``size`` bytes at ``offset``."""
        self._check_access(offset, size)
        return int.from_bytes(self._writable[offset : offset + size], "little")

    def w1c_bits(self, offset: int, size: int) -> int:
        """The write-1-to-clear mask over ``size`` bytes at ``offset``."""
        self._check_access(offset, size)
        return int.from_bytes(self._w1c[offset : offset + size], "little")

    # -- checks ------------------------------------------------------------------------

    @classmethod
    def _check_access(cls, offset: int, size: int) -> None:
        if size not in ACCESS_SIZES:
            raise ConfigSpaceError(f"access size {size} is not one of 1, 2, 4, 8")
        cls._check_range(offset, size)

    @staticmethod
    def _check_range(offset: int, size: int) -> None:
        if size < 1 or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            raise ConfigSpaceError(
                f"{size} bytes at {offset:#x} leave the 4 KiB configuration space"
            )

    @staticmethod
    def _check_value(value: int, size: int) -> None:
        if not 0 <= value < 1 << (8 * size):
            raise ConfigSpaceError(f"value {value:#x} does not fit in {size} bytes")
