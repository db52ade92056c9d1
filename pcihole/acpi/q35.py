"""The ACPI tables a q35 machine serves through fw_cfg, as QEMU 7.2 builds them.

``q35_acpi_files(Q35Acpi(...))`` returns ``etc/acpi/rsdp``, ``etc/acpi/tables`` and
``etc/table-loader``; SeaBIOS then installs these tables instead of building its own.
Tables, in QEMU's order in the blob: FACS, DSDT, FACP, APIC, MCFG, WAET, RSDT (QEMU's
HPET table is left out: pcihole has no HPET).

The FADT is QEMU 7.2's for an ICH9 whose ACPI mode is switched through the APM port
(SMI_CMD 0xb2, ACPI_ENABLE 2, ACPI_DISABLE 3): the PM block pcihole emulates
(``devices.acpi_pm``, ``devices.apm``), which is QEMU's with SMM or its ``pc-q35-5.2``
machine type; QEMU 7.2's ``q35`` without SMM says 0, 0, 0 and sets SCI_EN from reset.

The DSDT holds what pcihole emulates, named and laid out as QEMU 7.2's q35 DSDT:
``\\_SB.PCI0`` (PCIe host bridge: _HID, _CID, _ADR, _UID, _SEG, _BBN, and _CRS with the bus
range, the I/O ranges around CF8-CFF, the VGA window and the PCI memory windows below and
above 4 GiB, less the ECAM window), ``\\_SB.DRAC`` (PNP0C01 reserving the ECAM window, what
Linux wants before it uses MMCONFIG without type 1), fw_cfg (``FWCF``), the LPC's ISA
devices under ``SF8`` (keyboard, mouse, RTC, COM1), and the sleep states the PM block
acts on (``\\_S4``, ``\\_S5``). Left out: QEMU's ACPI PCI and CPU hot-plug (pcihole has
neither), the HPET, the interrupt links and ``_PRT`` (pcihole does not route INTx) and \\_S3
(nothing resumes). ``_OSC`` is ``pc-q35-5.2``'s, which leaves native PCIe hot-plug to the OS.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcihole import layout
from pcihole.acpi import aml
from pcihole.acpi.tables import (
    FADT_POINTERS,
    ISO_ACTIVE_HIGH_LEVEL,
    Fadt,
    Madt,
    facs,
    mcfg,
    new_blob,
    waet,
)
from pcihole.acpi.tables import table as acpi_table
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.devices import acpi_pm, cmos

DSDT_REVISION = 1
"""QEMU's x86 DSDT: 32-bit integers."""
ISA_IRQ0 = 0
IRQ0_GSI = 2
"""The PIT's IRQ 0 reaches IOAPIC pin 2 (fw_cfg's IRQ0 override item says so too)."""
PCI_ISA_IRQS = (5, 9, 10, 11)
"""QEMU's PCI IRQ mask (0x0e20): level-triggered, active high in the MADT's overrides."""
LAPIC_NMI_LINT = 1
WAET_PM_TIMER_GOOD = 1 << 1
"""The PM timer needs one read (QEMU's only WAET flag)."""
VGA_WINDOW = (layout.LOW_RAM_END, layout.PAM_SHADOW_BASE - 1)
"""Legacy VGA memory, which QEMU's host bridge forwards to PCI."""
RESET_VALUE = 0x0F
"""What QEMU's FADT writes to 0xcf9 to reset: FULL_RST, RST_CPU, SYS_RST (and bit 0)."""
LPC_ADR = 0x1F << 16
"""``_ADR`` of the ICH9 LPC, 00:1f.0 (device in the high word)."""
CONFIG_PORTS = 8
"""CF8-CFF, consumed by the host bridge itself."""
IO_SPACE_END = 0xFFFF
IO_AFTER_CONFIG = 0x0D00
"""QEMU's second I/O window starts here (0xd00-0xffff)."""
RTC_IO_LENGTH = 8
"""QEMU's RTC _CRS claims 0x70-0x77."""
FW_CFG_IO_LENGTH = layout.FW_CFG_DMA_PORT + layout.FW_CFG_DMA_PORTS - layout.FW_CFG_PORT
S4_SLEEP_TYPE = 2
PCI_HOST_BRIDGE_UUID = "33db4d5b-1ff7-401c-9657-7441c03dd766"
"""_OSC's UUID for PCI host bridges (PCI Firmware Specification 3.2, 4.5.1)."""
OSC_PCIE_FEATURES = 0x1F
"""Native hot-plug, SHPC hot-plug, PME, AER, PCIe capability structure: all the OS may
take (QEMU 7.2's q35 keeps native hot-plug, 0x1e, for its ACPI hot-plug; pcihole has none)."""
OSC_UNRECOGNIZED_UUID = 0x04
OSC_BAD_REVISION = 0x08
OSC_CAPABILITIES_MASKED = 0x10
"""_OSC's first dword: the error bits the method reports."""
STATUS_PRESENT = 0x0F
STATUS_HIDDEN = 0x0B
"""Present, enabled, functioning, not shown in the UI (QEMU's fw_cfg device)."""


