"""The guest-physical memory map: sorted, non-overlapping, page-aligned regions.

A map is checked when it is built; a conflict names both regions. Memslot numbers are
handed out by ``SlotAllocator``, within the kernel's KVM_CAP_NR_MEMSLOTS.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pcihole.errors import Bug, EnvironmentProblem, GuestFault
from pcihole.layout import PAGE_SIZE


class MemoryMapError(Bug, ValueError):
    """A region or a map is invalid, or a slot was released twice; the message says which
    and why. Where a guest chose the region (a BAR, PCIEXBAR), the caller catches it."""


class MemslotShortage(EnvironmentProblem):
    """The kernel's memslot budget (KVM_CAP_NR_MEMSLOTS) cannot hold what is asked."""


class GuestAddressError(GuestFault, ValueError):
    """A guest-physical access (a guest's DMA, a table it points at) is outside guest RAM."""


class RegionKind(enum.Enum):
    """What backs a guest-physical region."""

    RAM = "ram"
    """Private guest memory, read-write."""
    ROM = "rom"
    """Read-only memory with content (firmware); writes exit."""
    MMIO = "mmio"
    """Nothing mapped: every access exits to a device model."""
    HOLE = "hole"
    """Absent PCI functions: reads all ones, writes dropped."""
    DEVICE_CONFIG = "device-config"
    """A present function's config page, mirrored read-only; writes exit to the model."""


@dataclass(frozen=True, slots=True)
class Region:
    """One region of guest-physical address space."""

    kind: RegionKind
    start: int
    size: int
    name: str = ""

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise MemoryMapError(f"{self.describe()}: size must be positive")
        if self.start < 0:
            raise MemoryMapError(f"{self.describe()}: negative address")
        if self.start % PAGE_SIZE or self.size % PAGE_SIZE:
            raise MemoryMapError(f"{self.describe()}: not aligned to {PAGE_SIZE:#x} bytes")

    @property
    def end(self) -> int:
        """First address after the region."""
        return self.start + self.size

    def overlaps(self, other: Region) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, address: int, size: int = 1) -> bool:
        return self.start <= address and address + size <= self.end

    def describe(self) -> str:
        label = f"{self.kind.value} {self.name!r}" if self.name else self.kind.value
        return f"{label} [{self.start:#x}, {self.start + self.size:#x})"


class MemoryMap:
    """An immutable, validated set of regions, sorted by address."""

    def __init__(self, regions: Iterable[Region]) -> None:
        ordered = sorted(regions, key=lambda region: region.start)
        for before, after in itertools.pairwise(ordered):
            if before.overlaps(after):
                raise MemoryMapError(f"{after.describe()} overlaps {before.describe()}")
        self.regions: tuple[Region, ...] = tuple(ordered)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __len__(self) -> int:
        return len(self.regions)

    def with_region(self, region: Region) -> MemoryMap:
        """A new map with ``region`` added (validated like any map)."""
        return MemoryMap((*self.regions, region))

    def without(self, region: Region) -> MemoryMap:
        if region not in self.regions:
            raise MemoryMapError(f"{region.describe()} is not in the map")
        return MemoryMap(r for r in self.regions if r != region)


class SlotAllocator:
    """Memslot numbers, lowest free first, within the kernel's budget."""

    def __init__(self, budget: int) -> None:
        if budget <= 0:
            raise MemslotShortage(f"memslot budget must be positive, got {budget}")
        self.budget = budget
        self._used: set[int] = set()
        self._next = 0

    @property
    def free(self) -> int:
        return self.budget - len(self._used)

    @property
    def used(self) -> int:
        return len(self._used)

    def allocate(self, count: int = 1, *, purpose: str = "memslots") -> list[int]:
        """``count`` slot numbers, or an error saying how many are needed and free."""
        if count > self.free:
            raise MemslotShortage(
                f"{purpose}: {count} memslots needed, {self.free} free "
                f"(KVM_CAP_NR_MEMSLOTS = {self.budget}, {self.used} in use)"
            )
        slots: list[int] = []
        candidate = 0
        while len(slots) < count:
            if candidate not in self._used:
                slots.append(candidate)
            candidate += 1
        self._used.update(slots)
        return slots

    def release(self, slots: Iterable[int]) -> None:
        for slot in slots:
            if slot not in self._used:
                raise MemoryMapError(f"memslot {slot} released but not allocated")
            self._used.discard(slot)
