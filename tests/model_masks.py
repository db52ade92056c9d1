"""The write masks of every device model, written out: what a guest may change.

``MASKS[model]`` maps the offset of each config dword a guest write can change to
``(writable bits, write-1-to-clear bits)``; every byte not listed is read-only. The
values are QEMU 7.2's, checked against a running QEMU by tests/kvm/test_qemu_config.py: when a
model changes on purpose, update its table here, e.g. from
``python3 -c 'from tests.model_masks import print_masks; print_masks()'``.

``probe_masks`` finds a config space's masks from the outside, as a guest could (raise
every bit, write zeros, write ones, read back), never from the masks the model keeps.
"""

from __future__ import annotations

from collections.abc import Callable

from pcihole.pci.bdf import Bdf
from pcihole.pci.config import CONFIG_SPACE_SIZE, ConfigSpace
from pcihole.pci.devices import MODELS, Function

Masks = dict[int, tuple[int, int]]
ON_BUS_1 = Bdf(1, 0, 0)


def build_config(model: str) -> ConfigSpace:
    """A fresh ``model`` on bus 1 (bridges get bus 2 behind them)."""
    params = {"bus": 2} if MODELS[model].required_keys else {}
    return MODELS[model].build(ON_BUS_1, params).config


def probe_masks(fresh: Callable[[], ConfigSpace]) -> Masks:
    """Each dword's (writable, W1C) bits, seen through reads and writes as a guest could:
    with every bit of a dword raised, writing zeros clears its writable bits, writing
    ones its W1C bits (a config space's dwords are independent of one another)."""
    cleared = []
    for value in (0, 0xFFFFFFFF):
        config = fresh()
        seen = []
        for offset in range(0, CONFIG_SPACE_SIZE, 4):
            config.set_bits(offset, 4, 0xFFFFFFFF)
            config.write(offset, 4, value)
            seen.append(~config.read(offset, 4) & 0xFFFFFFFF)
        cleared.append(seen)
    return {
        4 * index: (writable, w1c)
        for index, (writable, w1c) in enumerate(zip(*cleared, strict=True))
        if writable or w1c
    }


def masks_over(table: Masks, offset: int, size: int) -> tuple[int, int]:
    """(writable, W1C) over ``size`` bytes at ``offset``, from ``table``."""
    writable = w1c = 0
    for byte in range(size):
        at = offset + byte
        dword = table.get(at & ~3, (0, 0))
        writable |= (dword[0] >> 8 * (at & 3) & 0xFF) << 8 * byte
        w1c |= (dword[1] >> 8 * (at & 3) & 0xFF) << 8 * byte
    return writable, w1c


def free(start: int, end: int) -> Masks:
    """Dwords ``start``..``end`` (exclusive) plainly writable: QEMU leaves every byte past
    the header that no capability claims writable."""
    return {offset: (0xFFFFFFFF, 0) for offset in range(start, end, 4)}


def print_masks() -> None:
    for model in sorted(MODELS):
        print(f'    "{model}": {{')
        for offset, (writable, w1c) in probe_masks(lambda m=model: build_config(m)).items():
            print(f"        {offset:#05x}: ({writable:#010x}, {w1c:#010x}),")
        print("    },")


