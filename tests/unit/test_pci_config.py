"""ConfigSpace: registers, writable mask, W1C, BAR sizing, capability lists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcihole.pci import capabilities as caps
from pcihole.pci.config import (
    BAR0,
    BRIDGE_CONTROL,
    CAPABILITIES_POINTER,
    COMMAND,
    HEADER_TYPE,
    PRIMARY_BUS,
    ROM_ADDRESS,
    SECONDARY_BUS,
    STATUS,
    SUBORDINATE_BUS,
    BarKind,
    ConfigSpace,
    HeaderType,
)
from pcihole.pci.errors import ConfigSpaceError
from tests.model_masks import Masks, free, masks_over, probe_masks


def endpoint(*, express: bool = False) -> ConfigSpace:
    return ConfigSpace(
        vendor_id=0x1AF4, device_id=0x1041, class_code=0x020000, revision=1, express=express
    )


def bridge() -> ConfigSpace:
    return ConfigSpace(
        vendor_id=0x1B36,
        device_id=0x000C,
        class_code=0x060400,
        header_type=HeaderType.BRIDGE,
        express=True,
    )


def test_identity_little_endian() -> None:
    config = endpoint()
    assert config.snapshot()[:4] == bytes([0xF4, 0x1A, 0x41, 0x10])
    assert config.read(0, 4) == 0x10411AF4
    assert config.read(8, 4) == 0x02000001
    assert (config.vendor_id, config.device_id, config.class_code) == (0x1AF4, 0x1041, 0x020000)
    assert config.header_type is HeaderType.ENDPOINT
    assert not config.is_bridge and not config.is_multifunction


def test_eight_byte_access_is_two_dwords() -> None:
    config = endpoint()
    assert config.read(0, 8) == config.read(4, 4) << 32 | config.read(0, 4)
    config.add_bar(0, 0x4000, BarKind.MEMORY64)
    assert config.write(BAR0, 8, 0xFFFF_FFFF_FFFF_FFFF)
    assert config.read(BAR0, 8) == 0xFFFF_FFFF_FFFF_C004


def test_read_only_identity_ignores_writes() -> None:
    config = endpoint()
    before = config.snapshot()
    assert not config.write(0, 4, 0xFFFFFFFF)
    assert not config.write(8, 4, 0)
    assert not config.write(0x800, 4, 0x12345678)  # no register there
    assert config.snapshot() == before


def test_command_register_mask() -> None:
    config = endpoint()
    assert config.write(COMMAND, 2, 0xFFFF)
    assert config.read(COMMAND, 2) == 0x0507  # QEMU: no parity response
    assert not config.write(COMMAND, 2, 0xFFFF)  # nothing changed the second time
    assert config.write(COMMAND, 1, 0)
    assert config.read(COMMAND, 2) == 0x0500


def test_status_w1c() -> None:
    config = endpoint()
    config.set_bits(STATUS, 2, 0x2000 | 0x0010)  # received master abort, capabilities list
    assert not config.write(STATUS, 2, 0x0010)  # writing 1 to a read-only bit does nothing
    assert not config.write(STATUS, 2, 0x0000)  # writing 0 to a W1C bit keeps it
    assert config.read(STATUS, 2) == 0x2010
    assert config.write(STATUS, 2, 0xFFFF)
    assert config.read(STATUS, 2) == 0x0010


def test_set_bits_reports_change() -> None:
    config = endpoint()
    assert config.set_bits(STATUS, 2, 0x8000)
    assert not config.set_bits(STATUS, 2, 0x8000)


def test_multifunction_bit() -> None:
    config = endpoint()
    assert config.set_multifunction()
    assert config.read(HEADER_TYPE, 1) == 0x80
    assert config.is_multifunction and config.header_type is HeaderType.ENDPOINT
    assert not config.write(HEADER_TYPE, 1, 0)
    assert not config.set_multifunction()


def test_bridge_registers() -> None:
    config = bridge()
    config.set_bus_numbers(0, 1, 3)
    assert config.is_bridge
    assert config.read(PRIMARY_BUS, 4) & 0xFFFFFF == 0x030100
    assert config.write(SECONDARY_BUS, 1, 5)
    assert config.read(SECONDARY_BUS, 1) == 5
    assert config.write(SUBORDINATE_BUS, 1, 9)
    config.write(BRIDGE_CONTROL, 2, 0xFFFF)
    assert config.read(BRIDGE_CONTROL, 2) == 0x005F  # QEMU: no master abort mode
    # Windows start closed: base above limit. Address-width nibbles are read-only.
    assert config.read(0x1C, 2) == 0x00F0
    assert config.read(0x24, 4) == 0x0001FFF1
    config.write(0x24, 4, 0)
    assert config.read(0x24, 4) == 0x00010001
    config.write(0x1C, 2, 0xFFFF)
    assert config.read(0x1C, 2) == 0xF0F0


def test_bus_numbers_need_a_bridge() -> None:
    with pytest.raises(ConfigSpaceError, match="bridge"):
        endpoint().set_bus_numbers(0, 1, 1)


@pytest.mark.parametrize(
    ("kind", "prefetchable", "size", "sized"),
    [
        (BarKind.MEMORY32, False, 0x1000, 0xFFFFF000),
        (BarKind.MEMORY32, True, 0x1000, 0xFFFFF008),
        (BarKind.IO, False, 0x20, 0xFFFFFFE1),
        (BarKind.MEMORY64, True, 0x4000, 0xFFFFFFFF_FFFFC00C),
        (BarKind.MEMORY64, False, 1 << 33, 0xFFFFFFFE_00000004),
    ],
)
def test_bar_sizing(kind: BarKind, prefetchable: bool, size: int, sized: int) -> None:
    config = endpoint()
    bar = config.add_bar(2, size, kind, prefetchable=prefetchable)
    assert config.read(bar.offset, bar.width) == bar.type_bits
    config.write(bar.offset, 4, 0xFFFFFFFF)
    if bar.width == 8:
        config.write(bar.offset + 4, 4, 0xFFFFFFFF)
    assert config.read(bar.offset, bar.width) == sized


def test_bar_address() -> None:
    config = endpoint()
    config.add_bar(4, 0x4000, BarKind.MEMORY64, prefetchable=True)
    config.write(BAR0 + 16, 4, 0xFEB0_0000)
    config.write(BAR0 + 20, 4, 0x0000_0008)
    assert config.bar_address(4) == 0x8_FEB0_0000
    assert config.read(BAR0 + 16, 4) == 0xFEB0_000C
    with pytest.raises(ConfigSpaceError):
        config.bar_address(0)


def test_unimplemented_bar_reads_zero_and_ignores_sizing() -> None:
    config = endpoint()
    assert not config.write(BAR0, 4, 0xFFFFFFFF)
    assert config.read(BAR0, 4) == 0


@pytest.mark.parametrize(
    ("index", "size", "kind", "message"),
    [
        (5, 0x1000, BarKind.MEMORY64, "does not fit"),
        (6, 0x1000, BarKind.MEMORY32, "does not fit"),
        (0, 0x1800, BarKind.MEMORY32, "power of two"),
        (0, 8, BarKind.MEMORY32, "power of two"),
        (0, 512, BarKind.IO, "power of two"),
        (0, 1 << 32, BarKind.MEMORY32, "power of two"),
    ],
)
def test_bad_bars(index: int, size: int, kind: BarKind, message: str) -> None:
    with pytest.raises(ConfigSpaceError, match=message):
        endpoint().add_bar(index, size, kind)


def test_bars_may_not_overlap() -> None:
    config = endpoint()
    config.add_bar(0, 0x1000, BarKind.MEMORY64)
    with pytest.raises(ConfigSpaceError, match="overlaps BAR 0"):
        config.add_bar(1, 0x1000)
    with pytest.raises(ConfigSpaceError, match="I/O BARs cannot be prefetchable"):
        config.add_bar(2, 0x10, BarKind.IO, prefetchable=True)
    config.add_bar(2, 0x10, BarKind.IO)
    assert [bar.index for bar in config.bars] == [0, 2]


def test_bridge_has_two_bar_slots() -> None:
    config = bridge()
    config.add_bar(0, 0x1000)
    with pytest.raises(ConfigSpaceError):
        config.add_bar(1, 0x1000, BarKind.MEMORY64)


def test_rom_bar() -> None:
    config = endpoint()
    config.add_rom_bar(0x10000)
    config.write(ROM_ADDRESS, 4, 0xFFFFFFFF)
    assert config.read(ROM_ADDRESS, 4) == 0xFFFF0001
    config.write(ROM_ADDRESS, 4, 0xFEB40000)
    assert config.read(ROM_ADDRESS, 4) == 0xFEB40000
    with pytest.raises(ConfigSpaceError):
        config.add_rom_bar(1024)


@pytest.mark.parametrize(("offset", "size"), [(4095, 2), (4094, 4), (4088, 16), (-1, 1), (0, 3)])
def test_accesses_stay_inside(offset: int, size: int) -> None:
    config = endpoint()
    with pytest.raises(ConfigSpaceError):
        config.read(offset, size)
    with pytest.raises(ConfigSpaceError):
        config.write(offset, size, 0)


def test_value_must_fit() -> None:
    with pytest.raises(ConfigSpaceError, match="does not fit"):
        endpoint().write(COMMAND, 2, 0x10000)


def test_define_refuses_writable_w1c_overlap() -> None:
    with pytest.raises(ConfigSpaceError, match="both writable and W1C"):
        endpoint().define(0x40, 2, 0, writable=0x3, w1c=0x2)


def test_capability_list() -> None:
    """As QEMU's pci_add_capability: the newest heads the list, in the first free space."""
    config = endpoint(express=True)
    assert config.capabilities() == []
    pm = caps.add_power_management(config)
    express = caps.add_pcie_endpoint(config, 0x50, integrated=False)
    assert config.read(STATUS, 2) & 0x10
    assert pm == 0x40
    assert config.read(CAPABILITIES_POINTER, 1) == express == 0x50
    assert config.capabilities() == [(0x50, 0x10), (0x40, 0x01)]
    assert config.read(express + 1, 1) == pm
    assert config.read(pm + 1, 1) == 0
    assert config.find_capability(0x10) == express
    assert config.find_capability(0x11) is None
    assert caps.pcie_port_type(config) is caps.PortType.ENDPOINT
    # 0x48-0x4f is free but too short for MSI's 14 bytes: it goes after the Express one.
    assert caps.add_msi(config) == 0x50 + caps.PCIE_LENGTH
    with pytest.raises(ConfigSpaceError, match="does not fit"):
        config.add_capability(0x09, 4, 0x52)


