"""``pcihole boot --kernel/--initrd/--append`` against QEMU 7.2's ``-kernel/-initrd/-append``.

- Item by item: every fw_cfg item of a loaded kernel (QEMU's FW_CFG_KERNEL_* ... SETUP_*),
  ``bootorder`` and the ``genroms/`` boot ROM as a paused QEMU given the same arguments
  serves them (read over qtest, the megabytes through fw_cfg DMA), for a synthetic bzImage
  and PVH ELF and for Debian's cloud kernel when ``bash scripts/setup`` fetched it; for
  PVH also the kernel's segments in guest RAM.
- pcihole's PVH ROM on a real machine: a probe "kernel" prints what the ROM handed it
  (hvm_start_info, segments, the memory map compared with the one SeaBIOS printed).
- Debian's kernel through PVH reaches its first serial line.
- Bad inputs: one line, status 2.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from pcihole.arch.x86.cpuid_probe import run_probe
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.arch.x86.linux import Item, LinuxLoad, load_linux
from pcihole.devices.fw_cfg import BootRom, FwCfg
from pcihole.guest.build import assemble_flat
from pcihole.kvm import Kvm
from pcihole.layout import asm_symbols
from tests.linux_images import bzimage, pvh_elf
from tests.qemu import (
    Qemu,
    fw_cfg_directory,
    fw_cfg_dma_read,
    fw_cfg_item,
    qemu_memory,
    qemu_missing_reason,
    qemu_vcpu,
)
from tests.support import HANG_SECONDS, run_pcihole

MiB = 1 << 20
RAM_MIB = 512
SCRATCH = 0x1000_0000
"""Where QEMU's DMA reads land in its (idle, paused) guest RAM: above any test kernel."""
LINUXBOOT_DMA = Path("/usr/share/qemu/linuxboot_dma.bin")
BIG = 64
"""Items longer than this are read through DMA."""


def linux_dir() -> Path:
    """Where scripts/setup leaves Debian's kernel (as it computes the path)."""
    cache = os.environ.get("PCIHOLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pcihole"
    )
    return Path(cache) / "linux"


def cached(name: str) -> Path:
    path = linux_dir() / name
    if not path.is_file():
        pytest.skip(f"no {path}: run `bash scripts/setup` to fetch Debian's cloud kernel")
    return path


def need_qemu() -> None:
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    if not LINUXBOOT_DMA.is_file():
        pytest.skip(f"no {LINUXBOOT_DMA}: install qemu-system-data (bash scripts/setup)")


def kernel_file(kind: str, tmp_path: Path) -> Path:
    if kind == "debian-bzImage":
        return cached("vmlinuz")
    if kind == "debian-vmlinux":
        return cached("vmlinux")
    path = tmp_path / kind
    path.write_bytes(bzimage(kernel_size=0x20000) if kind == "bzImage" else pvh_elf())
    return path


def qemu_item(qemu: Qemu, selector: int, length: int) -> bytes:
    """``length`` bytes of an item, and 16 past its end (zeros if it ends there)."""
    if length > BIG:
        return fw_cfg_dma_read(qemu, selector, length + 16, SCRATCH)
    return fw_cfg_item(qemu, selector, length + 16)


@pytest.mark.parametrize("kind", ["bzImage", "pvh", "debian-bzImage", "debian-vmlinux"])
def test_items_as_qemu(kind: str, tmp_path: Path) -> None:
    need_qemu()
    kernel = kernel_file(kind, tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(range(251)) * 40)
    append = "console=ttyS0 vga=0x317 quiet"
    ours = load_linux(
        kernel.read_bytes(),
        cmdline=append.encode(),
        initrd=initrd.read_bytes(),
        below_4g=RAM_MIB * MiB,
    )
    with Qemu(
        paused=True, qtest=True, memory=f"{RAM_MIB}M", kernel=kernel, initrd=initrd, append=append
    ) as qemu:
        for item in Item:
            data = ours.items.get(item, b"")
            theirs = qemu_item(qemu, item, len(data) if data else 4)
            if ours.kind == "pvh" and item == Item.SETUP_DATA:
                # QEMU 7.2 serves a pointer to its own stack here (x86_load_linux's
                # header[] after return): only the length can be compared.
                assert u32(ours.items[Item.SETUP_SIZE]) == len(data) == 8192
                continue
            assert theirs == data + bytes(len(theirs) - len(data)), item.name
        _same_rom_and_bootorder(qemu, ours)
        for segment in ours.segments:
            assert qemu_memory(qemu, segment.address, len(segment.data)) == segment.data


