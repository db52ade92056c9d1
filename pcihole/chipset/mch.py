"""The q35 MCH (00:00.0): how its config registers reshape the machine.

PCIEXBAR (config 0x60, 64 bits): enable in bit 0, length in bits 2:1, base in bits 35:26.
Firmware writes it through CF8/CFC (or ECAM itself, once placed); the MCH reads it back
from the host bridge's model after every write to 00:00.0 and asks the machine to move
the ECAM window.
"""

from __future__ import annotations

from collections.abc import Callable

from pcihole import layout
from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import PCIEXBAR
from pcihole.pci.topology import Topology

HOST_BRIDGE = Bdf(0, 0, 0)
PCIEXBAR_ENABLE = 1
PCIEXBAR_LENGTH_SHIFT = 1
PCIEXBAR_LENGTH_BUSES = {0: 256, 1: 128, 2: 64}
"""Length code -> buses decoded (1 MiB each); code 3 is reserved (no window here)."""
PCIEXBAR_BASE_BITS = (1 << 36) - 1

PlaceWindow = Callable[[int | None, int], None]
"""Put the ECAM window at ``base`` (None: nowhere) decoding ``buses`` buses."""


def decode_pciexbar(value: int) -> tuple[int, int] | None:
    """``(base, buses)`` of the window a PCIEXBAR value asks for, None when disabled.

    The base keeps the address bits the length allows: 35:28 for 256 MiB, 35:27 for
    128 MiB, 35:26 for 64 MiB, so a window is always aligned to its size.
    """
    if not value & PCIEXBAR_ENABLE:
        return None
    buses = PCIEXBAR_LENGTH_BUSES.get(value >> PCIEXBAR_LENGTH_SHIFT & 3)
    if buses is None:
        return None
    size = layout.ecam_size(buses)
    return value & PCIEXBAR_BASE_BITS & ~(size - 1), buses


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