def test_free_bytes_are_writable_as_on_qemu() -> None:
    config = endpoint()
    assert config.write(0x80, 4, 0x12345678) and config.read(0x80, 4) == 0x12345678
    pm = caps.add_power_management(config)
    assert not config.write(pm, 2, 0)  # a capability's header is read-only


def test_extended_space_conventional_or_express() -> None:
    conventional = endpoint()
    assert conventional.snapshot()[0x100:] == b"\xff" * 0xF00
    assert not conventional.write(0x200, 4, 0)
    assert conventional.extended_capabilities() == []
    with pytest.raises(ConfigSpaceError, match="no extended space"):
        caps.add_aer(conventional)
    express = endpoint(express=True)
    assert express.snapshot()[0x100:] == bytes(0xF00)
    assert not express.write(0x100, 4, 0xFFFF_FFFF)  # the first header stays
    assert express.write(0x104, 4, 1)


def test_capabilities_must_fit_legacy_space() -> None:
    config = endpoint()
    config.add_capability(0x09, 0xB0)
    with pytest.raises(ConfigSpaceError, match="does not fit"):
        config.add_capability(0x09, 0x20)


def test_extended_capability_chain() -> None:
    config = endpoint(express=True)
    assert config.extended_capabilities() == []
    aer = caps.add_aer(config)
    second = config.add_extended_capability(0x000B, 1, 8)
    assert aer == 0x100
    assert second == 0x100 + caps.AER_LENGTH
    assert config.read(0x100, 4) == 0x0001 | 2 << 16 | second << 20
    assert config.read(second, 4) == 0x000B | 1 << 16  # next 0 ends the chain
    assert config.extended_capabilities() == [(0x100, 1), (second, 0x0B)]


