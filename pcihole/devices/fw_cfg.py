"""QEMU's firmware configuration device (fw_cfg), as QEMU 7.2 presents it on q35.

Two port ranges share one state. At 0x510 a 16-bit write selects an item and 8-bit reads
(at 0x510 or 0x511) return its bytes one after another, then zeros past its end. At 0x514
sits the DMA interface: the guest writes the guest-physical address of a 16-byte
``FWCfgDmaAccess`` (big-endian: u32 control, u32 length, u64 address) as two 32-bit halves,
high at 0x514 then low at 0x518, or as one 64-bit write; the low half starts the transfer,
which the device runs to completion before the write returns, then stores the control
word back (0, or ERROR). Reads at 0x514 answer the signature "QEMU CFG".

``FwCfg`` gathers the items (numbered ones and named files; files get selectors from 0x20
in name order, as QEMU does for machine types without legacy ordering); ``FwCfgDevice``
serves a snapshot of them. See docs/specs/fw_cfg.txt in QEMU.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pcihole.arch.x86 import e820
from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.errors import Bug
from pcihole.memory.access import MEMORY_ERRORS, GuestMemory

SIGNATURE = b"QEMU"
"""What the signature item (selector 0) holds: SeaBIOS reads it to detect fw_cfg."""
DMA_SIGNATURE = b"QEMU CFG"
"""What reads of the DMA address register return, byte for byte."""
FILE_NAME_SIZE = 56
"""A directory entry's name field, NUL-terminated, so names have at most 55 bytes."""
FILE_SLOTS = 0x20
"""QEMU's default number of file selectors (its ``x-file-slots``)."""
FILE_ENTRY = struct.Struct(">IHH56s")
"""One directory entry: size, selector, reserved, name (big-endian)."""
DMA_ACCESS = struct.Struct(">IIQ")
"""``FWCfgDmaAccess``: control, length, address (big-endian)."""
ENTRY_MASK = 0x3FFF
"""Selector bits that index an item; bit 14 (QEMU's old write channel) is ignored."""
ARCH_LOCAL = 0x8000
"""Selector bit of architecture-specific items."""
ZERO_CHUNK = 64 * 1024
"""A DMA read past an item's end zeroes guest memory in pieces of this size."""

BOOT_FAIL_WAIT_FOREVER = 0xFFFFFFFF
"""``etc/boot-fail-wait`` when firmware should never retry (QEMU's default, reboot-timeout
-1): SeaBIOS prints ``No bootable device.`` and waits for interrupts."""
BOOT_FAIL_WAIT_MAX_MS = 0xFFFF
"""QEMU refuses a larger reboot-timeout."""
ICH9_SYSTEM_STATES = bytes([0x80, 0, 0, 0x81, 0x82, 0x80])
"""``etc/system-states`` of ICH9's PM block: S3 enabled, S4 enabled with value 2 (QEMU's
acpi_pm1_cnt_init with ICH9's defaults); SeaBIOS writes them into its own SSDT."""
IRQ0_OVERRIDE = 1
"""The PIT's IRQ 0 reaches the IOAPIC's pin 2: SeaBIOS adds the MADT override for it."""

FEATURE_CONTROL_LOCKED = 1 << 0
FEATURE_CONTROL_VMXON_OUTSIDE_SMX = 1 << 2
FEATURE_CONTROL_SGX_LC = 1 << 17
FEATURE_CONTROL_SGX = 1 << 18
"""IA32_FEATURE_CONTROL bits QEMU asks firmware to set (``etc/msr_feature_control``) for
the features its first vCPU has; LMCE never here: pcihole sets up no machine-check banks."""

