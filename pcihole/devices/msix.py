"""An MSI-X table and pending-bit array, as storage: what a guest writes reads back.

Devices with MSI-X (NVMe's BAR0 at 0x2000/0x3000, virtio's BAR1) must answer their table
even when nothing is ever signalled through it: firmware and OSes read and write the
entries while setting devices up. Entries come out of reset masked (vector control bit 0),
as the PCI specification and QEMU's msix.c have them. Delivering messages is not modelled:
the devices here signal through their INTx line, which is what SeaBIOS uses (it polls).
"""

from __future__ import annotations

ENTRY_SIZE = 16
VECTOR_CONTROL = 12
"""Offset of the vector-control dword inside an entry; bit 0 masks the vector."""
MASKED = 0x1


class MsixTable:
    """``vectors`` table entries at ``table_offset`` and the PBA at ``pba_offset``, both
    relative to the block this object is mapped as (so one object can serve a whole BAR
    region: offsets outside both read 0 and drop writes)."""

    def __init__(self, vectors: int, table_offset: int = 0, pba_offset: int | None = None) -> None:
        if not 1 <= vectors <= 2048:
            raise ValueError(f"MSI-X has 1 to 2048 vectors, not {vectors}")
        self.vectors = vectors
        self.table_offset = table_offset
        table_end = table_offset + vectors * ENTRY_SIZE
        self.pba_offset = table_end if pba_offset is None else pba_offset
        self.table = bytearray(vectors * ENTRY_SIZE)
        for vector in range(vectors):
            self.table[vector * ENTRY_SIZE + VECTOR_CONTROL] = MASKED

    @property
    def pba_size(self) -> int:
        return (self.vectors + 63) // 64 * 8

    def read(self, offset: int, size: int) -> int:
        at = offset - self.table_offset
        if at >= 0 and at + size <= len(self.table):
            return int.from_bytes(self.table[at : at + size], "little")
        return 0  # PBA: nothing is ever pending; gaps read 0 as in QEMU's BAR containers

    def write(self, offset: int, size: int, value: int) -> None:
        at = offset - self.table_offset
        if at >= 0 and at + size <= len(self.table):
            self.table[at : at + size] = value.to_bytes(size, "little")

    def masked(self, vector: int) -> bool:
        return bool(self.table[vector * ENTRY_SIZE + VECTOR_CONTROL] & MASKED)
