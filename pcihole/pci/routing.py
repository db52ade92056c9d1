"""Which bus numbers reach which functions: PCI(e) routing of configuration requests.

A topology is built with bus numbers (``Function.bdf.bus``, ``Function.bridge_buses``), but
once a guest runs they are the guest's: firmware rewrites every bridge's secondary and
subordinate bus registers (0x19, 0x1a). What stays fixed is the wiring: each function sits
on a *segment*, the root segment or the one behind the bridge whose built secondary bus
equals the function's built bus.

A configuration request for bus B is routed as hardware routes it:
- B = 0 is a type 0 request on the root segment;
- otherwise a bridge on the current segment claims it when secondary <= B <= subordinate
  (and its Secondary Bus Reset bit is clear); B = secondary becomes a type 0 request on the
  segment behind it, a larger B is forwarded further down. A bridge that is not reachable
  itself forwards nothing. Two bridges claiming the same B is a guest error: the first in
  (device, function) order wins, so the answer is deterministic.
- a PCI Express root or downstream port turns requests into type 0 only for device 0,
  unless its ARI Forwarding Enable bit is set (PCIe base spec, Device Control 2). QEMU 7.2
  shows the same: a device at slot 0x1f behind a ``pcie-root-port`` reads all ones.

QEMU differs in one invalid case: it routes B to a bridge whose secondary is B even when
its subordinate is below B; here, as the PCI-to-PCI bridge specification says, such a
bridge claims nothing. Firmware never scans a bus while it is numbered so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import BUSES, Bdf, BuiltBdf, GuestBdf
from pcihole.pci.config import SECONDARY_BUS, SUBORDINATE_BUS, ConfigSpace
from pcihole.pci.devices import Function

BRIDGE_CONTROL = 0x3E
BRIDGE_CONTROL_BUS_RESET = 0x0040
"""Secondary Bus Reset: while set, nothing behind the bridge answers (QEMU does the same)."""
PCIE_DEVICE_CONTROL_2 = 0x28
PCIE_DEVCTL2_ARI_FORWARDING = 0x0020
"""ARI Forwarding Enable: the port stops forcing device 0 on its secondary bus."""
ROUTING_REGISTERS = (SECONDARY_BUS, SUBORDINATE_BUS, BRIDGE_CONTROL)
"""Config registers of a bridge (besides Device Control 2) a routing depends on."""
_DOWNSTREAM_PORTS = (caps.PortType.ROOT_PORT, caps.PortType.DOWNSTREAM_PORT)

Slot = tuple[int, int]
"""(device, function) on a bus."""


def _express_control_2(config: ConfigSpace) -> int | None:
    """Device Control 2 of a PCIe root or downstream port; None for other functions."""
    if caps.pcie_port_type(config) not in _DOWNSTREAM_PORTS:
        return None
    offset = config.find_capability(caps.CapabilityId.PCI_EXPRESS)
    assert offset is not None
    return config.read(offset + PCIE_DEVICE_CONTROL_2, 2)


def only_device_zero(bridge: Function) -> bool:
    """Whether the segment behind ``bridge`` answers only at device 0."""
    control = _express_control_2(bridge.config)
    return control is not None and not control & PCIE_DEVCTL2_ARI_FORWARDING


def set_ari_forwarding(bridge: Function, enabled: bool) -> bool:
    """Set or clear a PCIe port's ARI Forwarding Enable, as firmware or an OS would.

    Returns whether a register changed; False for a function that is not such a port.
    """
    offset = bridge.config.find_capability(caps.CapabilityId.PCI_EXPRESS)
    if offset is None or _express_control_2(bridge.config) is None:
        return False
    update = bridge.config.set_bits if enabled else bridge.config.clear_bits
    return update(offset + PCIE_DEVICE_CONTROL_2, 2, PCIE_DEVCTL2_ARI_FORWARDING)


class BridgeState(NamedTuple):
    """What routing reads of a bridge's registers."""

    secondary: int
    subordinate: int
    in_reset: bool
    device_zero_only: bool


def bridge_state(function: Function) -> BridgeState | None:
    """The routing registers of a bridge, None for an endpoint. Compare before and after
    a write to know whether the routing can have changed."""
    if function.bridge_buses is None:
        return None
    config = function.config
    return BridgeState(
        config.read(SECONDARY_BUS, 1),
        config.read(SUBORDINATE_BUS, 1),
        bool(config.read(BRIDGE_CONTROL, 2) & BRIDGE_CONTROL_BUS_RESET),
        only_device_zero(function),
    )


