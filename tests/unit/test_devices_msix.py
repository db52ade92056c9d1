"""MSI-X table storage: every vector comes out of reset masked, every dword of every entry
(the first and the last vector alike) keeps what the guest writes, the PBA reads 0."""

from __future__ import annotations

import pytest

from pcihole.devices.msix import ENTRY_SIZE, MsixTable

VECTOR_CONTROL = 12
"""Offset of the vector-control dword inside an entry (PCI spec; bit 0 masks)."""


@pytest.mark.parametrize("vectors", [1, 3, 64])
def test_every_vector_starts_masked(vectors: int) -> None:
    table = MsixTable(vectors)
    for vector in range(vectors):
        entry = vector * ENTRY_SIZE
        assert table.read(entry, 4) == 0, vector  # address low
        assert table.read(entry + 4, 4) == 0, vector  # address high
        assert table.read(entry + 8, 4) == 0, vector  # data
        assert table.read(entry + VECTOR_CONTROL, 4) == 1, vector
        assert table.masked(vector)


@pytest.mark.parametrize(("vectors", "table_offset"), [(1, 0), (4, 0), (4, 0x2000)])
def test_every_dword_of_every_entry_keeps_its_writes(vectors: int, table_offset: int) -> None:
    table = MsixTable(vectors, table_offset=table_offset, pba_offset=table_offset + 0x1000)
    for vector in range(vectors):
        for dword in range(4):
            offset = table_offset + vector * ENTRY_SIZE + 4 * dword
            value = 0xFEE0_0000 | vector << 8 | dword << 4 | 0xE  # bit 0 clear: unmask
            table.write(offset, 4, value)
            assert table.read(offset, 4) == value, (vector, dword)
        assert not table.masked(vector)
    last = table_offset + (vectors - 1) * ENTRY_SIZE + VECTOR_CONTROL
    table.write(last, 4, 1)  # the last vector masked again, through its control dword
    assert table.read(last, 4) == 1 and table.masked(vectors - 1)
    table.write(last, 1, 0)  # a byte write reaches it too
    assert table.read(last, 4) == 0 and not table.masked(vectors - 1)


def test_pba_reads_zero_and_outside_writes_change_nothing() -> None:
    table = MsixTable(4, table_offset=0, pba_offset=0x800)
    before = [table.read(offset, 4) for offset in range(0, 4 * ENTRY_SIZE, 4)]
    table.write(4 * ENTRY_SIZE, 4, 0xFFFFFFFF)  # just past the last entry
    table.write(0x800, 8, 0xFFFFFFFFFFFFFFFF)  # the PBA is read-only
    assert table.read(0x800, 8) == 0
    assert table.read(4 * ENTRY_SIZE, 4) == 0
    assert [table.read(offset, 4) for offset in range(0, 4 * ENTRY_SIZE, 4)] == before


def test_vector_count_bounds() -> None:
    with pytest.raises(ValueError, match="1 to 2048"):
        MsixTable(0)
    with pytest.raises(ValueError, match="1 to 2048"):
        MsixTable(2049)
