"""Bdf: parsing, printing, ordering and the ECAM encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcihole.pci.bdf import Bdf
from pcihole.pci.errors import BdfError, PciError

bdfs = st.builds(Bdf, st.integers(0, 255), st.integers(0, 31), st.integers(0, 7))


def test_prints_like_lspci() -> None:
    assert str(Bdf(0, 0x1F, 3)) == "00:1f.3"
    assert str(Bdf(0xAB, 1, 0)) == "ab:01.0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:1f.3", Bdf(0, 31, 3)),
        ("00:1F.3", Bdf(0, 31, 3)),
        ("0000:02:00.0", Bdf(2, 0, 0)),
        ("ff:1f.7", Bdf(255, 31, 7)),
        ("1:2.0", Bdf(1, 2, 0)),
        (" 01:00.0 ", Bdf(1, 0, 0)),
    ],
)
def test_parse(text: str, expected: Bdf) -> None:
    assert Bdf.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("00:1f", "malformed"),
        ("00-1f.3", "malformed"),
        ("100:00.0", "malformed"),
        ("00:00.0.0", "malformed"),
        ("", "malformed"),
        ("00:20.0", "device 32 is out of range 0-31"),
        ("00:00.8", "function 8 is out of range 0-7"),
        ("0001:00:00.0", "only domain 0000"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(BdfError, match=message):
        Bdf.parse(text)


@pytest.mark.parametrize(
    ("bus", "device", "function"), [(256, 0, 0), (-1, 0, 0), (0, 32, 0), (0, 0, 8)]
)
def test_out_of_range(bus: int, device: int, function: int) -> None:
    with pytest.raises(PciError):
        Bdf(bus, device, function)


def test_orders_by_bus_device_function() -> None:
    assert sorted([Bdf(1, 0, 0), Bdf(0, 2, 1), Bdf(0, 2, 0), Bdf(0, 31, 7)]) == [
        Bdf(0, 2, 0),
        Bdf(0, 2, 1),
        Bdf(0, 31, 7),
        Bdf(1, 0, 0),
    ]


def test_ecam_offset() -> None:
    assert Bdf(0, 0, 0).ecam_offset == 0
    assert Bdf(0, 0x1F, 3).ecam_offset == 0xFB000
    assert Bdf(2, 0, 0).ecam_offset == 0x200000
    assert Bdf(255, 31, 7).ecam_offset == 0xFFFF000


@pytest.mark.parametrize("offset", [0x123, -0x1000, 0x10000000])
def test_from_ecam_offset_rejects(offset: int) -> None:
    with pytest.raises(BdfError):
        Bdf.from_ecam_offset(offset)


@given(bdfs)
def test_text_round_trip(bdf: Bdf) -> None:
    assert Bdf.parse(str(bdf)) == bdf
    assert Bdf.parse("0000:" + str(bdf)) == bdf


@given(bdfs)
def test_ecam_round_trip(bdf: Bdf) -> None:
    assert Bdf.from_ecam_offset(bdf.ecam_offset) == bdf
    assert bdf.ecam_offset >> 12 == bdf.bus << 8 | bdf.devfn


@given(bdfs, bdfs)
def test_ecam_order_matches_bdf_order(a: Bdf, b: Bdf) -> None:
    assert (a < b) == (a.ecam_offset < b.ecam_offset)
