"""One base for everything that owns a kernel or host resource and is closed once."""

from __future__ import annotations

from typing import Self


class Closeable:
    """``with obj:`` closes it; subclasses define ``close()`` (idempotent)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
