"""Topology: --device parsing, validation errors, defaults, hot-plug."""

from __future__ import annotations

import re

import pytest

from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import MODELS
from pcihole.pci.errors import TopologyError
from pcihole.pci.topology import Topology, parse_device_spec

PORT = "00:1c.0=root-port,bus=1"


def test_parse_device_spec() -> None:
    spec = parse_device_spec("0000:00:1C.0=root-port, bus=0x2 ,subordinate=3")
    assert spec.bdf == Bdf(0, 0x1C, 0)
    assert spec.model is MODELS["root-port"]
    assert spec.params == {"bus": 2, "subordinate": 3}
    assert parse_device_spec("01:00.0=virtio-net").params == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("01:00.0", r"want BB:DD\.F=MODEL"),
        ("01-00.0=nvme", "malformed PCI address '01-00.0'"),
        ("00:20.0=nvme", "device 32 is out of range 0-31"),
        ("00:02.8=nvme", "function 8 is out of range 0-7"),
        ("00:02.0=e1000", r"unknown model 'e1000' \(known: host-bridge, ich9-ahci, .*virtio-net\)"),
        ("00:02.0=nvme,bus=1", r"nvme does not take bus= \(it takes: none\)"),
        ("00:1c.0=root-port,bus=one", r"bad number 'one' for bus= \(want decimal or 0x hex\)"),
        ("00:1c.0=root-port,bus=0b1", "bad number '0b1'"),
        ("00:1c.0=root-port,bus=-1", "bad number '-1'"),
        ("00:1c.0=root-port,bus", r"malformed parameter 'bus' \(want key=value\)"),
        ("00:1c.0=root-port,bus=1,bus=2", "bus= given twice"),
    ],
)
def test_parse_errors_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message) as caught:
        parse_device_spec(spec)
    assert caught.value.spec == spec
    assert str(caught.value).startswith(f"--device {spec!r}: ")
    assert "\n" not in str(caught.value)


def build_error(specs: list[str], buses: int = 4) -> TopologyError:
    with pytest.raises(TopologyError) as caught:
        Topology.build(specs, buses)
    return caught.value


@pytest.mark.parametrize(
    ("specs", "buses", "offender", "message"),
    [
        (["04:00.0=nvme"], 4, "04:00.0=nvme", r"bus 4 is outside the window of 4 buses \(0-3\)"),
        (["01:00.0=nvme"], 1, "01:00.0=nvme", r"outside the window of 1 bus \(0-0\)"),
        (
            ["00:02.0=nvme", "00:02.0=virtio-net"],
            4,
            "00:02.0=virtio-net",
            "address 00:02.0 is already taken by '00:02.0=nvme'",
        ),
        (
            ["00:03.2=ich9-ahci"],
            4,
            "00:03.2=ich9-ahci",
            "function 2 of device 00:03 has no function 0",
        ),
        (
            ["00:1c.0=root-port,bus=4"],
            4,
            "00:1c.0=root-port,bus=4",
            r"leads to bus 4, outside the window of 4 buses \(0-3\)",
        ),
        (
            ["00:1c.0=root-port,bus=2,subordinate=9"],
            4,
            "00:1c.0=root-port,bus=2,subordinate=9",
            "leads to buses 2-9, outside the window",
        ),
        (
            ["00:1c.0=root-port,bus=0"],
            4,
            "00:1c.0=root-port,bus=0",
            "leads to bus 0, which is not above its own bus 0",
        ),
        (
            [PORT, "01:00.0=root-port,bus=1"],
            4,
            "01:00.0=root-port,bus=1",
            "leads to bus 1, which is not above its own bus 1",
        ),
        (
            [PORT, "00:1c.1=root-port,bus=1"],
            4,
            "00:1c.1=root-port,bus=1",
            f"secondary bus 1 is already taken by bridge '{PORT}'",
        ),
        (
            ["00:1c.0=root-port,bus=1,subordinate=2", "00:1c.1=root-port,bus=2"],
            4,
            "00:1c.1=root-port,bus=2",
            "bus 2 overlap buses 1-2 of bridge '00:1c.0=",
        ),
        (
            ["01:00.0=root-port,bus=2", "00:1c.0=root-port,bus=1"],
            4,
            "00:1c.0=root-port,bus=1",
            "forwards only bus 1, but bridge '01:00.0=root-port,bus=2' behind it leads to bus 2",
        ),
        (
            [PORT, "01:00.0=root-port,bus=2"],
            4,
            "01:00.0=root-port,bus=2",
            r"leads to bus 2, but its parent bridge '00:1c.0=root-port,bus=1' only forwards bus 1",
        ),
        (["02:00.0=nvme", PORT], 4, "02:00.0=nvme", r"bus 2 has no bridge leading to it"),
        (["02:00.0=root-port,bus=3"], 4, "02:00.0=root-port,bus=3", "bus 2 has no bridge"),
        (["00:00.0=nvme,bus=1"], 4, "00:00.0=nvme,bus=1", "nvme does not take bus="),
        (["00:1c.0=root-port"], 4, "00:1c.0=root-port", "root-port needs bus="),
    ],
)
def test_build_errors(specs: list[str], buses: int, offender: str, message: str) -> None:
    error = build_error(specs, buses)
    assert error.spec == offender
    assert re.search(message, error.reason), error.reason


