"""The one machine builder: a vCPU shell, a topology, options and devices make a Machine.

A shell is a VM with its vCPU and run loop, memory already mapped (RAM, ROM or a test
program) and empty buses: ``guest.vm.GuestVm`` for the long-mode test guests,
``q35.shell.Q35Shell`` for firmware at the reset vector. The builder adds what every
PC-like machine has the same way: the ECAM window (mirrors, hole slots, the device
beneath), configuration mechanism #1 on CF8-CFF (or what ``config_ports`` makes of it:
q35 shares 0xcf9 with reset control), then the caller's devices on the port and MMIO
buses. ``listeners`` hear every config write that changed a function, as one
``ConfigWrite`` event (the chipset's registers, the BAR decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pcihole import layout
from pcihole.closing import Closeable
from pcihole.holes.slots import HoleWrites
from pcihole.holes.strategy import HoleStrategy
from pcihole.machine.bus import Bus, BusDevice
from pcihole.machine.runloop import RunResult
from pcihole.machine.window import (
    CONFIG_PORTS,
    EcamDevice,
    EcamWindow,
    LegacyConfigPorts,
    MachineOptions,
    MachineReport,
    WindowGuest,
)
from pcihole.pci.bdf import BuiltBdf
from pcihole.pci.devices import Function
from pcihole.pci.ecam import ConfigListener
from pcihole.pci.topology import Topology


class Shell(WindowGuest, Protocol):
    """A VM with one vCPU, its memory mapped, its buses empty, ready to run."""

    ports: Bus

    def run(self, max_exits: int | None = None) -> RunResult: ...

    def request_stop(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PlacedDevice:
    """A device and where it answers: ``size`` ports or bytes from ``base`` on one bus."""

    bus: Literal["port", "mmio"]
    base: int
    size: int
    device: BusDevice
    name: str


class Machine(Closeable):
    """A shell with an ECAM window, CF8/CFC and ``devices``; owns (and closes) the shell.

    ``window_base`` None leaves the window unplaced until the chipset places it (firmware
    programs PCIEXBAR); test guests find it at ``layout.ECAM_BASE`` from the start.
    ``config_ports`` turns the CF8/CFC device into what answers on CF8-CFF.
    """

    def __init__(
        self,
        shell: Shell,
        topology: Topology,
        options: MachineOptions,
        devices: Sequence[PlacedDevice] = (),
        *,
        window_base: int | None = layout.ECAM_BASE,
        listeners: Sequence[ConfigListener] = (),
        config_ports: Callable[[LegacyConfigPorts], BusDevice] | None = None,
    ) -> None:
        self.guest = shell
        self.topology = topology
        self.options = options
        try:
            self.window = EcamWindow(shell, topology, options, window_base, listeners)
            self.legacy = LegacyConfigPorts(self.window)
            ports = self.legacy if config_ports is None else config_ports(self.legacy)
            shell.ports.add(layout.PCI_CONFIG_ADDRESS_PORT, CONFIG_PORTS, ports, "pci-config")
            for placed in devices:
                bus = shell.ports if placed.bus == "port" else shell.mmio
                bus.add(placed.base, placed.size, placed.device, placed.name)
        except BaseException:
            self.close()
            raise

    @property
    def ecam(self) -> EcamDevice:
        return self.window.ecam

    @property
    def hole_writes(self) -> HoleWrites:
        return self.window.hole_writes

    @property
    def strategy(self) -> HoleStrategy | None:
        return self.window.strategy

    @property
    def memslots(self) -> int:
        """Memslots the ECAM window uses (holes and mirror pages)."""
        return self.window.memslots

    def hot_plug(self, function: Function) -> None:
        self.window.hot_plug(function)

    def hot_unplug(self, bdf: BuiltBdf) -> None:
        self.window.hot_unplug(bdf)

    def run(self, max_exits: int | None = None) -> RunResult:
        return self.guest.run(max_exits)

    def request_stop(self) -> None:
        self.guest.request_stop()

    def report(self) -> MachineReport:
        return self.window.report()

    def close(self) -> None:
        window: EcamWindow | None = getattr(self, "window", None)
        if window is not None:
            window.close()
        self.guest.close()
