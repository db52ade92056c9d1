"""The q35 machine ``pcihole boot`` runs, in one room.

``machine.py`` is the recipe (read it first): the shell (``shell.py``), the platform
devices (``platform.py``), the chipset's registers (``mch.py``: PCIEXBAR and PAM;
``lpc.py``: the ICH9 LPC's PMBASE, SCI and PIRQs), the PAM shadow's memslots
(``shadow.py``), then the builder's ECAM window and CF8/CFC; ``result.py`` says how a
run ended.
"""

from pcihole.q35.machine import LinuxBoot, Q35Machine
from pcihole.q35.result import (
    GUEST_STOPPED_STATUS,
    SIGNAL_STATUS_OFFSET,
    TIMEOUT_STATUS,
    BootResult,
    Ending,
    Interval,
)
from pcihole.q35.shell import BootError, Q35Shell, check_image

__all__ = [
    "GUEST_STOPPED_STATUS",
    "SIGNAL_STATUS_OFFSET",
    "TIMEOUT_STATUS",
    "BootError",
    "BootResult",
    "Ending",
    "Interval",
    "LinuxBoot",
    "Q35Machine",
    "Q35Shell",
    "check_image",
]