def u32(data: bytes) -> int:
    return int(struct.unpack("<I", data)[0])


def _same_rom_and_bootorder(qemu: Qemu, ours: LinuxLoad) -> None:
    """bzImage: the same linuxboot_dma.bin and bootorder as QEMU's; PVH: QEMU's pvh.bin
    is replaced by pcihole's ROM, named the same way."""
    directory = fw_cfg_directory(qemu)
    selector, size = directory["bootorder"]
    theirs_order = fw_cfg_item(qemu, selector, size)
    name = "linuxboot_dma.bin" if ours.kind == "bzImage" else "pvh.bin"
    assert theirs_order == f"/rom@genroms/{name}\0".encode()
    rom_selector, rom_size = directory[f"genroms/{name}"]
    theirs_rom = fw_cfg_dma_read(qemu, rom_selector, rom_size, SCRATCH)
    if ours.kind == "bzImage":
        rom = BootRom(name, LINUXBOOT_DMA.read_bytes())
        vcpu = qemu_vcpu(qemu)
        ram = Q35Ram.for_vcpu(RAM_MIB * MiB, vcpu)
        config = FwCfg.q35(ram=ram, vcpu=vcpu, kernel=ours.items, boot_rom=rom)
        files = {entry.name: entry.select for entry in config.directory()}
        assert config.items()[files["bootorder"]] == theirs_order
        assert config.items()[files[f"genroms/{name}"]] == theirs_rom


# --- the PVH ROM on a real machine ---------------------------------------------------------
PROBE = Path(__file__).with_name("pvh_probe.S")
PROBE_ADDRESS = 0x100000
SEABIOS_E820 = re.compile(r"^\s*\d+: ([0-9a-f]{16}) - ([0-9a-f]{16}) = (\d+)", re.M)


def probe_kernel(tmp_path: Path) -> Path:
    flags = [f"-D{name}={value:#x}" for name, value in sorted(asm_symbols().items())]
    code = assemble_flat(PROBE, flags, base=PROBE_ADDRESS, entry="_start")
    path = tmp_path / "probe.elf"
    path.write_bytes(pvh_elf(entry=PROBE_ADDRESS, segments=((PROBE_ADDRESS, code, len(code)),)))
    return path