@dataclass(frozen=True)
class Q35Acpi:
    """What the tables depend on; defaults are what SeaBIOS programs on pcihole's q35."""

    buses: int
    """Buses the ECAM window decodes (the machine's ``--buses``)."""
    ram_below_4g: int
    """Bytes of RAM from 0: the 32-bit PCI window starts there."""
    hole64: tuple[int, int] | None
    """The 64-bit PCI window (first, last byte), None when the vCPU has none."""
    cpus: int = 1
    ecam_base: int = layout.ECAM_BASE
    pm_base: int = layout.ACPI_PM_BASE
    sci_irq: int = layout.SCI_IRQ
    smi_cmd: int = layout.APM_PORT

    @classmethod
    def for_machine(cls, buses: int, ram: Q35Ram, cpus: int = 1) -> Q35Acpi:
        """The tables' inputs for a machine of ``buses`` buses and this RAM layout."""
        return cls(buses=buses, ram_below_4g=ram.below_4g, hole64=ram.pci_hole64, cpus=cpus)

    @property
    def ecam_last(self) -> int:
        return self.ecam_base + layout.ecam_size(self.buses) - 1


def q35_acpi_files(config: Q35Acpi) -> dict[str, bytes]:
    """``{fw_cfg file name: bytes}`` of the three files QEMU 7.2 serves for its tables."""
    if not 1 <= config.buses <= layout.ECAM_MAX_BUSES:
        raise ValueError(f"{config.buses} buses do not fit an ECAM window")
    blob = new_blob()
    blob.add(facs(), checksum=False)
    blob.add(dsdt(config))
    blob.add(fadt(config).pack(), FADT_POINTERS)
    blob.add(madt(config).pack())
    blob.add(mcfg(config.ecam_base, 0, 0, config.buses - 1))
    blob.add(waet(WAET_PM_TIMER_GOOD))
    blob.rsdt(["FACP", "APIC", "MCFG", "WAET"])
    return blob.files()


def fadt(config: Q35Acpi) -> Fadt:
    return Fadt(
        sci_irq=config.sci_irq,
        pm_base=config.pm_base,
        pm1_control_offset=acpi_pm.PM1_CNT,
        pm_timer_offset=acpi_pm.PM_TMR,
        gpe0_offset=acpi_pm.GPE0_STS,
        gpe0_length=acpi_pm.GPE0_LEN,
        smi_cmd=config.smi_cmd,
        acpi_enable=acpi_pm.APM_ACPI_ENABLE,
        acpi_disable=acpi_pm.APM_ACPI_DISABLE,
        reset_port=layout.RESET_CONTROL_PORT,
        reset_value=RESET_VALUE,
        rtc_century=cmos.CENTURY,
    )


def madt(config: Q35Acpi) -> Madt:
    overrides = [(ISA_IRQ0, IRQ0_GSI, 0)]
    overrides += [(irq, irq, ISO_ACTIVE_HIGH_LEVEL) for irq in PCI_ISA_IRQS]
    return Madt(
        lapic_address=layout.LAPIC_ADDR,
        ioapic_address=layout.IOAPIC_ADDR,
        ioapic_id=0,
        apic_ids=tuple(range(config.cpus)),
        overrides=tuple(overrides),
        nmi_lint=LAPIC_NMI_LINT,
    )


# --- DSDT -----------------------------------------------------------------------------------
def dsdt(config: Q35Acpi) -> bytes:
    body = aml.scope(
        "_SB",
        aml.device("PCI0", *_host_bridge(config), _fw_cfg(), _lpc()),
        _ecam_reservation(config),
    )
    body += aml.name("_S4", _sleep_package(S4_SLEEP_TYPE))
    body += aml.name("_S5", _sleep_package(acpi_pm.SLEEP_OFF))
    return acpi_table(b"DSDT", DSDT_REVISION, body)


def _sleep_package(sleep_type: int) -> bytes:
    """SLP_TYPa, SLP_TYPb, two reserved."""
    return aml.package(*(aml.integer(v) for v in (sleep_type, sleep_type, 0, 0)))


def _host_bridge(config: Q35Acpi) -> list[bytes]:
    return [
        aml.name("_HID", aml.integer(aml.eisa_id("PNP0A08"))),
        aml.name("_CID", aml.integer(aml.eisa_id("PNP0A03"))),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        _osc(),
        aml.name("_CRS", aml.resource_template(*_host_bridge_resources(config))),
    ]


