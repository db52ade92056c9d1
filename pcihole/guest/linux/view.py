"""What the initramfs's ``init`` prints of the guest's PCI view, read back and compared
with the topology pcihole built.

``init`` prints, between ``BEGIN`` and ``END`` lines on the serial console, the line
``devices`` followed by ``/proc/bus/pci/devices`` (per function: bus and devfn in 4 hex
digits, vendor and device in 8, then resources), and for every function a line ``config
0000:BB:DD.F`` followed by ``od -A x -t x1`` of its sysfs ``config`` file (offset, then up
to 16 bytes; ``*`` stands for repeats of the line before up to the next offset; a last
offset alone gives the length). Kernel log lines (``[  12.345678] ...``) may fall among
them and are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pcihole.errors import GuestFault
from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.config import (
    CLASS_CODE,
    DEVICE_ID,
    HEADER_TYPE,
    SECONDARY_BUS,
    SUBORDINATE_BUS,
    VENDOR_ID,
)
from pcihole.pci.devices import Function
from pcihole.pci.errors import BdfError
from pcihole.pci.routing import route

BEGIN = "pcihole-pci-view: begin"
END = "pcihole-pci-view: end"
INIT_STARTED = "pcihole-init: started"
"""The first line ``init`` prints: user space has been reached."""
_KERNEL_LOG = re.compile(r"\[\s*\d+\.\d+\]")
_OD_LINE = re.compile(r"([0-9a-f]+)((?: [0-9a-f]{2})*)")
_PROC_LINE = re.compile(r"([0-9a-f]{4})\s+([0-9a-f]{8})(?:\s.*)?")
HEADER_TYPE_LAYOUT = 0x7F
BRIDGE_HEADER = 1


class GuestViewError(GuestFault):
    """The console output holds no complete, well-formed PCI view."""


@dataclass(frozen=True)
class GuestFunction:
    """One function as the guest kernel shows it: its address (as the guest numbered
    it) and config bytes."""

    bdf: GuestBdf
    config: bytes

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    @property
    def ids(self) -> tuple[int, int, int]:
        """(vendor, device, class code with its programming interface)."""
        return self.read(VENDOR_ID, 2), self.read(DEVICE_ID, 2), self.read(CLASS_CODE, 3)

    @property
    def bridge_buses(self) -> tuple[int, int] | None:
        """(secondary, subordinate) of a bridge, None for an endpoint."""
        if self.read(HEADER_TYPE, 1) & HEADER_TYPE_LAYOUT != BRIDGE_HEADER:
            return None
        return self.read(SECONDARY_BUS, 1), self.read(SUBORDINATE_BUS, 1)


@dataclass(frozen=True)
class GuestPciView:
    """``/proc/bus/pci/devices`` (address -> (vendor, device)) and the config bytes."""

    devices: Mapping[GuestBdf, tuple[int, int]]
    functions: Mapping[GuestBdf, GuestFunction]


def _view_lines(text: str) -> list[str]:
    lines = [line.strip() for line in text.replace("\r", "").split("\n")]
    if BEGIN not in lines:
        raise GuestViewError(f"no {BEGIN!r} line: the guest never printed its PCI view")
    start = lines.index(BEGIN) + 1
    if END not in lines[start:]:
        raise GuestViewError(f"no {END!r} line: the guest's PCI view is cut short")
    body = lines[start : lines.index(END, start)]
    return [line for line in body if line and not _KERNEL_LOG.match(line)]


def parse_od(lines: Iterable[str]) -> bytes:
    """The bytes ``od -A x -t x1`` printed as ``lines``."""
    data, previous, pending_repeat = bytearray(), b"", False
    for line in lines:
        if line == "*":
            pending_repeat = True
            continue
        match = _OD_LINE.fullmatch(line)
        if match is None:
            raise GuestViewError(f"not a line of od output: {line!r}")
        offset = int(match[1], 16)
        while pending_repeat and previous and len(data) < offset:
            data += previous
        pending_repeat = False
        if offset != len(data):
            raise GuestViewError(f"od output skips from {len(data):#x} to {offset:#x}")
        previous = bytes(int(byte, 16) for byte in match[2].split())
        data += previous
    return bytes(data)


def _parse_proc(line: str) -> tuple[GuestBdf, tuple[int, int]]:
    match = _PROC_LINE.fullmatch(line)
    if match is None:
        raise GuestViewError(f"not a line of /proc/bus/pci/devices: {line!r}")
    address, ids = int(match[1], 16), int(match[2], 16)
    bdf = GuestBdf(Bdf(address >> 8, address >> 3 & 0x1F, address & 7))
    return bdf, (ids >> 16, ids & 0xFFFF)


def parse_view(text: str) -> GuestPciView:
    """The PCI view in console output ``text``; GuestViewError when there is none."""
    lines = _view_lines(text)
    if not lines or lines[0] != "devices":
        raise GuestViewError("the PCI view does not start with its 'devices' line")
    devices: dict[GuestBdf, tuple[int, int]] = {}
    configs: dict[GuestBdf, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line.startswith("config "):
            try:
                bdf = GuestBdf(Bdf.parse(line.removeprefix("config ")))
            except BdfError as error:
                raise GuestViewError(f"{line!r}: {error}") from error
            current = configs.setdefault(bdf, [])
        elif current is None:
            bdf, ids = _parse_proc(line)
            devices[bdf] = ids
        else:
            current.append(line)
    functions = {bdf: GuestFunction(bdf, parse_od(od)) for bdf, od in configs.items()}
    return GuestPciView(devices, functions)


def compare(view: GuestPciView, functions: Iterable[Function]) -> list[str]:
    """How the guest's view differs from the functions pcihole built, routed under the
    bus numbers their bridges hold now: every function at the same address with the same
    vendor, device and class, and every bridge with the same secondary and subordinate
    bus. Empty when they agree."""
    expected = route(functions).functions
    differences = [
        f"{bdf}: pcihole has no function there, the guest sees one"
        for bdf in sorted(set(view.functions) - set(expected))
    ]
    differences += [
        f"{bdf}: the guest does not see {expected[bdf].model}"
        for bdf in sorted(set(expected) - set(view.functions))
    ]
    differences += [
        f"{bdf}: in /proc/bus/pci/devices but no config printed"
        for bdf in sorted(set(view.devices) - set(view.functions))
    ]
    for bdf in sorted(set(expected) & set(view.functions)):
        built, seen = expected[bdf].config, view.functions[bdf]
        want = (built.read(VENDOR_ID, 2), built.read(DEVICE_ID, 2), built.read(8, 4) >> 8)
        if seen.ids != want:
            differences.append(f"{bdf}: guest sees {_ids(seen.ids)}, pcihole built {_ids(want)}")
        proc = view.devices.get(bdf)
        if proc is not None and proc != seen.ids[:2]:
            differences.append(f"{bdf}: /proc says {proc[0]:04x}:{proc[1]:04x}, config disagrees")
        if expected[bdf].bridge_buses is not None:
            buses = (built.read(SECONDARY_BUS, 1), built.read(SUBORDINATE_BUS, 1))
            if seen.bridge_buses != buses:
                differences.append(
                    f"{bdf}: guest's bridge buses {seen.bridge_buses}, pcihole's registers {buses}"
                )
    return differences


def _ids(ids: tuple[int, int, int]) -> str:
    return f"[{ids[0]:04x}:{ids[1]:04x}] class {ids[2]:06x}"


__all__ = [
    "BEGIN",
    "END",
    "GuestFunction",
    "GuestPciView",
    "GuestViewError",
    "compare",
    "parse_od",
    "parse_view",
]
