"""The all-ones memory every VM of this process points its hole memslots at.

One ``HoleMemory`` per process: the sealed source (from the host-wide service, or made
here) and, where the source has an fd, one read-only window tiled with it, as long as the
largest ECAM. Every VM's hole slots point into it; no VM owns any of it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pcihole import layout
from pcihole.holes.service import obtain_source
from pcihole.holes.source import AllOnesSource, Backing
from pcihole.holes.window import HoleWindow, HoleWindowError


@dataclass(frozen=True)
class HoleMemoryReport:
    """What was chosen, and why (printed by the CLI, kept in benchmark JSON)."""

    backing: str
    origin: str
    layout: str
    span: int
    window_mappings: int
    window_build_seconds: float


class HoleMemory:
    """A source and (when it has an fd) a window: what hole slots point at."""

    def __init__(
        self,
        source: AllOnesSource,
        origin: str,
        window_size: int,
        *,
        map_limit: int | None = None,
    ) -> None:
        self.source = source
        self.origin = origin
        self.window: HoleWindow | None = None
        self.note = ""
        """Why there is no window, when the source could have had one."""
        if HoleWindow.supported(source):
            try:
                self.window = HoleWindow.build(source, window_size, map_limit=map_limit)
            except HoleWindowError as error:
                # Not enough mappings left (vm.max_map_count): point one slot per 2 MiB at
                # the chunk instead, as with THP. Costs slots, not correctness.
                self.note = f"no window ({error}); one slot per {source.size >> 10} KiB of holes"
        # Slots point at offset `piece.offset` of this: the window, or the bare chunk.
        self.base_address = self.window.address if self.window else source.address
        self.span = self.window.size if self.window else source.size

    @property
    def backing(self) -> Backing:
        return self.source.backing

    def host_address(self, offset: int) -> int:
        return self.base_address + offset

    def ranges(self) -> list[tuple[int, int]]:
        """Host ranges of the hole memory in this process, for accounting."""
        ranges = [(self.source.address, self.source.size)]
        if self.window is not None:
            ranges.append((self.window.address, self.window.size))
        return ranges

    def report(self) -> HoleMemoryReport:
        window = self.window
        return HoleMemoryReport(
            backing=self.backing.value,
            origin=self.origin,
            layout=(
                f"window of {window.mapping_count} x {window.chunk_size >> 10} KiB mappings"
                if window
                else self.note
                or f"one {self.source.size >> 20} MiB chunk, one slot per 2 MiB of holes"
            ),
            span=self.span,
            window_mappings=window.mapping_count if window else 0,
            window_build_seconds=window.build_seconds if window else 0.0,
        )

    def close(self) -> None:
        if self.window is not None:
            self.window.close()
        self.source.close()


_lock = threading.Lock()
_instances: dict[tuple[str | None, str | None], HoleMemory] = {}


def shared_hole_memory(
    backing: Backing | None = None, socket_path: str | None = None
) -> HoleMemory:
    """This process's hole memory for ``backing`` (best available when None), made once.

    With ``socket_path``, the sealed memfd comes from the host-wide service (so every
    process shares one copy); without an answer there, a private chunk is made instead
    and ``origin`` says so.
    """
    key = (backing.value if backing else None, socket_path)
    with _lock:
        memory = _instances.get(key)
        if memory is not None and not memory.source.closed:
            return memory
        source, origin = obtain_source(socket_path, backing)
        try:
            memory = HoleMemory(source, origin, layout.ECAM_MAX_SIZE)
        except BaseException:
            source.close()
            raise
        _instances[key] = memory
        return memory


def close_shared_hole_memory() -> None:
    """Release every process-wide hole memory (their slots must be gone already)."""
    with _lock:
        for memory in _instances.values():
            memory.close()
        _instances.clear()