@pytest.mark.parametrize("buses", [0, 257])
def test_bus_count(buses: int) -> None:
    assert "bus count" in str(build_error([], buses))


def test_nested_bridges_are_fine() -> None:
    topology = Topology.build(
        [
            "00:1c.0=root-port,bus=1,subordinate=3",
            "01:00.0=root-port,bus=2,subordinate=3",
            "02:00.0=root-port,bus=3",
            "03:00.0=nvme",
        ],
        4,
    )
    assert len(topology) == 8  # the four q35 built-ins are always there


def test_default() -> None:
    topology = Topology.default(4)
    assert [(str(f.bdf), f.model) for f in topology] == [
        ("00:00.0", "host-bridge"),
        ("00:1c.0", "root-port"),
        ("00:1c.1", "root-port"),
        ("00:1f.0", "ich9-lpc"),
        ("00:1f.2", "ich9-ahci"),
        ("00:1f.3", "ich9-smbus"),
        ("01:00.0", "virtio-net"),
        ("02:00.0", "nvme"),
    ]
    # Function 0 of a shared device (as QEMU's multifunction=on) and ICH9's own functions.
    for bdf in ("00:1c.0", "00:1f.0", "00:1f.2", "00:1f.3"):
        function = topology.get(Bdf.parse(bdf))
        assert function is not None and function.config.is_multifunction
    for bdf in ("00:00.0", "00:1c.1"):
        function = topology.get(Bdf.parse(bdf))
        assert function is not None and not function.config.is_multifunction


def test_default_shrinks_with_the_window() -> None:
    assert {f.bdf.bus for f in Topology.default(1)} == {0}
    assert [f.model for f in Topology.default(1)] == [
        "host-bridge",
        "ich9-lpc",
        "ich9-ahci",
        "ich9-smbus",
    ]
    assert [f.model for f in Topology.default(2) if f.bdf.bus] == ["virtio-net"]
    assert Topology.default(256).buses == 256


def test_qemu_nodefaults() -> None:
    topology = Topology.qemu_nodefaults()
    assert [str(f.bdf) for f in topology] == ["00:00.0", "00:1f.0", "00:1f.2", "00:1f.3"]
    assert topology.buses == 256


def test_lookup_and_offsets() -> None:
    topology = Topology.default(3)
    assert Bdf(1, 0, 0) in topology and Bdf(1, 1, 0) not in topology
    assert topology.config_at(Bdf(1, 1, 0)) is None
    config = topology.config_at(Bdf(2, 0, 0))
    assert config is not None and config.device_id == 0x0010
    offsets = topology.present_offsets()
    assert offsets == sorted(offsets)
    assert offsets[0] == 0 and 0x200000 in offsets and 0xFB000 in offsets
    assert offsets == [f.bdf.ecam_offset for f in topology.functions]


def test_cold_plugged_slots_look_as_qemu_resets_them() -> None:
    """Full slot: powered, the card's link; empty: powered off, the port's own link."""
    topology = Topology.build(
        ["00:1c.0=root-port,bus=1", "01:00.0=nvme", "00:1d.0=root-port,bus=2"], 3
    )
    for device, control, link in ((0x1C, 0x01C0, 0x0011), (0x1D, 0x07C0, 0x0204)):
        port = topology.config_at(Bdf(0, device, 0))
        assert port is not None
        express = port.find_capability(caps.CapabilityId.PCI_EXPRESS)
        assert express is not None
        assert port.read(express + caps.PCIE_SLOT_STATUS, 2) == 0  # q35 hot-plugs by ACPI
        assert port.read(express + caps.PCIE_SLOT_CONTROL, 2) == control
        assert port.read(express + caps.PCIE_LINK_STATUS, 2) == link


