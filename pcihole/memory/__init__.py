"""Guest-physical memory as data: regions with kinds, validation, slot numbers, RAM."""

from pcihole.memory.map import MemoryMap, MemoryMapError, Region, RegionKind, SlotAllocator
from pcihole.memory.ram import GuestRam

__all__ = ["GuestRam", "MemoryMap", "MemoryMapError", "Region", "RegionKind", "SlotAllocator"]
