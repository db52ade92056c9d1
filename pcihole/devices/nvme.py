"""An NVMe controller with no namespace attached, as QEMU 7.2's hw/nvme/ctrl.c presents one
(``-device nvme,serial=...`` without ``drive=``).

One block fills BAR0 (16 KiB): the controller registers at 0x0000 (CAP, VS, INTMS/INTMC,
CC, CSTS, AQA, ASQ, ACQ; the rest of the first 4 KiB reads 0), the doorbells from 0x1000
(stride 4: submission queue y's tail at 0x1000 + 8y, completion queue y's head at
0x1004 + 8y; they read 0), the MSI-X table at 0x2000 and its PBA at 0x3000.

CSTS.RDY follows CC.EN at once (CAP.TO allows 7.5 s; nobody waits). Enabling reads the
admin queues from AQA/ASQ/ACQ, as QEMU's ``nvme_start_ctrl`` checks them (page-aligned,
non-empty, a page size within CAP.MPSMIN..MPSMAX, the NVM command set), else CSTS.CFS.
A submission-queue doorbell runs the commands at once: each is read from guest memory and
its completion written to its completion queue with the phase tag, before the doorbell
write returns, so a guest polling for the completion finds it on its first look.

The admin commands SeaBIOS 1.16 and a Linux probe use are answered as QEMU does with no
namespace: Identify Controller (a valid structure: QEMU's identity, MDTS 7, NN 256: QEMU
reports its namespace-ID capacity, not how many are attached), Identify Namespace (all
zeros, "inactive", for NSIDs 1-256), the active and allocated namespace lists (empty),
Create/Delete I/O Completion and Submission Queue, Set/Get Features Number of Queues,
Abort (nothing to abort) and Asynchronous Event Request (held, never completed: nothing
happens). Other admin opcodes are answered Invalid Opcode, other Identify CNS values and
features Invalid Field; I/O commands name no active namespace and fail. SeaBIOS thus goes
the way it goes under QEMU: identifies the controller, creates one I/O queue pair, finds
all 256 namespaces inactive, registers no drive, and never times out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pcihole.devices.irq import IrqLine, IrqPin, no_irq
from pcihole.devices.msix import MsixTable
from pcihole.memory.access import MEMORY_ERRORS, GuestMemory

BAR_SIZE = 0x4000
REGISTERS_SIZE = 0x1000
DOORBELLS = 0x1000
MSIX_TABLE = 0x2000
MSIX_PBA = 0x3000
MSIX_VECTORS = 65
"""QEMU's msix_qsize default: the admin queue and 64 I/O queues."""
MAX_IO_QUEUE_PAIRS = 64
"""QEMU's max_ioqpairs default."""
MAX_NAMESPACES = 256
"""QEMU's NVME_MAX_NAMESPACES: the NN it reports."""
MAX_QUEUE_ENTRIES = 0x800
"""CAP.MQES + 1."""

# Registers.
CAP, VS, INTMS, INTMC, CC, CSTS, NSSR, AQA, ASQ, ACQ = (
    0x00,
    0x08,
    0x0C,
    0x10,
    0x14,
    0x1C,
    0x20,
    0x24,
    0x28,
    0x30,
)
CAP_VALUE = 0x0040_1820_0F01_07FF
"""MQES 0x7ff, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM + I/O sets + admin-only, MPSMAX 4
(64 KiB pages), MPSMIN 0: read from a running QEMU 7.2."""
VERSION = 0x0001_0400
"""NVMe 1.4."""
CC_EN = 1 << 0
CC_SHN_SHIFT = 14
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_COMPLETE = 2 << 2
PAGE_SHIFT_MIN = 12

# Commands.
SQ_ENTRY = 64
CQ_ENTRY = 16
COMMAND = struct.Struct("<BBHI8x8xQQ6I")
"""Opcode, flags, command id, NSID, (CDW2-3, metadata), PRP1, PRP2, CDW10-15."""
ADMIN = {
    "delete_sq": 0x00,
    "create_sq": 0x01,
    "delete_cq": 0x04,
    "create_cq": 0x05,
    "identify": 0x06,
    "abort": 0x08,
    "set_features": 0x09,
    "get_features": 0x0A,
    "async_event": 0x0C,
}
FEATURE_NUMBER_OF_QUEUES = 0x07
ASYNC_EVENT_LIMIT = 4
"""Identify Controller AERL 3: four requests may be outstanding."""

