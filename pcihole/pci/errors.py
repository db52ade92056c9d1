"""The PCI package's exceptions: one type per module that can fail.

``PciError`` and its kinds are about what ``--device`` texts describe (bad input);
``ConfigSpaceError`` and ``EcamError`` about pcihole's own models and decoders, which
the guest cannot reach with a wrong value (its accesses are sized 1, 2, 4 or 8 and land
inside a window), so they are bugs.
"""

from __future__ import annotations

from pcihole.errors import BadInput, Bug


class PciError(BadInput):
    """Base of the errors a device list given on the command line can cause."""


class BdfError(PciError):
    """A bus/device/function address is malformed or out of range."""


class ConfigSpaceError(Bug):
    """A configuration-space access or definition does not fit the 4 KiB register file."""


class DeviceError(PciError):
    """A device model was given parameters it does not accept."""


class EcamError(Bug):
    """An ECAM or CF8/CFC access falls outside what the decoder covers."""


class TopologyError(PciError):
    """A device list cannot form a valid PCI hierarchy.

    ``spec`` is the offending ``--device`` text (or ``None`` for whole-topology errors);
    ``reason`` says what is wrong with it. ``str()`` gives both on one line.
    """

    def __init__(self, reason: str, spec: str | None = None) -> None:
        self.reason = reason
        self.spec = spec
        super().__init__(reason if spec is None else f"--device {spec!r}: {reason}")
