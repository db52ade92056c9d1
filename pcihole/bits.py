"""Bit arithmetic every room shares."""

from __future__ import annotations


def all_ones(size: int) -> int:
    """A ``size``-byte value with every bit set: what a read of nothing returns (a PCI
    master abort, an unclaimed port or MMIO address, a hole)."""
    return (1 << (8 * size)) - 1
