"""Strategies and the shared hole memory, without KVM: choices, fallbacks, plans."""

from __future__ import annotations

import pytest

from pcihole import layout
from pcihole.holes.memory import HoleMemory
from pcihole.holes.planner import Piece, Run, hole_runs
from pcihole.holes.source import AllOnesSource, Backing
from pcihole.holes.strategy import (
    FillStrategy,
    SharedStrategy,
    StrategyError,
    TrapStrategy,
    make_strategy,
)

WINDOW = layout.ECAM_BASE
SIZE = layout.ecam_size(256)


def test_shared_falls_back_to_trap_without_readonly_slots_and_says_so() -> None:
    strategy = make_strategy("shared", window_size=SIZE, readonly_memory=False)
    assert isinstance(strategy, TrapStrategy)
    assert "KVM_CAP_READONLY_MEM" in strategy.note


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(StrategyError, match="shared, fill, trap"):
        make_strategy("share", window_size=SIZE, readonly_memory=True)


def test_window_gives_one_slot_per_run() -> None:
    with AllOnesSource.create(Backing.MEMFD) as source:
        memory = HoleMemory(source, "test", layout.ECAM_MAX_SIZE)
        assert memory.window is not None
        runs = hole_runs(WINDOW, SIZE, [WINDOW, WINDOW + 0x5000, WINDOW + 0x10_0000])
        pieces = SharedStrategy(memory).pieces(runs, WINDOW)
        assert len(pieces) == len(runs) == 3
        for piece in pieces:
            assert memory.host_address(piece.offset) % layout.HUGE_PAGE_SIZE == (
                piece.start % layout.HUGE_PAGE_SIZE
            )
        memory.close()


def test_no_mappings_left_means_no_window_and_a_slot_per_chunk() -> None:
    with AllOnesSource.create(Backing.MEMFD, memfd_chunk=64 * layout.KiB) as source:
        memory = HoleMemory(source, "test", layout.ECAM_MAX_SIZE, map_limit=10)
        assert memory.window is None
        assert "vm.max_map_count" in memory.note
        assert "one slot per 64 KiB" in memory.report().layout
        pieces = SharedStrategy(memory).pieces([Run(WINDOW, layout.MiB)], WINDOW)
        assert len(pieces) == 16
        assert all(p.offset + p.size <= memory.span for p in pieces)
        memory.close()


def test_fill_pieces_mirror_the_window() -> None:
    strategy = FillStrategy(SIZE)
    try:
        runs = hole_runs(WINDOW, SIZE, [WINDOW + 0x3000])
        pieces = strategy.pieces(runs, WINDOW)
        assert [(p.start - WINDOW, p.offset) for p in pieces] == [(0, 0), (0x4000, 0x4000)]
        assert strategy.per_vm_ranges() == [(strategy.buffer.address, SIZE)]
    finally:
        strategy.close()


def test_a_small_slot_budget_passes_thp_over_for_a_window() -> None:
    from pcihole.holes.memory import close_shared_hole_memory, shared_hole_memory

    close_shared_hole_memory()
    try:
        best = shared_hole_memory(None)
        tight = make_strategy("shared", window_size=SIZE, readonly_memory=True, free_memslots=64)
        assert isinstance(tight, SharedStrategy)
        if best.window is None:  # THP is the best here: a slot per 2 MiB would not fit
            assert tight.memory.backing is Backing.MEMFD and tight.memory.window is not None
            assert "128 memslots, 64 free" in tight.note
        else:  # the best backing already plans one slot per run
            assert tight.memory is best and tight.note == ""
        roomy = make_strategy(
            "shared", window_size=SIZE, readonly_memory=True, free_memslots=10_000
        )
        assert isinstance(roomy, SharedStrategy) and roomy.memory is best
    finally:
        close_shared_hole_memory()


def test_a_new_strategy_is_one_registered_class() -> None:
    from pcihole.holes.strategy import REGISTRY, HoleStrategy, StrategyOptions, register
    from pcihole.measure import bench, demo

    @register
    class Mirrored(HoleStrategy):
        name = "mirrored"
        label = "mirrored (test)"
        colour = "tab:blue"
        maps_memory = False
        present = "trap"

        @classmethod
        def create(cls, options: StrategyOptions) -> HoleStrategy:
            return cls()

        def pieces(self, runs: list[Run], window_start: int) -> list[Piece]:
            return []

        def host_address(self, piece: Piece) -> int:
            raise AssertionError

    try:
        made = make_strategy("mirrored", window_size=1 << 20, readonly_memory=True)
        assert isinstance(made, Mirrored)
        assert "mirrored" in demo.order() and demo.order()[-1] == "shared"
        assert bench.options_for("mirrored", 1).present == "trap"
        assert bench.fits_in_memory("mirrored", 64, 256) is None
    finally:
        del REGISTRY["mirrored"]