# Status (status code | type << 8, as the completion's status field holds it, without phase).
SUCCESS = 0x0000
INVALID_OPCODE = 0x0001
INVALID_FIELD = 0x0002
DATA_TRANSFER_ERROR = 0x0004
INVALID_NSID = 0x000B
INVALID_CQID = 0x0100
INVALID_QID = 0x0101
MAX_QSIZE_EXCEEDED = 0x0102
ASYNC_LIMIT_EXCEEDED = 0x0105
INVALID_VECTOR = 0x0108
INVALID_QUEUE_DELETION = 0x010C
INVALID_PRP_OFFSET = 0x0113
DNR = 0x4000
"""Do not retry."""


@dataclass
class Queue:
    """One submission or completion queue: where it lives and its indexes."""

    qid: int
    base: int
    entries: int
    head: int = 0
    tail: int = 0
    cqid: int = 0
    """For a submission queue: the completion queue it posts to."""
    phase: int = 1
    """For a completion queue: the phase tag the next entry carries."""
    interrupts: bool = True
    vector: int = 0


@dataclass(frozen=True)
class Command:
    opcode: int
    cid: int
    nsid: int
    prp1: int
    prp2: int
    cdw10: int
    cdw11: int

    @classmethod
    def unpack(cls, raw: bytes) -> Command:
        opcode, _, cid, nsid, prp1, prp2, cdw10, cdw11, *_ = COMMAND.unpack(raw)
        return cls(opcode, cid, nsid, prp1, prp2, cdw10, cdw11)


def _ascii(text: str, size: int) -> bytes:
    return text.encode("ascii")[:size].ljust(size, b" ")


def identify_controller(serial: str, firmware: str) -> bytes:
    """The 4 KiB Identify Controller structure QEMU 7.2 fills in ``nvme_init_ctrl``
    (fields a driver acts on; reserved and unsupported ones stay zero)."""
    data = bytearray(4096)
    struct.pack_into("<HH", data, 0x00, 0x1B36, 0x1AF4)  # PCI vendor, subsystem vendor
    data[0x04:0x18] = _ascii(serial, 20)
    data[0x18:0x40] = _ascii("QEMU NVMe Ctrl", 40)
    data[0x40:0x48] = _ascii(firmware, 8)
    data[0x48] = 6  # recommended arbitration burst
    data[0x49:0x4C] = bytes([0x00, 0x54, 0x52])  # IEEE OUI 52:54:00
    data[0x4D] = 7  # MDTS: 2^7 pages per transfer
    struct.pack_into("<I", data, 0x50, VERSION)
    struct.pack_into("<I", data, 0x58, 1 << 8)  # OAES: namespace attribute notices
    struct.pack_into("<I", data, 0x5C, 1 << 15)  # CTRATT: extended LBA formats
    data[0x6F] = 1  # I/O controller
    struct.pack_into("<H", data, 0x100, 0x000A)  # OACS: format NVM, namespace management
    data[0x102:0x107] = bytes([3, 3, 3, 7, 3])  # ACL, AERL, FRMW, LPA, ELPE
    struct.pack_into("<HH", data, 0x10A, 0x157, 0x175)  # warning, critical temperature
    data[0x200:0x202] = bytes([0x66, 0x44])  # SQES 64 bytes, CQES 16 bytes
    struct.pack_into("<IH", data, 0x204, MAX_NAMESPACES, 0x015D)  # NN, ONCS
    data[0x20D] = 0x07  # volatile write cache, broadcast flush
    struct.pack_into("<I", data, 0x218, 0x0001_0002)  # SGLS
    subnqn = f"nqn.2019-08.org.qemu:{serial}".encode("ascii")[:255]
    data[0x300 : 0x300 + len(subnqn)] = subnqn
    struct.pack_into("<HxxII", data, 0x800, 0x09C4, 0x10, 0x10)  # power state 0: 25 W
    return bytes(data)


