"""The q35 ACPI files: the loader run here as SeaBIOS runs it (romfile_loader.c), the tables
read back by pcihole's own reader, iasl as the judge of every table."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.acpi.loader import Command, Linker, Zone, decode
from pcihole.acpi.q35 import Q35Acpi, q35_acpi_files
from pcihole.acpi.tables import LOADER_FILE, RSDP_FILE, TABLES_FILE
from pcihole.arch.x86.acpi import HEADER, AcpiTables, checksum, read_acpi_tables
from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.arch.x86.e820 import Q35Ram
from tests.seabios_ref import iasl_missing_reason
from tests.support import HANG_SECONDS

GiB = 1 << 30
HIGH_ADDRESS = 0x7FE0000
"""Where this loader puts HIGH allocations (SeaBIOS: just below the top of low RAM)."""
FSEG_ADDRESS = 0xF6700
INTEL = VcpuIdentity("GenuineIntel", 39)
NAMES = {"RSDT", "FACP", "FACS", "DSDT", "APIC", "MCFG", "WAET"}


class Memory:
    """The BIOS data area, the BIOS area and high memory, as the loader and reader see them."""

    def __init__(self) -> None:
        self.regions = {
            0: bytearray(0x1000),
            layout.BIOS_AREA_START: bytearray(0x20000),
            HIGH_ADDRESS: bytearray(0x20000),
        }

    def _find(self, address: int, length: int) -> tuple[bytearray, int]:
        for base, data in self.regions.items():
            if base <= address and address + length <= base + len(data):
                return data, address - base
        raise ValueError(f"{address:#x} is not memory here")

    def read(self, address: int, length: int) -> bytes:
        data, offset = self._find(address, length)
        return bytes(data[offset : offset + length])

    def write(self, address: int, blob: bytes) -> None:
        data, offset = self._find(address, len(blob))
        data[offset : offset + len(blob)] = blob


def run_loader(files: dict[str, bytes], memory: Memory) -> dict[str, int]:
    """What SeaBIOS's romfile_loader does with ``etc/table-loader``: returns each file's
    address. Written from the command definitions, not from pcihole's linker."""
    placed: dict[str, int] = {}
    zones = {Zone.HIGH: HIGH_ADDRESS, Zone.FSEG: FSEG_ADDRESS}
    for command in decode(files[LOADER_FILE]):
        if command.command is Command.ALLOCATE:
            align, zone = command.values
            address = zones[Zone(zone)]
            assert address % align == 0
            placed[command.file] = address
            memory.write(address, files[command.file])
        elif command.command is Command.ADD_POINTER:
            offset, size = command.values
            where = placed[command.file] + offset
            value = int.from_bytes(memory.read(where, size), "little") + placed[command.source]
            memory.write(where, value.to_bytes(size, "little"))
        else:
            offset, start, length = command.values
            base = placed[command.file]
            old = memory.read(base + offset, 1)[0]
            fixed = (old - checksum(memory.read(base + start, length))) & 0xFF
            memory.write(base + offset, bytes([fixed]))
    return placed


def loaded(config: Q35Acpi) -> AcpiTables:
    memory = Memory()
    run_loader(q35_acpi_files(config), memory)
    return read_acpi_tables(memory.read)


def small_machine(buses: int = 256, ram: int = 128 << 20) -> Q35Acpi:
    return Q35Acpi.for_machine(buses, Q35Ram.for_vcpu(ram, INTEL))


def test_files_have_qemus_names_and_sizes() -> None:
    files = q35_acpi_files(small_machine())
    assert {name: len(data) for name, data in files.items()} == {
        RSDP_FILE: 20,
        TABLES_FILE: 128 << 10,
        LOADER_FILE: 4096,
    }


def test_loader_places_and_links_every_table() -> None:
    found = loaded(small_machine())
    assert found.problems == []
    assert found.rsdp is not None and found.rsdp.address == FSEG_ADDRESS
    assert found.rsdp.data[15] == 0  # revision 0: ACPI 1.0, an RSDT and no XSDT
    assert set(found.by_name()) == NAMES
    assert all(table.checksum_ok is not False for table in found.tables)
    assert found.tables[0].signature == "RSDT"


