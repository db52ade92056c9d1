"""Synthetic Linux kernels for the loader's tests: a bzImage setup header of any boot
protocol, and an ELF with or without a Xen PVH note, built field by field from
Documentation/x86/boot.rst and the ELF specification (not from pcihole's loader)."""

from __future__ import annotations

import struct

SETUP_SECTS, VID_MODE, BOOT_FLAG = 0x1F1, 0x1FA, 0x1FE
HEADER, VERSION, LOADFLAGS = 0x202, 0x206, 0x211
INITRD_ADDR_MAX, XLOADFLAGS, CMDLINE_SIZE = 0x22C, 0x236, 0x238
PAYLOAD_OFFSET, PAYLOAD_LENGTH = 0x248, 0x24C


def bzimage(
    *,
    protocol: int = 0x20F,
    setup_sects: int = 4,
    loadflags: int = 0x01,
    xloadflags: int = 0x7F,
    initrd_addr_max: int = 0x7FFFFFFF,
    cmdline_size: int = 2047,
    kernel_size: int = 0x3000,
    payload: bytes = b"",
) -> bytes:
    """A bzImage: a boot sector and setup of ``setup_sects`` sectors (4 when 0), then
    ``kernel_size`` bytes of protected-mode code (a pattern, ``payload`` at its start
    followed by its 4-byte size, as the kernel build appends it)."""
    sectors = setup_sects or 4
    setup = bytearray(bytes(range(256)) * ((sectors + 1) * 2))  # recognisable filler
    struct.pack_into("<B", setup, SETUP_SECTS, setup_sects)
    struct.pack_into("<H", setup, VID_MODE, 0xFFFF)
    struct.pack_into("<H", setup, BOOT_FLAG, 0xAA55)
    setup[HEADER : HEADER + 4] = b"HdrS"
    struct.pack_into("<H", setup, VERSION, protocol)
    setup[0x210] = 0  # type_of_loader: none yet
    setup[LOADFLAGS] = loadflags
    struct.pack_into("<IIII", setup, 0x218, 0, 0, 0, 0)  # ramdisk, bootsect_kludge
    struct.pack_into("<HHI", setup, 0x224, 0, 0, 0)  # heap_end_ptr, pad, cmd_line_ptr
    struct.pack_into("<I", setup, INITRD_ADDR_MAX, initrd_addr_max)
    struct.pack_into("<H", setup, XLOADFLAGS, xloadflags)
    struct.pack_into("<I", setup, CMDLINE_SIZE, cmdline_size)
    body = bytearray((index * 7 + 3) & 0xFF for index in range(kernel_size))
    if payload:
        packed = payload + struct.pack("<I", 0x1234_5678)
        body[0x40 : 0x40 + len(packed)] = packed
        struct.pack_into("<II", setup, PAYLOAD_OFFSET, 0x40, len(packed))
    return bytes(setup) + bytes(body)


XEN_PHYS32_ENTRY = 18


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    """One ELF note: sizes, type, then name and descriptor each padded to 4 bytes."""

    def pad(data: bytes) -> bytes:
        return data + bytes(-len(data) % 4)

    return struct.pack("<III", len(name), len(desc), kind) + pad(name) + pad(desc)


def pvh_elf(
    *,
    entry: int | None = 0x100_0040,
    segments: tuple[tuple[int, bytes, int], ...] = (
        (0x100_0000, bytes(range(256)) * 32, 0x2000),
        (0x120_0000, b"data" * 512, 0x5000),
    ),
    is64: bool = True,
    size: int = 0x6000,
) -> bytes:
    """An x86 ELF executable: PT_LOAD ``segments`` as (paddr, file bytes, memsz), a
    PT_NOTE holding other Xen notes and, unless ``entry`` is None, the PVH entry note.
    Its file is at least ``size`` bytes (QEMU serves the first 8 KiB as "setup")."""
    notes = note(b"Xen\0", 6, b"linux\0") + note(b"GNU\0", 3, b"\xff" * 20)
    if entry is not None:
        desc = struct.pack("<Q" if is64 else "<I", entry)
        notes += note(b"Xen\0", XEN_PHYS32_ENTRY, desc)
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    count = len(segments) + 1
    offset = 0x1000
    body = bytearray()
    headers = []
    for paddr, data, memsz in segments:
        headers.append((1, offset + len(body), paddr, len(data), memsz))
        body += data + bytes(-len(data) % 16)
    headers.append((4, offset + len(body), 0, len(notes), len(notes)))
    body += notes
    image = bytearray(max(size, offset + len(body)))
    image[offset : offset + len(body)] = body
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + bytes(9)
    if is64:
        struct.pack_into(
            "<16sHHIQQQIHHHHHH",
            image,
            0,
            ident,
            2,
            62,
            1,
            0x100_0000,
            ehsize,
            0,
            0,
            ehsize,
            phentsize,
            count,
            0,
            0,
            0,
        )
    else:
        struct.pack_into(
            "<16sHHIIIIIHHHHHH",
            image,
            0,
            ident,
            2,
            3,
            1,
            0x100_0000,
            ehsize,
            0,
            0,
            ehsize,
            phentsize,
            count,
            0,
            0,
            0,
        )
    for index, (kind, file_offset, paddr, filesz, memsz) in enumerate(headers):
        at = ehsize + index * phentsize
        flags, align = (5, 4) if kind == 4 else (7, 16)
        if is64:
            struct.pack_into(
                "<IIQQQQQQ", image, at, kind, flags, file_offset, paddr, paddr, filesz, memsz, align
            )
        else:
            struct.pack_into(
                "<IIIIIIII", image, at, kind, file_offset, paddr, paddr, filesz, memsz, flags, align
            )
    return bytes(image)
