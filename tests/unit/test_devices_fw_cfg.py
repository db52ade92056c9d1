"""fw_cfg as QEMU 7.2 q35 serves it: ports, file directory, DMA, and QEMU itself as judge."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pcihole.acpi.q35 import Q35Acpi, q35_acpi_files
from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.devices.fw_cfg import (
    ACPI_FILES,
    DMA_ACCESS,
    ENTRY_MASK,
    FILE_SLOTS,
    QEMU_FILES_LEFT_OUT,
    DmaControl,
    FwCfg,
    FwCfgDevice,
    FwCfgError,
    Selector,
)
from pcihole.memory.access import FlatMemory
from tests.qemu import Qemu, fw_cfg_directory, fw_cfg_item, qemu_missing_reason, qemu_vcpu

MiB = 1 << 20
DESCRIPTOR = 0x1000
BUFFER = 0x2000

E820_128M = bytes.fromhex(
    "00c0fffe00000000 0040000000000000 02000000"  # reserved: KVM's pages
    " 0000000000000000 0000000800000000 01000000"  # RAM: 128 MiB at 0
)


INTEL = VcpuIdentity("GenuineIntel", 39)
AMD = VcpuIdentity("AuthenticAMD", 48)


def q35(ram_size: int, vcpu: VcpuIdentity = INTEL, **options: Any) -> FwCfg:
    """``FwCfg.q35`` for ``ram_size`` bytes of RAM laid out for ``vcpu``."""
    return FwCfg.q35(ram=Q35Ram.for_vcpu(ram_size, vcpu), vcpu=vcpu, **options)


class FakeMemory(FlatMemory):
    """``size`` bytes of guest memory at ``base`` (ValueError outside them, as GuestRam),
    filled with 0xaa so that untouched bytes show, and a log of every write."""

    def __init__(self, base: int = 0, size: int = 0x10000) -> None:
        super().__init__(size, base)
        self.data[:] = b"\xaa" * size
        self.writes: list[tuple[int, int]] = []

    def write(self, address: int, data: bytes) -> None:
        super().write(address, data)
        self.writes.append((address, len(data)))

    def at(self, address: int, length: int) -> bytes:
        return self.read(address, length)


def q35_device(memory: FakeMemory | None = None) -> tuple[FwCfgDevice, FakeMemory]:
    memory = memory or FakeMemory()
    return FwCfgDevice(q35(128 * MiB), memory), memory


def read_port(device: FwCfgDevice, selector: int, count: int) -> bytes:
    device.io.write(0, 2, selector)
    return bytes(device.io.read(1, 1) for _ in range(count))


def dma(
    device: FwCfgDevice, memory: FakeMemory, control: int, length: int, address: int = BUFFER
) -> int:
    """Run one transfer as SeaBIOS does (outl of the byte-swapped low half at 0x518)."""
    memory.write(DESCRIPTOR, DMA_ACCESS.pack(control, length, address))
    swapped = int.from_bytes(DESCRIPTOR.to_bytes(4, "big"), "little")
    device.dma.write(4, 4, swapped)
    return int.from_bytes(memory.at(DESCRIPTOR, 4), "big")


def select(selector: int) -> int:
    return selector << 16 | DmaControl.SELECT


def test_signature_and_id_through_ports() -> None:
    device, _ = q35_device()
    assert bytes(device.io.read(1, 1) for _ in range(4)) == b"QEMU"  # selected at reset
    assert read_port(device, Selector.SIGNATURE, 4) == b"QEMU"
    assert read_port(device, Selector.ID, 4) == bytes.fromhex("03000000")  # ports and DMA
    # QEMU's 2-byte region answers data reads at 0x510 too.
    device.io.write(0, 2, Selector.SIGNATURE)
    assert [device.io.read(0, 1), device.io.read(1, 1)] == [ord("Q"), ord("E")]


def test_reads_past_the_end_and_of_unknown_items_are_zero() -> None:
    device, _ = q35_device()
    # etc/boot-fail-wait: QEMU's default reboot-timeout -1, never retry.
    assert read_port(device, 0x22, 7) == bytes.fromhex("ffffffff000000")
    assert read_port(device, 0x1234, 3) == bytes(3)
    assert read_port(device, 0x3F, 3) == bytes(3)  # a free file slot


def test_odd_sized_accesses_as_qemu() -> None:
    device, _ = q35_device()
    device.io.write(0, 2, Selector.SIGNATURE)
    assert device.io.read(0, 2) == 0  # QEMU refuses wide data reads: 0, nothing consumed
    device.io.write(0, 1, 0x01)  # byte writes were data writes, removed in QEMU 2.4
    assert device.io.read(1, 1) == ord("Q")
    # Bit 14, QEMU's old write channel, is ignored when selecting.
    assert read_port(device, 0x4000 | Selector.SIGNATURE, 4) == b"QEMU"


def test_numbered_items_of_q35() -> None:
    device, _ = q35_device()
    assert read_port(device, Selector.RAM_SIZE, 8) == (128 * MiB).to_bytes(8, "little")
    assert read_port(device, Selector.NB_CPUS, 2) == b"\x01\x00"
    assert read_port(device, Selector.MAX_CPUS, 2) == b"\x01\x00"
    assert read_port(device, Selector.NUMA, 16) == bytes(16)
    assert read_port(device, Selector.IRQ0_OVERRIDE, 4) == b"\x01\x00\x00\x00"
    assert read_port(device, Selector.ACPI_TABLES, 2) == b"\x00\x00"  # count 0
    assert read_port(device, Selector.SMBIOS_ENTRIES, 2) == b"\x00\x00"  # count 0
    smp = FwCfgDevice(q35(128 * MiB, cpus=2, max_cpus=4), FakeMemory())
    assert read_port(smp, Selector.NB_CPUS, 2) == b"\x02\x00"
    assert read_port(smp, Selector.MAX_CPUS, 2) == b"\x04\x00"
    assert len(q35(128 * MiB, max_cpus=4).items()[Selector.NUMA]) == 8 * 5


def entry(size: int, selector: int, name: bytes) -> bytes:
    return size.to_bytes(4, "big") + selector.to_bytes(2, "big") + b"\0\0" + name.ljust(56, b"\0")


def test_file_directory_bytes_and_order() -> None:
    device, _ = q35_device()
    expected = (
        bytes.fromhex("00000005")
        + entry(0, 0x20, b"bios-geometry")
        + entry(0, 0x21, b"bootorder")
        + entry(4, 0x22, b"etc/boot-fail-wait")
        + entry(40, 0x23, b"etc/e820")
        + entry(6, 0x24, b"etc/system-states")
    )
    assert read_port(device, Selector.FILE_DIR, len(expected) + 4) == expected + bytes(4)
    assert read_port(device, 0x23, 40) == E820_128M
    assert read_port(device, 0x24, 6) == bytes.fromhex("800000818280")


def test_selectors_follow_name_order_bytewise() -> None:
    config = q35(128 * MiB)
    config.add_file("Zeta", b"z")  # uppercase sorts first, as strcmp does
    config.add_file("etc/a", b"a")
    names = [(f.name, f.select) for f in config.directory()]
    assert names[:3] == [("Zeta", 0x20), ("bios-geometry", 0x21), ("bootorder", 0x22)]
    assert ("etc/a", 0x23) in names
    assert config.items()[0x20] == b"z"


def test_dma_read_of_e820() -> None:
    device, memory = q35_device()
    assert dma(device, memory, select(0x23) | DmaControl.READ, 40) == 0
    assert memory.at(BUFFER, 40) == E820_128M
    assert memory.at(BUFFER + 40, 1) == b"\xaa"  # not a byte more


def test_dma_high_half_then_low_half_and_64_bit_write() -> None:
    memory = FakeMemory(base=0x1_2345_0000)
    device, _ = q35_device(memory)
    descriptor = memory.base + 0x100
    memory.write(
        descriptor,
        DMA_ACCESS.pack(select(Selector.SIGNATURE) | DmaControl.READ, 4, memory.base + 0x800),
    )
    device.dma.write(0, 4, int.from_bytes((descriptor >> 32).to_bytes(4, "big"), "little"))
    device.dma.write(4, 4, int.from_bytes((descriptor & 0xFFFFFFFF).to_bytes(4, "big"), "little"))
    assert memory.at(memory.base + 0x800, 4) == b"QEMU"
    assert memory.at(descriptor, 4) == bytes(4)
    memory.write(
        descriptor, DMA_ACCESS.pack(select(Selector.ID) | DmaControl.READ, 4, memory.base + 0x900)
    )
    device.dma.write(0, 8, int.from_bytes(descriptor.to_bytes(8, "big"), "little"))
    assert memory.at(memory.base + 0x900, 4) == bytes.fromhex("03000000")


def test_dma_register_reads_answer_signature() -> None:
    device, _ = q35_device()
    assert device.dma.read(0, 4).to_bytes(4, "little") == b"QEMU"
    assert device.dma.read(4, 4).to_bytes(4, "little") == b" CFG"
    assert device.dma.read(0, 2).to_bytes(2, "little") == b"QE"  # as QEMU's `i /h 0x514`
    assert device.dma.read(7, 1) == ord("G")


def test_dma_select_skip_then_read_and_ports_continue() -> None:
    device, memory = q35_device()
    assert dma(device, memory, select(0x23) | DmaControl.SKIP, 20, address=0) == 0
    assert memory.writes[-1] == (DESCRIPTOR, 4)  # skip touched only the control word
    assert dma(device, memory, DmaControl.READ, 8) == 0
    assert memory.at(BUFFER, 8) == E820_128M[20:28]
    assert bytes(device.io.read(1, 1) for _ in range(4)) == E820_128M[28:32]


def test_on_select_hears_every_guest_selection_with_file_names() -> None:
    heard: list[tuple[int, str | None]] = []
    memory = FakeMemory()
    device = FwCfgDevice(q35(128 * MiB), memory, on_select=lambda *a: heard.append(a))
    assert heard == []  # the reset's own choice is nobody's
    files = {entry.name: entry.select for entry in q35(128 * MiB).directory()}
    read_port(device, Selector.ID, 4)
    read_port(device, files["etc/e820"] | 0x4000, 1)  # bit 14 ignored, as for the data
    assert dma(device, memory, select(0x17) | DmaControl.READ, 4) == 0
    assert dma(device, memory, DmaControl.READ, 4) == 0  # no SELECT: nobody told
    device.reset()
    assert heard == [(Selector.ID, None), (files["etc/e820"], "etc/e820"), (0x17, None)]


def test_dma_read_past_the_end_fills_zeros() -> None:
    device, memory = q35_device()
    assert dma(device, memory, select(0x22) | DmaControl.READ, 8) == 0
    assert memory.at(BUFFER, 9) == bytes.fromhex("ffffffff00000000aa")


def test_dma_write_refused_with_error() -> None:
    device, memory = q35_device()
    memory.write(BUFFER, b"\x01\x02\x03\x04")
    assert dma(device, memory, select(0x22) | DmaControl.WRITE, 4) == DmaControl.ERROR
    assert read_port(device, 0x22, 4) == b"\xff\xff\xff\xff"  # item unchanged
    assert dma(device, memory, select(0x21) | DmaControl.WRITE, 1) == DmaControl.ERROR
    assert dma(device, memory, select(0x21) | DmaControl.WRITE, 0) == 0  # nothing to write


def test_dma_read_wins_and_no_operation_only_selects() -> None:
    device, memory = q35_device()
    both = select(Selector.SIGNATURE) | DmaControl.READ | DmaControl.WRITE
    assert dma(device, memory, both, 4) == 0
    assert memory.at(BUFFER, 4) == b"QEMU"
    assert dma(device, memory, select(Selector.ID), 4) == 0
    assert memory.at(BUFFER + 4, 1) == b"\xaa"
    assert device.io.read(1, 1) == 3


def test_dma_outside_guest_memory() -> None:
    device, memory = q35_device()
    status = dma(device, memory, select(0x23) | DmaControl.READ, 40, address=0xFFFF_0000)
    assert status == DmaControl.ERROR
    before = bytes(memory.data)
    device.dma.write(4, 4, int.from_bytes((0x8000_0000).to_bytes(4, "big"), "little"))
    assert bytes(memory.data) == before  # descriptor unreadable: nothing to report into


def test_dma_read_continuing_past_the_end_zeroes_every_byte() -> None:
    """QEMU's fw_cfg_dma_transfer: once the item is used up (or none is selected), a READ
    fills the rest of the guest buffer with zeros, in as many pieces as it takes."""
    device, memory = q35_device(FakeMemory(size=0x30000))
    assert dma(device, memory, select(0x22) | DmaControl.READ, 4) == 0  # the whole item
    assert dma(device, memory, DmaControl.READ, 6) == 0  # continues past its end
    assert memory.at(BUFFER, 7) == bytes(6) + b"\xaa"
    # A free file slot, and a fill longer than one zeroing piece (64 KiB).
    assert dma(device, memory, select(0x3F) | DmaControl.READ, 0x10001) == 0
    assert memory.at(BUFFER, 0x10002) == bytes(0x10001) + b"\xaa"
    # Half the item, then a read reaching over its end: data, then zeros.
    assert dma(device, memory, select(0x22) | DmaControl.READ, 2) == 0
    assert dma(device, memory, DmaControl.READ, 5, address=BUFFER + 0x20000) == 0
    assert memory.at(BUFFER + 0x20000, 6) == bytes.fromhex("ffff000000aa")


def test_dma_write_with_skip_is_a_write_and_fails() -> None:
    """READ, then WRITE, then SKIP: the first bit set decides. WRITE|SKIP is a write, and
    writing a read-only item (or past any end) is an error, as on QEMU."""
    device, memory = q35_device()
    assert dma(device, memory, select(0x22) | DmaControl.WRITE | DmaControl.SKIP, 4) == (
        DmaControl.ERROR
    )
    assert dma(device, memory, select(0x3F) | DmaControl.WRITE | DmaControl.SKIP, 4) == (
        DmaControl.ERROR
    )
    assert dma(device, memory, select(0x22) | DmaControl.SKIP, 2) == 0  # SKIP alone is fine
    assert bytes(device.io.read(1, 1) for _ in range(2)) == b"\xff\xff"


def test_dma_zero_fill_outside_guest_memory_fails() -> None:
    device, memory = q35_device()
    outside = memory.base + len(memory.data)
    # Nothing left of the item: all of it is a zero fill, into no memory.
    assert dma(device, memory, select(0x21) | DmaControl.READ, 16, address=outside) == (
        DmaControl.ERROR
    )
    assert dma(device, memory, select(0x3F) | DmaControl.READ, 1, address=outside) == (
        DmaControl.ERROR
    )
    # The fill running off the end of guest memory fails too.
    assert dma(device, memory, select(0x21) | DmaControl.READ, 32, address=outside - 16) == (
        DmaControl.ERROR
    )


def test_dma_reaches_arch_local_items() -> None:
    """Selectors 0x8000 and up (QEMU's FW_CFG_ARCH_LOCAL) select over DMA as over ports."""
    device, memory = q35_device()
    assert dma(device, memory, select(Selector.IRQ0_OVERRIDE) | DmaControl.READ, 4) == 0
    assert memory.at(BUFFER, 4) == b"\x01\x00\x00\x00"
    memory.write(BUFFER, b"\xaa" * 4)
    assert dma(device, memory, select(Selector.ACPI_TABLES) | DmaControl.READ, 4) == 0
    assert memory.at(BUFFER, 4) == bytes(4)  # count 0, then zeros past the end
    assert dma(device, memory, select(Selector.SMBIOS_ENTRIES) | DmaControl.READ, 2) == 0
    assert memory.at(BUFFER, 2) == bytes(2)
    # Without the arch bit the index names another item: 0x0002 is the (zero) UUID.
    memory.write(BUFFER, b"\xaa" * 4)
    assert dma(device, memory, select(Selector.IRQ0_OVERRIDE & 0x7FFF) | DmaControl.READ, 4) == 0
    assert memory.at(BUFFER, 4) == bytes(4)


def test_each_transfer_starts_from_a_cleared_address_register() -> None:
    """The register is cleared after every transfer (QEMU sets dma_addr to 0): firmware
    that writes only the low half (SeaBIOS) reaches the descriptor it names each time."""
    device, memory = q35_device()
    for descriptor, selector, expected in (
        (0x1100, Selector.SIGNATURE, b"QEMU"),
        (0x2210, Selector.ID, bytes.fromhex("03000000")),
        (0x0408, Selector.IRQ0_OVERRIDE, b"\x01\x00\x00\x00"),
    ):
        memory.write(descriptor, DMA_ACCESS.pack(select(selector) | DmaControl.READ, 4, BUFFER))
        device.dma.write(4, 4, int.from_bytes(descriptor.to_bytes(4, "big"), "little"))
        assert memory.at(descriptor, 4) == bytes(4), hex(descriptor)  # control: done
        assert memory.at(BUFFER, 4) == expected, hex(descriptor)


def test_builder_refuses_what_qemu_refuses() -> None:
    config = q35(128 * MiB)
    with pytest.raises(FwCfgError, match="already present"):
        config.add_file("bootorder", b"")
    with pytest.raises(FwCfgError, match="1-55 ASCII"):
        config.add_file("x" * 56, b"")
    with pytest.raises(FwCfgError, match="already set"):
        config.add_item(Selector.ID, b"")
    with pytest.raises(FwCfgError, match="built from the files"):
        FwCfg().add_item(Selector.FILE_DIR, b"")
    with pytest.raises(FwCfgError, match="not a numbered item"):
        config.add_item(0x20, b"")
    for index in range(FILE_SLOTS - len(config.directory())):
        config.add_file(f"opt/{index}", b"")
    with pytest.raises(FwCfgError, match="room for 32 files"):
        config.add_file("opt/one-more", b"")
    with pytest.raises(FwCfgError, match="65535 ms"):
        q35(128 * MiB, boot_fail_wait=70000)
    with pytest.raises(FwCfgError, match="inconsistent"):
        q35(128 * MiB, cpus=4, max_cpus=2)
    wait = q35(128 * MiB, boot_fail_wait=1000).items()[0x22]
    assert struct.unpack("<I", wait) == (1000,)


def test_e820_and_feature_control_follow_the_vcpu() -> None:
    """Literal bytes for both vendors (QEMU 7.2's pc_memory_init and fw_cfg.c rules)."""
    amd = q35(128 * MiB, AMD).items()
    files = {f.name: f.select for f in q35(128 * MiB, AMD).directory()}
    ht_range = bytes.fromhex("00000000fd000000 0000000003000000 02000000")
    assert amd[files["etc/e820"]] == E820_128M[:20] + ht_range + E820_128M[20:]
    amd_39 = q35(128 * MiB, VcpuIdentity("AuthenticAMD", 39))
    assert {f.name: f.size for f in amd_39.directory()}["etc/e820"] == 40
    assert "etc/msr_feature_control" not in files
    # A vCPU with VT-x is asked to enable VMXON outside SMX, locked: bits 2 and 0.
    vmx = q35(128 * MiB, VcpuIdentity("GenuineIntel", 39, vmx=True))
    selectors = {f.name: f.select for f in vmx.directory()}
    assert vmx.items()[selectors["etc/msr_feature_control"]] == bytes.fromhex("0500000000000000")
    sgx = q35(128 * MiB, VcpuIdentity("GenuineIntel", 46, sgx=True, sgx_lc=True))
    selectors = {f.name: f.select for f in sgx.directory()}
    assert sgx.items()[selectors["etc/msr_feature_control"]] == bytes.fromhex("0100060000000000")


QEMU_CPUS = {
    "host-vendor": [],
    "intel": ["-cpu", "qemu64,vendor=GenuineIntel"],
    "amd": ["-cpu", "qemu64,vendor=AuthenticAMD"],
    "amd-39-bits": ["-cpu", "qemu64,vendor=AuthenticAMD,phys-bits=39"],
    "vmx-if-the-host-has-it": ["-cpu", "qemu64,+vmx"],
}
"""QEMU's vCPU for each case: its own default (the host's vendor under KVM), then each
vendor and address width, whatever the host; pcihole's items are built for the vCPU
QEMU reports (``qemu_vcpu``), so each case holds on any host."""


@pytest.mark.parametrize(
    ("memory", "cpus", "cpu"),
    [
        ("128M", 1, "host-vendor"),
        ("3G", 2, "host-vendor"),
        ("128M", 1, "intel"),
        ("3G", 1, "amd"),
        ("128M", 1, "amd-39-bits"),
        ("128M", 1, "vmx-if-the-host-has-it"),
    ],
)
def test_same_items_as_qemu(memory: str, cpus: int, cpu: str) -> None:
    """Every item pcihole serves reads as under QEMU; its files are QEMU's minus those
    ``QEMU_FILES_LEFT_OUT`` names, the ACPI ones of QEMU's sizes (their contents are
    compared in tests/kvm/test_acpi_tables.py)."""
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    ram_size = int(memory[:-1]) << {"M": 20, "G": 30}[memory[-1]]
    with Qemu(["-smp", str(cpus), *QEMU_CPUS[cpu]], paused=True, memory=memory) as qemu:
        vcpu = qemu_vcpu(qemu)
        tables = q35_acpi_files(Q35Acpi.for_machine(256, Q35Ram.for_vcpu(ram_size, vcpu), cpus))
        ours = q35(ram_size, vcpu, cpus=cpus, acpi=tables)
        theirs = {name: size for name, (_, size) in fw_cfg_directory(qemu).items()}
        kept = {name: size for name, size in theirs.items() if name not in QEMU_FILES_LEFT_OUT}
        assert {f.name: f.size for f in ours.directory()} == kept
        assert set(theirs) - set(kept) == set(QEMU_FILES_LEFT_OUT)
        for selector, data in ours.items().items():
            if selector == Selector.FILE_DIR or selector & ENTRY_MASK >= Selector.FILE_FIRST:
                continue
            assert fw_cfg_item(qemu, selector, len(data) + 2) == data + bytes(2), hex(selector)
        selectors = {name: select for name, (select, _) in fw_cfg_directory(qemu).items()}
        for entry in ours.directory():
            if entry.name in ACPI_FILES:
                continue
            theirs_data = fw_cfg_item(qemu, selectors[entry.name], entry.size)
            assert theirs_data == ours.items()[entry.select], entry.name
