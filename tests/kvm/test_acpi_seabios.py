"""The ACPI dumper on tables Debian's SeaBIOS builds itself, under QEMU, judged by iasl.

QEMU's ``acpi=off`` drops its own tables and their loader, as ``pcihole boot --acpi off``
does, so SeaBIOS builds FADT, MADT, HPET, MCFG, SSDT and DSDT itself: the tables ``pcihole
boot --acpi off --acpi-dump`` meets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.arch.x86.acpi import read_acpi_tables
from pcihole.measure.qemu import SEABIOS, Qemu, qemu_missing_reason
from tests.support import FIRMWARE_SECONDS

RAM_SIZE = 128 << 20


def test_dump_of_seabios_tables_disassembles(tmp_path: Path) -> None:
    reason = qemu_missing_reason()
    if reason is None and not os.path.exists(SEABIOS):
        reason = f"{SEABIOS} is absent (Debian package seabios)"
    if reason is None and shutil.which("iasl") is None:
        reason = "iasl is absent (Debian package acpica-tools)"
    if reason is not None:
        pytest.skip(reason)
    image = tmp_path / "ram.bin"
    with Qemu(bios=SEABIOS, machine="q35,acpi=off", debugcon=True) as qemu:
        qemu.read_until(b"No bootable device.", FIRMWARE_SECONDS)
        qemu.command("stop")
        qemu.command("pmemsave", val=0, size=RAM_SIZE, filename=str(image))
    ram = image.read_bytes()

    def read(address: int, length: int) -> bytes:
        if address + length > len(ram):
            raise ValueError(f"{address:#x} is past the end of RAM")
        return ram[address : address + length]

    found = read_acpi_tables(read)
    assert found.problems == []
    assert found.rsdp is not None
    assert layout.BIOS_AREA_START <= found.rsdp.address < layout.BIOS_AREA_END
    names = set(found.by_name())
    assert {"RSDT", "FACP", "FACS", "DSDT", "APIC", "MCFG", "SSDT"} <= names
    dump = tmp_path / "acpi"
    found.write_tables(dump)
    for path in sorted(dump.glob("*.dat")):
        # The SSDT calls methods of the DSDT: iasl warns about them, and `-e DSDT.dat`
        # would resolve them, but iasl 20200925 then crashes on data tables.
        run = subprocess.run(
            ["iasl", "-d", path.name], cwd=dump, capture_output=True, text=True, check=False
        )
        said = run.stdout + run.stderr
        assert run.returncode == 0 and "Error" not in said, said
    mcfg = (dump / "MCFG.dsl").read_text()
    assert f"Base Address : {layout.ECAM_BASE:016X}" in mcfg
    assert "End Bus Number : FF" in mcfg
