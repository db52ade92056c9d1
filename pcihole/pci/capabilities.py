"""Capability structures a device model can hang on a ``ConfigSpace``.

Each ``add_*`` function appends one capability, defines its registers with the writable and
write-1-to-clear bits the PCI (Express) specification gives them, and returns its offset.
"""

from __future__ import annotations

import enum

from pcihole.pci.config import BarKind, ConfigSpace
from pcihole.pci.errors import ConfigSpaceError


class CapabilityId(enum.IntEnum):
    """IDs of the capabilities in the list that starts at 0x34."""

    POWER_MANAGEMENT = 0x01
    MSI = 0x05
    VENDOR_SPECIFIC = 0x09
    PCI_EXPRESS = 0x10
    MSIX = 0x11


class ExtendedCapabilityId(enum.IntEnum):
    """IDs of the PCI Express extended capabilities that start at 0x100."""

    ADVANCED_ERROR_REPORTING = 0x0001


class PortType(enum.IntEnum):
    """Device/port type, bits 7:4 of the PCI Express capabilities register."""

    ENDPOINT = 0x0
    LEGACY_ENDPOINT = 0x1
    ROOT_PORT = 0x4
    UPSTREAM_PORT = 0x5
    DOWNSTREAM_PORT = 0x6
    PCIE_TO_PCI_BRIDGE = 0x7
    PCI_TO_PCIE_BRIDGE = 0x8
    ROOT_COMPLEX_INTEGRATED_ENDPOINT = 0x9
    """An endpoint on the root bus: no link of its own."""
    ROOT_COMPLEX_EVENT_COLLECTOR = 0xA

    @property
    def has_link(self) -> bool:
        return self not in (
            PortType.ROOT_COMPLEX_INTEGRATED_ENDPOINT,
            PortType.ROOT_COMPLEX_EVENT_COLLECTOR,
        )

    @property
    def is_root_port(self) -> bool:
        return self is PortType.ROOT_PORT


# -- Power management ------------------------------------------------------------------
PM_LENGTH = 8
PM_CAPABILITIES = 2
PM_CONTROL_STATUS = 4
PM_VERSION_1_2 = 0x3
PM_POWER_STATE_MASK = 0x3
"""PMCSR bits 1:0: D0-D3hot, the one thing a guest changes here."""
PM_NO_SOFT_RESET = 0x8
"""Going D3hot to D0 keeps the registers, so the guest need not restore them."""


def add_power_management(config: ConfigSpace) -> int:
    offset = config.add_capability(CapabilityId.POWER_MANAGEMENT, PM_LENGTH)
    config.define(offset + PM_CAPABILITIES, 2, PM_VERSION_1_2)
    config.define(offset + PM_CONTROL_STATUS, 2, PM_NO_SOFT_RESET, writable=PM_POWER_STATE_MASK)
    return offset


# -- PCI Express -----------------------------------------------------------------------
PCIE_LENGTH = 0x3C
"""Version 2 structure, through Slot Status 2."""
PCIE_CAPABILITIES = 0x02
PCIE_DEVICE_CAPABILITIES = 0x04
PCIE_DEVICE_CONTROL = 0x08
PCIE_DEVICE_STATUS = 0x0A
PCIE_LINK_CAPABILITIES = 0x0C
PCIE_LINK_CONTROL = 0x10
PCIE_LINK_STATUS = 0x12
PCIE_SLOT_CAPABILITIES = 0x14
PCIE_SLOT_CONTROL = 0x18
PCIE_SLOT_STATUS = 0x1A
PCIE_ROOT_CONTROL = 0x1C
PCIE_ROOT_STATUS = 0x20
PCIE_DEVICE_CONTROL_2 = 0x28
PCIE_LINK_CAPABILITIES_2 = 0x2C
PCIE_LINK_CONTROL_2 = 0x30