ACPI_FILES = ("etc/acpi/rsdp", "etc/acpi/tables", "etc/table-loader")
"""QEMU's ACPI tables and their loader (``pcihole.acpi``): served unless ACPI is off, when
SeaBIOS builds tables of its own (QEMU's ``-machine acpi=off`` drops them too)."""
_OWN_SMBIOS = "QEMU's own SMBIOS tables; without them SeaBIOS builds its own (no legacy entries)"
_SMI = "SMI feature negotiation for OVMF's SMM (broadcast SMI, CPU hot-plug); SeaBIOS ignores it"
QEMU_FILES_LEFT_OUT: dict[str, str] = {
    "etc/tpm/log": "the TPM log area of QEMU's ACPI build, empty without a TPM; no TPM here",
    "etc/smbios/smbios-anchor": _OWN_SMBIOS,
    "etc/smbios/smbios-tables": _OWN_SMBIOS,
    "etc/smi/features-ok": _SMI,
    "etc/smi/requested-features": _SMI,
    "etc/smi/supported-features": _SMI,
    "genroms/kvmvapic.bin": "QEMU's TPR-patching option ROM, which needs its kvmvapic device",
}
"""Files QEMU 7.2 ``-machine q35 -nodefaults`` under KVM serves that ``FwCfg.q35`` does not
(besides ``ACPI_FILES`` when it is given no tables), and why. (QEMU's HPET item 0x8004 is
left out too: SeaBIOS never reads it.)"""


class Selector(enum.IntEnum):
    """Item numbers (QEMU's include/standard-headers/linux/qemu_fw_cfg.h)."""

    SIGNATURE = 0x00
    """"QEMU"."""
    ID = 0x01
    """u32 LE feature bits (``Feature``)."""
    UUID = 0x02
    """16 bytes, the SMBIOS system UUID."""
    RAM_SIZE = 0x03
    """u64 LE, all guest RAM."""
    NOGRAPHIC = 0x04
    """u16 LE; 1 makes SeaBIOS use its serial console."""
    NB_CPUS = 0x05
    """u16 LE, CPUs present at boot."""
    NUMA = 0x0D
    """u64 LE node count, then one u64 node per APIC ID, then one u64 size per node."""
    BOOT_MENU = 0x0E
    """u16 LE, 1 to show the boot menu."""
    MAX_CPUS = 0x0F
    """u16 LE, the APIC ID limit (max CPUs with QEMU's default topology)."""
    FILE_DIR = 0x19
    """u32 BE count, then 64-byte entries (``FILE_ENTRY``)."""
    FILE_FIRST = 0x20
    """The first file's selector."""
    ACPI_TABLES = ARCH_LOCAL | 0
    """Legacy ACPI tables: u16 LE count, then tables."""
    SMBIOS_ENTRIES = ARCH_LOCAL | 1
    """Legacy SMBIOS fields and tables: u16 LE count, then entries."""
    IRQ0_OVERRIDE = ARCH_LOCAL | 2
    """u32 LE, 1 if IRQ 0 is routed to the IOAPIC's pin 2."""


class Feature(enum.IntFlag):
    """Bits of the ID item."""

    TRADITIONAL = 0x01
    """The port interface."""
    DMA = 0x02
    """The DMA interface at 0x514."""


class DmaControl(enum.IntFlag):
    """Bits of ``FWCfgDmaAccess.control``; the selector to choose sits in bits 16-31."""

    ERROR = 0x01
    """Set by the device when a transfer failed."""
    READ = 0x02
    """Copy item bytes to guest memory (zeros past the item's end)."""
    SKIP = 0x04
    """Advance through the item without copying."""
    SELECT = 0x08
    """Select the item in bits 16-31 before transferring."""
    WRITE = 0x10
    """Copy guest memory into the item: refused (ERROR), every item here is read-only."""


@dataclass(frozen=True)
class BootRom:
    """An option ROM that boots what fw_cfg holds (QEMU's linuxboot_dma.bin for -kernel)."""

    name: str
    """Its file name, e.g. ``linuxboot_dma.bin``."""
    image: bytes

    @property
    def file_name(self) -> str:
        return f"genroms/{self.name}"

    @property
    def bootorder(self) -> bytes:
        """QEMU's ``bootorder`` with the ROM as boot index 0: its path, NUL-terminated."""
        return f"/rom@{self.file_name}".encode("ascii") + b"\0"


class FwCfgError(Bug):
    """An item or file the device cannot hold: a bad name, a duplicate, no slot left."""


