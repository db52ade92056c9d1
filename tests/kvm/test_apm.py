"""The ICH9 APM ports (0xb2/0xb3): ACPI enable and disable through SMI_CMD, as QEMU 7.2.

A real-mode guest enables ACPI as Linux does (SeaBIOS's FADT: SMI_CMD 0xb2, ACPI_ENABLE
2) and reads SCI_EN back; and one sequence of port accesses runs on a paused QEMU (qtest)
and on pcihole's port bus, every read compared.

The QEMU is ``-machine pc-q35-5.2``: pcihole's PM block is QEMU's ICH9 without SMM
(SMI_EN comes up with APMC_EN set), and QEMU 7.2's own ``q35`` without SMM, as on
hosts whose KVM has none, is "ACPI only" instead: SCI_EN set from reset and the APM
commands ignored (``acpi_pm1_cnt_update`` returns early). Machine types up to 5.2 keep
the switchable legacy mode (``x-smm-compat-5``), which is what the ACPI tables SeaBIOS
builds (SMI_CMD 0xb2, ACPI_ENABLE 2) and Linux expect, and what QEMU with SMM does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pcihole.kvm import Kvm
from pcihole.q35 import Q35Machine
from tests.kvm.test_q35_platform import HANG, config_write, image, out_dx
from tests.qemu import CF8, CF8_ENABLE, CFC, Qemu, qemu_missing_reason

PMBASE = 0x680  # not SeaBIOS's 0x600: the test's own choice, given to both machines
PM1_CNT = PMBASE + 4
SMI_EN = PMBASE + 0x30
LPC_CF8 = CF8_ENABLE | 0x1F << 11
DEBUG_EXIT = 0xF4

Access = tuple[str, int, int, int]
"""("out" | "in", port, size, value written)."""

QEMU_MACHINE = "pc-q35-5.2"
# Program PMBASE and ACPI_EN through CF8/CFC; clear SMI_EN once read (QEMU would raise an
# SMI for other commands while APMC_EN is set), then drive 0xb2/0xb3 and read back.
SETUP: list[Access] = [
    ("out", CF8, 4, LPC_CF8 | 0x40),
    ("out", CFC, 4, PMBASE | 1),
    ("out", CF8, 4, LPC_CF8 | 0x44),
    ("out", CFC, 1, 0x80),
]
READS: list[Access] = [("in", 0xB2, 1, 0), ("in", 0xB3, 1, 0), ("in", PM1_CNT, 2, 0)]
SEQUENCE: list[Access] = [
    ("in", SMI_EN, 4, 0),
    ("out", SMI_EN, 4, 0),
    *READS,
    ("out", 0xB3, 1, 0x5A),
    *READS,
    ("out", 0xB2, 1, 0x02),
    *READS,  # ACPI_ENABLE
    ("out", 0xB2, 1, 0x02),
    *READS,
    ("out", 0xB2, 1, 0x55),
    *READS,  # neither: only stored
    ("out", 0xB2, 1, 0x03),
    *READS,  # ACPI_DISABLE
    ("out", 0xB2, 1, 0x03),
    *READS,
    ("out", 0xB2, 2, 0x0702),
    *READS,
    ("in", 0xB2, 2, 0),  # a word: command 2, status 7
    ("out", PM1_CNT, 2, 0x0000),
    *READS,  # SCI_EN cleared directly
    ("out", PM1_CNT, 2, 0x0401),
    ("out", 0xB2, 1, 0x03),
    *READS,  # disable keeps SLP_TYP
]


def run_sequence(
    accesses: list[Access],
    port_in: Callable[[int, int], int],
    port_out: Callable[[int, int, int], None],
) -> list[tuple[int, int, int]]:
    answers = []
    for kind, port, size, value in accesses:
        if kind == "out":
            port_out(port, size, value)
        else:
            answers.append((port, size, port_in(port, size)))
    return answers


def test_apm_ports_answer_as_qemu_q35(kvm: Kvm) -> None:
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with Qemu(paused=True, qtest=True, machine=QEMU_MACHINE) as qemu:
        run_sequence(SETUP, qemu.port_in, qemu.port_out)
        expected = run_sequence(SEQUENCE, qemu.port_in, qemu.port_out)
    with Q35Machine(kvm, image(HANG)) as machine:
        ports = machine.guest.ports
        run_sequence(SETUP, ports.read, ports.write)
        got = run_sequence(SEQUENCE, ports.read, ports.write)
    assert got == expected
    # The sequence does move SCI_EN (on QEMU itself, not assumed).
    assert {value & 1 for port, _, value in expected if port == PM1_CNT} == {0, 1}


def in_al(port: int) -> bytes:
    """mov dx, port; in al, dx."""
    return b"\xba" + port.to_bytes(2, "little") + b"\xec"


def show_al() -> bytes:
    """mov dx, 0x402; out dx, al: the byte to the debug console."""
    return b"\xba\x02\x04\xee"


def test_a_guest_enables_and_disables_acpi_through_smi_cmd(kvm: Kvm) -> None:
    code = (
        config_write(0x40, PMBASE | 1, 4)
        + config_write(0x44, 0x80, 1)
        + in_al(PM1_CNT)
        + show_al()
        + out_dx(0xB2, 0x02, 1)
        + in_al(PM1_CNT)
        + show_al()
        + in_al(0xB2)
        + show_al()
        + out_dx(0xB2, 0x03, 1)
        + in_al(PM1_CNT)
        + show_al()
        + out_dx(DEBUG_EXIT, 0, 1)
    )
    with Q35Machine(kvm, image(code + HANG)) as machine:
        result = machine.run()
        commands = machine.platform.apm.commands
    assert result.exit_value == 0, result.reason
    assert result.console == bytes([0x00, 0x01, 0x02, 0x00])
    assert commands == 2
