"""virtio-pci devices with nothing behind them, as QEMU 7.2's hw/virtio/virtio-pci.c lays
them out: a block device whose disk is empty (capacity 0, as QEMU's ``virtio-blk-pci``
with ``file=/dev/null``) and a network device with no peer.

Two register blocks, given to the machine to place where the guest programs the BARs:

- ``VirtioPci`` itself is BAR4 (16 KiB, 64-bit memory): the virtio 1.0 structures the
  vendor capabilities point at, each 4 KiB: common configuration at 0x0000, ISR status at
  0x1000, device configuration at 0x2000, notifications at 0x3000 (queue n at 4n).
- ``VirtioPci.legacy`` is the legacy (0.9.5) I/O BAR0 of a transitional device (QEMU
  gives one to a virtio device on the root bus): features, queue PFN/size/select/notify,
  status, ISR, then the device configuration at 0x14 (MSI-X is not enabled by firmware;
  the 0x18 layout with MSI-X vectors is not modelled).

Values are those a running QEMU 7.2 shows (read through the virtio PCI-config access
capability): offered features, queue sizes (block: one queue of 256; network: receive and
transmit of 256, control of 64), notify offsets equal to queue indexes, MSI-X vectors 0xffff,
and the device configuration bytes. As in QEMU, a common-configuration access answers the
one field at its offset whatever the access size.

Requests: the driver's split rings are read from guest memory at a notification. A block
request is answered as QEMU answers it for an empty disk: reads and writes IOERR (every
sector is past the end), flush OK, GET_ID an empty serial, the rest UNSUPP; the used ring and
the ISR's queue bit are updated before the notification returns, and the INTx line raised
unless the driver asked for no interrupts. The network device's transmit queue drops what it
is given (QEMU without a peer); nothing is ever received; control requests are left unused.
SeaBIOS drives the block device as under QEMU: ``found virtio-blk``, modern mode, a drive
with 0 sectors that fails to read at boot (``Boot failed: could not read the boot disk``).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pcihole.devices.irq import IrqLine, IrqPin, no_irq
from pcihole.memory.access import MEMORY_ERRORS, GuestMemory

STRUCTURE_SIZE = 0x1000
COMMON, ISR, DEVICE, NOTIFY = (i * STRUCTURE_SIZE for i in range(4))
BAR_SIZE = 4 * STRUCTURE_SIZE
NOTIFY_MULTIPLIER = 4
NO_VECTOR = 0xFFFF
LEGACY_CONFIG = 0x14
LEGACY_VRING_ALIGN = 4096

ISR_QUEUE = 0x1
VERSION_1 = 1 << 32
RING_RESET = 1 << 40
DESC_NEXT, DESC_WRITE, DESC_INDIRECT = 1, 2, 4
AVAIL_NO_INTERRUPT = 1
MAX_CHAIN = 1024
"""Longest descriptor chain followed (QEMU's VIRTQUEUE_MAX_SIZE): stops a guest loop."""

# Common configuration fields: offset -> (name, size).
COMMON_FIELDS: dict[int, tuple[str, int]] = {
    0x00: ("device_feature_select", 4),
    0x04: ("device_feature", 4),
    0x08: ("driver_feature_select", 4),
    0x0C: ("driver_feature", 4),
    0x10: ("msix_config", 2),
    0x12: ("num_queues", 2),
    0x14: ("device_status", 1),
    0x15: ("config_generation", 1),
    0x16: ("queue_select", 2),
    0x18: ("queue_size", 2),
    0x1A: ("queue_msix_vector", 2),
    0x1C: ("queue_enable", 2),
    0x1E: ("queue_notify_off", 2),
    0x20: ("queue_desc_lo", 4),
    0x24: ("queue_desc_hi", 4),
    0x28: ("queue_avail_lo", 4),
    0x2C: ("queue_avail_hi", 4),
    0x30: ("queue_used_lo", 4),
    0x34: ("queue_used_hi", 4),
    0x3A: ("queue_reset", 2),
}


class BlkRequest(enum.IntEnum):
    IN = 0
    OUT = 1
    FLUSH = 4
    GET_ID = 8


class BlkStatus(enum.IntEnum):
    OK = 0
    IOERR = 1
    UNSUPP = 2


BLK_ANSWERS: dict[int, BlkStatus] = {
    BlkRequest.IN: BlkStatus.IOERR,  # every sector is past the end of an empty disk
    BlkRequest.OUT: BlkStatus.IOERR,
    BlkRequest.FLUSH: BlkStatus.OK,
    BlkRequest.GET_ID: BlkStatus.OK,
}


@dataclass(frozen=True)
class VirtioKind:
    """What distinguishes one virtio device from another, behind the same transport."""

    name: str
    features: int
    """Offered through the modern interface (64 bits)."""
    legacy_features: int
    """Offered through the legacy interface (32 bits; QEMU adds legacy-only bits)."""
    queue_sizes: tuple[int, ...]
    config: bytes
    """Device configuration; reads past it answer all ones, as QEMU's."""


def _blk_config() -> bytes:
    config = bytearray(0x38)
    struct.pack_into("<QII", config, 0x00, 0, 0, 0xFE)  # capacity 0, size_max, seg_max 254
    struct.pack_into("<HBBI", config, 0x10, 2, 16, 63, 512)  # geometry C/H/S, blk_size
    struct.pack_into("<BBH", config, 0x20, 1, 0, 1)  # writeback, num_queues 1
    struct.pack_into("<IIIII", config, 0x24, 0x3FFFFF, 1, 1, 0x3FFFFF, 1)  # discard, zeroes
    return bytes(config)


BLK = VirtioKind(
    "virtio-blk",
    features=VERSION_1 | RING_RESET | 0x3000_6E54,
    legacy_features=0x7900_6E54,
    queue_sizes=(256,),
    config=_blk_config(),
)
"""QEMU 7.2 ``virtio-blk-pci,drive=...`` over ``/dev/null``: an empty disk."""
NET = VirtioKind(
    "virtio-net",
    features=VERSION_1 | RING_RESET | 0x30BF_8024,
    legacy_features=0x79BF_8064,
    queue_sizes=(256, 256, 64),
    config=bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x01, 0x00]),  # MAC, link up
)
"""QEMU 7.2 ``virtio-net-pci`` with no peer (default MAC 52:54:00:12:34:56)."""


