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
    BRIDGE_SUBSYSTEM_VENDOR_ID = 0x0D
    MSIX = 0x11
    SATA = 0x12


class ExtendedCapabilityId(enum.IntEnum):
    """IDs of the PCI Express extended capabilities that start at 0x100."""

    ADVANCED_ERROR_REPORTING = 0x0001
    ACCESS_CONTROL_SERVICES = 0x000D


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


def add_power_management(
    config: ConfigSpace, offset: int | None = None, *, no_soft_reset: bool = False
) -> int:
    """As QEMU's ``pci_pm_init``: version 1.2, only the power state writable."""
    offset = config.add_capability(CapabilityId.POWER_MANAGEMENT, PM_LENGTH, offset)
    config.define(offset + PM_CAPABILITIES, 2, PM_VERSION_1_2)
    control = PM_NO_SOFT_RESET if no_soft_reset else 0
    config.define(offset + PM_CONTROL_STATUS, 2, control, writable=PM_POWER_STATE_MASK)
    return offset


# -- Bridge subsystem vendor ID ----------------------------------------------------------
SSVID_LENGTH = 8


def add_bridge_subsystem(config: ConfigSpace, vendor: int, device: int, offset: int) -> int:
    """Subsystem IDs of a type 1 header, which has no room for them (QEMU's
    ``pci_bridge_ssvid_init``)."""
    offset = config.add_capability(CapabilityId.BRIDGE_SUBSYSTEM_VENDOR_ID, SSVID_LENGTH, offset)
    config.define(offset + 4, 4, vendor | device << 16)
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
PCIE_DEVICE_CAPABILITIES_2 = 0x24
PCIE_DEVICE_CONTROL_2 = 0x28
PCIE_LINK_CAPABILITIES_2 = 0x2C
PCIE_LINK_CONTROL_2 = 0x30

PCIE_CAP_VERSION_2 = 0x2
PCIE_CAP_SLOT_IMPLEMENTED = 0x0100
PCIE_DEVCAP_ROLE_BASED_ERRORS = 0x8000
PCIE_DEVCAP_FLR = 0x1000_0000
PCIE_DEVCTL_ERROR_REPORTING = 0x000F
"""Correctable, non-fatal, fatal, unsupported request reporting enables (root ports)."""
PCIE_DEVSTA_W1C = 0x000F
"""Correctable, non-fatal, fatal, unsupported request detected."""
PCIE_DEVSTA_NON_FATAL = 0x0002
PCIE_DEVSTA_UNSUPPORTED_REQUEST = 0x0008
PCIE_LINK_2_5GT_X1 = 0x0011
"""Speed 1 (2.5 GT/s) in bits 3:0, width x1 in bits 9:4 (link capabilities and status)."""
PCIE_LINKCAP_ENDPOINT = 0x0000_0411
"""2.5 GT/s x1, L0s: what QEMU's endpoints advertise."""
PCIE_LINKCAP_ROOT_PORT = 0x0030_0604
"""QEMU's pcie-root-port (x-speed=16, x-width=32): 16 GT/s x32, link-active and bandwidth
notification reporting."""
PCIE_LNKSTA_ROOT_PORT_EMPTY = 0x0204
"""An empty port's link status shows its own maximum: 16 GT/s x32."""
PCIE_LNKCTL_COMMON_CLOCK_EXT_SYNCH = 0x00C0
"""What ``pcie_cap_lnkctl_init`` makes writable (virtio devices call it)."""
PCIE_LINKCAP2_ROOT_PORT = 0x1E
"""Supported speeds 2.5 to 16 GT/s."""
PCIE_LNKCTL2_ROOT_PORT = 0x0004
"""Target link speed 16 GT/s (read-only in QEMU)."""
PCIE_DEVCAP2_ENDPOINT = 0x0030_0000
"""Extended fmt field and end-end TLP prefix supported."""
PCIE_DEVCAP2_ARI = 0x0000_0020
PCIE_DEVCTL2_PREFIX_BLOCKING = 0x8000
PCIE_DEVCTL2_ARI = 0x0020
PCIE_SLOTCAP_ROOT_PORT = 0x0002_007B
"""Attention button, power controller, both indicators, hot-plug surprise and capable,
electromechanical interlock (QEMU's ``pcie_cap_slot_init``)."""
PCIE_SLOTCAP_SLOT_NUMBER_SHIFT = 19
PCIE_SLOTCTL_OCCUPIED = 0x01C0
"""Power indicator on, attention indicator off, power on: QEMU's reset of a full slot."""
PCIE_SLOTCTL_EMPTY = 0x07C0
"""Power indicator off, attention indicator off, power controller off: an empty slot."""
PCIE_SLOTCTL_WRITABLE = 0x07F9
PCIE_SLOTSTA_W1C = 0x0119
"""Attention button, presence changed, command completed, link state changed."""
PCIE_SLOTSTA_PRESENCE_CHANGED = 0x0008
PCIE_SLOTSTA_PRESENCE_DETECT = 0x0040
PCIE_SLOTSTA_DLL_CHANGED = 0x0100
PCIE_LNKSTA_DLL_ACTIVE = 0x2000
PCIE_ROOTCTL_WRITABLE = 0x0007
PCIE_ROOTSTA_PME_STATUS = 0x0001_0000


