"""The e820 map QEMU 7.2 gives a q35 guest: order, split at the q35 low-memory limit, bytes."""

from __future__ import annotations

import pytest

from pcihole.arch.x86.e820 import (
    E820Entry,
    E820Error,
    E820Type,
    pack,
    q35_e820,
    q35_ram_split,
    unpack,
)

MiB = 1 << 20
GiB = 1 << 30


def test_small_guest_bytes_as_qemu_gives_them() -> None:
    # Read from QEMU 7.2 (-accel kvm -machine q35 -m 128M): fw_cfg file etc/e820.
    expected = bytes.fromhex(
        "00c0fffe00000000 0040000000000000 02000000"  # reserved: KVM's pages
        " 0000000000000000 0000000800000000 01000000"  # RAM: 128 MiB at 0
    )
    assert pack(q35_e820(128 * MiB)) == expected


def test_split_at_q35_low_memory_limit() -> None:
    assert q35_ram_split(0xB0000000 - 4096) == (0xB0000000 - 4096, 0)
    # From 2.75 GiB on, QEMU keeps 2 GiB low, not 2.75: 1 GiB alignment above 4 GiB.
    assert q35_ram_split(0xB0000000) == (2 * GiB, 0x30000000)
    assert q35_ram_split(3 * GiB) == (2 * GiB, 1 * GiB)


def test_high_ram_continues_at_4_gib() -> None:
    assert q35_e820(3 * GiB) == [
        E820Entry(0xFEFFC000, 0x4000, E820Type.RESERVED),
        E820Entry(0, 2 * GiB, E820Type.RAM),
        E820Entry(4 * GiB, 1 * GiB, E820Type.RAM),
    ]


def test_round_trip_and_malformed_tables() -> None:
    entries = q35_e820(4 * GiB)
    assert unpack(pack(entries)) == entries
    with pytest.raises(E820Error, match="whole number"):
        unpack(bytes(21))
    with pytest.raises(E820Error, match="unknown type 9"):
        unpack(E820Entry(0, 4096, E820Type.RAM).pack()[:16] + (9).to_bytes(4, "little"))


@pytest.mark.parametrize("size", [0, -4096, 4096 + 1])
def test_bad_ram_sizes(size: int) -> None:
    with pytest.raises(E820Error):
        q35_e820(size)