@dataclass(frozen=True)
class _Segment:
    """One bus segment as wired: the bridge leading to it (None: the root segment), its
    functions a type 0 request reaches, and the bridges among them with their states."""

    visible: tuple[Function, ...]
    bridges: tuple[tuple[int, int, int], ...]
    """(secondary, subordinate, built secondary bus) of each visible, forwarding bridge."""


def _segments(functions: Iterable[Function]) -> dict[int, _Segment]:
    """Segments by the bus number they were built with, read once from the registers."""
    members = sorted(functions, key=lambda f: f.bdf)
    states: dict[BuiltBdf, BridgeState] = {}
    leading: dict[int, BridgeState] = {}
    for f in members:
        state = bridge_state(f)
        if state is not None and f.bridge_buses is not None:
            states[f.bdf] = leading[f.bridge_buses[0]] = state
    segments = {}
    for bus in {0, *leading, *(f.bdf.bus for f in members)}:
        bridge = leading.get(bus)
        device_zero = bridge is not None and bridge.device_zero_only
        visible = tuple(
            f for f in members if f.bdf.bus == bus and (not device_zero or f.bdf.device == 0)
        )
        forwarding = [
            (states[f.bdf].secondary, states[f.bdf].subordinate, f.bridge_buses[0])
            for f in visible
            if f.bridge_buses is not None and not states[f.bdf].in_reset
        ]
        segments[bus] = _Segment(visible, tuple(forwarding))
    return segments


def _segment_for(bus: int, segments: Mapping[int, _Segment]) -> _Segment | None:
    """Which segment a type 1 request for ``bus``, issued on the root segment, ends on."""
    segment = segments[0]
    while bus != 0:
        claim = next((b for b in segment.bridges if b[0] <= bus <= b[1]), None)
        if claim is None:
            return None
        secondary, _, built = claim
        segment = segments[built]
        if secondary == bus:
            return segment
    return segment


@dataclass(frozen=True)
class Routing:
    """Where each function answers under the bridges' current bus numbers."""

    functions: Mapping[GuestBdf, Function]
    """Guest address -> function; functions nothing reaches are absent."""

    def function_at(self, bdf: GuestBdf) -> Function | None:
        return self.functions.get(bdf)

    def config_at(self, bdf: GuestBdf) -> ConfigSpace | None:
        """The configuration space answering at guest address ``bdf`` (a decoder lookup)."""
        function = self.functions.get(bdf)
        return None if function is None else function.config

    def by_bus(self) -> dict[int, dict[Slot, Function]]:
        """Guest bus number -> {(device, function) -> Function}."""
        buses: dict[int, dict[Slot, Function]] = {}
        for bdf, function in sorted(self.functions.items()):
            buses.setdefault(bdf.bus, {})[bdf.device, bdf.function] = function
        return buses

    def address_of(self) -> dict[BuiltBdf, GuestBdf]:
        """Built address -> the guest address the function answers at (reachable ones)."""
        return {function.bdf: bdf for bdf, function in self.functions.items()}

    def present_offsets(self, window_size: int | None = None) -> list[int]:
        """ECAM offsets of the reachable functions' pages, ascending; with ``window_size``,
        only those inside a window that decodes that many bytes."""
        offsets = sorted(bdf.ecam_offset for bdf in self.functions)
        return [o for o in offsets if window_size is None or o < window_size]


def route(functions: Iterable[Function]) -> Routing:
    """The routing of ``functions`` (a valid topology as built) under their registers now."""
    segments = _segments(functions)
    placed: dict[GuestBdf, Function] = {}
    for bus in range(BUSES):
        segment = _segment_for(bus, segments)
        if segment is None:
            continue
        for function in segment.visible:
            placed[GuestBdf(Bdf(bus, function.bdf.device, function.bdf.function))] = function
    return Routing(placed)


def as_built(functions: Iterable[Function]) -> dict[GuestBdf, Function]:
    """The layout a topology was built with: what ``route`` gives for untouched bridges
    (the guest reaching each function at its built address)."""
    return {GuestBdf(function.bdf): function for function in functions}


__all__ = [
    "BridgeState",
    "Routing",
    "as_built",
    "bridge_state",
    "only_device_zero",
    "route",
    "set_ari_forwarding",
]
