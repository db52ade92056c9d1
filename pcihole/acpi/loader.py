"""QEMU's BIOS linker/loader: tables in fw_cfg files that firmware places and patches.

Firmware (SeaBIOS ``src/fw/romfile_loader.c``, OVMF's QemuFwCfgAcpiPlatformDxe) reads
``etc/table-loader``, a list of 128-byte commands (QEMU ``hw/acpi/bios-linker-loader.c``):

- ALLOCATE a file in memory (``zone`` HIGH: below the top of low RAM; FSEG: the
  0xe0000-0xfffff BIOS area, where an OS looks for the RSDP), aligned;
- ADD_POINTER: the little-endian ``size``-byte value at ``offset`` in one file holds an
  offset into another file; add that file's address to it;
- ADD_CHECKSUM: set the byte at ``offset`` so that ``length`` bytes from ``start`` sum to 0
  (the byte must be 0 before; firmware subtracts the sum from it).

Commands run in order, so a table's pointers come before its checksum. QEMU pads the
command list to 4 KiB with zeros (firmware skips command 0), as ``Linker.blob`` does.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

FILE_NAME_SIZE = 56
"""Each name field, NUL-padded (fw_cfg's file name size)."""
COMMAND_SIZE = 128
LOADER_ALIGN = 4096
"""QEMU pads ``etc/table-loader`` to a multiple of this (its ACPI_BUILD_ALIGN_SIZE)."""
ALLOCATE = struct.Struct("<I56sIB")
ADD_POINTER = struct.Struct("<I56s56sIB")
ADD_CHECKSUM = struct.Struct("<I56sIII")


class Command(enum.IntEnum):
    ALLOCATE = 1
    ADD_POINTER = 2
    ADD_CHECKSUM = 3


class Zone(enum.IntEnum):
    """Where ALLOCATE puts a file."""

    HIGH = 1
    FSEG = 2


def _name(file: str) -> bytes:
    raw = file.encode("ascii")
    if not 0 < len(raw) < FILE_NAME_SIZE:
        raise ValueError(f"loader file name {file!r} must be 1-{FILE_NAME_SIZE - 1} bytes")
    return raw


@dataclass
class Linker:
    """The commands, in the order firmware will run them."""

    commands: list[bytes] = field(default_factory=list)

    def allocate(self, file: str, align: int, zone: Zone) -> None:
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a power of two")
        self.commands.append(ALLOCATE.pack(Command.ALLOCATE, _name(file), align, zone))

    def add_pointer(self, dest: str, offset: int, size: int, source: str) -> None:
        """The ``size``-byte field at ``offset`` of ``dest`` points into ``source``."""
        if size not in (1, 2, 4, 8):
            raise ValueError(f"pointer size {size} is not 1, 2, 4 or 8")
        self.commands.append(
            ADD_POINTER.pack(Command.ADD_POINTER, _name(dest), _name(source), offset, size)
        )

    def add_checksum(self, file: str, offset: int, start: int, length: int) -> None:
        """The byte at ``offset`` makes ``length`` bytes from ``start`` sum to zero."""
        if not start <= offset < start + length:
            raise ValueError(f"checksum byte {offset} is outside {start}+{length}")
        self.commands.append(
            ADD_CHECKSUM.pack(Command.ADD_CHECKSUM, _name(file), offset, start, length)
        )

    def blob(self) -> bytes:
        """``etc/table-loader``: every command in 128 bytes, zero-padded to 4 KiB."""
        data = b"".join(command.ljust(COMMAND_SIZE, b"\0") for command in self.commands)
        return data.ljust(-(-len(data) // LOADER_ALIGN) * LOADER_ALIGN or LOADER_ALIGN, b"\0")


@dataclass(frozen=True)
class LoaderCommand:
    """One decoded command (``decode``), for tests and dumps."""

    command: Command
    file: str
    source: str = ""
    """ADD_POINTER's source file."""
    values: tuple[int, ...] = ()
    """ALLOCATE: (align, zone); ADD_POINTER: (offset, size); ADD_CHECKSUM: (offset,
    start, length)."""


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii")


def decode(blob: bytes) -> list[LoaderCommand]:
    """The commands of an ``etc/table-loader`` (zero commands skipped, as firmware does)."""
    found = []
    for start in range(0, len(blob) - COMMAND_SIZE + 1, COMMAND_SIZE):
        entry = blob[start : start + COMMAND_SIZE]
        kind = int.from_bytes(entry[:4], "little")
        if kind == Command.ALLOCATE:
            _, file, align, zone = ALLOCATE.unpack_from(entry)
            found.append(LoaderCommand(Command.ALLOCATE, _text(file), "", (align, zone)))
        elif kind == Command.ADD_POINTER:
            _, dest, source, offset, size = ADD_POINTER.unpack_from(entry)
            found.append(
                LoaderCommand(Command.ADD_POINTER, _text(dest), _text(source), (offset, size))
            )
        elif kind == Command.ADD_CHECKSUM:
            _, file, offset, begin, length = ADD_CHECKSUM.unpack_from(entry)
            found.append(
                LoaderCommand(Command.ADD_CHECKSUM, _text(file), "", (offset, begin, length))
            )
    return found
