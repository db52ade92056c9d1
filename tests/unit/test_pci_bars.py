"""BAR decoding from configuration space: command bits, unassigned and sizing values,
bridge windows, as QEMU 7.2's pci_bar_address and pci_bridge_region_init decide."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pcihole.pci.bars import (
    Space,
    Span,
    bridge_windows,
    claimed_bars,
    decoded_bars,
)
from pcihole.pci.config import (
    BAR0,
    COMMAND,
    IO_BASE,
    IO_LIMIT,
    MEMORY_BASE,
    MEMORY_LIMIT,
    PREF_BASE_UPPER32,
    PREF_LIMIT_UPPER32,
    PREF_MEMORY_BASE,
    PREF_MEMORY_LIMIT,
    BarKind,
    ConfigSpace,
    HeaderType,
)


def endpoint() -> ConfigSpace:
    """BAR0 16 KiB 64-bit memory, BAR2 4 KiB 32-bit memory, BAR4 32 ports."""
    config = ConfigSpace(vendor_id=0x1B36, device_id=0x10, class_code=0x010802)
    config.add_bar(0, 0x4000, BarKind.MEMORY64)
    config.add_bar(2, 0x1000)
    config.add_bar(4, 0x20, BarKind.IO)
    return config


def program(config: ConfigSpace, command: int, bar0: int = 0, bar2: int = 0, bar4: int = 0) -> None:
    config.write(BAR0, 8, bar0)
    config.write(BAR0 + 8, 4, bar2)
    config.write(BAR0 + 16, 4, bar4)
    config.write(COMMAND, 2, command)


def test_nothing_decodes_at_reset() -> None:
    assert claimed_bars(endpoint()) == ()


def test_memory_bit_decodes_memory_bars_only() -> None:
    config = endpoint()
    program(config, 0x2, bar0=0x1_2340_0000, bar2=0xFEBF_1000, bar4=0xC000)
    assert claimed_bars(config) == (
        (0, Span(Space.MEMORY, 0x1_2340_0000, 0x1_2340_4000)),
        (2, Span(Space.MEMORY, 0xFEBF_1000, 0xFEBF_2000)),
    )


def test_io_bit_decodes_io_bars_only() -> None:
    config = endpoint()
    program(config, 0x1, bar0=0x1_2340_0000, bar2=0xFEBF_1000, bar4=0xC0E0)
    assert claimed_bars(config) == ((4, Span(Space.IO, 0xC0E0, 0xC100)),)


def test_both_bits_decode_everything() -> None:
    config = endpoint()
    program(config, 0x7, bar0=0xFEBF_0000, bar2=0xFEBF_8000, bar4=0xC0E0)
    assert [index for index, _ in claimed_bars(config)] == [0, 2, 4]


def test_address_zero_is_unassigned() -> None:
    config = endpoint()
    program(config, 0x3, bar0=0, bar2=0xFEBF_1000, bar4=0)
    assert [index for index, _ in claimed_bars(config)] == [2]


def test_sizing_values_never_decode() -> None:
    """All ones written while decoding is on (some firmware does): nothing decodes."""
    config = endpoint()
    program(config, 0x3, bar0=(1 << 64) - 1, bar2=0xFFFF_FFFF, bar4=0xFFFF_FFFF)
    assert claimed_bars(config) == ()


def test_io_bar_beyond_port_space_does_not_decode() -> None:
    config = endpoint()
    program(config, 0x1, bar4=0x1_0000)
    assert claimed_bars(config) == ()
    program(config, 0x1, bar4=0xFFE0)
    assert claimed_bars(config) == ((4, Span(Space.IO, 0xFFE0, 0x10000)),)


def bridge(command: int) -> ConfigSpace:
    config = ConfigSpace(
        vendor_id=0x1B36, device_id=0xC, class_code=0x060400, header_type=HeaderType.BRIDGE
    )
    config.write(COMMAND, 2, command)
    return config


def test_bridge_windows_start_closed() -> None:
    assert bridge_windows(bridge(0x3)) == ()


def test_bridge_windows_as_seabios_programs_them() -> None:
    config = bridge(0x3)
    config.write(IO_BASE, 1, 0x10)
    config.write(IO_LIMIT, 1, 0x10)
    config.write(MEMORY_BASE, 2, 0xFE80)
    config.write(MEMORY_LIMIT, 2, 0xFE80)
    config.write(PREF_MEMORY_BASE, 2, 0x0010)
    config.write(PREF_MEMORY_LIMIT, 2, 0x0010)
    config.write(PREF_BASE_UPPER32, 4, 0x8)
    config.write(PREF_LIMIT_UPPER32, 4, 0x8)
    assert bridge_windows(config) == (
        Span(Space.IO, 0x1000, 0x2000),
        Span(Space.MEMORY, 0xFE80_0000, 0xFE90_0000),
        Span(Space.MEMORY, 0x8_0010_0000, 0x8_0020_0000),
    )
    config.write(COMMAND, 2, 0x1)
    assert bridge_windows(config) == (Span(Space.IO, 0x1000, 0x2000),)
    config.write(COMMAND, 2, 0x0)
    assert bridge_windows(config) == ()


def test_function_behind_a_bridge_decodes_what_the_window_forwards() -> None:
    device = endpoint()
    program(device, 0x3, bar0=0x8_0010_0000, bar2=0xFE80_1000, bar4=0x1000)
    port = bridge(0x3)
    port.write(MEMORY_BASE, 2, 0xFE80)
    port.write(MEMORY_LIMIT, 2, 0xFE80)
    decoded = decoded_bars(device, [port])
    assert [(bar.index, bar.span) for bar in decoded] == [
        (2, Span(Space.MEMORY, 0xFE80_1000, 0xFE80_2000))
    ]
    port.write(PREF_MEMORY_BASE, 2, 0x0010)
    port.write(PREF_MEMORY_LIMIT, 2, 0x0010)
    port.write(PREF_BASE_UPPER32, 4, 0x8)
    port.write(PREF_LIMIT_UPPER32, 4, 0x8)
    port.write(IO_BASE, 1, 0x10)
    port.write(IO_LIMIT, 1, 0x10)
    assert [bar.index for bar in decoded_bars(device, [port])] == [0, 2, 4]
    port.write(COMMAND, 2, 0x1)  # the bridge stops forwarding memory
    assert [bar.index for bar in decoded_bars(device, [port])] == [4]


def test_a_bar_larger_than_the_window_decodes_the_part_inside() -> None:
    device = ConfigSpace(vendor_id=0x1B36, device_id=0x10, class_code=0x010802)
    device.add_bar(0, 4 << 20)
    device.write(BAR0, 4, 0xFE40_0000)
    device.write(COMMAND, 2, 0x2)
    port = bridge(0x2)
    port.write(MEMORY_BASE, 2, 0xFE50)  # one MiB: the BAR's second MiB
    port.write(MEMORY_LIMIT, 2, 0xFE50)
    (bar,) = decoded_bars(device, [port])
    assert bar.claimed == Span(Space.MEMORY, 0xFE40_0000, 0xFE80_0000)
    assert bar.span == Span(Space.MEMORY, 0xFE50_0000, 0xFE60_0000)
    assert bar.offset == 0x10_0000


def test_two_bridges_forward_the_intersection() -> None:
    device = endpoint()
    program(device, 0x2, bar2=0xFE80_1000)
    upper, lower = bridge(0x2), bridge(0x2)
    for port, (base, limit) in ((upper, (0xFE80, 0xFEF0)), (lower, (0xFE00, 0xFE70))):
        port.write(MEMORY_BASE, 2, base)
        port.write(MEMORY_LIMIT, 2, limit)
    assert decoded_bars(device, [upper, lower]) == ()
    lower.write(MEMORY_LIMIT, 2, 0xFE80)
    assert [bar.index for bar in decoded_bars(device, [upper, lower])] == [2]


@given(st.integers(0, (1 << 64) - 1), st.integers(0, 7))
def test_a_decoded_bar_is_always_inside_its_space_and_aligned(address: int, command: int) -> None:
    config = endpoint()
    program(config, command, bar0=address, bar2=address & 0xFFFF_FFFF, bar4=address & 0xFFFF_FFFF)
    for index, span in claimed_bars(config):
        assert span.base > 0 and span.base % span.size == 0
        assert span.end <= (1 << 16 if span.space is Space.IO else 1 << 64)
        if index == 2:
            assert span.end <= 1 << 32
