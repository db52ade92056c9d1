"""The one error type of the KVM layer."""

from __future__ import annotations

import os


class KvmError(Exception):
    """A KVM operation failed; the message names the operation and the errno text."""

    def __init__(self, operation: str, errno: int | None = None, detail: str = "") -> None:
        self.operation = operation
        self.errno = errno
        text = operation
        if errno is not None:
            text += f": {os.strerror(errno)} (errno {errno})"
        if detail:
            text += f": {detail}"
        super().__init__(text)
