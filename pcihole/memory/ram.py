"""Private guest RAM: anonymous host memory with guest-physical read and write helpers."""

from __future__ import annotations

import ctypes
import mmap
import weakref
from collections.abc import Sequence

from pcihole.errors import EnvironmentProblem
from pcihole.memory.map import GuestAddressError


class RamAllocationError(EnvironmentProblem):
    """The host would not map the guest's RAM."""


class GuestRam:
    """``size`` bytes of anonymous memory that back guest-physical ``[base, base+size)``,
    or, made by ``in_banks``, several guest ranges one after another in host memory (as
    QEMU's ram-below-4g and ram-above-4g are two windows on one block)."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.size = size
        self.banks: tuple[tuple[int, int], ...] = ((base, size),)
        """(guest address, length) of each range, in host-memory order."""
        try:
            self._map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as error:
            raise RamAllocationError(
                f"the host would not map {size >> 20} MiB of guest RAM: {error.strerror}"
            ) from None
        # Take the address without keeping a buffer export, so close() stays possible.
        probe = ctypes.c_char.from_buffer(self._map)
        self.host_address = ctypes.addressof(probe)
        del probe
        self._finalizer = weakref.finalize(self, self._map.close)

    @classmethod
    def in_banks(cls, banks: Sequence[tuple[int, int]]) -> GuestRam:
        """One block of host memory laid out as ``banks``: (guest address, length) each."""
        ram = cls(banks[0][0], sum(length for _, length in banks))
        ram.banks = tuple(banks)
        return ram

    def host_address_of(self, guest_address: int) -> int:
        """Where guest-physical ``guest_address`` lives in this process."""
        return self.host_address + self._offset(guest_address, 0)

    def _offset(self, guest_address: int, length: int) -> int:
        offset = 0
        for start, size in self.banks:
            if start <= guest_address and guest_address + length <= start + size:
                return offset + guest_address - start
            offset += size
        ranges = ", ".join(f"[{start:#x}, {start + size:#x})" for start, size in self.banks)
        raise GuestAddressError(
            f"guest access [{guest_address:#x}, {guest_address + length:#x}) "
            f"is outside RAM {ranges}"
        )

    def write(self, guest_address: int, data: bytes) -> None:
        offset = self._offset(guest_address, len(data))
        self._map[offset : offset + len(data)] = data

    def read(self, guest_address: int, length: int) -> bytes:
        offset = self._offset(guest_address, length)
        return self._map[offset : offset + length]

    def close(self) -> None:
        self._finalizer()
