"""The root of every error pcihole raises, with one class per party at fault.

Who is at fault decides the class, and the class decides how ``pcihole`` ends
(``pcihole.cli`` prints one line, never a traceback):

========================  ======  ==========================================================
class                     status  whose fault
========================  ======  ==========================================================
``BadInput``              2       the user's: the command line, or a file it named
``EnvironmentProblem``    1       the host's: no ``/dev/kvm`` or no permission on it, a
                                  package missing, the kernel refusing (ENOMEM, EPERM, the
                                  memslot limit, no free huge page, an address-space limit)
``GuestFault``            70      the guest's: what it did (a triple fault, an access that
                                  straddles a device, DMA outside RAM, an unusable report);
                                  it ends that guest's run, not its neighbours'
``Bug``                   4       pcihole's own: an invariant broken, an internal call
                                  made wrong; any other exception escaping a command is one
========================  ======  ==========================================================

Every module's error type derives from exactly one of the four (``tests/unit/test_errors.py``
walks the package and checks each class against its expected status). A library-level
check (a memory map refusing an overlap, a bus refusing a second device at a port) is
classed by who reaches it from the command line: options are validated first, so what
reaches such a check is pcihole's bug unless a guest chose the value, and there the
caller (the MCH placing a guest's PCIEXBAR, a device doing a guest's DMA) catches it.

The statuses other than 1 and 2 are even: ``pcihole boot`` passes a guest's debug-exit
value on as the odd status ``(value << 1) | 1``, as QEMU does, so no status pcihole chooses
can be mistaken for the guest's. ``pcihole boot`` also ends with ``GUEST_FAULT_STATUS`` when
the guest stops by itself without debug-exit.
"""

from __future__ import annotations

from typing import ClassVar

USAGE_STATUS = 2
"""Exit status for bad input (as argparse's own)."""
ENVIRONMENT_STATUS = 1
"""Exit status for a problem of the host or a refusal of its kernel."""
GUEST_FAULT_STATUS = 70
"""Exit status when a guest did something that ended its run."""
INTERNAL_STATUS = 4
"""Exit status for a bug in pcihole."""


class PciholeError(Exception):
    """Base of every pcihole error; ``exit_status`` says how the command ends and ``label``
    what its one line calls it. Raise one of the four subclasses, never this one."""

    exit_status: ClassVar[int] = INTERNAL_STATUS
    label: ClassVar[str] = "internal error"


class BadInput(PciholeError):
    """What the user gave is unusable: an option, a device list, a file's contents."""

    exit_status: ClassVar[int] = USAGE_STATUS
    label: ClassVar[str] = "error"


class EnvironmentProblem(PciholeError):
    """The host lacks something pcihole needs, or its kernel refused a request; the message
    says what failed and, where it can, what to do about it."""

    exit_status: ClassVar[int] = ENVIRONMENT_STATUS
    label: ClassVar[str] = "error"


class GuestFault(PciholeError):
    """A guest did something that ends its run; the message says what and where."""

    exit_status: ClassVar[int] = GUEST_FAULT_STATUS
    label: ClassVar[str] = "guest fault"


class Bug(PciholeError):
    """pcihole broke one of its own invariants or called its own code wrong."""

    exit_status: ClassVar[int] = INTERNAL_STATUS
    label: ClassVar[str] = "internal error"


ROOTS = (BadInput, EnvironmentProblem, GuestFault, Bug)
"""The four classes every pcihole error derives from, exactly one each."""
