"""What sits behind a read-only firmware slot."""

from __future__ import annotations


class RomDevice:
    """Behind a read-only image slot: reads do not exit (the slot answers); writes do, and
    are counted and dropped, as on a real flash chip that is not being programmed."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.image[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
