"""Guest-assigned bus numbers on real guests: the ECAM window follows a renumbered bridge.

Config writes come from the host through the machine's own ECAM device and CF8 ports (the
paths a guest's writes take); guests then read the old and new addresses, exit-less.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pcihole import layout
from pcihole.guest.machine import PciMachine
from pcihole.holes.source import Backing
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.pci.bdf import Bdf
from pcihole.pci.capabilities import CapabilityId
from pcihole.pci.config import SECONDARY_BUS, SUBORDINATE_BUS
from pcihole.pci.devices import MODELS
from pcihole.pci.ecam import encode_config_address
from pcihole.pci.routing import PCIE_DEVCTL2_ARI_FORWARDING, PCIE_DEVICE_CONTROL_2
from pcihole.pci.topology import Topology
from tests.kvm.test_hotplug import ALL_ONES, STOP_FLAG_ADDR, Reader

SPECS = [
    "00:00.0=host-bridge",
    "00:1c.0=root-port,bus=1",
    "01:00.0=virtio-net",
    "00:1f.0=ich9-lpc",
]
BUSES = 4
PORT = Bdf(0, 0x1C, 0)
NET = Bdf(1, 0, 0)
MOVED = Bdf(3, 0, 0)
ITERATIONS = 20_000
MIRRORS = 6
"""The four specs and the q35 built-ins they leave out (00:1f.2, 00:1f.3)."""
RUNS_AT_BUS_1 = [
    (0x1000, 0xDF000),
    (0xE1000, 0x17000),
    (0xF9000, 0x1000),
    (0xFC000, 0x4000),
    (0x101000, 0x2FF000),
]
RUNS_AT_BUS_3 = [
    (0x1000, 0xDF000),
    (0xE1000, 0x17000),
    (0xF9000, 0x1000),
    (0xFC000, 0x204000),
    (0x301000, 0xFF000),
]
RUNS_HIDDEN = [(0x1000, 0xDF000), (0xE1000, 0x17000), (0xF9000, 0x1000), (0xFC000, 0x304000)]


def ecam_renumber(machine: PciMachine, secondary: int, subordinate: int) -> None:
    """The guest's way through ECAM: byte writes to the port's 0x19 and 0x1a."""
    machine.ecam.write(PORT.ecam_offset | SECONDARY_BUS, 1, secondary)
    machine.ecam.write(PORT.ecam_offset | SUBORDINATE_BUS, 1, subordinate)


def cf8_renumber(machine: PciMachine, secondary: int, subordinate: int) -> None:
    """The same through CF8/CFC: one dword to the address latch, bytes to CFD and CFE."""
    machine.legacy.write(0, 4, encode_config_address(PORT, 0x18))
    machine.legacy.write(4 + 1, 1, secondary)
    machine.legacy.write(4 + 2, 1, subordinate)


def runs(machine: PciMachine) -> list[tuple[int, int]]:
    window = machine.window
    assert window.holes is not None and window.base is not None
    return [(run.start - window.base, run.size) for run in sorted(window.holes.runs)]


@pytest.mark.parametrize("renumber", [ecam_renumber, cf8_renumber])
@pytest.mark.parametrize("strategy", ["shared", "fill", "trap"])
def test_renumbered_port_moves_the_device_and_the_window_follows(
    kvm: Kvm, renumber: object, strategy: str
) -> None:
    # A window backing (memfd: available on every host) maps one slot per run; left on
    # auto, the backing would depend on whether another process holds the host's huge page.
    backing = Backing.MEMFD if strategy == "shared" else None
    options = MachineOptions(buses=BUSES, strategy=strategy, backing=backing)
    topology = Topology.build(SPECS, BUSES)
    ids = topology.get(NET).config.read(0, 4)  # type: ignore[union-attr]
    hole_slots = {"shared": 5, "fill": 5, "trap": 0}[strategy]
    seen: dict[tuple[Bdf, int], list[int]] = {}
    for address in (NET, MOVED):
        for secondary in (1, 3):
            params = [layout.ECAM_BASE + address.ecam_offset, ids, ITERATIONS, 0]
            topology = Topology.build(SPECS, BUSES)
            with PciMachine(kvm, topology, options, "hotplug_reader", params) as m:
                assert runs(m) == RUNS_AT_BUS_1 and m.memslots == hole_slots + MIRRORS
                renumber(m, secondary, secondary)  # type: ignore[operator]
                assert runs(m) == (RUNS_AT_BUS_3 if secondary == 3 else RUNS_AT_BUS_1)
                assert m.memslots == hole_slots + MIRRORS
                assert (
                    m.window.mirrors[NET].page.base
                    == m.window.base + Bdf(secondary, 0, 0).ecam_offset
                )
                result = m.run().check()
                assert m.ecam.exits.device_reads == 0  # the mirror moved with the device
                if strategy != "trap":  # reads after the re-plan: no exit at all
                    assert result.exit_counts == {"IoOut": 6}
                    assert m.ecam.exits.hole_reads == 0
            _, ones, device, _, iterations = result.syncs
            assert iterations == ITERATIONS
            seen[address, secondary] = [ones, device]
    found = [ITERATIONS, 0], [0, ITERATIONS]
    assert seen == {
        (NET, 1): found[1],
        (NET, 3): found[0],  # all ones at the old number
        (MOVED, 1): found[0],
        (MOVED, 3): found[1],  # the device at the new one
    }


def test_closing_and_reopening_the_port_hides_and_shows_its_bus(kvm: Kvm) -> None:
    options = MachineOptions(buses=BUSES, strategy="fill")
    with PciMachine(kvm, Topology.build(SPECS, BUSES), options, "scan", [0] * 4) as m:
        ecam_renumber(m, 0, 0)  # as a bridge comes out of reset
        assert runs(m) == RUNS_HIDDEN and m.memslots == 4 + MIRRORS - 1
        assert m.ecam.read(NET.ecam_offset, 4) == ALL_ONES
        ecam_renumber(m, 3, 3)
        assert runs(m) == RUNS_AT_BUS_3 and m.memslots == 5 + MIRRORS
        ecam_renumber(m, 5, 5)  # beyond the 4-bus window: CF8 still reaches it
        assert runs(m) == RUNS_HIDDEN and m.memslots == 4 + MIRRORS - 1
        m.legacy.write(0, 4, encode_config_address(Bdf(5, 0, 0), 0))
        assert m.legacy.read(4, 4) == m.topology.get(NET).config.read(0, 4)  # type: ignore[union-attr]


@pytest.mark.parametrize(("strategy", "present"), [("shared", "mirror"), ("trap", "trap")])
def test_a_scanning_guest_sees_only_all_ones_or_the_header_across_renumbering(
    kvm: Kvm, strategy: str, present: str
) -> None:
    options = MachineOptions(buses=BUSES, strategy=strategy, present=present)
    topology = Topology.build(SPECS, BUSES)
    ids = topology.get(NET).config.read(0, 4)  # type: ignore[union-attr]
    params = [layout.ECAM_BASE + MOVED.ecam_offset, ids, 1 << 62, STOP_FLAG_ADDR]
    cycles = 3
    with PciMachine(kvm, topology, options, "hotplug_reader", params) as m:
        with Reader(m) as reader:
            for cycle in range(cycles):
                ecam_renumber(m, 3, 3)
                reader.wait_for_change(2 * cycle + 1, ids)
                cf8_renumber(m, 1, 1)
                reader.wait_for_change(2 * cycle + 2, ALL_ONES)
        assert reader.result is not None
        result = reader.result.check()
        assert runs(m) == RUNS_AT_BUS_1
    start, ones, device, changes, iterations = result.syncs
    assert start == 0
    assert changes == 2 * cycles  # each change seen once: no flapping on the way
    assert ones > 0 and device > 0 and ones + device == iterations


BEYOND_ZERO = Bdf(1, 3, 0)
"""Behind the port at a device other than 0: it answers only with ARI forwarding on."""


def plugged_machine(kvm: Kvm, reset: bool) -> PciMachine:
    topology = Topology.build(SPECS, BUSES)
    if reset:
        topology.reset_bridges()  # as under boot
    return PciMachine(kvm, topology, MachineOptions(buses=BUSES, strategy="fill"), "scan", [0] * 4)


def test_without_firmware_a_plug_beyond_device_0_gets_ari_forwarding(kvm: Kvm) -> None:
    with plugged_machine(kvm, reset=False) as m:
        m.hot_plug(MODELS["virtio-blk"].build(BEYOND_ZERO))
        assert m.window.mirrors[BEYOND_ZERO].page.base == m.window.base + BEYOND_ZERO.ecam_offset
        assert m.ecam.read(BEYOND_ZERO.ecam_offset, 2) == 0x1AF4
        m.hot_unplug(BEYOND_ZERO)
        assert BEYOND_ZERO not in m.window.mirrors and runs(m) == RUNS_AT_BUS_1


def test_after_reset_a_plug_answers_once_the_guest_numbers_the_port_and_sets_ari(
    kvm: Kvm,
) -> None:
    """Under boot, bridges are the guest's: a hot-plug programs nothing, the function
    answers when the guest's own writes (bus numbers, then ARI forwarding) route to it."""
    with plugged_machine(kvm, reset=True) as m:
        m.hot_plug(MODELS["virtio-blk"].build(BEYOND_ZERO))
        assert BEYOND_ZERO not in m.window.mirrors and runs(m) == RUNS_HIDDEN
        ecam_renumber(m, 1, 1)
        assert NET in m.window.mirrors and BEYOND_ZERO not in m.window.mirrors
        assert m.ecam.read(BEYOND_ZERO.ecam_offset, 4) == ALL_ONES
        port = m.topology.get(PORT)
        assert port is not None
        express = port.config.find_capability(CapabilityId.PCI_EXPRESS)
        assert express is not None
        control = PORT.ecam_offset | express + PCIE_DEVICE_CONTROL_2
        m.ecam.write(control, 2, PCIE_DEVCTL2_ARI_FORWARDING)
        assert m.window.mirrors[BEYOND_ZERO].page.base == m.window.base + BEYOND_ZERO.ecam_offset
        assert m.ecam.read(BEYOND_ZERO.ecam_offset, 2) == 0x1AF4