@dataclass(frozen=True, slots=True)
class FwCfgFile:
    """One entry of the file directory."""

    name: str
    select: int
    size: int

    def pack(self) -> bytes:
        return FILE_ENTRY.pack(self.size, self.select, 0, self.name.encode("ascii"))


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


class FwCfg:
    """The items a fw_cfg device serves: numbered items and named files."""

    def __init__(self) -> None:
        self._items: dict[int, bytes] = {}
        self._files: dict[str, bytes] = {}

    @classmethod
    def q35(
        cls,
        *,
        ram: e820.Q35Ram,
        vcpu: VcpuIdentity,
        cpus: int = 1,
        max_cpus: int | None = None,
        boot_fail_wait: int | None = None,
        boot_menu: bool = False,
        nographic: bool = False,
        uuid: bytes = bytes(16),
        kernel: Mapping[int, bytes] | None = None,
        boot_rom: BootRom | None = None,
        acpi: Mapping[str, bytes] | None = None,
    ) -> FwCfg:
        """What QEMU 7.2 ``-machine q35 -nodefaults`` under KVM gives, minus QEMU's own
        SMBIOS tables, so that SeaBIOS builds its own. ``ram`` is the machine's RAM layout,
        ``vcpu`` what QEMU's board reads of the first vCPU. ``acpi`` holds the ACPI files
        (``ACPI_FILES``, from ``pcihole.acpi.q35``); without them SeaBIOS builds its tables.

        ``boot_fail_wait`` is milliseconds before SeaBIOS retries after ``No bootable
        device.``; None (QEMU's default) never retries. ``kernel`` holds the items of a
        ``-kernel`` (``pcihole.arch.x86.linux``), ``boot_rom`` the option ROM that boots
        it, served as ``genroms/NAME`` and named first in ``bootorder`` as QEMU does.
        """
        max_cpus = cpus if max_cpus is None else max_cpus
        if not 1 <= cpus <= max_cpus <= 0xFFFF:
            raise FwCfgError(f"CPU counts {cpus} present, {max_cpus} max are inconsistent")
        if len(uuid) != 16:
            raise FwCfgError(f"a UUID has 16 bytes, not {len(uuid)}")
        config = cls()
        config.add_item(Selector.SIGNATURE, SIGNATURE)
        config.add_item(Selector.ID, _u32(Feature.TRADITIONAL | Feature.DMA))
        config.add_item(Selector.UUID, uuid)
        config.add_item(Selector.RAM_SIZE, _u64(ram.size))
        config.add_item(Selector.NOGRAPHIC, _u16(int(nographic)))
        config.add_item(Selector.NB_CPUS, _u16(cpus))
        config.add_item(Selector.MAX_CPUS, _u16(max_cpus))
        # No NUMA nodes: a zero count, then node 0 for every APIC ID.
        config.add_item(Selector.NUMA, bytes(8 * (1 + max_cpus)))
        config.add_item(Selector.BOOT_MENU, _u16(int(boot_menu)))
        config.add_item(Selector.ACPI_TABLES, _u16(0))
        config.add_item(Selector.SMBIOS_ENTRIES, _u16(0))
        config.add_item(Selector.IRQ0_OVERRIDE, _u32(IRQ0_OVERRIDE))
        for selector, data in (kernel or {}).items():
            config.add_item(selector, data)
        config.add_file("bios-geometry", b"")
        config.add_file("bootorder", b"" if boot_rom is None else boot_rom.bootorder)
        if boot_rom is not None:
            config.add_file(boot_rom.file_name, boot_rom.image)
        config.add_file("etc/boot-fail-wait", _u32(_boot_fail_wait(boot_fail_wait)))
        config.add_file("etc/e820", e820.pack(ram.e820()))
        feature_control = _feature_control(vcpu)
        if feature_control:
            config.add_file("etc/msr_feature_control", _u64(feature_control))
        config.add_file("etc/system-states", ICH9_SYSTEM_STATES)
        for name, data in (acpi or {}).items():
            config.add_file(name, data)
        return config

    def add_item(self, selector: int, data: bytes) -> None:
        """A numbered item (below 0x20, or an architecture item 0x8000-0x801f)."""
        index = selector & ~ARCH_LOCAL
        if not 0 <= selector <= 0xFFFF or index >= Selector.FILE_FIRST:
            raise FwCfgError(f"fw_cfg selector {selector:#x} is not a numbered item")
        if selector == Selector.FILE_DIR:
            raise FwCfgError("the file directory is built from the files, not added")
        if selector in self._items:
            raise FwCfgError(f"fw_cfg item {selector:#x} is already set")
        self._items[selector] = bytes(data)

    def add_file(self, name: str, data: bytes) -> None:
        """A named file; its selector follows from its place in name order."""
        if not name or len(name) >= FILE_NAME_SIZE or not name.isascii() or "\0" in name:
            raise FwCfgError(
                f"fw_cfg file name {name!r} must be 1-{FILE_NAME_SIZE - 1} ASCII characters"
            )
        if name in self._files:
            raise FwCfgError(f"fw_cfg file {name!r} is already present")
        if len(self._files) == FILE_SLOTS:
            raise FwCfgError(f"fw_cfg has room for {FILE_SLOTS} files; {name!r} is one more")
        self._files[name] = bytes(data)

    def directory(self) -> list[FwCfgFile]:
        """The file directory, in selector order (names sorted bytewise, as QEMU's strcmp)."""
        names = sorted(self._files, key=lambda name: name.encode("ascii"))
        return [
            FwCfgFile(name, Selector.FILE_FIRST + index, len(self._files[name]))
            for index, name in enumerate(names)
        ]

    def items(self) -> dict[int, bytes]:
        """Every item by selector: the numbered ones, the directory and the files."""
        directory = self.directory()
        count = len(directory).to_bytes(4, "big")
        items = dict(self._items)
        items[Selector.FILE_DIR] = count + b"".join(entry.pack() for entry in directory)
        for entry in directory:
            items[entry.select] = self._files[entry.name]
        return items


