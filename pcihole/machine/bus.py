"""Port-I/O and MMIO buses: address ranges mapped to devices, overlaps refused.

An access must fit inside one device (else ``BusAccessError``: the guest's fault).
Accesses nobody claims are not dropped silently: they are counted (``Bus.unclaimed``)
and answered with all ones, as a PC bus would.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pcihole.bits import all_ones
from pcihole.errors import Bug, GuestFault


class BusError(Bug):
    """A device range is invalid or overlaps another (a wiring mistake: where a guest chose
    the range, as for a BAR, the caller catches it)."""


class BusAccessError(GuestFault):
    """A guest's access starts inside a device and runs past its end."""


class BusDevice(Protocol):
    """Something that answers reads and takes writes, at offsets relative to its base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Mapping:
    base: int
    size: int
    device: BusDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size

    def describe(self) -> str:
        return f"{self.name} [{self.base:#x}, {self.end:#x})"


class Bus:
    """Ranges of one address space (ports or guest-physical), sorted by base."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: list[int] = []
        self._mappings: list[Mapping] = []
        self.unclaimed = 0
        """Accesses that hit no device."""
        self.hits: Counter[str] = Counter()
        """Accesses (exits) each device took, by the name it was added under: the run's
        account of exits by device, kept across a device's moves and removal."""
        self._last_hit: Mapping | None = None

    def add(self, base: int, size: int, device: BusDevice, name: str) -> None:
        if size <= 0:
            raise BusError(f"{self.name} bus: {name}: size must be positive, got {size}")
        new = Mapping(base, size, device, name)
        index = bisect.bisect_left(self._bases, base)
        for neighbour in self._mappings[max(0, index - 1) : index + 1]:
            if new.base < neighbour.end and neighbour.base < new.end:
                raise BusError(f"{self.name} bus: {new.describe()} overlaps {neighbour.describe()}")
        self._bases.insert(index, base)
        self._mappings.insert(index, new)
        self._last_hit = None

    def remove(self, base: int) -> None:
        index = bisect.bisect_left(self._bases, base)
        if index == len(self._bases) or self._bases[index] != base:
            raise BusError(f"{self.name} bus: no device at {base:#x}")
        del self._bases[index]
        del self._mappings[index]
        self._last_hit = None

    def find(self, address: int, size: int) -> Mapping | None:
        """The device holding ``[address, address+size)``, None if nobody is there."""
        last = self._last_hit
        if last is not None and last.base <= address and address + size <= last.end:
            return last  # accesses come in runs to one device: skip the search
        index = bisect.bisect_right(self._bases, address) - 1
        if index < 0:
            return None
        mapping = self._mappings[index]
        if address >= mapping.end:
            return None
        if address + size > mapping.end:
            raise BusAccessError(
                f"{self.name} bus: access [{address:#x}, {address + size:#x}) "
                f"runs past {mapping.describe()}"
            )
        self._last_hit = mapping
        return mapping

    def read(self, address: int, size: int) -> int:
        last = self._last_hit  # the common case, inlined: once per exit
        if last is not None and last.base <= address and address + size <= last.end:
            self.hits[last.name] += 1
            return last.device.read(address - last.base, size)
        mapping = self.find(address, size)
        if mapping is None:
            self.unclaimed += 1
            return all_ones(size)
        self.hits[mapping.name] += 1
        return mapping.device.read(address - mapping.base, size)

    def write(self, address: int, size: int, value: int) -> None:
        last = self._last_hit
        if last is not None and last.base <= address and address + size <= last.end:
            self.hits[last.name] += 1
            last.device.write(address - last.base, size, value)
            return
        mapping = self.find(address, size)
        if mapping is None:
            self.unclaimed += 1
            return
        self.hits[mapping.name] += 1
        mapping.device.write(address - mapping.base, size, value)

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self._mappings)
