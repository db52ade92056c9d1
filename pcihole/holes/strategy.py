"""How a VM's holes are answered: one small object per strategy, one interface.

- ``shared``: read-only memslots on the process's all-ones memory (no memory per VM);
- ``fill``: private 0xff memory per VM in read-only memslots (today's common practice);
- ``trap``: nothing mapped; every access exits and the monitor answers all ones (QEMU).

A strategy turns hole runs into memslot pieces and says which host address backs each.
Adding a fourth is one class decorated with ``@register``: its name, label, colour and
whether it maps memory are class attributes, and the command line, ``demo``, ``bench``
and the plot read them from ``REGISTRY``.
"""

from __future__ import annotations

import abc
import mmap
from dataclasses import dataclass
from typing import ClassVar

from pcihole import layout
from pcihole.errors import Bug
from pcihole.holes.memory import HoleMemory, shared_hole_memory
from pcihole.holes.planner import Piece, Run, plan_pieces
from pcihole.holes.source import Backing
from pcihole.host import mem as hostmem


class HoleStrategy(abc.ABC):
    """Maps hole runs of one VM's ECAM window onto memory (or not at all)."""

    name: ClassVar[str]
    label: ClassVar[str]
    """How tables name it (what it stands for)."""
    colour: ClassVar[str]
    """Its colour in plots (a matplotlib colour name)."""
    maps_memory: ClassVar[bool] = True
    """Whether hole reads stay in the guest (False: every hole access exits)."""
    private_bytes_per_window_byte: ClassVar[int] = 0
    """Host memory each VM owns per byte of window (``fill``: one), for sweeps to skip
    points that cannot fit."""
    present: ClassVar[str] = "mirror"
    """How sweeps answer present functions alongside (``trap`` traps everything)."""

    @classmethod
    @abc.abstractmethod
    def create(cls, options: StrategyOptions) -> HoleStrategy:
        """One VM's instance."""

    def __init__(self) -> None:
        self.note = ""
        """Why this strategy ended up as it is (fallbacks), for the user."""

    @abc.abstractmethod
    def pieces(self, runs: list[Run], window_start: int) -> list[Piece]:
        """The memslots that cover ``runs`` of the window starting at ``window_start``."""

    @abc.abstractmethod
    def host_address(self, piece: Piece) -> int:
        """Host address backing the first byte of ``piece``."""

    def per_vm_ranges(self) -> list[tuple[int, int]]:
        """Host ranges this VM alone owns for its holes (for accounting)."""
        return []

    def shared_ranges(self) -> list[tuple[int, int]]:
        """Host ranges shared with other VMs (for accounting)."""
        return []

    @property
    def backing(self) -> str:
        return "none"

    @property
    def detail(self) -> str:
        """Where the hole memory comes from and how it is laid out."""
        return ""

    def close(self) -> None:  # noqa: B027 - optional: most strategies own nothing
        """Release what this VM alone owns."""


@dataclass(frozen=True)
class StrategyOptions:
    """What a strategy is made from for one VM."""

    window_size: int
    backing: Backing | None = None
    socket_path: str | None = None
    free_memslots: int | None = None


REGISTRY: dict[str, type[HoleStrategy]] = {}
"""Every strategy by name, in the order the command line offers them."""


def register(cls: type[HoleStrategy]) -> type[HoleStrategy]:
    """Class decorator: make ``cls`` a strategy the whole program knows."""
    REGISTRY[cls.name] = cls
    return cls


