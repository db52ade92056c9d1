"""virtio-pci with nothing behind it: QEMU 7.2's values (read from a running QEMU through
the PCI-config access capability and the legacy I/O BAR), SeaBIOS's virtio-blk init and a
read that fails as on an empty disk, the legacy interface, the network device's queues."""

from __future__ import annotations

import struct
from collections.abc import Callable

from pcihole.devices.virtio_pci import BLK, NET, VirtioKind, VirtioPci
from pcihole.memory.access import FlatMemory

DESC = 0x10000
AVAIL = DESC + 16 * 128
USED = 0x11000
REQUEST = 0x20000
DATA = 0x21000
STATUS_BYTE = 0x22000


def device(kind: VirtioKind = BLK) -> tuple[VirtioPci, FlatMemory, list[bool]]:
    memory = FlatMemory(0x40000)
    levels: list[bool] = []
    return VirtioPci(kind, memory, levels.append), memory, levels


def test_blk_common_configuration_at_reset_equals_qemus() -> None:
    blk, _, _ = device()
    dwords = [blk.read(offset, 4) for offset in range(0, 0x38, 4)]
    assert dwords == [0, 0x30006E54, 0, 0, 0xFFFF, 0, 0x100] + [0] * 7  # xp, QEMU 7.2
    assert blk.read(0x12, 2) == 1  # num_queues
    blk.write(0x00, 4, 1)
    assert blk.read(0x04, 4) == 0x101  # VERSION_1, RING_RESET
    blk.write(0x00, 4, 2)
    assert blk.read(0x04, 4) == 0
    for queue in range(4):  # QEMU: only queue 0 exists; notify offsets are the indexes
        blk.write(0x16, 2, queue)
        expected = (256 if queue == 0 else 0, queue, 0xFFFF)
        assert (blk.read(0x18, 2), blk.read(0x1E, 2), blk.read(0x1A, 2)) == expected


def test_blk_device_configuration_equals_qemus_empty_disk() -> None:
    blk, _, _ = device()
    dwords = [blk.read(0x2000 + offset, 4) for offset in range(0, 0x40, 4)]
    assert dwords == [
        0,
        0,
        0,
        0xFE,
        0x3F100002,
        0x200,
        0,
        0,
        0x10001,
        0x3FFFFF,
        1,
        1,
        0x3FFFFF,
        1,
        0xFFFFFFFF,
        0xFFFFFFFF,
    ]
    assert blk.read(0x2038, 1) == 0xFF
    assert blk.read(0x1000, 1) == 0  # ISR


def test_net_values_equal_qemus() -> None:
    net, _, _ = device(NET)
    assert net.read(0x04, 4) == 0x30BF8024
    assert net.read(0x12, 2) == 3
    sizes = []
    for queue in range(4):
        net.write(0x16, 2, queue)
        sizes.append((net.read(0x18, 2), net.read(0x1E, 2)))
    assert sizes == [(256, 0), (256, 1), (64, 2), (0, 3)]
    assert [net.read(0x2000 + offset, 4) for offset in (0, 4, 8)] == [
        0x12005452,
        0x15634,
        0xFFFFFFFF,
    ]
    net.write(0x16, 2, 0)
    legacy = [net.legacy.read(offset, 4) for offset in range(0, 0x20, 4)]
    assert legacy == [0x79BF8064, 0, 0, 0x100, 0xFFFFFFFF, 0x12005452, 0x15634, 0xFFFFFFFF]


def test_blk_legacy_io_at_reset_equals_qemus() -> None:
    blk, _, _ = device()
    legacy = [blk.legacy.read(offset, 4) for offset in range(0, 0x20, 4)]
    assert legacy == [0x79006E54, 0, 0, 0x100, 0xFFFFFFFF, 0, 0, 0]
    assert [blk.legacy.read(offset, 2) for offset in (0xC, 0xE, 0x10)] == [0x100, 0, 0xFFFF]
    assert (blk.legacy.read(0x12, 1), blk.legacy.read(0x13, 1)) == (0, 0)


def test_a_common_access_answers_only_the_field_at_its_offset() -> None:
    blk, _, _ = device()
    assert blk.read(0x10, 4) == 0xFFFF  # msix_config alone, not num_queues beside it
    assert blk.read(0x11, 1) == 0


def test_driver_features_keep_only_what_was_offered() -> None:
    blk, _, _ = device()
    blk.write(0x08, 4, 0)
    blk.write(0x0C, 4, 0xFFFFFFFF)
    blk.write(0x08, 4, 1)
    blk.write(0x0C, 4, 0xFFFFFFFF)
    assert blk.driver_features == BLK.features
    assert blk.read(0x0C, 4) == 0x101


