"""Debian's cloud kernel, unchanged, through ``pcihole boot --linux``: its own PCI view
against the topology pcihole built, with root ports and devices behind and beside them.

The view is read from the kernel's log (``guest.linux.klog``) at the end of its PCI
phase (``PCI: CLS``), where the run stops: on ``kvm_pvm`` hosts the initramfs's init dies
at its first system call, and stopping there keeps the test to a few minutes (PVH, the
initcalls ``--linux`` blacklists). One boot each; they need ``bash scripts/setup``'s
kernel cache.

With ``--config-ports firmware`` Linux finds no type 1 mechanism and must configure PCI
through ECAM alone, which it does only when ACPI reserves the ECAM window in a motherboard
device (QEMU's ``DRAC``, in pcihole's tables too).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pcihole.guest.linux import INITRAMFS_NAME, ROOT_PORT_DEVICES, VMLINUX_NAME, cache_dir
from pcihole.guest.linux.klog import PCI_PHASE_END, parse_kernel_log
from pcihole.guest.linux.view import compare
from pcihole.pci.bdf import Bdf
from pcihole.pci.topology import Topology
from tests.conftest import kvm_missing_reason
from tests.support import CHILD_ENV, REPO_ROOT, pcihole_command

DEVICES = ROOT_PORT_DEVICES
FIRMWARE_BRIDGE_BUSES = {Bdf(0, 0x1C, 0): (1, 1), Bdf(0, 0x1C, 1): (2, 2)}
"""What SeaBIOS numbers the two root ports (depth first, in slot order)."""
MARKS = ("Linux version", "PCI: MMCONFIG", "pci 0000:00:00.0", PCI_PHASE_END)
BOOT_SECONDS = 1200.0
"""Where the boot gives up: the end of the PCI phase took ~250-300 s here (2026-12-05),
with another guest busy on the other core; the margin is for a slower, busier host."""


def missing_reason() -> str | None:
    reason = kvm_missing_reason()
    if reason is not None:
        return reason
    missing = [n for n in (VMLINUX_NAME, INITRAMFS_NAME) if not (cache_dir() / n).is_file()]
    if missing:
        return f"no {', '.join(missing)} in {cache_dir()}: run bash scripts/setup"
    return None


needs_linux = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


def boot_linux(tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    """``boot --linux`` with ``DEVICES`` until the end of the PCI phase: the serial
    output and the stats; fails the test unless the run ended there with status 0."""
    stats_path, serial_path = tmp_path / "stats.json", tmp_path / "serial.txt"
    command = pcihole_command(
        "boot",
        "--linux",
        "--until",
        PCI_PHASE_END,
        "--stats",
        str(stats_path),
        "--serial",
        str(serial_path),
        "--timeout",
        str(BOOT_SECONDS),
        *(f"--mark={mark}" for mark in MARKS),
        *(f"--device={d}" for d in DEVICES),
        *extra,
    )
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        cwd=REPO_ROOT,
        timeout=BOOT_SECONDS + 60,
    )
    serial = serial_path.read_text(errors="replace")
    assert done.returncode == 0, f"{done.stderr}\n--- serial tail:\n{serial[-3000:]}"
    assert f"the serial port printed {PCI_PHASE_END!r}" in done.stderr
    stats = json.loads(stats_path.read_text())
    seen = stats["guest_pci_view"]  # pcihole's own comparison, judged by check_view too
    assert seen["source"] == "its kernel log" and seen["differences"] == []
    count = len(Topology.build(DEVICES, 256).functions)
    assert f"the guest sees {count} PCI functions (its kernel log): as pcihole built them" in (
        done.stderr
    )
    return serial, stats


def check_view(serial: str) -> None:
    """The kernel saw every function pcihole built (vendor, device, class) where it was
    built, and the bridges with the bus numbers firmware gave them."""
    view = parse_kernel_log(serial.splitlines())
    assert compare(view, Topology.build(DEVICES, 256).functions) == []
    bridges = {bdf: f.bridge_buses for bdf, f in view.functions.items() if f.bridge_buses}
    assert bridges == FIRMWARE_BRIDGE_BUSES


def check_account(serial: str, stats: dict[str, Any]) -> None:
    """Emulated instructions, the marks in boot order, and the host's command-line words
    in the line the kernel printed (the note says which, where the host needs any)."""
    emulated = stats["emulated_instructions"]
    assert sum(emulated.values()) == stats["exit_counts"].get("EmulationFailure", 0)
    assert [mark["mark"] for mark in stats["marks"]] == list(MARKS)
    seconds = [mark["seconds"] for mark in stats["marks"]]
    assert seconds == sorted(seconds) and seconds[-1] <= stats["seconds"]
    command_line = next(line for line in serial.splitlines() if "Command line:" in line)
    assert "earlyprintk=serial,ttyS0,115200" in command_line
    for note in stats["notes"]:
        if "kernel command line" in note:
            added = note.split("'")[1]
            assert all(word in command_line for word in added.split())


@needs_linux
def test_linux_sees_the_topology_pcihole_built(tmp_path: Path) -> None:
    serial, stats = boot_linux(tmp_path)
    check_view(serial)
    check_account(serial, stats)
    assert "PCI: Using configuration type 1 for base access" in serial


@needs_linux
def test_linux_configures_pci_through_ecam_alone_with_no_hole_exit(tmp_path: Path) -> None:
    serial, stats = boot_linux(tmp_path, "--config-ports", "firmware")
    check_view(serial)
    check_account(serial, stats)
    assert "PCI: Using configuration type 1" not in serial
    assert "PCI: MMCONFIG for domain 0000 [bus 00-ff]" in serial
    assert stats["config_ports"]["withdrawn"] is not None
    assert stats["config_exits"]["hole_reads"] == stats["config_exits"]["hole_writes"] == 0
