"""The lspci dump: its format, and what real ``lspci -F`` decodes from it."""

from __future__ import annotations

import re
from pathlib import Path

from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import BAR0, COMMAND
from pcihole.pci.devices import Function
from pcihole.pci.lspci import format_function, format_lspci_dump
from pcihole.pci.topology import Topology
from tests.lspci_judge import needs_lspci, run_lspci, section


def parse_dump(text: str) -> dict[str, bytes]:
    """Read a dump back the way pciutils' lib/dump.c does (title line, offset lines)."""
    devices: dict[str, bytearray] = {}
    current: bytearray | None = None
    for line in text.split("\n"):
        if re.match(r"[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] ", line):
            current = devices.setdefault(line[:7], bytearray(b"\xff" * 4096))
        elif not line:
            current = None
        else:
            assert current is not None, line
            offset, _, data = line.partition(": ")
            values = bytes(int(byte, 16) for byte in data.split(" "))
            start = int(offset, 16)
            current[start : start + len(values)] = values
    return {bdf: bytes(data) for bdf, data in devices.items()}


def test_format() -> None:
    topology = Topology.default(3)
    host = topology.get(Bdf(0, 0, 0))
    assert host is not None
    lines = format_function(host).splitlines()
    assert lines[0] == (
        "00:00.0 Host bridge: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller"
    )
    assert lines[1].startswith("00: 86 80 c0 29 00 00 00 00 00 00 00 06 ")
    assert lines[17].startswith("100: ")
    assert lines[-1].startswith("ff0: ")
    assert len(lines) == 1 + 4096 // 16
    assert all(len(line.split(": ")[1].split(" ")) == 16 for line in lines[1:])
    lpc = topology.get(Bdf(0, 0x1F, 0))
    assert lpc is not None and format_function(lpc).startswith(
        "00:1f.0 ISA bridge: Intel Corporation 82801IB (ICH9) LPC Interface Controller (rev 02)\n"
    )


def test_dump_round_trips() -> None:
    topology = Topology.default(3)
    dump = format_lspci_dump(topology)
    assert dump.endswith("\n\n") and "\n\n\n" not in dump
    assert parse_dump(dump) == {str(f.bdf): f.config.snapshot() for f in topology}


# -- real lspci ----------------------------------------------------------------------------


def lspci(functions: list[Function] | Topology, tmp_path: Path, *options: str) -> str:
    return run_lspci(format_lspci_dump(functions), tmp_path, *options)


@needs_lspci
def test_lspci_prints_our_dump_back(tmp_path: Path) -> None:
    topology = Topology.default(3)
    ours = format_lspci_dump(topology)
    theirs = lspci(topology, tmp_path, "-xxxx")
    # Names come from the installed pci.ids; the bytes and addresses must match exactly.
    strip_names = re.compile(r"^(\S\S:\S\S\.\S) .*$", re.MULTILINE)
    assert strip_names.sub(r"\1", theirs) == strip_names.sub(r"\1", ours)


@needs_lspci
def test_lspci_ids(tmp_path: Path) -> None:
    output = lspci(Topology.default(3), tmp_path, "-n")
    assert output.splitlines() == [
        "00:00.0 0600: 8086:29c0",
        "00:1c.0 0604: 1b36:000c",
        "00:1c.1 0604: 1b36:000c",
        "00:1f.0 0601: 8086:2918 (rev 02)",
        "00:1f.2 0106: 8086:2922 (rev 02)",
        "00:1f.3 0c05: 8086:2930 (rev 02)",
        "01:00.0 0200: 1af4:1041 (rev 01)",
        "02:00.0 0108: 1b36:0010 (rev 02)",
    ]


@needs_lspci
def test_lspci_tree(tmp_path: Path) -> None:
    tree = lspci(Topology.default(3), tmp_path, "-t")
    assert "+-1c.0-[01]----00.0" in tree
    assert "+-1c.1-[02]----00.0" in tree
    assert "\\-1f.3" in tree


