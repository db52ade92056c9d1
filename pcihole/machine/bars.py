"""What sits behind the BARs, and where: register blocks that follow the guest's BAR and
command writes onto the machine's MMIO and port buses.

``backends_for`` makes the register blocks a catalogue function has (``pcihole.devices``:
AHCI, NVMe, virtio-pci, MSI-X tables), by BAR, as its model registers them
(``DeviceModel.blocks``). ``BarDecoder`` keeps them placed: after every configuration
write (a listener of the window's ``ConfigWrite`` event, which ECAM
and CF8 writes raise alike; ``PciMachine(backends=...)`` and ``Q35Machine`` listen) it asks
``pcihole.pci.bars`` which BAR ranges decode now, through the bridges above each function,
and moves blocks to match: off the bus when decoding stops or the BAR moves, onto it at
the new range.

A range that would overlap guest RAM, ROM, the ECAM window or another bus device is not
placed and is counted (``clashes``): a real bus is undefined there (two decoders driving one
cycle), QEMU picks by region priority; here the earlier claimant keeps the range, the access
never reaches the new block, and the account says so. A clash clears by itself when either
side moves away (the next write re-plans everything).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pcihole.devices.irq import IrqLine, no_irq
from pcihole.machine.bus import Bus, BusDevice, BusError
from pcihole.memory import MemoryMap, MemoryMapError, Region, RegionKind
from pcihole.memory.access import GuestMemory
from pcihole.pci.bars import DecodedBar, Space, decoded_bars
from pcihole.pci.bdf import BuiltBdf
from pcihole.pci.config import ConfigSpace
from pcihole.pci.devices import MODELS, Function
from pcihole.pci.ecam import ConfigWrite

BarKey = tuple[BuiltBdf, int]
"""(function, BAR index)."""


class BarGuest(Protocol):
    """What the decoder needs of its VM: both buses and the memory map (RAM, ROM, ECAM)."""

    mmio: Bus
    ports: Bus
    memory_map: MemoryMap


class _Shifted:
    """A block reached from ``offset`` on: a BAR that a bridge window cuts at its start."""

    def __init__(self, device: BusDevice, offset: int) -> None:
        self.device, self.offset = device, offset

    def read(self, offset: int, size: int) -> int:
        return self.device.read(offset + self.offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.device.write(offset + self.offset, size, value)


@dataclass
class Clash:
    """A BAR range that could not be decoded, and what was in its way."""

    key: BarKey
    bar: DecodedBar
    reason: str

    def describe(self) -> str:
        bdf, index = self.key
        return f"{bdf} BAR{index} {self.bar.span}: {self.reason}"


@dataclass
class BarDecoder:
    """Keeps every backed BAR's block on the bus where the guest decodes it now."""

    guest: BarGuest
    functions: Callable[[], Iterable[Function]]
    """The present functions, as built (their wiring finds the bridges above each)."""
    backends: Mapping[BarKey, BusDevice]
    placed: dict[BarKey, DecodedBar] = field(default_factory=dict)
    clashing: dict[BarKey, Clash] = field(default_factory=dict)
    clashes: int = 0
    """Times a BAR range was refused for overlapping something (each new range once)."""
    moves: int = 0
    """Blocks placed or removed."""

    def config_written(self, write: ConfigWrite | None = None) -> None:
        """A configuration write happened (which one does not matter: a bridge's write
        moves what is behind it, so every function is looked at again)."""
        wanted = self._wanted()
        for key, bar in list(self.placed.items()):
            if wanted.get(key) != bar:
                self._bus(bar).remove(bar.span.base)
                del self.placed[key]
                self.moves += 1
        for key in list(self.clashing):
            if wanted.get(key) != self.clashing[key].bar:
                del self.clashing[key]
        for key in sorted(wanted, key=lambda k: (k[0].ecam_offset, k[1])):
            if key not in self.placed:
                self._place(key, wanted[key])

    def _wanted(self) -> dict[BarKey, DecodedBar]:
        functions = list(self.functions())
        wanted: dict[BarKey, DecodedBar] = {}
        for function in functions:
            bridges = bridges_above(function, functions)
            for bar in decoded_bars(function.config, bridges):
                if (function.bdf, bar.index) in self.backends:
                    wanted[(function.bdf, bar.index)] = bar
        return wanted

    def _bus(self, bar: DecodedBar) -> Bus:
        return self.guest.ports if bar.span.space is Space.IO else self.guest.mmio

    def _place(self, key: BarKey, bar: DecodedBar) -> None:
        bdf, index = key
        name = f"{bdf} BAR{index}"
        span = bar.span
        reason = None
        if span.space is Space.MEMORY:
            reason = self._memory_clash(Region(RegionKind.MMIO, span.base, span.size, name))
        if reason is None:
            device = self.backends[key]
            block = _Shifted(device, bar.offset) if bar.offset else device
            try:
                self._bus(bar).add(span.base, span.size, block, name)
            except BusError as error:
                reason = str(error)
        if reason is None:
            self.placed[key] = bar
            self.moves += 1
        elif key not in self.clashing:  # counted once per range, not at every write
            self.clashing[key] = Clash(key, bar, reason)
            self.clashes += 1

    def _memory_clash(self, region: Region) -> str | None:
        try:
            self.guest.memory_map.with_region(region)
        except MemoryMapError as error:
            return str(error)
        return None


def bridges_above(function: Function, functions: Iterable[Function]) -> list[ConfigSpace]:
    """The bridges between the root and ``function`` (root side first), by wiring: a
    function built on bus B sits behind the bridge built with secondary bus B."""
    by_secondary = {
        bridge.bridge_buses.start: bridge for bridge in functions if bridge.bridge_buses
    }
    path: list[ConfigSpace] = []
    bus = function.bdf.bus
    while bus != 0 and bus in by_secondary and len(path) < 256:
        bridge = by_secondary[bus]
        path.append(bridge.config)
        bus = bridge.bdf.bus
    return path[::-1]


def backends_for(
    function: Function, memory: GuestMemory, irq: IrqLine = no_irq
) -> dict[int, BusDevice]:
    """The register blocks behind ``function``'s BARs, by BAR index, as its model
    registers them (``DeviceModel.blocks``); ``memory`` is what DMA reaches (guest RAM),
    ``irq`` the function's INTx line."""
    return dict(MODELS[function.model].blocks(function.config, memory, irq))


def backends(functions: Iterable[Function], memory: GuestMemory) -> dict[BarKey, BusDevice]:
    """Every function's BAR blocks (``backends_for``), by (function, BAR index)."""
    return {
        (function.bdf, index): device
        for function in functions
        for index, device in backends_for(function, memory).items()
    }


__all__ = ["BarDecoder", "BarGuest", "Clash", "backends", "backends_for", "bridges_above"]
