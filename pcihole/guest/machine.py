"""Test-guest machines: a long-mode guest program over the one machine builder.

``scan``, ``demo``, ``bench`` and ``lspci --vm-view`` run these; ``pcihole boot`` runs the
firmware machine (``pcihole.machine.firmware``) on the same builder.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcihole import layout
from pcihole.closing import Closeable
from pcihole.guest.build import GuestProgram
from pcihole.guest.vm import GuestVm
from pcihole.holes.accounting import resident_bytes
from pcihole.holes.slots import HoleWrites
from pcihole.holes.strategy import HoleStrategy
from pcihole.kvm import Kvm
from pcihole.machine.runloop import RunResult
from pcihole.machine.window import (
    CONFIG_PORTS,
    EcamDevice,
    EcamWindow,
    LegacyConfigPorts,
    MachineOptions,
    MachineReport,
)
from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import Function
from pcihole.pci.topology import Topology


class PciMachine(Closeable):
    """One VM: RAM, a guest program in long mode, an ECAM window, CF8/CFC ports."""

    def __init__(
        self,
        kvm: Kvm,
        topology: Topology,
        options: MachineOptions,
        program: str | GuestProgram = "scan",
        params: Sequence[int] = (),
        name: str = "vm",
    ) -> None:
        self.options = options
        self.topology = topology
        self.guest = GuestVm(kvm, program, ring=options.ring, params=params, name=name)
        try:
            self.window = EcamWindow(self.guest, topology, options)
            self.legacy = LegacyConfigPorts(self.window)
            self.guest.ports.add(
                layout.PCI_CONFIG_ADDRESS_PORT, CONFIG_PORTS, self.legacy, "pci-config-ports"
            )
        except BaseException:
            self.guest.close()
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
        return self.window.memslots

    def hot_plug(self, function: Function) -> None:
        self.window.hot_plug(function)

    def hot_unplug(self, bdf: Bdf) -> None:
        self.window.hot_unplug(bdf)

    def run(self, max_exits: int | None = None) -> RunResult:
        return self.guest.run(max_exits)

    def request_stop(self) -> None:
        self.guest.request_stop()

    def report(self) -> MachineReport:
        return self.window.report()

    def close(self) -> None:
        self.window.close()
        self.guest.close()


def shared_hole_memory_bytes(machines: Sequence[PciMachine]) -> int:
    """Host bytes behind the hole memory shared by ``machines`` (counted once)."""
    ranges: dict[tuple[int, int], None] = {}
    for machine in machines:
        if machine.strategy is not None:
            for item in machine.strategy.shared_ranges():
                ranges[item] = None
    return resident_bytes(ranges)
