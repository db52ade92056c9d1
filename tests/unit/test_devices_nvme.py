"""NVMe with no namespace: QEMU 7.2's register values, the admin queue through a fake guest
memory (Identify, queue creation, completions with phase tags), SeaBIOS's init path."""

from __future__ import annotations

import struct

from pcihole.devices.nvme import Nvme
from pcihole.memory.access import FlatMemory

ASQ_ADDR = 0x10000
ACQ_ADDR = 0x11000
BUFFER = 0x20000
IO_SQ = 0x30000
IO_CQ = 0x31000
CC_SEABIOS = 0x00460001
"""EN, IOSQES 6, IOCQES 4: what SeaBIOS 1.16 writes."""


def controller() -> tuple[Nvme, FlatMemory, list[bool]]:
    memory = FlatMemory(0x40000)
    levels: list[bool] = []
    return Nvme(memory, levels.append, serial="x"), memory, levels


def test_registers_at_reset_equal_qemus() -> None:
    nvme, _, _ = controller()
    dwords = [nvme.read(offset, 4) for offset in range(0, 0x40, 4)]
    assert dwords == [0x0F0107FF, 0x00401820, 0x00010400] + [0] * 13  # QEMU 7.2, xp
    assert nvme.read(0x0, 8) == 0x00401820_0F0107FF
    assert [nvme.read(0x1000 + 4 * i, 4) for i in range(8)] == [0] * 8
    assert nvme.read(0xE00, 4) == 0


def test_msix_table_entries_start_masked() -> None:
    nvme, _, _ = controller()
    assert [nvme.read(0x2000 + 16 * 64 + 4 * i, 4) for i in range(4)] == [0, 0, 0, 1]
    nvme.write(0x2000, 4, 0xFEE00000)
    assert nvme.read(0x2000, 4) == 0xFEE00000
    assert nvme.read(0x3000, 8) == 0


def enable(nvme: Nvme, sq_entries: int = 64, cq_entries: int = 256) -> None:
    nvme.write(0x24, 4, (cq_entries - 1) << 16 | (sq_entries - 1))
    nvme.write(0x28, 8, ASQ_ADDR)
    nvme.write(0x30, 8, ACQ_ADDR)
    nvme.write(0x14, 4, CC_SEABIOS)


def test_ready_follows_enable() -> None:
    nvme, _, _ = controller()
    enable(nvme)
    assert nvme.read(0x1C, 4) == 1
    assert nvme.read(0x14, 4) == CC_SEABIOS
    nvme.write(0x14, 4, 0)
    assert nvme.read(0x1C, 4) == 0
    assert nvme.read(0x14, 4) == 0


def test_enable_with_unaligned_queues_fails_the_controller() -> None:
    nvme, _, _ = controller()
    nvme.write(0x24, 4, 0x003F003F)
    nvme.write(0x28, 8, ASQ_ADDR + 0x80)
    nvme.write(0x30, 8, ACQ_ADDR)
    nvme.write(0x14, 4, CC_SEABIOS)
    assert nvme.read(0x1C, 4) == 0x2  # CFS, not ready


def test_shutdown_completes_at_once() -> None:
    nvme, _, _ = controller()
    enable(nvme)
    nvme.write(0x14, 4, CC_SEABIOS | 1 << 14)
    assert nvme.read(0x1C, 4) == 0x9  # ready, shutdown complete


class Host:
    """A driver's side of the admin queue, as SeaBIOS's nvme.c does it (one command at a
    time, polling the phase tag)."""

    def __init__(
        self, nvme: Nvme, memory: FlatMemory, entries: int = 64, cq_entries: int = 256
    ) -> None:
        self.nvme, self.memory = nvme, memory
        self.entries, self.cq_entries = entries, cq_entries
        self.sq_tail = self.cq_head = 0
        self.phase = 1

    def submit(
        self, opcode: int, nsid: int = 0, prp1: int = 0, cdw10: int = 0, cdw11: int = 0
    ) -> tuple[int, int]:
        cid = self.sq_tail
        entry = struct.pack(
            "<BBHI8x8xQQ6I", opcode, 0, cid, nsid, prp1, 0, cdw10, cdw11, 0, 0, 0, 0
        )
        self.memory.write(ASQ_ADDR + 64 * self.sq_tail, entry)
        self.sq_tail = (self.sq_tail + 1) % self.entries
        self.nvme.write(0x1000, 4, self.sq_tail)
        result, _, sq_head, sqid, got_cid, status = struct.unpack(
            "<IIHHHH", self.memory.read(ACQ_ADDR + 16 * self.cq_head, 16)
        )
        assert status & 1 == self.phase, "no completion posted before the doorbell returned"
        assert (got_cid, sqid, sq_head) == (cid, 0, self.sq_tail)
        self.cq_head = (self.cq_head + 1) % self.cq_entries
        if self.cq_head == 0:
            self.phase ^= 1
        self.nvme.write(0x1004, 4, self.cq_head)
        return status >> 1, result


