"""The coalesced MMIO ring as the monitor drains it: in order across the wrap, and a
corrupt ring is a clear error at once (never a loop that eats the host's memory).

The ring is the kernel's page in the vCPU's mmap; the test writes it as KVM would (entries
of u64 address, u32 len, u32 pio, 8 data bytes after a u32 first, u32 last header;
include/uapi/linux/kvm.h) and drains it with the product's ``drain_coalesced``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

import pytest

from pcihole.kvm import CoalescedWrite, Kvm, KvmError, Vcpu

HEAD = struct.Struct("<II")
ENTRY = struct.Struct("<QII8s")
ENTRIES = (mmap.PAGESIZE - HEAD.size) // ENTRY.size
"""KVM_COALESCED_MMIO_MAX: 170 with 4 KiB pages."""


@pytest.fixture
def vcpu(kvm: Kvm) -> Iterator[Vcpu]:
    with kvm.create_vm() as vm:
        if not vm.coalesced_mmio_page:
            pytest.skip("no KVM_CAP_COALESCED_MMIO on this host: no ring to drain")
        yield vm.create_vcpu()


def ring_at(vcpu: Vcpu) -> int:
    return vcpu.vm.coalesced_mmio_page * mmap.PAGESIZE


def plant(vcpu: Vcpu, first: int, last: int, entries: dict[int, tuple[int, bytes]]) -> None:
    base = ring_at(vcpu)
    for index, (address, data) in entries.items():
        ENTRY.pack_into(
            vcpu.run_page,
            base + HEAD.size + index * ENTRY.size,
            address,
            len(data),
            0,
            data.ljust(8, b"\0"),
        )
    HEAD.pack_into(vcpu.run_page, base, first, last)


def test_a_wrapped_ring_drains_in_order_and_empties(vcpu: Vcpu) -> None:
    assert vcpu.ring_capacity == ENTRIES - 1
    planted = {
        ENTRIES - 2: (0xB000_0000, b"\x01"),
        ENTRIES - 1: (0xB000_1000, b"\x02\x03"),
        0: (0xB000_2000, b"\x04\x05\x06\x07"),
        1: (0xB000_3000, b"\x08" * 8),
    }
    plant(vcpu, ENTRIES - 2, 2, planted)
    assert vcpu.drain_coalesced() == [
        CoalescedWrite(0xB000_0000, 1, b"\x01"),
        CoalescedWrite(0xB000_1000, 2, b"\x02\x03"),
        CoalescedWrite(0xB000_2000, 4, b"\x04\x05\x06\x07"),
        CoalescedWrite(0xB000_3000, 8, b"\x08" * 8),
    ]
    assert HEAD.unpack_from(vcpu.run_page, ring_at(vcpu)) == (2, 2)
    assert vcpu.drain_coalesced() == []
    # A full ring: every entry but one, first just after last.
    plant(vcpu, 5, 4, {i: (0xC000_0000 + i, bytes([i & 0xFF])) for i in range(ENTRIES)})
    drained = vcpu.drain_coalesced()
    assert [w.address - 0xC000_0000 for w in drained] == [*range(5, ENTRIES), *range(4)]


@pytest.mark.parametrize(
    ("first", "last"), [(0, ENTRIES), (ENTRIES, 0), (0, 0xFFFF_FFFF), (0xFFFF_FFFF, 3)]
)
def test_indices_outside_the_ring_are_a_clear_error(vcpu: Vcpu, first: int, last: int) -> None:
    plant(vcpu, first, last, {})
    with pytest.raises(KvmError, match="ring is corrupt"):
        vcpu.drain_coalesced()
    assert HEAD.unpack_from(vcpu.run_page, ring_at(vcpu)) == (first, last)  # left as found
