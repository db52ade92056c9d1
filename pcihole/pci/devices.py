"""The device catalogue: models with the identities QEMU's q35 machine gives them.

A model turns an address and a few ``key=value`` parameters into a ``Function``: the address,
its ``ConfigSpace`` and the model's name. Models only fill configuration space; nothing sits
behind their BARs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import BUSES, Bdf
from pcihole.pci.config import (
    SECONDARY_BUS,
    SUBORDINATE_BUS,
    BarKind,
    ConfigSpace,
    HeaderType,
)
from pcihole.pci.errors import DeviceError

INTEL = 0x8086
REDHAT_VIRTIO = 0x1AF4
REDHAT_QEMU = 0x1B36
QEMU_SUBSYSTEM_VENDOR = REDHAT_VIRTIO
QEMU_SUBSYSTEM = 0x1100
"""QEMU gives most of its devices subsystem 1af4:1100."""
INTA = 1
"""Interrupt pin register value for INTA#."""
PCIEXBAR = 0x60
"""q35 host bridge: where the ECAM (MMCONFIG) window sits, 64 bits; decoded by ``pcihole.boot``."""
PCIEXBAR_DEFAULT = 0xB0000000
"""QEMU's reset value: the base firmware is expected to use, the window still disabled."""
PCIEXBAR_WRITABLE = 0xF_FC00_0007
"""Base address bits 35:26, length bits 2:1, enable bit 0."""


@dataclass(frozen=True)
class Function:
    """One present PCI function: where it is, its registers, and which model made it."""

    bdf: Bdf
    config: ConfigSpace
    model: str
    spec: str
    """The ``--device`` text it came from (or an equivalent one), for error messages."""
    description: str
    """lspci-style name, e.g. ``Host bridge: Intel Corporation ...``."""
    bridge_buses: range | None = None
    """Buses a bridge leads to (secondary..subordinate) as built; None for an endpoint.

    Fixed at build time: it names the segment behind the bridge (the functions built on
    bus ``bridge_buses[0]``); which bus numbers reach them is the guest's, see ``routing``.
    """


ConfigBuilder = Callable[[Bdf, Mapping[str, int]], ConfigSpace]


@dataclass(frozen=True)
class DeviceModel:
    """A kind of device that can be placed at an address."""

    name: str
    description: str
    is_bridge: bool
    make_config: ConfigBuilder
    keys: frozenset[str] = frozenset()
    """Parameters the model accepts, each an integer."""
    required_keys: frozenset[str] = frozenset()

    def build(self, bdf: Bdf, params: Mapping[str, int] | None = None, spec: str = "") -> Function:
        """Make the function at ``bdf``; raises DeviceError for parameters it cannot take."""
        params = dict(params or {})
        unknown = sorted(set(params) - self.keys)
        if unknown:
            accepted = ", ".join(sorted(self.keys)) or "none"
            raise DeviceError(
                f"{self.name} does not take {', '.join(unknown)} (it takes: {accepted})"
            )
        missing = sorted(self.required_keys - set(params))
        if missing:
            raise DeviceError(f"{self.name} needs {', '.join(f'{key}=' for key in missing)}")
        if not spec:
            spec = f"{bdf}={self.name}" + "".join(f",{k}={v}" for k, v in params.items())
        config = self.make_config(bdf, params)
        bridge_buses = None
        if config.is_bridge:
            secondary = config.read(SECONDARY_BUS, 1)
            bridge_buses = range(secondary, config.read(SUBORDINATE_BUS, 1) + 1)
        return Function(bdf, config, self.name, spec, self.description, bridge_buses)


# -- builders ----------------------------------------------------------------------------


def _express_endpoint_type(bdf: Bdf) -> caps.PortType:
    # An endpoint on the root bus has no link: it is integrated into the root complex.
    if bdf.bus == 0:
        return caps.PortType.ROOT_COMPLEX_INTEGRATED_ENDPOINT
    return caps.PortType.ENDPOINT


