"""PAM shadowing applied to a real VM: memslots follow the registers; exits do what the
mode says (writes to RAM in modes 2 and 3, dropped in 0 and 1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pcihole.chipset import pam
from pcihole.kvm import Kvm, abi
from pcihole.machine.shadow import ShadowMemory, pci_side
from pcihole.memory import GuestRam, SlotAllocator

IMAGE = bytes(range(256)) * 512  # 128 KiB, each byte knows its offset


@pytest.fixture
def shadow(kvm: Kvm) -> Iterator[ShadowMemory]:
    with kvm.create_vm() as vm:
        ram = GuestRam(0, 2 << 20)
        memory = ShadowMemory(vm, SlotAllocator(vm.max_memslots), ram, pci_side(IMAGE))
        yield memory
        memory.close()
        ram.close()


def _slots(memory: ShadowMemory) -> list[tuple[int, int, int, int]]:
    return sorted(
        (m.guest_address, m.size, m.host_address, m.flags) for m in memory.vm.memslots.values()
    )


def test_reset_maps_the_pci_side_read_only(shadow: ShadowMemory) -> None:
    assert _slots(shadow) == [(0xC0000, 0x40000, shadow.pci.host_address, abi.KVM_MEM_READONLY)]
    assert shadow.pci.read(0xE0000, 4) == IMAGE[:4]
    assert shadow.pci.read(0xC0000, 0x20000) == bytes(0x20000)


def test_writable_then_locked(shadow: ShadowMemory) -> None:
    ram = shadow.ram.host_address
    assert shadow.apply([0x30] + [0x33] * 6)
    assert _slots(shadow) == [(0xC0000, 0x40000, ram + 0xC0000, 0)]
    assert not shadow.apply([0x30] + [0x33] * 6)
    shadow.apply([0x10, 0x11, 0x31, 0x33, 0x33, 0x33, 0x33])
    assert _slots(shadow) == [
        (0xC0000, 0xC000, ram + 0xC0000, abi.KVM_MEM_READONLY),
        (0xCC000, 0x24000, ram + 0xCC000, 0),
        (0xF0000, 0x10000, ram + 0xF0000, abi.KVM_MEM_READONLY),
    ]
    assert shadow.allocator.used == 3


def test_exits_follow_the_mode(shadow: ShadowMemory) -> None:
    offset = 0xF0000 - pam.SHADOW_BASE
    shadow.write(offset, 4, 0x11223344)  # mode 0: to ROM, dropped
    assert shadow.dropped_writes == 1 and shadow.ram.read(0xF0000, 4) == bytes(4)
    assert shadow.read(offset, 2) == int.from_bytes(IMAGE[0x10000:0x10002], "little")
    shadow.apply([0x20] + [0] * 6)  # write-only: reads the image, writes RAM
    shadow.write(offset, 4, 0x11223344)
    assert shadow.ram.read(0xF0000, 4) == bytes.fromhex("44332211")
    assert shadow.read(offset, 4) == int.from_bytes(IMAGE[0x10000:0x10004], "little")
    shadow.apply([0x10] + [0] * 6)  # read-only RAM: reads RAM, writes dropped
    assert shadow.read(offset, 4) == 0x11223344
    shadow.write(offset, 1, 0)
    assert shadow.dropped_writes == 2 and shadow.ram.read(0xF0000, 1) == b"\x44"