def test_builtins_are_always_there() -> None:
    assert [str(f.bdf) for f in Topology.build(["00:03.0=nvme"], 1)] == [
        "00:00.0",
        "00:03.0",
        "00:1f.0",
        "00:1f.2",
        "00:1f.3",
    ]
    # Naming a built-in is harmless; putting something else at its address is not.
    assert len(Topology.build(["00:1f.2=ich9-ahci", "00:00.0=host-bridge"], 1)) == 4
    with pytest.raises(TopologyError, match=r"q35 built-in ich9-smbus .*--bare"):
        Topology.build(["00:1f.3=nvme"], 1)
    bare = Topology.build(["00:1f.3=nvme", "00:1f.0=ich9-lpc"], 1, bare=True)
    assert [str(f.bdf) for f in bare] == ["00:00.0", "00:1f.0", "00:1f.3"]
    assert [str(f.bdf) for f in Topology.bare(1)] == ["00:00.0"]


def test_hot_plug_and_unplug() -> None:
    topology = Topology.build(["00:00.0=host-bridge", PORT], 2)
    port = topology.config_at(Bdf(0, 0x1C, 0))
    assert port is not None
    express = port.find_capability(caps.CapabilityId.PCI_EXPRESS)
    assert express is not None
    slot_status = express + caps.PCIE_SLOT_STATUS
    assert port.read(slot_status, 2) == 0

    nvme = MODELS["nvme"].build(Bdf(1, 0, 0))
    assert topology.add(nvme) == [Bdf(1, 0, 0), Bdf(0, 0x1C, 0)]
    assert topology.get(Bdf(1, 0, 0)) is nvme
    assert 0x100000 in topology.present_offsets()
    assert port.read(slot_status, 2) == 0x0148  # present, presence and link changed
    port.write(slot_status, 2, 0xFFFF)  # the guest acknowledges
    assert port.read(slot_status, 2) == 0x0040

    assert topology.remove(Bdf(1, 0, 0)) == [Bdf(1, 0, 0), Bdf(0, 0x1C, 0)]
    assert Bdf(1, 0, 0) not in topology
    assert port.read(slot_status, 2) == 0x0108


def test_hot_plug_validates() -> None:
    topology = Topology.build(["00:00.0=host-bridge", PORT], 4)
    nvme = MODELS["nvme"]
    with pytest.raises(TopologyError, match="already taken"):
        topology.add(nvme.build(Bdf(0, 0, 0)))
    with pytest.raises(TopologyError, match="bus 3 has no bridge leading"):
        topology.add(nvme.build(Bdf(3, 0, 0)))
    with pytest.raises(TopologyError, match="outside the window"):
        topology.add(nvme.build(Bdf(4, 0, 0)))
    with pytest.raises(TopologyError, match="secondary bus 1 is already taken") as caught:
        topology.add(MODELS["root-port"].build(Bdf(0, 0x1C, 1), {"bus": 1}))
    assert caught.value.spec == "00:1c.1=root-port,bus=1"
    assert len(topology) == 5  # host bridge, port, three ICH9 built-ins


def test_hot_plug_a_sibling_marks_multifunction() -> None:
    topology = Topology.build(["00:00.0=host-bridge", "00:03.0=nvme"], 1)
    assert topology.add(MODELS["virtio-net"].build(Bdf(0, 3, 1))) == [Bdf(0, 3, 1), Bdf(0, 3, 0)]
    first = topology.config_at(Bdf(0, 3, 0))
    assert first is not None and first.is_multifunction


def test_remove_refuses_to_strand() -> None:
    topology = Topology.default(3)
    with pytest.raises(TopologyError, match=r"cannot remove it: .*bus 2 has no bridge") as caught:
        topology.remove(Bdf(0, 0x1C, 1))
    assert caught.value.spec == "00:1c.1=root-port,bus=2,slot=1"
    with pytest.raises(TopologyError, match="has no function 0"):
        topology.remove(Bdf(0, 0x1F, 0))
    with pytest.raises(TopologyError, match=r"no function at 05:00\.0"):
        topology.remove(Bdf(5, 0, 0))
    assert len(topology) == 8


def test_bridge_buses_stay_as_built_when_the_guest_renumbers() -> None:
    topology = Topology.default(3)
    port = topology.get(Bdf(0, 0x1C, 0))
    assert port is not None
    assert port.config.write(0x19, 1, 7)  # the guest may rewrite the secondary bus
    assert port.bridge_buses == range(1, 2)
    topology.remove(Bdf(1, 0, 0))
    assert topology.add(MODELS["virtio-blk"].build(Bdf(1, 0, 0)))[0] == Bdf(1, 0, 0)
