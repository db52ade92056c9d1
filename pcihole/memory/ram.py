"""Private guest RAM: anonymous host memory with guest-physical read and write helpers."""

from __future__ import annotations

import ctypes
import mmap
import weakref

from pcihole.memory.map import GuestAddressError


class GuestRam:
    """``size`` bytes of anonymous memory that back guest-physical ``[base, base+size)``."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.size = size
        self._map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # Take the address without keeping a buffer export, so close() stays possible.
        probe = ctypes.c_char.from_buffer(self._map)
        self.host_address = ctypes.addressof(probe)
        del probe
        self._finalizer = weakref.finalize(self, self._map.close)

    def _offset(self, guest_address: int, length: int) -> int:
        offset = guest_address - self.base
        if offset < 0 or offset + length > self.size:
            raise GuestAddressError(
                f"guest access [{guest_address:#x}, {guest_address + length:#x}) "
                f"is outside RAM [{self.base:#x}, {self.base + self.size:#x})"
            )
        return offset

    def write(self, guest_address: int, data: bytes) -> None:
        offset = self._offset(guest_address, len(data))
        self._map[offset : offset + len(data)] = data

    def read(self, guest_address: int, length: int) -> bytes:
        offset = self._offset(guest_address, length)
        return self._map[offset : offset + length]

    def close(self) -> None:
        self._finalizer()