def _pcie_header(config: ConfigSpace, port_type: PortType, offset: int, devcap: int) -> int:
    offset = config.add_capability(CapabilityId.PCI_EXPRESS, PCIE_LENGTH, offset)
    capabilities = PCIE_CAP_VERSION_2 | port_type << 4
    if port_type.is_root_port:
        capabilities |= PCIE_CAP_SLOT_IMPLEMENTED
    config.define(offset + PCIE_CAPABILITIES, 2, capabilities)
    config.define(offset + PCIE_DEVICE_CAPABILITIES, 4, devcap)
    return offset


def add_pcie_endpoint(
    config: ConfigSpace,
    offset: int,
    *,
    integrated: bool,
    link_control: bool = False,
) -> int:
    """An endpoint's PCI Express capability as QEMU's ``pcie_endpoint_cap_init`` leaves it.

    ``integrated``: on the root bus, a root-complex integrated endpoint (QEMU still fills in
    the link registers). ``link_control``: common clock and extended synch writable, as
    virtio's ``pcie_cap_lnkctl_init``. Function-level reset is advertised; writing its bit
    reads back 0.
    """
    port_type = PortType.ROOT_COMPLEX_INTEGRATED_ENDPOINT if integrated else PortType.ENDPOINT
    devcap = PCIE_DEVCAP_ROLE_BASED_ERRORS | PCIE_DEVCAP_FLR
    offset = _pcie_header(config, port_type, offset, devcap)
    config.define(offset + PCIE_DEVICE_STATUS, 2, 0, w1c=PCIE_DEVSTA_W1C)
    config.define(offset + PCIE_LINK_CAPABILITIES, 4, PCIE_LINKCAP_ENDPOINT)
    writable = PCIE_LNKCTL_COMMON_CLOCK_EXT_SYNCH if link_control else 0
    config.define(offset + PCIE_LINK_CONTROL, 2, 0, writable=writable)
    config.define(offset + PCIE_LINK_STATUS, 2, PCIE_LINK_2_5GT_X1)
    config.define(offset + PCIE_DEVICE_CAPABILITIES_2, 4, PCIE_DEVCAP2_ENDPOINT)
    config.define(offset + PCIE_DEVICE_CONTROL_2, 2, 0, writable=PCIE_DEVCTL2_PREFIX_BLOCKING)
    return offset


