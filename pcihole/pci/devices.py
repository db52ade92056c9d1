"""The device catalogue: models with the identities QEMU's q35 machine gives them.

A model turns an address and a few ``key=value`` parameters into a ``Function``: the address,
its ``ConfigSpace`` and the model's name. Each model is one registration in ``MODELS``: its
name, its lspci description, how its configuration space is built (here, in ``pci``) and
which register blocks sit behind its BARs (``blocks``: made from ``pcihole.devices``, which
the machine's BAR decoder places where the guest programs the BARs).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pcihole.devices import virtio_pci
from pcihole.devices.ahci import Ahci, AhciIndexData
from pcihole.devices.irq import IrqLine
from pcihole.devices.msix import MsixTable
from pcihole.devices.nvme import Nvme
from pcihole.memory.access import GuestMemory
from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import BUSES, Bdf, BuiltBdf
from pcihole.pci.config import (
    DEVICE_ID,
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
PCIEXBAR_WRITABLE = (1 << 64) - 1
"""All 64 bits, as on QEMU (which decodes base bits 35:26, length bits 2:1, enable bit 0)."""
MCH_GGC = 0x50
MCH_GGC_DEFAULT = 0x0010
"""Graphics control: IGD VGA disable, no stolen memory."""
MCH_GGC_WRITABLE = 0x0010
MCH_SMRAM = 0x9D
MCH_SMRAM_DEFAULT = 0x02
"""Compatible SMRAM base segment (0xa0000), closed, unlocked."""
MCH_SMRAM_WRITABLE = 0x78
"""Open, closed, lock, global enable. QEMU then locks them once D_LCK is written."""
MCH_ESMRAMC = 0x9E
MCH_ESMRAMC_DEFAULT = 0x38
"""SMRAM cacheable in L1 and L2 (read-only ones)."""
MCH_ESMRAMC_WRITABLE = 0x87
"""High SMRAM enable, TSEG size, TSEG enable."""
MCH_ESMRAMC_W1C = 0x40
"""Invalid SMRAM access."""
LPC_PMBASE = 0x40
LPC_PMBASE_DEFAULT = 0x1
"""I/O space indicator; SeaBIOS writes the base (0x600 on QEMU)."""
LPC_PMBASE_WRITABLE = 0xFF87
LPC_PIRQA_ROUT = 0x60
LPC_PIRQE_ROUT = 0x68
LPC_PIRQ_DISABLED = 0x80
"""Each of PIRQA-H starts routed nowhere (IRQEN bit 7)."""


@dataclass(frozen=True)
class Function:
    """One present PCI function: where it is, its registers, and which model made it."""

    bdf: BuiltBdf
    """Where it was built; the guest may reach it elsewhere (``pci.routing``)."""
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


class RegisterBlock(Protocol):
    """What sits behind a BAR: a bus device, offsets from the BAR's base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


BlockMaker = Callable[[ConfigSpace, GuestMemory, IrqLine], dict[int, RegisterBlock]]
"""The register blocks behind a function's BARs, by BAR index, given its built config
space, what its DMA reaches (guest RAM) and its INTx line."""


def no_blocks(config: ConfigSpace, memory: GuestMemory, irq: IrqLine) -> dict[int, RegisterBlock]:
    """Nothing a guest drives behind the BARs (the SMBus controller's I/O BAR reads all
    ones; the host bridge and LPC have none)."""
    return {}


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
    other_descriptions: Mapping[int, str] = field(default_factory=dict)
    """What lspci calls the model under another device ID it takes (a transitional virtio
    device's on the root bus), by that ID."""
    blocks: BlockMaker = no_blocks
    """Its register blocks behind the BARs (``pcihole.devices``)."""

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
        description = self.other_descriptions.get(config.read(DEVICE_ID, 2), self.description)
        return Function(BuiltBdf(bdf), config, self.name, spec, description, bridge_buses)


