"""Configuration space as ``lspci -xxxx`` prints it, so that ``lspci -F FILE`` can decode it.

pciutils' dump reader (lib/dump.c) takes a line ``bb:dd.f <anything>`` to start a function,
then lines ``<hex offset>: xx xx ...`` of bytes, and a blank line to end it. We print the
offset with ``%02x`` like lspci does, 16 bytes a line, all 4096 bytes so that extended
capabilities decode too. ``lspci -F dump -xxxx`` prints the same text back.

One formatter: the models' registers (``format_lspci_dump``) and the pages a guest read
(``format_pages``) go through the same code.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.config import CLASS_CODE, CONFIG_SPACE_SIZE, REVISION_ID
from pcihole.pci.devices import Function
from pcihole.pci.errors import ConfigSpaceError

BYTES_PER_LINE = 16


def _title(bdf: Bdf, data: bytes, description: str | None) -> str:
    """The line that starts a function's block: its address, its model's name (or, with
    no model, its class and IDs from the bytes) and a non-zero revision."""
    if description is None:
        vendor, device = struct.unpack_from("<HH", data)
        class_code = int.from_bytes(data[CLASS_CODE : CLASS_CODE + 3], "little")
        description = f"Class {class_code >> 8:04x}: {vendor:04x}:{device:04x}"
    title = f"{bdf} {description}"
    revision = data[REVISION_ID]
    return title + (f" (rev {revision:02x})" if revision else "")


def format_block(bdf: Bdf, data: bytes, description: str | None = None) -> str:
    """One function's block: its title line, then 256 lines of 16 bytes."""
    if len(data) != CONFIG_SPACE_SIZE:
        raise ConfigSpaceError(f"{bdf}: {len(data)} bytes of config space, want 4096")
    lines = [_title(bdf, data, description)]
    for offset in range(0, CONFIG_SPACE_SIZE, BYTES_PER_LINE):
        chunk = data[offset : offset + BYTES_PER_LINE]
        lines.append(f"{offset:02x}: " + " ".join(f"{byte:02x}" for byte in chunk))
    return "\n".join(lines) + "\n"


def format_function(function: Function) -> str:
    """A model's block, from its registers as they are now."""
    return format_block(function.bdf, function.config.snapshot(), function.description)


def format_lspci_dump(functions: Iterable[Function]) -> str:
    """Every function's block followed by a blank line, exactly as ``lspci -xxxx`` ends them."""
    return "".join(format_function(function) + "\n" for function in functions)


def format_pages(
    pages: Mapping[GuestBdf, bytes], functions: Mapping[GuestBdf, Function] | None = None
) -> str:
    """Raw config pages the guest read, in address order; titles name the model of the
    function the guest reaches at each address (``Routing.functions``; the bytes alone
    decide everything lspci decodes)."""
    names = {bdf: function.description for bdf, function in (functions or {}).items()}
    return "".join(format_block(bdf, pages[bdf], names.get(bdf)) + "\n" for bdf in sorted(pages))
