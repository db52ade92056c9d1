"""Routing of configuration requests by the bus numbers the guest programs into bridges."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pcihole.pci.bdf import Bdf
from pcihole.pci.config import SECONDARY_BUS, SUBORDINATE_BUS
from pcihole.pci.routing import (
    BRIDGE_CONTROL,
    BRIDGE_CONTROL_BUS_RESET,
    as_built,
    bridge_state,
    only_device_zero,
    route,
    set_ari_forwarding,
)
from pcihole.pci.topology import Topology

ENDPOINTS = ("virtio-net", "nvme", "virtio-blk")


def renumber(topology: Topology, at: str, secondary: int, subordinate: int) -> None:
    """What a guest does: write the bridge's secondary and subordinate bus registers."""
    bridge = topology.get(Bdf.parse(at))
    assert bridge is not None
    bridge.config.write(SECONDARY_BUS, 1, secondary)
    bridge.config.write(SUBORDINATE_BUS, 1, subordinate)


def placed(topology: Topology) -> dict[str, str]:
    """Guest address -> built address, as text."""
    return {str(bdf): str(f.bdf) for bdf, f in sorted(route(topology).functions.items())}


# -- examples --------------------------------------------------------------------------------


def test_untouched_bridges_route_as_built() -> None:
    topology = Topology.default(3)
    assert route(topology).functions == as_built(topology)
    assert route(topology).present_offsets() == topology.present_offsets()


def test_renumbered_port_moves_its_device_and_leaves_the_old_bus_empty() -> None:
    topology = Topology.default(3)
    renumber(topology, "00:1c.0", 7, 7)
    routing = route(topology)
    assert placed(topology)["07:00.0"] == "01:00.0"
    assert routing.function_at(Bdf(1, 0, 0)) is None
    assert routing.by_bus()[7] == {(0, 0): topology.get(Bdf(1, 0, 0))}
    assert routing.address_of()[Bdf(1, 0, 0)] == Bdf(7, 0, 0)
    assert routing.present_offsets(layout_size(4)) == sorted(
        o for o in topology.present_offsets() if o >> 20 == 0 or o >> 20 == 2
    )


def layout_size(buses: int) -> int:
    return buses << 20


def test_bridges_out_of_reset_reach_nothing_behind_them() -> None:
    topology = Topology.default(3)
    for port in ("00:1c.0", "00:1c.1"):
        renumber(topology, port, 0, 0)
    assert set(placed(topology)) == {str(f.bdf) for f in topology if f.bdf.bus == 0}


def test_subordinate_below_secondary_claims_nothing() -> None:
    topology = Topology.default(3)
    renumber(topology, "00:1c.0", 5, 4)
    assert "05:00.0" not in placed(topology) and "01:00.0" not in placed(topology)


def test_secondary_bus_reset_hides_the_segment() -> None:
    topology = Topology.default(3)
    port = topology.get(Bdf(0, 0x1C, 0))
    assert port is not None
    port.config.write(BRIDGE_CONTROL, 2, BRIDGE_CONTROL_BUS_RESET)
    assert "01:00.0" not in placed(topology)
    port.config.write(BRIDGE_CONTROL, 2, 0)
    assert placed(topology)["01:00.0"] == "01:00.0"


NESTED = [
    "00:00.0=host-bridge",
    "00:1c.0=root-port,bus=1,subordinate=3",
    "01:00.0=root-port,bus=2,subordinate=3",
    "02:00.0=root-port,bus=3",
    "03:00.0=nvme",
    "03:00.1=virtio-net",
    "00:1d.0=root-port,bus=4",
    "04:00.0=virtio-blk",
]


def test_a_request_is_forwarded_only_inside_every_upstream_range() -> None:
    topology = Topology.build(NESTED, 8)
    renumber(topology, "00:1c.0", 1, 2)  # the nested range 3 now lies outside
    assert {"03:00.0", "03:00.1"}.isdisjoint(placed(topology))
    assert placed(topology)["02:00.0"] == "02:00.0"


def test_secondary_zero_hides_its_segment_but_forwards_below_as_qemu_does() -> None:
    topology = Topology.build(NESTED, 8)
    renumber(topology, "00:1c.0", 0, 3)
    # Bus 0 requests are type 0 on the root segment; buses 2-3 still pass the bridge.
    assert placed(topology)["00:1c.0"] == "00:1c.0"
    assert "01:00.0" not in placed(topology).values()
    assert placed(topology)["02:00.0"] == "02:00.0"
    assert placed(topology)["03:00.1"] == "03:00.1"


def test_two_bridges_claiming_one_bus_resolve_to_the_first() -> None:
    topology = Topology.default(3)
    renumber(topology, "00:1c.1", 1, 1)  # now both ports claim bus 1
    assert placed(topology)["01:00.0"] == "01:00.0"  # behind 00:1c.0, the first
    assert "02:00.0" not in placed(topology).values()


def test_a_pcie_port_exposes_only_device_zero_unless_ari_forwarding_is_on() -> None:
    specs = ["00:00.0=host-bridge", "00:1c.0=root-port,bus=1", "01:00.0=nvme", "01:1f.0=virtio-net"]
    topology = Topology.build(specs, 4, bare=True)  # without the ICH9 built-ins
    port = topology.get(Bdf(0, 0x1C, 0))
    assert port is not None
    set_ari_forwarding(port, False)
    assert only_device_zero(port)
    assert set(placed(topology)) == {"00:00.0", "00:1c.0", "01:00.0"}
    assert set_ari_forwarding(port, True) and not only_device_zero(port)
    assert placed(topology)["01:1f.0"] == "01:1f.0"


