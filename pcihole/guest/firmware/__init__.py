"""Flat firmware images that boot from the x86 reset vector, built with GNU binutils.

An image here runs unchanged under ``qemu-system-x86_64 -machine q35 -bios IMAGE`` and
under ``pcihole boot --bios IMAGE``: it is linked to end at 4 GiB, its last 16 bytes hold
the reset vector, and it talks to the machine only through what both give (CF8/CFC,
the host bridge's PCIEXBAR, ECAM, the debug console at 0x402, debug-exit at 0xf4).

``enumerate.S`` is the one image so far: see its header for what it does and prints.
Images are built like the test guests (``pcihole.guest.build``): the C preprocessor with
the layout constants as macros, GNU as, ld to a flat binary, cached by content hash.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pcihole import layout
from pcihole.devices.debug_exit import exit_status
from pcihole.errors import BadInput, Bug
from pcihole.guest.build import build_flat
from pcihole.layout import IMAGE_ALIGN, MAX_IMAGE_SIZE

FIRMWARE_DIR = Path(__file__).parent
FAIL_VALUE = 0x7F
"""What the firmware writes to debug-exit after an exception: status 255."""


@dataclass(frozen=True)
class FirmwareOptions:
    """What ``enumerate.S`` is built to do (each becomes an ``FW_*`` macro)."""

    size: int = IMAGE_ALIGN
    """Image bytes: a multiple of 64 KiB; it ends at 4 GiB."""
    exit_value: int = 0x10
    """Written to debug-exit at the end: exit status ``(value << 1) | 1`` (33 by default)."""
    ecam_base: int = layout.ECAM_BASE
    """Where PCIEXBAR puts the window (256 buses; 256 MiB aligned)."""
    ecam_move: int = 0
    """Non-zero: then move the window here by writing PCIEXBAR through ECAM."""
    ecam_move_length: int = 0
    """PCIEXBAR length code for the move: 0 = 256 buses, 1 = 128, 2 = 64."""
    scan_buses: int = layout.ECAM_MAX_BUSES
    """Buses each ring-3 scan probes."""
    ring3_passes: int = 2
    """Ring-3 scans (the first one touches every page first)."""
    ring0_buses: int = layout.ECAM_MAX_BUSES
    """Buses the single ring-0 scan probes (0: none). Ring-0 code may be emulated: slow."""

    def __post_init__(self) -> None:
        if self.size % IMAGE_ALIGN or not IMAGE_ALIGN <= self.size <= MAX_IMAGE_SIZE:
            raise BadInput(f"image size {self.size:#x} must be a multiple of 64 KiB up to 16 MiB")
        if not 0 <= self.exit_value < 1 << 32:
            raise BadInput(f"exit value {self.exit_value:#x} does not fit in 32 bits")
        if self.ecam_base % layout.ECAM_MAX_SIZE or not 0 < self.ecam_base < 1 << 32:
            raise BadInput(f"ECAM base {self.ecam_base:#x} is not 256 MiB aligned")
        if self.ecam_move_length not in (0, 1, 2):
            raise BadInput("ecam_move_length is 0 (256 buses), 1 (128) or 2 (64)")
        move_size = layout.ECAM_MAX_SIZE >> self.ecam_move_length
        if self.ecam_move % move_size or not 0 <= self.ecam_move < 1 << 32:
            raise BadInput(f"ECAM move {self.ecam_move:#x} is not {move_size:#x} aligned")
        for name, low in (("scan_buses", 1), ("ring0_buses", 0)):
            value = getattr(self, name)
            if not low <= value <= layout.ECAM_MAX_BUSES:
                raise BadInput(f"{name} must be {low} to {layout.ECAM_MAX_BUSES}")
        if not 1 <= self.ring3_passes <= 100:
            raise BadInput("ring3_passes must be 1 to 100")

    @property
    def base(self) -> int:
        """Guest-physical address of the image's first byte."""
        return layout.FIRMWARE_TOP - self.size

    def defines(self) -> dict[str, int]:
        values = {f"FW_{name.upper()}": value for name, value in asdict(self).items()}
        values["FW_FAIL_VALUE"] = FAIL_VALUE
        return values


def build_firmware(name: str = "enumerate", options: FirmwareOptions | None = None) -> bytes:
    """Build ``firmware/NAME.S`` into a flat image (cached) and return its bytes."""
    options = options or FirmwareOptions()
    source = FIRMWARE_DIR / f"{name}.S"
    if not source.is_file():
        known = sorted(p.stem for p in FIRMWARE_DIR.glob("*.S"))
        raise BadInput(f"no firmware {name!r}; known: {', '.join(known)}")
    symbols = {**layout.asm_symbols(), **options.defines()}
    flags = [f"-D{key}={value:#x}" for key, value in sorted(symbols.items())]
    image = build_flat(
        source, flags, base=options.base, entry="reset_vector", cache_name=f"firmware-{name}"
    )
    if len(image) != options.size:
        raise Bug(f"{name}: image is {len(image)} bytes, expected {options.size}")
    return image


def write_firmware(
    path: str | Path, name: str = "enumerate", options: FirmwareOptions | None = None
) -> Path:
    """Build the image and write it to ``path`` (for ``-bios``); returns the path."""
    target = Path(path)
    target.write_bytes(build_firmware(name, options))
    return target


