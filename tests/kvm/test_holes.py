"""Hole memory on real guests: the 2020 selftest and everything it did not check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pcihole import layout
from pcihole.guest.vm import GuestVm
from pcihole.holes.memory import HoleMemory
from pcihole.holes.planner import Run
from pcihole.holes.slots import HoleSlotError, HoleSlots, HoleWrite, HoleWrites
from pcihole.holes.source import AllOnesSource, Backing
from pcihole.holes.strategy import FillStrategy, HoleStrategy, SharedStrategy, TrapStrategy
from pcihole.kvm import Kvm, abi
from pcihole.machine.runloop import RunResult, StopReason
from pcihole.memory import MemoryMapError
from tests.support import Syncs, Worker, join, raise_stop_flag

HOLE_BASE = layout.TEST_MMIO_BASE
"""Test holes live in the BAR space, 2 MiB aligned, away from RAM and the ECAM window."""
SELFTEST, READ_WIDTHS, WRITE_STORM, SCAN_LOOP = range(4)


@pytest.fixture(params=[Backing.THP, Backing.MEMFD, Backing.HUGETLB])
def hole_memory(request: pytest.FixtureRequest) -> Iterator[HoleMemory]:
    """Hole memory of each backing (hugetlb reserves a page for the test, as root)."""
    backing: Backing = request.param
    if backing is Backing.HUGETLB:
        request.getfixturevalue("huge_page")
    memory = HoleMemory(AllOnesSource.create(backing), "test", layout.ECAM_MAX_SIZE)
    yield memory
    memory.close()


class HoleDevice:
    """The test's bus device under a hole region (the product's is the ECAM device):
    what exits there reads all ones, writes are recorded.

    Sits under hole slots so that while they change (or under ``trap``) the guest still
    sees master-abort semantics.
    """

    def __init__(self, base: int, writes: HoleWrites) -> None:
        self.base = base
        self.writes = writes
        self.read_exits = 0
        self.write_exits = 0

    def read(self, offset: int, size: int) -> int:
        self.read_exits += 1
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.write_exits += 1
        self.writes.record(self.base + offset, size, value.to_bytes(size, "little"))


@dataclass
class HoleGuest:
    guest: GuestVm
    slots: HoleSlots
    writes: HoleWrites
    device: HoleDevice

    def run(self) -> RunResult:
        return self.guest.run()


def hole_guest(
    kvm: Kvm,
    strategy: HoleStrategy,
    test: int,
    size: int,
    count: int = 0,
    writes: str = "coalesce",
    runs: list[Run] | None = None,
) -> HoleGuest:
    guest = GuestVm(kvm, "holes_probe", ring=3, params=[test, HOLE_BASE, size, count])
    hole_writes = HoleWrites()
    device = HoleDevice(HOLE_BASE, hole_writes)
    guest.mmio.add(HOLE_BASE, size, device, "hole")
    slots = HoleSlots(guest.vm, guest.slots, strategy, writes=writes)
    guest.on_coalesced(hole_writes.record_coalesced)
    slots.set_runs(runs or [Run(HOLE_BASE, size)], HOLE_BASE)
    return HoleGuest(guest, slots, hole_writes, device)


def test_proposal_selftest_with_coalesced_writes(kvm: Kvm, hole_memory: HoleMemory) -> None:
    vm = hole_guest(kvm, SharedStrategy(hole_memory), SELFTEST, 4 * layout.PAGE_SIZE)
    seen: list[HoleWrite] = []
    vm.writes.observe(seen.append)
    with vm.guest:
        result = vm.run().check()
    assert seen == [
        HoleWrite(HOLE_BASE + 1024, 8, (0x0102030405060708).to_bytes(8, "little")),
        HoleWrite(HOLE_BASE + 8000, 8, (0x1112131415161718).to_bytes(8, "little")),
    ]
    assert vm.writes.count == 2
    # the reads stayed in the guest and the writes waited in the ring: only reports exited
    assert result.exit_counts == {"IoOut": 1}
    assert vm.device.read_exits == vm.device.write_exits == 0
    hole_memory.source.verify()


def test_proposal_selftest_with_writes_exiting(kvm: Kvm) -> None:
    memory = HoleMemory(AllOnesSource.create(Backing.MEMFD), "test", layout.ECAM_MAX_SIZE)
    vm = hole_guest(kvm, SharedStrategy(memory), SELFTEST, 4 * layout.PAGE_SIZE, writes="exit")
    seen: list[HoleWrite] = []
    vm.writes.observe(seen.append)
    with vm.guest:
        result = vm.run().check()
    memory.close()
    assert [(w.address - HOLE_BASE, w.size) for w in seen] == [(1024, 8), (8000, 8)]
    assert result.exit_counts == {"IoOut": 1, "MmioWrite": 2}
    assert vm.device.write_exits == 2 and vm.device.read_exits == 0


@pytest.mark.parametrize("size_mib", [4, 6])
def test_reads_of_every_width_and_place_are_all_ones(
    kvm: Kvm, hole_memory: HoleMemory, size_mib: int
) -> None:
    size = size_mib * layout.MiB
    boundary = HOLE_BASE + 2 * layout.MiB  # between two slots with THP, inside one otherwise
    vm = hole_guest(kvm, SharedStrategy(hole_memory), READ_WIDTHS, size, boundary)
    with vm.guest:
        result = vm.run().check()
        expected_slots = size // layout.MiB // 2 if hole_memory.window is None else 1
        assert vm.slots.slot_count == expected_slots
    assert vm.device.read_exits == 0
    assert result.exit_counts == {"IoOut": 1}
    assert vm.writes.count == 1  # the write before the read-after-write check
    hole_memory.source.verify()


def test_write_storm_loses_nothing_and_counts_nothing_twice(kvm: Kvm) -> None:
    memory = HoleMemory(AllOnesSource.create(), "test", layout.ECAM_MAX_SIZE)
    storm = 5000  # ~30 times the coalesced ring
    vm = hole_guest(kvm, SharedStrategy(memory), WRITE_STORM, layout.HUGE_PAGE_SIZE, storm)
    values: list[int] = []
    vm.writes.observe(lambda w: values.append(int.from_bytes(w.data, "little")))
    with vm.guest:
        ring = vm.guest.vcpu.ring_capacity
        result = vm.run().check()
        assert vm.guest.vcpu.drain_coalesced() == []  # drained at stop
    assert values == list(range(storm))  # every write once, in guest order
    assert vm.writes.count == storm
    # a write exits only when the ring is full: one exit per ring-full, not per write
    assert 0 < vm.device.write_exits <= storm // ring + 1
    memory.source.verify()
    memory.close()
    assert result.exit_counts.get("MmioWrite", 0) == vm.device.write_exits


@pytest.mark.parametrize("strategy_name", ["shared", "fill", "trap"])
def test_every_strategy_answers_all_ones(kvm: Kvm, strategy_name: str) -> None:
    size = 4 * layout.MiB
    strategy: HoleStrategy
    memory = None
    if strategy_name == "shared":
        memory = HoleMemory(AllOnesSource.create(), "test", layout.ECAM_MAX_SIZE)
        strategy = SharedStrategy(memory)
    elif strategy_name == "fill":
        strategy = FillStrategy(size)
    else:
        strategy = TrapStrategy()
    vm = hole_guest(kvm, strategy, READ_WIDTHS, size, HOLE_BASE + 2 * layout.MiB)
    with vm.guest:
        vm.run().check()
    strategy.close()
    if memory is not None:
        memory.close()
    if strategy_name == "trap":
        assert vm.device.read_exits > 0
    else:
        assert vm.device.read_exits == 0


def test_slots_change_while_a_ring3_guest_scans(kvm: Kvm, hole_memory: HoleMemory) -> None:
    """Delete, shrink, split and re-create hole slots under a scanning guest: it must
    only ever read all ones (an absent slot exits and the hole device answers).

    The guest scans round after round until the host raises its stop flag; after each
    change the host waits for a whole round under the new layout, so every layout is
    scanned, however fast either side runs."""
    size = 4 * layout.MiB
    vm = hole_guest(kvm, SharedStrategy(hole_memory), SCAN_LOOP, size, 0)
    page = layout.PAGE_SIZE
    layouts = [
        [Run(HOLE_BASE, size)],
        [Run(HOLE_BASE, size // 2)],  # shrunk
        [],  # deleted
        [Run(HOLE_BASE, page * 3), Run(HOLE_BASE + page * 4, size - page * 4)],  # split
        [Run(HOLE_BASE, size)],  # re-created
    ]
    cycles = 2
    syncs = Syncs()
    vm.guest.on_sync(syncs.record)
    changes = [0]

    def churn() -> None:
        try:
            for runs in layouts * cycles:
                vm.slots.set_runs(runs, HOLE_BASE, drain=vm.guest.loop.drain)
                changes[0] += 1
                # the round under way may have begun before the change: wait for the next
                syncs.wait_for(syncs.count() + 2)
        finally:
            raise_stop_flag(vm.guest)

    with vm.guest:
        worker = Worker(churn, "churn")
        worker.start()
        try:
            result = vm.run()
        finally:
            syncs.ended()
            raise_stop_flag(vm.guest)
            join(worker)
        assert result.reason is StopReason.DONE, result.detail
        worker.finish()
        assert changes[0] == len(layouts) * cycles
        rounds = len(result.syncs)
        assert result.syncs == list(range(1, rounds + 1))
        assert rounds >= 2 * changes[0]
        # the rounds under the deleted layout read through the device, every page
        assert vm.device.read_exits >= cycles * size // page
        vm.slots.set_runs([], HOLE_BASE)
        assert vm.guest.vm.memslots.keys() == {0}  # only RAM is left
    hole_memory.source.verify()


def test_slot_changes_while_stopped(kvm: Kvm, hole_memory: HoleMemory) -> None:
    size = 4 * layout.MiB
    vm = hole_guest(kvm, SharedStrategy(hole_memory), READ_WIDTHS, size, 0)
    with vm.guest:
        vm.slots.set_runs([Run(HOLE_BASE, size // 4)], HOLE_BASE)
        vm.slots.set_runs([], HOLE_BASE)
        vm.slots.set_runs([Run(HOLE_BASE, size)], HOLE_BASE)
        vm.run().check()
        assert vm.device.read_exits == 0


def test_more_slots_than_the_budget_is_refused_and_nothing_is_left(kvm: Kvm) -> None:
    memory = HoleMemory(AllOnesSource.create(Backing.THP), "test", layout.ECAM_MAX_SIZE)
    with GuestVm(kvm, "selftest") as guest:
        slots = HoleSlots(guest.vm, guest.slots, SharedStrategy(memory), writes="coalesce")
        before = dict(guest.vm.memslots)
        free = guest.slots.free
        # THP needs a slot per 2 MiB: a run longer than the budget allows
        too_long = Run(layout.TEST_MMIO_BASE, (free + 1) * layout.HUGE_PAGE_SIZE)
        with pytest.raises(HoleSlotError, match=rf"need {free + 1} memslots .* {free} free"):
            slots.set_runs([too_long], layout.TEST_MMIO_BASE)
        assert guest.vm.memslots == before
        assert guest.vm.coalesced_zones == set()
        assert slots.slot_count == 0
    memory.close()


def test_kernel_refusal_part_way_removes_what_was_made(kvm: Kvm) -> None:
    """A run overlapping RAM: the kernel refuses its slot; nothing stays behind."""
    memory = HoleMemory(AllOnesSource.create(Backing.MEMFD), "test", layout.ECAM_MAX_SIZE)
    with GuestVm(kvm, "selftest") as guest:
        slots = HoleSlots(guest.vm, guest.slots, SharedStrategy(memory), writes="coalesce")
        good = Run(layout.TEST_MMIO_BASE, layout.HUGE_PAGE_SIZE)
        overlapping_ram = Run(0, layout.HUGE_PAGE_SIZE)
        with pytest.raises(HoleSlotError, match="nothing changed"):
            slots.set_runs([good, overlapping_ram], 0)
        assert set(guest.vm.memslots) == {0}
        assert guest.vm.coalesced_zones == set()
        assert guest.slots.used == 1
    memory.close()


def test_hole_overlapping_ram_in_the_memory_map_names_both() -> None:
    from pcihole.memory import MemoryMap, Region, RegionKind

    ram = Region(RegionKind.RAM, 0, 16 * layout.MiB, "ram")
    with pytest.raises(MemoryMapError, match=r"hole 'ecam holes'.*overlaps ram 'ram'"):
        MemoryMap([ram, Region(RegionKind.HOLE, 8 * layout.MiB, layout.MiB, "ecam holes")])


def test_readonly_slots_are_used_and_never_the_proposal_flag(kvm: Kvm) -> None:
    memory = HoleMemory(AllOnesSource.create(Backing.MEMFD), "test", layout.ECAM_MAX_SIZE)
    vm = hole_guest(kvm, SharedStrategy(memory), SELFTEST, 4 * layout.PAGE_SIZE)
    with vm.guest:
        flags = {slot.flags for n, slot in vm.guest.vm.memslots.items() if n != 0}
    memory.close()
    assert flags == {abi.KVM_MEM_READONLY}  # bit 2 is KVM_MEM_GUEST_MEMFD today
