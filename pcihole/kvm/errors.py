"""The one error type of the KVM layer: the kernel (or a missing capability) said no.

A call pcihole itself got wrong (a closed fd, a slot number outside the budget) is a
``pcihole.errors.Bug`` instead, not the host's problem.
"""

from __future__ import annotations

import errno as errno_codes
import os

from pcihole.errors import EnvironmentProblem


class KvmError(EnvironmentProblem):
    """The kernel refused a KVM operation, or lacks what it needs; the message names the
    operation and the errno text."""

    def __init__(self, operation: str, errno: int | None = None, detail: str = "") -> None:
        self.operation = operation
        self.errno = errno
        text = operation
        if errno is not None:
            text += f": {os.strerror(errno)} (errno {errno})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


def open_advice(path: str, errno: int | None) -> str:
    """What to do when ``path`` (/dev/kvm) cannot be opened, for the error's message."""
    if errno == errno_codes.ENOENT:
        return (
            f"{path} is missing: load the kvm module (modprobe kvm_intel or kvm_amd) "
            "and check that virtualization is enabled in the firmware"
        )
    if errno in (errno_codes.EACCES, errno_codes.EPERM):
        return (
            f"no permission on {path}: add the user to the kvm group "
            "(usermod -aG kvm USER, then log in again)"
        )
    return f"{path} cannot be opened"