@register
class SharedStrategy(HoleStrategy):
    """Every hole slot points into the process-wide all-ones memory."""

    name = "shared"
    label = "shared (pcihole)"
    colour = "tab:green"

    def __init__(self, memory: HoleMemory) -> None:
        super().__init__()
        self.memory = memory

    @classmethod
    def create(cls, options: StrategyOptions) -> HoleStrategy:
        """Over the process's all-ones memory; with the backing left to choose and the
        VM's free memslots known, a THP chunk (one slot per 2 MiB of holes) is passed over
        for a memfd window (one slot per run) when the VM could not afford it."""
        backing = options.backing
        note = ""
        chunk_slots = -(-options.window_size // layout.HUGE_PAGE_SIZE)
        free = options.free_memslots
        if backing is None and free is not None and chunk_slots > free:
            memory = shared_hole_memory(None, options.socket_path)
            if memory.window is None:  # the best backing here has no window: THP
                backing = Backing.MEMFD
                note = (
                    f"a THP chunk would need {chunk_slots} memslots, {free} free: "
                    "using a memfd window, one slot per run of holes"
                )
        memory = shared_hole_memory(backing, options.socket_path)
        if backing is None and memory.window is None and not note:
            note = thp_choice_note(chunk_slots)
        strategy = cls(memory)
        strategy.note = note
        return strategy

    def pieces(self, runs: list[Run], window_start: int) -> list[Piece]:
        # Congruence modulo 2 MiB keeps huge mappings possible; a chunk smaller than that
        # (a small memfd without a window) can only keep congruence modulo its own size.
        align = min(layout.HUGE_PAGE_SIZE, self.memory.span)
        return plan_pieces(runs, span=self.memory.span, align=align)

    def host_address(self, piece: Piece) -> int:
        return self.memory.host_address(piece.offset)

    def shared_ranges(self) -> list[tuple[int, int]]:
        return self.memory.ranges()

    @property
    def backing(self) -> str:
        return self.memory.backing.value

    @property
    def detail(self) -> str:
        return f"{self.memory.origin}; {self.memory.report().layout}"


@register
class FillStrategy(HoleStrategy):
    """A private, 0xff-filled copy of the whole ECAM window per VM, mapped read-only."""

    name = "fill"
    label = "fill (0xff copy)"
    colour = "tab:orange"
    private_bytes_per_window_byte = 1

    @classmethod
    def create(cls, options: StrategyOptions) -> HoleStrategy:
        if options.window_size % mmap.PAGESIZE:
            raise StrategyError(f"window size {options.window_size:#x} is not page aligned")
        return cls(options.window_size)

    def __init__(self, window_size: int) -> None:
        super().__init__()
        # Anonymous memory, filled, then read-only: what monitors that "fill" do.
        self.buffer = hostmem.map_anonymous(window_size, align=layout.HUGE_PAGE_SIZE)
        try:
            hostmem.fill(self.buffer.address, window_size, 0xFF)
            hostmem.protect(self.buffer.address, window_size, hostmem.PROT_READ)
        except BaseException:
            self.buffer.close()
            raise

    def pieces(self, runs: list[Run], window_start: int) -> list[Piece]:
        # The buffer mirrors the window: offset = guest address - window start.
        return [Piece(run.start, run.size, run.start - window_start) for run in runs]

    def host_address(self, piece: Piece) -> int:
        return self.buffer.address + piece.offset

    def per_vm_ranges(self) -> list[tuple[int, int]]:
        return [(self.buffer.address, self.buffer.size)]

    @property
    def backing(self) -> str:
        return "private"

    def close(self) -> None:
        self.buffer.close()


@register
class TrapStrategy(HoleStrategy):
    """No memory at all: every hole access exits and the monitor answers."""

    name = "trap"
    label = "trap (as QEMU)"
    colour = "tab:red"
    maps_memory = False
    present = "trap"

    @classmethod
    def create(cls, options: StrategyOptions) -> HoleStrategy:
        return cls()

    def pieces(self, runs: list[Run], window_start: int) -> list[Piece]:
        return []

    def host_address(self, piece: Piece) -> int:
        raise AssertionError("trap maps nothing")


STRATEGIES = tuple(REGISTRY)
REFERENCE = SharedStrategy.name
"""The strategy tables compare the others against: pcihole's own."""

KERNEL_BYTES_PER_SLOT = 24 << 10
"""x86 KVM's smallest memslot: six vmalloc'd arrays of at least one 4 KiB page each (rmap
at 3 levels, lpage_info at 2, write tracking), measured by benchmarks/kernel_memory.py."""


def thp_choice_note(chunk_slots: int) -> str:
    """Why the default picked a THP chunk, what it costs the kernel, and the way out.

    The rule: 2 MiB first touch first (hugetlb window, then THP chunk), then the fewest
    kernel bytes; a 4 KiB-page memfd window only when the slots do not fit or when asked.
    A memfd window saves about ``chunk_slots`` x 24 KiB of memslot arrays per VM but pays
    ~13 us per 4 KiB first touch here (~0.8 s per VM for 256 MiB) and 4 KiB page tables.
    """
    kib = chunk_slots * KERNEL_BYTES_PER_SLOT >> 10
    return (
        f"THP chunk: one memslot per 2 MiB of holes (up to {chunk_slots} per VM, ~{kib} KiB "
        "of kernel memory for their arrays), kept over a memfd window for its 2 MiB first "
        "touch; `pcihole serve-holes --reserve-hugepage` (root) gives a hugetlb window with "
        "both (one slot per run of holes), `--backing memfd` the fewer slots alone"
    )


class StrategyError(Bug, ValueError):
    """Unknown strategy name or impossible options."""


def make_strategy(
    name: str,
    *,
    window_size: int,
    readonly_memory: bool,
    backing: Backing | None = None,
    socket_path: str | None = None,
    free_memslots: int | None = None,
) -> HoleStrategy:
    """The strategy called ``name`` for one VM; falls back to ``trap`` (saying so) where
    the kernel has no read-only memslots.

    With the backing left to choose and ``free_memslots`` known, a THP chunk (one slot per
    2 MiB of holes) is passed over for a memfd window (one slot per run) when the VM could
    not afford a slot per 2 MiB of its window."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise StrategyError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    if cls.maps_memory and not readonly_memory:
        strategy: HoleStrategy = TrapStrategy()
        strategy.note = f"{name} needs KVM_CAP_READONLY_MEM, absent here: trapping instead"
        return strategy
    return cls.create(StrategyOptions(window_size, backing, socket_path, free_memslots))
