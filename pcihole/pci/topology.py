"""Which functions exist where: ``--device`` parsing and validation of the hierarchy.

A topology is a set of functions inside an ECAM window of ``buses`` buses. Every change
(building, hot-plug ``add``, ``remove``) is checked as a whole, so a topology is never
invalid: addresses are unique and inside the window, every function > 0 has a function 0
beside it, bridges lead to distinct, properly nested bus ranges above their own bus, and
every bus other than 0 is reached through a bridge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import BUSES, Bdf, BuiltBdf
from pcihole.pci.config import PRIMARY_BUS, ConfigSpace
from pcihole.pci.devices import MODELS, DeviceModel, Function
from pcihole.pci.errors import BdfError, DeviceError, TopologyError
from pcihole.pci.routing import set_ari_forwarding

SPEC_FORMAT = "BB:DD.F=MODEL[,key=value...]"
Q35_BUILTINS = (
    "00:00.0=host-bridge",
    "00:1f.0=ich9-lpc",
    "00:1f.2=ich9-ahci",
    "00:1f.3=ich9-smbus",
)
"""What a q35 machine always has, whatever ``-device`` adds."""
BARE = ("00:00.0=host-bridge",)
_NUMBER_RE = re.compile(r"0x[0-9a-f]+|[0-9]+", re.IGNORECASE)


@dataclass(frozen=True)
class DeviceSpec:
    """One parsed ``--device`` argument."""

    text: str
    bdf: Bdf
    model: DeviceModel
    params: Mapping[str, int]

    def build(self) -> Function:
        try:
            return self.model.build(self.bdf, self.params, spec=self.text)
        except DeviceError as error:
            raise TopologyError(str(error), self.text) from error


def _parse_number(text: str, key: str, spec: str) -> int:
    if not _NUMBER_RE.fullmatch(text):
        raise TopologyError(f"bad number {text!r} for {key}= (want decimal or 0x hex)", spec)
    return int(text, 0) if text[:2].lower() == "0x" else int(text, 10)


def parse_device_spec(text: str) -> DeviceSpec:
    """Parse ``BB:DD.F=MODEL[,key=value...]``, e.g. ``00:1c.0=root-port,bus=1``."""
    address, equals, rest = text.partition("=")
    if not equals:
        raise TopologyError(f"want {SPEC_FORMAT}", text)
    try:
        bdf = Bdf.parse(address)
    except BdfError as error:
        raise TopologyError(str(error), text) from error
    name, *assignments = rest.strip().split(",")
    model = MODELS.get(name.strip())
    if model is None:
        known = ", ".join(sorted(MODELS))
        raise TopologyError(f"unknown model {name.strip()!r} (known: {known})", text)
    params: dict[str, int] = {}
    for assignment in assignments:
        key, equals, value = (part.strip() for part in assignment.partition("="))
        if not equals or not key:
            raise TopologyError(f"malformed parameter {assignment!r} (want key=value)", text)
        if key not in model.keys:
            accepted = ", ".join(sorted(model.keys)) or "none"
            raise TopologyError(f"{model.name} does not take {key}= (it takes: {accepted})", text)
        if key in params:
            raise TopologyError(f"{key}= given twice", text)
        params[key] = _parse_number(value, key, text)
    return DeviceSpec(text, bdf, model, params)


def _bus_text(buses: range) -> str:
    first, last = buses[0], buses[-1]
    return f"bus {first}" if first == last else f"buses {first}-{last}"


def _check_window(functions: list[Function], buses: int) -> None:
    for function in functions:
        if function.bdf.bus >= buses:
            raise TopologyError(
                f"bus {function.bdf.bus} is outside the window of {buses} "
                f"bus{'es' if buses > 1 else ''} (0-{buses - 1})",
                function.spec,
            )


def _check_addresses(functions: list[Function]) -> None:
    seen: dict[Bdf, Function] = {}
    for function in functions:
        other = seen.setdefault(function.bdf, function)
        if other is not function:
            raise TopologyError(
                f"address {function.bdf} is already taken by {other.spec!r}", function.spec
            )
    for function in functions:
        bdf = function.bdf
        if bdf.function and Bdf(bdf.bus, bdf.device, 0) not in seen:
            raise TopologyError(
                f"function {bdf.function} of device {bdf.bus:02x}:{bdf.device:02x} has no "
                f"function 0 (a guest only looks further when function 0 exists)",
                function.spec,
            )


def _check_bridges(functions: list[Function], buses: int) -> None:
    bridges = [(f, f.bridge_buses) for f in functions if f.bridge_buses is not None]
    for bridge, below in bridges:
        own_bus = bridge.bdf.bus
        if below[0] <= own_bus:
            raise TopologyError(
                f"leads to {_bus_text(below)}, which is not above its own bus {own_bus}",
                bridge.spec,
            )
        if below[-1] >= buses:
            raise TopologyError(
                f"leads to {_bus_text(below)}, outside the window of {buses} buses (0-{buses - 1})",
                bridge.spec,
            )
    # Each pair once, blaming the later bridge: the one that took what was already taken.
    for index, (bridge, below) in enumerate(bridges):
        for other, other_below in bridges[:index]:
            _check_bridge_pair(bridge, below, other, other_below)


def _check_bridge_pair(bridge: Function, below: range, other: Function, other_below: range) -> None:
    """Bus ranges of two bridges must be disjoint, or one nested below the other."""
    if below[0] == other_below[0]:
        raise TopologyError(
            f"secondary bus {below[0]} is already taken by bridge {other.spec!r}", bridge.spec
        )
    bridge_is_below = bridge.bdf.bus in other_below
    other_is_below = other.bdf.bus in below
    if bridge_is_below and not set(below) <= set(other_below):
        raise TopologyError(
            f"leads to {_bus_text(below)}, but its parent bridge {other.spec!r} "
            f"only forwards {_bus_text(other_below)}",
            bridge.spec,
        )
    if other_is_below and not set(other_below) <= set(below):
        raise TopologyError(
            f"forwards only {_bus_text(below)}, but bridge {other.spec!r} behind it "
            f"leads to {_bus_text(other_below)}",
            bridge.spec,
        )
    if set(below) & set(other_below) and not (bridge_is_below or other_is_below):
        raise TopologyError(
            f"{_bus_text(below)} overlap {_bus_text(other_below)} of bridge {other.spec!r}",
            bridge.spec,
        )


def _check_reachable(functions: list[Function]) -> None:
    reachable = {bus for f in functions if f.bridge_buses is not None for bus in f.bridge_buses}
    for function in functions:
        bus = function.bdf.bus
        if bus != 0 and bus not in reachable:
            raise TopologyError(
                f"bus {bus} has no bridge leading to it (add a root-port with bus={bus})",
                function.spec,
            )


def validate(functions: Iterable[Function], buses: int) -> None:
    """Raise TopologyError naming the first offending function, in the order given."""
    if not 1 <= buses <= BUSES:
        raise TopologyError(f"bus count {buses} is not in 1-{BUSES}")
    candidates = list(functions)
    _check_window(candidates, buses)
    _check_addresses(candidates)
    _check_bridges(candidates, buses)
    _check_reachable(candidates)


class Topology:
    """The present functions of one ECAM window, always valid, iterated in Bdf order."""

    def __init__(self, buses: int, functions: Iterable[Function] = ()) -> None:
        candidates = list(functions)
        validate(candidates, buses)
        self._buses = buses
        self._functions = {function.bdf: function for function in candidates}
        self._bridges_reset = False
        self._mark_multifunction(self._functions)
        self._update_slots(announce=False)  # cold-plugged: present, but no change events
        self._program_forwarding()

    @classmethod
    def build(cls, specs: Iterable[str], buses: int, *, bare: bool = False) -> Topology:
        """The q35 built-ins plus ``--device`` texts, as QEMU's ``-device`` adds to them.

        ``bare`` starts from the host bridge alone (for experiments; QEMU cannot do it). A
        text naming a built-in at its own address, without parameters, is that built-in.
        The first bad text raises TopologyError.
        """
        validate([], buses)
        parsed = [parse_device_spec(text) for text in specs]
        given = {spec.bdf: spec for spec in parsed}
        base = []
        for builtin in map(parse_device_spec, BARE if bare else Q35_BUILTINS):
            spec = given.get(builtin.bdf)
            if spec is None:
                base.append(builtin)
            elif spec.model is not builtin.model or spec.params:
                raise TopologyError(
                    f"{builtin.bdf} is the q35 built-in {builtin.model.name} "
                    f"(--bare starts from a bare host bridge)",
                    spec.text,
                )
        return cls(buses, [spec.build() for spec in (*base, *parsed)])

    @classmethod
    def default(cls, buses: int) -> Topology:
        """What pcihole runs with no ``--device``: the q35 built-ins and, as the window
        allows, a root port with virtio-net and one with NVMe behind it."""
        specs = []
        if buses > 1:
            specs += ["00:1c.0=root-port,bus=1", "01:00.0=virtio-net"]
        if buses > 2:
            specs += ["00:1c.1=root-port,bus=2,slot=1", "02:00.0=nvme"]
        return cls.build(specs, buses)

    @classmethod
    def qemu_nodefaults(cls, buses: int = BUSES) -> Topology:
        """What ``qemu-system-x86_64 -machine q35 -nodefaults`` shows a guest: the built-ins."""
        return cls.build([], buses)

    @classmethod
    def bare(cls, buses: int = BUSES) -> Topology:
        """Only the host bridge at 00:00.0."""
        return cls.build([], buses, bare=True)

    # -- queries -----------------------------------------------------------------------

    @property
    def buses(self) -> int:
        """Buses in the ECAM window."""
        return self._buses

    @property
    def functions(self) -> tuple[Function, ...]:
        return tuple(self._functions[bdf] for bdf in sorted(self._functions))

    def __iter__(self) -> Iterator[Function]:
        return iter(self.functions)

    def __len__(self) -> int:
        return len(self._functions)

    def __contains__(self, bdf: object) -> bool:
        return bdf in self._functions

    def get(self, bdf: BuiltBdf) -> Function | None:
        return self._functions.get(bdf)

    def config_at(self, bdf: BuiltBdf) -> ConfigSpace | None:
        """The configuration space of the function built at ``bdf``, or None (for the guest's
        view under renumbered bridges, ``pci.routing.Routing.config_at``)."""
        function = self._functions.get(bdf)
        return None if function is None else function.config

    def present_offsets(self) -> list[int]:
        """ECAM offsets of the present functions' 4 KiB pages as built, ascending."""
        return [bdf.ecam_offset for bdf in sorted(self._functions)]

    # -- hot-plug ----------------------------------------------------------------------

    def add(self, function: Function) -> list[BuiltBdf]:
        """Hot-plug ``function``. Returns the pages to mirror again, the new one first.

        Siblings gain the multi-function bit and the slot above shows presence, so their
        pages change too.
        """
        candidates = [*self._functions.values(), function]
        validate(candidates, self._buses)
        self._functions[function.bdf] = function
        changed = {*self._mark_multifunction(self._functions), *self._update_slots(announce=True)}
        changed.update(self._program_forwarding())
        changed.discard(function.bdf)
        return [function.bdf, *sorted(changed)]

    def remove(self, bdf: BuiltBdf) -> list[BuiltBdf]:
        """Hot-unplug the function at ``bdf`` (its page becomes a hole).

        Refuses to strand other functions. Returns ``bdf`` followed by the pages that changed
        (a slot that is now empty).
        """
        removed = self._functions.get(bdf)
        if removed is None:
            raise TopologyError(f"no function at {bdf} to remove")
        try:
            validate((f for f in self._functions.values() if f is not removed), self._buses)
        except TopologyError as error:
            raise TopologyError(f"cannot remove it: {error}", removed.spec) from error
        del self._functions[bdf]
        return [bdf, *self._update_slots(announce=True)]

    def reset_bridges(self) -> list[BuiltBdf]:
        """Bridges as they come out of reset, as QEMU's do: secondary = subordinate = 0,
        ARI forwarding off, so nothing behind them answers until firmware numbers them.

        Without firmware (``scan``, ``demo``, ``lspci``) bridges stay as ``--device`` built
        them, as firmware would have programmed them. Returns the bridges that changed.
        """
        self._bridges_reset = True
        changed = []
        for bdf, function in sorted(self._functions.items()):
            if function.bridge_buses is not None:
                config = function.config
                moved = config.read(PRIMARY_BUS, 4) & 0xFFFFFF != 0
                config.set_bus_numbers(0, 0, 0)
                if set_ari_forwarding(function, False) or moved:
                    changed.append(bdf)
        return changed

    def _program_forwarding(self) -> list[BuiltBdf]:
        """Firmware's part, for guests without firmware: a PCIe port with functions beyond
        device 0 behind it gets ARI forwarding, so they answer. Returns the ports changed."""
        if self._bridges_reset:
            return []
        beyond_zero = {bdf.bus for bdf in self._functions if bdf.device}
        return [
            bdf
            for bdf, function in sorted(self._functions.items())
            if function.bridge_buses is not None
            and function.bridge_buses[0] in beyond_zero
            and set_ari_forwarding(function, True)
        ]

    def _update_slots(self, *, announce: bool) -> list[BuiltBdf]:
        """Make each slot's presence bits match whether its secondary bus has a function."""
        occupied_buses = {bdf.bus for bdf in self._functions}
        changed = []
        for bdf, function in sorted(self._functions.items()):
            below = function.bridge_buses
            if below is None or not caps.has_slot(function.config):
                continue
            occupied = below[0] in occupied_buses
            if caps.set_slot_occupied(function.config, occupied, announce=announce):
                changed.append(bdf)
        return changed

    @staticmethod
    def _mark_multifunction(functions: Mapping[BuiltBdf, Function]) -> list[BuiltBdf]:
        """Set the multi-function bit of function 0 of every device with several functions.

        Only function 0's counts for a guest; QEMU sets it where ``multifunction=on`` is
        given, which it requires on function 0 (ICH9's functions carry it from their model).
        """
        per_device: dict[tuple[int, int], int] = {}
        for bdf in functions:
            key = (bdf.bus, bdf.device)
            per_device[key] = per_device.get(key, 0) + 1
        changed = []
        for bdf, function in functions.items():
            shared = per_device[bdf.bus, bdf.device] > 1
            if shared and bdf.function == 0 and function.config.set_multifunction():
                changed.append(bdf)
        return sorted(changed)
