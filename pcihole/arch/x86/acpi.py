"""Reads the ACPI tables firmware left in guest memory, as an OS finds them.

The RSDP is searched where ACPI says: the first KiB of the EBDA (its segment is the BIOS
data area word at 0x40E), then 0xE0000-0xFFFFF, on 16-byte boundaries, signature
``"RSD PTR "`` with a valid checksum. From it the RSDT (and the XSDT of ACPI 2.0+) list the
tables; the FADT points at the DSDT and the FACS (its X_ fields win when present).
Checksums are verified; a bad one is reported in ``AcpiTables.problems``, never fatal, so
a broken table can still be dumped and looked at. ``write_tables`` writes ``<NAME>.dat``
files that ``iasl -d`` disassembles, and the RSDP as ``RSDP.bin`` (iasl takes no RSDP file:
it has no table header).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pcihole import layout
from pcihole.memory.access import MEMORY_ERRORS

GuestReader = Callable[[int, int], bytes]
"""``read(address, length) -> bytes`` of guest-physical memory (``GuestRam.read`` is one);
outside guest memory it raises ``ValueError`` or a ``PciholeError``."""

RSDP_SIGNATURE = b"RSD PTR "
RSDP_V1 = struct.Struct("<8sB6sBI")
"""Signature, checksum, OEM ID, revision, RSDT address: 20 bytes, checksummed alone."""
RSDP_V2 = struct.Struct("<8sB6sBIIQB3x")
"""ACPI 2.0+ adds length, XSDT address and an extended checksum over ``length`` bytes."""
HEADER = struct.Struct("<4sIBB6s8sIII")
"""The common table header: signature, length, revision, checksum, OEM fields, creator."""
FACS_HEADER = struct.Struct("<4sI")
"""The FACS has a signature and a length but no checksum."""
RSDP_ALIGN = 16
MAX_TABLE_SIZE = 16 << 20
"""Larger lengths are taken for garbage rather than read."""
FADT_FIRMWARE_CTRL_OFFSET = 36
FADT_DSDT_OFFSET = 40
FADT_X_FIRMWARE_CTRL_OFFSET = 132
FADT_X_DSDT_OFFSET = 140
_SIGNATURE_PATTERN = re.compile(rb"[A-Z0-9_]{4}")


@dataclass(frozen=True, slots=True)
class AcpiTable:
    """One table as found in guest memory."""

    signature: str
    """The header's four characters (``RSDP`` for the root pointer)."""
    address: int
    data: bytes
    checksum_ok: bool | None
    """None for the FACS, which has no checksum."""