def test_power_state_writable() -> None:
    config = endpoint()
    pm = caps.add_power_management(config)
    assert config.write(pm + 4, 2, 0xFFFF)
    assert config.read(pm + 4, 2) == 0x0003
    config.write(pm + 4, 2, 0)
    assert config.read(pm + 4, 2) & 3 == 0


def test_root_port_express_capability() -> None:
    config = bridge()
    express = caps.add_pcie_root_port(config, 0x54, slot=5)
    assert config.read(express + 2, 2) == 0x0142  # version 2, root port, slot implemented
    assert config.read(express + 0x14, 4) >> 19 == 5
    config.set_bits(express + 0x1A, 2, 0x0048)  # presence changed + presence detect state
    config.write(express + 0x1A, 2, 0xFFFF)
    assert config.read(express + 0x1A, 2) == 0x0040  # state is read-only, change is W1C


def test_integrated_endpoint_keeps_link_registers() -> None:
    """QEMU fills the link registers even of a root-complex integrated endpoint."""
    config = endpoint(express=True)
    express = caps.add_pcie_endpoint(config, 0x80, integrated=True)
    assert config.read(express + 2, 2) == 0x0092
    assert config.read(express + 0x0C, 4) == 0x0411


def test_msix() -> None:
    config = endpoint()
    config.add_bar(1, 0x1000)
    msix = caps.add_msix(config, 3, table_bar=1, table_offset=0, pba_bar=1, pba_offset=0x800)
    assert config.read(msix + 2, 2) == 2
    config.write(msix + 2, 2, 0xFFFF)
    assert config.read(msix + 2, 2) == 0xC002
    assert config.read(msix + 4, 4) == 1
    assert config.read(msix + 8, 4) == 0x801
    with pytest.raises(ConfigSpaceError, match="memory BAR 2"):
        caps.add_msix(config, 1, table_bar=2, table_offset=0, pba_bar=1, pba_offset=0)
    with pytest.raises(ConfigSpaceError, match="does not fit BAR 1"):
        caps.add_msix(config, 257, table_bar=1, table_offset=0, pba_bar=1, pba_offset=0)
    with pytest.raises(ConfigSpaceError, match="overlap"):
        caps.add_msix(config, 4, table_bar=1, table_offset=0, pba_bar=1, pba_offset=0x38)