def add_pcie_root_port(config: ConfigSpace, offset: int, *, slot: int) -> int:
    """QEMU's ``pcie-root-port`` PCI Express capability with hot-plug slot ``slot``, empty.

    ``set_slot_occupied`` shows a card in it.
    """
    if not 0 <= slot < 1 << 13:
        raise ConfigSpaceError(f"physical slot number {slot} does not fit in 13 bits")
    offset = _pcie_header(config, PortType.ROOT_PORT, offset, PCIE_DEVCAP_ROLE_BASED_ERRORS)
    config.define(offset + PCIE_DEVICE_CONTROL, 2, 0, writable=PCIE_DEVCTL_ERROR_REPORTING)
    config.define(offset + PCIE_DEVICE_STATUS, 2, 0, w1c=PCIE_DEVSTA_W1C)
    config.define(offset + PCIE_LINK_CAPABILITIES, 4, PCIE_LINKCAP_ROOT_PORT)
    config.define(offset + PCIE_LINK_STATUS, 2, PCIE_LNKSTA_ROOT_PORT_EMPTY)
    slot_capabilities = PCIE_SLOTCAP_ROOT_PORT | slot << PCIE_SLOTCAP_SLOT_NUMBER_SHIFT
    config.define(offset + PCIE_SLOT_CAPABILITIES, 4, slot_capabilities)
    config.define(offset + PCIE_SLOT_CONTROL, 2, PCIE_SLOTCTL_EMPTY, writable=PCIE_SLOTCTL_WRITABLE)
    config.define(offset + PCIE_SLOT_STATUS, 2, 0, w1c=PCIE_SLOTSTA_W1C)
    config.define(offset + PCIE_ROOT_CONTROL, 2, 0, writable=PCIE_ROOTCTL_WRITABLE)
    config.define(offset + PCIE_ROOT_STATUS, 4, 0, w1c=PCIE_ROOTSTA_PME_STATUS)
    capabilities_2 = PCIE_DEVCAP2_ENDPOINT | PCIE_DEVCAP2_ARI
    config.define(offset + PCIE_DEVICE_CAPABILITIES_2, 4, capabilities_2)
    writable = PCIE_DEVCTL2_PREFIX_BLOCKING | PCIE_DEVCTL2_ARI
    config.define(offset + PCIE_DEVICE_CONTROL_2, 2, 0, writable=writable)
    config.define(offset + PCIE_LINK_CAPABILITIES_2, 4, PCIE_LINKCAP2_ROOT_PORT)
    config.define(offset + PCIE_LINK_CONTROL_2, 2, PCIE_LNKCTL2_ROOT_PORT)
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
    """Show whether a card sits in this port's slot.

    Cold plug (``announce`` off) leaves what QEMU shows after reset: slot power on and
    the card's link speed when occupied, power off and the port's own speed when empty,
    no presence bits (QEMU q35 hot-plugs through ACPI, so its slot status stays 0). Hot
    plug also sets presence detect and link active, and raises the "changed" bits a
    native hot-plug driver waits for. Returns whether any register changed.
    """
    offset = config.find_capability(CapabilityId.PCI_EXPRESS)
    if offset is None or not has_slot(config):
        raise ConfigSpaceError("the function has no PCI Express slot")
    control = PCIE_SLOTCTL_OCCUPIED if occupied else PCIE_SLOTCTL_EMPTY
    link = PCIE_LINK_2_5GT_X1 if occupied else PCIE_LNKSTA_ROOT_PORT_EMPTY
    changed = _force(config, offset + PCIE_SLOT_CONTROL, control)
    changed |= _force(config, offset + PCIE_LINK_STATUS, link)
    if not announce:
        return changed
    update = config.set_bits if occupied else config.clear_bits
    presence = update(offset + PCIE_SLOT_STATUS, 2, PCIE_SLOTSTA_PRESENCE_DETECT)
    presence |= update(offset + PCIE_LINK_STATUS, 2, PCIE_LNKSTA_DLL_ACTIVE)
    if changed or presence:
        events = PCIE_SLOTSTA_PRESENCE_CHANGED | PCIE_SLOTSTA_DLL_CHANGED
        config.set_bits(offset + PCIE_SLOT_STATUS, 2, events)
    return changed or presence


def _force(config: ConfigSpace, offset: int, value: int) -> bool:
    """Hardware sets a 16-bit register to ``value`` whatever its masks. Changed?"""
    changed = config.clear_bits(offset, 2, ~value & 0xFFFF)
    return config.set_bits(offset, 2, value) or changed


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
    offset: int | None = None,
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
    offset = config.add_capability(CapabilityId.MSIX, MSIX_LENGTH, offset)
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
MSI_ENABLE = 0x0001


