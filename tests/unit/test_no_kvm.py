"""Without /dev/kvm every command that needs it says so in one line, exits 1, no traceback.

/dev/kvm is hidden in a private mount namespace (``unshare -m``, a tmpfs over /dev), so
the host's KVM is untouched and the rest of the suite unaffected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcihole.errors import ENVIRONMENT_STATUS

REPO = Path(__file__).resolve().parents[2]
COMMANDS = [["info"], ["scan"], ["demo", "--vms", "1"], ["lspci", "--vm-view"], ["boot"]]


def _hidden_kvm(argv: list[str]) -> subprocess.CompletedProcess[str]:
    script = 'mount -t tmpfs none /dev && exec "$@"'
    command = ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "pcihole", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def namespaces() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) from util-linux")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs none /dev"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0])
def test_without_dev_kvm_one_line_names_it_and_what_to_do(
    namespaces: None, argv: list[str], tmp_path: Path
) -> None:
    if argv == ["boot"]:
        image = tmp_path / "halt.bin"
        image.write_bytes(b"\xf4" * 0x10000)  # valid input: the failure must be /dev/kvm
        argv = ["boot", "--bios", str(image)]
    result = _hidden_kvm(argv)
    lines = result.stderr.splitlines()
    assert result.returncode == ENVIRONMENT_STATUS, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"pcihole {argv[0]}: error: open /dev/kvm: ")
    assert "load the kvm module" in lines[0] and result.stdout == ""
