"""The root of every error a user can cause or meet.

``pcihole.cli`` turns any ``PciholeError`` into one line, ``pcihole CMD: error: ...``, and
the exit status the error's class names: 2 for bad input (the command line, a file it
named), 1 for a problem of the environment (no ``/dev/kvm``, no permission on it, a
package missing, the kernel refusing something). Every module's error type derives from
one of the two below, so callers catch one thing.
"""

from __future__ import annotations

from typing import ClassVar

USAGE_STATUS = 2
"""Exit status for bad input."""
ENVIRONMENT_STATUS = 1
"""Exit status for a problem of the host, not of what the user typed."""


class PciholeError(Exception):
    """Base of every pcihole error; ``exit_status`` says how the command ends."""

    exit_status: ClassVar[int] = ENVIRONMENT_STATUS


class BadInput(PciholeError):
    """What the user gave is unusable: an option, a device list, a file's contents."""

    exit_status: ClassVar[int] = USAGE_STATUS


class EnvironmentProblem(PciholeError):
    """The host lacks something pcihole needs; the message says what to do about it."""

    exit_status: ClassVar[int] = ENVIRONMENT_STATUS
