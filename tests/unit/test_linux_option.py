"""``pcihole boot --linux``: what it stands for, and what it refuses (no guest runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pcihole.cli import main
from pcihole.commands.linux_option import apply_linux_option
from pcihole.guest.linux import COMMAND_LINE, INITRAMFS_NAME, VMLINUX_NAME


def cache_with_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PCIHOLE_CACHE", str(tmp_path))
    linux = tmp_path / "linux"
    linux.mkdir()
    for name in (VMLINUX_NAME, INITRAMFS_NAME):
        (linux / name).write_bytes(b"x")
    return linux


def namespace(**given: object) -> argparse.Namespace:
    fields = {
        "linux": True,
        "kernel": None,
        "initrd": None,
        "bios": None,
        "append": None,
        "serial": None,
    }
    return argparse.Namespace(**{**fields, **given})


def test_linux_stands_for_the_cached_kernel_its_command_line_and_the_serial_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    linux = cache_with_kernel(tmp_path, monkeypatch)
    args = namespace(append="quiet")
    apply_linux_option(args)
    assert (args.kernel, args.initrd) == (str(linux / VMLINUX_NAME), str(linux / INITRAMFS_NAME))
    assert args.append == f"{COMMAND_LINE} quiet"  # the user's words last: they win
    assert args.serial == "stdio"
    args = namespace(serial="out.txt")
    apply_linux_option(args)
    assert (args.append, args.serial) == (COMMAND_LINE, "out.txt")


def test_linux_s_command_line_times_every_line_and_ends_a_panicking_run() -> None:
    words = COMMAND_LINE.split()
    assert {"console=ttyS0", "earlyprintk=serial,ttyS0,115200", "panic=-1"} <= set(words)
    blacklist = next(w for w in words if w.startswith("initcall_blacklist=")).split("=")[1]
    assert "tracer_init_tracefs" in blacklist.split(",")


@pytest.mark.parametrize("option", [["--kernel", "k"], ["--initrd", "i"], ["--bios", "b"]])
def test_linux_refuses_a_kernel_initrd_or_bios_of_the_user_s(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["boot", "--linux", *option]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"drop {option[0]}" in lines[0]


def test_linux_without_the_cache_names_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PCIHOLE_CACHE", str(tmp_path))
    assert main(["boot", "--linux"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bash scripts/setup" in lines[0] and VMLINUX_NAME in lines[0]
