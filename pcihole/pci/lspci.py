"""Configuration space as ``lspci -xxxx`` prints it, so that ``lspci -F FILE`` can decode it.

pciutils' dump reader (lib/dump.c) takes a line ``bb:dd.f <anything>`` to start a function,
then lines ``<hex offset>: xx xx ...`` of bytes, and a blank line to end it. We print the
offset with ``%02x`` like lspci does, 16 bytes a line, all 4096 bytes so that extended
capabilities decode too. ``lspci -F dump -xxxx`` prints the same text back.
"""

from __future__ import annotations

from collections.abc import Iterable

from pcihole.pci.config import CONFIG_SPACE_SIZE
from pcihole.pci.devices import Function

BYTES_PER_LINE = 16


def format_function(function: Function) -> str:
    """One function's block: its title line, then 256 lines of 16 bytes."""
    title = f"{function.bdf} {function.description}"
    revision = function.config.revision
    if revision:
        title += f" (rev {revision:02x})"
    data = function.config.snapshot()
    lines = [title]
    for offset in range(0, CONFIG_SPACE_SIZE, BYTES_PER_LINE):
        chunk = data[offset : offset + BYTES_PER_LINE]
        lines.append(f"{offset:02x}: " + " ".join(f"{byte:02x}" for byte in chunk))
    return "\n".join(lines) + "\n"


def format_lspci_dump(functions: Iterable[Function]) -> str:
    """Every function's block followed by a blank line, exactly as ``lspci -xxxx`` ends them."""
    return "".join(format_function(function) + "\n" for function in functions)
