"""Guest memory as a bus-mastering device or a firmware-table reader reaches it.

Devices that read or write guest memory (AHCI's received-FIS area, NVMe's queues, virtio
rings) are given a ``GuestMemory`` at construction and know nothing else of the machine.
``pcihole.memory.ram.GuestRam`` has this shape, so does a test's ``bytearray`` wrapper.
fw_cfg's DMA interface and the ACPI table reader (``arch/x86/acpi.py``) use it too.
"""

from __future__ import annotations

from typing import Protocol

from pcihole.errors import GuestFault


class GuestMemory(Protocol):
    """Guest-physical memory. An access outside it raises ``ValueError`` or a
    ``GuestFault`` (``MEMORY_ERRORS``): the address is the guest's, so devices turn that into
    their own error state, as QEMU's do when ``dma_memory_map`` fails."""

    def read(self, address: int, length: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None: ...


MEMORY_ERRORS = (ValueError, GuestFault)
"""What ``GuestMemory`` raises for an address outside guest memory."""


class FlatMemory:
    """A ``GuestMemory`` over one ``bytearray`` from guest-physical ``base``: for tests and
    for small machines. Accesses outside it raise ``ValueError``."""

    def __init__(self, size: int, base: int = 0) -> None:
        self.base = base
        self.data = bytearray(size)

    def _offset(self, address: int, length: int) -> int:
        offset = address - self.base
        if offset < 0 or length < 0 or offset + length > len(self.data):
            raise ValueError(f"{length} bytes at {address:#x} are outside guest memory")
        return offset

    def read(self, address: int, length: int) -> bytes:
        offset = self._offset(address, length)
        return bytes(self.data[offset : offset + length])

    def write(self, address: int, data: bytes) -> None:
        offset = self._offset(address, len(data))
        self.data[offset : offset + len(data)] = data
