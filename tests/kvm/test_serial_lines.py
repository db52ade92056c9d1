"""``--stats`` records every UART (COM1) line with its time and exit counts, as it does
for the debug console: a real-mode guest prints two serial lines and one debug line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.kvm.test_q35_platform import HANG, image, out_dx
from tests.support import CHILD_ENV, HANG_SECONDS, REPO_ROOT, pcihole_command


def prints(port: int, text: bytes) -> bytes:
    return b"".join(out_dx(port, byte, 1) for byte in text)


def test_serial_lines_in_stats(tmp_path: Path) -> None:
    code = (
        prints(0x3F8, b"first line\r\n")
        + prints(0x402, b"debug\n")
        + prints(0x3F8, b"second\n")
        + prints(0x3F8, b"no newline")
        + out_dx(0xF4, 0, 1)
    )
    bios, stats_file, serial = tmp_path / "fw.bin", tmp_path / "stats.json", tmp_path / "serial"
    bios.write_bytes(image(code + HANG))
    command = pcihole_command(
        "boot",
        "--bios",
        str(bios),
        "--stats",
        str(stats_file),
        "--serial",
        str(serial),
        "--debugcon",
        str(tmp_path / "debugcon"),
    )
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=CHILD_ENV, timeout=HANG_SECONDS, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr  # debug-exit 0: status 1, as QEMU's
    assert serial.read_bytes() == b"first line\r\nsecond\nno newline"
    stats = json.loads(stats_file.read_text())
    lines = stats["serial_lines"]
    assert [line["text"] for line in lines] == ["first line\r", "second", "no newline"]
    assert [line["text"] for line in stats["lines"]] == ["debug"]
    debug = stats["lines"][0]
    first, second = lines[0], lines[1]
    # Each byte is one OUT exit: the stamps count them, in the order they were printed.
    assert second["first_exits"] - first["exits"] == len(b"debug\n") + 1
    assert first["exits"] < debug["first_exits"] < debug["exits"] < second["first_exits"]
    assert 0 <= first["first_seconds"] <= first["seconds"] <= second["seconds"]


def test_marks_record_the_counters_at_the_first_line_holding_each_text(tmp_path: Path) -> None:
    code = (
        prints(0x3F8, b"alpha one\n")
        + prints(0x402, b"x\n")
        + prints(0x3F8, b"beta\n")
        + prints(0x3F8, b"alpha two\n")
        + prints(0x3F8, b"gamma, no newline")
        + out_dx(0xF4, 0, 1)
    )
    bios, stats_file = tmp_path / "fw.bin", tmp_path / "stats.json"
    bios.write_bytes(image(code + HANG))
    command = pcihole_command(
        "boot",
        "--bios",
        str(bios),
        "--stats",
        str(stats_file),
        "--mark",
        "alpha",
        "--mark",
        "beta",
        "--mark",
        "never printed",
        "--mark",
        "gamma",
        "--debugcon",
        str(tmp_path / "debugcon"),
    )
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=CHILD_ENV, timeout=HANG_SECONDS, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    stats = json.loads(stats_file.read_text())
    marks = stats["marks"]
    assert [(mark["mark"], mark["line"]) for mark in marks] == [
        ("alpha", "alpha one"),
        ("beta", "beta"),
        ("gamma", "gamma, no newline"),
    ]
    alpha, beta, _ = marks
    # between the two marks: "x\n" on the debug console and "beta\n", one OUT exit a byte
    assert beta["exit_counts"]["IoOut"] - alpha["exit_counts"]["IoOut"] == 2 + 5
    assert 0 < alpha["seconds"] <= beta["seconds"] <= marks[2]["seconds"] <= stats["seconds"]
    assert set(alpha["config_exits"]) >= {"hole_reads", "legacy_ports"}
    assert set(stats["hole_memory"]) == {
        "per_vm_bytes",
        "per_vm_resident_bytes",
        "shared_bytes",
        "kernel_bytes",
    }
