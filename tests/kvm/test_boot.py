"""``pcihole boot``: flat firmware from the reset vector, PCIEXBAR, debugcon, debug-exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.cli import main
from pcihole.errors import ENVIRONMENT_STATUS, USAGE_STATUS
from pcihole.guest.firmware import FirmwareOptions, build_firmware, exit_status, parse_output
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.pci.devices import PCIEXBAR
from pcihole.pci.ecam import encode_config_address
from pcihole.pci.topology import Topology
from pcihole.q35 import (
    TIMEOUT_STATUS,
    Q35Machine,
)
from pcihole.q35.mch import decode_pciexbar
from tests.support import FIRMWARE_SECONDS, run_firmware

QEMU_NODEFAULTS = [
    ("00:00.0", 0x8086, 0x29C0),
    ("00:1f.0", 0x8086, 0x2918),
    ("00:1f.2", 0x8086, 0x2922),
    ("00:1f.3", 0x8086, 0x2930),
]
HOST_BRIDGE_IDS = 0x29C08086
MIB = layout.MiB


def small_image(**changes: int) -> bytes:
    """The enumeration firmware with a short ring-0 scan (ring 0 is emulated: slow)."""
    values = {"ring3_passes": 2, "ring0_buses": 4, **changes}
    return build_firmware("enumerate", FirmwareOptions(**values))


def real_mode_image(code: bytes, last_byte: int) -> bytes:
    """64 KiB of HLT with ``code`` at CS:0xffc0, a jump to it at the reset vector and
    ``last_byte`` as the image's final byte."""
    image = bytearray(b"\xf4" * 0x10000)
    image[0xFFC0 : 0xFFC0 + len(code)] = code
    image[0xFFF0:0xFFF2] = bytes([0xEB, (0xFFC0 - 0xFFF2) & 0xFF])  # jmp short 0xffc0
    image[-1] = last_byte
    return bytes(image)


def test_firmware_enumerates_and_leaves_through_debug_exit(kvm: Kvm) -> None:
    image = small_image(exit_value=0x2A)
    with Q35Machine(kvm, image, Topology.qemu_nodefaults()) as machine:
        result = run_firmware(machine)
        assert machine.window.base == layout.ECAM_BASE
    assert result.exit_value == 0x2A
    assert result.status == exit_status(0x2A) == 0x55
    out = parse_output(result.text)
    assert out.exception is None
    assert out.host_bridge == HOST_BRIDGE_IDS
    assert out.ecam_before == 0xFFFFFFFF  # no window yet: not configuration space
    assert out.pciexbar == layout.ECAM_BASE | 1
    assert out.ecam == layout.ECAM_BASE
    assert [(s.ring, s.number) for s in out.scans] == [(3, 1), (3, 2), (0, 1)]
    for scan in out.scans:
        assert scan.functions == QEMU_NODEFAULTS
        assert scan.found == len(QEMU_NODEFAULTS)
        assert scan.ticks > 0
    assert out.scan(3).probes == 256 * 256
    assert out.scan(0).probes == 4 * 256
    assert out.exit_value == 0x2A
    # Exit-less discovery: the ring-3 scans of all 256 buses left the guest not once.
    for number in (1, 2):
        scan = out.scan(3, number)
        spent = result.between(scan.start_line, scan.end_line)
        assert (spent.exits, spent.config_exits) == (0, 0), scan.name
    assert result.placements == [(layout.ECAM_BASE, 256)]


def test_trap_strategy_exits_for_every_hole_probe(kvm: Kvm) -> None:
    image = small_image(scan_buses=2, ring3_passes=1, ring0_buses=0)
    trap = MachineOptions(strategy="trap", present="trap")
    with Q35Machine(kvm, image, options=trap) as machine:
        result = run_firmware(machine)
    out = parse_output(result.text)
    scan = out.scan(3)
    spent = result.between(scan.start_line, scan.end_line)
    # Every probe exits; present functions are read twice (IDs, then the record).
    assert spent.config_exits == 2 * 256 + len(QEMU_NODEFAULTS)
    assert scan.functions == QEMU_NODEFAULTS