def _feature_control(vcpu: VcpuIdentity) -> int:
    """What QEMU's fw_cfg_build_feature_control puts in ``etc/msr_feature_control``: the
    bits for the vCPU's features, locked; 0 (no file) when it has none of them."""
    bits = (
        (FEATURE_CONTROL_VMXON_OUTSIDE_SMX if vcpu.vmx else 0)
        | (FEATURE_CONTROL_SGX if vcpu.sgx else 0)
        | (FEATURE_CONTROL_SGX_LC if vcpu.sgx_lc else 0)
    )
    return bits | FEATURE_CONTROL_LOCKED if bits else 0


def _boot_fail_wait(milliseconds: int | None) -> int:
    if milliseconds is None:
        return BOOT_FAIL_WAIT_FOREVER
    if not 0 <= milliseconds <= BOOT_FAIL_WAIT_MAX_MS:
        raise FwCfgError(
            f"boot-fail-wait {milliseconds} ms is outside 0-{BOOT_FAIL_WAIT_MAX_MS} ms"
        )
    return milliseconds


class FwCfgDevice:
    """The device's state: the selected item, the read offset, the DMA address register.

    Put ``io`` on the port bus at ``layout.FW_CFG_PORT`` (``FW_CFG_PORTS`` ports) and
    ``dma`` at ``layout.FW_CFG_DMA_PORT`` (``FW_CFG_DMA_PORTS`` ports). The items are
    those of ``config`` when the device is built. ``on_select`` hears every selector the
    guest chooses (ports or DMA), after the choice, with the file's name for a file.
    """

    def __init__(
        self,
        config: FwCfg,
        memory: GuestMemory,
        on_select: Callable[[int, str | None], None] | None = None,
    ) -> None:
        self._items: Mapping[int, bytes] = config.items()
        self._names = {entry.select: entry.name for entry in config.directory()}
        self._on_select = on_select
        self._memory = memory
        self._data = b""
        self._offset = 0
        self._dma_address = 0
        self.io = FwCfgIoPorts(self)
        self.dma = FwCfgDmaPorts(self)
        self.reset()

    def reset(self) -> None:
        """As QEMU's reset: the signature selected (not a guest's choice: nobody is told),
        the DMA address cleared."""
        self._choose(Selector.SIGNATURE)
        self._dma_address = 0

    def select(self, selector: int) -> None:
        """Choose an item and rewind; an unknown selector reads as zeros."""
        key = self._choose(selector)
        if self._on_select is not None:
            self._on_select(key, self._names.get(key))

    def _choose(self, selector: int) -> int:
        key = selector & (ARCH_LOCAL | ENTRY_MASK)
        self._offset = 0
        self._data = self._items.get(key, b"")
        return key

    def read_byte(self) -> int:
        """The next byte of the selected item, 0 past its end."""
        data = self._data
        if self._offset >= len(data):
            return 0
        self._offset += 1
        return data[self._offset - 1]

    def write_dma_address(self, offset: int, size: int, value: int) -> None:
        """A write to the DMA address register: ``value`` as QEMU's big-endian device
        sees it. The low half (or a 64-bit write) starts the transfer."""
        if size == 4 and offset == 0:
            self._dma_address = value << 32
        elif size == 4 and offset == 4:
            self._dma_address |= value
            self._transfer()
        elif size == 8 and offset == 0:
            self._dma_address = value
            self._transfer()

    def _transfer(self) -> None:
        descriptor, self._dma_address = self._dma_address, 0
        try:
            raw = self._memory.read(descriptor, DMA_ACCESS.size)
        except MEMORY_ERRORS:
            self._store_control(descriptor, DmaControl.ERROR)
            return
        control, length, address = DMA_ACCESS.unpack(raw)
        if control & DmaControl.SELECT:
            self.select(control >> 16)
        # One operation per transfer, READ first, as QEMU decides.
        for operation in (DmaControl.READ, DmaControl.WRITE, DmaControl.SKIP):
            if control & operation:
                self._store_control(descriptor, self._run(operation, address, length))
                return
        self._store_control(descriptor, DmaControl(0))

    def _run(self, operation: DmaControl, address: int, length: int) -> DmaControl:
        """Move ``length`` bytes of the item; ERROR stops the transfer where it failed."""
        data = self._data
        if length and self._offset < len(data):
            count = min(length, len(data) - self._offset)
            chunk = data[self._offset : self._offset + count]
            self._offset += count
            if operation is DmaControl.WRITE:
                return DmaControl.ERROR  # read-only item; QEMU advances the offset anyway
            if operation is DmaControl.READ and not self._store(address, chunk):
                return DmaControl.ERROR
            address, length = address + count, length - count
        if not length:
            return DmaControl(0)
        if operation is DmaControl.WRITE:
            return DmaControl.ERROR  # past the end, or no such item
        if operation is DmaControl.READ:
            while length:
                count = min(length, ZERO_CHUNK)
                if not self._store(address, bytes(count)):
                    return DmaControl.ERROR
                address, length = address + count, length - count
        return DmaControl(0)

    def _store(self, address: int, data: bytes) -> bool:
        try:
            self._memory.write(address, data)
        except MEMORY_ERRORS:
            return False
        return True

    def _store_control(self, descriptor: int, control: DmaControl) -> None:
        # QEMU ignores a failure here too: the guest gave an address it cannot read back.
        self._store(descriptor, int(control).to_bytes(4, "big"))


class FwCfgIoPorts:
    """Ports 0x510-0x511: a 16-bit write at 0x510 selects; 8-bit reads return data.

    QEMU answers other reads with 0 and ignores other writes (8-bit data writes were
    removed in QEMU 2.4).
    """

    def __init__(self, device: FwCfgDevice) -> None:
        self._device = device

    def read(self, offset: int, size: int) -> int:
        return self._device.read_byte() if size == 1 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 2 and offset == 0:
            self._device.select(value)


class FwCfgDmaPorts:
    """Ports 0x514-0x51b: the big-endian DMA address register.

    Port I/O carries bytes in guest (little-endian) order; QEMU's device is big-endian,
    so the value it sees is the bytes read the other way round.
    """

    def __init__(self, device: FwCfgDevice) -> None:
        self._device = device

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(DMA_SIGNATURE[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        big_endian = int.from_bytes(value.to_bytes(size, "little"), "big")
        self._device.write_dma_address(offset, size, big_endian)
