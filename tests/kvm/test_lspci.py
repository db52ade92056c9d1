"""``pcihole lspci`` judged by the real ``lspci -F``: the model view and the VM view.

The VM view is what a ring-3 guest read through ECAM in a real VM; lspci must decode
identities, bridge bus numbers, BARs and capabilities from it, exactly as from the models.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcihole.cli import main
from pcihole.errors import BadInput
from pcihole.guest.lspci import (
    DUMP_ROOM,
    guest_config_pages,
    lspci_text,
)
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import BAR0, COMMAND
from pcihole.pci.lspci import format_lspci_dump, format_pages
from pcihole.pci.routing import route
from pcihole.pci.topology import Topology
from tests.lspci_judge import needs_lspci, run_lspci, section

CUSTOM = [
    "00:00.0=host-bridge",
    "00:02.0=nvme",
    "00:1c.0=root-port,bus=0x80,subordinate=0x81",
    "80:00.0=root-port,bus=0x81",
    "81:00.0=virtio-net",
    "81:00.3=virtio-blk",
    "00:1d.0=root-port,bus=0xff",
    "ff:1f.0=nvme",
    "00:1f.0=ich9-lpc",
    "00:1f.2=ich9-ahci",
]


lspci = run_lspci
DEFAULT_HEADS = [
    ("00:00.0", "00: 86 80 c0 29"),
    ("00:1c.0", "00: 36 1b 0c 00"),
    ("00:1c.1", "00: 36 1b 0c 00"),
    ("00:1f.0", "00: 86 80 18 29"),
    ("00:1f.2", "00: 86 80 22 29"),
    ("00:1f.3", "00: 86 80 30 29"),
    ("01:00.0", "00: f4 1a 41 10"),
    ("02:00.0", "00: 36 1b 10 00"),
]
"""The default topology's functions, in order, and the first bytes of each (its IDs)."""


@pytest.fixture(scope="module")
def default_views(kvm: Kvm) -> dict[str, str]:
    return {
        "model": lspci_text(None, 256, vm_view=False),
        "vm": lspci_text(None, 256, vm_view=True, kvm=kvm),
    }


@pytest.fixture(scope="module")
def custom_views(kvm: Kvm) -> dict[str, str]:
    return {
        "model": lspci_text(CUSTOM, 256, vm_view=False),
        "vm": lspci_text(CUSTOM, 256, vm_view=True, kvm=kvm),
    }


