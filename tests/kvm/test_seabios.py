"""Debian's SeaBIOS, unchanged, under pcihole and under QEMU 7.2 q35 with the same topology.

Under both it reaches ``No bootable device.``, and what it says of PCI (how many functions
it found, every BAR it mapped, every function it initialised) is the same line for line.
Its ACPI tables, dumped from guest memory after the run, disassemble with ``iasl -d``
and their MCFG names the ECAM window pcihole decoded. Skips only when SeaBIOS, QEMU or
iasl are absent, and says which.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.kvm import Kvm
from pcihole.measure.qemu import ROOT_PORTS_QEMU
from pcihole.pci.topology import Topology
from pcihole.q35 import BootResult, Q35Machine
from tests.seabios_ref import (
    MARKER,
    SEABIOS,
    SeabiosReference,
    iasl_missing_reason,
    pci_lines,
    qemu_missing_reason,
    seabios_missing_reason,
)
from tests.support import FIRMWARE_SECONDS, HANG_SECONDS, run_firmware, run_pcihole


def _root_ports(order: tuple[int, int, int]) -> list[str]:
    """Three root ports leading to buses ``order`` and a device behind each, as QEMU's."""
    first, second, third = order
    return [
        f"00:1c.0=root-port,bus={first},chassis=1",
        f"00:1c.1=root-port,bus={second},chassis=2",
        f"00:1c.2=root-port,bus={third},chassis=3",
        f"{first:02x}:00.0=virtio-net",
        f"{second:02x}:00.0=virtio-blk",
        f"{third:02x}:00.0=nvme",
    ]


TOPOLOGIES = {
    "q35-builtins": ([], ["-nodefaults"]),
    "root-ports": (_root_ports((1, 2, 3)), ["-nodefaults", *ROOT_PORTS_QEMU]),
    # pcihole builds the ports leading to buses 3, 1, 2; SeaBIOS numbers them 1, 2, 3
    # depth-first, and the devices behind them must follow (guest-assigned bus numbers).
    "renumbered": (_root_ports((3, 1, 2)), ["-nodefaults", *ROOT_PORTS_QEMU]),
}


@pytest.fixture(scope="module")
def seabios() -> bytes:
    reason = seabios_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return SEABIOS.read_bytes()


def boot_seabios(kvm: Kvm, image: bytes, devices: list[str]) -> BootResult:
    """SeaBIOS under pcihole until ``No bootable device.`` (or the firmware guard)."""
    topology = Topology.build(devices, layout.ECAM_MAX_BUSES)
    with Q35Machine(kvm, image, topology, until=MARKER.encode()) as machine:
        return run_firmware(machine)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_seabios_sees_the_pci_topology_qemu_shows_it(kvm: Kvm, seabios: bytes, name: str) -> None:
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    devices, qemu_args = TOPOLOGIES[name]
    with SeabiosReference(qemu_args) as qemu:  # QEMU boots beside pcihole (or is cached)
        result = boot_seabios(kvm, seabios, devices)
        reference = qemu.log()
    assert result.ending is not None and MARKER in result.ending.reason, result.text[-3000:]
    assert result.status == 0
    expected = pci_lines(reference)
    assert expected and expected[0].startswith("Found ")
    assert pci_lines(result.text) == expected


def test_acpi_tables_disassemble_and_mcfg_names_the_window(seabios: bytes, tmp_path: Path) -> None:
    reason = iasl_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    dump, stats = tmp_path / "acpi", tmp_path / "stats.json"
    done = run_pcihole(
        "boot",
        "--until",
        MARKER,
        "--debugcon",
        str(tmp_path / "log"),
        "--acpi-dump",
        str(dump),
        "--stats",
        str(stats),
        "--timeout",
        str(FIRMWARE_SECONDS),
    )
    assert done.returncode == 0, done.stderr
    tables = sorted(path.name for path in dump.glob("*.dat"))
    for needed in ("APIC.dat", "DSDT.dat", "FACP.dat", "MCFG.dat", "RSDT.dat"):
        assert needed in tables
    for table in tables:
        disassembled = subprocess.run(
            ["iasl", "-d", table], cwd=dump, capture_output=True, text=True, timeout=HANG_SECONDS
        )
        assert disassembled.returncode == 0, disassembled.stdout + disassembled.stderr
    mcfg = (dump / "MCFG.dsl").read_text()
    window = json.loads(stats.read_text())["window"]
    assert window["base"] == layout.ECAM_BASE
    assert f"Base Address : {window['base']:016X}" in mcfg
    assert "Start Bus Number : 00" in mcfg
    assert f"End Bus Number : {window['buses'] - 1:02X}" in mcfg
