"""How a firmware run ends on the q35 platform: the guest resets (0xcf9, port 0x92) or
powers off (ACPI PM1 control at the PMBASE it programmed), a signal or the time limit
stops it; each ends the run with its reason, status and ``--stats``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from pcihole.kvm import Kvm
from pcihole.q35 import SIGNAL_STATUS_OFFSET, BootResult, Q35Machine
from tests.support import (
    CHILD_ENV,
    FIRMWARE_SECONDS,
    HANG_SECONDS,
    REPO_ROOT,
    pcihole_command,
    run_firmware,
)

JMP_TO_START = bytes.fromhex("e90d00")  # at 0xfff0: jmp near 0x0000 (the image's start)
HANG = bytes.fromhex("ebfe")  # jmp $


def image(code: bytes) -> bytes:
    """64 KiB ending at 4 GiB: ``code`` at its start, reached from the reset vector."""
    flat = bytearray(b"\xf4" * 0x10000)
    flat[: len(code)] = code + b""
    flat[0xFFF0 : 0xFFF0 + len(JMP_TO_START)] = JMP_TO_START
    return bytes(flat)


def out_dx(port: int, value: int, size: int) -> bytes:
    """mov dx, port; mov al/ax/eax, value; out dx, al/ax/eax (real mode)."""
    mov_dx = b"\xba" + port.to_bytes(2, "little")
    if size == 1:
        return mov_dx + b"\xb0" + bytes([value]) + b"\xee"
    if size == 2:
        return mov_dx + b"\xb8" + value.to_bytes(2, "little") + b"\xef"
    return mov_dx + b"\x66\xb8" + value.to_bytes(4, "little") + b"\x66\xef"


def config_write(register: int, value: int, size: int) -> bytes:
    """A write to the ICH9 LPC function (00:1f.0) through CF8/CFC."""
    address = 0x8000_0000 | 0x1F << 11 | register & ~3
    return out_dx(0xCF8, address, 4) + out_dx(0xCFC + (register & 3), value, size)


def run(kvm: Kvm, code: bytes) -> BootResult:
    with Q35Machine(kvm, image(code + HANG)) as machine:
        return run_firmware(machine)


def test_reset_control_ends_the_run(kvm: Kvm) -> None:
    result = run(kvm, out_dx(0xCF9, 0x06, 1))
    assert result.ending is not None and result.status == 0
    assert result.reason == "the guest reset the machine (0xcf9); a reset ends the run"


def test_port_92_fast_reset_ends_the_run(kvm: Kvm) -> None:
    result = run(kvm, out_dx(0x92, 0x01, 1))
    assert result.reason == "the guest reset the machine (port 0x92); a reset ends the run"


def test_cf9_bytes_without_rst_cpu_and_cf8_dwords_do_not_reset(kvm: Kvm) -> None:
    # SYS_RST alone is kept, not acted on; the dword at CF8 is the config address.
    code = out_dx(0xCF9, 0x02, 1) + config_write(0x40, 0x601, 4) + out_dx(0x402, 0x21, 1)
    with Q35Machine(kvm, image(code + HANG), until=b"!") as machine:
        result = run_firmware(machine)
    assert result.reason == "the debug console printed '!'"


def test_acpi_s5_powers_off(kvm: Kvm) -> None:
    code = (
        config_write(0x40, 0x601, 4)  # PMBASE 0x600
        + config_write(0x44, 0x80, 1)  # ACPI_EN
        + out_dx(0x604, 0x2000, 2)  # PM1_CNT: SLP_EN, SLP_TYP 0 (QEMU's S5)
    )
    result = run(kvm, code)
    assert result.reason == "power-off" and result.status == 0


def test_pm_block_is_nowhere_until_acpi_is_enabled(kvm: Kvm) -> None:
    code = config_write(0x40, 0x601, 4) + out_dx(0x604, 0x2000, 2) + out_dx(0x402, 0x21, 1)
    with Q35Machine(kvm, image(code + HANG), until=b"!") as machine:
        result = run_firmware(machine)
        assert machine.guest.ports.hits["acpi-pm"] == 0
    assert result.reason == "the debug console printed '!'"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_with_stats(tmp_path: Path, signum: signal.Signals) -> None:
    bios, stats = tmp_path / "fw.bin", tmp_path / "stats.json"
    # Prints "R" and a newline (the console hands on whole lines), then loops.
    bios.write_bytes(image(out_dx(0x402, 0x52, 1) + out_dx(0x402, 0x0A, 1) + HANG))
    process = subprocess.Popen(
        pcihole_command(
            "boot", "--bios", str(bios), "--stats", str(stats), "--timeout", str(FIRMWARE_SECONDS)
        ),  # a lost signal: ends, fails
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CHILD_ENV,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    try:
        assert os.read(process.stdout.fileno(), 1) == b"R"  # the guest is running
        process.send_signal(signum)
        _, errors = process.communicate(timeout=HANG_SECONDS)
    finally:
        process.kill()
    assert process.returncode == SIGNAL_STATUS_OFFSET + signum
    assert f"stopped by {signum.name}" in errors.decode()
    data = json.loads(stats.read_text())
    assert data["reason"] == f"stopped by {signum.name}"
    assert data["status"] == SIGNAL_STATUS_OFFSET + signum


def test_fw_cfg_dma_from_a_guest_as_seabios_drives_it(kvm: Kvm) -> None:
    """Two transfers started by writing only the low half of the address register (one
    OUT each, big-endian, as SeaBIOS's qemu_cfg_dma_transfer): the register starts cleared
    each time, so each reaches its own descriptor; the first selects an arch-local item."""
    from pcihole.devices.fw_cfg import DMA_ACCESS, DmaControl, Selector

    def descriptor(selector: int, buffer: int) -> bytes:
        return DMA_ACCESS.pack(selector << 16 | DmaControl.SELECT | DmaControl.READ, 4, buffer)

    low_half = [int.from_bytes(address.to_bytes(4, "big"), "little") for address in (0x1000, 0x600)]
    code = (
        b"".join(out_dx(0x518, value, 4) for value in low_half)
        + bytes.fromhex("31c08ed8ba0204")  # ds = 0; dx = debug console
        + bytes.fromhex("a00020eea00420eea00310eea00306ee")  # the bytes, the controls
        + out_dx(0xF4, 0x2A, 1)  # debug-exit
    )
    with Q35Machine(kvm, image(code + HANG)) as machine:
        ram = machine.guest.ram
        assert ram is not None
        ram.write(0x1000, descriptor(Selector.IRQ0_OVERRIDE, 0x2000))
        ram.write(0x600, descriptor(Selector.SIGNATURE, 0x2004))
        result = run_firmware(machine, max_exits=64)
    assert result.console == b"\x01Q\x00\x00", result.reason
    assert result.exit_value == 0x2A