MASKS: dict[str, Masks] = {
    "host-bridge": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        **free(0x040, 0x050),
        0x050: (0xFFFF0010, 0x00000000),
        **free(0x054, 0x09C),
        0x09C: (0xFF8778FF, 0x00400000),
        **free(0x0A0, 0x100),
    },
    "ich9-ahci": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x020: (0xFFFFFFE0, 0x00000000),
        0x024: (0xFFFFF000, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        **free(0x040, 0x080),
        0x080: (0x00010000, 0x00000000),
        0x084: (0xFFFFFFFC, 0x00000000),
        **free(0x088, 0x0A8),
        **free(0x0B0, 0x100),
    },
    "ich9-lpc": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        0x040: (0x0000FF87, 0x00000000),
        **free(0x044, 0x100),
    },
    "ich9-smbus": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x020: (0xFFFFFFC0, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        0x040: (0xFFFFFFF7, 0x00000000),
        **free(0x044, 0x100),
    },
    "nvme": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x010: (0xFFFFC000, 0x00000000),
        0x014: (0xFFFFFFFF, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        0x040: (0xC0000000, 0x00000000),
        **free(0x04C, 0x060),
        0x064: (0x00000003, 0x00000000),
        **free(0x068, 0x080),
        0x088: (0x00000000, 0x000F0000),
        0x0A8: (0x00008000, 0x00000000),
        **free(0x0BC, 0x100),
        **free(0x104, 0x1000),
    },
    "root-port": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x010: (0xFFFFF000, 0x00000000),
        0x018: (0xFFFFFFFF, 0x00000000),
        0x01C: (0x0000F0F0, 0xF9000000),
        0x020: (0xFFF0FFF0, 0x00000000),
        0x024: (0xFFF0FFF0, 0x00000000),
        0x028: (0xFFFFFFFF, 0x00000000),
        0x02C: (0xFFFFFFFF, 0x00000000),
        0x03C: (0x005F00FF, 0x00000000),
        0x048: (0xC0000000, 0x00000000),
        0x05C: (0x0000000F, 0x000F0000),
        0x06C: (0x000007F9, 0x01190000),
        0x070: (0x00000007, 0x00000000),
        0x074: (0x00000000, 0x00010000),
        0x07C: (0x00008020, 0x00000000),
        **free(0x090, 0x100),
        0x104: (0x00000000, 0x03FFF030),
        0x10C: (0x03FFF030, 0x00000000),
        0x110: (0x00000000, 0x0000F1C1),
        0x114: (0x0000F1C1, 0x00000000),
        0x118: (0x00000540, 0x00000000),
        0x12C: (0x00000007, 0x00000000),
        0x130: (0x00000000, 0x0000007F),
        0x14C: (0x005F0000, 0x00000000),
        **free(0x150, 0x1000),
    },
    "virtio-blk": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x014: (0xFFFFF000, 0x00000000),
        0x020: (0xFFFFC000, 0x00000000),
        0x024: (0xFFFFFFFF, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        0x048: (0x00000000, 0x000F0000),
        0x050: (0x000000C0, 0x00000000),
        0x068: (0x00008000, 0x00000000),
        0x080: (0x00000003, 0x00000000),
        0x0CC: (0x000000FF, 0x00000000),
        **free(0x0D0, 0x0DC),
        0x0DC: (0xC0000000, 0x00000000),
        **free(0x0E8, 0x100),
        **free(0x104, 0x1000),
    },
    "virtio-net": {
        0x004: (0x00000507, 0xF9000000),
        0x00C: (0x000000FF, 0x00000000),
        0x014: (0xFFFFF000, 0x00000000),
        0x020: (0xFFFFC000, 0x00000000),
        0x024: (0xFFFFFFFF, 0x00000000),
        0x030: (0xFFFC0001, 0x00000000),
        0x03C: (0x000000FF, 0x00000000),
        0x048: (0x00000000, 0x000F0000),
        0x050: (0x000000C0, 0x00000000),
        0x068: (0x00008000, 0x00000000),
        0x080: (0x00000003, 0x00000000),
        0x0CC: (0x000000FF, 0x00000000),
        **free(0x0D0, 0x0DC),
        0x0DC: (0xC0000000, 0x00000000),
        **free(0x0E8, 0x100),
        **free(0x104, 0x1000),
    },
}


class PlainConfig:
    """A function's config bytes under its table's masks: what a plain model of PCI makes
    of guest writes (writable bits take the value, ones clear W1C bits), to judge the
    monitor's models by without asking them."""

    def __init__(self, data: bytes, masks: Masks) -> None:
        self.data = bytearray(data)
        self.masks = masks

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        writable, w1c = masks_over(self.masks, offset, size)
        old = self.read(offset, size)
        new = (old & ~writable | value & writable) & ~(value & w1c)
        self.data[offset : offset + size] = new.to_bytes(size, "little")

    def snapshot(self) -> bytes:
        return bytes(self.data)


def plain_config(function: Function) -> PlainConfig:
    """``function``'s bytes as built, under its model's table."""
    return PlainConfig(function.config.snapshot(), MASKS[function.model])
