"""ACPI tables laid out as QEMU 7.2's x86 build lays them out (``hw/acpi/aml-build.c``,
``hw/i386/acpi-build.c``), into one blob with the loader commands that place and link it.

``TableBlob`` appends tables to ``etc/acpi/tables``: a table's pointer fields hold the
target's offset in the blob, and the linker gets an ADD_POINTER for each, then an
ADD_CHECKSUM for the table (the FACS has none). Headers carry QEMU's OEM fields
("BOCHS ", "BXPC    ", revision 1, creator "BXPC" 1). The header layout and the checksum
are the reader's (``pcihole.arch.x86.acpi``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pcihole.acpi.loader import Linker, Zone
from pcihole.arch.x86.acpi import HEADER, RSDP_SIGNATURE, RSDP_V1

OEM_ID = b"BOCHS "
OEM_TABLE_ID = b"BXPC    "
OEM_REVISION = 1
CREATOR_ID = int.from_bytes(b"BXPC", "little")
"""The header keeps the creator ID as a u32 (four ASCII bytes)."""
CREATOR_REVISION = 1
CHECKSUM_OFFSET = 9
"""The header's checksum byte."""

TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"
TABLES_SIZE = 0x20000
"""QEMU pads ``etc/acpi/tables`` to 128 KiB (its ACPI_BUILD_TABLE_SIZE) so that its size
does not change with the machine's devices."""
TABLES_ALIGN = 64
"""ALLOCATE alignment of the tables: the FACS, first, must be 64-byte aligned."""
RSDP_ALIGN = 16
FACS_SIZE = 64
RSDP_RSDT_OFFSET = 16


@dataclass(frozen=True)
class Pointer:
    """A field of a table that firmware points at another table of the blob."""

    offset: int
    """From the start of the table."""
    size: int
    """4 or 8 bytes."""
    target: str
    """The target table's signature (already in the blob)."""


def header(signature: bytes, length: int, revision: int) -> bytes:
    """The 36-byte header with QEMU's OEM fields and a zero checksum (the loader's)."""
    return HEADER.pack(
        signature,
        length,
        revision,
        0,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        CREATOR_ID,
        CREATOR_REVISION,
    )


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    return header(signature, HEADER.size + len(body), revision) + body


@dataclass
class TableBlob:
    """``etc/acpi/tables`` under construction, with its loader commands."""

    linker: Linker = field(default_factory=Linker)
    data: bytearray = field(default_factory=bytearray)
    offsets: dict[str, int] = field(default_factory=dict)
    """Each table's offset in the blob, by signature."""

    def add(self, data: bytes, pointers: tuple[Pointer, ...] = (), checksum: bool = True) -> int:
        """Appends a whole table (header included) and returns its offset."""
        signature = data[:4].decode("ascii")
        if signature in self.offsets:
            raise ValueError(f"{signature} is already in the blob")
        start = len(self.data)
        table_bytes = bytearray(data)
        for pointer in pointers:
            target = self.offsets[pointer.target]
            end = pointer.offset + pointer.size
            table_bytes[pointer.offset : end] = target.to_bytes(pointer.size, "little")
        self.data += table_bytes
        self.offsets[signature] = start
        for pointer in pointers:
            self.linker.add_pointer(TABLES_FILE, start + pointer.offset, pointer.size, TABLES_FILE)
        if checksum:
            self.linker.add_checksum(TABLES_FILE, start + CHECKSUM_OFFSET, start, len(data))
        return start

    def rsdt(self, signatures: list[str]) -> int:
        """The RSDT listing these tables (32-bit pointers), last in the blob."""
        body = b"".join(self.offsets[name].to_bytes(4, "little") for name in signatures)
        pointers = tuple(
            Pointer(HEADER.size + 4 * index, 4, name) for index, name in enumerate(signatures)
        )
        return self.add(table(b"RSDT", 1, body), pointers)

    def files(self) -> dict[str, bytes]:
        """The three fw_cfg files; the RSDP (ACPI 1.0, revision 0, as QEMU's on x86)
        points at the RSDT, which must be in the blob."""
        rsdt = self.offsets["RSDT"]
        rsdp = RSDP_V1.pack(RSDP_SIGNATURE, 0, OEM_ID, 0, rsdt)
        self.linker.add_pointer(RSDP_FILE, RSDP_RSDT_OFFSET, 4, TABLES_FILE)
        self.linker.add_checksum(RSDP_FILE, 8, 0, RSDP_V1.size)
        if len(self.data) > TABLES_SIZE:
            raise ValueError(f"ACPI tables take {len(self.data)} bytes, past {TABLES_SIZE}")
        return {
            RSDP_FILE: rsdp,
            TABLES_FILE: bytes(self.data.ljust(TABLES_SIZE, b"\0")),
            LOADER_FILE: self.linker.blob(),
        }


