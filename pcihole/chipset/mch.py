"""The q35 MCH (00:00.0): how its config registers reshape the machine.

PCIEXBAR (config 0x60, 64 bits): enable in bit 0, length in bits 2:1, base in bits 35:25
as QEMU 7.2 masks it (bits above 35 are kept in the register but never decoded).
Firmware writes it through CF8/CFC (or ECAM itself, once placed); the MCH reads it back
from the host bridge's model after every write to 00:00.0 and asks the machine to move
the ECAM window.
"""

from __future__ import annotations

from collections.abc import Callable

from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import PCIEXBAR
from pcihole.pci.topology import Topology

HOST_BRIDGE = Bdf(0, 0, 0)
PCIEXBAR_ENABLE = 1
PCIEXBAR_LENGTH_SHIFT = 1
PCIEXBAR_LENGTH_BUSES = {0: 256, 1: 128, 2: 64}
"""Length code -> buses decoded (1 MiB each); code 3 is reserved (no window here)."""
PCIEXBAR_BASE_BITS = (1 << 36) - (1 << 28)
"""Base bits every length decodes: 35:28 (QEMU's MCH_HOST_BRIDGE_PCIEXBAR_ADMSK)."""
PCIEXBAR_LOW_BASE_BITS = {256: 0, 128: 1 << 26 | 1 << 25, 64: 1 << 25}
"""Base bits below 28 each length adds, by buses: QEMU 7.2's 128ADMSK (bit 26) and 64ADMSK
(bit 25), one bit lower than the datasheet's 27 and 26; a guest finds the window where
QEMU puts it (checked against a running QEMU in tests/kvm/test_boot.py)."""

PlaceWindow = Callable[[int | None, int], None]
"""Put the ECAM window at ``base`` (None: nowhere) decoding ``buses`` buses."""


def decode_pciexbar(value: int) -> tuple[int, int] | None:
    """``(base, buses)`` of the window a PCIEXBAR value asks for, None when disabled.

    The base keeps the address bits QEMU 7.2 keeps: 35:28 for 256 MiB, 35:28, 26 and 25
    for 128 MiB, 35:28 and 25 for 64 MiB (so a window is 32 MiB aligned at least).
    """
    if not value & PCIEXBAR_ENABLE:
        return None
    buses = PCIEXBAR_LENGTH_BUSES.get(value >> PCIEXBAR_LENGTH_SHIFT & 3)
    if buses is None:
        return None
    return value & (PCIEXBAR_BASE_BITS | PCIEXBAR_LOW_BASE_BITS[buses]), buses


class Mch:
    """Watches config writes for the host bridge and places the ECAM window as PCIEXBAR
    says (``place_window`` is the machine's; until firmware enables it there is none)."""

    def __init__(self, topology: Topology, place_window: PlaceWindow) -> None:
        bridge = topology.get(HOST_BRIDGE)
        if bridge is None or bridge.model != "host-bridge":
            raise ValueError(f"q35 firmware needs the host bridge at {HOST_BRIDGE}")
        self.host_bridge = bridge
        self.max_buses = topology.buses
        self.place_window = place_window

    def config_written(self, bdf: Bdf) -> None:
        """A config write changed ``bdf``'s registers (the ECAM device and CF8 call this)."""
        if bdf == HOST_BRIDGE:
            self.apply_pciexbar()

    def apply_pciexbar(self) -> None:
        wanted = decode_pciexbar(self.host_bridge.config.read(PCIEXBAR, 8))
        base, buses = (None, self.max_buses) if wanted is None else wanted
        self.place_window(base, min(buses, self.max_buses))
