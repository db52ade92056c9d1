"""ICH9 AHCI with nothing attached: the values a running QEMU 7.2 shows, read through the
index/data pair of ``-machine q35 -nodefaults`` (00:1f.2, BAR4 at 0xc0e0), and SeaBIOS's
port probe finding no device."""

from __future__ import annotations

from pcihole.devices.ahci import (
    ABAR_SIZE,
    IDP_DATA,
    IDP_INDEX,
    PORT_BASE,
    PORT_SIZE,
    Ahci,
    AhciIndexData,
)
from pcihole.memory.access import FlatMemory

RAM = 0x200000
CLB = 0x100000
FB = 0x101000
PXIS, PXIE, PXCMD, PXTFD, PXSIG, PXSSTS, PXSCTL, PXCI = (
    0x10,
    0x14,
    0x18,
    0x20,
    0x24,
    0x28,
    0x2C,
    0x38,
)


def port(n: int, register: int) -> int:
    return PORT_BASE + PORT_SIZE * n + register


def hba() -> tuple[Ahci, FlatMemory, list[bool]]:
    memory = FlatMemory(RAM)
    levels: list[bool] = []
    return Ahci(memory, levels.append), memory, levels


def test_host_registers_at_reset_equal_qemus() -> None:
    ahci, _, _ = hba()
    dwords = [ahci.read(offset, 4) for offset in range(0, 0x30, 4)]
    assert dwords == [0xC0141F05, 0x80000000, 0, 0x3F, 0x10000] + [0] * 7


def test_every_port_at_reset_equals_qemus() -> None:
    ahci, _, _ = hba()
    expected = [0] * 6 + [0x6, 0, 0x7F, 0xFFFFFFFF] + [0] * 22
    for n in range(6):
        assert [ahci.read(port(n, r), 4) for r in range(0, PORT_SIZE, 4)] == expected
    assert ahci.read(port(6, 0), 4) == 0  # no seventh port
    assert ahci.read(ABAR_SIZE - 4, 4) == 0


def test_narrow_unaligned_and_wide_reads() -> None:
    ahci, _, _ = hba()
    assert ahci.read(0x0, 1) == 0x05
    assert ahci.read(0x1, 2) == 0x141F
    assert ahci.read(0x3, 1) == 0xC0
    assert ahci.read(0x0, 8) == 0x80000000_C0141F05
    assert ahci.read(0x2, 4) == 0x0000C014  # across a dword: the next one's low bytes


def test_writes_to_read_only_registers_and_misaligned_writes_are_dropped() -> None:
    ahci, _, _ = hba()
    ahci.write(0x0, 4, 0)
    ahci.write(0xC, 4, 0)
    ahci.write(port(0, PXSSTS), 4, 0x123)
    ahci.write(port(0, PXSIG), 4, 0)
    ahci.write(port(0, PXIE) + 1, 1, 0xFF)
    assert ahci.read(0x0, 4) == 0xC0141F05
    assert ahci.read(0xC, 4) == 0x3F
    assert ahci.read(port(0, PXSSTS), 4) == 0
    assert ahci.read(port(0, PXSIG), 4) == 0xFFFFFFFF
    assert ahci.read(port(0, PXIE), 4) == 0


def test_fis_receive_posts_the_empty_slots_d2h_fis_as_qemu() -> None:
    ahci, memory, levels = hba()
    ahci.write(port(0, 0x0), 4, CLB)
    ahci.write(port(0, 0x8), 4, FB)
    ahci.write(port(0, PXCMD), 4, 0x16)
    assert ahci.read(port(0, PXCMD), 4) == 0x4016  # FR: the FIS engine runs
    assert ahci.read(port(0, PXIS), 4) == 0x1
    assert ahci.read(port(0, PXTFD), 4) == 0x50
    assert ahci.read(port(0, PXSIG), 4) == 0xFFFF0101
    assert ahci.read(0x8, 4) == 0  # PxIE is 0: nothing reaches IS or the line
    assert memory.read(FB + 0x40, 20) == bytes.fromhex(
        "34405000 01ffffa0 00000000 01000000 00000000"
    )
    assert levels == []
    ahci.write(port(0, PXCMD), 4, 0x17)
    assert ahci.read(port(0, PXCMD), 4) == 0xC017
    ahci.write(port(0, PXCMD), 4, 0x6)
    assert ahci.read(port(0, PXCMD), 4) == 0x6


def test_engines_do_not_start_outside_guest_memory() -> None:
    ahci, _, _ = hba()
    ahci.write(port(1, 0x8), 4, 0xFEBF0000)
    ahci.write(port(1, 0x0), 4, 0xFEBF0000)
    ahci.write(port(1, PXCMD), 4, 0x17)
    assert ahci.read(port(1, PXCMD), 4) == 0x16  # ST refused; QEMU stops before FRE
    ahci.write(port(1, PXCMD), 4, 0x16)
    assert ahci.read(port(1, PXCMD), 4) == 0x6
    assert ahci.read(port(1, PXIS), 4) == 0
    assert ahci.dma_failures == 2


