"""The e820 map QEMU 7.2 gives a q35 guest: order, split at the q35 low-memory limit, the
vCPU's vendor and address bits, bytes."""

from __future__ import annotations

import pytest

from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.arch.x86.e820 import (
    AddressBitsError,
    E820Entry,
    E820Error,
    E820Type,
    Q35Ram,
    RamLayoutError,
    pack,
    unpack,
)

MiB = 1 << 20
GiB = 1 << 30
INTEL = VcpuIdentity("GenuineIntel", 39)
AMD = VcpuIdentity("AuthenticAMD", 48)
AMD_39_BITS = VcpuIdentity("AuthenticAMD", 39)

# Read from QEMU 7.2 (-accel kvm -machine q35 -m 128M): fw_cfg file etc/e820 on an AMD
# host (the HyperTransport entry second: pc_memory_init adds it before RAM, after KVM's
# pages), and with -cpu qemu64,vendor=GenuineIntel or -cpu qemu64,phys-bits=39 (none).
KVM_PAGES = "00c0fffe00000000 0040000000000000 02000000"
HT_RANGE = "00000000fd000000 0000000003000000 02000000"
RAM_128M = "0000000000000000 0000000800000000 01000000"


def e820_bytes(size: int, vcpu: VcpuIdentity) -> bytes:
    return pack(Q35Ram.for_vcpu(size, vcpu).e820())


def test_small_guest_bytes_as_qemu_gives_them_for_each_vendor() -> None:
    assert e820_bytes(128 * MiB, INTEL) == bytes.fromhex(KVM_PAGES + RAM_128M)
    assert e820_bytes(128 * MiB, AMD) == bytes.fromhex(KVM_PAGES + HT_RANGE + RAM_128M)
    # QEMU advertises the range only to AMD vCPUs that can address it (40 bits or more).
    assert e820_bytes(128 * MiB, AMD_39_BITS) == bytes.fromhex(KVM_PAGES + RAM_128M)
    assert e820_bytes(128 * MiB, VcpuIdentity("AuthenticAMD", 40)) == e820_bytes(128 * MiB, AMD)
    assert e820_bytes(128 * MiB, VcpuIdentity("HygonGenuine", 48)) == e820_bytes(128 * MiB, INTEL)


@pytest.mark.parametrize(
    ("size", "below", "above"),
    [
        (0xB0000000 - 64 * 1024, 0xB0000000 - 64 * 1024, 0),
        (0xB0000000 - 4096, 0xB0000000 - 4096, 0),
        # From 2.75 GiB on, QEMU keeps 2 GiB low, not 2.75: 1 GiB alignment above 4 GiB.
        (0xB0000000, 2 * GiB, 0x30000000),
        (0xB0000000 + 64 * 1024, 2 * GiB, 0x30010000),
        (3 * GiB, 2 * GiB, 1 * GiB),
    ],
)
def test_split_at_q35_low_memory_limit(size: int, below: int, above: int) -> None:
    for vcpu in (INTEL, AMD):
        ram = Q35Ram.for_vcpu(size, vcpu)
        assert (ram.below_4g, ram.above_4g, ram.above_4g_start) == (below, above, 4 * GiB)


def test_high_ram_continues_at_4_gib() -> None:
    assert Q35Ram.for_vcpu(3 * GiB, INTEL).e820() == [
        E820Entry(0xFEFFC000, 0x4000, E820Type.RESERVED),
        E820Entry(0, 2 * GiB, E820Type.RAM),
        E820Entry(4 * GiB, 1 * GiB, E820Type.RAM),
    ]
    assert Q35Ram.for_vcpu(3 * GiB, AMD).banks == [(0, 2 * GiB), (4 * GiB, 1 * GiB)]


def test_amd_ram_moves_past_the_hypertransport_range_when_it_would_reach_it() -> None:
    # QEMU's rule: RAM above 4 GiB, rounded up to 1 GiB, plus the 32 GiB 64-bit PCI
    # window must end below 0xfd00000000 (1012 GiB), or RAM above 4 GiB starts at 1 TiB.
    fits = 2 * GiB + (1012 - 4 - 32) * GiB  # the window's last byte just below the range
    assert Q35Ram.for_vcpu(fits, AMD).above_4g_start == 4 * GiB
    moved = Q35Ram.for_vcpu(fits + 4096, AMD)
    assert moved.above_4g_start == 1 << 40
    assert moved.e820()[1:] == [
        E820Entry(0xFD00000000, 12 * GiB, E820Type.RESERVED),
        E820Entry(0, 2 * GiB, E820Type.RAM),
        E820Entry(1 << 40, fits + 4096 - 2 * GiB, E820Type.RAM),
    ]
    assert Q35Ram.for_vcpu(fits + 4096, VcpuIdentity("GenuineIntel", 46)).above_4g_start == (
        4 * GiB
    )


def test_physical_address_bits_must_reach_the_64_bit_pci_window() -> None:
    # 128 MiB: the window ends at 36 GiB - 1, so 36 bits (64 GiB) suffice, 35 do not.
    Q35Ram.for_vcpu(128 * MiB, VcpuIdentity("GenuineIntel", 36))
    with pytest.raises(AddressBitsError, match="35 physical address bits"):
        Q35Ram.for_vcpu(128 * MiB, VcpuIdentity("GenuineIntel", 35))
    # 30 GiB: RAM above 4 GiB ends at 32 GiB, the window at 64 GiB - 1: still 36 bits.
    Q35Ram.for_vcpu(30 * GiB, VcpuIdentity("GenuineIntel", 36))
    with pytest.raises(AddressBitsError):
        Q35Ram.for_vcpu(30 * GiB + 4096, VcpuIdentity("GenuineIntel", 36))


def test_round_trip_and_malformed_tables() -> None:
    entries = Q35Ram.for_vcpu(4 * GiB, AMD).e820()
    assert unpack(pack(entries)) == entries
    with pytest.raises(E820Error, match="whole number"):
        unpack(bytes(21))
    with pytest.raises(E820Error, match="unknown type 9"):
        unpack(E820Entry(0, 4096, E820Type.RAM).pack()[:16] + (9).to_bytes(4, "little"))


@pytest.mark.parametrize("size", [0, -4096, 4096 + 1])
def test_bad_ram_sizes(size: int) -> None:
    with pytest.raises(RamLayoutError):
        Q35Ram.for_vcpu(size, INTEL)