PCIE_CAP_VERSION_2 = 0x2
PCIE_CAP_SLOT_IMPLEMENTED = 0x0100
PCIE_DEVCAP_ROLE_BASED_ERRORS = 0x8000
PCIE_DEVCTL_DEFAULT = 0x2810
"""Relaxed ordering, no snoop, 512-byte max read request: what firmware leaves."""
PCIE_DEVCTL_WRITABLE = 0x7FFF
PCIE_DEVSTA_W1C = 0x000F
"""Correctable, non-fatal, fatal, unsupported request detected."""
PCIE_DEVSTA_NON_FATAL = 0x0002
PCIE_DEVSTA_UNSUPPORTED_REQUEST = 0x0008
PCIE_LINK_2_5GT_X1 = 0x0011
"""Speed 1 (2.5 GT/s) in bits 3:0, width x1 in bits 9:4 (link capabilities and status)."""
PCIE_LINKCAP_DLL_ACTIVE_REPORTING = 0x0010_0000
PCIE_LINKCAP_PORT_NUMBER_SHIFT = 24
PCIE_LNKCTL_PORT_WRITABLE = 0x00DB
"""ASPM, read completion boundary, link disable, common clock, extended synch."""
PCIE_LNKCTL_ENDPOINT_WRITABLE = 0x00CB
"""As for ports, without link disable (reserved in endpoints)."""
PCIE_SLOTCAP_HOTPLUG = 0x007B
"""Attention button, power controller, both indicators, hot-plug surprise and capable."""
PCIE_SLOTCAP_SLOT_NUMBER_SHIFT = 19
PCIE_SLOTCTL_DEFAULT = 0x01C0
"""Power indicator on, attention indicator off."""
PCIE_SLOTCTL_WRITABLE = 0x17FF
PCIE_SLOTSTA_W1C = 0x011F
"""Button pressed, power fault, MRL changed, presence changed, command completed, DLL."""
PCIE_SLOTSTA_PRESENCE_CHANGED = 0x0008
PCIE_SLOTSTA_PRESENCE_DETECT = 0x0040
PCIE_SLOTSTA_DLL_CHANGED = 0x0100
PCIE_LNKSTA_DLL_ACTIVE = 0x2000
PCIE_ROOTCTL_WRITABLE = 0x001F
PCIE_ROOTSTA_PME_STATUS = 0x0001_0000
PCIE_DEVCTL2_WRITABLE = 0x001F
"""Completion timeout value and disable."""
PCIE_LINKCAP2_2_5GT = 0x0002
PCIE_LNKCTL2_WRITABLE = 0x000F


def add_pci_express(config: ConfigSpace, port_type: PortType, *, slot: int | None = None) -> int:
    """PCI Express capability; ``slot`` makes a root/downstream port a hot-plug slot."""
    offset = config.add_capability(CapabilityId.PCI_EXPRESS, PCIE_LENGTH)
    capabilities = PCIE_CAP_VERSION_2 | port_type << 4
    if slot is not None:
        capabilities |= PCIE_CAP_SLOT_IMPLEMENTED
    config.define(offset + PCIE_CAPABILITIES, 2, capabilities)
    config.define(offset + PCIE_DEVICE_CAPABILITIES, 4, PCIE_DEVCAP_ROLE_BASED_ERRORS)
    config.define(
        offset + PCIE_DEVICE_CONTROL, 2, PCIE_DEVCTL_DEFAULT, writable=PCIE_DEVCTL_WRITABLE
    )
    config.define(offset + PCIE_DEVICE_STATUS, 2, 0, w1c=PCIE_DEVSTA_W1C)
    config.define(offset + PCIE_DEVICE_CONTROL_2, 2, 0, writable=PCIE_DEVCTL2_WRITABLE)
    if port_type.has_link:
        link_capabilities = PCIE_LINK_2_5GT_X1
        link_control = PCIE_LNKCTL_ENDPOINT_WRITABLE
        if port_type.is_root_port:
            link_capabilities |= PCIE_LINKCAP_DLL_ACTIVE_REPORTING
            link_control = PCIE_LNKCTL_PORT_WRITABLE
        config.define(offset + PCIE_LINK_CAPABILITIES, 4, link_capabilities)
        config.define(offset + PCIE_LINK_CONTROL, 2, 0, writable=link_control)
        config.define(offset + PCIE_LINK_STATUS, 2, PCIE_LINK_2_5GT_X1)
        config.define(offset + PCIE_LINK_CAPABILITIES_2, 4, PCIE_LINKCAP2_2_5GT)
        config.define(offset + PCIE_LINK_CONTROL_2, 2, 1, writable=PCIE_LNKCTL2_WRITABLE)
    if slot is not None:
        if not 0 <= slot < 1 << 13:
            raise ConfigSpaceError(f"physical slot number {slot} does not fit in 13 bits")
        slot_capabilities = PCIE_SLOTCAP_HOTPLUG | slot << PCIE_SLOTCAP_SLOT_NUMBER_SHIFT
        config.define(offset + PCIE_SLOT_CAPABILITIES, 4, slot_capabilities)
        config.define(
            offset + PCIE_SLOT_CONTROL, 2, PCIE_SLOTCTL_DEFAULT, writable=PCIE_SLOTCTL_WRITABLE
        )
        config.define(offset + PCIE_SLOT_STATUS, 2, 0, w1c=PCIE_SLOTSTA_W1C)
    if port_type.is_root_port:
        config.define(offset + PCIE_ROOT_CONTROL, 2, 0, writable=PCIE_ROOTCTL_WRITABLE)
        config.define(offset + PCIE_ROOT_STATUS, 4, 0, w1c=PCIE_ROOTSTA_PME_STATUS)
    return offset


