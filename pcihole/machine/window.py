"""The ECAM window of one VM: placement, routing, mirrors, hole slots and the device beneath.

The ECAM window is covered three ways at once:
- hole runs (absent functions) get the hole strategy's memslots (``shared``/``fill``) or
  nothing (``trap``);
- present functions get a read-only mirror page of their config space (``present=
  "mirror"``), refreshed after every write the model handles, or nothing (``"trap"``);
- underneath, one MMIO device answers every access that still exits: all ones for holes,
  the model for present functions. So while slots change (hot-plug) a guest can only see
  all ones or the real header.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pcihole import layout
from pcihole.bits import all_ones
from pcihole.errors import Bug
from pcihole.holes.planner import Run, hole_runs
from pcihole.holes.slots import HoleSlots, HoleWrites
from pcihole.holes.source import Backing
from pcihole.holes.strategy import HoleStrategy, make_strategy
from pcihole.kvm import CoalescedWrite, Vm
from pcihole.machine.bus import Bus
from pcihole.machine.mirrors import MirrorPages
from pcihole.machine.runloop import RunLoop
from pcihole.memory import MemoryMap, MemoryMapError, Region, RegionKind, SlotAllocator
from pcihole.pci.bdf import BuiltBdf, GuestBdf
from pcihole.pci.config import ACCESS_SIZES, ConfigSpace
from pcihole.pci.devices import Function
from pcihole.pci.ecam import ConfigListener, ConfigMechanism1, ConfigWrite
from pcihole.pci.routing import BridgeState, Routing, bridge_state, route
from pcihole.pci.topology import Topology

PRESENT_MODES = ("mirror", "trap")


class MachineError(Bug):
    """A machine could not be built or changed; the message says what and why."""


@dataclass(frozen=True)
class MachineOptions:
    """How one VM answers its configuration space."""

    buses: int = layout.ECAM_MAX_BUSES
    strategy: str = "shared"
    """Holes: ``shared`` (one all-ones memory), ``fill`` (private 0xff), ``trap``."""
    present: str = "mirror"
    """Present functions: ``mirror`` (read-only page, writes exit) or ``trap``."""
    writes: str = "coalesce"
    """Hole writes: ``coalesce`` (no synchronous exit) or ``exit``."""
    backing: Backing | None = None
    socket_path: str | None = None
    ring: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.buses <= layout.ECAM_MAX_BUSES:
            raise MachineError(f"buses must be 1 to {layout.ECAM_MAX_BUSES}, got {self.buses}")
        if self.present not in PRESENT_MODES:
            raise MachineError(f"present must be one of {', '.join(PRESENT_MODES)}")


@dataclass
class ConfigExits:
    """Configuration accesses that left the guest, by what they hit."""

    hole_reads: int = 0
    hole_writes: int = 0
    device_reads: int = 0
    device_writes: int = 0

    @property
    def hole(self) -> int:
        return self.hole_reads + self.hole_writes

    @property
    def device(self) -> int:
        return self.device_reads + self.device_writes


class EcamDevice:
    """The MMIO device under the whole ECAM window: what still exits ends here."""

    def __init__(self, window: EcamWindow) -> None:
        self.window = window
        self.exits = ConfigExits()

    def read(self, offset: int, size: int) -> int:
        register = offset & 0xFFF
        if register + size > layout.PAGE_SIZE:  # straddles two functions: split it
            first = layout.PAGE_SIZE - register
            low = self.read(offset, first)
            return low | self.read(offset + first, size - first) << (8 * first)
        function = self.window.functions_by_page.get(offset >> layout.PAGE_SHIFT)
        if function is None:
            self.exits.hole_reads += 1
            return all_ones(size)
        self.exits.device_reads += 1
        config = function.config
        if size not in ACCESS_SIZES:  # 3, 5, 6, 7: KVM split an access at the page boundary
            return int.from_bytes([config.read(register + i, 1) for i in range(size)], "little")
        return config.read(register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        register = offset & 0xFFF
        if register + size > layout.PAGE_SIZE:
            first = layout.PAGE_SIZE - register
            self.write(offset, first, value & ((1 << (8 * first)) - 1))
            self.write(offset + first, size - first, value >> (8 * first))
            return
        function = self.window.functions_by_page.get(offset >> layout.PAGE_SHIFT)
        if function is None:
            self.exits.hole_writes += 1
            base = self.window.base or 0  # the device is on the bus only while placed
            self.window.hole_writes.record(base + offset, size, value.to_bytes(size, "little"))
            return
        self.exits.device_writes += 1
        config = function.config
        if size not in ACCESS_SIZES:  # a fragment of an access split at the page boundary
            changed = False
            for i in range(size):
                changed = config.write(register + i, 1, value >> (8 * i) & 0xFF) or changed
        else:
            changed = config.write(register, size, value)
        if changed:
            self.window.written(ConfigWrite(function.bdf, register, size))


@dataclass
class MachineReport:
    """What a machine is made of, for the CLI and benchmarks."""

    strategy: str
    backing: str
    detail: str
    notes: list[str] = field(default_factory=list)


class WindowGuest(Protocol):
    """What an ECAM window needs of its VM (a vCPU shell: ``guest.vm.GuestVm``,
    ``q35.shell.Q35Shell``)."""

    vm: Vm
    slots: SlotAllocator
    mmio: Bus
    memory_map: MemoryMap
    loop: RunLoop

    def on_coalesced(self, callback: Callable[[list[CoalescedWrite]], None] | None) -> None: ...


class EcamWindow:
    """A VM's ECAM window: present functions' mirror pages, hole slots, the MMIO device.

    The window can be placed, moved and removed while the VM lives (firmware does this
    through the host bridge's PCIEXBAR register); ``base`` is None while it is disabled.
    """

    def __init__(
        self,
        guest: WindowGuest,
        topology: Topology,
        options: MachineOptions,
        base: int | None = layout.ECAM_BASE,
        listeners: Sequence[ConfigListener] = (),
    ) -> None:
        if topology.buses != options.buses:
            raise MachineError(f"topology has {topology.buses} buses, options say {options.buses}")
        self.guest = guest
        self.topology = topology
        self.options = options
        self.size = layout.ecam_size(options.buses)
        self.base: int | None = None
        self.routing = Routing({})
        """Which guest address reaches which function, under the bridges' bus numbers."""
        self._bridges: dict[BuiltBdf, BridgeState] = {}
        self.functions_by_page: dict[int, Function] = {}
        """Guest ECAM page -> the function answering exits there."""
        self.mirrors = MirrorPages(guest.vm, guest.slots)
        """By the function's built address (``Function.bdf``); mapped at its guest page."""
        self.hole_writes = HoleWrites()
        self.listeners = tuple(listeners)
        """Hear every config write that changed a function (the chipset, the BAR decoder)."""
        self.ecam = EcamDevice(self)
        self._lock = threading.RLock()
        self.strategy: HoleStrategy | None = None
        self.holes: HoleSlots | None = None
        self._reroute()
        self.functions_by_page = self._page_index()
        self.hole_setup_seconds = 0.0
        """Time spent making hole memory ready and its memslots: what `fill` spends filling."""
        try:
            vm = guest.vm
            started = time.perf_counter()
            self.strategy = make_strategy(
                options.strategy,
                window_size=self.size,
                readonly_memory=vm.has_readonly_memory,
                backing=options.backing,
                socket_path=options.socket_path,
                free_memslots=guest.slots.free,
            )
            self.hole_setup_seconds += time.perf_counter() - started
            self.holes = HoleSlots(vm, guest.slots, self.strategy, writes=options.writes)
            guest.on_coalesced(self.hole_writes.record_coalesced)
            if base is not None:
                self.place(base)
        except BaseException:
            self.close()
            raise

    # --- placement ------------------------------------------------------------------------
    def place(self, base: int | None, buses: int | None = None) -> None:
        """Put the window at guest-physical ``base`` (None: remove it), decoding its first
        ``buses`` buses (default: all it was built for). All or nothing."""
        with self._lock:
            buses = self.options.buses if buses is None else buses
            if not 1 <= buses <= self.options.buses:
                raise MachineError(f"window decodes 1 to {self.options.buses} buses, not {buses}")
            size = layout.ecam_size(buses)
            if base == self.base and size == self.size:
                return
            old, old_size = self.base, self.size
            if old is not None:
                self._unplace()
            self.size = size
            if base is None:
                return
            try:
                self._place(base)
            except BaseException:
                self._unplace()
                self.size = old_size
                if old is not None:
                    self._place(old)
                raise

    def _place(self, base: int) -> None:
        assert self.holes is not None
        region = Region(RegionKind.MMIO, base, self.size, "ecam")
        if base % layout.HUGE_PAGE_SIZE:
            raise MachineError(f"ECAM base {base:#x} is not 2 MiB aligned")
        self.guest.memory_map = self.guest.memory_map.with_region(region)
        self.base = base
        self.region = region
        self.guest.mmio.add(base, self.size, self.ecam, "ecam")
        if self.options.present == "mirror":
            for function in self.routing.functions.values():
                if self._decodes(function):
                    self._map_mirror(function)
        started = time.perf_counter()
        self.holes.set_runs(self._runs(), base, drain=self.guest.loop.drain)
        self.hole_setup_seconds += time.perf_counter() - started

    def _unplace(self) -> None:
        if self.base is None:
            return
        if self.holes is not None:
            self.holes.set_runs([], self.base, drain=self.guest.loop.drain)
        for bdf in list(self.mirrors):
            self.mirrors.unmap(bdf)
        if any(m.base == self.base for m in self.guest.mmio):
            self.guest.mmio.remove(self.base)
        if self.region in self.guest.memory_map.regions:
            self.guest.memory_map = self.guest.memory_map.without(self.region)
        self.base = None

    def _runs(self) -> list[Run]:
        assert self.base is not None
        present = [self.base + offset for offset in self.routing.present_offsets(self.size)]
        return hole_runs(self.base, self.size, present)

    def _reroute(self) -> None:
        """Route again from the bridges' registers; ``functions_by_page`` is left alone."""
        self.routing = route(self.topology)
        self._addresses = self.routing.address_of()
        self._bridges = {}
        for function in self.topology:
            state = bridge_state(function)
            if state is not None:
                self._bridges[function.bdf] = state

    def _page_index(self) -> dict[int, Function]:
        return {
            bdf.ecam_offset >> layout.PAGE_SHIFT: function
            for bdf, function in self.routing.functions.items()
        }

    def guest_address(self, function: Function) -> GuestBdf | None:
        """Where the guest reaches ``function`` now; None while no bus number leads there."""
        return self._addresses.get(function.bdf)

    def function_at(self, bdf: GuestBdf) -> Function | None:
        """The function answering at guest address ``bdf`` (CF8 and ECAM alike)."""
        return self.routing.function_at(bdf)

    def config_at(self, bdf: GuestBdf) -> ConfigSpace | None:
        return self.routing.config_at(bdf)

    def _decodes(self, function: Function) -> bool:
        """Whether the function's page lies inside the decoded part of the window."""
        address = self.guest_address(function)
        return address is not None and address.ecam_offset < self.size

    def _map_mirror(self, function: Function) -> None:
        assert self.base is not None
        address = self.guest_address(function)
        assert address is not None
        what = f"config page of {function.bdf} at {address}"
        registers = function.config.snapshot()
        self.mirrors.map(function.bdf, self.base + address.ecam_offset, registers, what)

    def written(self, write: ConfigWrite) -> None:
        """A guest's write (ECAM or CF8) changed a function: mirror it, tell the listeners."""
        self.refresh_mirror(write.bdf)
        for listener in self.listeners:
            listener(write)

    def refresh_mirror(self, bdf: BuiltBdf) -> None:
        """After a write to the function built at ``bdf`` (or a plug): copy its registers
        into its read-only page, and if they were a bridge's bus numbers, re-plan."""
        function = self.topology.get(bdf)
        if function is not None and bdf in self.mirrors:
            self.mirrors.refresh(bdf, function.config.snapshot())
        if function is not None and bridge_state(function) != self._bridges.get(bdf):
            self.replan()

    def replan(self) -> None:
        """Follow the routing the bridges' registers give now: mirror pages move, hole
        runs are planned again, memslots change live.

        The order keeps what hot-plug keeps (a read sees all ones or a real header): a
        mirror whose function moves or hides goes first; then exits answer the new
        function where one was before, all ones where none is now; then hole slots
        change (a hole slot is only added over pages no mirror maps any more, and leaves
        pages that become present); then exits answer at new pages; then their mirrors
        are mapped.
        """
        with self._lock:
            old = dict(self._addresses)
            self._reroute()
            moved = [bdf for bdf in self.mirrors if self._addresses.get(bdf) != old.get(bdf)]
            for bdf in moved:
                self.mirrors.unmap(bdf)
            new_index = self._page_index()
            kept = {page: new_index[page] for page in self.functions_by_page if page in new_index}
            self.functions_by_page = kept
            if self.base is not None:
                assert self.holes is not None
                self.holes.set_runs(self._runs(), self.base, drain=self.guest.loop.drain)
            self.functions_by_page = new_index
            if self.base is not None and self.options.present == "mirror":
                for function in self.routing.functions.values():
                    if function.bdf not in self.mirrors and self._decodes(function):
                        self._map_mirror(function)

    # --- hot-plug ------------------------------------------------------------------------
    def hot_plug(self, function: Function) -> None:
        """Add ``function`` while the guest may be running.

        Order matters: the hole slot covering its page goes, then the model answers exits
        there, then its mirror page is mapped. What exits answer changes only while no
        slot maps the page: an exit raised earlier (say while an unplug had the page
        unmapped) may be answered late, and must not show the header while the hole slot
        still maps the page, or the guest could read the header, all ones, the header.
        """
        with self._lock:
            changed = self.topology.add(function)
            try:
                self.replan()
            except BaseException:
                if function.bdf in self.mirrors:
                    self.mirrors.unmap(function.bdf)
                self.topology.remove(function.bdf)
                self.replan()
                raise
            for bdf in changed[1:]:
                self.refresh_mirror(bdf)

    def hot_unplug(self, bdf: BuiltBdf) -> None:
        """Remove the function at ``bdf``; its page becomes a hole again.

        The mirror goes first, then exits answer all ones, then the hole slot comes (the
        reverse of ``hot_plug``, for the same reason).
        """
        with self._lock:
            changed = self.topology.remove(bdf)
            self.replan()
            for other in changed[1:]:
                self.refresh_mirror(other)

    # --- measuring -----------------------------------------------------------------------
    @property
    def memslots(self) -> int:
        """Memslots this window uses (holes and mirror pages)."""
        return self.hole_memslots + len(self.mirrors)

    @property
    def hole_memslots(self) -> int:
        return self.holes.slot_count if self.holes else 0

    def report(self) -> MachineReport:
        assert self.strategy is not None and self.holes is not None
        notes = [note for note in (self.strategy.note, self.holes.note) if note]
        return MachineReport(self.strategy.name, self.strategy.backing, self.strategy.detail, notes)

    def close(self) -> None:
        if not self.guest.vm.closed:
            self._unplace()
        self.mirrors.close()
        if self.holes is not None:
            self.holes.close()
            self.holes = None
        if self.strategy is not None:
            self.strategy.close()
            self.strategy = None


class LegacyConfigPorts:
    """Configuration mechanism #1 on ports CF8-CFF, over the same models as ECAM.

    Every access exits (port I/O always does); writes that change a model reach the
    window's ``written`` as ECAM's do (its mirror page, the listeners).
    """

    def __init__(self, window: EcamWindow) -> None:
        self.window = window
        self.mechanism = ConfigMechanism1(window.config_at)
        self.exits = 0

    def read(self, offset: int, size: int) -> int:
        self.exits += 1
        return self.mechanism.io_read(layout.PCI_CONFIG_ADDRESS_PORT + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.exits += 1
        changed = self.mechanism.io_write(layout.PCI_CONFIG_ADDRESS_PORT + offset, size, value)
        if changed is None:
            return
        address, register = changed
        function = self.window.function_at(address)
        if function is not None:
            self.window.written(ConfigWrite(function.bdf, register, size))


CONFIG_PORTS = 8
"""CF8-CFF."""


__all__ = [
    "ConfigExits",
    "MachineError",
    "MachineOptions",
    "MemoryMapError",
]