def test_comreset_and_a_second_fis_receive_start_as_qemu() -> None:
    ahci, _, _ = hba()
    ahci.write(port(0, 0x8), 4, FB)
    ahci.write(port(0, PXCMD), 4, 0x16)
    ahci.write(port(0, PXCMD), 4, 0x6)
    ahci.write(port(0, PXIS), 4, 0xFFFFFFFF)
    ahci.write(port(0, PXSCTL), 4, 1)
    ahci.write(port(0, PXSCTL), 4, 0)
    assert [ahci.read(port(0, r), 4) for r in (PXCMD, PXIS, PXTFD, PXSIG)] == [
        0x6,
        0,
        0x7F,
        0xFFFFFFFF,
    ]
    ahci.write(port(0, PXCMD), 4, 0x16)
    assert [ahci.read(port(0, r), 4) for r in (PXCMD, PXIS, PXTFD, PXSIG)] == [
        0x4016,
        1,
        0x50,
        0xFFFF0101,
    ]


def test_issued_commands_stay_outstanding() -> None:
    ahci, _, _ = hba()
    ahci.write(port(0, 0x0), 4, CLB)
    ahci.write(port(0, PXCMD), 4, 0x17)
    ahci.write(port(0, PXCI), 4, 1)
    assert ahci.read(port(0, PXCI), 4) == 1


def test_interrupt_follows_enabled_status_and_ghc_ie() -> None:
    ahci, _, levels = hba()
    ahci.write(port(2, PXIE), 4, 0xFFFFFFFF)
    assert ahci.read(port(2, PXIE), 4) == 0xFDC000FF
    ahci.write(0x4, 4, 0x2)
    ahci.write(port(2, 0x8), 4, FB)
    ahci.write(port(2, PXCMD), 4, 0x16)
    assert ahci.read(0x8, 4) == 1 << 2
    assert levels == [True]
    ahci.write(port(2, PXIS), 4, 1)
    assert ahci.read(0x8, 4) == 0
    assert levels == [True, False]


def test_hba_reset_keeps_addresses_and_restores_the_rest() -> None:
    ahci, _, _ = hba()
    ahci.write(port(0, 0x0), 4, CLB)
    ahci.write(port(0, PXCMD), 4, 0x17)
    ahci.write(0x4, 4, 0x80000002)
    assert ahci.read(0x4, 4) == 0x80000002
    ahci.write(0x4, 4, 0x1)
    assert ahci.read(0x4, 4) == 0x80000000
    assert ahci.read(port(0, PXCMD), 4) == 0x6
    assert ahci.read(port(0, 0x0), 4) == CLB


def test_index_data_pair_reaches_the_registers() -> None:
    ahci, _, _ = hba()
    idp = AhciIndexData(ahci)
    idp.write(IDP_INDEX, 4, 0x1003)  # masked to a dword inside the 4 KiB
    assert idp.read(IDP_INDEX, 4) == 0
    idp.write(IDP_INDEX, 4, port(0, PXCMD))
    assert idp.read(IDP_DATA, 4) == 0x6
    idp.write(IDP_DATA, 4, 0x16)  # FIS base 0 is guest memory here
    assert ahci.read(port(0, PXCMD), 4) == 0x4016
    assert idp.read(0x0, 4) == 0


def seabios_port_probe(ahci: Ahci, n: int, link_polls: int) -> str:
    """SeaBIOS 1.16's ahci_port_alloc, ahci_port_detect and ahci_port_release for port
    ``n`` (src/hw/ahci.c), with its 10 ms link time-out as a number of polls."""

    def reset() -> None:  # ahci_port_reset
        for _ in range(link_polls):
            cmd = ahci.read(port(n, PXCMD), 4)
            if not cmd & (0x10 | 0x1 | 0x4000 | 0x8000):
                break
            ahci.write(port(n, PXCMD), 4, cmd & ~(0x10 | 0x1))
        else:
            return
        ahci.write(port(n, PXIE), 4, 0)
        status = ahci.read(port(n, PXIS), 4)
        if status:
            ahci.write(port(n, PXIS), 4, status)

    ahci.write(port(n, 0x0), 4, CLB + 0x400 * n)
    ahci.write(port(n, 0x8), 4, FB + 0x100 * n)
    ahci.write(port(n, 0x4), 4, 0)
    ahci.write(port(n, 0xC), 4, 0)
    reset()
    cmd = ahci.read(port(n, PXCMD), 4) | 0x10
    ahci.write(port(n, PXCMD), 4, cmd)
    ahci.write(port(n, PXCMD), 4, cmd | 0x2)
    for _ in range(link_polls):
        if ahci.read(port(n, PXSSTS), 4) & 0x7 == 0x3:
            return "link up"
    reset()  # ahci_port_release
    return "link down"


def test_seabios_finds_no_device_on_any_port() -> None:
    ahci, _, levels = hba()
    ahci.write(0x4, 4, ahci.read(0x4, 4) | 0x80000000)
    assert ahci.read(0xC, 4) == 0x3F
    assert [seabios_port_probe(ahci, n, link_polls=100) for n in range(6)] == ["link down"] * 6
    for n in range(6):
        assert ahci.read(port(n, PXCMD), 4) & 0xC011 == 0  # engines stopped again
        assert ahci.read(port(n, PXIS), 4) == 0
    assert levels == []