def pcie_port_type(config: ConfigSpace) -> PortType | None:
    """The device/port type from the PCI Express capability, or None if there is none."""
    offset = config.find_capability(CapabilityId.PCI_EXPRESS)
    if offset is None:
        return None
    return PortType(config.read(offset + PCIE_CAPABILITIES, 2) >> 4 & 0xF)


def has_slot(config: ConfigSpace) -> bool:
    """Whether the function is a PCI Express port with a slot (where cards are plugged)."""
    offset = config.find_capability(CapabilityId.PCI_EXPRESS)
    return offset is not None and bool(
        config.read(offset + PCIE_CAPABILITIES, 2) & PCIE_CAP_SLOT_IMPLEMENTED
    )


def set_slot_occupied(config: ConfigSpace, occupied: bool, *, announce: bool) -> bool:
    """Show whether a card sits in this port's slot (presence detect, link active).

    ``announce`` also raises the "changed" bits a hot-plug driver waits for; leave it off
    for devices present from power-on. Returns whether any register changed.
    """
    offset = config.find_capability(CapabilityId.PCI_EXPRESS)
    if offset is None or not has_slot(config):
        raise ConfigSpaceError("the function has no PCI Express slot")
    update = config.set_bits if occupied else config.clear_bits
    changed = update(offset + PCIE_SLOT_STATUS, 2, PCIE_SLOTSTA_PRESENCE_DETECT)
    changed |= update(offset + PCIE_LINK_STATUS, 2, PCIE_LNKSTA_DLL_ACTIVE)
    if changed and announce:
        events = PCIE_SLOTSTA_PRESENCE_CHANGED | PCIE_SLOTSTA_DLL_CHANGED
        config.set_bits(offset + PCIE_SLOT_STATUS, 2, events)
    return changed


# -- MSI and MSI-X ---------------------------------------------------------------------
MSIX_LENGTH = 12
MSIX_CONTROL = 2
MSIX_TABLE = 4
MSIX_PBA = 8
MSIX_MAX_VECTORS = 2048
MSIX_CONTROL_WRITABLE = 0xC000
"""MSI-X enable (bit 15) and function mask (bit 14); the table size is read-only."""
MSIX_ENTRY_SIZE = 16


def add_msix(
    config: ConfigSpace,
    vectors: int,
    *,
    table_bar: int,
    table_offset: int,
    pba_bar: int,
    pba_offset: int,
) -> int:
    """MSI-X with its table and pending-bit array inside memory BARs the model defined."""
    if not 1 <= vectors <= MSIX_MAX_VECTORS:
        raise ConfigSpaceError(f"MSI-X vectors {vectors} not in 1-{MSIX_MAX_VECTORS}")
    pba_size = (vectors + 63) // 64 * 8
    for what, bar_index, start, size in (
        ("table", table_bar, table_offset, vectors * MSIX_ENTRY_SIZE),
        ("PBA", pba_bar, pba_offset, pba_size),
    ):
        bar = next((b for b in config.bars if b.index == bar_index), None)
        if bar is None or bar.kind is BarKind.IO:
            raise ConfigSpaceError(f"MSI-X {what} needs memory BAR {bar_index}")
        if start % 8 or start + size > bar.size:
            raise ConfigSpaceError(
                f"MSI-X {what} of {size} bytes at {start:#x} does not fit BAR {bar_index}"
            )
    table_end = table_offset + vectors * MSIX_ENTRY_SIZE
    if table_bar == pba_bar and table_offset < pba_offset + pba_size and pba_offset < table_end:
        raise ConfigSpaceError("MSI-X table and PBA overlap")
    offset = config.add_capability(CapabilityId.MSIX, MSIX_LENGTH)
    config.define(offset + MSIX_CONTROL, 2, vectors - 1, writable=MSIX_CONTROL_WRITABLE)
    config.define(offset + MSIX_TABLE, 4, table_offset | table_bar)
    config.define(offset + MSIX_PBA, 4, pba_offset | pba_bar)
    return offset


MSI_64BIT_LENGTH = 14
MSI_CONTROL = 2
MSI_ADDRESS_LOW = 4
MSI_ADDRESS_HIGH = 8
MSI_DATA_64BIT = 12
MSI_CONTROL_64BIT = 0x0080
MSI_CONTROL_WRITABLE = 0x0071
"""MSI enable (bit 0) and multiple message enable (bits 6:4)."""


