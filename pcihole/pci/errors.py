"""The PCI package's exceptions: one base, one type per module that can fail."""

from __future__ import annotations

from pcihole.errors import BadInput


class PciError(BadInput):
    """Base of every error raised by ``pcihole.pci``."""


class BdfError(PciError):
    """A bus/device/function address is malformed or out of range."""


class ConfigSpaceError(PciError):
    """A configuration-space access or definition does not fit the 4 KiB register file."""


class DeviceError(PciError):
    """A device model was given parameters it does not accept."""


class EcamError(PciError):
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