def test_pvh_rom_hands_over_as_the_pvh_abi_says(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is absent or not usable")
    kernel = probe_kernel(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"an initrd of forty bytes, no more, no le")
    console, stats = tmp_path / "console", tmp_path / "stats.json"
    result = run_pcihole(
        "boot",
        "--kernel",
        str(kernel),
        "--initrd",
        str(initrd),
        "--append",
        "console=ttyS0 pvh=yes",
        "--debugcon",
        str(console),
        "--stats",
        str(stats),
        "--timeout",
        str(HANG_SECONDS),
    )
    text = console.read_text(errors="replace")
    assert result.returncode == 33, (result.stderr, text[-2000:])
    _host_words_added(text, result.stderr, json.loads(stats.read_text())["notes"])
    lines = {line.split("=")[0]: line for line in text.splitlines() if line.startswith("pvh ")}
    assert lines["pvh magic"] == (
        "pvh magic=336ec578 version=00000001 cs=00000008 ds=00000010 ss=00000010"
    )
    assert lines["pvh cr0.pe.pg"] == "pvh cr0.pe.pg=00000001 if=00000000"
    assert lines["pvh modules"] == f"pvh modules=00000001 initrd={initrd.read_text()}"
    assert lines["pvh rsdp"] == "pvh rsdp=RSD PTR "
    seabios = [(int(a, 16), int(b, 16), int(t)) for a, b, t in SEABIOS_E820.findall(text)]
    ours = [
        (int(line.split()[2], 16), int(line.split()[3], 16), int(line.split()[4], 16))
        for line in text.splitlines()
        if line.startswith("pvh e820 ")
    ]
    assert seabios and ours == seabios  # the map SeaBIOS printed is the one handed over


def _host_words_added(console: str, stderr: str, notes: list[str]) -> None:
    """The guest got the user's command line plus what this host needs (judged by the
    probe guest's own answer), and the run said so on stderr and in --stats notes."""
    with Kvm() as kvm:
        leaks = run_probe(kvm)
    cmdline = next(line for line in console.splitlines() if line.startswith("pvh cmdline="))
    words = cmdline.removeprefix("pvh cmdline=").split()
    assert words[:2] == ["console=ttyS0", "pvh=yes"]
    if not leaks.any:  # CPUID obeys the monitor: nothing added, nothing said
        assert words == ["console=ttyS0", "pvh=yes"] and "note:" not in stderr
        return
    cleared = next(word for word in words if word.startswith("clearcpuid=")).split("=")[1]
    for name in leaks.leaked:
        assert ("noxsave" in words) if name == "xsave" else (name in cleared.split(","))
    note = next(line for line in stderr.splitlines() if line.startswith("pcihole boot: note: "))
    assert "clearcpuid=" in note and note.removeprefix("pcihole boot: note: ") in notes


def test_pvh_linux_reaches_its_first_serial_line(tmp_path: Path) -> None:
    """Debian's vmlinux through pcihole's PVH ROM prints ``Linux version`` (~16-45 s
    here); the run stops there."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is absent or not usable")
    kernel = cached("vmlinux")
    serial = tmp_path / "serial"
    result = run_pcihole(
        "boot",
        "--ram-mib",
        "512",
        "--kernel",
        str(kernel),
        "--append",
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 noxsave nokaslr",
        "--serial",
        str(serial),
        "--debugcon",
        str(tmp_path / "debugcon"),
        "--until",
        "Linux version",
        "--timeout",
        str(HANG_SECONDS),
    )
    assert result.returncode == 0, (result.stderr, serial.read_bytes()[-2000:])
    assert "the serial port printed 'Linux version'" in result.stderr
    assert b"Linux version" in serial.read_bytes()


# --- bad input -----------------------------------------------------------------------------
def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage(cmdline_size=100))
    text = tmp_path / "notes.txt"
    text.write_text("not a kernel\n" * 200)
    elf = tmp_path / "plain.elf"
    elf.write_bytes(pvh_elf(entry=None))
    big = tmp_path / "big.initrd"
    with big.open("wb") as handle:
        handle.truncate(64 * MiB)
    return {
        "no such kernel": (["--kernel", str(tmp_path / "missing")], "No such file"),
        "no such initrd": (
            ["--kernel", str(kernel), "--initrd", str(tmp_path / "none")],
            "--initrd",
        ),
        "not a kernel": (["--kernel", str(text)], "not a Linux kernel"),
        "ELF without PVH note": (["--kernel", str(elf)], "PVH note"),
        "initrd too big": (
            ["--ram-mib", "64", "--kernel", str(kernel), "--initrd", str(big)],
            "do not fit in RAM",
        ),
        "append too long": (["--kernel", str(kernel), "--append", "x" * 101], "at most 100"),
        "append without kernel": (["--append", "quiet"], "needs --kernel"),
    }


def test_bad_inputs_one_line_status_2(tmp_path: Path) -> None:
    for name, (args, words) in bad_inputs(tmp_path).items():
        result = run_pcihole("boot", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (name, result.stderr)
        assert words in lines[0] and "Traceback" not in result.stderr, (name, lines)
