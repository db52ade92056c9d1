"""Properties over bad and random input: the memory map, the hole planner, configuration
space accesses of any size, the ECAM device under split accesses, ``--device`` text.

Whatever goes in, a check either refuses it with the module's own error or accepts
something valid; nothing else ever comes out.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pcihole import layout
from pcihole.holes.planner import Piece, PlanError, Run, hole_runs, plan_pieces
from pcihole.holes.slots import HoleWrites
from pcihole.machine import EcamDevice
from pcihole.memory import (
    MemoryMap,
    MemoryMapError,
    MemslotShortage,
    Region,
    RegionKind,
    SlotAllocator,
)
from pcihole.pci.config import CONFIG_SPACE_SIZE, ConfigSpace
from pcihole.pci.devices import Function
from pcihole.pci.errors import ConfigSpaceError, PciError
from pcihole.pci.topology import Q35_BUILTINS, Topology, parse_device_spec

PAGE = layout.PAGE_SIZE
MAX_PAGES = 64

# -- the memory map ---------------------------------------------------------------------------

kinds = st.sampled_from(list(RegionKind))


@st.composite
def regions(draw: st.DrawFn) -> Region:
    """Page-aligned regions in a small space, so that overlaps are common."""
    start = draw(st.integers(0, MAX_PAGES)) * PAGE
    size = draw(st.integers(1, 16)) * PAGE
    return Region(draw(kinds), start, size, draw(st.sampled_from(["", "a", "b"])))


def overlapping_pair(items: list[Region]) -> bool:
    return any(a.overlaps(b) for a, b in itertools.combinations(items, 2))


def assert_valid(memory_map: MemoryMap) -> None:
    """Sorted, no two regions sharing a byte, every region page aligned and non-empty."""
    items = list(memory_map)
    assert items == sorted(items, key=lambda r: r.start)
    for before, after in itertools.pairwise(items):
        assert before.end <= after.start
    for region in items:
        assert region.size > 0 and region.start % PAGE == 0 and region.size % PAGE == 0


@given(st.lists(regions(), max_size=8))
def test_a_map_is_accepted_exactly_when_nothing_overlaps(items: list[Region]) -> None:
    if overlapping_pair(items):
        with pytest.raises(MemoryMapError, match="overlaps"):
            MemoryMap(items)
        return
    memory_map = MemoryMap(items)
    assert_valid(memory_map)
    assert sorted(memory_map, key=id) == sorted(items, key=id)


@given(st.lists(regions(), max_size=6), regions(), st.integers(0, (MAX_PAGES + 16) * PAGE))
def test_adding_a_region_keeps_the_map_valid_or_changes_nothing(
    items: list[Region], extra: Region, address: int
) -> None:
    assume(not overlapping_pair(items))
    memory_map = MemoryMap(items)
    if any(extra.overlaps(region) for region in items):
        with pytest.raises(MemoryMapError, match=re.escape(extra.describe())):
            memory_map.with_region(extra)
        assert list(memory_map) == sorted(items, key=lambda r: r.start)
        return
    bigger = memory_map.with_region(extra)
    assert_valid(bigger)
    assert len(bigger) == len(items) + 1
    holders = [region for region in bigger if region.contains(address)]
    assert len(holders) <= 1
    smaller = bigger.without(extra)
    assert list(smaller) == list(memory_map)
    with pytest.raises(MemoryMapError, match="not in the map"):
        smaller.without(extra)


@given(st.integers(-2 * PAGE, 4 * PAGE), st.integers(-2 * PAGE, 4 * PAGE))
def test_a_region_is_page_aligned_non_empty_and_non_negative(start: int, size: int) -> None:
    valid = start >= 0 and size > 0 and start % PAGE == 0 and size % PAGE == 0
    if valid:
        region = Region(RegionKind.HOLE, start, size)
        assert region.end == start + size
    else:
        with pytest.raises(MemoryMapError):
            Region(RegionKind.HOLE, start, size)


@given(st.integers(1, 12), st.lists(st.tuples(st.booleans(), st.integers(0, 14)), max_size=40))
def test_slot_numbers_never_exceed_the_budget_nor_repeat(
    budget: int, steps: list[tuple[bool, int]]
) -> None:
    allocator = SlotAllocator(budget)
    held: set[int] = set()
    for allocate, amount in steps:
        if allocate:
            if amount > budget - len(held):
                with pytest.raises(MemslotShortage, match=f"{amount} memslots needed"):
                    allocator.allocate(amount)
                continue
            got = allocator.allocate(amount)
            free_before = sorted(set(range(budget)) - held)
            assert got == free_before[:amount]  # lowest free first
            held.update(got)
        elif held:
            slot = sorted(held)[amount % len(held)]
            allocator.release([slot])
            held.discard(slot)
            with pytest.raises(MemoryMapError, match="not allocated"):
                allocator.release([slot])
        assert allocator.used == len(held) and allocator.free == budget - len(held)
        assert all(0 <= slot < budget for slot in held)


# -- the hole planner ---------------------------------------------------------------------------


@st.composite
def windows(draw: st.DrawFn) -> tuple[int, int, set[int]]:
    """A window (start, size) and the guest addresses of its present pages."""
    start = draw(st.integers(0, 1 << 20)) * PAGE
    pages = draw(st.integers(1, 600))
    present = draw(st.sets(st.integers(0, pages - 1), max_size=40))
    return start, pages * PAGE, {start + page * PAGE for page in present}


@given(windows())
def test_hole_runs_cover_exactly_the_absent_pages_merged(
    window: tuple[int, int, set[int]],
) -> None:
    start, size, present = window
    runs = hole_runs(start, size, sorted(present, reverse=True))  # any order, any duplicates
    covered = [page for run in runs for page in range(run.start, run.end, PAGE)]
    absent = [page for page in range(start, start + size, PAGE) if page not in present]
    assert covered == absent  # exactly the holes, ascending, each once
    for run in runs:
        assert run.size > 0 and run.start % PAGE == 0 and run.size % PAGE == 0
    for before, after in itertools.pairwise(runs):
        assert before.end < after.start  # merged: a present page between any two runs
    assert hole_runs(start, size, [*present, *present]) == runs


@given(windows(), st.integers(-3, 3))
def test_hole_runs_refuse_pages_outside_the_window_or_unaligned(
    window: tuple[int, int, set[int]], nudge: int
) -> None:
    start, size, present = window
    outside = start + size if nudge >= 0 else start - PAGE
    assume(outside >= 0)
    with pytest.raises(PlanError):
        hole_runs(start, size, [*present, outside])
    if nudge:
        with pytest.raises(PlanError):
            hole_runs(start, size, [start + abs(nudge)])
    with pytest.raises(PlanError):
        hole_runs(start + 1, size, [])


aligns = st.sampled_from([PAGE, 16 * PAGE, layout.HUGE_PAGE_SIZE])


@given(windows(), aligns, st.integers(0, 6), st.integers(0, 511))
def test_pieces_cover_the_runs_congruent_and_inside_the_span(
    window: tuple[int, int, set[int]], align: int, extra_aligns: int, extra_pages: int
) -> None:
    start, size, present = window
    runs = hole_runs(start, size, present)
    span = align * (1 + extra_aligns) + (extra_pages * PAGE) % align
    pieces = plan_pieces(runs, span=span, align=align)
    # exactly the runs, in order, each split into consecutive pieces
    by_run: dict[Run, list[Piece]] = {}
    for piece in pieces:
        owner = next(run for run in runs if run.start <= piece.start < run.end)
        by_run.setdefault(owner, []).append(piece)
    assert list(by_run) == runs
    for run, parts in by_run.items():
        assert parts[0].start == run.start and parts[-1].end == run.end
        for before, after in itertools.pairwise(parts):
            assert before.end == after.start
            assert before.offset + before.size == span  # only a full piece is followed
        for piece in parts:
            assert piece.size > 0 and piece.size % PAGE == 0
            assert piece.offset == piece.start % align  # huge-page congruence
            assert piece.offset >= 0 and piece.offset + piece.size <= span
        # one slot per run, unless the run does not fit from its offset to the span's end
        if run.size <= span - run.start % align:
            assert len(parts) == 1
        else:
            assert len(parts) > 1
    assert len(pieces) >= len(runs)


@given(st.integers(-PAGE, 8 * PAGE), aligns)
def test_plan_refuses_a_span_shorter_than_the_alignment_or_unaligned(span: int, align: int) -> None:
    run = [Run(layout.ECAM_BASE, PAGE)]
    if span <= 0 or span % PAGE or span < align:
        with pytest.raises(PlanError):
            plan_pieces(run, span=span, align=align)
    else:
        assert plan_pieces(run, span=span, align=align) == [Piece(layout.ECAM_BASE, PAGE, 0)]


def test_a_window_as_long_as_the_ecam_needs_one_slot_per_run() -> None:
    """The shared strategy's case: the span is the whole 256-bus window."""
    topology = Topology.default(layout.ECAM_MAX_BUSES)
    present = [layout.ECAM_BASE + offset for offset in topology.present_offsets()]
    runs = hole_runs(layout.ECAM_BASE, layout.ECAM_MAX_SIZE, present)
    assert len(plan_pieces(runs, span=layout.ECAM_MAX_SIZE)) == len(runs)
    # a 2 MiB chunk (THP) cuts the long runs: one slot per 2 MiB they touch
    pieces = plan_pieces(runs, span=layout.HUGE_PAGE_SIZE)
    touched = sum(
        (run.end - 1) // layout.HUGE_PAGE_SIZE - run.start // layout.HUGE_PAGE_SIZE + 1
        for run in runs
    )
    assert len(pieces) == touched > len(runs)


