"""One VM's hole memslots and coalesced zones, kept in step with its hole runs.

``HoleSlots.set_runs`` applies a new set of runs as a difference: runs that stay keep
their slots untouched (a guest scanning them never notices), runs that go lose theirs,
new runs get theirs. Every change is all or nothing: when the kernel refuses part way,
what this call created is removed and what it removed is put back.

Writes: with ``writes="coalesce"`` each run gets a coalesced MMIO zone, so hole writes
queue in the VM's ring without a synchronous exit; ``HoleWrites`` counts them and hands
them to observers in guest order when the ring is drained (at every exit and at stop).
With ``writes="exit"`` every hole write exits and reaches the monitor at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pcihole.errors import Bug, EnvironmentProblem
from pcihole.holes.planner import Piece, Run
from pcihole.holes.strategy import HoleStrategy
from pcihole.kvm import CoalescedWrite, KvmError, Vm, abi
from pcihole.memory import MemoryMapError, MemslotShortage, SlotAllocator

WRITE_MODES = ("coalesce", "exit")


class HoleSlotError(EnvironmentProblem):
    """Hole memslots or zones could not be set; the message says what and why."""


@dataclass(frozen=True, slots=True)
class HoleWrite:
    """A guest write that landed in a hole and was discarded."""

    address: int
    size: int
    data: bytes


HoleObserver = Callable[[HoleWrite], None]


class HoleWrites:
    """Counts discarded hole writes and hands each to the observers, in guest order."""

    def __init__(self) -> None:
        self.count = 0
        self.observers: list[HoleObserver] = []

    def observe(self, observer: HoleObserver) -> None:
        self.observers.append(observer)

    def record(self, address: int, size: int, data: bytes) -> None:
        self.count += 1
        if self.observers:
            write = HoleWrite(address, size, data)
            for observer in self.observers:
                observer(write)

    def record_coalesced(self, writes: Iterable[CoalescedWrite]) -> None:
        for write in writes:
            self.record(write.address, write.size, write.data)


class HoleSlots:
    """The hole memslots (and zones) of one VM under one strategy."""

    def __init__(
        self, vm: Vm, allocator: SlotAllocator, strategy: HoleStrategy, *, writes: str
    ) -> None:
        if writes not in WRITE_MODES:
            raise Bug(f"writes must be one of {', '.join(WRITE_MODES)}, not {writes!r}")
        self.vm = vm
        self.allocator = allocator
        self.strategy = strategy
        self.coalesce = writes == "coalesce" and strategy.maps_memory
        self.note = ""
        if self.coalesce and not vm.coalesced_mmio_page:
            self.coalesce = False
            self.note = "no KVM_CAP_COALESCED_MMIO here: hole writes exit"
        self.runs: dict[Run, list[tuple[int, Piece]]] = {}
        self.zones: set[Run] = set()

    @property
    def slot_count(self) -> int:
        return sum(len(slots) for slots in self.runs.values())

    def set_runs(
        self, runs: Iterable[Run], window_start: int, drain: Callable[[], None] | None = None
    ) -> None:
        """Make the VM's hole slots cover exactly ``runs`` of the window at ``window_start``
        (all or nothing).

        ``drain`` empties the coalesced ring first, so writes queued under zones that are
        about to go are still counted.
        """
        wanted = set(runs)
        gone = [run for run in self.runs if run not in wanted]
        new = sorted(run for run in wanted if run not in self.runs)
        if drain is not None and gone and self.coalesce:
            drain()
        plans = {run: self.strategy.pieces([run], window_start) for run in new}
        needed = sum(len(pieces) for pieces in plans.values())
        freed = sum(len(self.runs[run]) for run in gone)
        if needed - freed > self.allocator.free:
            raise HoleSlotError(
                f"holes need {needed} memslots ({len(new)} runs), {self.allocator.free + freed}"
                f" free of KVM_CAP_NR_MEMSLOTS = {self.allocator.budget}"
            )
        # Zones are changed in one batch after the slots: a memslot change right after a
        # zone change waits for a full SRCU grace period (~8 ms measured here), so
        # interleaving them would cost that once per run.
        removed: list[Run] = []
        added: list[Run] = []
        zoned: list[Run] = []
        old_pieces = {run: [piece for _, piece in self.runs[run]] for run in gone}
        try:
            for run in gone:
                self._remove_zone(run)
            for run in gone:
                self._remove_slots(run)
                removed.append(run)
            for run in new:
                self._add_slots(run, plans[run])
                added.append(run)
            for run in new:
                self._add_zone(run)
                zoned.append(run)
        except (KvmError, MemslotShortage, MemoryMapError) as error:
            for run in zoned:
                self._remove_zone(run)
            for run in added:
                self._remove_slots(run)
            for run in removed:
                self._add_slots(run, old_pieces[run])
            for run in removed:
                self._add_zone(run)
            if not isinstance(error, EnvironmentProblem):
                raise  # a bug, rolled back all the same
            raise HoleSlotError(f"setting hole memslots failed, nothing changed: {error}") from None

    def _add_slots(self, run: Run, pieces: list[Piece]) -> None:
        slots = self.allocator.allocate(len(pieces), purpose="hole memslots")
        done: list[tuple[int, Piece]] = []
        try:
            for slot, piece in zip(slots, pieces, strict=True):
                self.vm.set_memory_region(
                    slot,
                    piece.start,
                    piece.size,
                    self.strategy.host_address(piece),
                    abi.KVM_MEM_READONLY,
                )
                done.append((slot, piece))
        except BaseException:
            for slot, _ in done:
                self.vm.delete_memory_region(slot)
            self.allocator.release(slots)
            raise
        self.runs[run] = done

    def _add_zone(self, run: Run) -> None:
        if self.coalesce:
            self.vm.register_coalesced_mmio(run.start, run.size)
            self.zones.add(run)

    def _remove_zone(self, run: Run) -> None:
        if run in self.zones:
            self.vm.unregister_coalesced_mmio(run.start, run.size)
            self.zones.discard(run)

    def _remove_slots(self, run: Run) -> None:
        for slot, _ in self.runs.pop(run):
            self.vm.delete_memory_region(slot)
            self.allocator.release([slot])

    def close(self) -> None:
        """Remove every hole slot and zone (the VM itself may already be closed)."""
        if not self.vm.closed:
            for run in list(self.runs):
                self._remove_zone(run)
            for run in list(self.runs):
                self._remove_slots(run)
        self.runs.clear()
        self.zones.clear()
