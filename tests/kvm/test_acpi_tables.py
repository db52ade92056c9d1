"""pcihole's ACPI tables, installed by Debian's SeaBIOS and read back from guest memory,
against the tables QEMU 7.2 builds for its own q35 (read from a running QEMU's RAM).

Judged by QEMU: the MCFG, the MADT and the WAET byte for byte; the FADT byte for byte but
its pointers, against QEMU's ``pc-q35-5.2`` (whose ICH9 switches ACPI mode through the
APM port, as pcihole's PM block does) and, but the SMI fields, against the default ``q35``
(without SMM on a host whose KVM has none, QEMU 7.2 says SMI_CMD 0 there); the DSDT's
ECAM reservation, \\_S5, fw_cfg, the host bridge's _CRS and _OSC (``pc-q35-5.2``'s) and
the ISA devices' resources as iasl disassembles them. Skips only when SeaBIOS, QEMU or
iasl are absent, and says which.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.acpi.tables import FADT_POINTERS
from pcihole.arch.x86.acpi import AcpiTables, read_acpi_tables
from pcihole.kvm import Kvm
from pcihole.measure.qemu import SEABIOS
from pcihole.pci.topology import Topology
from pcihole.q35.machine import Q35Machine
from tests.seabios_ref import (
    MARKER,
    iasl_missing_reason,
    qemu_acpi_tables,
    qemu_missing_reason,
    seabios_missing_reason,
)
from tests.support import FIRMWARE_SECONDS, HANG_SECONDS, run_firmware, run_pcihole

SMI_FIELDS = slice(48, 54)
"""SMI_CMD, ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT: follow QEMU's SMM."""
OURS = {"RSDT", "FACP", "FACS", "DSDT", "APIC", "MCFG", "WAET"}


@pytest.fixture(scope="module")
def needs() -> None:
    for reason in (seabios_missing_reason(), qemu_missing_reason(), iasl_missing_reason()):
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(scope="module")
def qemu(needs: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, AcpiTables]:
    """QEMU's tables for its default ``q35`` and for ``pc-q35-5.2``."""
    directory = tmp_path_factory.mktemp("qemu")
    return {machine: qemu_acpi_tables(machine, directory) for machine in ("q35", "pc-q35-5.2")}


@pytest.fixture(scope="module")
def ours(kvm: Kvm, needs: None) -> AcpiTables:
    topology = Topology.build([], layout.ECAM_MAX_BUSES)
    with Q35Machine(kvm, SEABIOS.read_bytes(), topology, until=MARKER.encode()) as machine:
        result = run_firmware(machine)
        assert result.ending is not None and MARKER in result.ending.reason, result.text[-2000:]
        return read_acpi_tables(machine.read_memory)


def unpointed(fadt: bytes) -> bytes:
    """The FADT without its checksum and the pointers the loader filled."""
    data = bytearray(fadt)
    data[9] = 0
    for pointer in FADT_POINTERS:
        data[pointer.offset : pointer.offset + pointer.size] = bytes(pointer.size)
    return bytes(data)


def test_seabios_installs_our_tables(ours: AcpiTables) -> None:
    assert ours.problems == []
    assert ours.rsdp is not None
    assert layout.BIOS_AREA_START <= ours.rsdp.address < layout.BIOS_AREA_END
    assert set(ours.by_name()) == OURS
    assert not any(t.signature in ("SSDT", "HPET") for t in ours.tables), "SeaBIOS's own"


def test_tables_are_qemus(ours: AcpiTables, qemu: dict[str, AcpiTables]) -> None:
    theirs, legacy = qemu["q35"], qemu["pc-q35-5.2"]
    assert theirs.problems == [] and legacy.problems == []
    mine, q35, q35_52 = ours.by_name(), theirs.by_name(), legacy.by_name()
    assert set(q35) - set(mine) == {"HPET"}  # pcihole has no HPET
    for name in ("MCFG", "APIC", "WAET"):
        assert mine[name] == q35[name], name
    assert unpointed(mine["FACP"]) == unpointed(q35_52["FACP"])
    without_smi = [bytearray(unpointed(t["FACP"])) for t in (mine, q35)]
    for fadt in without_smi:
        fadt[SMI_FIELDS] = bytes(6)
    assert without_smi[0] == without_smi[1]
    assert mine["FACP"][48:54] == bytes([0xB2, 0, 0, 0, 2, 3])


def disassembled(data: bytes, directory: Path, name: str) -> str:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.dat").write_bytes(data)
    run = subprocess.run(
        ["iasl", "-d", f"{name}.dat"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return (directory / f"{name}.dsl").read_text()


def block(text: str, opening: str, holding: str = "") -> str:
    """The first block from a line with ``opening`` to the brace that closes what it
    opens that holds ``holding``, stripped of indentation (nesting depths may differ)."""
    lines = text.splitlines()
    for start in (index for index, line in enumerate(lines) if opening in line):
        depth, taken = 0, []
        for line in lines[start:]:
            taken.append(line.strip())
            depth += line.count("{") - line.count("}")
            if depth == 0 and "}" in line:
                break
        found = "\n".join(taken)
        if holding in found:
            return found
    raise AssertionError(f"no {opening!r} block holding {holding!r}")


def test_dsdt_parts_are_qemus(
    ours: AcpiTables, qemu: dict[str, AcpiTables], tmp_path: Path
) -> None:
    mine = disassembled(ours.by_name()["DSDT"], tmp_path / "ours", "DSDT")
    q35 = disassembled(qemu["q35"].by_name()["DSDT"], tmp_path / "qemu", "DSDT")
    q35_52 = disassembled(qemu["pc-q35-5.2"].by_name()["DSDT"], tmp_path / "qemu52", "DSDT")
    assert block(mine, "Method (_OSC") == block(q35_52, "Method (_OSC")
    # The ECAM reservation Linux looks for, \_S5, the host bridge's windows.
    for opening in ("Device (DRAC)", "Name (_S5,", "Device (FWCF)"):
        assert block(mine, opening) == block(q35, opening), opening
    windows = [block(text, "Name (_CRS", "WordBusNumber") for text in (mine, q35)]
    assert windows[0] == windows[1]
    for device in ("Device (KBD)", "Device (MOU)", "Device (RTC)"):
        assert block(block(mine, device), "Name (_CRS") == block(block(q35, device), "Name (_CRS")
    assert 'Name (_HID, EisaId ("PNP0A08")' in mine


@pytest.mark.parametrize("acpi", ["on", "off"])
def test_acpi_switch_chooses_whose_tables(needs: None, tmp_path: Path, acpi: str) -> None:
    """``--acpi off`` is QEMU's ``acpi=off``: SeaBIOS builds its own tables (an SSDT among
    them, no WAET; no HPET table either, as it finds no HPET here); ``on`` serves pcihole's."""
    dump = tmp_path / "acpi"
    done = run_pcihole(
        "boot",
        "--acpi",
        acpi,
        "--until",
        MARKER,
        "--acpi-dump",
        str(dump),
        "--debugcon",
        str(tmp_path / "log"),
        "--timeout",
        str(FIRMWARE_SECONDS),
    )
    assert done.returncode == 0, done.stderr
    names = {path.stem for path in dump.glob("*.dat")}
    if acpi == "on":
        assert names == OURS
    else:
        assert {"SSDT", "FACP", "DSDT", "MCFG"} <= names and not {"WAET", "HPET"} & names