# -- configuration space: accesses of every size ----------------------------------------------


NVME = next(f for f in Topology.default(4) if f.model == "nvme").config
"""BARs (a 64-bit one), command, W1C status, capabilities: a bit of everything."""


def populated() -> ConfigSpace:
    return copy.deepcopy(NVME)


@given(st.integers(0, CONFIG_SPACE_SIZE - 1), st.sampled_from([1, 2, 4, 8]), st.integers(0))
def test_a_wide_write_is_its_bytes_written_one_by_one(offset: int, size: int, seed: int) -> None:
    """What the hostile-guest replay relies on: registers behave byte by byte, so a
    write KVM splits at a page boundary means the same as the whole write."""
    assume(offset + size <= CONFIG_SPACE_SIZE)
    value = seed % (1 << (8 * size))
    whole, bytewise = populated(), populated()
    changed = whole.write(offset, size, value)
    changes = [bytewise.write(offset + i, 1, value >> (8 * i) & 0xFF) for i in range(size)]
    assert whole.snapshot() == bytewise.snapshot()
    assert changed == any(changes)
    assert whole.read(offset, size) == int.from_bytes(
        bytes(whole.read(offset + i, 1) for i in range(size)), "little"
    )


@given(st.integers(-8, CONFIG_SPACE_SIZE + 8), st.integers(-1, 9), st.integers(-1, 1 << 65))
def test_bad_accesses_raise_and_change_nothing(offset: int, size: int, value: int) -> None:
    config = populated()
    before = config.snapshot()
    fits = size in (1, 2, 4, 8) and offset >= 0 and offset + size <= CONFIG_SPACE_SIZE
    value_fits = fits and 0 <= value < 1 << (8 * size)
    if value_fits:
        config.write(offset, size, value)
        return
    with pytest.raises(ConfigSpaceError):
        config.write(offset, size, value)
    assert config.snapshot() == before
    if not fits:
        with pytest.raises(ConfigSpaceError):
            config.read(offset, size)


