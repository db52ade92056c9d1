"""The parser of what the initramfs's init prints, and its comparison with a topology.

od's output comes from busybox's own ``od`` (the one init runs), not from this module: the
parser is judged against the tool whose output it reads.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pcihole.guest.linux.view import (
    BEGIN,
    END,
    GuestViewError,
    compare,
    parse_od,
    parse_view,
)
from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.config import DEVICE_ID, SECONDARY_BUS
from pcihole.pci.devices import Function
from pcihole.pci.routing import route
from pcihole.pci.topology import Topology

BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="no busybox (bash scripts/setup)")
CONFIG_SIZE = 4096


def busybox_od(data: bytes) -> list[str]:
    assert BUSYBOX is not None
    done = subprocess.run(
        [BUSYBOX, "od", "-A", "x", "-t", "x1"], input=data, capture_output=True, check=True
    )
    return done.stdout.decode().splitlines()


def config_bytes(function: Function) -> bytes:
    return b"".join(
        function.config.read(offset, 4).to_bytes(4, "little") for offset in range(0, CONFIG_SIZE, 4)
    )


def console_text(functions: dict[GuestBdf, Function], kernel_noise: bool = False) -> str:
    """What init prints for ``functions`` (guest address -> function), with od's lines
    from busybox and the /proc lines in the kernel's format."""
    lines = ["pcihole-init: started", BEGIN, "devices"]
    for bdf, function in sorted(functions.items()):
        ids = function.config.read(0, 4)
        lines.append(
            f"{bdf.bus << 8 | bdf.devfn:04x}\t{ids >> 16 | (ids & 0xFFFF) << 16:08x}"
            f"\t0\t               0\t               0"
        )
    if kernel_noise:
        lines.append("[  312.004211] random: crng init done")
    for bdf, function in sorted(functions.items()):
        lines.append(f"config 0000:{bdf}")
        lines += busybox_od(config_bytes(function))
    lines += [END, "pcihole-init: powering off"]
    return "\r\n".join(lines) + "\r\n"


@needs_busybox
@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(range(256)),
        b"\x86\x80\xc0\x29" + bytes(4092),
        bytes(16) * 3 + b"\x01" * 5,
        b"\xff" * 64 + bytes(64) + b"\xff" * 64,
    ],
    ids=["empty", "distinct", "mostly-zero", "ragged", "runs"],
)
def test_parse_od_reads_back_what_busybox_od_printed(data: bytes) -> None:
    assert parse_od(busybox_od(data)) == data


def test_parse_od_refuses_a_gap() -> None:
    with pytest.raises(GuestViewError, match="skips"):
        parse_od(["000000 01 02", "000010 03"])


@needs_busybox
@pytest.mark.parametrize("noise", [False, True], ids=["clean", "kernel-lines-among"])
def test_the_view_of_the_default_machine_equals_its_topology(noise: bool) -> None:
    topology = Topology.default(256)
    placed = dict(route(topology.functions).functions)
    view = parse_view("early boot\n" + console_text(placed, noise) + "reboot: Power down\n")
    assert set(view.functions) == set(placed) == set(view.devices)
    assert {bdf for bdf, f in view.functions.items() if f.bridge_buses} == {
        Bdf(0, 0x1C, 0),
        Bdf(0, 0x1C, 1),
    }
    assert compare(view, topology.functions) == []


@needs_busybox
def test_compare_names_each_difference() -> None:
    topology = Topology.default(256)
    placed = dict(route(topology.functions).functions)
    nvme, port = GuestBdf(Bdf(2, 0, 0)), GuestBdf(Bdf(0, 0x1C, 1))
    text = console_text({bdf: f for bdf, f in placed.items() if bdf != nvme})
    view = parse_view(text)
    placed[GuestBdf(Bdf(0, 0x1F, 3))].config.define(DEVICE_ID, 2, 0x1234)
    placed[port].config.write(SECONDARY_BUS, 1, 5)
    differences = compare(view, topology.functions)
    assert any("00:1f.3: guest sees [8086:2930]" in d and "[8086:1234]" in d for d in differences)
    assert any(d.startswith("00:1c.1: guest's bridge buses (2, 2)") for d in differences)
    # secondary 5 above subordinate 2: the port claims no bus, so its NVMe is expected nowhere
    assert len(differences) == 2, differences


def test_missing_markers_are_one_error_each() -> None:
    with pytest.raises(GuestViewError, match="never printed"):
        parse_view("Kernel panic - not syncing: No working init found.\n")
    with pytest.raises(GuestViewError, match="cut short"):
        parse_view(f"{BEGIN}\ndevices\n0000\t808629c0\n")


def test_a_malformed_line_is_named() -> None:
    with pytest.raises(GuestViewError, match="not a line of /proc/bus/pci/devices"):
        parse_view(f"{BEGIN}\ndevices\nnonsense\n{END}\n")
