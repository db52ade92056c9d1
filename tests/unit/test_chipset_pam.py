"""PAM decode: which mode governs each byte of 0xc0000-0xfffff, as QEMU's q35 decodes it."""

from __future__ import annotations

import itertools

import pytest

from pcihole.pci.ecam import ConfigWrite
from pcihole.q35 import mch
from pcihole.q35.mch import PamMode


def test_reset_is_all_pci_in_one_run() -> None:
    assert mch.runs([0] * 7) == [mch.Segment(0xC0000, 0x40000, PamMode.PCI)]


def test_thirteen_segments_cover_the_range_in_order() -> None:
    segments = mch.segments([0] * 7)
    assert len(segments) == 13
    assert segments[0].start == 0xC0000 and segments[-1].end == 0x100000
    assert all(a.end == b.start for a, b in itertools.pairwise(segments))
    assert segments[-1] == mch.Segment(0xF0000, 0x10000, PamMode.PCI)


@pytest.mark.parametrize(
    ("register", "shift", "address"),
    [
        (0, 4, 0xF0000),
        (0, 4, 0xFFFFF),
        (1, 0, 0xC0000),
        (1, 4, 0xC4000),
        (2, 0, 0xC8000),
        (3, 4, 0xD4000),
        (5, 0, 0xE0000),
        (6, 4, 0xEC000),
        (6, 4, 0xEFFFF),
    ],
)
def test_each_field_governs_its_segment(register: int, shift: int, address: int) -> None:
    for mode in PamMode:
        registers = [0] * 7
        registers[register] = mode << shift
        assert mch.mode_at(registers, address) is mode
        # No other segment moved.
        others = [s for s in mch.segments(registers) if not s.start <= address < s.end]
        assert all(s.mode is PamMode.PCI for s in others)


def test_pam0_low_nibble_is_ignored() -> None:
    assert mch.mode_at([0x03, 0, 0, 0, 0, 0, 0], 0xF0000) is PamMode.PCI


def test_seabios_writable_then_readonly() -> None:
    writable = [0x30] + [0x33] * 6
    assert mch.runs(writable) == [mch.Segment(0xC0000, 0x40000, PamMode.READ_WRITE)]
    # make_bios_readonly with ROMs up to 0xc8000 and 0xcc000 in use: 0x11, 0x31, then 0x10.
    locked = [0x10, 0x11, 0x31, 0x33, 0x33, 0x33, 0x33]
    assert mch.runs(locked) == [
        mch.Segment(0xC0000, 0xC000, PamMode.READ_ONLY),
        mch.Segment(0xCC000, 0x24000, PamMode.READ_WRITE),
        mch.Segment(0xF0000, 0x10000, PamMode.READ_ONLY),
    ]


def test_modes_say_where_reads_and_writes_go() -> None:
    assert [(m.reads_ram, m.writes_ram) for m in PamMode] == [
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    ]


def test_which_writes_reach_pam() -> None:
    def reaches(offset: int, size: int) -> bool:
        return ConfigWrite(mch.HOST_BRIDGE, offset, size).touches(mch.PAM0, mch.PAM_REGISTERS)

    assert reaches(0x90, 1) and reaches(0x96, 1) and reaches(0x8C, 8)
    assert not reaches(0x97, 1) and not reaches(0x8C, 4)


def test_wrong_register_count() -> None:
    with pytest.raises(ValueError, match="7 PAM"):
        mch.segments([0] * 6)
