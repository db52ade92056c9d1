"""Guest-physical memory as data: regions with kinds, validation, slot numbers, RAM."""

from pcihole.memory.map import (
    GuestAddressError,
    MemoryMap,
    MemoryMapError,
    MemslotShortage,
    Region,
    RegionKind,
    SlotAllocator,
)
from pcihole.memory.ram import GuestRam

__all__ = [
    "GuestAddressError",
    "GuestRam",
    "MemoryMap",
    "MemoryMapError",
    "MemslotShortage",
    "Region",
    "RegionKind",
    "SlotAllocator",
]