def seabios_init_virtio_blk(blk: VirtioPci) -> dict[str, int]:
    """SeaBIOS 1.16's vp_init_simple, init_virtio_blk and vp_find_vq in modern mode."""
    blk.write(0x14, 1, 0)  # vp_reset
    blk.read(0x1000, 1)
    blk.write(0x14, 1, 0x3)  # ACKNOWLEDGE | DRIVER
    blk.write(0x00, 4, 0)
    features = blk.read(0x04, 4)
    blk.write(0x00, 4, 1)
    features |= blk.read(0x04, 4) << 32
    assert features & 1 << 32, "modern device without virtio_1 feature bit"
    wanted = features & (1 << 32 | 1 << 33 | 1 << 6 | 1 << 2 | 1 << 1)
    for select in (0, 1):
        blk.write(0x08, 4, select)
        blk.write(0x0C, 4, wanted >> 32 * select & 0xFFFFFFFF)
    blk.write(0x14, 1, 0xB)
    assert blk.read(0x14, 1) & 0x8, "device didn't accept features"
    found = {
        "seg_max": blk.read(0x200C, 4),
        "sectors": blk.read(0x2000, 4) | blk.read(0x2004, 4) << 32,
        "blksize": blk.read(0x2014, 4),
        "cylinders": blk.read(0x2010, 2),
    }
    blk.write(0x16, 2, 0)
    size = blk.read(0x18, 2)
    if size > 128:
        blk.write(0x18, 2, 128)
        size = blk.read(0x18, 2)
    assert blk.read(0x1C, 2) == 0, "queue already active"
    for offset, address in ((0x20, DESC), (0x28, AVAIL), (0x30, USED)):
        blk.write(offset, 4, address)
        blk.write(offset + 4, 4, 0)
    blk.write(0x1C, 2, 1)
    found["queue_size"] = size
    found["notify_off"] = blk.read(0x1E, 2)
    blk.write(0x14, 1, 0xF)  # DRIVER_OK
    return found


def read_sector(
    memory: FlatMemory, notify: Callable[[], None], avail: int = AVAIL, used: int = USED
) -> tuple[int, int]:
    """Queue a one-sector read (header, data, status) as the first request and notify."""
    slot = 0
    memory.write(REQUEST, struct.pack("<IIQ", 0, 0, 0))
    memory.write(STATUS_BYTE, b"\xee")
    descriptors = [(REQUEST, 16, 1, 1), (DATA, 512, 3, 2), (STATUS_BYTE, 1, 2, 0)]
    for index, (address, length, flags, following) in enumerate(descriptors):
        memory.write(DESC + 16 * index, struct.pack("<QIHH", address, length, flags, following))
    memory.write(avail + 4 + 2 * slot, struct.pack("<H", 0))
    memory.write(avail, struct.pack("<HH", 1, slot + 1))  # no interrupts, as SeaBIOS
    notify()
    used_idx = struct.unpack("<H", memory.read(used + 2, 2))[0]
    head, length = struct.unpack("<II", memory.read(used + 4 + 8 * slot, 8))
    assert (used_idx, head) == (slot + 1, 0)
    return memory.read(STATUS_BYTE, 1)[0], length


def test_seabios_sees_an_empty_disk_that_cannot_be_read() -> None:
    blk, memory, levels = device()
    found = seabios_init_virtio_blk(blk)
    assert found == {
        "seg_max": 0xFE,
        "sectors": 0,
        "blksize": 512,
        "cylinders": 2,
        "queue_size": 128,
        "notify_off": 0,
    }
    assert blk.read(0x14, 1) == 0xF
    status, length = read_sector(memory, lambda: blk.write(0x3000, 2, 0))
    assert (status, length) == (1, 513)  # IOERR: sector 0 is past the end
    assert levels == []  # VRING_AVAIL_F_NO_INTERRUPT


def test_interrupt_and_isr_when_the_driver_wants_them() -> None:
    blk, memory, levels = device()
    seabios_init_virtio_blk(blk)
    memory.write(REQUEST, struct.pack("<IIQ", 4, 0, 0))  # flush
    memory.write(DESC, struct.pack("<QIHH", REQUEST, 16, 1, 1))
    memory.write(DESC + 16, struct.pack("<QIHH", STATUS_BYTE, 1, 2, 0))
    memory.write(AVAIL, struct.pack("<HHH", 0, 1, 0))
    blk.write(0x3000, 2, 0)
    assert memory.read(STATUS_BYTE, 1) == b"\x00"
    assert levels == [True]
    assert blk.read(0x1000, 1) == 1
    assert blk.read(0x1000, 1) == 0
    assert levels == [True, False]


def test_legacy_interface_runs_the_same_queue() -> None:
    blk, memory, _ = device()
    io = blk.legacy
    io.write(0x12, 1, 0x3)
    io.write(0x04, 4, 0xFFFFFFFF)
    assert io.read(0x04, 4) == 0x79006E54
    io.write(0x0E, 2, 0)
    io.write(0x08, 4, DESC >> 12)
    assert io.read(0x08, 4) == DESC >> 12
    queue = blk.queues[0]
    assert (queue.desc, queue.avail, queue.used) == (DESC, DESC + 4096, DESC + 0x2000)
    status, _ = read_sector(memory, lambda: io.write(0x10, 2, 0), queue.avail, queue.used)
    assert status == 1
    io.write(0x12, 1, 0)
    assert io.read(0x08, 4) == 0 and blk.status == 0


def test_net_transmit_drops_and_receive_waits() -> None:
    net, memory, _ = device(NET)
    for queue in (0, 1):
        net.write(0x16, 2, queue)
        base = 0x10000 * (queue + 1)
        for offset, address in ((0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)):
            net.write(offset, 4, address)
        net.write(0x1C, 2, 1)
        memory.write(base, struct.pack("<QIHH", DATA, 64, 2 if queue == 0 else 0, 0))
        memory.write(base + 0x1000, struct.pack("<HHH", 1, 1, 0))
        net.write(0x3000 + 4 * queue, 2, queue)
    assert struct.unpack("<H", memory.read(0x12000 + 2, 2))[0] == 0  # nothing received
    assert struct.unpack("<HHII", memory.read(0x22000, 12)) == (0, 1, 0, 0)  # sent, dropped


def test_reset_forgets_the_queues() -> None:
    blk, _, _ = device()
    seabios_init_virtio_blk(blk)
    blk.write(0x14, 1, 0)
    assert blk.read(0x14, 1) == 0
    assert (blk.read(0x18, 2), blk.read(0x1C, 2), blk.read(0x20, 4)) == (256, 0, 0)