def _osc() -> bytes:
    """QEMU's ``_OSC`` for the PCI host bridge as ``pc-q35-5.2`` gives it (no ACPI PCI
    hot-plug): the OS gets every PCIe feature it asks for (``OSC_PCIE_FEATURES``), native
    hot-plug among them; a revision other than 1 is flagged, and so are features refused;
    an unknown UUID is reported unrecognised."""
    cdw1, cdw3 = aml.name_string("CDW1"), aml.name_string("CDW3")
    capabilities = aml.arg(3)
    return aml.method(
        "_OSC",
        4,
        aml.create_dword_field(capabilities, aml.integer(0), "CDW1"),
        aml.if_(
            aml.equal(aml.arg(0), aml.uuid(PCI_HOST_BRIDGE_UUID)),
            aml.create_dword_field(capabilities, aml.integer(4), "CDW2"),
            aml.create_dword_field(capabilities, aml.integer(8), "CDW3"),
            aml.store(cdw3, aml.local(0)),
            aml.and_(aml.local(0), aml.integer(OSC_PCIE_FEATURES), aml.local(0)),
            aml.if_(
                aml.not_equal(aml.arg(1), aml.integer(1)),
                aml.or_(cdw1, aml.integer(OSC_BAD_REVISION), cdw1),
            ),
            aml.if_(
                aml.not_equal(cdw3, aml.local(0)),
                aml.or_(cdw1, aml.integer(OSC_CAPABILITIES_MASKED), cdw1),
            ),
            aml.store(aml.local(0), cdw3),
        ),
        aml.else_(aml.or_(cdw1, aml.integer(OSC_UNRECOGNIZED_UUID), cdw1)),
        aml.return_(capabilities),
    )


def _host_bridge_resources(config: Q35Acpi) -> list[bytes]:
    """QEMU's order: buses, the config ports, I/O below and above them, the VGA window,
    the 32-bit PCI memory around the ECAM window, the 64-bit window."""
    config_port = layout.PCI_CONFIG_ADDRESS_PORT
    resources = [
        aml.word_bus_number(0, config.buses - 1),
        aml.io(config_port, config_port, 1, CONFIG_PORTS),
        aml.word_io(0, config_port - 1),
        aml.word_io(IO_AFTER_CONFIG, IO_SPACE_END),
        aml.dword_memory(*VGA_WINDOW, aml.Cache.CACHEABLE),
    ]
    below = (config.ram_below_4g, config.ecam_base - 1)
    above = (config.ecam_last + 1, layout.IOAPIC_ADDR - 1)
    for first, last in (below, above):
        if first <= last:
            resources.append(aml.dword_memory(first, last, aml.Cache.NON_CACHEABLE))
    if config.hole64 is not None:
        resources.append(aml.qword_memory(*config.hole64, aml.Cache.CACHEABLE))
    return resources


def _ecam_reservation(config: Q35Acpi) -> bytes:
    """QEMU 7.2's ``DRAC``: a motherboard device (``_HID`` the string "PNP0C01") whose
    _CRS is the whole ECAM window."""
    window = aml.dword_memory(config.ecam_base, config.ecam_last, aml.Cache.NON_CACHEABLE)
    return aml.device(
        "DRAC",
        aml.name("_HID", aml.string("PNP0C01")),
        aml.name("_CRS", aml.resource_template(window)),
    )


def _fw_cfg() -> bytes:
    port = layout.FW_CFG_PORT
    return aml.device(
        "FWCF",
        aml.name("_HID", aml.string("QEMU0002")),
        aml.name("_STA", aml.integer(STATUS_HIDDEN)),
        aml.name("_CRS", aml.resource_template(aml.io(port, port, 1, FW_CFG_IO_LENGTH))),
    )


def _isa_device(path: str, hid: str, *resources: bytes, uid: int | None = None) -> bytes:
    terms = [aml.name("_HID", aml.integer(aml.eisa_id(hid)))]
    if uid is not None:
        terms.append(aml.name("_UID", aml.integer(uid)))
    terms.append(aml.name("_STA", aml.integer(STATUS_PRESENT)))
    terms.append(aml.name("_CRS", aml.resource_template(*resources)))
    return aml.device(path, *terms)


def _lpc() -> bytes:
    """The ICH9 LPC bridge (00:1f.0) and the ISA devices pcihole puts behind it."""
    keyboard, command = layout.I8042_PORT, layout.I8042_PORT + 4
    rtc, com1 = layout.CMOS_PORT, layout.SERIAL_COM1_PORT
    return aml.device(
        "SF8",
        aml.name("_ADR", aml.integer(LPC_ADR)),
        _isa_device(
            "KBD",
            "PNP0303",
            aml.io(keyboard, keyboard, 1, 1),
            aml.io(command, command, 1, 1),
            aml.irq_no_flags(layout.KEYBOARD_IRQ),
        ),
        _isa_device("MOU", "PNP0F13", aml.irq_no_flags(layout.MOUSE_IRQ)),
        _isa_device(
            "RTC", "PNP0B00", aml.io(rtc, rtc, 1, RTC_IO_LENGTH), aml.irq_no_flags(layout.CMOS_IRQ)
        ),
        _isa_device(
            "COM1",
            "PNP0501",
            aml.io(com1, com1, 0, layout.SERIAL_PORTS),
            aml.irq_no_flags(layout.SERIAL_COM1_IRQ),
            uid=1,
        ),
    )
