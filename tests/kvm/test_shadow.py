"""PAM shadowing applied to a real VM: memslots follow the registers; exits do what the
mode says (writes to RAM in modes 2 and 3, dropped in 0 and 1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pcihole.devices.debug_exit import exit_status
from pcihole.kvm import Kvm, abi
from pcihole.memory import GuestRam, SlotAllocator
from pcihole.q35 import Q35Machine, mch
from pcihole.q35.shadow import ShadowMemory, pci_side
from tests.support import run_firmware

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
    offset = 0xF0000 - mch.SHADOW_BASE
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


def test_write_only_maps_the_pci_side_read_only(shadow: ShadowMemory) -> None:
    """Mode 2: reads come from the PCI side without an exit, writes exit (to RAM)."""
    pci, readonly = shadow.pci.host_address, abi.KVM_MEM_READONLY
    shadow.apply([0x20] + [0] * 6)  # 0xf0000-0xfffff write-only, the rest PCI
    assert _slots(shadow) == [
        (0xC0000, 0x30000, pci, readonly),
        (0xF0000, 0x10000, pci + 0x30000, readonly),
    ]
    shadow.apply([0, 0x02, 0, 0, 0, 0, 0x20])  # 0xc0000 and 0xec000 (16 KiB each)
    assert _slots(shadow) == [
        (0xC0000, 0x4000, pci, readonly),
        (0xC4000, 0x28000, pci + 0x4000, readonly),
        (0xEC000, 0x4000, pci + 0x2C000, readonly),
        (0xF0000, 0x10000, pci + 0x30000, readonly),
    ]
    shadow.write(0xEC000 - mch.SHADOW_BASE, 2, 0xBEEF)
    assert shadow.ram.read(0xEC000, 2) == b"\xef\xbe"  # RAM took it
    assert shadow.pci.read(0xEC000, 2) == IMAGE[0xC000:0xC002]  # the ROM side did not
    assert shadow.read(0xEC000 - mch.SHADOW_BASE, 2) == int.from_bytes(
        IMAGE[0xC000:0xC002], "little"
    )


# Real mode from the reset vector (CS base 0xffff0000): program PAM through CF8/CFC as
# SeaBIOS does (byte writes), then write and read a byte in each write-only segment.
PAM_PROGRAM = bytes.fromhex(
    "66b890000080"
    "baf80c"
    "66ef"  # CF8 = 00:00.0 offset 0x90 (PAM0..PAM3)
    "bafc0c"
    "b020"
    "ee"  # PAM0 = 0x20: 0xf0000-0xfffff write-only
    "bafd0c"
    "b002"
    "ee"  # PAM1 = 0x02: 0xc0000-0xc3fff write-only
    "b800f0"
    "8ed8"  # ds = 0xf000
    "c606000077"
    "a00000"
    "ba0204"
    "ee"  # [0xf0000] = 0x77; console <- [0xf0000]
    "b800c0"
    "8ed8"  # ds = 0xc000
    "c606100066"
    "a01000"
    "ba0204"
    "ee"  # [0xc0010] = 0x66; console <- [0xc0010]
    "bafc0c"
    "b030"
    "ee"  # PAM0 = 0x30: read-write RAM
    "bafd0c"
    "b003"
    "ee"  # PAM1 = 0x03
    "a01000"
    "ba0204"
    "ee"  # console <- [0xc0010]
    "b800f0"
    "8ed8"
    "a00000"
    "ba0204"
    "ee"  # console <- [0xf0000]
    "baf400"
    "ee"
    "f4"  # debug-exit with al; hlt
)
ROM_MARK = 0xA5
"""The image's first byte: what 0xf0000 holds on the PCI side (the isa-bios alias)."""


def pam_image() -> bytes:
    image = bytearray(b"\xf4" * 0x10000)
    image[0] = ROM_MARK
    image[0x1000 : 0x1000 + len(PAM_PROGRAM)] = PAM_PROGRAM
    image[0xFFF0:0xFFF3] = b"\xe9" + ((0x1000 - 0xFFF3) & 0xFFFF).to_bytes(2, "little")
    return bytes(image)


def test_a_guest_reads_rom_and_writes_ram_in_write_only_mode(kvm: Kvm) -> None:
    """The guest's own view through memslots and exits alike: in mode 2 it reads the PCI
    side (the image's byte at 0xf0000, pc.rom's zero at 0xc0010) while its writes land in
    RAM, which it reads once PAM says read-write. The ROM copy never changes."""
    with Q35Machine(kvm, pam_image()) as machine:
        result = run_firmware(machine, max_exits=64)  # ~20 exits; a stray guest ends
        shadow = machine.platform.shadow
        assert shadow.pci.read(0xF0000, 1) == bytes([ROM_MARK])
        assert shadow.pci.read(0xC0010, 1) == b"\0"
        assert shadow.ram.read(0xF0000, 1) == b"\x77" and shadow.ram.read(0xC0010, 1) == b"\x66"
    assert result.console == bytes([ROM_MARK, 0x00, 0x66, 0x77]), result.reason
    assert result.status == exit_status(0x77)


def test_every_pam_register_written_through_cf8_reaches_the_memslots(kvm: Kvm) -> None:
    """Byte writes to each of PAM0-PAM6 (as SeaBIOS makes them), then one dword: the
    memslots follow what each register's fields say (the decode's unit tests say how)."""
    with Q35Machine(kvm, pam_image()) as machine:
        shadow, ports = machine.platform.shadow, machine.legacy
        values = [0x10, 0x32, 0x13, 0x21, 0x03, 0x30, 0x12]  # every register different
        for index, value in enumerate(values):
            register = mch.PAM0 + index
            ports.write(0, 4, 0x8000_0000 | register & ~3)
            ports.write(4 + register % 4, 1, value)
            assert shadow.registers[index] == value, hex(register)
        assert shadow.runs == mch.runs(values)
        ports.write(0, 4, 0x8000_0000 | 0x94)
        ports.write(4, 4, 0x33_33_33_33)  # PAM4-PAM6 and 0x97 at once
        values[4:] = [0x33] * 3
        assert shadow.runs == mch.runs(values)
        slotted = sorted(
            m.guest_address
            for m in machine.guest.vm.memslots.values()
            if mch.SHADOW_BASE <= m.guest_address < mch.SHADOW_END
        )
        assert slotted == [run.start for run in mch.runs(values)]
