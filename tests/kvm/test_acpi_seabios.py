"""The ACPI dumper on tables Debian's SeaBIOS builds itself, under QEMU, judged by iasl.

QEMU's ``acpi=off`` drops its own tables and their loader, as ``pcihole boot --acpi off``
does, so SeaBIOS builds FADT, MADT, HPET, MCFG, SSDT and DSDT itself: the tables ``pcihole
boot --acpi off --acpi-dump`` meets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from tests.seabios_ref import (
    iasl_missing_reason,
    qemu_acpi_tables,
    qemu_missing_reason,
    seabios_missing_reason,
)


def test_dump_of_seabios_tables_disassembles(tmp_path: Path) -> None:
    for reason in (qemu_missing_reason(), seabios_missing_reason(), iasl_missing_reason()):
        if reason is not None:
            pytest.skip(reason)
    found = qemu_acpi_tables("q35,acpi=off", tmp_path)
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
