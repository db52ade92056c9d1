"""The default backing rule says what it chose and what that costs the kernel."""

from __future__ import annotations

from pcihole import layout
from pcihole.holes.memory import close_shared_hole_memory
from pcihole.holes.source import Backing
from pcihole.holes.strategy import SharedStrategy, make_strategy, thp_choice_note

WINDOW = layout.ecam_size(256)


def test_the_note_counts_slots_and_their_kernel_bytes() -> None:
    note = thp_choice_note(128)
    assert "up to 128 per VM" in note and "~3072 KiB" in note
    assert "serve-holes --reserve-hugepage" in note


def test_a_default_thp_chunk_says_why_and_a_window_says_nothing() -> None:
    close_shared_hole_memory()
    try:
        chosen = make_strategy(
            "shared", window_size=WINDOW, readonly_memory=True, free_memslots=10_000
        )
        assert isinstance(chosen, SharedStrategy)
        if chosen.memory.backing is Backing.THP:
            assert chosen.note == thp_choice_note(128)
        else:  # a huge page was free (or THP absent): a window, one slot per run
            assert chosen.memory.window is not None and chosen.note == ""
        forced = make_strategy(
            "shared",
            window_size=WINDOW,
            readonly_memory=True,
            backing=Backing.THP,
            free_memslots=10_000,
        )
        assert forced.note == ""  # asked for: nothing to explain
    finally:
        close_shared_hole_memory()
