"""An AML encoder for what pcihole's DSDT says: names, data, devices, resource templates.

Every function returns the bytes of one AML term (ACPI 6.5, chapter 20) or resource
descriptor (chapter 6.4); terms are concatenated by the caller (``scope(name, *terms)``).
Integers take the shortest encoding (Zero, One, then byte, word, dword and qword
prefixes), as QEMU's encoder does; package lengths take the fewest bytes. ``iasl -d`` is
the judge (tests/unit/test_acpi_aml.py).
"""

from __future__ import annotations

import enum
import struct

from pcihole.errors import Bug

# Opcodes (ACPI 6.5, 20.3).
ZERO_OP = 0x00
ONE_OP = 0x01
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
"""After ``EXT_OP_PREFIX``."""
ROOT_CHAR = ord("\\")
PARENT_PREFIX = ord("^")
LOCAL0_OP = 0x60
ARG0_OP = 0x68
STORE_OP = 0x70
AND_OP = 0x7B
OR_OP = 0x7D
CREATE_DWORD_FIELD_OP = 0x8A
LNOT_OP = 0x92
LEQUAL_OP = 0x93
IF_OP = 0xA0
ELSE_OP = 0xA1
RETURN_OP = 0xA4
ONES_OP = 0xFF

# Resource descriptors (ACPI 6.5, 6.4).
END_TAG = 0x79
IO_TAG = 0x47
IRQ_NO_FLAGS_TAG = 0x22
MEMORY32_FIXED_TAG = 0x86
DWORD_SPACE_TAG = 0x87
WORD_SPACE_TAG = 0x88
EXTENDED_IRQ_TAG = 0x89
QWORD_SPACE_TAG = 0x8A

NAME_SEGMENT_SIZE = 4
MAX_PACKAGE_LENGTH = 1 << 28


class AmlError(Bug):
    """A value AML cannot encode (a bad name, a length out of range)."""


class Space(enum.IntEnum):
    """Address space descriptors' resource type."""

    MEMORY = 0
    IO = 1
    BUS_NUMBER = 2


class Cache(enum.IntEnum):
    """Memory descriptors' cacheability (type-specific flags bits 2:1)."""

    NON_CACHEABLE = 0
    CACHEABLE = 1
    WRITE_COMBINING = 2
    PREFETCHABLE = 3


PRODUCER_FIXED = 0x0C
"""General flags: ResourceProducer, PosDecode, MinFixed, MaxFixed (bits 0-3 = 0, 0, 1, 1)."""
IO_ENTIRE_RANGE = 0x03
"""WordIO's type-specific flags: EntireRange, TypeStatic, DenseTranslation."""
READ_WRITE = 0x01
DECODE_16 = 0x01
"""IO's information byte: the device decodes 16 address bits."""


# --- encodings -----------------------------------------------------------------------------
def package_length(body: bytes) -> bytes:
    """``PkgLength`` followed by ``body``: the length counts its own bytes."""
    for extra in range(4):
        total = len(body) + 1 + extra
        if extra == 0 and total <= 0x3F:
            return bytes([total]) + body
        if extra and total < 1 << (4 + 8 * extra):
            lead = extra << 6 | total & 0x0F
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([lead]) + rest + body
    raise AmlError(f"a package of {len(body)} bytes is past AML's {MAX_PACKAGE_LENGTH}")