@dataclass
class AcpiTables:
    """What ``read_acpi_tables`` found: the RSDP, then the tables in the order met."""

    rsdp: AcpiTable | None = None
    tables: list[AcpiTable] = field(default_factory=list)
    """The RSDT and XSDT, the tables they list, the FADT's FACS and DSDT; each once."""
    problems: list[str] = field(default_factory=list)
    """Bad checksums, unreadable pointers, a missing RSDP: one line each."""

    def by_name(self) -> dict[str, bytes]:
        """Table bytes by unique name: the signature, numbered from 1 when it repeats."""
        counts: dict[str, int] = {}
        for table in self.tables:
            counts[table.signature] = counts.get(table.signature, 0) + 1
        seen: dict[str, int] = {}
        named = {}
        for table in self.tables:
            name = table.signature
            if counts[name] > 1:
                seen[name] = seen.get(name, 0) + 1
                name = f"{name}{seen[name]}"
            named[name] = table.data
        return named

    def write_tables(self, directory: str | Path) -> list[Path]:
        """One ``<NAME>.dat`` file per table in ``directory`` (made if needed), after
        ``RSDP.bin`` when there is an RSDP."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        if self.rsdp is not None:
            paths.append(folder / "RSDP.bin")
            paths[0].write_bytes(self.rsdp.data)
        for name, data in self.by_name().items():
            path = folder / f"{name}.dat"
            path.write_bytes(data)
            paths.append(path)
        return paths


def checksum(data: bytes) -> int:
    """The byte sum modulo 256: 0 for a valid table."""
    return sum(data) & 0xFF


class _Walker:
    """Reads guest memory for one dump, turning every failure into a problem line."""

    def __init__(self, read: GuestReader) -> None:
        self._read = read
        self.found = AcpiTables()
        self._visited: set[int] = set()

    def read(self, address: int, length: int, what: str) -> bytes | None:
        try:
            data = self._read(address, length)
        except MEMORY_ERRORS as error:
            self.found.problems.append(f"{what} at {address:#x}: unreadable ({error})")
            return None
        if len(data) != length:
            self.found.problems.append(f"{what} at {address:#x}: short read")
            return None
        return data

    def add(self, signature: str, address: int, data: bytes, checked: bool) -> AcpiTable:
        ok = checksum(data) == 0 if checked else None
        if ok is False:
            self.found.problems.append(
                f"{signature} at {address:#x}: checksum leaves {checksum(data):#04x}, not 0"
            )
        table = AcpiTable(signature, address, data, ok)
        if signature != "RSDP":
            self.found.tables.append(table)
        return table

    def claim(self, address: int) -> bool:
        """True the first time a non-null address is met: each table is read once."""
        if address == 0 or address in self._visited:
            return False
        self._visited.add(address)
        return True

    def table(self, address: int, what: str) -> bytes | None:
        """Reads and records the table at ``address`` once; None if unusable or seen."""
        if not self.claim(address):
            return None
        header = self.read(address, HEADER.size, what)
        if header is None:
            return None
        signature, length = header[:4], HEADER.unpack(header)[1]
        if not _SIGNATURE_PATTERN.fullmatch(signature):
            self.found.problems.append(f"{what} at {address:#x}: no table there ({signature!r})")
            return None
        name = signature.decode("ascii")
        if not HEADER.size <= length <= MAX_TABLE_SIZE:
            self.found.problems.append(f"{name} at {address:#x}: implausible length {length}")
            return None
        data = self.read(address, length, name)
        if data is not None:
            self.add(name, address, data, checked=True)
        return data

    def facs(self, address: int) -> None:
        if not self.claim(address):
            return
        header = self.read(address, FACS_HEADER.size, "FACS")
        if header is None:
            return
        signature, length = FACS_HEADER.unpack(header)
        if signature != b"FACS" or not FACS_HEADER.size <= length <= MAX_TABLE_SIZE:
            self.found.problems.append(f"FACS at {address:#x}: no FACS there ({signature!r})")
            return
        data = self.read(address, length, "FACS")
        if data is not None:
            self.add("FACS", address, data, checked=False)


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def _candidates(walker: _Walker) -> Iterator[tuple[int, bytes]]:
    """16-byte aligned places holding the RSDP signature: the EBDA's first KiB, then the
    BIOS area; with the bytes from there to the end of the area."""
    areas = []
    segment = walker.read(layout.BDA_EBDA_SEGMENT, 2, "EBDA pointer")
    if segment is not None and int.from_bytes(segment, "little"):
        areas.append((int.from_bytes(segment, "little") << 4, layout.EBDA_RSDP_SEARCH_SIZE))
    areas.append((layout.BIOS_AREA_START, layout.BIOS_AREA_END - layout.BIOS_AREA_START))
    for start, size in areas:
        area = walker.read(start, size, "RSDP search area")
        if area is None:
            continue
        position = area.find(RSDP_SIGNATURE)
        while position >= 0:
            if position % RSDP_ALIGN == 0:
                yield start + position, area[position:]
            position = area.find(RSDP_SIGNATURE, position + 1)


def _find_rsdp(walker: _Walker) -> None:
    """Records the first RSDP whose checksum holds; notes the ones that fail."""
    for address, rest in _candidates(walker):
        if len(rest) < RSDP_V1.size or checksum(rest[: RSDP_V1.size]):
            walker.found.problems.append(f"RSDP candidate at {address:#x}: bad checksum")
            continue
        revision = rest[15]
        length = RSDP_V1.size
        if revision >= 2 and len(rest) >= RSDP_V2.size:
            length = max(RSDP_V2.size, min(_u32(rest, 20), len(rest)))
        walker.claim(address)
        walker.found.rsdp = walker.add("RSDP", address, rest[:length], checked=True)
        return
    walker.found.problems.append("no RSDP in the EBDA's first KiB nor in 0xe0000-0xfffff")


def _follow_fadt(walker: _Walker, fadt: bytes) -> None:
    def pointer(legacy: int, extended: int) -> int:
        if len(fadt) >= extended + 8 and _u64(fadt, extended):
            return _u64(fadt, extended)
        return _u32(fadt, legacy) if len(fadt) >= legacy + 4 else 0

    walker.facs(pointer(FADT_FIRMWARE_CTRL_OFFSET, FADT_X_FIRMWARE_CTRL_OFFSET))
    walker.table(pointer(FADT_DSDT_OFFSET, FADT_X_DSDT_OFFSET), "DSDT")


def read_acpi_tables(read: GuestReader) -> AcpiTables:
    """Every table reachable from the RSDP, each once, with the problems met on the way."""
    walker = _Walker(read)
    _find_rsdp(walker)
    if walker.found.rsdp is None:
        return walker.found
    rsdp = walker.found.rsdp.data
    roots = [(_u32(rsdp, 16), "RSDT", 4)]
    if len(rsdp) >= RSDP_V2.size:
        roots.insert(0, (_u64(rsdp, 24), "XSDT", 8))
    for address, what, width in roots:
        root = walker.table(address, what)
        if root is None:
            continue
        body = root[HEADER.size :]
        for index in range(len(body) // width):
            entry = int.from_bytes(body[index * width : (index + 1) * width], "little")
            table = walker.table(entry, f"{what} entry {index}")
            if table is not None and table[:4] == b"FACP":
                _follow_fadt(walker, table)
    return walker.found
