"""The real lspci as the judge of configuration-space dumps (shared by the lspci tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

LSPCI = shutil.which("lspci")
needs_lspci = pytest.mark.skipif(
    LSPCI is None, reason="lspci (pciutils) is not installed: apt-get install pciutils"
)


def run_lspci(dump_text: str, tmp_path: Path, *options: str) -> str:
    """``lspci -F`` over ``dump_text`` with ``options``; its output."""
    assert LSPCI is not None
    dump = tmp_path / "pci.dump"
    dump.write_text(dump_text)
    result = subprocess.run(
        [LSPCI, "-F", str(dump), *options], capture_output=True, text=True, check=True
    )
    return result.stdout


def section(output: str, bdf: str) -> str:
    """One function's block of ``lspci -v`` output."""
    for block in output.split("\n\n"):
        if block.startswith(bdf + " "):
            return block
    raise AssertionError(f"{bdf} not in lspci output:\n{output}")
