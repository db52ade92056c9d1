"""The guest's PCI view read from its kernel log, for hosts where its user space never runs.

On ``kvm_pvm`` hosts a guest's system calls do not reach its kernel (a 64-bit ``syscall``
faults at LSTAR in user mode; an i386 ``int $0x80`` raises #UD), so the initramfs's init
dies at its first one and never prints the view ``view.py`` reads. The kernel has printed
the same facts by the end of its PCI phase (``PCI: CLS ...``), one line per function and
per bridge (Linux 6.1, ``drivers/pci/probe.c``)::

    pci 0000:00:1f.2: [8086:2922] type 00 class 0x010601
    pci 0000:00:1c.0: PCI bridge to [bus 01]            (or [bus 01-02])

``parse_kernel_log`` turns them into a ``GuestPciView`` whose functions hold just those
registers (vendor, device, class, header type, secondary and subordinate bus), so
``view.compare`` judges it as it judges init's view. Other lines (timestamps, initcall
debugging, BARs, quirks) are skipped; a bridge's later line overrides an earlier one
(the kernel prints it again when it sets the bridge's windows up).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pcihole.guest.linux.view import GuestFunction, GuestPciView, GuestViewError, parse_view
from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.config import (
    CLASS_CODE,
    DEVICE_ID,
    HEADER_TYPE,
    SECONDARY_BUS,
    SUBORDINATE_BUS,
    VENDOR_ID,
)

PCI_PHASE_END = "PCI: CLS"
"""The kernel's last line of its PCI phase (``pci_apply_final_quirks``): the whole view
is in the log by then."""
RUN_INIT = "Run /init as init process"
INIT_KILLED = "Attempted to kill init"
_ADDRESS = r"pci 0000:(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): "
_FUNCTION = re.compile(
    _ADDRESS + r"\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\] type (?P<type>[0-9a-f]{2}) "
    r"class 0x(?P<cls>[0-9a-f]{6})"
)
_BRIDGE = re.compile(
    _ADDRESS + r"PCI bridge to \[bus (?P<secondary>[0-9a-f]{2})(?:-(?P<subordinate>[0-9a-f]{2}))?\]"
)
_HEADER_BYTES = 64


def parse_kernel_log(lines: Iterable[str]) -> GuestPciView:
    """The PCI view in kernel log ``lines``; GuestViewError when it names no function."""
    ids: dict[GuestBdf, tuple[int, int, int, int]] = {}
    buses: dict[GuestBdf, tuple[int, int]] = {}
    for line in lines:
        if (match := _FUNCTION.search(line)) is not None:
            bdf = GuestBdf(Bdf.parse(match["bdf"]))
            ids[bdf] = (
                int(match["vendor"], 16),
                int(match["device"], 16),
                int(match["cls"], 16),
                int(match["type"], 16),
            )
        elif (match := _BRIDGE.search(line)) is not None:
            secondary = int(match["secondary"], 16)
            subordinate = int(match["subordinate"] or match["secondary"], 16)
            buses[GuestBdf(Bdf.parse(match["bdf"]))] = (secondary, subordinate)
    if not ids:
        raise GuestViewError("the kernel log names no PCI function ('pci 0000:BB:DD.F: [v:d]')")
    functions = {bdf: GuestFunction(bdf, _header(*ids[bdf], buses.get(bdf))) for bdf in ids}
    devices = {bdf: (vendor, device) for bdf, (vendor, device, _, _) in ids.items()}
    return GuestPciView(devices, functions)


def _header(
    vendor: int, device: int, class_code: int, header_type: int, buses: tuple[int, int] | None
) -> bytes:
    """A config header holding what the kernel printed, the rest zero."""
    config = bytearray(_HEADER_BYTES)
    config[VENDOR_ID : VENDOR_ID + 2] = vendor.to_bytes(2, "little")
    config[DEVICE_ID : DEVICE_ID + 2] = device.to_bytes(2, "little")
    config[CLASS_CODE : CLASS_CODE + 3] = class_code.to_bytes(3, "little")
    config[HEADER_TYPE] = header_type
    if buses is not None:
        config[SECONDARY_BUS], config[SUBORDINATE_BUS] = buses
    return bytes(config)


def init_fault_note(lines: Iterable[str]) -> str | None:
    """A note when the kernel ran init and then killed it (init exited or died of a
    signal): on a host where guest system calls fault, its first one kills it."""
    started = False
    for line in lines:
        if RUN_INIT in line:
            started = True
        elif started and INIT_KILLED in line:
            return (
                "the guest's init died right after it started ('Attempted to kill init'): on "
                "this host (kvm_pvm) a guest's system calls fault in user mode instead of "
                "entering its kernel, so user space cannot run; the guest's PCI view is in "
                "its kernel log"
            )
    return None


def read_guest_view(lines: Sequence[str]) -> tuple[str, GuestPciView] | None:
    """The guest's PCI view from its console ``lines`` and where it came from: its init's
    report when init printed one, else the kernel's log; None when neither holds one."""
    try:
        return "its init", parse_view("\n".join(lines))
    except GuestViewError:
        pass
    try:
        return "its kernel log", parse_kernel_log(lines)
    except GuestViewError:
        return None


__all__ = [
    "INIT_KILLED",
    "PCI_PHASE_END",
    "RUN_INIT",
    "init_fault_note",
    "parse_kernel_log",
    "read_guest_view",
]
