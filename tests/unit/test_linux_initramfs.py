"""The initramfs builder, judged by cpio(1) reading what it wrote."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pcihole.errors import EnvironmentProblem
from pcihole.guest.linux import INIT_SCRIPT, INITRAMFS_NAME, cache_dir
from pcihole.guest.linux.initramfs import APPLETS, BUSYBOX, build

needs_tools = pytest.mark.skipif(
    shutil.which("cpio") is None or not BUSYBOX.is_file(),
    reason="needs cpio and busybox-static (bash scripts/setup)",
)


def cpio(archive: Path, *args: str) -> str:
    done = subprocess.run(
        ["cpio", "--quiet", "-i", *args],
        input=archive.read_bytes(),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode(errors="replace")


@needs_tools
def test_cpio_lists_init_busybox_its_applets_and_the_console(tmp_path: Path) -> None:
    output = tmp_path / INITRAMFS_NAME
    assert build(output) is True
    assert output.read_bytes().startswith(b"070701")  # newc, not compressed
    listing = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line.split()[0]
        for line in cpio(output, "-tv").splitlines()
    }
    assert listing["init"] == "-rwxr-xr-x"
    assert listing["bin/busybox"] == "-rwxr-xr-x"
    assert listing["dev/console"] == "crw-------"
    assert {f"bin/{applet}" for applet in APPLETS} <= {n for n, m in listing.items() if m[0] == "l"}
    assert cpio(output, "--to-stdout", "init") == INIT_SCRIPT.read_text()
    assert "5,   1" in cpio(output, "-tv", "dev/console")


@needs_tools
def test_a_second_build_writes_nothing_and_a_changed_input_rebuilds(tmp_path: Path) -> None:
    output = tmp_path / INITRAMFS_NAME
    assert build(output) is True
    written = output.stat().st_mtime_ns
    assert build(output) is False
    assert output.stat().st_mtime_ns == written
    other_init = tmp_path / "init"
    other_init.write_text("#!/bin/sh\necho other\n")
    assert build(output, init=other_init) is True
    assert cpio(output, "--to-stdout", "init") == "#!/bin/sh\necho other\n"


def test_a_missing_busybox_names_setup(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="scripts/setup"):
        build(tmp_path / "out.cpio", busybox=tmp_path / "no-busybox")


def test_cache_dir_follows_the_shell_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCIHOLE_CACHE", "/c")
    assert cache_dir() == Path("/c/linux")
    monkeypatch.setenv("PCIHOLE_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert cache_dir() == Path("/x/pcihole/linux")
    monkeypatch.delenv("PCIHOLE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache/pcihole/linux"