def name_segment(segment: str) -> bytes:
    """One four-character segment, padded with ``_`` as iasl pads ``_SB`` to ``_SB_``."""
    if not 1 <= len(segment) <= NAME_SEGMENT_SIZE or not (
        segment.isascii()
        and (segment[0].isupper() or segment[0] == "_")
        and all(c.isupper() or c.isdigit() or c == "_" for c in segment)
    ):
        raise AmlError(f"{segment!r} is not an AML name segment")
    return segment.ljust(NAME_SEGMENT_SIZE, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """``\\_SB.PCI0``, ``^PCI0``, ``_HID``: a root or parent prefix, then the segments."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    while path.startswith("^"):
        prefix, path = prefix + bytes([PARENT_PREFIX]), path[1:]
    segments = [name_segment(part) for part in path.split(".")] if path else []
    if not segments:
        return prefix + bytes([ZERO_OP])  # NullName
    if len(segments) == 1:
        return prefix + segments[0]
    if len(segments) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segments)
    return prefix + bytes([MULTI_NAME_PREFIX, len(segments)]) + b"".join(segments)


def integer(value: int) -> bytes:
    """The shortest integer term: Zero, One, Ones (all 64 bits), or a prefixed constant."""
    if not 0 <= value < 1 << 64:
        raise AmlError(f"{value} is not a 64-bit unsigned integer")
    if value in (0, 1):
        return bytes([ZERO_OP if value == 0 else ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    return bytes([QWORD_PREFIX]) + value.to_bytes(8, "little")


def string(text: str) -> bytes:
    """A NUL-terminated ASCII string constant."""
    if not text.isascii() or "\0" in text:
        raise AmlError(f"{text!r} is not an AML string")
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def eisa_id(text: str) -> int:
    """``EISAID("PNP0A08")`` as an integer: three letters in 5 bits each, four hex digits,
    stored big-endian in a little-endian dword (iasl shows it back as ``EisaId``)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise AmlError(f"{text!r} is not an EISA ID (three capitals, four hex digits)")
    try:
        product = int(text[3:], 16)
    except ValueError:
        raise AmlError(f"{text!r} is not an EISA ID (three capitals, four hex digits)") from None
    vendor = sum((ord(c) - 0x40) << shift for c, shift in zip(text[:3], (10, 5, 0), strict=True))
    return int.from_bytes(struct.pack(">HH", vendor, product), "little")


def name(path: str, value: bytes) -> bytes:
    """``Name (path, value)``; ``value`` is an encoded data term."""
    return bytes([NAME_OP]) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    """``Package () {elements}``, each an encoded data term."""
    if len(elements) > 0xFF:
        raise AmlError(f"a Package holds at most 255 elements, not {len(elements)}")
    return bytes([PACKAGE_OP]) + package_length(bytes([len(elements)]) + b"".join(elements))


def buffer(data: bytes) -> bytes:
    """``Buffer () {data}``."""
    return bytes([BUFFER_OP]) + package_length(integer(len(data)) + data)


def scope(path: str, *terms: bytes) -> bytes:
    return bytes([SCOPE_OP]) + package_length(name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + package_length(name_string(path) + b"".join(terms))


def method(path: str, arguments: int, *terms: bytes, serialized: bool = False) -> bytes:
    """``Method (path, arguments, NotSerialized | Serialized) {terms}``."""
    if not 0 <= arguments <= 7:
        raise AmlError(f"a method takes 0-7 arguments, not {arguments}")
    flags = arguments | (0x08 if serialized else 0)
    return bytes([METHOD_OP]) + package_length(name_string(path) + bytes([flags]) + b"".join(terms))


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


def arg(index: int) -> bytes:
    """``ArgN`` (0-6)."""
    return bytes([ARG0_OP + index])


def local(index: int) -> bytes:
    """``LocalN`` (0-7)."""
    return bytes([LOCAL0_OP + index])


def store(source: bytes, target: bytes) -> bytes:
    return bytes([STORE_OP]) + source + target


def and_(left: bytes, right: bytes, target: bytes) -> bytes:
    return bytes([AND_OP]) + left + right + target


def or_(left: bytes, right: bytes, target: bytes) -> bytes:
    return bytes([OR_OP]) + left + right + target


def equal(left: bytes, right: bytes) -> bytes:
    return bytes([LEQUAL_OP]) + left + right


def not_equal(left: bytes, right: bytes) -> bytes:
    return bytes([LNOT_OP, LEQUAL_OP]) + left + right


def if_(predicate: bytes, *terms: bytes) -> bytes:
    return bytes([IF_OP]) + package_length(predicate + b"".join(terms))


def else_(*terms: bytes) -> bytes:
    return bytes([ELSE_OP]) + package_length(b"".join(terms))


def create_dword_field(source: bytes, index: bytes, field: str) -> bytes:
    return bytes([CREATE_DWORD_FIELD_OP]) + source + index + name_string(field)


def uuid(text: str) -> bytes:
    """``ToUUID ("...")``: the 16-byte buffer, first three groups little-endian."""
    parts = text.split("-")
    if [len(part) for part in parts] != [8, 4, 4, 4, 12]:
        raise AmlError(f"{text!r} is not a UUID")
    raw = bytes.fromhex("".join(parts))
    return buffer(raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:])


# --- resource descriptors ------------------------------------------------------------------
def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate () {descriptors}``: a buffer ended by an end tag (checksum 0,
    which means "none")."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))


def io(minimum: int, maximum: int, alignment: int, length: int) -> bytes:
    """``IO (Decode16, minimum, maximum, alignment, length)``."""
    return struct.pack("<BBHHBB", IO_TAG, DECODE_16, minimum, maximum, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    """``IRQNoFlags () {irqs}`` (ISA IRQs 0-15, edge, active high, exclusive)."""
    if not all(0 <= irq < 16 for irq in irqs):
        raise AmlError(f"IRQNoFlags takes ISA IRQs 0-15, not {irqs}")
    return struct.pack("<BH", IRQ_NO_FLAGS_TAG, sum(1 << irq for irq in set(irqs)))


def interrupt(
    *gsis: int, level: bool = True, active_low: bool = False, shared: bool = True
) -> bytes:
    """``Interrupt (ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Shared|Exclusive)
    {gsis}``: the extended interrupt descriptor."""
    if not 1 <= len(gsis) <= 0xFF:
        raise AmlError("Interrupt takes 1-255 interrupt numbers")
    flags = 0x01 | (0 if level else 0x02) | (0x04 if active_low else 0) | (0x08 if shared else 0)
    body = struct.pack("<BB", flags, len(gsis)) + b"".join(struct.pack("<I", g) for g in gsis)
    return struct.pack("<BH", EXTENDED_IRQ_TAG, len(body)) + body


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """``Memory32Fixed (ReadWrite|ReadOnly, base, length)``."""
    return struct.pack("<BHBII", MEMORY32_FIXED_TAG, 9, int(writable), base, length)


def _address_space(
    tag: int, width: int, space: Space, type_flags: int, minimum: int, maximum: int
) -> bytes:
    """A producer's fixed window [minimum, maximum], granularity and translation 0."""
    if not 0 <= minimum <= maximum < 1 << (8 * width):
        raise AmlError(f"window {minimum:#x}-{maximum:#x} does not fit {8 * width} bits")
    code = {2: "H", 4: "I", 8: "Q"}[width]
    fields = struct.pack(f"<5{code}", 0, minimum, maximum, 0, maximum - minimum + 1)
    body = bytes([space, PRODUCER_FIXED, type_flags]) + fields
    return struct.pack("<BH", tag, len(body)) + body


def word_bus_number(minimum: int, maximum: int) -> bytes:
    """``WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0,
    length)``."""
    return _address_space(WORD_SPACE_TAG, 2, Space.BUS_NUMBER, 0, minimum, maximum)


def word_io(minimum: int, maximum: int) -> bytes:
    """``WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)``."""
    return _address_space(WORD_SPACE_TAG, 2, Space.IO, IO_ENTIRE_RANGE, minimum, maximum)


def dword_memory(minimum: int, maximum: int, cache: Cache) -> bytes:
    """``DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, cache, ReadWrite,
    ...)``, AddressRangeMemory, TypeStatic."""
    flags = READ_WRITE | cache << 1
    return _address_space(DWORD_SPACE_TAG, 4, Space.MEMORY, flags, minimum, maximum)


def qword_memory(minimum: int, maximum: int, cache: Cache) -> bytes:
    """``QWordMemory``, as ``dword_memory`` with 64-bit fields."""
    flags = READ_WRITE | cache << 1
    return _address_space(QWORD_SPACE_TAG, 8, Space.MEMORY, flags, minimum, maximum)
