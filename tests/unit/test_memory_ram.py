"""Guest RAM in banks: one host block, guest ranges one after another (QEMU's aliases)."""

from __future__ import annotations

import pytest

from pcihole.memory.map import GuestAddressError
from pcihole.memory.ram import GuestRam

GiB = 1 << 30


def test_banks_share_one_block_in_order() -> None:
    ram = GuestRam.in_banks([(0, 0x3000), (4 * GiB, 0x2000)])
    try:
        assert (ram.base, ram.size) == (0, 0x5000)
        assert ram.host_address_of(4 * GiB) == ram.host_address + 0x3000
        ram.write(0x2FFC, b"low!")
        ram.write(4 * GiB, b"high")
        assert ram.read(0x2FFC, 4) == b"low!" and ram.read(4 * GiB, 4) == b"high"
        for address, length in [(0x2FFE, 4), (0x3000, 1), (4 * GiB - 1, 2), (4 * GiB + 0x1FFF, 2)]:
            with pytest.raises(GuestAddressError, match="outside RAM"):
                ram.read(address, length)  # across a bank's end, or between banks
    finally:
        ram.close()