def test_every_table_disassembles(tmp_path: Path) -> None:
    reason = iasl_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    loaded(small_machine()).write_tables(tmp_path)
    for path in sorted(tmp_path.glob("*.dat")):
        run = subprocess.run(
            ["iasl", "-d", path.name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
        )
        said = run.stdout + run.stderr
        assert run.returncode == 0 and "Error" not in said and "Warning" not in said, said
    mcfg = (tmp_path / "MCFG.dsl").read_text()
    assert f"Base Address : {layout.ECAM_BASE:016X}" in mcfg
    assert "End Bus Number : FF" in mcfg


def test_commands_keep_firmwares_order() -> None:
    """Allocations first; each table's pointers before its checksum, which covers the
    length its header gives."""
    files = q35_acpi_files(small_machine())
    commands = decode(files[LOADER_FILE])
    assert [c.command for c in commands[:2]] == [Command.ALLOCATE, Command.ALLOCATE]
    assert all(c.command is not Command.ALLOCATE for c in commands[2:])
    blob = files[TABLES_FILE]
    summed: list[tuple[int, int]] = []
    for command in commands[2:]:
        if command.command is Command.ADD_CHECKSUM and command.file == TABLES_FILE:
            offset, start, length = command.values
            assert offset == start + 9
            assert HEADER.unpack_from(blob, start)[1] == length
            summed.append((start, start + length))
        elif command.command is Command.ADD_POINTER and command.file == TABLES_FILE:
            offset = command.values[0]
            assert not any(begin <= offset < end for begin, end in summed), "after its checksum"


def test_mcfg_and_windows_follow_the_machine() -> None:
    """64 buses: the MCFG ends at bus 0x3f and DRAC reserves 64 MiB; 3 GiB of RAM: 2 GiB
    below 4 GiB, and the 64-bit window starts at the next GiB after RAM above 4 GiB."""
    config = small_machine(buses=64, ram=3 * GiB)
    tables = loaded(config).by_name()
    base, segment, first, last = struct.unpack_from("<QHBB", tables["MCFG"], 44)
    assert (base, segment, first, last) == (layout.ECAM_BASE, 0, 0, 0x3F)
    dsdt = tables["DSDT"]
    ecam = struct.pack(
        "<IIIII", 0, layout.ECAM_BASE, layout.ECAM_BASE + (64 << 20) - 1, 0, 64 << 20
    )
    assert ecam in dsdt
    below = struct.pack("<IIIII", 0, 2 * GiB, layout.ECAM_BASE - 1, 0, layout.ECAM_BASE - 2 * GiB)
    assert below in dsdt
    after_ecam = layout.ECAM_BASE + (64 << 20)
    above = struct.pack(
        "<IIIII", 0, after_ecam, layout.IOAPIC_ADDR - 1, 0, layout.IOAPIC_ADDR - after_ecam
    )
    assert above in dsdt
    hole64 = struct.pack("<QQQQQ", 0, 5 * GiB, 37 * GiB - 1, 0, 32 * GiB)
    assert hole64 in dsdt
    assert config.hole64 == (5 * GiB, 37 * GiB - 1)


def test_madt_lists_each_cpu() -> None:
    config = Q35Acpi.for_machine(256, Q35Ram.for_vcpu(128 << 20, INTEL), cpus=3)
    madt = loaded(config).by_name()["APIC"]
    entries, offset = [], 44
    while offset < len(madt):
        entries.append(madt[offset])
        offset += madt[offset + 1]
    assert entries == [0, 0, 0, 1, 2, 2, 2, 2, 2, 4]  # 3 LAPICs, IOAPIC, 5 overrides, NMI


@pytest.mark.parametrize("buses", [0, 257])
def test_bus_counts_outside_a_window_are_refused(buses: int) -> None:
    with pytest.raises(ValueError, match="buses"):
        q35_acpi_files(Q35Acpi(buses=buses, ram_below_4g=128 << 20, hole64=None))


def test_linker_refuses_what_firmware_cannot_do() -> None:
    linker = Linker()
    with pytest.raises(ValueError):
        linker.allocate("x", 3, Zone.HIGH)
    with pytest.raises(ValueError):
        linker.add_pointer("x", 0, 3, "y")
    with pytest.raises(ValueError):
        linker.add_checksum("x", 40, 0, 36)
    with pytest.raises(ValueError):
        linker.allocate("n" * 56, 16, Zone.FSEG)
