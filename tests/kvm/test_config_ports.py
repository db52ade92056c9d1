"""``--config-ports firmware``: a real-mode guest probes type 1 as Linux's
pci_check_type1 does, fetches the kernel's setup item from fw_cfg, and probes again.

With ``always`` (QEMU's way) nothing changes; with ``firmware`` the second probe fails,
config data reads all ones and drops writes, while ECAM (checked through the machine's
MMIO bus afterwards, where the guest's ECAM accesses land) and reset control at 0xcf9 go
on. ``--stats`` says when the switch happened. SeaBIOS reaches the end of POST either way.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.kvm import Kvm
from pcihole.pci.bdf import Bdf
from pcihole.q35 import Q35Machine
from tests.kvm.test_q35_platform import HANG, config_write, image, out_dx
from tests.support import CHILD_ENV, HANG_SECONDS, REPO_ROOT, pcihole_command

SETUP_DATA = 0x17
LPC = Bdf(0, 0x1F, 0)
SEABIOS = Path("/usr/share/seabios/bios.bin")


def host_bridge_write(register: int, value: int) -> bytes:
    address = 0x8000_0000 | register
    return out_dx(0xCF8, address, 4) + out_dx(0xCFC, value, 4)


def show_al() -> bytes:
    """mov dx, 0x402; out dx, al."""
    return b"\xba\x02\x04\xee"


def probe() -> bytes:
    """Write 0x80000000 to CF8, read it back, print its top byte; then read 00:00.0's
    vendor ID through CFC and print its low byte."""
    back = out_dx(0xCF8, 0x8000_0000, 4) + b"\x66\xed" + b"\x66\xc1\xe8\x18" + show_al()
    vendor = out_dx(0xCF8, 0x8000_0000, 4) + b"\xba\xfc\x0c" + b"\x66\xed" + show_al()
    return back + vendor


def guest_code() -> bytes:
    return (
        host_bridge_write(0x64, 0)
        + host_bridge_write(0x60, layout.ECAM_BASE | 1)  # PCIEXBAR: ECAM at ECAM_BASE
        + probe()
        + out_dx(layout.FW_CFG_PORT, SETUP_DATA, 2)  # what linuxboot does first
        + probe()
        + config_write(0x40, 0x681, 4)  # LPC PMBASE: dropped once withdrawn
        + out_dx(0xCF9, 0x02, 1)
        + b"\xec"
        + show_al()  # in al, dx (dx = 0xcf9)
        + out_dx(0xF4, 0, 1)
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("always", b"\x80\x86\x80\x86\x02"), ("firmware", b"\x80\x86\xff\xff\x02")],
)
def test_config_ports_withdrawn_at_kernel_fetch(kvm: Kvm, mode: str, expected: bytes) -> None:
    with Q35Machine(kvm, image(guest_code() + HANG), config_ports=mode) as machine:
        result = machine.run()
        stats = machine.stats(result)
        ecam_vendor = machine.guest.mmio.read(layout.ECAM_BASE, 4)
        lpc = machine.topology.get(LPC)
        assert lpc is not None
        pmbase = lpc.config.read(0x40, 4)
    assert result.exit_value == 0, result.reason
    assert result.console == expected
    assert ecam_vendor == 0x29C08086  # the window the guest placed still answers
    ports = stats["config_ports"]
    assert ports["mode"] == mode
    if mode == "always":
        assert ports["withdrawn"] is None and pmbase == 0x681
        return
    assert pmbase & 0xFF80 == 0  # the PMBASE write never reached the LPC function
    withdrawn = ports["withdrawn"]
    assert withdrawn["selector"] == SETUP_DATA
    assert 0 < withdrawn["seconds"] <= stats["seconds"]
    assert 0 < withdrawn["exits"] < sum(stats["exit_counts"].values())
    assert ports["accesses_after_withdrawal"] == 4 + 2  # the probe; the PMBASE write


def test_seabios_posts_with_config_ports_firmware(tmp_path: Path) -> None:
    if not SEABIOS.exists():
        pytest.skip(f"no SeaBIOS at {SEABIOS} (package seabios)")
    stats_file = tmp_path / "stats.json"
    command = pcihole_command(
        "boot",
        "--config-ports",
        "firmware",
        "--until",
        "No bootable device.",
        "--stats",
        str(stats_file),
        "--debugcon",
        str(tmp_path / "debugcon"),
    )
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=CHILD_ENV, timeout=HANG_SECONDS, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(stats_file.read_text())
    assert stats["config_ports"] == {
        "mode": "firmware",
        "withdrawn": None,
        "accesses_after_withdrawal": 0,
    }
    assert stats["config_exits"]["legacy_ports"] > 0  # SeaBIOS did use CF8/CFC
