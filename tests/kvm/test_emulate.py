"""Instructions KVM hands over, finished by the monitor, on a real ring-0 guest.

Where ring 0 is emulated by KVM (``kvm_pvm``: /sys/module/kvm_pvm), KVM refuses int3,
popcnt, fwait, ldmxcsr/stmxcsr, clac/stac and cmpxchg16b and the monitor finishes them: there the
count of each is required. Where ring 0 runs natively these exits never happen: the guest
still checks every architectural result (the instructions ran on the CPU) and the counts
must be zero.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from pcihole.cli import main
from pcihole.errors import ENVIRONMENT_STATUS
from pcihole.guest.build import assemble_flat
from pcihole.guest.firmware import exit_status
from pcihole.guest.vm import GuestVm
from pcihole.kvm import Kvm
from pcihole.layout import FIRMWARE_TOP, asm_symbols
from pcihole.machine.runloop import StopReason
from pcihole.q35 import TIMEOUT_STATUS
from tests.kvm.test_boot import real_mode_image

EMULATED_RING0 = os.path.isdir("/sys/module/kvm_pvm")
"""This host's KVM runs ring 0 through its instruction emulator."""


def _host_has(flag: str) -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        return any(line.startswith("flags") and flag in line.split() for line in cpuinfo)


# Executions of each in emulate.S's main path (clac/stac only with SMAP).
EXPECTED = {
    "popcnt": 6,
    "stmxcsr": 3,
    "ldmxcsr": 2,
    "fwait": 1,
    "int3": 1,
    "stac": 1,
    "clac": 1,
    "cmpxchg16b": 2,
}


def test_each_refused_instruction_gives_its_architectural_result(kvm: Kvm) -> None:
    smap = _host_has("smap")
    with GuestVm(kvm, "emulate", ring=0, params=[0, 0 if smap else 1]) as guest:
        result = guest.run()
        emulated = guest.loop.emulated_instructions()
        initial_mxcsr = struct.unpack("<I", guest.results(4, 0x100))[0]
    assert result.reason is StopReason.DONE, result.detail
    # stmxcsr wrote the reset MXCSR to guest memory
    assert initial_mxcsr == 0x1F80
    # one EmulationFailure exit per emulated instruction, never one left unfinished
    assert sum(emulated.values()) == result.exit_counts.get("EmulationFailure", 0)
    expected = (
        EXPECTED if smap else {k: v for k, v in EXPECTED.items() if k not in ("stac", "clac")}
    )
    if EMULATED_RING0:
        assert emulated == expected
    else:  # natively run ring 0 refuses nothing
        assert emulated == {}


def test_ldmxcsr_with_a_reserved_bit_raises_gp_in_the_guest(kvm: Kvm) -> None:
    with GuestVm(kvm, "emulate", ring=0, params=[1]) as guest:
        result = guest.run()
    assert result.reason is StopReason.GUEST_EXCEPTION, result.detail
    assert result.exception is not None and result.exception.vector == 13
    assert result.exception.error_code == 0


def test_misaligned_cmpxchg16b_raises_gp_in_the_guest(kvm: Kvm) -> None:
    with GuestVm(kvm, "emulate", ring=0, params=[4]) as guest:
        result = guest.run()
        emulated = guest.loop.emulated_instructions()
        program = guest.program
    assert result.reason is StopReason.GUEST_EXCEPTION, result.detail
    assert result.exception is not None and result.exception.vector == 13
    assert result.exception.error_code == 0
    # a fault: RIP still at the instruction (lock cmpxchg16b [rsi])
    at = result.exception.rip - program.load_address
    assert program.code[at : at + 5] == bytes.fromhex("f0480fc70e")
    # KVM's emulator checks a 16-byte operand's alignment before it gives up on the
    # instruction, so the #GP comes from KVM here (the monitor's own check: unit tests)
    assert emulated == {}


def test_popcnt_from_an_unmapped_address_raises_pf_with_cr2(kvm: Kvm) -> None:
    with GuestVm(kvm, "emulate", ring=0, params=[2]) as guest:
        result = guest.run()
    assert result.reason is StopReason.GUEST_EXCEPTION, result.detail
    assert result.exception is not None and result.exception.vector == 14
    assert result.exception.cr2 == 0x200000008
    assert result.exception.error_code & 0b111 == 0  # not present, a read, supervisor


def test_an_instruction_nobody_emulates_ends_the_run_with_one_line(kvm: Kvm) -> None:
    with GuestVm(kvm, "emulate", ring=0, params=[3]) as guest:
        result = guest.run()
        rip = guest.vcpu.get_regs().rip
    if not EMULATED_RING0:  # the CPU itself raises #UD: CR4.OSXSAVE is clear
        assert result.reason is StopReason.GUEST_EXCEPTION and result.exception is not None
        assert result.exception.vector == 6
        return
    assert result.reason is StopReason.REFUSED_INSTRUCTION
    assert "\n" not in result.detail
    assert result.detail.startswith("KVM refused the instruction in bytes 0f ae 23 ")
    assert f"at RIP {rip:#x}, long mode, CPL 0" in result.detail
    assert guest.loop.emulated_instructions() == {}


def test_boot_counts_emulated_instructions_and_stops_on_an_unknown_one(
    kvm: Kvm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    popcnt = bytes.fromhex(
        "bbff00"  # mov bx, 0xff
        "f30fb8c3"  # popcnt ax, bx (16-bit operands in real mode)
        "baf400"  # mov dx, 0xf4
        "ee"  # out dx, al: debug-exit with the count
    )
    bios, stats = tmp_path / "fw.bin", tmp_path / "stats.json"
    bios.write_bytes(real_mode_image(popcnt, 0))
    assert main(["boot", "--bios", str(bios), "--stats", str(stats)]) == exit_status(8)
    emulated = json.loads(stats.read_text())["emulated_instructions"]
    assert emulated == ({"popcnt": 1} if EMULATED_RING0 else {})

    bios.write_bytes(real_mode_image(bytes.fromhex("0fae27"), 0))  # xsave [bx]
    capsys.readouterr()
    status = main(["boot", "--bios", str(bios), "--timeout", "5"])
    if not EMULATED_RING0:  # the CPU raises #UD into an empty IVT: only the time limit ends it
        assert status == TIMEOUT_STATUS
        return
    assert status == ENVIRONMENT_STATUS
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "KVM refused the instruction in bytes 0f ae 27 " in err
    assert "at RIP 0xffc0, real mode, CPL 0" in err


LONGMODE_CX16 = Path(__file__).with_name("longmode_cx16.S")
"""64 KiB firmware that goes to 64-bit ring 0 and runs cmpxchg16b both ways."""


def test_boot_stats_count_cmpxchg16b_of_64_bit_firmware(kvm: Kvm, tmp_path: Path) -> None:
    flags = [f"-D{name}={value:#x}" for name, value in sorted(asm_symbols().items())]
    image = assemble_flat(LONGMODE_CX16, flags, base=FIRMWARE_TOP - 0x10000, entry="start16")
    bios, stats = tmp_path / "fw.bin", tmp_path / "stats.json"
    bios.write_bytes(image)
    status = main(["boot", "--bios", str(bios), "--stats", str(stats), "--timeout", "30"])
    assert status == exit_status(0x87)  # RDX:RAX = 8:7, loaded by the unequal one
    emulated = json.loads(stats.read_text())["emulated_instructions"]
    assert emulated == ({"cmpxchg16b": 2} if EMULATED_RING0 else {})