def new_blob() -> TableBlob:
    """A blob whose loader first allocates the RSDP in the BIOS area and the tables in
    high memory, in QEMU's order."""
    blob = TableBlob()
    blob.linker.allocate(RSDP_FILE, RSDP_ALIGN, Zone.FSEG)
    blob.linker.allocate(TABLES_FILE, TABLES_ALIGN, Zone.HIGH)
    return blob


def facs() -> bytes:
    """The FACS: signature and length, the rest zero (no global lock owner, no waking
    vector yet); no checksum."""
    return struct.pack("<4sI", b"FACS", FACS_SIZE).ljust(FACS_SIZE, b"\0")


def mcfg(base: int, segment: int, first_bus: int, last_bus: int) -> bytes:
    """One ECAM allocation: base, segment group, bus range (8 reserved bytes before)."""
    body = bytes(8) + struct.pack("<QHBBI", base, segment, first_bus, last_bus, 0)
    return table(b"MCFG", 1, body)


def waet(flags: int) -> bytes:
    """Windows' emulated-devices table: flags only."""
    return table(b"WAET", 1, struct.pack("<I", flags))


# --- MADT -----------------------------------------------------------------------------------
MADT_PCAT_COMPAT = 1
"""The machine has the dual 8259s too."""
LAPIC_ENABLED = 1
ISO_ACTIVE_HIGH = 0x1
ISO_LEVEL = 0xC
ISO_ACTIVE_HIGH_LEVEL = ISO_ACTIVE_HIGH | ISO_LEVEL
ALL_PROCESSORS = 0xFF


@dataclass(frozen=True)
class Madt:
    """What QEMU's ``acpi_build_madt`` lists for a PC."""

    lapic_address: int
    ioapic_address: int
    ioapic_id: int
    apic_ids: tuple[int, ...]
    """One processor per ID, enabled, numbered from 0."""
    overrides: tuple[tuple[int, int, int], ...]
    """(ISA IRQ, GSI, flags) of each interrupt source override."""
    nmi_lint: int
    """The LAPIC input every processor takes NMI on."""

    def pack(self) -> bytes:
        body = struct.pack("<II", self.lapic_address, MADT_PCAT_COMPAT)
        for uid, apic_id in enumerate(self.apic_ids):
            body += struct.pack("<BBBBI", 0, 8, uid, apic_id, LAPIC_ENABLED)
        body += struct.pack("<BBBBII", 1, 12, self.ioapic_id, 0, self.ioapic_address, 0)
        for irq, gsi, flags in self.overrides:
            body += struct.pack("<BBBBIH", 2, 10, 0, irq, gsi, flags)
        body += struct.pack("<BBBHB", 4, 6, ALL_PROCESSORS, 0, self.nmi_lint)
        return table(b"APIC", 1, body)