def test_msi() -> None:
    config = endpoint()
    msi = caps.add_msi(config, 4)
    assert config.read(msi + 2, 2) == 0x0084
    config.write(msi + 2, 2, 0xFFFF)
    assert config.read(msi + 2, 2) == 0x00F5
    with pytest.raises(ConfigSpaceError):
        caps.add_msi(config, 3)
    single = endpoint()
    msi = caps.add_msi(single)
    single.write(msi + 2, 2, 0xFFFF)
    assert single.read(msi + 2, 2) == 0x0081  # QEMU clamps multiple message enable to 0


def test_record_unsupported_request() -> None:
    config = endpoint(express=True)
    express = caps.add_pcie_endpoint(config, 0x40, integrated=False)
    aer = caps.add_aer(config)
    assert caps.record_unsupported_request(config)
    assert not caps.record_unsupported_request(config)
    assert config.read(express + 0x0A, 2) == 0x000A
    assert config.read(aer + 4, 4) == 0x0010_0000
    config.write(aer + 4, 4, 0xFFFFFFFF)
    config.write(express + 0x0A, 2, 0x000F)
    assert config.read(aer + 4, 4) == 0 and config.read(express + 0x0A, 2) == 0


# -- properties --------------------------------------------------------------------------


def populated() -> ConfigSpace:
    """A space with every kind of register: BARs, ROM, PM, Express, MSI-X, AER."""
    config = endpoint(express=True)
    config.add_bar(0, 0x1000)
    config.add_bar(2, 0x20, BarKind.IO)
    config.add_bar(4, 0x4000, BarKind.MEMORY64, prefetchable=True)
    config.add_rom_bar(0x800)
    caps.add_power_management(config)
    caps.add_pcie_endpoint(config, 0x48, integrated=False)
    caps.add_msix(config, 4, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800)
    caps.add_aer(config)
    return config


def populated_bridge() -> ConfigSpace:
    config = bridge()
    config.set_bus_numbers(0, 1, 1)
    config.add_bar(0, 0x1000)
    caps.add_pcie_root_port(config, 0x40, slot=1)
    caps.add_aer(config, root_port=True)
    return config


