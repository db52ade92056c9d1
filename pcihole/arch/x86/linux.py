"""Linux kernels loaded as QEMU 7.2's ``-kernel``/``-initrd``/``-append`` load them
(hw/i386/x86.c ``x86_load_linux``): what goes into fw_cfg, and the setup header as
QEMU patches it. Pure: bytes in, items and segments out.

Two kinds of kernel:
- a **bzImage** (the "HdrS" setup header, Documentation/x86/boot.rst): setup and
  protected-mode parts, command line and initrd become fw_cfg items; QEMU's option ROM
  ``linuxboot_dma.bin`` copies them into place after the firmware's POST and enters setup;
- an **ELF vmlinux with a Xen PVH note** (``XEN_ELFNOTE_PHYS32_ENTRY``): QEMU's
  ``load_elfboot`` writes its PT_LOAD segments straight into guest RAM and gives the
  entry point, command line, first 8 KiB of the file and initrd as fw_cfg items; a boot
  ROM then builds the ``hvm_start_info`` and enters the kernel in 32-bit protected mode.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field

from pcihole import layout
from pcihole.errors import BadInput

HEADER_MAGIC = b"HdrS"
"""At 0x202 of a kernel with a setup header (boot protocol 2.00 and later)."""
ELF_MAGIC = b"\x7fELF"
MIN_BZIMAGE = 1024
"""A file shorter than this cannot hold boot sector and setup header."""
QEMU_HEADER_SIZE = 8192
"""QEMU reads this much of the file as "the header" (and serves it as setup for PVH)."""
LOADER_TYPE_QEMU = 0xB0
"""``type_of_loader``: high nibble B is QEMU's, revision 0."""
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
OLD_CMDLINE_MAGIC = 0xA33F
"""Before protocol 2.02 the command line is found through this magic at 0x20."""
OLD_CMDLINE_MAX = 255
"""Command-line limit of kernels before protocol 2.06 (which gives ``cmdline_size``)."""
SECTOR = 512
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_LOAD, PT_NOTE = 1, 4
EM_386, EM_X86_64 = 3, 62
ELF_UNSUPPORTED_FLAGS = 0x00010004
"""e_flags QEMU's load_elfboot refuses."""
VGA_NAMED = {"normal": 0xFFFF, "ext": 0xFFFE, "ask": 0xFFFD}
"""``vga=`` words QEMU turns into ``vid_mode`` values."""
_VGA_NUMBER = re.compile(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


class Item(enum.IntEnum):
    """fw_cfg items of a loaded kernel (QEMU's FW_CFG_*), each u32 LE unless data."""

    KERNEL_ADDR = 0x07
    KERNEL_SIZE = 0x08
    INITRD_ADDR = 0x0A
    INITRD_SIZE = 0x0B
    KERNEL_ENTRY = 0x10
    """PVH only: the 32-bit entry point from the ELF note."""
    KERNEL_DATA = 0x11
    INITRD_DATA = 0x12
    CMDLINE_ADDR = 0x13
    CMDLINE_SIZE = 0x14
    CMDLINE_DATA = 0x15
    """The command line and its NUL."""
    SETUP_ADDR = 0x16
    SETUP_SIZE = 0x17
    SETUP_DATA = 0x18


class Offset(enum.IntEnum):
    """Setup-header fields QEMU reads or patches (boot.rst), from the file's start."""

    OLD_CMD_LINE_MAGIC = 0x20
    OLD_CMD_LINE_OFFSET = 0x22
    SETUP_SECTS = 0x1F1
    VID_MODE = 0x1FA
    HEADER = 0x202
    VERSION = 0x206
    TYPE_OF_LOADER = 0x210
    LOADFLAGS = 0x211
    RAMDISK_IMAGE = 0x218
    RAMDISK_SIZE = 0x21C
    HEAP_END_PTR = 0x224
    CMD_LINE_PTR = 0x228
    INITRD_ADDR_MAX = 0x22C
    XLOADFLAGS = 0x236
    CMDLINE_SIZE = 0x238


class KernelError(BadInput):
    """The kernel, initrd or command line cannot be loaded; the message says why."""


@dataclass(frozen=True)
class Segment:
    """Bytes the loader writes into guest RAM before the run (PVH's PT_LOAD segments)."""

    address: int
    data: bytes


@dataclass(frozen=True)
class LinuxLoad:
    """What loading a kernel gives the machine."""

    kind: str
    """"bzImage" or "pvh"."""
    items: dict[int, bytes]
    """fw_cfg items by selector (``Item``)."""
    segments: tuple[Segment, ...] = ()
    """Written into RAM before the vCPU starts (QEMU's ELF loader does so at reset)."""
    protocol: int = 0
    """Boot protocol version of a bzImage (0x20f is 2.15)."""
    notes: list[str] = field(default_factory=list)


def _u16(data: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def _u32(data: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _le32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "little")


def is_bzimage(kernel: bytes) -> bool:
    return len(kernel) >= MIN_BZIMAGE and kernel[Offset.HEADER : Offset.HEADER + 4] == HEADER_MAGIC


def load_linux(
    kernel: bytes, *, cmdline: bytes = b"", initrd: bytes | None = None, below_4g: int
) -> LinuxLoad:
    """Load ``kernel`` (a bzImage, or an ELF with a PVH note) as QEMU 7.2 does on a
    machine with ``below_4g`` bytes of RAM below 4 GiB. ``KernelError`` for what QEMU
    refuses, for what is no kernel, and for a command line the kernel says is too long."""
    if b"\0" in cmdline:
        raise KernelError("the kernel command line cannot hold a NUL byte")
    if is_bzimage(kernel):
        return _load_bzimage(kernel, cmdline, initrd, below_4g)
    if kernel[:4] == ELF_MAGIC:
        return _load_pvh(kernel, cmdline, initrd, below_4g)
    raise KernelError(
        "not a Linux kernel: neither a bzImage (no 'HdrS' setup header) nor an ELF file"
    )


# --- bzImage -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Places:
    setup: int
    cmdline: int
    kernel: int


def _places(protocol: int, loadflags: int, cmdline: bytes) -> _Places:
    """Where QEMU puts setup, command line and kernel, by protocol (x86_load_linux)."""
    if protocol < 0x200 or not loadflags & LOADED_HIGH:
        rounded = (len(cmdline) + 16) & ~15
        return _Places(
            layout.LINUX_LOW_SETUP_ADDR,
            layout.LINUX_LOW_CMDLINE_END - rounded,
            layout.LINUX_LOW_KERNEL_ADDR,
        )
    if protocol < 0x202:
        rounded = (len(cmdline) + 16) & ~15
        return _Places(
            layout.LINUX_LOW_SETUP_ADDR,
            layout.LINUX_LOW_CMDLINE_END - rounded,
            layout.LINUX_KERNEL_ADDR,
        )
    return _Places(layout.LINUX_SETUP_ADDR, layout.LINUX_CMDLINE_ADDR, layout.LINUX_KERNEL_ADDR)


def initrd_limit(header: bytes | bytearray, protocol: int, below_4g: int) -> int:
    """The highest address an initrd may end at, as QEMU computes ``initrd_max``."""
    if protocol >= 0x20C and _u16(header, Offset.XLOADFLAGS) & XLF_CAN_BE_LOADED_ABOVE_4G:
        limit = 0xFFFFFFFF
    elif protocol >= 0x203:
        limit = _u32(header, Offset.INITRD_ADDR_MAX)
    else:
        limit = layout.LINUX_OLD_INITRD_MAX
    return min(limit, below_4g - layout.Q35_ACPI_DATA_SIZE - 1)


def cmdline_limit(header: bytes | bytearray, protocol: int) -> int:
    """Bytes of command line (without its NUL) the kernel takes (boot.rst)."""
    return _u32(header, Offset.CMDLINE_SIZE) if protocol >= 0x206 else OLD_CMDLINE_MAX


def video_mode(cmdline: bytes) -> int | None:
    """``vid_mode`` from a ``vga=`` on the command line, as QEMU reads it (None: none)."""
    found = cmdline.find(b"vga=")
    if found < 0:
        return None
    text = cmdline[found + 4 :].decode("latin-1")
    for word, value in VGA_NAMED.items():
        if text.startswith(word):
            return value
    match = _VGA_NUMBER.match(text)
    if match is None or text[match.end() :][:1] not in ("", " "):
        raise KernelError(f"invalid 'vga=' kernel parameter: {text.split(' ')[0]!r}")
    digits = match.group(1)
    base = 16 if digits[1:2] in ("x", "X") else 8 if digits.startswith("0") else 10
    number = int(digits, base)
    if number > 0xFFFFFFFF:
        raise KernelError(f"invalid 'vga=' kernel parameter: {digits!r} is out of range")
    return number & 0xFFFF


def _load_bzimage(kernel: bytes, cmdline: bytes, initrd: bytes | None, below_4g: int) -> LinuxLoad:
    protocol = _u16(kernel, Offset.VERSION)
    limit = cmdline_limit(kernel, protocol)
    if len(cmdline) > limit:
        raise KernelError(
            f"--append: {len(cmdline)} bytes of command line, the kernel takes at most {limit}"
        )
    sectors = kernel[Offset.SETUP_SECTS] or 4
    setup_size = (sectors + 1) * SECTOR
    if setup_size > len(kernel):
        raise KernelError(
            f"invalid kernel header: {setup_size} bytes of setup, {len(kernel)} in the file"
        )
    places = _places(protocol, kernel[Offset.LOADFLAGS], cmdline)
    setup = bytearray(kernel[:setup_size])
    data = kernel[setup_size:]
    end = places.kernel + len(data)
    if end > below_4g - layout.Q35_ACPI_DATA_SIZE:
        raise KernelError(
            f"the kernel ({len(data)} bytes at {places.kernel:#x}) does not fit "
            f"in {below_4g >> 20} MiB of RAM"
        )
    items = {
        Item.CMDLINE_ADDR: _le32(places.cmdline),
        Item.CMDLINE_SIZE: _le32(len(cmdline) + 1),
        Item.CMDLINE_DATA: cmdline + b"\0",
    }
    _patch_header(setup, protocol, places, cmdline)
    if initrd is not None:
        if protocol < 0x200:
            raise KernelError("--initrd: the kernel is too old to load a ram disk")
        address = _place_initrd(initrd, initrd_limit(setup, protocol, below_4g), end)
        items |= _initrd_items(address, initrd)
        struct.pack_into("<II", setup, Offset.RAMDISK_IMAGE, address, len(initrd))
    items |= {
        Item.KERNEL_ADDR: _le32(places.kernel),
        Item.KERNEL_SIZE: _le32(len(data)),
        Item.KERNEL_DATA: data,
        Item.SETUP_ADDR: _le32(places.setup),
        Item.SETUP_SIZE: _le32(setup_size),
        Item.SETUP_DATA: bytes(setup),
    }
    return LinuxLoad("bzImage", {int(k): v for k, v in items.items()}, protocol=protocol)


def _patch_header(setup: bytearray, protocol: int, places: _Places, cmdline: bytes) -> None:
    """The fields QEMU 7.2 writes, in its order and under its protocol conditions."""
    if protocol >= 0x202:
        struct.pack_into("<I", setup, Offset.CMD_LINE_PTR, places.cmdline)
    else:
        struct.pack_into(
            "<HH",
            setup,
            Offset.OLD_CMD_LINE_MAGIC,
            OLD_CMDLINE_MAGIC,
            places.cmdline - places.setup,
        )
    mode = video_mode(cmdline)
    if mode is not None:
        struct.pack_into("<H", setup, Offset.VID_MODE, mode)
    if protocol >= 0x200:
        setup[Offset.TYPE_OF_LOADER] = LOADER_TYPE_QEMU
    if protocol >= 0x201:
        setup[Offset.LOADFLAGS] |= CAN_USE_HEAP
        heap_end = (places.cmdline - places.setup - 0x200) & 0xFFFF
        struct.pack_into("<H", setup, Offset.HEAP_END_PTR, heap_end)


def _place_initrd(initrd: bytes, limit: int, kernel_end: int) -> int:
    """QEMU's rule (refused when size >= initrd_max), then page-aligned below the limit;
    also refused where it would land on the loaded kernel."""
    if len(initrd) >= limit:
        raise KernelError(
            f"--initrd: {len(initrd)} bytes do not fit in RAM (the initrd "
            f"must end below {limit:#x})"
        )
    address = (limit - len(initrd)) & ~0xFFF
    if address < kernel_end:
        raise KernelError(
            f"--initrd: {len(initrd)} bytes do not fit in RAM beside the kernel "
            f"(it ends at {kernel_end:#x}, the initrd would start at "
            f"{address:#x})"
        )
    return address


def _initrd_items(address: int, initrd: bytes) -> dict[Item, bytes]:
    return {
        Item.INITRD_ADDR: _le32(address),
        Item.INITRD_SIZE: _le32(len(initrd)),
        Item.INITRD_DATA: initrd,
    }


# --- ELF with a PVH note -------------------------------------------------------------------
@dataclass(frozen=True)
class _Program:
    type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int


def _programs(elf: bytes) -> list[_Program]:
    """Program headers of a little-endian ELF32 or ELF64 file."""
    if len(elf) < 0x40 or elf[5] != 1 or elf[4] not in (1, 2):
        raise KernelError("not a Linux kernel: an ELF file, but not little-endian 32/64-bit")
    is64 = elf[4] == 2
    machine = _u16(elf, 18)
    if machine not in (EM_386, EM_X86_64):
        raise KernelError(f"not an x86 kernel: ELF machine {machine}")
    if is64:
        flags, phoff, phentsize, phnum = (
            _u32(elf, 48),
            *struct.unpack_from("<Q", elf, 32),
            _u16(elf, 54),
            _u16(elf, 56),
        )
        layout_ = "<IIQQQQQQ"
    else:
        flags, phoff, phentsize, phnum = _u32(elf, 36), _u32(elf, 28), _u16(elf, 42), _u16(elf, 44)
        layout_ = "<IIIIIIII"
    if flags & ELF_UNSUPPORTED_FLAGS:
        raise KernelError(f"ELF flags {flags:#x} are not supported for a PVH boot (as QEMU)")
    size = struct.calcsize(layout_)
    if phentsize < size or phoff + phnum * phentsize > len(elf):
        raise KernelError("a broken ELF file: its program headers lie outside it")
    programs = []
    for index in range(phnum):
        fields = struct.unpack_from(layout_, elf, phoff + index * phentsize)
        if is64:
            kind, _, offset, _, paddr, filesz, memsz, _ = fields
        else:
            kind, offset, _, paddr, filesz, memsz, _, _ = fields
        if offset + filesz > len(elf) or filesz > memsz:
            raise KernelError(f"a broken ELF file: program header {index} lies outside it")
        programs.append(_Program(kind, offset, paddr, filesz, memsz))
    return programs


def pvh_entry(elf: bytes) -> int | None:
    """The 32-bit entry point of the Xen PVH note (``XEN_ELFNOTE_PHYS32_ENTRY``), if any:
    as QEMU's ELF loader, the first note of that type, whatever its owner's name."""
    for program in _programs(elf):
        if program.type != PT_NOTE:
            continue
        notes = elf[program.offset : program.offset + program.filesz]
        position = 0
        while position + 12 <= len(notes):
            namesz, descsz, kind = struct.unpack_from("<III", notes, position)
            name_at = position + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if kind == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
                return int.from_bytes(notes[desc_at : desc_at + descsz], "little")
            position = desc_at + (descsz + 3) // 4 * 4
    return None


def _load_pvh(kernel: bytes, cmdline: bytes, initrd: bytes | None, below_4g: int) -> LinuxLoad:
    entry = pvh_entry(kernel)
    if entry is None:
        raise KernelError(
            "not a Linux kernel for a PVH boot: an ELF file without the Xen "
            "PVH note (XEN_ELFNOTE_PHYS32_ENTRY)"
        )
    if not 0 < entry < 1 << 32:
        raise KernelError(f"the PVH entry point {entry:#x} is not a 32-bit address")
    if len(cmdline) >= layout.PVH_CMDLINE_MAX:
        raise KernelError(
            f"--append: {len(cmdline)} bytes of command line, room for {layout.PVH_CMDLINE_MAX - 1}"
        )
    loads = [p for p in _programs(kernel) if p.type == PT_LOAD and p.memsz]
    if not loads:
        raise KernelError("an ELF file with nothing to load")
    low = min(p.paddr for p in loads)
    high = max(p.paddr + p.memsz for p in loads)
    if low < layout.HIGH_RAM_START or high > below_4g - layout.Q35_ACPI_DATA_SIZE:
        raise KernelError(
            f"the kernel ({low:#x}-{high:#x}) does not fit in "
            f"{below_4g >> 20} MiB of RAM above 1 MiB"
        )
    segments = tuple(
        Segment(p.paddr, kernel[p.offset : p.offset + p.filesz] + bytes(p.memsz - p.filesz))
        for p in loads
    )
    header = kernel[:QEMU_HEADER_SIZE].ljust(QEMU_HEADER_SIZE, b"\0")
    items: dict[Item, bytes] = {
        Item.KERNEL_ENTRY: _le32(entry),
        Item.KERNEL_ADDR: _le32(low),
        Item.KERNEL_SIZE: _le32(high - low),
        Item.CMDLINE_SIZE: _le32(len(cmdline) + 1),
        Item.CMDLINE_DATA: cmdline + b"\0",
        Item.SETUP_SIZE: _le32(QEMU_HEADER_SIZE),
        Item.SETUP_DATA: header,
    }
    if initrd is not None:
        limit = below_4g - layout.Q35_ACPI_DATA_SIZE - 1
        items |= _initrd_items(_place_initrd(initrd, limit, high), initrd)
    return LinuxLoad("pvh", {int(k): v for k, v in items.items()}, segments)


# --- the vmlinux inside a bzImage ------------------------------------------------------------
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
PAYLOAD_OFFSET, PAYLOAD_LENGTH = 0x248, 0x24C


def bzimage_payload(kernel: bytes) -> bytes:
    """The compressed vmlinux a bzImage carries (protocol 2.08+: ``payload_offset``,
    ``payload_length``), without the 4-byte decompressed size the kernel build appends."""
    if not is_bzimage(kernel) or _u16(kernel, Offset.VERSION) < 0x208:
        raise KernelError("not a bzImage of boot protocol 2.08 or later: no payload fields")
    start = ((kernel[Offset.SETUP_SECTS] or 4) + 1) * SECTOR + _u32(kernel, PAYLOAD_OFFSET)
    payload = kernel[start : start + _u32(kernel, PAYLOAD_LENGTH)]
    if len(payload) < 8:
        raise KernelError("the bzImage's payload lies outside the file")
    return payload[:-4]


def decompressed_size(kernel: bytes) -> int:
    """What the kernel build appended to the payload: the vmlinux's size."""
    start = ((kernel[Offset.SETUP_SECTS] or 4) + 1) * SECTOR + _u32(kernel, PAYLOAD_OFFSET)
    end = start + _u32(kernel, PAYLOAD_LENGTH)
    return _u32(kernel, end - 4)
