"""The hole planner: absent pages -> runs -> memslot pieces. Pure logic, no kernel.

A *run* is a maximal stretch of contiguous hole pages. A *piece* is one memslot: a part
of a run and the offset, inside the all-ones memory it points at, that backs its first
byte. Pieces keep ``offset ≡ guest address (mod align)`` so the kernel can map them with
huge pages, and never need more slots than runs unless a run cannot fit in the span of
the all-ones memory (a THP chunk spans only 2 MiB; a window spans the whole ECAM).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pcihole.errors import Bug
from pcihole.layout import HUGE_PAGE_SIZE, PAGE_SIZE


class PlanError(Bug, ValueError):
    """The inputs cannot be planned (unaligned, outside the window, bad span)."""


@dataclass(frozen=True, slots=True, order=True)
class Run:
    """Guest-physical ``[start, start + size)``: contiguous hole pages."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True, slots=True)
class Piece:
    """One memslot: guest ``[start, start + size)`` backed from ``offset`` of the memory."""

    start: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.start + self.size


def hole_runs(window_start: int, window_size: int, present: Iterable[int]) -> list[Run]:
    """The runs of ``[window_start, window_start + window_size)`` not covered by the
    ``present`` pages (guest addresses of 4 KiB pages), merged and sorted."""
    if window_start % PAGE_SIZE or window_size % PAGE_SIZE or window_size <= 0:
        raise PlanError(f"window {window_start:#x}+{window_size:#x} is not page aligned")
    window_end = window_start + window_size
    pages = sorted(set(present))
    runs: list[Run] = []
    cursor = window_start
    for page in pages:
        if page % PAGE_SIZE or not window_start <= page < window_end:
            raise PlanError(f"present page {page:#x} is not a page of the window")
        if page > cursor:
            runs.append(Run(cursor, page - cursor))
        cursor = page + PAGE_SIZE
    if cursor < window_end:
        runs.append(Run(cursor, window_end - cursor))
    return runs


def plan_pieces(runs: Iterable[Run], *, span: int, align: int = HUGE_PAGE_SIZE) -> list[Piece]:
    """Memslot pieces for ``runs`` over all-ones memory ``span`` bytes long.

    Each piece starts at offset ``start % align`` of the memory, so host and guest
    addresses stay congruent modulo ``align``; a run longer than the memory allows from
    there is cut into several pieces.
    """
    if span <= 0 or span % PAGE_SIZE or align <= 0 or span < align:
        raise PlanError(f"span {span:#x} must be a page multiple of at least {align:#x}")
    pieces: list[Piece] = []
    for run in runs:
        start = run.start
        while start < run.end:
            offset = start % align
            size = min(run.end - start, span - offset)
            pieces.append(Piece(start, size, offset))
            start += size
    return pieces