def add_msi(config: ConfigSpace, vectors: int = 1) -> int:
    """64-bit MSI without per-vector masking; ``vectors`` a power of two up to 32."""
    if vectors not in (1, 2, 4, 8, 16, 32):
        raise ConfigSpaceError(f"MSI vectors {vectors} is not a power of two up to 32")
    offset = config.add_capability(CapabilityId.MSI, MSI_64BIT_LENGTH)
    multiple_message_capable = (vectors.bit_length() - 1) << 1
    config.define(
        offset + MSI_CONTROL,
        2,
        MSI_CONTROL_64BIT | multiple_message_capable,
        writable=MSI_CONTROL_WRITABLE,
    )
    config.define(offset + MSI_ADDRESS_LOW, 4, 0, writable=0xFFFFFFFC)
    config.define(offset + MSI_ADDRESS_HIGH, 4, 0, writable=0xFFFFFFFF)
    config.define(offset + MSI_DATA_64BIT, 2, 0, writable=0xFFFF)
    return offset


def add_vendor_specific(config: ConfigSpace, body: bytes) -> int:
    """A vendor-specific capability: ID, next, length byte, then ``body`` (read-only)."""
    offset = config.add_capability(CapabilityId.VENDOR_SPECIFIC, 3 + len(body))
    config.define(offset + 2, 1, 3 + len(body))
    if body:
        config.define(offset + 3, len(body), int.from_bytes(body, "little"))
    return offset


# -- Advanced error reporting ----------------------------------------------------------
AER_VERSION = 2
AER_LENGTH = 0x48
"""Through the TLP prefix log, as QEMU lays it out."""
AER_UNCORRECTABLE_STATUS = 0x04
AER_UNCORRECTABLE_MASK = 0x08
AER_UNCORRECTABLE_SEVERITY = 0x0C
AER_CORRECTABLE_STATUS = 0x10
AER_CORRECTABLE_MASK = 0x14
AER_ROOT_COMMAND = 0x2C
AER_ROOT_STATUS = 0x30

AER_UNCORRECTABLE_BITS = 0x003F_F030
"""Data link protocol, surprise down, poisoned TLP ... ACS violation (bits 4-5, 12-21)."""
AER_UNCORRECTABLE_SEVERITY_DEFAULT = 0x0006_2030
"""The specification's reset severities: DLP, surprise down, flow control, overflow, MTLP."""
AER_UNSUPPORTED_REQUEST = 0x0010_0000
AER_CORRECTABLE_BITS = 0xF1C1
AER_CORRECTABLE_MASK_DEFAULT = 0x6000
"""Advisory non-fatal and corrected internal errors start masked."""
AER_ROOT_COMMAND_WRITABLE = 0x7
AER_ROOT_STATUS_W1C = 0x7F


def add_aer(config: ConfigSpace, *, root_port: bool = False) -> int:
    """Advanced error reporting; root ports also get the root error command/status."""
    offset = config.add_extended_capability(
        ExtendedCapabilityId.ADVANCED_ERROR_REPORTING, AER_VERSION, AER_LENGTH
    )
    bits = AER_UNCORRECTABLE_BITS
    config.define(offset + AER_UNCORRECTABLE_STATUS, 4, 0, w1c=bits)
    config.define(offset + AER_UNCORRECTABLE_MASK, 4, 0, writable=bits)
    severity = AER_UNCORRECTABLE_SEVERITY_DEFAULT
    config.define(offset + AER_UNCORRECTABLE_SEVERITY, 4, severity, writable=bits)
    config.define(offset + AER_CORRECTABLE_STATUS, 4, 0, w1c=AER_CORRECTABLE_BITS)
    mask = AER_CORRECTABLE_MASK_DEFAULT
    config.define(offset + AER_CORRECTABLE_MASK, 4, mask, writable=AER_CORRECTABLE_BITS)
    if root_port:
        config.define(offset + AER_ROOT_COMMAND, 4, 0, writable=AER_ROOT_COMMAND_WRITABLE)
        config.define(offset + AER_ROOT_STATUS, 4, 0, w1c=AER_ROOT_STATUS_W1C)
    return offset


def record_unsupported_request(config: ConfigSpace) -> bool:
    """Log an unsupported request (e.g. a write nobody decodes) the way hardware would.

    Sets "unsupported request detected" and "non-fatal error detected" in the PCI Express
    device status and, if present, the AER uncorrectable status. The guest clears them by
    writing ones. Returns whether anything changed.
    """
    changed = False
    express = config.find_capability(CapabilityId.PCI_EXPRESS)
    if express is not None:
        status = PCIE_DEVSTA_UNSUPPORTED_REQUEST | PCIE_DEVSTA_NON_FATAL
        changed |= config.set_bits(express + PCIE_DEVICE_STATUS, 2, status)
    aer = config.find_extended_capability(ExtendedCapabilityId.ADVANCED_ERROR_REPORTING)
    if aer is not None:
        changed |= config.set_bits(aer + AER_UNCORRECTABLE_STATUS, 4, AER_UNSUPPORTED_REQUEST)
    return changed