# --- FADT -----------------------------------------------------------------------------------
FADT_REVISION = 3
"""QEMU 7.2's x86 FADT: ACPI 2.0's layout, 244 bytes."""
FADT_SIZE = 244
FADT_FACS = 36
FADT_DSDT = 40
FADT_X_DSDT = 140
FADT_POINTERS = (
    Pointer(FADT_FACS, 4, "FACS"),
    Pointer(FADT_DSDT, 4, "DSDT"),
    Pointer(FADT_X_DSDT, 8, "DSDT"),
)
"""QEMU fills FIRMWARE_CTRL (not X_FIRMWARE_CTRL), DSDT and X_DSDT."""
INT_MODEL_APIC = 1
"""The byte after the DSDT pointer (ACPI 1.0's INT_MODEL): multiple APIC."""
C_STATE_NONE = 0xFFF
"""P_LVL2_LAT/P_LVL3_LAT above 100/1000: C2 and C3 not supported."""
GAS_SYSTEM_IO = 1
PM1_EVENT_LENGTH = 4
PM1_CONTROL_LENGTH = 2
PM_TIMER_LENGTH = 4
RESET_WIDTH_BITS = 8

# FADT flags (ACPI 6.5, table 5.10) QEMU 7.2 sets on x86.
WBINVD = 1 << 0
PROC_C1 = 1 << 2
SLP_BUTTON = 1 << 5
"""No fixed sleep button."""
RTC_S4 = 1 << 7
RESET_REG_SUP = 1 << 10
USE_PLATFORM_CLOCK = 1 << 15
QEMU_FADT_FLAGS = WBINVD | PROC_C1 | SLP_BUTTON | RTC_S4 | RESET_REG_SUP | USE_PLATFORM_CLOCK
BOOT_ARCH_8042 = 1 << 1
"""IAPC_BOOT_ARCH: an i8042 at 0x60/0x64."""


@dataclass(frozen=True)
class Fadt:
    """The FADT's values; FACS and DSDT pointers are filled through the loader."""

    sci_irq: int
    pm_base: int
    """PM1a event block; control, timer and GPE0 are at the offsets below from it."""
    pm1_control_offset: int
    pm_timer_offset: int
    gpe0_offset: int
    gpe0_length: int
    smi_cmd: int
    """0 when the platform cannot switch modes (SCI_EN set from reset)."""
    acpi_enable: int
    acpi_disable: int
    reset_port: int
    reset_value: int
    rtc_century: int
    boot_arch: int = BOOT_ARCH_8042
    flags: int = QEMU_FADT_FLAGS

    def pack(self) -> bytes:
        base = self.pm_base
        control, timer = base + self.pm1_control_offset, base + self.pm_timer_offset
        gpe0 = base + self.gpe0_offset
        body = struct.pack(
            "<IIBBHIBBBB8I8B4H5BHBI",
            0,
            0,
            INT_MODEL_APIC,
            0,
            self.sci_irq,
            self.smi_cmd,
            self.acpi_enable,
            self.acpi_disable,
            0,
            0,
            base,
            0,
            control,
            0,
            0,
            timer,
            gpe0,
            0,
            PM1_EVENT_LENGTH,
            PM1_CONTROL_LENGTH,
            0,
            PM_TIMER_LENGTH,
            self.gpe0_length,
            0,
            0,
            0,
            C_STATE_NONE,
            C_STATE_NONE,
            0,
            0,
            0,
            0,
            0,
            0,
            self.rtc_century,
            self.boot_arch,
            0,
            self.flags,
        )
        body += _gas(RESET_WIDTH_BITS, self.reset_port)
        body += struct.pack("<BHBQQ", self.reset_value, 0, 0, 0, 0)  # X_FACS 0, X_DSDT
        body += _gas(8 * PM1_EVENT_LENGTH, base) + _gas(0, 0, space=0)
        body += _gas(8 * PM1_CONTROL_LENGTH, control) + _gas(0, 0, space=0)
        body += _gas(0, 0, space=0) + _gas(8 * PM_TIMER_LENGTH, timer)
        body += _gas(8 * self.gpe0_length, gpe0) + _gas(0, 0, space=0)
        data = table(b"FACP", FADT_REVISION, body)
        assert len(data) == FADT_SIZE, len(data)
        return data


def _gas(bits: int, address: int, space: int = GAS_SYSTEM_IO) -> bytes:
    """A Generic Address Structure: space, bit width, bit offset 0, access size 0
    (legacy), address."""
    return struct.pack("<BBBBQ", space, bits, 0, 0, address)