# -- the ECAM device under split and odd-sized accesses ------------------------------------------


@dataclass
class FakeWindow:
    """What ``EcamDevice`` uses of its window."""

    functions_by_page: dict[int, Function]
    base: int = layout.ECAM_BASE
    hole_writes: HoleWrites = field(default_factory=HoleWrites)
    written_to: list[object] = field(default_factory=list)

    def written(self, write: object) -> None:
        self.written_to.append(write)


BUSES = 2
WINDOW = layout.ecam_size(BUSES)


def page_index(topology: Topology) -> dict[int, Function]:
    return {f.bdf.ecam_offset >> 12: f for f in topology}


@st.composite
def accesses(draw: st.DrawFn) -> tuple[int, int, bool, int]:
    """An access KVM may hand the monitor: 1 to 8 bytes (3, 5, 6 and 7 are the pieces of an
    access split at a page boundary), near a present function's page or anywhere."""
    present = [f.bdf.ecam_offset for f in Topology.default(BUSES)]
    page = draw(
        st.sampled_from(present) | st.integers(0, WINDOW // PAGE - 1).map(lambda p: p * PAGE)
    )
    register = draw(
        st.integers(0, 0x40) | st.integers(PAGE - 8, PAGE - 1) | st.integers(0, PAGE - 1)
    )
    size = draw(st.integers(1, 8))
    offset = min(page + register, WINDOW - size)
    return offset, size, draw(st.booleans()), draw(st.integers(0, (1 << (8 * size)) - 1))


@settings(max_examples=60)
@given(st.lists(accesses(), min_size=1, max_size=40))
def test_ecam_device_answers_any_access_as_its_bytes_would(
    ops: list[tuple[int, int, bool, int]],
) -> None:
    """Every size from 1 to 8 at any offset, across pages too: a read is the bytes of
    the functions and holes it covers, a write changes each function as its bytes
    written one by one would, and each piece landing in a hole is recorded once."""
    window = FakeWindow(page_index(Topology.default(BUSES)))
    device = EcamDevice(window)  # type: ignore[arg-type]
    model = page_index(Topology.default(BUSES))
    recorded: list[tuple[int, int, bytes]] = []
    window.hole_writes.observe(lambda w: recorded.append((w.address, w.size, w.data)))
    expected_holes: list[tuple[int, int, bytes]] = []
    for offset, size, is_write, value in ops:
        data = value.to_bytes(size, "little")
        if is_write:
            device.write(offset, size, value)
            pieces: dict[int, list[int]] = {}
            for i in range(size):
                pieces.setdefault((offset + i) >> 12, []).append(i)
            for page, indexes in pieces.items():
                function = model.get(page)
                if function is None:
                    first = offset + indexes[0]
                    expected_holes.append(
                        (layout.ECAM_BASE + first, len(indexes), data[indexes[0] : indexes[-1] + 1])
                    )
                    continue
                for i in indexes:
                    function.config.write((offset + i) & 0xFFF, 1, data[i])
        else:
            expected = bytes(
                0xFF
                if (f := model.get((offset + i) >> 12)) is None
                else f.config.read((offset + i) & 0xFFF, 1)
                for i in range(size)
            )
            assert device.read(offset, size) == int.from_bytes(expected, "little")
    assert recorded == expected_holes
    for page, function in model.items():
        assert window.functions_by_page[page].config.snapshot() == function.config.snapshot()


# -- --device text ------------------------------------------------------------------------------

spec_parts = st.sampled_from(
    [
        "00:02.0",
        "00:1c.0",
        "01:00.0",
        "ff:1f.7",
        "00:20.0",
        "0000:00:03.0",
        "1:2.3",
        "00:00.8",
        "zz",
        "",
        " ",
        "=",
        ",",
        "bus=",
        "bus=1",
        "bus=0x100",
        "subordinate=2",
        "nvme",
        "root-port",
        "virtio-net",
        "host-bridge",
        "x=1",
        "bus=-1",
        "\x00",
        "é",
    ]
)


@given(
    st.lists(st.lists(spec_parts, max_size=4).map("".join) | st.text(max_size=20), max_size=4),
    st.integers(-1, 257),
)
def test_device_text_is_accepted_or_refused_with_a_pci_error(specs: list[str], buses: int) -> None:
    """Whatever the ``--device`` texts and bus count, building a topology either works
    (and the result is valid) or raises the PCI package's own error, never anything else
    (which the command line would show as a traceback)."""
    try:
        topology = Topology.build(specs, buses)
    except PciError as error:
        assert str(error)
        return
    assert 1 <= buses <= 256
    named = {parse_device_spec(text).bdf for text in specs}
    builtins = {parse_device_spec(text).bdf for text in Q35_BUILTINS}
    assert len(topology) == len(specs) + len(builtins - named)  # -device adds to q35's
    for function in topology:
        assert function.bdf.bus < buses