# What a guest may change in the two spaces above, written out (dword offset: writable
# bits, W1C bits); every other byte is read-only. As QEMU 7.2 makes them: command, status,
# BARs and ROM BAR, bus numbers and windows, PM control, PCIe control and status registers,
# MSI-X control, AER status and severity (not its mask), and every free byte past the
# header that no capability claims.
POPULATED_MASKS: Masks = {
    0x004: (0x00000507, 0xF9000000),
    0x00C: (0x000000FF, 0x00000000),
    0x010: (0xFFFFF000, 0x00000000),
    0x018: (0xFFFFFFE0, 0x00000000),
    0x020: (0xFFFFC000, 0x00000000),
    0x024: (0xFFFFFFFF, 0x00000000),
    0x030: (0xFFFFF801, 0x00000000),
    0x03C: (0x000000FF, 0x00000000),
    0x044: (0x00000003, 0x00000000),
    0x050: (0x00000000, 0x000F0000),
    0x070: (0x00008000, 0x00000000),
    0x084: (0xC0000000, 0x00000000),
    **free(0x090, 0x100),
    0x104: (0x00000000, 0x03FFF030),
    0x10C: (0x03FFF030, 0x00000000),
    0x110: (0x00000000, 0x0000F1C1),
    0x114: (0x0000F1C1, 0x00000000),
    0x118: (0x00000540, 0x00000000),
    **free(0x148, 0x1000),
}
POPULATED_BRIDGE_MASKS: Masks = {
    0x004: (0x00000507, 0xF9000000),
    0x00C: (0x000000FF, 0x00000000),
    0x010: (0xFFFFF000, 0x00000000),
    0x018: (0xFFFFFFFF, 0x00000000),
    0x01C: (0x0000F0F0, 0xF9000000),
    0x020: (0xFFF0FFF0, 0x00000000),
    0x024: (0xFFF0FFF0, 0x00000000),
    0x028: (0xFFFFFFFF, 0x00000000),
    0x02C: (0xFFFFFFFF, 0x00000000),
    0x03C: (0x005F00FF, 0x00000000),
    0x048: (0x0000000F, 0x000F0000),
    0x058: (0x000007F9, 0x01190000),
    0x05C: (0x00000007, 0x00000000),
    0x060: (0x00000000, 0x00010000),
    0x068: (0x00008020, 0x00000000),
    **free(0x07C, 0x100),
    0x104: (0x00000000, 0x03FFF030),
    0x10C: (0x03FFF030, 0x00000000),
    0x110: (0x00000000, 0x0000F1C1),
    0x114: (0x0000F1C1, 0x00000000),
    0x118: (0x00000540, 0x00000000),
    0x12C: (0x00000007, 0x00000000),
    0x130: (0x00000000, 0x0000007F),
    **free(0x148, 0x1000),
}


sizes = st.sampled_from([1, 2, 4, 8])
writes = st.lists(
    st.tuples(st.integers(0, 4095), sizes, st.integers(0, (1 << 64) - 1)), max_size=20
)


@pytest.mark.parametrize("is_bridge", [False, True])
def test_populated_spaces_have_the_masks_of_their_tables(is_bridge: bool) -> None:
    fresh = populated_bridge if is_bridge else populated
    assert probe_masks(fresh) == (POPULATED_BRIDGE_MASKS if is_bridge else POPULATED_MASKS)


@given(st.booleans(), writes)
def test_write_obeys_masks(is_bridge: bool, accesses: list[tuple[int, int, int]]) -> None:
    """Read-only bits never change; writable bits take the value; W1C bits only clear."""
    config = populated_bridge() if is_bridge else populated()
    table = POPULATED_BRIDGE_MASKS if is_bridge else POPULATED_MASKS
    # Raise every W1C bit so that clearing them can be seen.
    for offset, (_, w1c_bits) in table.items():
        config.set_bits(offset, 4, w1c_bits)
    for offset, size, value in accesses:
        size = min(size, 4096 - offset)
        size = max(s for s in (1, 2, 4, 8) if s <= size)
        value &= (1 << 8 * size) - 1
        old = config.read(offset, size)
        writable, w1c = masks_over(table, offset, size)
        changed = config.write(offset, size, value)
        new = config.read(offset, size)
        read_only = ~(writable | w1c)
        assert new & read_only == old & read_only
        assert new & writable == value & writable
        assert new & w1c == old & w1c & ~value
        assert changed == (new != old)


@given(
    st.sampled_from(list(BarKind)),
    st.booleans(),
    st.integers(0, 40),
    st.integers(0, (1 << 64) - 1),
)
def test_bar_sizing_round_trip(kind: BarKind, prefetchable: bool, log2: int, seed: int) -> None:
    """All ones reads the size mask with the type bits; an address written reads back."""
    low, high = {BarKind.IO: (2, 8), BarKind.MEMORY32: (4, 31), BarKind.MEMORY64: (4, 40)}[kind]
    size = 1 << min(max(log2, low), high)
    prefetchable = prefetchable and kind is not BarKind.IO
    config = endpoint()
    bar = config.add_bar(0, size, kind, prefetchable=prefetchable)
    all_ones = (1 << 8 * bar.width) - 1
    for dword in range(bar.width // 4):
        config.write(bar.offset + 4 * dword, 4, 0xFFFFFFFF)
    sized = config.read(bar.offset, bar.width)
    assert sized & bar.type_mask == bar.type_bits
    assert (~(sized & ~bar.type_mask) & all_ones) + 1 == size
    address = seed & all_ones & ~(size - 1)
    config.write(bar.offset, bar.width, address)
    assert config.read(bar.offset, bar.width) == address | bar.type_bits
    assert config.bar_address(0) == address


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_w1c_status(raised: int, written: int) -> None:
    config = endpoint()
    raised &= 0xF900
    config.set_bits(STATUS, 2, raised)
    config.write(STATUS, 2, written)
    assert config.read(STATUS, 2) == raised & ~written
