"""The kernel loader (pcihole.arch.x86.linux) on synthetic kernels: where QEMU 7.2's
x86_load_linux puts each part for each boot protocol, the setup-header fields it patches,
the initrd placement, and what is refused. Expected values come from boot.rst and QEMU's
source (and, for the initrd address, from a running QEMU: 0x1ffd6000 at 512 MiB)."""

from __future__ import annotations

import struct

import pytest

from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.arch.x86.linux import (
    Item,
    KernelError,
    bzimage_payload,
    decompressed_size,
    load_linux,
    pvh_entry,
)
from pcihole.devices.fw_cfg import BootRom, FwCfg
from pcihole.guest.firmware import sign_option_rom
from tests.linux_images import bzimage, pvh_elf

MiB = 1 << 20
RAM = 512 * MiB


def u32(data: bytes) -> int:
    return int(struct.unpack("<I", data)[0])


def field16(setup: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", setup, offset)[0])


def field32(setup: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", setup, offset)[0])


def test_modern_bzimage_items_and_patched_header() -> None:
    kernel = bzimage(protocol=0x20F, setup_sects=4)
    load = load_linux(kernel, cmdline=b"console=ttyS0", below_4g=RAM)
    items = load.items
    setup_size = 5 * 512
    assert load.kind == "bzImage" and load.protocol == 0x20F and load.segments == ()
    assert u32(items[Item.SETUP_ADDR]) == 0x10000 and u32(items[Item.SETUP_SIZE]) == setup_size
    assert u32(items[Item.KERNEL_ADDR]) == 0x100000
    assert items[Item.KERNEL_DATA] == kernel[setup_size:]
    assert u32(items[Item.KERNEL_SIZE]) == len(kernel) - setup_size
    assert u32(items[Item.CMDLINE_ADDR]) == 0x20000
    assert items[Item.CMDLINE_DATA] == b"console=ttyS0\0" and u32(items[Item.CMDLINE_SIZE]) == 14
    setup = items[Item.SETUP_DATA]
    assert setup[0x210] == 0xB0  # type_of_loader
    assert setup[0x211] == 0x81  # LOADED_HIGH kept, CAN_USE_HEAP set
    assert field16(setup, 0x224) == 0xFE00  # heap_end_ptr: cmdline - setup - 0x200
    assert field32(setup, 0x228) == 0x20000  # cmd_line_ptr
    assert field16(setup, 0x1FA) == 0xFFFF  # no vga=: vid_mode untouched
    patched = {0x210, 0x211, 0x224, 0x225, 0x228, 0x229, 0x22A, 0x22B}
    assert [i for i in range(setup_size) if setup[i] != kernel[i] and i not in patched] == []
    assert Item.INITRD_DATA not in items and Item.KERNEL_ENTRY not in items


def test_setup_sects_zero_means_four() -> None:
    load = load_linux(bzimage(setup_sects=0), below_4g=RAM)
    assert u32(load.items[Item.SETUP_SIZE]) == 5 * 512


@pytest.mark.parametrize(
    ("protocol", "xloadflags", "addr_max", "expected"),
    [
        (0x20F, 0x02, 0x7FFFFFFF, 0x1FFD6000),  # above 4G allowed: RAM top - ACPI data
        (0x20B, 0x02, 0x0FFFFFFF, 0x0FFFE000),  # before 2.12 xloadflags do not count
        (0x20F, 0x00, 0x0FFFFFFF, 0x0FFFE000),  # initrd_addr_max
        (0x202, 0x00, 0x0FFFFFFF, 0x1FFD6000),  # before 2.03: 0x37ffffff, over the RAM
    ],
)
def test_initrd_placed_below_the_limit(
    protocol: int, xloadflags: int, addr_max: int, expected: int
) -> None:
    initrd = bytes(range(200)) * 25  # 5000 bytes
    kernel = bzimage(protocol=protocol, xloadflags=xloadflags, initrd_addr_max=addr_max)
    load = load_linux(kernel, initrd=initrd, below_4g=RAM)
    assert u32(load.items[Item.INITRD_ADDR]) == expected
    assert u32(load.items[Item.INITRD_SIZE]) == 5000 and load.items[Item.INITRD_DATA] == initrd
    setup = load.items[Item.SETUP_DATA]
    assert (field32(setup, 0x218), field32(setup, 0x21C)) == (expected, 5000)


def test_old_protocol_places_setup_low() -> None:
    cmdline = b"root=/dev/sda1"
    load = load_linux(bzimage(protocol=0x201), cmdline=cmdline, below_4g=RAM)
    rounded = (len(cmdline) + 16) & ~15
    cmdline_at = 0x9A000 - rounded
    setup = load.items[Item.SETUP_DATA]
    assert u32(load.items[Item.SETUP_ADDR]) == 0x90000
    assert u32(load.items[Item.KERNEL_ADDR]) == 0x100000
    assert u32(load.items[Item.CMDLINE_ADDR]) == cmdline_at
    assert (field16(setup, 0x20), field16(setup, 0x22)) == (0xA33F, cmdline_at - 0x90000)
    assert field16(setup, 0x224) == cmdline_at - 0x90000 - 0x200
    assert field32(setup, 0x228) == field32(bzimage(protocol=0x201), 0x228)  # not written


def test_zimage_not_loaded_high_and_no_heap_before_2_01() -> None:
    kernel = bzimage(protocol=0x200, loadflags=0)
    load = load_linux(kernel, below_4g=RAM)
    setup = load.items[Item.SETUP_DATA]
    assert u32(load.items[Item.KERNEL_ADDR]) == 0x10000
    assert setup[0x210] == 0xB0 and setup[0x211] == 0
    assert field16(setup, 0x224) == field16(kernel, 0x224)


@pytest.mark.parametrize(
    ("cmdline", "mode"),
    [
        (b"vga=normal", 0xFFFF),
        (b"quiet vga=ext", 0xFFFE),
        (b"vga=ask", 0xFFFD),
        (b"vga=0x31a console=ttyS0", 0x31A),
        (b"vga=791", 791),
        (b"vga=017", 0o17),
    ],
)
def test_vga_sets_vid_mode(cmdline: bytes, mode: int) -> None:
    load = load_linux(bzimage(), cmdline=cmdline, below_4g=RAM)
    assert field16(load.items[Item.SETUP_DATA], 0x1FA) == mode


@pytest.mark.parametrize("cmdline", [b"vga=12x", b"vga=", b"vga=mode"])
def test_invalid_vga_refused(cmdline: bytes) -> None:
    with pytest.raises(KernelError, match="vga="):
        load_linux(bzimage(), cmdline=cmdline, below_4g=RAM)


def test_command_line_limit_is_the_headers() -> None:
    load_linux(bzimage(cmdline_size=100), cmdline=b"x" * 100, below_4g=RAM)
    with pytest.raises(KernelError, match=r"--append: 101 bytes.*at most 100"):
        load_linux(bzimage(cmdline_size=100), cmdline=b"x" * 101, below_4g=RAM)
    with pytest.raises(KernelError, match="at most 255"):  # before 2.06: 255
        load_linux(bzimage(protocol=0x205, cmdline_size=4096), cmdline=b"x" * 256, below_4g=RAM)


def test_initrd_that_does_not_fit_refused() -> None:
    with pytest.raises(KernelError, match=r"--initrd: .* do not fit in RAM"):
        load_linux(bzimage(), initrd=bytes(64 * MiB), below_4g=64 * MiB)
    with pytest.raises(KernelError, match="beside the kernel"):
        load_linux(bzimage(), initrd=bytes(0x300000), below_4g=4 * MiB)
    with pytest.raises(KernelError, match="too old to load a ram disk"):
        load_linux(bzimage(protocol=0x1FF), initrd=b"x", below_4g=RAM)


def test_not_a_kernel_refused() -> None:
    for data in (b"hello world\n" * 1000, b"", bzimage()[:600]):
        with pytest.raises(KernelError, match="not a Linux kernel"):
            load_linux(data, below_4g=RAM)
    short = bytearray(bzimage(kernel_size=0x1000))
    short[0x1F1] = 200  # setup longer than the file
    with pytest.raises(KernelError, match="invalid kernel header"):
        load_linux(bytes(short), below_4g=RAM)
    with pytest.raises(KernelError, match="without the Xen PVH note"):
        load_linux(pvh_elf(entry=None), below_4g=RAM)


@pytest.mark.parametrize("is64", [True, False])
def test_pvh_elf_items_and_segments(is64: bool) -> None:
    elf = pvh_elf(is64=is64)
    initrd = b"initrd" * 100
    load = load_linux(elf, cmdline=b"console=ttyS0", initrd=initrd, below_4g=RAM)
    items = load.items
    assert load.kind == "pvh" and pvh_entry(elf) == 0x100_0040
    assert u32(items[Item.KERNEL_ENTRY]) == 0x100_0040
    assert u32(items[Item.KERNEL_ADDR]) == 0x100_0000
    assert u32(items[Item.KERNEL_SIZE]) == 0x120_5000 - 0x100_0000  # lowest to highest byte
    assert items[Item.CMDLINE_DATA] == b"console=ttyS0\0" and Item.CMDLINE_ADDR not in items
    assert u32(items[Item.SETUP_SIZE]) == 8192 and items[Item.SETUP_DATA] == elf[:8192]
    assert u32(items[Item.INITRD_ADDR]) == (RAM - 0x28000 - 1 - len(initrd)) & ~0xFFF
    first, second = load.segments
    assert (first.address, second.address) == (0x100_0000, 0x120_0000)
    assert first.data == bytes(range(256)) * 32  # file bytes fill it: no bss
    assert second.data == b"data" * 512 + bytes(0x5000 - 2048)  # bss zeroed


def test_pvh_kernel_must_fit_in_ram() -> None:
    with pytest.raises(KernelError, match="does not fit"):
        load_linux(pvh_elf(), below_4g=16 * MiB)


def test_payload_of_a_bzimage() -> None:
    kernel = bzimage(payload=b"\x02\x21\x4c\x18compressed")
    assert bzimage_payload(kernel) == b"\x02\x21\x4c\x18compressed"
    assert decompressed_size(kernel) == 0x1234_5678


INTEL = VcpuIdentity("GenuineIntel", 39)


def test_fw_cfg_serves_kernel_items_rom_and_bootorder() -> None:
    load = load_linux(bzimage(), cmdline=b"quiet", below_4g=RAM)
    rom = BootRom("linuxboot_dma.bin", b"\x55\xaa\x01" + bytes(509))
    config = FwCfg.q35(ram=Q35Ram.for_vcpu(RAM, INTEL), vcpu=INTEL, kernel=load.items, boot_rom=rom)
    items = config.items()
    files = {entry.name: entry.select for entry in config.directory()}
    assert items[files["bootorder"]] == b"/rom@genroms/linuxboot_dma.bin\0"  # as QEMU's
    assert items[files["genroms/linuxboot_dma.bin"]] == rom.image
    for selector, data in load.items.items():
        assert items[selector] == data
    plain = FwCfg.q35(ram=Q35Ram.for_vcpu(RAM, INTEL), vcpu=INTEL).items()
    assert Item.KERNEL_DATA not in plain and plain[0x21] == b""  # bootorder empty


def test_option_rom_signed() -> None:
    image = sign_option_rom(b"\x55\xaa\x00\xcb" + bytes(600))
    assert len(image) == 1024 and image[2] == 2 and sum(image) % 256 == 0
