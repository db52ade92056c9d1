"""The machine: buses, the run loop, the ECAM window, and the one builder (``Machine``).

``window`` covers a VM's ECAM window (``mirrors``, hole slots, the device beneath); ``bus``
and ``runloop`` carry exits to devices; ``bars`` places BAR register blocks. The q35
machine of ``pcihole boot`` is built on it in ``pcihole.q35``.
"""

from pcihole.machine.builder import Machine, PlacedDevice, Shell
from pcihole.machine.window import (
    CONFIG_PORTS,
    PRESENT_MODES,
    ConfigExits,
    EcamDevice,
    EcamWindow,
    LegacyConfigPorts,
    MachineError,
    MachineOptions,
    MachineReport,
)

__all__ = [
    "CONFIG_PORTS",
    "PRESENT_MODES",
    "ConfigExits",
    "EcamDevice",
    "EcamWindow",
    "LegacyConfigPorts",
    "Machine",
    "MachineError",
    "MachineOptions",
    "MachineReport",
    "PlacedDevice",
    "Shell",
]