def ecam_renumber_dword(machine: PciMachine, secondary: int, subordinate: int) -> None:
    """Linux's pci_scan_bridge way: primary, secondary and subordinate in one dword."""
    machine.ecam.write(PORT.ecam_offset | 0x18, 4, subordinate << 16 | secondary << 8)


def cf8_renumber_dword(machine: PciMachine, secondary: int, subordinate: int) -> None:
    machine.legacy.write(0, 4, encode_config_address(PORT, 0x18))
    machine.legacy.write(4, 4, subordinate << 16 | secondary << 8)


@pytest.mark.parametrize("renumber", [ecam_renumber_dword, cf8_renumber_dword])
@pytest.mark.parametrize(
    ("strategy", "backing"), [("shared", Backing.MEMFD), ("shared", Backing.THP), ("fill", None)]
)
def test_one_dword_renumbers_at_a_full_memslot_budget(
    kvm: Kvm,
    renumber: Callable[[PciMachine, int, int], None],
    strategy: str,
    backing: Backing | None,
) -> None:
    """Every memslot taken: the re-plan frees the moved mirror and the old runs' slots
    before it needs the new ones, so a renumbering that frees as many as it needs is
    accepted (one slot per run, or per 2 MiB with a THP chunk), and the guest then finds
    the device at the new number without exits."""
    options = MachineOptions(buses=BUSES, strategy=strategy, backing=backing)
    topology = Topology.build(SPECS, BUSES)
    ids = topology.get(NET).config.read(0, 4)  # type: ignore[union-attr]
    params = [layout.ECAM_BASE + MOVED.ecam_offset, ids, ITERATIONS, 0]
    with PciMachine(kvm, topology, options, "hotplug_reader", params) as m:
        used = m.memslots
        m.guest.slots.allocate(m.guest.slots.free, purpose="the rest of the budget")
        renumber(m, 3, 3)
        assert runs(m) == RUNS_AT_BUS_3 and m.memslots == used and m.guest.slots.free == 0
        assert m.window.base is not None
        assert m.window.mirrors[NET].page.base == m.window.base + MOVED.ecam_offset
        result = m.run().check()
        assert result.exit_counts == {"IoOut": 6} and m.ecam.exits.device_reads == 0
        renumber(m, 1, 1)  # and back, still at the full budget
        assert runs(m) == RUNS_AT_BUS_1 and m.memslots == used and m.guest.slots.free == 0
    _, ones, device, _, iterations = result.syncs
    assert (ones, device, iterations) == (0, ITERATIONS, ITERATIONS)
