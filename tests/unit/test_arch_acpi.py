"""The ACPI table dumper on synthetic tables built here, and iasl as the judge of its files."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.arch.x86.acpi import HEADER, RSDP_V1, RSDP_V2, checksum, read_acpi_tables

EBDA = 0x9FC00
TABLES = 0x7FF0000
F_SEGMENT_RSDP = 0xF5A40
AML_NAME = bytes([0x08]) + b"ABCD" + bytes([0x0A, 0x2A])  # Name (ABCD, 0x2A)


class SparseMemory:
    """A few regions of guest memory; reads elsewhere raise ValueError, as GuestRam does."""

    def __init__(self) -> None:
        self.regions = {
            0: bytearray(0x1000),  # IVT and BIOS data area
            EBDA: bytearray(0x400 * 2),
            layout.BIOS_AREA_START: bytearray(layout.BIOS_AREA_END - layout.BIOS_AREA_START),
            TABLES: bytearray(0x10000),
        }
        self.put(layout.BDA_EBDA_SEGMENT, (EBDA >> 4).to_bytes(2, "little"))

    def _find(self, address: int, length: int) -> tuple[bytearray, int]:
        for base, data in self.regions.items():
            if base <= address and address + length <= base + len(data):
                return data, address - base
        raise ValueError(f"[{address:#x}, +{length:#x}) is not guest memory")

    def read(self, address: int, length: int) -> bytes:
        data, offset = self._find(address, length)
        return bytes(data[offset : offset + length])

    def put(self, address: int, blob: bytes) -> None:
        data, offset = self._find(address, len(blob))
        data[offset : offset + len(blob)] = blob


def with_checksum(data: bytes, offset: int) -> bytes:
    fixed = bytearray(data)
    fixed[offset] = (-checksum(data)) & 0xFF
    return bytes(fixed)


def sdt(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    header = HEADER.pack(
        signature, HEADER.size + len(body), revision, 0, b"PCIHOL", b"SYNTHETC", 1, 0x5448, 1
    )
    return with_checksum(header + body, 9)


def rsdp(rsdt: int, xsdt: int | None = None) -> bytes:
    if xsdt is None:
        return with_checksum(RSDP_V1.pack(b"RSD PTR ", 0, b"PCIHOL", 0, rsdt), 8)
    first = with_checksum(RSDP_V1.pack(b"RSD PTR ", 0, b"PCIHOL", 2, rsdt), 8)
    whole = first + RSDP_V2.pack(b"", 0, b"", 0, 0, RSDP_V2.size, xsdt, 0)[RSDP_V1.size :]
    return with_checksum(whole, 32)


def fadt(facs: int, dsdt: int, *, x_dsdt: int = 0, length: int = 116) -> bytes:
    body = bytearray(length - HEADER.size)
    struct.pack_into("<II", body, 0, facs, dsdt)
    # As SeaBIOS's: SCI 9, the ICH9 PM block at 0x600, PM timer 4 bytes.
    struct.pack_into("<HB", body, 46 - HEADER.size, 9, 0)
    struct.pack_into("<III", body, 56 - HEADER.size, 0x600, 0, 0x604)
    struct.pack_into("<I", body, 76 - HEADER.size, 0x608)
    struct.pack_into("<BBBB", body, 88 - HEADER.size, 4, 2, 0, 4)
    if length >= 148:
        struct.pack_into("<Q", body, 140 - HEADER.size, x_dsdt)
    return sdt(b"FACP", bytes(body), revision=1 if length == 116 else 3)


def facs() -> bytes:
    return b"FACS" + struct.pack("<I", 64) + bytes(56)


def madt() -> bytes:
    local_apic = struct.pack("<BBBBI", 0, 8, 0, 0, 1)
    io_apic = struct.pack("<BBBBII", 1, 12, 0, 0, 0xFEC00000, 0)
    return sdt(b"APIC", struct.pack("<II", 0xFEE00000, 1) + local_apic + io_apic)


def mcfg() -> bytes:
    allocation = struct.pack("<QHBBI", layout.ECAM_BASE, 0, 0, 255, 0)
    return sdt(b"MCFG", bytes(8) + allocation)


def lay_out(memory: SparseMemory, address: int, tables: list[bytes]) -> list[int]:
    """Places tables one after another from ``address``, 64-byte aligned; their addresses."""
    addresses = []
    for table in tables:
        memory.put(address, table)
        addresses.append(address)
        address += (len(table) + 63) // 64 * 64
    return addresses


def seabios_like(memory: SparseMemory) -> dict[str, bytes]:
    """RSDP (revision 0, F segment) -> RSDT -> FACP (-> FACS, DSDT), APIC, SSDT, MCFG, SSDT;
    the tables by the names the dump gives them."""
    dsdt, ssdt_a, ssdt_b = sdt(b"DSDT", AML_NAME), sdt(b"SSDT", AML_NAME), sdt(b"SSDT", b"")
    facs_at, dsdt_at = lay_out(memory, TABLES, [facs(), dsdt])
    listed = [fadt(facs_at, dsdt_at), madt(), ssdt_a, mcfg(), ssdt_b]
    addresses = lay_out(memory, TABLES + 0x1000, listed)
    rsdt = sdt(b"RSDT", b"".join(a.to_bytes(4, "little") for a in addresses))
    rsdt_at = TABLES + 0x8000
    memory.put(rsdt_at, rsdt)
    memory.put(F_SEGMENT_RSDP, rsdp(rsdt_at))
    return {
        "RSDT": rsdt,
        "FACP": listed[0],
        "FACS": facs(),
        "DSDT": dsdt,
        "APIC": listed[1],
        "SSDT1": ssdt_a,
        "MCFG": listed[3],
        "SSDT2": ssdt_b,
    }


def test_follows_rsdt_and_fadt() -> None:
    memory = SparseMemory()
    expected = seabios_like(memory)
    found = read_acpi_tables(memory.read)
    assert found.problems == []
    assert found.rsdp is not None and found.rsdp.address == F_SEGMENT_RSDP
    assert found.rsdp.data == rsdp(TABLES + 0x8000) and found.rsdp.checksum_ok
    assert list(found.by_name().items()) == list(expected.items())
    facs_table = next(table for table in found.tables if table.signature == "FACS")
    assert facs_table.checksum_ok is None  # the FACS has no checksum
    assert all(table.checksum_ok for table in found.tables if table.signature != "FACS")


def test_search_order_ebda_first_kib_then_bios_area() -> None:
    memory = SparseMemory()
    seabios_like(memory)
    rsdt_at = TABLES + 0x8000
    memory.put(EBDA + 0x400, rsdp(rsdt_at))  # past the EBDA's first KiB: not looked at
    memory.put(EBDA + 0x18, rsdp(rsdt_at))  # not on a 16-byte boundary
    broken = bytearray(rsdp(rsdt_at))
    broken[9] ^= 1
    memory.put(EBDA + 0x20, bytes(broken))
    found = read_acpi_tables(memory.read)
    assert found.rsdp is not None and found.rsdp.address == F_SEGMENT_RSDP
    assert found.problems == [f"RSDP candidate at {EBDA + 0x20:#x}: bad checksum"]
    memory.put(EBDA + 0x30, rsdp(rsdt_at))
    found = read_acpi_tables(memory.read)
    assert found.rsdp is not None and found.rsdp.address == EBDA + 0x30


def test_xsdt_and_x_fields_win() -> None:
    memory = SparseMemory()
    old_dsdt, new_dsdt = sdt(b"DSDT", b""), sdt(b"DSDT", AML_NAME, revision=2)
    facs_at, old_at, new_at = lay_out(memory, TABLES, [facs(), old_dsdt, new_dsdt])
    (facp_at,) = lay_out(
        memory, TABLES + 0x1000, [fadt(facs_at, old_at, x_dsdt=new_at, length=244)]
    )
    xsdt = sdt(b"XSDT", facp_at.to_bytes(8, "little"))
    rsdt = sdt(b"RSDT", facp_at.to_bytes(4, "little"))
    memory.put(TABLES + 0x8000, xsdt)
    memory.put(TABLES + 0x9000, rsdt)
    memory.put(F_SEGMENT_RSDP, rsdp(TABLES + 0x9000, xsdt=TABLES + 0x8000))
    found = read_acpi_tables(memory.read)
    assert found.problems == []
    assert [t.signature for t in found.tables] == ["XSDT", "FACP", "FACS", "DSDT", "RSDT"]
    assert found.by_name()["DSDT"] == new_dsdt
    assert found.rsdp is not None and len(found.rsdp.data) == RSDP_V2.size


def test_bad_checksum_and_bad_pointer_are_reported_not_fatal() -> None:
    memory = SparseMemory()
    expected = seabios_like(memory)
    apic_at = next(t.address for t in read_acpi_tables(memory.read).tables if t.signature == "APIC")
    memory.put(apic_at + 40, b"\x07")  # MADT flags 1 -> 7: the sum grows by 6
    rsdt_at = TABLES + 0x8000
    rsdt = sdt(b"RSDT", memory.read(rsdt_at + HEADER.size, 20) + (0xDEAD0000).to_bytes(4, "little"))
    memory.put(rsdt_at, rsdt)
    memory.put(F_SEGMENT_RSDP, rsdp(rsdt_at))
    found = read_acpi_tables(memory.read)
    assert found.problems[0] == f"APIC at {apic_at:#x}: checksum leaves 0x06, not 0"
    assert found.problems[1].startswith("RSDT entry 5 at 0xdead0000: unreadable")
    assert len(found.problems) == 2
    assert set(found.by_name()) == set(expected)
    apic = next(t for t in found.tables if t.signature == "APIC")
    assert apic.checksum_ok is False and apic.data[40] == 7


def test_no_rsdp() -> None:
    found = read_acpi_tables(SparseMemory().read)
    assert found.tables == [] and found.rsdp is None
    assert found.problems == ["no RSDP in the EBDA's first KiB nor in 0xe0000-0xfffff"]


def test_write_tables_names_files(tmp_path: Path) -> None:
    memory = SparseMemory()
    seabios_like(memory)
    paths = read_acpi_tables(memory.read).write_tables(tmp_path / "acpi")
    names = ["RSDT", "FACP", "FACS", "DSDT", "APIC", "SSDT1", "MCFG", "SSDT2"]
    assert [path.name for path in paths] == ["RSDP.bin"] + [f"{name}.dat" for name in names]
    assert (tmp_path / "acpi" / "RSDP.bin").read_bytes() == rsdp(TABLES + 0x8000)
    assert (tmp_path / "acpi" / "FACS.dat").read_bytes() == facs()


def test_iasl_disassembles_the_written_tables(tmp_path: Path) -> None:
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.skip("iasl is absent (Debian package acpica-tools)")
    memory = SparseMemory()
    seabios_like(memory)
    read_acpi_tables(memory.read).write_tables(tmp_path)
    for path in sorted(tmp_path.glob("*.dat")):
        run = subprocess.run(
            [iasl, "-d", path.name], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        said = run.stdout + run.stderr
        assert run.returncode == 0, said
        assert "Error" not in said and "Invalid" not in said, said
        listing = path.with_suffix(".dsl").read_text()
        assert f'"{path.stem[:4]}"' in listing, listing
    mcfg = (tmp_path / "MCFG.dsl").read_text()
    assert f"Base Address : {layout.ECAM_BASE:016X}" in mcfg