def _host_bridge(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = ConfigSpace(
        vendor_id=INTEL,
        device_id=0x29C0,
        class_code=0x060000,
        subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
        subsystem_id=QEMU_SUBSYSTEM,
    )
    config.define(PCIEXBAR, 8, PCIEXBAR_DEFAULT, writable=PCIEXBAR_WRITABLE)
    return config


def _root_port(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    secondary = params["bus"]
    subordinate = params.get("subordinate", secondary)
    for key, bus in (("bus", secondary), ("subordinate", subordinate)):
        if not 0 <= bus < BUSES:
            raise DeviceError(f"{key}={bus} is not a bus number (0-{BUSES - 1})")
    if subordinate < secondary:
        raise DeviceError(f"subordinate={subordinate} is below bus={secondary}")
    config = ConfigSpace(
        vendor_id=REDHAT_QEMU,
        device_id=0x000C,
        class_code=0x060400,
        header_type=HeaderType.BRIDGE,
        interrupt_pin=INTA,
    )
    config.set_bus_numbers(bdf.bus, secondary, subordinate)
    config.add_bar(0, 0x1000)  # holds the MSI-X table, as on QEMU's root port
    # Physical slot number = the secondary bus: unique, and easy to read in lspci.
    caps.add_pci_express(config, caps.PortType.ROOT_PORT, slot=secondary)
    caps.add_msix(config, 1, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800)
    caps.add_power_management(config)
    caps.add_aer(config, root_port=True)
    return config


class VirtioCfgType(enum.IntEnum):
    """``cfg_type`` of a virtio PCI capability (virtio 1.x, 4.1.4)."""

    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4


VIRTIO_STRUCTURES_BAR = 4
VIRTIO_STRUCTURE_SIZE = 0x1000
VIRTIO_NOTIFY_MULTIPLIER = 4
VIRTIO_MSIX_BAR = 1


def _virtio(device_id: int, class_code: int, vectors: int) -> ConfigBuilder:
    """A modern (non-transitional) virtio-pci device laid out like QEMU's."""

    def build(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
        config = ConfigSpace(
            vendor_id=REDHAT_VIRTIO,
            device_id=device_id,
            class_code=class_code,
            revision=1,  # virtio 1.0 devices have revision 1 or more
            subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
            subsystem_id=QEMU_SUBSYSTEM,
            interrupt_pin=INTA,
        )
        config.add_bar(VIRTIO_MSIX_BAR, 0x1000)
        structures = 4 * VIRTIO_STRUCTURE_SIZE
        config.add_bar(VIRTIO_STRUCTURES_BAR, structures, BarKind.MEMORY64, prefetchable=True)
        caps.add_pci_express(config, _express_endpoint_type(bdf))
        caps.add_power_management(config)
        caps.add_msix(
            config,
            vectors,
            table_bar=VIRTIO_MSIX_BAR,
            table_offset=0,
            pba_bar=VIRTIO_MSIX_BAR,
            pba_offset=0x800,
        )
        order = (VirtioCfgType.COMMON, VirtioCfgType.ISR, VirtioCfgType.DEVICE)
        for index, cfg_type in enumerate((*order, VirtioCfgType.NOTIFY)):
            body = bytes([cfg_type, VIRTIO_STRUCTURES_BAR, 0, 0, 0])
            body += (index * VIRTIO_STRUCTURE_SIZE).to_bytes(4, "little")
            body += VIRTIO_STRUCTURE_SIZE.to_bytes(4, "little")
            if cfg_type is VirtioCfgType.NOTIFY:
                body += VIRTIO_NOTIFY_MULTIPLIER.to_bytes(4, "little")
            caps.add_vendor_specific(config, body)
        return config

    return build


NVME_MSIX_VECTORS = 65
"""QEMU's default: one admin queue and 64 I/O queues."""


def _nvme(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = ConfigSpace(
        vendor_id=REDHAT_QEMU,
        device_id=0x0010,
        class_code=0x010802,
        revision=2,
        subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
        subsystem_id=QEMU_SUBSYSTEM,
        interrupt_pin=INTA,
    )
    config.add_bar(0, 0x4000, BarKind.MEMORY64)  # registers, doorbells, MSI-X
    caps.add_power_management(config)
    caps.add_msix(
        config, NVME_MSIX_VECTORS, table_bar=0, table_offset=0x2000, pba_bar=0, pba_offset=0x3000
    )
    caps.add_pci_express(config, _express_endpoint_type(bdf))
    caps.add_aer(config)
    return config


ICH9_REVISION = 2


def _ich9_lpc(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    return ConfigSpace(
        vendor_id=INTEL,
        device_id=0x2918,
        class_code=0x060100,
        revision=ICH9_REVISION,
        subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
        subsystem_id=QEMU_SUBSYSTEM,
        multifunction=True,  # function 0 of 00:1f, with SATA and SMBus beside it
    )


def _ich9_ahci(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = ConfigSpace(
        vendor_id=INTEL,
        device_id=0x2922,
        class_code=0x010601,
        revision=ICH9_REVISION,
        subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
        subsystem_id=QEMU_SUBSYSTEM,
        interrupt_pin=INTA,
    )
    config.add_bar(4, 0x20, BarKind.IO)  # index/data pair
    config.add_bar(5, 0x1000)  # ABAR: the AHCI registers
    caps.add_msi(config)
    return config


def _ich9_smbus(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = ConfigSpace(
        vendor_id=INTEL,
        device_id=0x2930,
        class_code=0x0C0500,
        revision=ICH9_REVISION,
        subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
        subsystem_id=QEMU_SUBSYSTEM,
        interrupt_pin=INTA,
    )
    config.add_bar(4, 0x40, BarKind.IO)
    return config


MODELS: dict[str, DeviceModel] = {
    model.name: model
    for model in (
        DeviceModel(
            "host-bridge",
            "Host bridge: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller",
            False,
            _host_bridge,
        ),
        DeviceModel(
            "root-port",
            "PCI bridge: Red Hat, Inc. QEMU PCIe Root port",
            True,
            _root_port,
            keys=frozenset({"bus", "subordinate"}),
            required_keys=frozenset({"bus"}),
        ),
        DeviceModel(
            "virtio-net",
            "Ethernet controller: Red Hat, Inc. Virtio 1.0 network device",
            False,
            _virtio(0x1041, 0x020000, vectors=3),
        ),
        DeviceModel(
            "virtio-blk",
            "SCSI storage controller: Red Hat, Inc. Virtio 1.0 block device",
            False,
            _virtio(0x1042, 0x010000, vectors=2),
        ),
        DeviceModel(
            "nvme",
            "Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller",
            False,
            _nvme,
        ),
        DeviceModel(
            "ich9-lpc",
            "ISA bridge: Intel Corporation 82801IB (ICH9) LPC Interface Controller",
            False,
            _ich9_lpc,
        ),
        DeviceModel(
            "ich9-ahci",
            "SATA controller: Intel Corporation 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA "
            "Controller [AHCI mode]",
            False,
            _ich9_ahci,
        ),
        DeviceModel(
            "ich9-smbus",
            "SMBus: Intel Corporation 82801I (ICH9 Family) SMBus Controller",
            False,
            _ich9_smbus,
        ),
    )
}
"""Every model, by the name ``--device`` uses."""