@needs_lspci
def test_lspci_decodes_bridges_and_capabilities(tmp_path: Path) -> None:
    topology = Topology.default(3)
    output = lspci(topology, tmp_path, "-vvv")
    port = section(output, "00:1c.1")
    assert "Bus: primary=00, secondary=02, subordinate=02" in port
    assert "Express (v2) Root Port (Slot+)" in port
    assert "SltCap:\tAttnBtn+ PwrCtrl+ MRL- AttnInd+ PwrInd+ HotPlug+ Surprise+" in port
    assert "Slot #1" in port
    # Cold plug as on QEMU q35 (ACPI hot-plug): slot powered, presence bits clear.
    assert "PresDet-" in port and "DLActive-" in port and "PwrCtrl-" not in port
    assert "MSI-X: Enable- Count=1" in port
    assert "Power Management" not in port
    assert "[100 v2] Advanced Error Reporting" in port
    assert "[148 v1] Access Control Services" in port
    assert "RootCmd:" in port
    assert "Memory behind bridge" in port and "[disabled]" in port

    net = section(output, "01:00.0")
    assert "Express (v2) Endpoint" in net
    assert "MSI-X: Enable- Count=4 Masked-" in net
    assert "Region 4: Memory at <unassigned> (64-bit, prefetchable)" in net
    assert "VirtIO: CommonCfg" in net and "VirtIO: Notify" in net
    assert "Subsystem: Red Hat, Inc." in net

    nvme = section(output, "02:00.0")
    assert "Count=65" in nvme and "Advanced Error Reporting" not in nvme

    ahci = section(output, "00:1f.2")
    assert "MSI: Enable- Count=1/1 Maskable- 64bit+" in ahci


@needs_lspci
def test_lspci_sees_guest_writes(tmp_path: Path) -> None:
    """Program the registers like a guest would, then check lspci decodes the new state."""
    topology = Topology.build(
        ["00:00.0=host-bridge", "00:02.0=nvme", "00:1c.0=root-port,bus=1", "01:00.0=virtio-net"],
        2,
    )
    nvme = topology.config_at(Bdf(0, 2, 0))
    net = topology.config_at(Bdf(1, 0, 0))
    assert nvme is not None and net is not None
    nvme.write(BAR0, 4, 0xFEB00000)
    nvme.write(BAR0 + 4, 4, 0)
    nvme.write(COMMAND, 2, 0x0006)
    pm = nvme.find_capability(caps.CapabilityId.POWER_MANAGEMENT)
    assert pm is not None
    nvme.write(pm + caps.PM_CONTROL_STATUS, 2, 3)  # D3hot
    caps.record_unsupported_request(nvme)
    net.write(BAR0 + 4, 4, 0xFEA00000)  # BAR 1: MSI-X
    net.write(BAR0 + 16, 8, 0x8_0000_0000)  # BAR 4, 64-bit
    msix = net.find_capability(caps.CapabilityId.MSIX)
    assert msix is not None
    net.write(msix + 2, 2, 0x8000)

    output = lspci(topology, tmp_path, "-vvv")
    integrated = section(output, "00:02.0")
    assert "Express (v2) Root Complex Integrated Endpoint" in integrated
    assert "Region 0: Memory at feb00000 (64-bit, non-prefetchable)" in integrated
    assert "Control: I/O- Mem+ BusMaster+" in integrated
    assert "Status: D3 " in integrated
    assert "UnsupReq+" in integrated  # device status
    assert "LnkCap" not in integrated  # lspci shows no link for an integrated endpoint

    endpoint = section(output, "01:00.0")
    assert "Region 1: Memory at fea00000 (32-bit, non-prefetchable)" in endpoint
    assert "Region 4: Memory at 800000000 (64-bit, prefetchable)" in endpoint
    assert "MSI-X: Enable+ Count=4 Masked-" in endpoint
