"""A hole window: one contiguous read-only host range whose every byte is the all-ones chunk.

The window is a 2 MiB-aligned PROT_NONE reservation into which the source's sealed fd is
mapped again and again (MAP_SHARED | MAP_FIXED, read-only, always from offset 0). One
memslot can then cover any run of holes, however long, and every page of it is the same
physical memory: a 2 MiB hugetlb chunk needs 128 mappings for 256 MiB, a 2 MiB memfd chunk
as many, a 64 KiB memfd chunk 4,096. Mappings are limited per process (vm.max_map_count),
so the build checks the budget first.

THP has no fd, so it cannot make a window: point many memslots at the chunk instead.
"""

from __future__ import annotations

import time

from pcihole.closing import Closeable
from pcihole.errors import Bug, EnvironmentProblem
from pcihole.holes.source import AllOnesSource
from pcihole.host import mem as hostmem
from pcihole.host.mem import HostMemError, Mapping
from pcihole.layout import HUGE_PAGE_SIZE

WINDOW_ALIGN = HUGE_PAGE_SIZE
"""Window starts are ``phase`` modulo this, so a 2 MiB-aligned guest run maps on 2 MiB pages."""
DEFAULT_MAP_HEADROOM = 1024
"""Mappings left free for everything else the process does (libraries, threads, KVM)."""


class HoleWindowError(EnvironmentProblem):
    """A window cannot be built (no fd, bad size or phase, not enough mappings left)."""


def mapping_budget(*, map_limit: int | None = None, headroom: int = DEFAULT_MAP_HEADROOM) -> int:
    """How many more mappings this process may create, keeping ``headroom`` spare."""
    limit = hostmem.max_map_count() if map_limit is None else map_limit
    return limit - hostmem.map_count() - headroom


class HoleWindow(Closeable):
    """A read-only host range of ``size`` bytes tiled with an fd-backed all-ones source.

    Build one with :meth:`build`. ``address`` is ``phase`` modulo 2 MiB. The window does
    not keep the source open: each mapping holds the file itself.
    """

    def __init__(
        self, reservation: Mapping, *, chunk: int, mappings: int, build_seconds: float
    ) -> None:
        self._reservation = reservation
        self.chunk_size = chunk
        """Bytes per mapping (the source's size)."""
        self.mapping_count = mappings
        """How many mappings tile the window."""
        self.build_seconds = build_seconds
        """Wall time of reserving and mapping the whole window."""

    @staticmethod
    def unsupported_reason(source: AllOnesSource) -> str | None:
        """Why no window can be built from ``source`` (None when one can)."""
        if source.fd is None:
            return (
                f"a {source.backing.value} source has no fd to map repeatedly; "
                "point one memslot per run at the chunk instead"
            )
        return None

    @staticmethod
    def supported(source: AllOnesSource) -> bool:
        """Whether a window can be built from ``source`` (it has an fd)."""
        return HoleWindow.unsupported_reason(source) is None

    @staticmethod
    def mappings_needed(source: AllOnesSource, size: int) -> int:
        """Mappings a ``size``-byte window takes (the last one may cover part of the chunk)."""
        return -(-size // source.size)

    @classmethod
    def build(
        cls,
        source: AllOnesSource,
        size: int,
        *,
        phase: int = 0,
        map_limit: int | None = None,
        headroom: int = DEFAULT_MAP_HEADROOM,
    ) -> HoleWindow:
        """Reserve ``size`` bytes at ``phase`` modulo 2 MiB and tile them with ``source``.

        ``size`` and ``phase`` must be multiples of ``source.page_size`` (2 MiB for
        hugetlb, 4 KiB otherwise). ``map_limit`` replaces vm.max_map_count (for tests);
        building is refused when it would leave fewer than ``headroom`` mappings free.
        """
        why_not = cls.unsupported_reason(source)
        if why_not is not None:
            raise HoleWindowError(why_not)
        fd = source.fd
        assert fd is not None
        granule = source.page_size
        if size <= 0 or size % granule:
            raise HoleWindowError(
                f"window size {size:#x} must be a positive multiple of {granule:#x} "
                f"for a {source.backing.value} source"
            )
        if phase % granule or not 0 <= phase < WINDOW_ALIGN:
            raise HoleWindowError(
                f"window phase {phase:#x} must be a multiple of {granule:#x} below "
                f"{WINDOW_ALIGN:#x} for a {source.backing.value} source"
            )
        mappings = cls.mappings_needed(source, size)
        needed = mappings + 1  # the shrinking reservation is one more VMA while building
        available = mapping_budget(map_limit=map_limit, headroom=headroom)
        if needed > available:
            limit = hostmem.max_map_count() if map_limit is None else map_limit
            raise HoleWindowError(
                f"a {size:#x}-byte window of {source.size:#x}-byte chunks needs {needed} "
                f"mappings but only {max(available, 0)} are available (vm.max_map_count "
                f"{limit}, {hostmem.map_count()} in use, {headroom} kept spare); use a "
                "bigger chunk or hugetlb"
            )
        chunk = source.size
        started = time.perf_counter()
        reservation = hostmem.reserve(size, WINDOW_ALIGN, phase=phase)
        try:
            for offset in range(0, size, chunk):
                length = min(chunk, size - offset)
                hostmem.map_fd_fixed(fd, reservation.address + offset, length, 0)
        except HostMemError as exc:
            reservation.close()
            raise HoleWindowError(f"building a {size:#x}-byte window: {exc}") from exc
        elapsed = time.perf_counter() - started
        return cls(reservation, chunk=chunk, mappings=mappings, build_seconds=elapsed)

    @property
    def address(self) -> int:
        """Host address of the window's first byte."""
        return self._reservation.address

    @property
    def size(self) -> int:
        return self._reservation.size

    @property
    def end(self) -> int:
        return self._reservation.end

    @property
    def closed(self) -> bool:
        return self._reservation.closed

    def host_address(self, offset: int) -> int:
        """Host address of byte ``offset`` of the window."""
        if not 0 <= offset < self.size:
            raise Bug(f"offset {offset:#x} outside a {self.size:#x}-byte window")
        return self.address + offset

    def close(self) -> None:
        """Unmap the whole window. Safe to repeat."""
        self._reservation.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self.address:#x}"
        return (
            f"HoleWindow({self.size:#x} bytes, {self.mapping_count} x {self.chunk_size:#x}, "
            f"{state})"
        )