def test_ecam_is_not_decoded_until_pciexbar_enables_it(kvm: Kvm) -> None:
    with Q35Machine(kvm, small_image()) as machine:
        mmio = machine.guest.mmio
        assert machine.window.base is None
        assert machine.window.memslots == 0
        assert all(mapping.name != "ecam" for mapping in mmio)
        unclaimed = mmio.unclaimed
        assert mmio.read(layout.ECAM_BASE, 4) == 0xFFFFFFFF
        assert mmio.unclaimed == unclaimed + 1  # nobody answered: not config space
        ports = machine.legacy
        bridge_pciexbar = encode_config_address(machine.mch.host_bridge.bdf, PCIEXBAR)
        ports.write(0, 4, bridge_pciexbar)
        assert ports.read(4, 4) == layout.ECAM_BASE  # QEMU's reset value, not enabled
        ports.write(4, 4, layout.ECAM_BASE | 1)
        assert machine.window.base == layout.ECAM_BASE
        assert mmio.read(layout.ECAM_BASE, 4) == HOST_BRIDGE_IDS
        assert machine.window.hole_memslots > 0


def hole_slot_ranges(machine: Q35Machine) -> list[tuple[int, int]]:
    holes = machine.window.holes
    assert holes is not None
    return sorted((piece.start, piece.end) for pieces in holes.runs.values() for _, piece in pieces)


def test_moving_pciexbar_replans_holes_at_the_new_base(kvm: Kvm) -> None:
    with Q35Machine(kvm, small_image()) as machine:
        window = machine.window
        ecam = window.ecam
        ports = machine.legacy
        ports.write(0, 4, encode_config_address(machine.mch.host_bridge.bdf, PCIEXBAR))
        ports.write(4, 4, layout.ECAM_BASE | 1)
        old = hole_slot_ranges(machine)
        assert old[0][0] >= layout.ECAM_BASE and old[-1][1] == layout.ECAM_BASE + 256 * MIB
        # Through ECAM itself: 64 buses at 0xc0000000.
        ecam.write(PCIEXBAR, 4, 0xC0000000 | 2 << 1 | 1)
        assert (window.base, window.size) == (0xC0000000, 64 * MIB)
        new = hole_slot_ranges(machine)
        assert new[0][0] >= 0xC0000000 and new[-1][1] == 0xC0000000 + 64 * MIB
        guest_slots = machine.guest.vm.memslots.values()
        assert not [s for s in guest_slots if layout.ECAM_BASE <= s.guest_address < 0xC0000000]
        mmio = machine.guest.mmio
        assert mmio.read(0xC0000000, 4) == HOST_BRIDGE_IDS
        unclaimed = mmio.unclaimed
        assert mmio.read(layout.ECAM_BASE, 4) == 0xFFFFFFFF  # the old place is empty
        assert mmio.unclaimed == unclaimed + 1
        # Moved back through the new place, then switched off, then a reserved length.
        window.ecam.write(PCIEXBAR, 4, layout.ECAM_BASE | 1)
        assert hole_slot_ranges(machine) == old
        window.ecam.write(PCIEXBAR, 4, layout.ECAM_BASE)
        assert window.base is None and window.memslots == 0
        ports.write(4, 4, layout.ECAM_BASE | 3 << 1 | 1)
        assert window.base is None
        # Over RAM: refused, not decoded, said so.
        ports.write(4, 4, 0x1)
        assert window.base is None
        assert any("not decoded at 0x0" in note for note in machine.notes)
        assert machine.placements == [
            (layout.ECAM_BASE, 256),
            (0xC0000000, 64),
            (layout.ECAM_BASE, 256),
            (None, 256),
            (None, 256),
        ]