# --- option ROMs -------------------------------------------------------------------------
ROM_UNIT = 512
"""An option ROM's size is a whole number of these (its third byte counts them)."""
ROM_MAX_UNITS = 255


def build_option_rom(name: str = "pvh") -> bytes:
    """Build ``firmware/NAME.S`` (cached) into a signed option ROM: linked at offset 0
    (it runs in real mode at whatever segment the firmware copies it to)."""
    source = FIRMWARE_DIR / f"{name}.S"
    if not source.is_file():
        raise Bug(f"no option ROM source {name!r} in {FIRMWARE_DIR}")
    flags = [f"-D{key}={value:#x}" for key, value in sorted(layout.asm_symbols().items())]
    code = build_flat(source, flags, base=0, entry="_start", cache_name=f"rom-{name}")
    return sign_option_rom(code)


def sign_option_rom(code: bytes) -> bytes:
    """Pad to whole 512-byte units, write their count at offset 2 and make the last byte
    the checksum (every byte sums to 0 mod 256), as SeaBIOS checks."""
    units = -(-len(code) // ROM_UNIT)
    if code[:2] != b"\x55\xaa" or not 1 <= units <= ROM_MAX_UNITS:
        raise Bug(f"not an option ROM of 1-{ROM_MAX_UNITS} units: {len(code)} bytes")
    image = bytearray(code.ljust(units * ROM_UNIT, b"\0"))
    image[2] = units
    image[-1] = -sum(image[:-1]) & 0xFF
    return bytes(image)


# --- reading what enumerate.S printed ----------------------------------------------------
_FIELD = re.compile(r"([a-z0-9-]+)=(0x[0-9a-f]+(?:,0x[0-9a-f]+)*)")
_FUNCTION = re.compile(r"fn ([0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ([0-9a-f]{4}):([0-9a-f]{4})")


def _fields(line: str) -> dict[str, int]:
    return {key: int(value.split(",")[0], 16) for key, value in _FIELD.findall(line)}


@dataclass
class Scan:
    """One timed brute-force scan as the firmware reported it."""

    ring: int
    number: int
    """Its pass number at that ring, from 1."""
    buses: int
    probes: int
    found: int
    ticks: int
    """RDTSC ticks the scan took, measured by the guest."""
    functions: list[tuple[str, int, int]] = field(default_factory=list)
    """``(bdf, vendor, device)`` of each function found."""
    start_line: int = 0
    """Index of its ``start`` line and of its result line in the output."""
    end_line: int = 0

    @property
    def name(self) -> str:
        return f"ring{self.ring}-pass{self.number}"


@dataclass
class EnumerateOutput:
    """Everything ``enumerate.S`` printed on the debug console, parsed."""

    host_bridge: int | None = None
    """Dword 0 of 00:00.0 through CF8/CFC (device << 16 | vendor)."""
    ecam_before: int | None = None
    """What the ECAM range read before PCIEXBAR was enabled."""
    pciexbar: int | None = None
    ecam: int | None = None
    cpuid: dict[str, list[int]] = field(default_factory=dict)
    scans: list[Scan] = field(default_factory=list)
    exit_value: int | None = None
    exception: str | None = None

    def scan(self, ring: int, number: int = 1) -> Scan:
        for scan in self.scans:
            if (scan.ring, scan.number) == (ring, number):
                return scan
        raise KeyError(f"no ring-{ring} scan number {number} in the output")


def parse_output(text: str) -> EnumerateOutput:
    """Parse the console output of ``enumerate.S`` (from QEMU or from pcihole alike)."""
    out = EnumerateOutput()
    current: Scan | None = None
    starts: dict[tuple[int, int], int] = {}
    for index, line in enumerate(text.splitlines()):
        fields = _fields(line)
        if line.startswith("fw enumerate"):
            out.host_bridge = fields.get("hostbridge")
            out.ecam_before = fields.get("ecam-before")
        elif line.startswith("pciexbar="):
            out.pciexbar, out.ecam = fields.get("pciexbar"), fields.get("ecam")
        elif line.startswith("cpuid"):
            out.cpuid = {
                key: [int(v, 16) for v in value.split(",")] for key, value in _FIELD.findall(line)
            }
        elif line.startswith("scan ") and line.endswith(" start"):
            starts[fields["ring"], fields["pass"]] = index
        elif line.startswith("scan "):
            key = (fields["ring"], fields["pass"])
            current = Scan(
                *key,
                buses=fields["buses"],
                probes=fields["probes"],
                found=fields["found"],
                ticks=fields["ticks"],
                start_line=starts.get(key, index),
                end_line=index,
            )
            out.scans.append(current)
        elif (match := _FUNCTION.fullmatch(line)) and current is not None:
            bdf, vendor, device = match.groups()
            current.functions.append((bdf, int(vendor, 16), int(device, 16)))
        elif line.startswith("exit "):
            out.exit_value = fields.get("value")
        elif line.startswith("fw exception"):
            out.exception = line
    return out


__all__ = [
    "EnumerateOutput",
    "FirmwareOptions",
    "Scan",
    "build_firmware",
    "exit_status",
    "parse_output",
    "write_firmware",
]
