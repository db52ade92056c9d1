"""BAR decoding in a running VM: the host programs an NVMe function's BAR0 and command
register through the machine's CF8/CFC ports or its ECAM device (the paths a guest's config
writes take), the decoder places the controller's registers there, and a guest's MMIO read
gets CAP; with memory decoding off the same read finds nothing (all ones, counted
unclaimed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pcihole import layout
from pcihole.guest.machine import PciMachine
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.machine.bars import BarDecoder, backends_for
from pcihole.memory.access import FlatMemory
from pcihole.pci.bdf import Bdf
from pcihole.pci.ecam import encode_config_address
from pcihole.pci.topology import Topology

NVME = Bdf(0, 1, 0)
BUSES = 1


def config_write(machine: PciMachine, register: int, size: int, value: int) -> None:
    """A configuration write through CF8/CFC, as a guest's OUT instructions deliver it."""
    ports = machine.legacy
    ports.write(0, 4, encode_config_address(NVME, register & ~3))
    ports.write(4 + (register & 3), size, value)


def ecam_write(machine: PciMachine, register: int, size: int, value: int) -> None:
    """The same through the ECAM window, as a guest's MMIO store that exits delivers it."""
    machine.ecam.write(NVME.ecam_offset | register, size, value)


ConfigWrite = Callable[[PciMachine, int, int, int], None]


def nvme_machine(kvm: Kvm) -> tuple[PciMachine, BarDecoder]:
    topology = Topology.build(["00:00.0=host-bridge", f"{NVME}=nvme"], BUSES)
    backends = {
        (function.bdf, index): device
        for function in topology
        for index, device in backends_for(function, FlatMemory(0x1000)).items()
    }
    machine = PciMachine(kvm, topology, MachineOptions(buses=BUSES), "mmio", backends=backends)
    assert machine.bars is not None
    return machine, machine.bars


@pytest.mark.parametrize("write", [config_write, ecam_write])
def test_guest_reads_the_registers_where_the_bar_was_programmed(
    kvm: Kvm, write: ConfigWrite
) -> None:
    machine, decoder = nvme_machine(kvm)
    with machine:
        write(machine, 0x10, 4, layout.TEST_MMIO_BASE)
        write(machine, 0x14, 4, 0)
        assert machine.guest.mmio.find(layout.TEST_MMIO_BASE, 4) is None  # not decoding yet
        write(machine, 0x04, 2, 0x2)
        assert machine.guest.mmio.find(layout.TEST_MMIO_BASE, 4) is not None
        result = machine.run().check()
        assert result.syncs == [0x0F0107FF]  # CAP's low dword, from the guest's load
        assert machine.guest.mmio.unclaimed == 0  # its u64 write reached the controller
        write(machine, 0x04, 2, 0x0)
        assert machine.guest.mmio.find(layout.TEST_MMIO_BASE, 4) is None
    assert decoder.moves == 2 and decoder.clashes == 0


def test_without_memory_decoding_the_guest_finds_nothing(kvm: Kvm) -> None:
    machine, decoder = nvme_machine(kvm)
    with machine:
        config_write(machine, 0x10, 4, layout.TEST_MMIO_BASE)
        config_write(machine, 0x04, 2, 0x1)  # I/O space only: BAR0 is memory
        result = machine.run().check()
        assert result.syncs == [0xFFFFFFFF]
        assert machine.guest.mmio.unclaimed == 2
    assert decoder.moves == 0
