"""The AML encoder, with iasl as the judge: what it disassembles, and what it compiles the
disassembly back to (the same bytes, where iasl and QEMU choose the same encodings)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pcihole.acpi import aml
from pcihole.acpi.tables import table
from pcihole.arch.x86.acpi import checksum
from tests.seabios_ref import iasl_missing_reason
from tests.support import HANG_SECONDS


def decoded_package_length(data: bytes) -> tuple[int, int]:
    """(PkgLength, bytes it took), read as ACPI 6.5 section 20.2.4 says."""
    lead = data[0]
    follow = lead >> 6
    if follow == 0:
        return lead & 0x3F, 1
    value = lead & 0x0F
    for index in range(follow):
        value |= data[1 + index] << (4 + 8 * index)
    return value, 1 + follow


@pytest.mark.parametrize("size", [0, 0x3E, 0x3F, 0xFFD, 0xFFE, 0xFFFFC, 0xFFFFD, 0x100000])
def test_package_length_counts_itself_in_the_fewest_bytes(size: int) -> None:
    encoded = aml.package_length(bytes(size))
    length, taken = decoded_package_length(encoded)
    assert length == len(encoded) == size + taken
    assert (
        taken == 1
        if size + 1 <= 0x3F
        else taken == min(n for n in (2, 3, 4) if size + n < 1 << (4 + 8 * (n - 1)))
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (2, "0a02"),
        (0xFF, "0aff"),
        (0x100, "0b0001"),
        (0xFFFF, "0bffff"),
        (0x10000, "0c00000100"),
        (0xFFFFFFFF, "0cffffffff"),
        (1 << 32, "0e0000000001000000"),
        ((1 << 64) - 1, "ff"),
    ],
)
def test_integers_take_the_shortest_encoding(value: int, encoded: str) -> None:
    assert aml.integer(value).hex() == encoded


def test_eisa_ids_and_names() -> None:
    # Values every PC firmware carries: PNP0A03 is 0x030AD041, PNP0A08 0x080AD041.
    assert aml.eisa_id("PNP0A03") == 0x030AD041
    assert aml.eisa_id("PNP0A08") == 0x080AD041
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("^^FOO") == b"^^FOO_"
    assert aml.name_string("\\A.B.C") == b"\\\x2f\x03A___B___C___"
    assert aml.name_string("\\") == b"\\\x00"
    for bad in ("lower", "TOOLONG", "0ABC", "A-B"):
        with pytest.raises(aml.AmlError):
            aml.name_string(bad)
    with pytest.raises(aml.AmlError):
        aml.eisa_id("PNP0A0G")
    with pytest.raises(aml.AmlError):
        aml.integer(-1)


def sample_dsdt() -> bytes:
    """One of every construct the encoder offers (revision 2: 64-bit integers)."""
    resources = aml.resource_template(
        aml.word_bus_number(0, 0x3F),
        aml.io(0xCF8, 0xCF8, 1, 8),
        aml.word_io(0xD00, 0xFFFF),
        aml.dword_memory(0xA0000, 0xBFFFF, aml.Cache.CACHEABLE),
        aml.qword_memory(1 << 32, (9 << 32) - 1, aml.Cache.PREFETCHABLE),
        aml.memory32_fixed(0xFED00000, 0x400, writable=False),
        aml.irq_no_flags(4, 8),
        aml.interrupt(16, 17),
        aml.interrupt(5, level=False, active_low=True, shared=False),
    )
    osc = aml.method(
        "_OSC",
        4,
        aml.create_dword_field(aml.arg(3), aml.integer(0), "CDW1"),
        aml.if_(
            aml.equal(aml.arg(0), aml.uuid("33db4d5b-1ff7-401c-9657-7441c03dd766")),
            aml.create_dword_field(aml.arg(3), aml.integer(8), "CDW3"),
            aml.and_(aml.name_string("CDW3"), aml.integer(0x1F), aml.local(0)),
            aml.if_(
                aml.not_equal(aml.arg(1), aml.integer(1)),
                aml.or_(aml.name_string("CDW1"), aml.integer(8), aml.name_string("CDW1")),
            ),
            aml.store(aml.local(0), aml.name_string("CDW3")),
        ),
        aml.else_(aml.or_(aml.name_string("CDW1"), aml.integer(4), aml.name_string("CDW1"))),
        aml.return_(aml.arg(3)),
    )
    body = aml.scope(
        "_SB",
        aml.device(
            "PCI0",
            aml.name("_HID", aml.integer(aml.eisa_id("PNP0A08"))),
            aml.name("_UID", aml.integer(0)),
            aml.name("_CRS", resources),
            osc,
            aml.method("_STA", 0, aml.return_(aml.integer(0x0F))),
        ),
        aml.device("DRAC", aml.name("_HID", aml.string("PNP0C01"))),
    )
    body += aml.name("BYTS", aml.buffer(bytes(range(5))))
    body += aml.name("WIDE", aml.integer(0x123456789))
    body += aml.name("_S5", aml.package(*(aml.integer(v) for v in (0, 0, 0, 0))))
    return sealed(table(b"DSDT", 2, body))


def sealed(data: bytes) -> bytes:
    """The table with its checksum set, as the loader sets it in guest memory."""
    fixed = bytearray(data)
    fixed[9] = -checksum(data) & 0xFF
    return bytes(fixed)


def disassemble(directory: Path, name: str, data: bytes) -> str:
    (directory / f"{name}.dat").write_bytes(data)
    run = subprocess.run(
        ["iasl", "-d", f"{name}.dat"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )
    said = run.stdout + run.stderr
    assert run.returncode == 0 and "Error" not in said and "Warning" not in said, said
    return (directory / f"{name}.dsl").read_text()


@pytest.fixture
def iasl() -> None:
    reason = iasl_missing_reason()
    if reason is not None:
        pytest.skip(reason)


def test_iasl_reads_every_construct(iasl: None, tmp_path: Path) -> None:
    text = disassemble(tmp_path, "DSDT", sample_dsdt())
    for expected in [
        'Name (_HID, EisaId ("PNP0A08")',
        'Name (_HID, "PNP0C01"',
        "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
        "0x003F,             // Range Maximum",
        "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
        "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,",
        "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,",
        "0x00000008FFFFFFFF, // Range Maximum",
        "0x0000000800000000, // Length",
        "Memory32Fixed (ReadOnly,",
        "IRQNoFlags ()",
        "{4,8}",
        "Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, )",
        "Interrupt (ResourceConsumer, Edge, ActiveLow, Exclusive, ,, )",
        'ToUUID ("33db4d5b-1ff7-401c-9657-7441c03dd766")',
        "CreateDWordField (Arg3, Zero, CDW1)",
        "Method (_STA, 0, NotSerialized)",
        "Return (0x0F)",
        "Name (WIDE, 0x0000000123456789)",
        "Name (_S5, Package (0x04)",
    ]:
        assert expected in text, expected


def test_iasl_compiles_the_disassembly_back_to_the_same_bytes(iasl: None, tmp_path: Path) -> None:
    ours = sample_dsdt()
    disassemble(tmp_path, "DSDT", ours)
    run = subprocess.run(
        ["iasl", "-p", "again", "DSDT.dsl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    theirs = (tmp_path / "again.aml").read_bytes()
    # iasl writes its own compiler ID and version and checksum: compare from the OEM fields
    # to the creator ID, and the whole AML body.
    assert theirs[:9] == ours[:9]
    assert theirs[10:28] == ours[10:28]
    assert theirs[36:] == ours[36:]