def test_firmware_moves_the_window_through_ecam(kvm: Kvm) -> None:
    image = small_image(
        ecam_move=0xC0000000, ecam_move_length=2, scan_buses=64, ring3_passes=1, ring0_buses=0
    )
    with Q35Machine(kvm, image) as machine:
        result = run_firmware(machine)
        assert (machine.window.base, machine.window.size) == (0xC0000000, 64 * MIB)
    out = parse_output(result.text)
    assert out.ecam == 0xC0000000
    assert out.pciexbar == 0xC0000000 | 2 << 1 | 1
    scan = out.scan(3)
    assert scan.functions == QEMU_NODEFAULTS
    spent = result.between(scan.start_line, scan.end_line)
    assert (spent.exits, spent.config_exits) == (0, 0)
    assert result.placements == [(layout.ECAM_BASE, 256), (0xC0000000, 64)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0xB0000000, None),
        (0xB0000001, (0xB0000000, 256)),
        (0xB8000001, (0xB0000000, 256)),  # bit 27 is not an address bit at 256 MiB
        # QEMU 7.2 decodes bits 26 and 25 at 128 MiB, bit 25 at 64 MiB (not 27, 26).
        (0xB8000003, (0xB0000000, 128)),
        (0xB4000003, (0xB4000000, 128)),
        (0xB6000003, (0xB6000000, 128)),
        (0xB4000005, (0xB0000000, 64)),
        (0xB2000005, (0xB2000000, 64)),
        (0xB0000007, None),  # reserved length
        (0xF_F0000001, (0xF_F0000000, 256)),
        # Bits 63:36 are kept in the register and never decoded.
        (0xF0_B0000001, (0xB0000000, 256)),
        (0xFFFF_FFF0_C0000001, (0xC0000000, 256)),
        (0xFFFF_FFFF_B0000001, (0xF_B0000000, 256)),
    ],
)
def test_pciexbar_decoding(value: int, expected: tuple[int, int] | None) -> None:
    assert decode_pciexbar(value) == expected


PCIEXBAR_VALUES = [
    0xB0000001,
    0xB8000001,
    0xB8000003,
    0xB4000003,
    0xB6000003,
    0xB4000005,
    0xB2000005,
    0xD0000001,
    0xF0_B0000001,
    0xFFFF_FFF0_C0000001,
    0x3_B0000001,
]


def test_pciexbar_decodes_as_a_running_qemu(kvm: Kvm) -> None:
    """Each value written through CF8/CFC on QEMU 7.2 and on pcihole's machine: the host
    bridge answers at the same base on both, and nowhere else QEMU could have put it."""
    from tests.qemu import HOST_BRIDGE, qemu_missing_reason, running_q35

    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with running_q35([]) as qemu, Q35Machine(kvm, small_image()) as machine:
        for value in PCIEXBAR_VALUES:
            # Candidates: every 32 MiB below 4 GiB from 2 GiB, and what other masks give.
            candidates = {
                *range(0x8000_0000, 1 << 32, 32 * MIB),
                value & ~0x7 & (1 << 36) - 1,
                value & 0xF_F000_0000,
            }
            qemu.cf8_write(HOST_BRIDGE, PCIEXBAR + 4, value >> 32)
            qemu.cf8_write(HOST_BRIDGE, PCIEXBAR, value & 0xFFFF_FFFF)
            theirs = sorted(c for c in candidates if qemu.qemu.readl(c) == HOST_BRIDGE_IDS)
            ports = machine.legacy
            ports.write(0, 4, encode_config_address(machine.mch.host_bridge.bdf, PCIEXBAR + 4))
            ports.write(4, 4, value >> 32)
            ports.write(0, 4, encode_config_address(machine.mch.host_bridge.bdf, PCIEXBAR))
            ports.write(4, 4, value & 0xFFFF_FFFF)
            assert machine.window.base is not None, hex(value)
            assert theirs == [machine.window.base], hex(value)
            assert machine.guest.mmio.read(machine.window.base, 4) == HOST_BRIDGE_IDS