@dataclass
class Virtqueue:
    """One split virtqueue as the driver describes it."""

    max_size: int
    size: int = 0
    desc: int = 0
    avail: int = 0
    used: int = 0
    enabled: bool = False
    vector: int = NO_VECTOR
    last_avail: int = 0
    used_idx: int = 0

    def reset(self) -> None:
        self.size, self.desc, self.avail, self.used = self.max_size, 0, 0, 0
        self.enabled, self.vector, self.last_avail, self.used_idx = False, NO_VECTOR, 0, 0


@dataclass
class Chain:
    """A descriptor chain: what the device may read, and where it may write."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)


class VirtioPci:
    """Transport and device state of one virtio-pci function with nothing behind it."""

    def __init__(self, kind: VirtioKind, memory: GuestMemory, irq: IrqLine = no_irq) -> None:
        self.kind = kind
        self.memory = memory
        self._irq = IrqPin(irq)
        self.queues = [Virtqueue(size) for size in kind.queue_sizes]
        self.legacy = VirtioLegacyIo(self)
        self.dma_failures = 0
        self.requests = 0
        """Requests answered (block) or buffers dropped (network transmit)."""
        self.reset()

    def reset(self) -> None:
        """What writing status 0 does (QEMU's ``virtio_pci_reset``)."""
        self.status = 0
        self.isr = 0
        self.driver_features = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.msix_config = NO_VECTOR
        self.queue_select = 0
        for queue in self.queues:
            queue.reset()
        self._irq.set(False)

    @property
    def selected(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    # -- BAR4: the modern structures -------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset < ISR:
            return self._read_common(offset) & ((1 << 8 * size) - 1)
        if offset < DEVICE:
            return self.read_isr() if offset == ISR else 0
        if offset < NOTIFY:
            return self.read_config(offset - DEVICE, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < ISR:
            self._write_common(offset, value)
        elif NOTIFY <= offset < NOTIFY + NOTIFY_MULTIPLIER * len(self.queues):
            self.notify((offset - NOTIFY) // NOTIFY_MULTIPLIER)
        # ISR is read-only; device configuration writes are not taken (see module doc).

    def _read_common(self, offset: int) -> int:
        name = COMMON_FIELDS.get(offset, ("", 0))[0]
        queue = self.selected
        if name == "device_feature":
            return self.kind.features >> 32 * self.device_feature_select & 0xFFFFFFFF
        if name == "driver_feature":
            return self.driver_features >> 32 * self.driver_feature_select & 0xFFFFFFFF
        if name == "num_queues":
            return len(self.queues)
        if name == "device_status":
            return self.status
        if name == "queue_notify_off":
            return self.queue_select  # QEMU: queue n notifies at n * multiplier
        if name.startswith("queue_") and name != "queue_select":
            if queue is None:  # a queue the device lacks: empty, no vector
                return NO_VECTOR if name == "queue_msix_vector" else 0
            return self._read_queue(queue, name)
        return int(getattr(self, name, 0))

    @staticmethod
    def _read_queue(queue: Virtqueue, name: str) -> int:
        split = {"queue_desc": queue.desc, "queue_avail": queue.avail, "queue_used": queue.used}
        if name[:-3] in split:
            return split[name[:-3]] >> (32 if name.endswith("hi") else 0) & 0xFFFFFFFF
        return {
            "queue_size": queue.size,
            "queue_msix_vector": queue.vector,
            "queue_enable": int(queue.enabled),
            "queue_reset": 0,
        }.get(name, 0)

    def _write_common(self, offset: int, value: int) -> None:
        name = COMMON_FIELDS.get(offset, ("", 0))[0]
        queue = self.selected
        if name in ("device_feature_select", "driver_feature_select", "msix_config"):
            setattr(self, name, value)
        elif name == "driver_feature" and self.driver_feature_select < 2:
            shift = 32 * self.driver_feature_select
            wanted = self.driver_features & ~(0xFFFFFFFF << shift) | value << shift
            self.driver_features = wanted & self.kind.features  # QEMU drops the rest
        elif name == "device_status":
            self.set_status(value & 0xFF)
        elif name == "queue_select":
            self.queue_select = value
        elif queue is not None and name.startswith("queue_"):
            self._write_queue(queue, name, value)

    @staticmethod
    def _write_queue(queue: Virtqueue, name: str, value: int) -> None:
        if name == "queue_size":
            if value and queue.max_size and value <= 1024:
                queue.size = value
        elif name == "queue_msix_vector":
            queue.vector = value
        elif name == "queue_enable":
            queue.enabled = bool(value) and queue.max_size > 0
        elif name == "queue_reset" and value == 1:
            queue.reset()
        elif name[:-3] in ("queue_desc", "queue_avail", "queue_used"):
            attribute = name[6:-3]
            old = getattr(queue, attribute)
            shift = 32 if name.endswith("hi") else 0
            setattr(queue, attribute, old & ~(0xFFFFFFFF << shift) | value << shift)

    def set_status(self, value: int) -> None:
        """QEMU's ``virtio_set_status``. FEATURES_OK always holds: features were masked to
        those offered when written, and QEMU refuses only a driver that leaves out an
        offered IOMMU_PLATFORM, which these devices do not offer."""
        if value == 0:
            self.reset()
            return
        self.status = value

    def read_isr(self) -> int:
        """Reading the ISR clears it and lowers the line."""
        value, self.isr = self.isr, 0
        self._irq.set(False)
        return value

    def read_config(self, offset: int, size: int) -> int:
        if offset + size > len(self.kind.config):
            return (1 << 8 * size) - 1
        return int.from_bytes(self.kind.config[offset : offset + size], "little")

    # -- requests --------------------------------------------------------------------------

    def notify(self, index: int) -> None:
        """The driver made buffers available on queue ``index``."""
        if index >= len(self.queues):
            return
        queue = self.queues[index]
        if not queue.size or not (queue.enabled or self.legacy.pfns.get(index)):
            return
        if self.kind is NET and index != 1:
            return  # receive: nothing arrives; control: left unanswered (see module doc)
        handler = self._blk_request if self.kind is BLK else self._net_buffer
        try:
            self._drain(queue, handler)
        except MEMORY_ERRORS:
            self.dma_failures += 1

    def _drain(self, queue: Virtqueue, handler: Callable[[Chain], int]) -> None:
        avail_flags, avail_idx = struct.unpack("<HH", self.memory.read(queue.avail, 4))
        answered = False
        while queue.last_avail != avail_idx:
            slot = queue.avail + 4 + 2 * (queue.last_avail % queue.size)
            (head,) = struct.unpack("<H", self.memory.read(slot, 2))
            queue.last_avail = (queue.last_avail + 1) & 0xFFFF
            chain = self._chain(queue, head)
            written = handler(chain)
            used = queue.used + 4 + 8 * (queue.used_idx % queue.size)
            self.memory.write(used, struct.pack("<II", head, written))
            queue.used_idx = (queue.used_idx + 1) & 0xFFFF
            self.memory.write(queue.used + 2, struct.pack("<H", queue.used_idx))
            self.requests += 1
            answered = True
        if answered and not avail_flags & AVAIL_NO_INTERRUPT:
            self.isr |= ISR_QUEUE
            self._irq.set(True)

    def _chain(self, queue: Virtqueue, head: int) -> Chain:
        chain, index, table, count = Chain(head), head, queue.desc, queue.size
        for _ in range(MAX_CHAIN):
            address, length, flags, following = struct.unpack(
                "<QIHH", self.memory.read(table + 16 * (index % count), 16)
            )
            if flags & DESC_INDIRECT:
                table, count, index = address, max(length // 16, 1), 0
                continue
            (chain.writable if flags & DESC_WRITE else chain.readable).append((address, length))
            if not flags & DESC_NEXT:
                break
            index = following
        return chain

    def _blk_request(self, chain: Chain) -> int:
        """Answer one block request as QEMU does for an empty disk; returns bytes written."""
        header = b"".join(self.memory.read(a, n) for a, n in chain.readable)[:16]
        if len(header) < 16 or not chain.writable:
            return 0  # QEMU marks such a device broken; here the request just goes unused
        kind = int.from_bytes(header[:4], "little")
        status = BLK_ANSWERS.get(kind, BlkStatus.UNSUPP)
        if kind == BlkRequest.GET_ID:
            for address, length in chain.writable[:-1]:
                self.memory.write(address, bytes(min(length, 20)))  # no serial
        address, length = chain.writable[-1]
        self.memory.write(address + length - 1, bytes([status]))
        return sum(length for _, length in chain.writable)

    def _net_buffer(self, chain: Chain) -> int:
        return 0  # transmitted to no peer: dropped, nothing written back


class VirtioLegacyIo:
    """The legacy I/O BAR of a transitional device: the 0.9.5 register layout."""

    def __init__(self, device: VirtioPci) -> None:
        self.device = device
        self.pfns: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        device = self.device
        queue = device.selected
        if offset >= LEGACY_CONFIG:
            return device.read_config(offset - LEGACY_CONFIG, size)
        value = {
            0x00: device.kind.legacy_features,
            0x04: device.driver_features & 0xFFFFFFFF,
            0x08: self.pfns.get(device.queue_select, 0),
            0x0C: queue.max_size if queue else 0,
            0x0E: device.queue_select,
            0x12: device.status,
        }.get(offset)
        if offset == 0x13:
            value = device.read_isr()
        return 0xFFFFFFFF & ((1 << 8 * size) - 1) if value is None else value

    def write(self, offset: int, size: int, value: int) -> None:
        device = self.device
        if offset == 0x04:
            device.driver_features = value & device.kind.legacy_features
        elif offset == 0x08:
            self._set_pfn(value)
        elif offset == 0x0E:
            device.queue_select = value
        elif offset == 0x10:
            device.notify(value)
        elif offset == 0x12:
            device.set_status(value & 0xFF)
            if value & 0xFF == 0:
                self.pfns.clear()

    def _set_pfn(self, pfn: int) -> None:
        """Legacy rings: descriptors at the page, the available ring after them, the used
        ring on the next 4 KiB boundary; PFN 0 resets the queue."""
        device = self.device
        queue = device.selected
        if queue is None or not queue.max_size:
            return
        if pfn == 0:
            queue.reset()
            self.pfns.pop(device.queue_select, None)
            return
        self.pfns[device.queue_select] = pfn
        queue.size = queue.max_size
        queue.desc = pfn * LEGACY_VRING_ALIGN
        queue.avail = queue.desc + 16 * queue.size
        end = queue.avail + 6 + 2 * queue.size
        queue.used = (end + LEGACY_VRING_ALIGN - 1) & ~(LEGACY_VRING_ALIGN - 1)