def add_msi(config: ConfigSpace, vectors: int = 1, offset: int | None = None) -> int:
    """64-bit MSI without per-vector masking; ``vectors`` a power of two up to 32.

    With one vector only the enable bit is writable: QEMU clamps multiple message enable
    to what is capable, which for one vector is a read-only 0.
    """
    if vectors not in (1, 2, 4, 8, 16, 32):
        raise ConfigSpaceError(f"MSI vectors {vectors} is not a power of two up to 32")
    offset = config.add_capability(CapabilityId.MSI, MSI_64BIT_LENGTH, offset)
    multiple_message_capable = (vectors.bit_length() - 1) << 1
    config.define(
        offset + MSI_CONTROL,
        2,
        MSI_CONTROL_64BIT | multiple_message_capable,
        writable=MSI_ENABLE if vectors == 1 else MSI_CONTROL_WRITABLE,
    )
    config.define(offset + MSI_ADDRESS_LOW, 4, 0, writable=0xFFFFFFFC)
    config.define(offset + MSI_ADDRESS_HIGH, 4, 0, writable=0xFFFFFFFF)
    config.define(offset + MSI_DATA_64BIT, 2, 0, writable=0xFFFF)
    return offset


def add_vendor_specific(config: ConfigSpace, body: bytes, offset: int | None = None) -> int:
    """A vendor-specific capability: ID, next, length byte, then ``body`` (read-only)."""
    offset = config.add_capability(CapabilityId.VENDOR_SPECIFIC, 3 + len(body), offset)
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

AER_CAPABILITIES_CONTROL = 0x18

AER_UNCORRECTABLE_BITS = 0x03FF_F030
"""QEMU's PCI_ERR_UNC_SUPPORTED: data link protocol ... TLP prefix blocked (bits 4-5, 12-25)."""
AER_UNCORRECTABLE_SEVERITY_DEFAULT = 0x0046_2030
"""QEMU's reset severities: DLP, surprise down, flow control, overflow, MTLP, ACS violation."""
AER_UNSUPPORTED_REQUEST = 0x0010_0000
AER_CORRECTABLE_BITS = 0xF1C1
AER_CORRECTABLE_MASK_DEFAULT = 0xE000
"""Advisory non-fatal, corrected internal and header log overflow start masked."""
AER_ECRC_CAPABLE = 0x02A0
"""ECRC generation and check capable, multiple header recording capable."""
AER_ECRC_WRITABLE = 0x0540
"""Their enables."""
AER_ROOT_COMMAND_WRITABLE = 0x7
AER_ROOT_STATUS_W1C = 0x7F


def add_aer(config: ConfigSpace, *, root_port: bool = False) -> int:
    """Advanced error reporting as QEMU's ``pcie_aer_init`` sets it (whose uncorrectable
    mask is read-only); root ports also get the root error command/status."""
    offset = config.add_extended_capability(
        ExtendedCapabilityId.ADVANCED_ERROR_REPORTING, AER_VERSION, AER_LENGTH
    )
    bits = AER_UNCORRECTABLE_BITS
    config.define(offset + AER_UNCORRECTABLE_STATUS, 4, 0, w1c=bits)
    severity = AER_UNCORRECTABLE_SEVERITY_DEFAULT
    config.define(offset + AER_UNCORRECTABLE_SEVERITY, 4, severity, writable=bits)
    config.define(offset + AER_CORRECTABLE_STATUS, 4, 0, w1c=AER_CORRECTABLE_BITS)
    mask = AER_CORRECTABLE_MASK_DEFAULT
    config.define(offset + AER_CORRECTABLE_MASK, 4, mask, writable=AER_CORRECTABLE_BITS)
    config.define(
        offset + AER_CAPABILITIES_CONTROL, 4, AER_ECRC_CAPABLE, writable=AER_ECRC_WRITABLE
    )
    if root_port:
        config.define(offset + AER_ROOT_COMMAND, 4, 0, writable=AER_ROOT_COMMAND_WRITABLE)
        config.define(offset + AER_ROOT_STATUS, 4, 0, w1c=AER_ROOT_STATUS_W1C)
    return offset


ACS_VERSION = 1
ACS_LENGTH = 8
ACS_CAPABILITIES = 0x005F
"""Source validation, translation blocking, request and completion redirect, upstream
forwarding, direct translated P2P (QEMU's ``pcie_acs_init`` for a root port)."""


def add_acs(config: ConfigSpace) -> int:
    """Access control services; the control bits match the capabilities and are writable."""
    offset = config.add_extended_capability(
        ExtendedCapabilityId.ACCESS_CONTROL_SERVICES, ACS_VERSION, ACS_LENGTH
    )
    config.define(offset + 4, 2, ACS_CAPABILITIES)
    config.define(offset + 6, 2, 0, writable=ACS_CAPABILITIES)
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
