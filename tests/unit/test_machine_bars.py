"""The BAR decoder: register blocks follow BAR and command writes onto the buses, through
bridge windows; clashes with RAM, the ECAM window or another device are refused and counted."""

from __future__ import annotations

from dataclasses import dataclass, field

from pcihole.devices.ahci import Ahci, AhciIndexData
from pcihole.devices.msix import MsixTable
from pcihole.devices.nvme import Nvme
from pcihole.devices.virtio_pci import VirtioLegacyIo, VirtioPci
from pcihole.machine.bars import BarDecoder, backends_for, bridges_above
from pcihole.machine.bus import Bus
from pcihole.memory import MemoryMap, Region, RegionKind
from pcihole.memory.access import FlatMemory
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import COMMAND, MEMORY_BASE, MEMORY_LIMIT
from pcihole.pci.devices import MODELS, Function
from pcihole.pci.ecam import ConfigWrite

NVME_BDF = Bdf(1, 0, 0)
PORT_BDF = Bdf(0, 2, 0)


@dataclass
class FakeGuest:
    mmio: Bus = field(default_factory=lambda: Bus("mmio"))
    ports: Bus = field(default_factory=lambda: Bus("pio"))
    memory_map: MemoryMap = field(
        default_factory=lambda: MemoryMap(
            [
                Region(RegionKind.RAM, 0, 0x8000000, "ram"),
                Region(RegionKind.MMIO, 0xB0000000, 0x10000000, "ecam"),
            ]
        )
    )


def machine() -> tuple[FakeGuest, list[Function], BarDecoder]:
    functions = [
        MODELS["host-bridge"].build(Bdf(0, 0, 0)),
        MODELS["root-port"].build(PORT_BDF, {"bus": 1}),
        MODELS["nvme"].build(NVME_BDF),
        MODELS["ich9-ahci"].build(Bdf(0, 0x1F, 2)),
    ]
    guest = FakeGuest()
    backends = {}
    for function in functions:
        for index, device in backends_for(function, FlatMemory(0x1000)).items():
            backends[(function.bdf, index)] = device
    return guest, functions, BarDecoder(guest, lambda: functions, backends)


def open_port(port: Function, base: int = 0xFE80, limit: int = 0xFE80) -> None:
    port.config.write(MEMORY_BASE, 2, base)
    port.config.write(MEMORY_LIMIT, 2, limit)
    port.config.write(COMMAND, 2, 0x2)


def test_backends_by_model() -> None:
    _, functions, decoder = machine()
    kinds = {key: type(device) for key, device in decoder.backends.items()}
    assert kinds == {
        (PORT_BDF, 0): MsixTable,
        (NVME_BDF, 0): Nvme,
        (Bdf(0, 0x1F, 2), 5): Ahci,
        (Bdf(0, 0x1F, 2), 4): AhciIndexData,
    }
    virtio = MODELS["virtio-blk"].build(Bdf(0, 3, 0))
    blocks = backends_for(virtio, FlatMemory(16))
    assert isinstance(blocks[4], VirtioPci) and isinstance(blocks[1], MsixTable)
    if 0 in blocks:  # transitional models (an I/O BAR0) get the legacy block
        assert isinstance(blocks[0], VirtioLegacyIo)
    assert bridges_above(functions[2], functions) == [functions[1].config]


def test_nvme_appears_behind_an_open_bridge_and_leaves_when_decoding_stops() -> None:
    guest, functions, decoder = machine()
    nvme = functions[2]
    nvme.config.write(0x10, 8, 0xFE800000)
    nvme.config.write(COMMAND, 2, 0x6)
    decoder.config_written(ConfigWrite(NVME_BDF, COMMAND, 2))
    assert guest.mmio.read(0xFE800000, 4) == 0xFFFFFFFF  # the port forwards nothing yet
    open_port(functions[1])
    decoder.config_written(ConfigWrite(PORT_BDF, COMMAND, 2))
    assert guest.mmio.read(0xFE800000, 4) == 0x0F0107FF  # CAP, low dword
    nvme.config.write(0x10, 8, 0xFE804000)
    decoder.config_written(ConfigWrite(NVME_BDF, COMMAND, 2))
    assert guest.mmio.read(0xFE800000, 4) == 0xFFFFFFFF
    assert guest.mmio.read(0xFE804008, 4) == 0x00010400
    nvme.config.write(COMMAND, 2, 0x4)
    decoder.config_written(ConfigWrite(NVME_BDF, COMMAND, 2))
    assert [m.name for m in guest.mmio] == []
    assert decoder.moves == 4  # placed, moved (off and on), removed


def test_ahci_abar_and_index_data_pair_on_both_buses() -> None:
    guest, functions, decoder = machine()
    ahci = functions[3]
    ahci.config.write(0x20, 4, 0xC0E0)
    ahci.config.write(0x24, 4, 0xFEBF6000)
    ahci.config.write(COMMAND, 2, 0x7)
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    assert guest.mmio.read(0xFEBF6000, 4) == 0xC0141F05
    guest.ports.write(0xC0F0, 4, 0x0C)
    assert guest.ports.read(0xC0F4, 4) == 0x3F
    ahci.config.write(COMMAND, 2, 0x2)
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    assert [m.name for m in guest.ports] == []
    assert [m.name for m in guest.mmio] == ["00:1f.2 BAR5"]


def test_clashes_are_refused_counted_once_and_clear_when_moved() -> None:
    guest, functions, decoder = machine()
    ahci = functions[3]
    ahci.config.write(0x24, 4, 0x100000)  # inside RAM
    ahci.config.write(COMMAND, 2, 0x2)
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    assert decoder.clashes == 1
    assert "overlaps ram" in next(iter(decoder.clashing.values())).describe()
    assert guest.mmio.find(0x100000, 4) is None  # nothing placed over RAM
    ahci.config.write(0x24, 4, 0xB0001000)  # inside the ECAM window
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    assert decoder.clashes == 2
    guest.mmio.add(0xFEBF0000, 0x1000, Ahci(FlatMemory(16)), "other")
    ahci.config.write(0x24, 4, 0xFEBF0000)  # over another bus device
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    assert decoder.clashes == 3
    ahci.config.write(0x24, 4, 0xFEBF1000)
    decoder.config_written(ConfigWrite(ahci.bdf, COMMAND, 2))
    assert decoder.clashing == {}
    assert guest.mmio.find(0xFEBF1000, 4) is not None