def test_identify_controller_round_trip() -> None:
    nvme, memory, _ = controller()
    enable(nvme)
    host = Host(nvme, memory)
    assert host.submit(0x06, prp1=BUFFER, cdw10=1) == (0, 0)
    data = memory.read(BUFFER, 4096)
    assert struct.unpack_from("<HH", data, 0) == (0x1B36, 0x1AF4)
    assert data[4:24] == b"x".ljust(20)
    assert data[24:64] == b"QEMU NVMe Ctrl".ljust(40)
    assert data[0x4D] == 7  # MDTS
    assert struct.unpack_from("<I", data, 0x50)[0] == 0x10400
    assert data[0x200:0x202] == b"\x66\x44"
    assert struct.unpack_from("<I", data, 0x204)[0] == 256  # NN, as QEMU
    assert data[0x300:0x317] == b"nqn.2019-08.org.qemu:x\0"


def test_identify_namespaces_finds_none() -> None:
    nvme, memory, _ = controller()
    enable(nvme)
    host = Host(nvme, memory)
    memory.write(BUFFER, b"\xaa" * 4096)
    assert host.submit(0x06, nsid=1, prp1=BUFFER, cdw10=0) == (0, 0)
    assert memory.read(BUFFER, 4096) == bytes(4096)
    memory.write(BUFFER, b"\xaa" * 4096)
    assert host.submit(0x06, nsid=0, prp1=BUFFER, cdw10=2) == (0, 0)  # active list: empty
    assert memory.read(BUFFER, 4096) == bytes(4096)
    assert host.submit(0x06, nsid=0, prp1=BUFFER, cdw10=0) == (0x400B, 0)  # invalid NSID
    assert host.submit(0x06, nsid=1, prp1=BUFFER, cdw10=3) == (0x4002, 0)
    assert host.submit(0x7F) == (0x4001, 0)  # invalid opcode, do not retry


def test_identify_across_two_pages_uses_prp2() -> None:
    nvme, memory, _ = controller()
    enable(nvme)
    host = Host(nvme, memory)
    entry = struct.pack("<BBHI8x8xQQ6I", 0x06, 0, 0, 0, BUFFER + 0x800, IO_SQ, 1, 0, 0, 0, 0, 0)
    memory.write(ASQ_ADDR, entry)
    nvme.write(0x1000, 4, 1)
    assert memory.read(ACQ_ADDR + 14, 2) == b"\x01\x00"
    assert memory.read(BUFFER + 0x800, 0x800) + memory.read(IO_SQ, 0x800) == nvme.identity
    del host


def seabios_nvme_init(nvme: Nvme, memory: FlatMemory) -> list[str]:
    """SeaBIOS 1.16's nvme_controller_enable and nvme_probe_ns (src/hw/nvme.c)."""
    said = []
    assert nvme.read(0x1C, 4) & 1 == 0  # CC = 0 written first: not ready
    nvme.write(0x14, 4, 0)
    enable(nvme)
    assert nvme.read(0x1C, 4) & 1 == 1
    host = Host(nvme, memory)
    status, _ = host.submit(0x06, prp1=BUFFER, cdw10=1)
    nn = struct.unpack_from("<I", memory.read(BUFFER, 4096), 0x204)[0]
    said.append(f"NVMe has {nn} namespaces.")
    assert host.submit(0x05, prp1=IO_CQ, cdw10=255 << 16 | 1, cdw11=1) == (0, 0)
    assert host.submit(0x01, prp1=IO_SQ, cdw10=63 << 16 | 1, cdw11=1 << 16 | 1) == (0, 0)
    for nsid in range(1, nn + 1):
        status, _ = host.submit(0x06, nsid=nsid, prp1=BUFFER, cdw10=0)
        assert status == 0
        nsze = struct.unpack_from("<Q", memory.read(BUFFER, 8))[0]
        if not nsze:
            said.append(f"NVMe NS {nsid} is inactive.")
    return said