# -- builders ----------------------------------------------------------------------------
# Capability offsets and order, BAR sizes and reset values are QEMU 7.2's, measured with
# tests/qemu.py against a running qemu-system-x86_64 (tests/kvm/test_qemu_config.py).


ICH9_REVISION = 2


def _qemu_function(
    *,
    vendor_id: int,
    device_id: int,
    class_code: int,
    revision: int = 0,
    interrupt_pin: int = 0,
    multifunction: bool = False,
    express: bool = False,
) -> ConfigSpace:
    """A function with the subsystem IDs QEMU gives the devices it emulates."""
    return ConfigSpace(
        vendor_id=vendor_id,
        device_id=device_id,
        class_code=class_code,
        revision=revision,
        subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
        subsystem_id=QEMU_SUBSYSTEM,
        interrupt_pin=interrupt_pin,
        multifunction=multifunction,
        express=express,
    )


_ich9_function = functools.partial(
    _qemu_function, vendor_id=INTEL, revision=ICH9_REVISION, multifunction=True
)
"""One of the ICH9 functions of the multi-function device at 00:1f (LPC, SATA, SMBus)."""


def _host_bridge(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = _qemu_function(vendor_id=INTEL, device_id=0x29C0, class_code=0x060000)
    # Everything from 0x40 is plain writable bytes on QEMU's MCH (PAM, F_SMBASE ...),
    # except what follows.
    config.define(MCH_GGC, 2, MCH_GGC_DEFAULT, writable=MCH_GGC_WRITABLE)
    config.define(PCIEXBAR, 8, PCIEXBAR_DEFAULT, writable=PCIEXBAR_WRITABLE)
    config.define(MCH_SMRAM, 1, MCH_SMRAM_DEFAULT, writable=MCH_SMRAM_WRITABLE)
    config.define(
        MCH_ESMRAMC, 1, MCH_ESMRAMC_DEFAULT, writable=MCH_ESMRAMC_WRITABLE, w1c=MCH_ESMRAMC_W1C
    )
    return config


ROOT_PORT_SSVID = 0x40
ROOT_PORT_MSIX = 0x48
ROOT_PORT_EXPRESS = 0x54


def _root_port(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    secondary = params["bus"]
    subordinate = params.get("subordinate", secondary)
    for key, bus in (("bus", secondary), ("subordinate", subordinate)):
        if not 0 <= bus < BUSES:
            raise DeviceError(f"{key}={bus} is not a bus number (0-{BUSES - 1})")
    if subordinate < secondary:
        raise DeviceError(f"subordinate={subordinate} is below bus={secondary}")
    _check_chassis_slot(params)
    config = ConfigSpace(
        vendor_id=REDHAT_QEMU,
        device_id=0x000C,
        class_code=0x060400,
        header_type=HeaderType.BRIDGE,
        interrupt_pin=INTA,
        express=True,
    )
    config.set_bus_numbers(bdf.bus, secondary, subordinate)
    config.add_bar(0, 0x1000)  # holds the MSI-X table, as on QEMU's root port
    caps.add_bridge_subsystem(config, REDHAT_QEMU, 0, ROOT_PORT_SSVID)
    caps.add_msix(
        config,
        1,
        table_bar=0,
        table_offset=0,
        pba_bar=0,
        pba_offset=0x800,
        offset=ROOT_PORT_MSIX,
    )
    caps.add_pcie_root_port(config, ROOT_PORT_EXPRESS, slot=params.get("slot", 0))
    caps.add_aer(config, root_port=True)
    caps.add_acs(config)
    return config


CHASSIS_LIMIT = 256
"""QEMU's ``chassis`` is a byte; it lands in no register of a PCI Express root port."""
SLOT_LIMIT = 1 << 13
"""The physical slot number field of the slot capabilities register."""


def _check_chassis_slot(params: Mapping[str, int]) -> None:
    for key, limit in (("chassis", CHASSIS_LIMIT), ("slot", SLOT_LIMIT)):
        value = params.get(key, 0)
        if not 0 <= value < limit:
            raise DeviceError(f"{key}={value} is not in 0-{limit - 1}")


class VirtioCfgType(enum.IntEnum):
    """``cfg_type`` of a virtio PCI capability (virtio 1.x, 4.1.4)."""

    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5
    """A window into the BARs through config space; its bar/offset/length/data are writable."""


VIRTIO_STRUCTURES_BAR = 4
VIRTIO_STRUCTURE_SIZE = 0x1000
VIRTIO_NOTIFY_MULTIPLIER = 4
VIRTIO_MSIX_BAR = 1
VIRTIO_LEGACY_BAR = 0
VIRTIO_EXPRESS = 0x40
VIRTIO_PM = 0x7C
VIRTIO_ROM_SIZE = 0x40000
"""QEMU's efi-virtio.rom, a 256 KiB expansion ROM BAR on virtio-net."""
VIRTIO_PCI_CAP_LENGTH = 0x10


@dataclass(frozen=True)
class VirtioKind:
    """What differs between virtio device types on QEMU."""

    device_type: int
    """Virtio device ID: 1 network, 2 block. Modern PCI ID is 0x1040 + it."""
    legacy_device_id: int
    class_code: int
    vectors: int
    legacy_io_size: int
    """I/O BAR 0 of a transitional device: legacy header plus device config, rounded up."""
    rom: bool


def _virtio(kind: VirtioKind) -> ConfigBuilder:
    """QEMU's virtio-pci: transitional and conventional on the root bus, modern-only with
    a PCI Express capability behind a port (QEMU's ``disable-legacy=auto``)."""

    def build(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
        modern = bdf.bus != 0
        config = ConfigSpace(
            vendor_id=REDHAT_VIRTIO,
            device_id=0x1040 + kind.device_type if modern else kind.legacy_device_id,
            class_code=kind.class_code,
            revision=1 if modern else 0,  # virtio 1.0-only devices have revision 1
            subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR,
            subsystem_id=QEMU_SUBSYSTEM if modern else kind.device_type,
            interrupt_pin=INTA,
            express=modern,
        )
        if not modern:
            config.add_bar(VIRTIO_LEGACY_BAR, kind.legacy_io_size, BarKind.IO)
        config.add_bar(VIRTIO_MSIX_BAR, 0x1000)
        structures = 4 * VIRTIO_STRUCTURE_SIZE
        config.add_bar(VIRTIO_STRUCTURES_BAR, structures, BarKind.MEMORY64, prefetchable=True)
        if kind.rom:
            config.add_rom_bar(VIRTIO_ROM_SIZE)
        if modern:
            caps.add_pcie_endpoint(config, VIRTIO_EXPRESS, integrated=False, link_control=True)
            caps.add_power_management(config, VIRTIO_PM)
        _virtio_capabilities(config)
        caps.add_msix(
            config,
            kind.vectors,
            table_bar=VIRTIO_MSIX_BAR,
            table_offset=0,
            pba_bar=VIRTIO_MSIX_BAR,
            pba_offset=0x800,
        )
        return config

    return build


def _virtio_capabilities(config: ConfigSpace) -> None:
    """The structure capabilities, in QEMU's order, each where the first free space is."""
    order = (VirtioCfgType.COMMON, VirtioCfgType.ISR, VirtioCfgType.DEVICE)
    for index, cfg_type in enumerate((*order, VirtioCfgType.NOTIFY)):
        body = bytes([cfg_type, VIRTIO_STRUCTURES_BAR, 0, 0, 0])
        body += (index * VIRTIO_STRUCTURE_SIZE).to_bytes(4, "little")
        body += VIRTIO_STRUCTURE_SIZE.to_bytes(4, "little")
        if cfg_type is VirtioCfgType.NOTIFY:
            body += VIRTIO_NOTIFY_MULTIPLIER.to_bytes(4, "little")
        caps.add_vendor_specific(config, body)
    # The PCI configuration access capability: bar, offset, length and data the guest sets.
    window = caps.add_vendor_specific(config, bytes([VirtioCfgType.PCI]) + bytes(16))
    config.define(window + 4, 1, 0, writable=0xFF)
    for register in (8, 12, 16):
        config.define(window + register, 4, 0, writable=0xFFFF_FFFF)


NVME_MSIX_VECTORS = 65
"""QEMU's default: one admin queue and 64 I/O queues."""
NVME_MSIX = 0x40
NVME_PM = 0x60
NVME_EXPRESS = 0x80


def _nvme(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = _qemu_function(
        vendor_id=REDHAT_QEMU,
        device_id=0x0010,
        class_code=0x010802,
        revision=2,
        interrupt_pin=INTA,
        express=True,
    )
    config.add_bar(0, 0x4000, BarKind.MEMORY64)  # registers, doorbells, MSI-X
    caps.add_power_management(config, NVME_PM, no_soft_reset=True)
    # An NVMe controller on the root bus is integrated into the root complex.
    caps.add_pcie_endpoint(config, NVME_EXPRESS, integrated=bdf.bus == 0)
    caps.add_msix(
        config,
        NVME_MSIX_VECTORS,
        table_bar=0,
        table_offset=0x2000,
        pba_bar=0,
        pba_offset=0x3000,
        offset=NVME_MSIX,
    )
    return config


def _ich9_lpc(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    # Function 0 of 00:1f, with SATA and SMBus beside it.
    config = _ich9_function(device_id=0x2918, class_code=0x060100)
    # PMBASE: I/O space indicator set; ACPI_CNTL, GEN_PMCON, RCBA ... are plain writable
    # bytes from 0x40 on, as on QEMU.
    config.define(LPC_PMBASE, 4, LPC_PMBASE_DEFAULT, writable=LPC_PMBASE_WRITABLE)
    for pirq in (LPC_PIRQA_ROUT, LPC_PIRQE_ROUT):
        config.define(pirq, 4, LPC_PIRQ_DISABLED * 0x0101_0101, writable=0xFFFF_FFFF)
    return config


AHCI_MSI = 0x80
AHCI_SATA = 0xA8
AHCI_SATA_LENGTH = 8
AHCI_SATA_BODY = bytes([0x10, 0x00, 0x48, 0x00, 0x00, 0x00])
"""SATA capability revision 1.0; index/data pair in BAR 4 (BARLOC 8) at offset 4 (BAROFST 4)."""
AHCI_MAP = 0x90
AHCI_MAP_AHCI_MODE = 0x40


def _ich9_ahci(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = _ich9_function(device_id=0x2922, class_code=0x010601, interrupt_pin=INTA)
    config.add_bar(4, 0x20, BarKind.IO)  # index/data pair
    config.add_bar(5, 0x1000)  # ABAR: the AHCI registers
    sata = config.add_capability(caps.CapabilityId.SATA, AHCI_SATA_LENGTH, AHCI_SATA)
    config.define(sata + 2, len(AHCI_SATA_BODY), int.from_bytes(AHCI_SATA_BODY, "little"))
    caps.add_msi(config, offset=AHCI_MSI)
    config.define(AHCI_MAP, 1, AHCI_MAP_AHCI_MODE, writable=0xFF)
    return config


SMBUS_HOSTC = 0x40
SMBUS_HOSTC_WRITABLE = 0xF7
"""Host configuration: everything but bit 3 (reserved on ICH9)."""


def _ich9_smbus(bdf: Bdf, params: Mapping[str, int]) -> ConfigSpace:
    config = _ich9_function(device_id=0x2930, class_code=0x0C0500, interrupt_pin=INTA)
    config.add_bar(4, 0x40, BarKind.IO)
    config.define(SMBUS_HOSTC, 1, 0, writable=SMBUS_HOSTC_WRITABLE)
    return config


# -- what sits behind the BARs ------------------------------------------------------------
def _msix_table(config: ConfigSpace, bar: int) -> MsixTable | None:
    """The MSI-X table and PBA the capability places in BAR ``bar``, if it does."""
    offset = config.find_capability(caps.CapabilityId.MSIX)
    if offset is None:
        return None
    vectors = (config.read(offset + 2, 2) & 0x7FF) + 1
    table, pba = config.read(offset + 4, 4), config.read(offset + 8, 4)
    if table & 7 != bar or pba & 7 != bar:
        return None
    return MsixTable(vectors, table & ~7, pba & ~7)


def _root_port_blocks(
    config: ConfigSpace, memory: GuestMemory, irq: IrqLine
) -> dict[int, RegisterBlock]:
    """BAR0: its MSI-X table."""
    msix = _msix_table(config, 0)
    return {} if msix is None else {0: msix}


def _virtio_blocks(kind: virtio_pci.VirtioKind) -> BlockMaker:
    """BAR4 ``VirtioPci``, BAR1 its MSI-X table, and BAR0 its legacy I/O block when the
    function is transitional (an I/O BAR0: on the root bus)."""

    def make(config: ConfigSpace, memory: GuestMemory, irq: IrqLine) -> dict[int, RegisterBlock]:
        device = virtio_pci.VirtioPci(kind, memory, irq)
        blocks: dict[int, RegisterBlock] = {VIRTIO_STRUCTURES_BAR: device}
        msix = _msix_table(config, VIRTIO_MSIX_BAR)
        if msix is not None:
            blocks[VIRTIO_MSIX_BAR] = msix
        bars = {bar.index: bar for bar in config.bars}
        legacy = bars.get(VIRTIO_LEGACY_BAR)
        if legacy is not None and legacy.kind is BarKind.IO:
            blocks[VIRTIO_LEGACY_BAR] = device.legacy
        return blocks

    return make


def _nvme_blocks(
    config: ConfigSpace, memory: GuestMemory, irq: IrqLine
) -> dict[int, RegisterBlock]:
    """BAR0: registers, doorbells and MSI-X table in one."""
    return {0: Nvme(memory, irq)}


def _ahci_blocks(
    config: ConfigSpace, memory: GuestMemory, irq: IrqLine
) -> dict[int, RegisterBlock]:
    """BAR5 the HBA (ABAR), BAR4 its index/data pair."""
    hba = Ahci(memory, irq)
    return {5: hba, 4: AhciIndexData(hba)}


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
            keys=frozenset({"bus", "subordinate", "chassis", "slot"}),
            required_keys=frozenset({"bus"}),
            blocks=_root_port_blocks,
        ),
        DeviceModel(
            "virtio-net",
            "Ethernet controller: Red Hat, Inc. Virtio 1.0 network device",
            False,
            _virtio(VirtioKind(1, 0x1000, 0x020000, vectors=4, legacy_io_size=0x20, rom=True)),
            other_descriptions={0x1000: "Ethernet controller: Red Hat, Inc. Virtio network device"},
            blocks=_virtio_blocks(virtio_pci.NET),
        ),
        DeviceModel(
            "virtio-blk",
            "SCSI storage controller: Red Hat, Inc. Virtio 1.0 block device",
            False,
            _virtio(VirtioKind(2, 0x1001, 0x010000, vectors=2, legacy_io_size=0x80, rom=False)),
            other_descriptions={
                0x1001: "SCSI storage controller: Red Hat, Inc. Virtio block device"
            },
            blocks=_virtio_blocks(virtio_pci.BLK),
        ),
        DeviceModel(
            "nvme",
            "Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller",
            False,
            _nvme,
            blocks=_nvme_blocks,
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
            blocks=_ahci_blocks,
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