def test_image_tail_is_aliased_below_1mib_and_read_only(kvm: Kvm) -> None:
    code = bytes.fromhex(
        "b800f0"  # mov ax, 0xf000
        "8ed8"  # mov ds, ax
        "c606ffff00"  # mov byte [0xffff], 0: linear 0xfffff, the alias; dropped
        "a0ffff"  # mov al, [0xffff]
        "ba0204"  # mov dx, 0x402
        "ee"  # out dx, al: debug console
        "baf400"  # mov dx, 0xf4
        "ee"  # out dx, al: debug-exit
        "f4"  # hlt
    )
    with Q35Machine(kvm, real_mode_image(code, 0x5A)) as machine:
        result = run_firmware(machine)
        assert machine.platform.shadow.dropped_writes == 1
    assert result.console == b"\x5a"
    assert result.status == exit_status(0x5A)


def test_main_boot_files_status_and_errors(
    kvm: Kvm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bios = tmp_path / "fw.bin"
    bios.write_bytes(small_image(exit_value=3, ring3_passes=1, ring0_buses=0))
    console, stats = tmp_path / "console.txt", tmp_path / "stats.json"
    status = main(
        [
            "boot",
            "--bios",
            str(bios),
            "--debugcon",
            str(console),
            "--stats",
            str(stats),
            "--timeout",
            str(FIRMWARE_SECONDS),
        ]
    )
    assert status == 7
    out = parse_output(console.read_text())
    assert out.scan(3).functions == QEMU_NODEFAULTS
    data = json.loads(stats.read_text())
    assert data["status"] == 7
    assert data["window"]["base"] == layout.ECAM_BASE
    assert data["lines"][0]["text"].startswith("fw enumerate")

    devices = ["00:1c.0=root-port,bus=1", "01:00.0=nvme"]  # added to the q35 built-ins
    status = main(
        [
            "boot",
            "--bios",
            str(bios),
            "--strategy",
            "fill",
            "--debugcon",
            str(console),
            "--timeout",
            str(FIRMWARE_SECONDS),
            "--buses",
            "4",
            *(f"--device={d}" for d in devices),
        ]
    )
    assert status == 7
    found = [bdf for bdf, _, _ in parse_output(console.read_text()).scan(3).functions]
    assert found == ["00:00.0", "00:1c.0", "00:1f.0", "00:1f.2", "00:1f.3", "01:00.0"]

    # With KVM's in-kernel local APIC a halted vCPU waits in the kernel, as under QEMU:
    # only the time limit ends the run, and the stats still say so.
    halting = tmp_path / "halt.bin"
    halting.write_bytes(b"\xf4" * 0x10000)
    capsys.readouterr()
    status = main(
        [
            "boot",
            "--bios",
            str(halting),
            "--debugcon",
            str(console),
            "--timeout",
            "0.5",
            "--stats",
            str(stats),
        ]
    )
    assert status == TIMEOUT_STATUS
    assert "time limit of 0.5 s reached" in capsys.readouterr().err
    assert json.loads(stats.read_text())["reason"] == "time limit of 0.5 s reached"

    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\xf4" * 1000)
    assert main(["boot", "--bios", str(odd)]) == USAGE_STATUS
    assert "multiple of 64 KiB" in capsys.readouterr().err
    assert main(["boot", "--bios", str(tmp_path / "missing.bin")]) == USAGE_STATUS
    assert main(["boot", "--bios", str(bios), "--device", "00:00.0=nvme"]) == USAGE_STATUS
    assert "host bridge" in capsys.readouterr().err


def test_without_bios_and_without_seabios_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pcihole.commands import boot as boot_command

    monkeypatch.setattr(boot_command, "DEFAULT_BIOS", tmp_path / "absent" / "bios.bin")
    assert main(["boot"]) == ENVIRONMENT_STATUS
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "apt-get install seabios" in error and "--bios" in error