def test_bridge_state_changes_only_with_routing_registers() -> None:
    topology = Topology.default(3)
    port = topology.get(Bdf(0, 0x1C, 0))
    assert port is not None
    before = bridge_state(port)
    port.config.write(0x20, 2, 0x1230)  # memory base: not a routing register
    assert bridge_state(port) == before
    port.config.write(SUBORDINATE_BUS, 1, 9)
    assert bridge_state(port) != before
    nvme = topology.get(Bdf(2, 0, 0))
    assert nvme is not None and bridge_state(nvme) is None


# -- properties ------------------------------------------------------------------------------


@dataclass
class Port:
    """A root port and what hangs behind it: endpoints at device 0, or one more port."""

    endpoints: int
    child: Port | None = None
    numbers: dict[str, tuple[int, int]] = field(default_factory=dict)


ports = st.recursive(
    st.integers(1, 3).map(lambda n: Port(n)),
    lambda inner: inner.map(lambda p: Port(0, p)),
    max_leaves=3,
)


def number(tree: list[Port], first: int, gaps: list[int], key: str) -> int:
    """Depth-first numbering with gaps, as firmware might; returns the next free bus."""
    for port in tree:
        secondary = first + (gaps.pop() if gaps else 0)
        last = secondary
        if port.child is not None:
            last = number([port.child], secondary + 1, gaps, key) - 1
        port.numbers[key] = (secondary, last + (gaps.pop() if gaps else 0))
        first = port.numbers[key][1] + 1
    return first


def specs_of(tree: list[Port]) -> list[str]:
    specs = ["00:00.0=host-bridge", "00:1f.0=ich9-lpc", "00:1f.3=ich9-smbus"]

    def add(port: Port, at: str) -> None:
        secondary, subordinate = port.numbers["built"]
        specs.append(f"{at}=root-port,bus={secondary},subordinate={subordinate}")
        if port.child is not None:
            add(port.child, f"{secondary:02x}:00.0")
        for fn in range(port.endpoints):
            specs.append(f"{secondary:02x}:00.{fn}={ENDPOINTS[fn % len(ENDPOINTS)]}")

    for device, port in enumerate(tree, start=1):
        add(port, f"00:{device:02x}.0")
    return specs


def walk(port: Port) -> list[Port]:
    return [port, *(walk(port.child) if port.child else [])]


@settings(max_examples=60, deadline=None)
@given(
    tree=st.lists(ports, min_size=1, max_size=4),
    built_gaps=st.lists(st.integers(0, 4), max_size=24),
    guest_gaps=st.lists(st.integers(0, 30), max_size=24),
    order=st.randoms(use_true_random=False),
)
def test_any_valid_renumbering_reaches_every_function_exactly_once(
    tree: list[Port], built_gaps: list[int], guest_gaps: list[int], order: object
) -> None:
    number(tree, 1, built_gaps, "built")
    topology = Topology.build(specs_of(tree), 256)
    assert route(topology).functions == as_built(topology)  # identity: today's layout

    shuffled = list(tree)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    if number(shuffled, 1, guest_gaps, "guest") > 256:
        return  # the gaps ran past bus 255: not a valid numbering
    expected: dict[Bdf, Bdf] = {f.bdf: f.bdf for f in topology if f.bdf.bus == 0}
    for device, top in enumerate(tree, start=1):
        at = Bdf(0, device, 0)
        for port in walk(top):
            built_secondary, _ = port.numbers["built"]
            secondary, subordinate = port.numbers["guest"]
            renumber(topology, str(at), secondary, subordinate)
            for f in topology:
                if f.bdf.bus == built_secondary:
                    expected[f.bdf] = Bdf(secondary, f.bdf.device, f.bdf.function)
            at = Bdf(built_secondary, 0, 0)
    routing = route(topology)
    assert routing.address_of() == expected
    assert len(routing.functions) == len(topology)


@settings(max_examples=40, deadline=None)
@given(
    tree=st.lists(ports, min_size=1, max_size=4),
    hidden=st.integers(0, 3),
    how=st.sampled_from([(0, 0), (9, 8)]),
)
def test_a_closed_bridge_hides_exactly_its_subtree(
    tree: list[Port], hidden: int, how: tuple[int, int]
) -> None:
    number(tree, 1, [], "built")
    topology = Topology.build(specs_of(tree), 256)
    hidden %= len(tree)
    renumber(topology, f"00:{hidden + 1:02x}.0", *how)
    first, last = tree[hidden].numbers["built"]
    below = {f.bdf for f in topology if first <= f.bdf.bus <= last}
    assert set(route(topology).address_of()) == {f.bdf for f in topology} - below


def test_reset_bridges_hide_everything_behind_them_until_numbered() -> None:
    specs = ["00:00.0=host-bridge", "00:1c.0=root-port,bus=1", "01:00.0=nvme", "01:1f.0=virtio-net"]
    topology = Topology.build(specs, 4, bare=True)  # without the ICH9 built-ins
    assert placed(topology)["01:1f.0"] == "01:1f.0"  # programmed as --device says
    assert topology.reset_bridges() == [Bdf(0, 0x1C, 0)]
    port = topology.get(Bdf(0, 0x1C, 0))
    assert port is not None and port.config.read(0x18, 4) & 0xFFFFFF == 0
    assert set(placed(topology)) == {"00:00.0", "00:1c.0"}
    renumber(topology, "00:1c.0", 4, 4)  # firmware numbers it; no ARI forwarding
    assert set(placed(topology)) == {"00:00.0", "00:1c.0", "04:00.0"}
    assert topology.reset_bridges() == [Bdf(0, 0x1C, 0)]
    assert topology.reset_bridges() == []