def test_seabios_init_ends_with_no_drive() -> None:
    nvme, memory, levels = controller()
    said = seabios_nvme_init(nvme, memory)
    assert said[0] == "NVMe has 256 namespaces."
    assert said[1:] == [f"NVMe NS {n} is inactive." for n in range(1, 257)]
    # The admin queue interrupts (INTx, as QEMU's): raised per completion, lowered by the
    # head doorbell that consumes it; the line ends low.
    assert levels == [True, False] * (len(levels) // 2) and len(levels) == 2 * 259
    assert nvme.dma_failures == nvme.ignored_doorbells == 0


def test_io_queue_rules() -> None:
    nvme, memory, _ = controller()
    enable(nvme)
    host = Host(nvme, memory)
    assert host.submit(0x01, prp1=IO_SQ, cdw10=1, cdw11=1 << 16 | 1) == (0x4100, 0)  # no CQ 1
    assert host.submit(0x05, prp1=IO_CQ + 8, cdw10=1, cdw11=1) == (0x4113, 0)
    assert host.submit(0x05, prp1=IO_CQ, cdw10=0x800 << 16 | 1, cdw11=1) == (0x4102, 0)
    assert host.submit(0x05, prp1=IO_CQ, cdw10=65, cdw11=1) == (0x4101, 0)
    assert host.submit(0x05, prp1=IO_CQ, cdw10=3 << 16 | 1, cdw11=1) == (0, 0)
    assert host.submit(0x01, prp1=IO_SQ, cdw10=3 << 16 | 1, cdw11=1 << 16 | 1) == (0, 0)
    assert host.submit(0x04, cdw10=1) == (0x410C, 0)  # an SQ still posts to it
    # An I/O read on SQ 1 fails: no namespace is active.
    memory.write(IO_SQ, struct.pack("<BBHI8x8xQQ6I", 0x02, 0, 7, 1, BUFFER, 0, 0, 0, 0, 0, 0, 0))
    nvme.write(0x1008, 4, 1)
    _, _, sq_head, sqid, cid, status = struct.unpack("<IIHHHH", memory.read(IO_CQ, 16))
    assert (sq_head, sqid, cid, status) == (1, 1, 7, 0x4002 << 1 | 1)
    assert host.submit(0x00, cdw10=1) == (0, 0)
    assert host.submit(0x04, cdw10=1) == (0, 0)
    assert host.submit(0x09, cdw10=0x07) == (0, 0x003F003F)


def test_completion_queue_full_waits_for_the_host() -> None:
    nvme, memory, _ = controller()
    enable(nvme, sq_entries=8, cq_entries=2)  # one usable completion slot
    for i in range(2):
        entry = struct.pack("<BBHI8x8xQQ6I", 0x06, 0, i, 0, BUFFER, 0, 1, 0, 0, 0, 0, 0)
        memory.write(ASQ_ADDR + 64 * i, entry)
    nvme.write(0x1000, 4, 2)
    first = struct.unpack("<IIHHHH", memory.read(ACQ_ADDR, 16))
    assert (first[4], first[5] & 1) == (0, 1)
    assert memory.read(ACQ_ADDR + 16, 16) == bytes(16)  # full: the second waits
    nvme.write(0x1004, 4, 1)
    second = struct.unpack("<IIHHHH", memory.read(ACQ_ADDR + 16, 16))
    assert (second[4], second[5] & 1) == (1, 1)


def test_phase_tag_flips_when_the_completion_queue_wraps() -> None:
    nvme, memory, _ = controller()
    enable(nvme, sq_entries=8, cq_entries=4)
    host = Host(nvme, memory, entries=8, cq_entries=4)
    for _ in range(3):
        host.submit(0x06, prp1=BUFFER, cdw10=1)
    # The fourth completion lands in slot 3, the fifth in slot 0 with phase 0.
    for cid in (3, 4):
        entry = struct.pack("<BBHI8x8xQQ6I", 0x06, 0, cid, 0, BUFFER, 0, 1, 0, 0, 0, 0, 0)
        memory.write(ASQ_ADDR + 64 * (cid % 8), entry)
        nvme.write(0x1000, 4, cid + 1)
        nvme.write(0x1004, 4, (cid + 1) % 4)
    slot0 = struct.unpack("<IIHHHH", memory.read(ACQ_ADDR, 16))
    assert (slot0[4], slot0[5] & 1) == (4, 0)


def test_doorbells_while_disabled_or_out_of_range_are_ignored() -> None:
    nvme, _, _ = controller()
    nvme.write(0x1000, 4, 1)
    enable(nvme)
    nvme.write(0x1000, 4, 64)  # beyond the 64-entry queue
    nvme.write(0x1010, 4, 1)  # SQ 2 does not exist
    assert nvme.ignored_doorbells == 3


def test_async_events_are_held() -> None:
    nvme, memory, _ = controller()
    enable(nvme)
    entry = struct.pack("<BBHI8x8xQQ6I", 0x0C, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    memory.write(ASQ_ADDR, entry)
    nvme.write(0x1000, 4, 1)
    assert memory.read(ACQ_ADDR, 16) == bytes(16)
    assert nvme.async_events == 1


def test_interrupt_line_follows_pending_completions_and_intms() -> None:
    nvme, memory, levels = controller()
    enable(nvme)
    host = Host(nvme, memory)
    entry = struct.pack("<BBHI8x8xQQ6I", 0x06, 0, 0, 0, BUFFER, 0, 1, 0, 0, 0, 0, 0)
    memory.write(ASQ_ADDR, entry)
    nvme.write(0x1000, 4, 1)
    assert levels == [True]  # the admin CQ has interrupts on, vector 0
    nvme.write(0x0C, 4, 1)
    assert levels == [True, False]
    nvme.write(0x10, 4, 1)
    nvme.write(0x1004, 4, 1)
    assert levels == [True, False, True, False]
    del host
