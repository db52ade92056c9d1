"""Test-guest machines: a long-mode guest program over the one machine builder.

``scan``, ``demo``, ``bench`` and ``lspci --vm-view`` run these; ``pcihole boot`` runs the
firmware machine (``pcihole.q35.machine``) on the same builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcihole.guest.build import GuestProgram
from pcihole.guest.vm import GuestVm
from pcihole.host.smaps import resident_bytes
from pcihole.kvm import Kvm
from pcihole.machine import Machine, MachineOptions
from pcihole.machine.bars import BarDecoder, BarKey
from pcihole.machine.bus import BusDevice
from pcihole.pci.topology import Topology


class PciMachine(Machine):
    """A test-guest machine: ``program`` in long mode at ``options.ring`` with ``params``,
    the ECAM window at ``layout.ECAM_BASE``, CF8/CFC, and the report port.

    ``backends``: register blocks behind BARs (``bars.backends_for``); ``bars`` keeps them
    where the guest's config writes, through ECAM or CF8 alike, make them decode."""

    def __init__(
        self,
        kvm: Kvm,
        topology: Topology,
        options: MachineOptions,
        program: str | GuestProgram = "scan",
        params: Sequence[int] = (),
        name: str = "vm",
        backends: Mapping[BarKey, BusDevice] | None = None,
    ) -> None:
        shell = GuestVm(kvm, program, ring=options.ring, params=params, name=name)
        self.bars = None if backends is None else BarDecoder(shell, lambda: topology, backends)
        listeners = () if self.bars is None else (self.bars.config_written,)
        super().__init__(shell, topology, options, listeners=listeners)
        self.guest: GuestVm = shell


def shared_hole_memory_bytes(machines: Sequence[PciMachine]) -> int:
    """Host bytes behind the hole memory shared by ``machines`` (counted once)."""
    ranges: dict[tuple[int, int], None] = {}
    for machine in machines:
        if machine.strategy is not None:
            for item in machine.strategy.shared_ranges():
                ranges[item] = None
    return resident_bytes(ranges)