class Nvme:
    """BAR0 of an NVMe controller with no namespace: registers, doorbells, MSI-X."""

    def __init__(
        self,
        memory: GuestMemory,
        irq: IrqLine = no_irq,
        *,
        serial: str = "pcihole",
        firmware: str = "7.2.0",
    ) -> None:
        self.memory = memory
        self._irq = IrqPin(irq)
        self.identity = identify_controller(serial, firmware)
        self.msix = MsixTable(MSIX_VECTORS, MSIX_TABLE, MSIX_PBA)
        self.registers = bytearray(REGISTERS_SIZE)
        self.sqs: dict[int, Queue] = {}
        self.cqs: dict[int, Queue] = {}
        self.async_events = 0
        self.dma_failures = 0
        """Queue entries or data that could not be read or written (outside guest memory)."""
        self.ignored_doorbells = 0
        """Doorbell writes QEMU also ignores: controller off, no such queue, index too big."""
        self._reg(CAP, 8, CAP_VALUE)
        self._reg(VS, 4, VERSION)

    def _reg(self, offset: int, size: int, value: int | None = None) -> int:
        if value is not None:
            self.registers[offset : offset + size] = value.to_bytes(size, "little")
        return int.from_bytes(self.registers[offset : offset + size], "little")

    # -- guest accesses --------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset + size <= REGISTERS_SIZE:
            return int.from_bytes(self.registers[offset : offset + size], "little")
        if offset >= MSIX_TABLE:
            return self.msix.read(offset, size)
        return 0  # doorbells are write-only; QEMU answers 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 8 and offset < MSIX_TABLE:  # two dwords, low first (as a 32-bit CPU)
            self.write(offset, 4, value & 0xFFFFFFFF)
            self.write(offset + 4, 4, value >> 32)
        elif offset >= MSIX_TABLE:
            self.msix.write(offset, size, value)
        elif offset >= DOORBELLS:
            self._doorbell(offset - DOORBELLS, value)
        elif offset == CC:
            self._write_cc(value)
        elif offset == INTMS:
            self._reg(INTMS, 4, self._reg(INTMS, 4) | value)
            self._update_irq()
        elif offset == INTMC:
            self._reg(INTMS, 4, self._reg(INTMS, 4) & ~value)
            self._update_irq()
        elif offset in (AQA, ASQ, ASQ + 4, ACQ, ACQ + 4):
            self._reg(offset, 4, value & (0x0FFF0FFF if offset == AQA else 0xFFFFFFFF))
        # CAP, VS, CSTS, NSSR and the rest: read-only here (no subsystem reset).

    # -- controller state ------------------------------------------------------------------

    def _write_cc(self, value: int) -> None:
        """QEMU 7.2's CC write: enable starts, disable resets, shutdown completes at once."""
        cc, csts = self._reg(CC, 4), self._reg(CSTS, 4)
        if not value & CC_EN and cc & CC_EN:
            self._stop()  # QEMU's nvme_ctrl_reset: queues gone, CC and RDY cleared
            return
        shutdown, was_shutdown = value >> CC_SHN_SHIFT & 3, cc >> CC_SHN_SHIFT & 3
        if not value & CC_EN and not cc & CC_EN and not shutdown and not was_shutdown:
            cc = value  # fields written before the enable bit
        if value & CC_EN and not cc & CC_EN:
            cc = value
            self._reg(CC, 4, cc)  # the start reads it
            csts = CSTS_RDY if self._start() else CSTS_CFS
        elif shutdown and not was_shutdown:
            cc = value
            csts |= CSTS_SHST_COMPLETE
        elif not shutdown and was_shutdown:
            cc = value
            csts &= ~CSTS_SHST_COMPLETE
        self._reg(CC, 4, cc)
        self._reg(CSTS, 4, csts)

    @property
    def page_size(self) -> int:
        return 1 << (PAGE_SHIFT_MIN + (self._reg(CC, 4) >> 7 & 0xF))

    def _start(self) -> bool:
        """QEMU's ``nvme_start_ctrl``: the admin queues from AQA/ASQ/ACQ, if they make sense."""
        cc, aqa = self._reg(CC, 4), self._reg(AQA, 4)
        asq, acq = self._reg(ASQ, 8), self._reg(ACQ, 8)
        mps = cc >> 7 & 0xF
        mps_min, mps_max = CAP_VALUE >> 48 & 0xF, CAP_VALUE >> 52 & 0xF
        sq_entries, cq_entries = (aqa & 0xFFF) + 1, (aqa >> 16 & 0xFFF) + 1
        css = cc >> 4 & 0x7
        if (
            not mps_min <= mps <= mps_max
            or css != 0
            or (asq | acq) & (self.page_size - 1)
            or sq_entries < 2
            or cq_entries < 2
        ):
            return False
        self.cqs = {0: Queue(0, acq, cq_entries)}
        self.sqs = {0: Queue(0, asq, sq_entries)}
        return True

    def _stop(self) -> None:
        self.sqs.clear()
        self.cqs.clear()
        self.async_events = 0
        self._reg(CC, 4, 0)
        self._reg(CSTS, 4, self._reg(CSTS, 4) & ~(CSTS_RDY | CSTS_CFS))
        self._update_irq()

    # -- queues ----------------------------------------------------------------------------

    def _doorbell(self, offset: int, value: int) -> None:
        qid, is_head = divmod(offset >> 2, 2)
        table = self.cqs if is_head else self.sqs
        queue = table.get(qid)
        if offset & 3 or not self._reg(CSTS, 4) & CSTS_RDY or queue is None:
            self.ignored_doorbells += 1
            return
        if value >= queue.entries:
            self.ignored_doorbells += 1
            return
        if is_head:
            queue.head = value
            for sq in list(self.sqs.values()):
                if sq.cqid == qid:
                    self._run(sq)  # room freed: commands waiting for it go on
            self._update_irq()
        else:
            queue.tail = value
            self._run(queue)

    def _run(self, sq: Queue) -> None:
        """Run ``sq``'s commands from head to tail while its completion queue has room."""
        while sq.head != sq.tail and sq.qid in self.sqs:
            cq = self.cqs[sq.cqid]
            if (cq.tail + 1) % cq.entries == cq.head:
                return  # full: wait for the host to consume
            try:
                raw = self.memory.read(sq.base + sq.head * SQ_ENTRY, SQ_ENTRY)
            except MEMORY_ERRORS:
                self.dma_failures += 1
                return
            sq.head = (sq.head + 1) % sq.entries
            command = Command.unpack(raw)
            answer = self._admin(command) if sq.qid == 0 else self._io(command)
            if answer is not None:
                self._complete(cq, sq, command.cid, *answer)
        self._update_irq()

    def _complete(self, cq: Queue, sq: Queue, cid: int, status: int, result: int) -> None:
        entry = struct.pack("<IIHHHH", result, 0, sq.head, sq.qid, cid, status << 1 | cq.phase)
        try:
            self.memory.write(cq.base + cq.tail * CQ_ENTRY, entry)
        except MEMORY_ERRORS:
            self.dma_failures += 1
            return
        cq.tail = (cq.tail + 1) % cq.entries
        if cq.tail == 0:
            cq.phase ^= 1

    def _update_irq(self) -> None:
        """INTx: raised while a completion queue with interrupts on holds entries and its
        vector is not masked in INTMS (MSI-X delivery is not modelled)."""
        masked = self._reg(INTMS, 4)
        pending = any(
            cq.interrupts and cq.head != cq.tail and not masked >> cq.vector & 1
            for cq in self.cqs.values()
        )
        self._irq.set(pending)

    # -- commands --------------------------------------------------------------------------

    def _admin(self, command: Command) -> tuple[int, int] | None:
        """(status, result) of an admin command, or None when it completes later (never)."""
        opcode = command.opcode
        if opcode == ADMIN["identify"]:
            return self._identify(command), 0
        if opcode in (ADMIN["create_cq"], ADMIN["create_sq"]):
            return self._create_queue(command), 0
        if opcode in (ADMIN["delete_cq"], ADMIN["delete_sq"]):
            return self._delete_queue(command), 0
        if opcode == ADMIN["abort"]:
            return SUCCESS, 1  # bit 0 set: the command was not aborted
        if opcode in (ADMIN["set_features"], ADMIN["get_features"]):
            if command.cdw10 & 0xFF != FEATURE_NUMBER_OF_QUEUES:
                return INVALID_FIELD | DNR, 0
            both = (MAX_IO_QUEUE_PAIRS - 1) * 0x10001
            return SUCCESS, both
        if opcode == ADMIN["async_event"]:
            if self.async_events >= ASYNC_EVENT_LIMIT:
                return ASYNC_LIMIT_EXCEEDED | DNR, 0
            self.async_events += 1
            return None  # held until an event: there will be none
        return INVALID_OPCODE | DNR, 0

    def _io(self, command: Command) -> tuple[int, int]:
        valid = 1 <= command.nsid <= MAX_NAMESPACES or command.nsid == 0xFFFFFFFF
        return (INVALID_FIELD if valid else INVALID_NSID) | DNR, 0

    def _identify(self, command: Command) -> int:
        cns, nsid = command.cdw10 & 0xFF, command.nsid
        if cns == 0x01:
            data = self.identity
        elif cns == 0x00:
            if not 1 <= nsid <= MAX_NAMESPACES:
                return INVALID_NSID | DNR
            data = bytes(4096)  # not attached: QEMU reports an empty structure
        elif cns in (0x02, 0x10):
            if nsid >= 0xFFFFFFFE:
                return INVALID_NSID | DNR
            data = bytes(4096)  # active / allocated namespace list: none
        else:
            return INVALID_FIELD | DNR
        return self._to_prps(command, data)

    def _to_prps(self, command: Command, data: bytes) -> int:
        """Copy ``data`` to the PRP1 page (from its offset) and on to the PRP2 page."""
        if command.prp1 & 3:
            return INVALID_PRP_OFFSET | DNR
        page = self.page_size
        first = min(len(data), page - command.prp1 % page)
        try:
            self.memory.write(command.prp1, data[:first])
            if first < len(data):
                self.memory.write(command.prp2, data[first:])
        except MEMORY_ERRORS:
            self.dma_failures += 1
            return DATA_TRANSFER_ERROR
        return SUCCESS

    def _create_queue(self, command: Command) -> int:
        qid, entries = command.cdw10 & 0xFFFF, (command.cdw10 >> 16) + 1
        is_cq = command.opcode == ADMIN["create_cq"]
        table = self.cqs if is_cq else self.sqs
        if not 1 <= qid <= MAX_IO_QUEUE_PAIRS or qid in table:
            return INVALID_QID | DNR
        if entries > MAX_QUEUE_ENTRIES:
            return MAX_QSIZE_EXCEEDED | DNR
        if not command.prp1 or command.prp1 & (self.page_size - 1):
            return INVALID_PRP_OFFSET | DNR
        if not command.cdw11 & 1:
            return INVALID_FIELD | DNR  # CAP.CQR: queues must be physically contiguous
        if is_cq:
            vector = command.cdw11 >> 16
            if vector >= MSIX_VECTORS:
                return INVALID_VECTOR | DNR
            self.cqs[qid] = Queue(
                qid, command.prp1, entries, interrupts=bool(command.cdw11 & 2), vector=vector
            )
            return SUCCESS
        cqid = command.cdw11 >> 16
        if cqid == 0 or cqid not in self.cqs:
            return INVALID_CQID | DNR
        self.sqs[qid] = Queue(qid, command.prp1, entries, cqid=cqid)
        return SUCCESS

    def _delete_queue(self, command: Command) -> int:
        qid = command.cdw10 & 0xFFFF
        is_cq = command.opcode == ADMIN["delete_cq"]
        table = self.cqs if is_cq else self.sqs
        if qid == 0 or qid not in table:
            return INVALID_QID | DNR
        if is_cq and any(sq.cqid == qid for sq in self.sqs.values()):
            return INVALID_QUEUE_DELETION | DNR
        del table[qid]
        return SUCCESS