def test_vm_view_is_identical_to_the_model_view(
    default_views: dict[str, str], custom_views: dict[str, str]
) -> None:
    for views in (default_views, custom_views):
        assert views["vm"] == views["model"]
    blocks = default_views["model"].split("\n\n")
    assert blocks[-1] == ""  # every block ends with a blank line
    assert [(b.split()[0], b.splitlines()[1][:15]) for b in blocks[:-1]] == DEFAULT_HEADS
    assert all(len(block.splitlines()) == 1 + 4096 // 16 for block in blocks[:-1])
    assert custom_views["vm"].count("\n\n") == len(CUSTOM) + 1  # and the built-in 00:1f.3


@needs_lspci
@pytest.mark.parametrize("view", ["model", "vm"])
def test_lspci_decodes_identities_and_the_tree(
    default_views: dict[str, str], custom_views: dict[str, str], view: str, tmp_path: Path
) -> None:
    assert lspci(default_views[view], tmp_path, "-n").splitlines() == [
        "00:00.0 0600: 8086:29c0",
        "00:1c.0 0604: 1b36:000c",
        "00:1c.1 0604: 1b36:000c",
        "00:1f.0 0601: 8086:2918 (rev 02)",
        "00:1f.2 0106: 8086:2922 (rev 02)",
        "00:1f.3 0c05: 8086:2930 (rev 02)",
        "01:00.0 0200: 1af4:1041 (rev 01)",
        "02:00.0 0108: 1b36:0010 (rev 02)",
    ]
    tree = lspci(custom_views[view], tmp_path, "-t")
    assert "+-1c.0-[80-81]----00.0-[81]--+-00.0" in tree
    assert "\\-00.3" in tree
    assert "+-1d.0-[ff]----1f.0" in tree


@needs_lspci
@pytest.mark.parametrize("view", ["model", "vm"])
def test_lspci_decodes_bridges_bars_and_capabilities(
    default_views: dict[str, str], custom_views: dict[str, str], view: str, tmp_path: Path
) -> None:
    output = lspci(default_views[view], tmp_path, "-vvv")
    port = section(output, "00:1c.1")
    assert "Bus: primary=00, secondary=02, subordinate=02" in port
    assert "Express (v2) Root Port (Slot+)" in port
    assert "MSI-X: Enable- Count=1" in port
    assert "[100 v2] Advanced Error Reporting" in port

    net = section(output, "01:00.0")
    # An unprogrammed 32-bit BAR reads 0: lspci (with no sysfs sizes) omits it.
    assert "Region 1:" not in net
    assert "Region 4: Memory at <unassigned> (64-bit, prefetchable)" in net
    assert "VirtIO: CommonCfg" in net and "VirtIO: Notify" in net
    assert "MSI-X: Enable- Count=4 Masked-" in net

    nvme = section(output, "02:00.0")
    assert "Region 0: Memory at <unassigned> (64-bit, non-prefetchable)" in nvme
    assert "MSI-X: Enable- Count=65" in nvme and "Express (v2) Endpoint" in nvme

    ahci = section(output, "00:1f.2")
    assert "Region 4: I/O ports at <unassigned>" in ahci
    assert "MSI: Enable- Count=1/1 Maskable- 64bit+" in ahci

    custom = lspci(custom_views[view], tmp_path, "-vvv")
    assert "Bus: primary=00, secondary=80, subordinate=81" in section(custom, "00:1c.0")
    assert "Bus: primary=80, secondary=81, subordinate=81" in section(custom, "80:00.0")
    assert "Bus: primary=00, secondary=ff, subordinate=ff" in section(custom, "00:1d.0")
    assert "Root Complex Integrated Endpoint" in section(custom, "00:02.0")


@needs_lspci
def test_vm_view_shows_the_state_the_models_are_in(kvm: Kvm, tmp_path: Path) -> None:
    """Registers programmed before boot reach the guest's view and lspci decodes them."""
    topology = Topology.default(4)
    nvme = topology.config_at(Bdf(2, 0, 0))
    assert nvme is not None
    nvme.write(BAR0, 4, 0xFEB00000)
    nvme.write(COMMAND, 2, 0x0006)
    net = topology.config_at(Bdf(1, 0, 0))
    assert net is not None
    net.write(BAR0 + 4, 4, 0xFEA00000)  # BAR 1: 32-bit, MSI-X
    text = format_pages(guest_config_pages(kvm, topology), route(topology).functions)
    assert text == format_lspci_dump(topology)
    block = section(lspci(text, tmp_path, "-vvv"), "02:00.0")
    assert "Region 0: Memory at feb00000 (64-bit, non-prefetchable)" in block
    assert "Control: I/O- Mem+ BusMaster+" in block
    block = section(lspci(text, tmp_path, "-vvv"), "01:00.0")
    assert "Region 1: Memory at fea00000 (32-bit, non-prefetchable)" in block


def test_vm_view_through_trapping_modes_is_the_same(kvm: Kvm) -> None:
    """Read through exits (every dword answered by the model) the bytes do not change."""
    topology = Topology.default(4)
    expected = {f.bdf: f.config.snapshot() for f in topology}
    for strategy, present in (("trap", "trap"), ("trap", "mirror"), ("fill", "mirror")):
        options = MachineOptions(buses=4, strategy=strategy, present=present)
        assert guest_config_pages(kvm, Topology.default(4), options) == expected


def test_too_many_functions_for_the_result_buffer_is_an_error(kvm: Kvm) -> None:
    specs = ["00:00.0=host-bridge", "00:01.0=root-port,bus=1", "00:01.1=root-port,bus=2"]
    specs += [
        f"{b:02x}:{d:02x}.{f}=virtio-net" for b in (1, 2) for d in range(32) for f in range(8)
    ]
    assert len(specs) > DUMP_ROOM
    found = len(specs) + 3  # the ICH9 built-ins
    with pytest.raises(BadInput, match=f"--device: {found} functions.*holds {DUMP_ROOM}"):
        lspci_text(specs, 3, vm_view=True, kvm=kvm)


def test_main_prints_the_dump_and_rejects_bad_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["lspci", "--device", "00:00.0=host-bridge", "--device", "00:02.0=nvme", "--buses", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.findall(r"^\S\S:\S\S\.\S", out, re.MULTILINE) == [
        "00:00.0",
        "00:02.0",
        "00:1f.0",
        "00:1f.2",
        "00:1f.3",
    ]  # -device adds to q35's
    assert main(["lspci", "--device", "01:00.0=nvme", "--buses", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no bridge leading to it" in captured.err
    assert main(["lspci", "--device", "00:00.0=no-such-model", "--buses", "1"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_main_vm_view(kvm: Kvm, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lspci", "--buses", "3", "--vm-view"]) == 0
    assert capsys.readouterr().out == format_lspci_dump(Topology.default(3))


def test_main_bare_starts_from_the_host_bridge_alone(capsys: pytest.CaptureFixture[str]) -> None:
    def listed(*args: str) -> list[str]:
        assert main(["lspci", *args]) == 0
        return re.findall(r"^\S\S:\S\S\.\S", capsys.readouterr().out, re.MULTILINE)

    assert listed("--bare", "--device", "00:03.0=nvme") == ["00:00.0", "00:03.0"]
    assert listed("--bare") == ["00:00.0"]
    # The LPC's place is free on a bare host bridge; beside the q35 built-ins it is not.
    assert listed("--bare", "--device", "00:1f.0=nvme") == ["00:00.0", "00:1f.0"]
    assert main(["lspci", "--device", "00:1f.0=nvme"]) == 2
    assert "--bare starts from a bare host bridge" in capsys.readouterr().err


@needs_lspci
def test_every_model_is_named_as_lspci_names_it_on_and_off_the_root_bus(tmp_path: Path) -> None:
    endpoints = ["virtio-net", "virtio-blk", "nvme", "ich9-lpc", "ich9-ahci", "ich9-smbus"]
    specs = [f"00:{2 + index:02x}.0={model}" for index, model in enumerate(endpoints)]
    specs += ["00:1c.0=root-port,bus=1"]
    specs += [f"01:00.{index}={model}" for index, model in enumerate(endpoints)]
    dump = format_lspci_dump(Topology.build(specs, 2, bare=True))
    ours = re.findall(r"^\S\S:\S\S\.\S .*$", dump, re.MULTILINE)
    assert "00:02.0 Ethernet controller: Red Hat, Inc. Virtio network device" in ours
    assert "01:00.1 SCSI storage controller: Red Hat, Inc. Virtio 1.0 block device (rev 01)" in ours
    assert lspci(dump, tmp_path).splitlines() == ours
