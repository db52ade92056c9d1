"""ECAM and CF8/CFC decoding: addresses, holes reading all ones, writes reaching registers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcihole.bits import all_ones
from pcihole.holes.slots import HoleWrite, HoleWrites
from pcihole.layout import ECAM_BASE, PAGE_SHIFT
from pcihole.machine import ConfigExits, EcamDevice, LegacyConfigPorts
from pcihole.pci.bdf import Bdf, BuiltBdf
from pcihole.pci.config import COMMAND, ConfigSpace
from pcihole.pci.devices import Function
from pcihole.pci.ecam import (
    ConfigMechanism1,
    ConfigWrite,
    decode_config_address,
    ecam_decode,
    ecam_encode,
    encode_config_address,
)
from pcihole.pci.errors import EcamError
from pcihole.pci.topology import Topology

bdfs = st.builds(Bdf, st.integers(0, 255), st.integers(0, 31), st.integers(0, 7))


def test_ecam_decode() -> None:
    assert ecam_decode(0xFB000 + 0x10) == (Bdf(0, 0x1F, 3), 0x10)
    assert ecam_decode(0x2000FFF) == (Bdf(0x20, 0, 0), 0xFFF)
    with pytest.raises(EcamError):
        ecam_decode(0x10000000)
    with pytest.raises(EcamError):
        ecam_encode(Bdf(0, 0, 0), 0x1000)


@given(bdfs, st.integers(0, 0xFFF))
def test_ecam_round_trip(bdf: Bdf, register: int) -> None:
    assert ecam_decode(ecam_encode(bdf, register)) == (bdf, register)


@dataclass
class Pages:
    """What the ECAM device reads of its window: the functions by page, where it sits,
    where hole writes go, and who hears of a write that changed a function (a list)."""

    topology: Topology
    base: int | None = ECAM_BASE
    hole_writes: HoleWrites = field(default_factory=HoleWrites)
    heard: list[ConfigWrite] = field(default_factory=list)

    @property
    def functions_by_page(self) -> dict[int, Function]:
        return {f.bdf.ecam_offset >> PAGE_SHIFT: f for f in self.topology}

    def written(self, write: ConfigWrite) -> None:
        self.heard.append(write)


def test_ecam_device_reads_models_and_all_ones() -> None:
    pages = Pages(Topology.default(3))
    ecam = EcamDevice(pages)  # type: ignore[arg-type]
    assert ecam.read(0, 4) == 0x29C08086
    assert ecam.read(0x100000, 2) == 0x1AF4  # 01:00.0 virtio-net
    assert ecam.read(0x108000, 4) == 0xFFFFFFFF  # 01:01.0 is a hole
    assert ecam.read(0x108000, 8) == all_ones(8)
    assert ecam.read(0x108000, 1) == 0xFF
    # 4 bytes straddling 00:00.0's last register and 00:00.1 (a hole): split in two
    assert ecam.read(0xFFE, 4) == 0xFFFF0000 | ecam.read(0xFFE, 2)
    assert ecam.exits == ConfigExits(hole_reads=4, device_reads=4)


def test_ecam_device_writes_reach_models_holes_and_the_listener() -> None:
    pages = Pages(Topology.default(3))
    ecam = EcamDevice(pages)  # type: ignore[arg-type]
    holes: list[HoleWrite] = []
    pages.hole_writes.observe(holes.append)
    ecam.write(0x108000 + COMMAND, 2, 0x7)  # a hole: recorded, nothing changes
    assert holes == [HoleWrite(ECAM_BASE + 0x108000 + COMMAND, 2, b"\x07\x00")]
    ecam.write(0x100000 + COMMAND, 2, 0x7)
    ecam.write(0x100000 + COMMAND, 2, 0x7)  # no change: no refresh, nobody told
    ecam.write(0x100000, 4, 0)  # read-only IDs
    assert pages.heard == [ConfigWrite(Bdf(1, 0, 0), COMMAND, 2)]
    assert ecam.read(0x100000 + COMMAND, 2) == 0x7
    assert ecam.read(0x100000, 4) & 0xFFFF == 0x1AF4
    assert ecam.exits.hole_writes == 1 and ecam.exits.device_writes == 3


def test_config_address_decode() -> None:
    decoded = decode_config_address(0x8000FB10)
    assert decoded.enabled and decoded.bdf == Bdf(0, 0x1F, 3) and decoded.register == 0x10
    assert not decode_config_address(0x0000FB10).enabled
    assert decode_config_address(0x8000FB13).register == 0x10  # low two bits ignored
    extended = 0x8F000010
    assert decode_config_address(extended).register == 0x10
    assert decode_config_address(extended, extended_registers=True).register == 0xF10


@given(bdfs, st.integers(0, 0xFFF).map(lambda r: r & ~3), st.booleans())
def test_config_address_round_trip(bdf: Bdf, register: int, extended: bool) -> None:
    if not extended:
        register &= 0xFF
    value = encode_config_address(bdf, register, extended_registers=extended)
    decoded = decode_config_address(value, extended_registers=extended)
    assert (decoded.enabled, decoded.bdf, decoded.register) == (True, bdf, register)


def mechanism(extended: bool = False) -> ConfigMechanism1:
    return ConfigMechanism1(Topology.default(3).config_at, extended_registers=extended)


def test_mechanism1_reads() -> None:
    ports = mechanism()
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(0, 0x1F, 2), 0))
    assert ports.io_read(0xCF8, 4) == 0x8000FA00
    assert ports.io_read(0xCFC, 4) == 0x29228086
    assert ports.io_read(0xCFE, 2) == 0x2922
    assert ports.io_read(0xCFF, 1) == 0x29
    assert ports.io_read(0xCFD, 1) == 0x80
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(0, 0x1F, 2), 8))
    assert ports.io_read(0xCFC, 4) == 0x01060102  # class and revision


def test_mechanism1_holes_and_disabled() -> None:
    ports = mechanism()
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(0, 5, 0), 0))
    assert ports.io_read(0xCFC, 4) == 0xFFFFFFFF
    assert ports.io_read(0xCFC, 2) == 0xFFFF
    assert ports.io_read(0xCFD, 1) == 0xFF
    assert ports.io_write(0xCFC, 4, 0) is None
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(0, 0, 0), 0) & 0x7FFFFFFF)
    assert ports.io_read(0xCFC, 4) == 0xFFFFFFFF  # enable bit clear
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(0, 0, 0), 0))
    assert ports.io_read(0xCFE, 4) == 0xFFFFFFFF  # would run past CFF


def test_mechanism1_latch_needs_dword_access() -> None:
    ports = mechanism()
    ports.io_write(0xCF8, 4, 0x80000000)
    ports.io_write(0xCF9, 1, 0x06)  # the PC reset register, not ours
    ports.io_write(0xCF8, 2, 0x1234)
    assert ports.address == 0x80000000
    assert ports.io_read(0xCF8, 1) == 0xFF
    assert ports.io_read(0xCF8, 4) == 0x80000000


def test_mechanism1_writes() -> None:
    ports = mechanism()
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(1, 0, 0), COMMAND))
    assert ports.io_write(0xCFC, 2, 0x0006) == (Bdf(1, 0, 0), COMMAND)
    assert ports.io_write(0xCFC, 2, 0x0006) is None
    assert ports.io_read(0xCFC, 2) == 0x0006
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(1, 0, 0), 0x3C))
    assert ports.io_write(0xCFC, 1, 11) == (Bdf(1, 0, 0), 0x3C)  # interrupt line
    assert ports.io_read(0xCFC, 4) & 0xFFFF == 0x010B


def test_mechanism1_extended_registers() -> None:
    ports = mechanism(extended=True)
    ports.io_write(0xCF8, 4, encode_config_address(Bdf(2, 0, 0), 0x100, extended_registers=True))
    assert ports.io_read(0xCFC, 4) == 0  # the nvme's (express, empty) extended space
    plain = mechanism()
    plain.io_write(0xCF8, 4, encode_config_address(Bdf(2, 0, 0), 0x100, extended_registers=True))
    assert plain.io_read(0xCFC, 4) == 0x00101B36  # bits 27:24 ignored: register 0


@pytest.mark.parametrize(("port", "size"), [(0xCF7, 4), (0xD00, 1), (0xCFC, 8), (0xCFC, 3)])
def test_mechanism1_rejects_other_ports(port: int, size: int) -> None:
    with pytest.raises(EcamError):
        mechanism().io_read(port, size)
    with pytest.raises(EcamError):
        mechanism().io_write(port, size, 0)


@given(bdfs, st.sampled_from([1, 2, 4]), st.integers(0, 3))
def test_missing_functions_read_all_ones(bdf: Bdf, size: int, lane: int) -> None:
    ports = ConfigMechanism1(lambda _: None)
    ports.io_write(0xCF8, 4, encode_config_address(bdf, 0))
    if lane + size <= 4:
        assert ports.io_read(0xCFC + lane, size) == all_ones(size)


@dataclass
class Renumbered:
    """A window where the guest reaches the function built at 02:00.0 at 05:00.0."""

    topology: Topology
    heard: list[ConfigWrite] = field(default_factory=list)

    def function_at(self, bdf: Bdf) -> Function | None:
        return self.topology.get(BuiltBdf(Bdf(2, 0, 0))) if bdf == Bdf(5, 0, 0) else None

    def config_at(self, bdf: Bdf) -> ConfigSpace | None:
        function = self.function_at(bdf)
        return None if function is None else function.config

    def written(self, write: ConfigWrite) -> None:
        self.heard.append(write)


def test_a_cf8_write_is_one_event_naming_the_function_as_built() -> None:
    window = Renumbered(Topology.default(3))
    ports = LegacyConfigPorts(window)  # type: ignore[arg-type]
    ports.write(0, 4, encode_config_address(Bdf(5, 0, 0), COMMAND))
    ports.write(4 + 1, 1, 0x01)  # CFD: the command register's high byte (SERR# enable)
    ports.write(4, 2, 0x0006)  # CFC: memory and bus master
    ports.write(4, 2, 0x0006)  # unchanged: no event
    assert window.heard == [
        ConfigWrite(BuiltBdf(Bdf(2, 0, 0)), COMMAND + 1, 1),
        ConfigWrite(BuiltBdf(Bdf(2, 0, 0)), COMMAND, 2),
    ]
